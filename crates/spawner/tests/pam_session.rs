//! The PAM layer against the real libpam and real modules (pam_permit, pam_deny,
//! pam_exec, pam_echo, pam_env from Debian's libpam-modules): each test writes its own
//! service file in /etc/pam.d, so it runs as root, and removes it afterwards.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gantry_spawner::pam::{PamError, PamMessage, PamSession};

/// A service file in /etc/pam.d and a scratch folder, removed when dropped.
struct Service {
    name: String,
    dir: PathBuf,
}

impl Service {
    /// `stack` may use `{mark}` (a pam_exec command that appends "<PAM_TYPE> <PAM_USER>"
    /// to the marker file) and `{env}` (a pam_env conffile setting GANTRY_PAM_MARK).
    fn new(test: &str, stack: &str) -> Service {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test writes a PAM service file in /etc/pam.d; run it as root"
        );
        let name = format!("gantry-unit-{test}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("mark.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"$PAM_TYPE $PAM_USER\" >> \"$1\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = dir.join("pam_env.conf");
        std::fs::write(&env, "GANTRY_PAM_MARK DEFAULT=set-by-pam-env\n").unwrap();
        let service = Service { name, dir };
        let text = stack
            .replace(
                "{mark}",
                &format!(
                    "pam_exec.so quiet {} {}",
                    script.display(),
                    service.marker().display()
                ),
            )
            .replace(
                "{env}",
                &format!("pam_env.so readenv=0 conffile={}", env.display()),
            );
        std::fs::write(service.file(), text).unwrap();
        service
    }

    fn file(&self) -> PathBuf {
        Path::new("/etc/pam.d").join(&self.name)
    }

    fn marker(&self) -> PathBuf {
        self.dir.join("marker")
    }

    fn marks(&self) -> Vec<String> {
        std::fs::read_to_string(self.marker())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.file());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_permitting_stack_runs_account_and_session_and_hands_over_its_environment() {
    let service = Service::new(
        "permit",
        "account required {mark}\n\
         account required pam_permit.so\n\
         account optional pam_echo.so hello %u\n\
         session required {mark}\n\
         session required {env}\n",
    );
    let mut pam = PamSession::start(&service.name, "root").unwrap();
    assert_eq!(pam.service(), service.name);
    pam.acct_mgmt().unwrap();
    assert_eq!(
        pam.take_messages(),
        [PamMessage::Info("hello root".into())],
        "pam_echo's text reaches the conversation"
    );
    assert_eq!(service.marks(), ["account root"]);
    pam.setcred().unwrap();
    pam.open_session().unwrap();
    assert_eq!(service.marks(), ["account root", "open_session root"]);
    let env = pam.env_list().unwrap();
    assert!(
        env.contains(&("GANTRY_PAM_MARK".into(), "set-by-pam-env".into())),
        "{env:?}"
    );
    assert!(pam.take_messages().is_empty());
}

#[test]
fn a_denying_account_stack_is_a_refusal_with_pams_reason() {
    let service = Service::new(
        "deny",
        "account required pam_deny.so\nsession required {mark}\n",
    );
    let mut pam = PamSession::start(&service.name, "root").unwrap();
    let error = pam.acct_mgmt().unwrap_err();
    let PamError::Call { function, code, .. } = &error else {
        panic!("not a call error: {error:?}");
    };
    assert_eq!(*function, "pam_acct_mgmt");
    assert_eq!(*code, 7, "pam_deny refuses with PAM_AUTH_ERR");
    let text = error.to_string();
    assert!(
        text.starts_with("PAM refused the account root: Authentication failure (PAM_AUTH_ERR, "),
        "{text}"
    );
    assert!(text.contains(&service.name), "{text}");
    drop(pam);
    assert!(
        service.marks().is_empty(),
        "a session ran: {:?}",
        service.marks()
    );
}

#[test]
fn a_failing_session_stack_says_which_call_failed() {
    let service = Service::new(
        "session",
        "account required pam_permit.so\n\
         session optional pam_echo.so about to fail\n\
         session required pam_deny.so\n",
    );
    let mut pam = PamSession::start(&service.name, "root").unwrap();
    pam.acct_mgmt().unwrap();
    pam.setcred().unwrap();
    let text = pam.open_session().unwrap_err().to_string();
    assert!(
        text.starts_with("PAM's pam_open_session failed for root: "),
        "{text}"
    );
    assert!(text.ends_with("PAM said: about to fail"), "{text}");
}

#[test]
fn a_service_without_a_file_is_refused_before_pam_falls_back_to_other() {
    let name = format!("gantry-unit-missing-{}", std::process::id());
    let text = PamSession::start(&name, "root").unwrap_err().to_string();
    assert!(
        text.contains(&format!("there is no /etc/pam.d/{name}")),
        "{text}"
    );
    assert!(text.contains("pam.service_name"), "{text}");
}
