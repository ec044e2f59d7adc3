//! Local accounts and `gantry-endpoint` MEP processes for the endpoint tests, which run
//! as root: creating users, finding what runs as them, and starting, waiting for and
//! stopping a MEP.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use uuid::Uuid;

use super::TestService;

/// Fails the test unless it runs as root, saying `why` it must.
pub fn require_root(why: &str) {
    assert!(nix::unistd::geteuid().is_root(), "{why}; run it as root");
}

/// Runs an admin command, which must succeed.
pub fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?} failed");
}

/// Serialises user creation across the test processes that run at once; hold it while
/// creating users.
pub fn users_lock() -> std::fs::File {
    let lock = std::fs::File::create("/tmp/gantry-test-users.lock").unwrap();
    lock.lock().unwrap();
    lock
}

/// Creates the local account `name` with a home, if missing, and gives it back its home
/// when an interrupted earlier run left it to someone else.
pub fn ensure_user(name: &str, extra_useradd_args: &[&str]) {
    if nix::unistd::User::from_name(name).unwrap().is_none() {
        let mut args = vec!["--create-home", "--shell", "/bin/bash"];
        args.extend_from_slice(extra_useradd_args);
        args.push(name);
        run("useradd", &args);
    }
    let user = nix::unistd::User::from_name(name).unwrap().unwrap();
    let owned = std::fs::metadata(&user.dir).is_ok_and(|m| m.uid() == user.uid.as_raw());
    if !owned {
        std::fs::create_dir_all(&user.dir).unwrap();
        run(
            "chown",
            &[
                "-R",
                &format!("{name}:{name}"),
                &user.dir.display().to_string(),
            ],
        );
    }
}

/// The live processes of `user` ("pid command line"), zombies excluded: a zombie runs
/// nothing and waits only for whoever inherited it to reap it.
pub fn user_processes(user: &str) -> Vec<String> {
    let Some(uid) = nix::unistd::User::from_name(user)
        .unwrap()
        .map(|u| u.uid.as_raw())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .next();
        if meta.uid() != uid || state == Some("Z") || stat.is_empty() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        out.push(format!("{pid} {}", cmdline.trim()));
    }
    out
}

/// Waits up to `limit` until none of `users` runs anything; returns what is left.
pub async fn wait_no_user_processes(users: &[&str], limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<String> = users.iter().flat_map(|u| user_processes(u)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The uid of local account `name`.
pub fn uid_of(name: &str) -> u32 {
    nix::unistd::User::from_name(name)
        .unwrap()
        .unwrap()
        .uid
        .as_raw()
}

/// The home of local account `name`.
pub fn home_of(name: &str) -> PathBuf {
    nix::unistd::User::from_name(name).unwrap().unwrap().dir
}

/// Removes the UEP folders MEP `mep` made in the homes of `users`.
pub fn cleanup_uep_dirs(users: &[&str], mep: Uuid) {
    for user in users {
        if let Ok(entries) = std::fs::read_dir(home_of(user).join(".gantry")) {
            for entry in entries.flatten() {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .contains(&mep.to_string())
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

/// A running `gantry-endpoint start mep` (its folder is `<home>/mep`), killed when
/// dropped.
pub struct Mep {
    pub child: Child,
    pub home: PathBuf,
}

impl Mep {
    /// What the MEP wrote on stderr (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("mep.err")).unwrap_or_default()
    }

    /// The MEP's folder.
    pub fn dir(&self) -> PathBuf {
        self.home.join("mep")
    }

    /// The id it registered with, once it has.
    pub fn id(&self) -> Option<Uuid> {
        let text = std::fs::read_to_string(self.dir().join("endpoint.json")).ok()?;
        serde_json::from_str::<Value>(&text).ok()?["endpoint_id"]
            .as_str()?
            .parse()
            .ok()
    }

    /// Whether the process ended.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

impl Drop for Mep {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Starts `gantry-endpoint start mep` as root for the folder `<home>/mep`, as a new
/// endpoint client of `service`, and waits until it is online.
pub async fn start_mep_in(service: &TestService, home: PathBuf) -> Mep {
    let program = gantry_testkit::workspace_binary("gantry-endpoint", "gantry-endpoint");
    let (client, secret) = service
        .store()
        .add_endpoint_client("gantry-mep")
        .await
        .unwrap();
    let child = Command::new(program)
        .args(["start", "mep"])
        .env("GANTRY_HOME", &home)
        .env("GANTRY_CLIENT_ID", client.client_id.to_string())
        .env("GANTRY_CLIENT_SECRET", &secret)
        .env("GANTRY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(home.join("mep.out")).unwrap())
        .stderr(std::fs::File::create(home.join("mep.err")).unwrap())
        .spawn()
        .unwrap();
    let mut mep = Mep { child, home };
    wait_online(service, &mut mep).await;
    mep
}

/// Waits until the MEP registered and heartbeats; returns its id.
pub async fn wait_online(service: &TestService, mep: &mut Mep) -> Uuid {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(id) = mep.id()
            && let Ok(Some(ep)) = service.store().endpoint(id).await
            && ep.is_online(gantry_store::now_ms())
        {
            return id;
        }
        assert!(!mep.exited(), "the MEP exited:\n{}", mep.log());
        assert!(
            Instant::now() < deadline,
            "the MEP did not come online:\n{}",
            mep.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
