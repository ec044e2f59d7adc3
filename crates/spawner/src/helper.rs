//! The helper: SPEC §5's steps, in order, in a fresh single-threaded process that
//! started as root. It ends in `execve` of the user endpoint or in `exit` with the
//! failing step's code; it never returns to a caller and never forks.
//!
//! Its standard streams on entry: stdin carries the [`SpawnRequest`] (JSON), stdout is
//! the status pipe back to the MEP (one [`HelperEvent`] a line), stderr goes to the
//! MEP's log.

use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use gantry_identity_mapping::IdentityMapper;
use gantry_protocol::command::UepStdin;
use gantry_user_config::{MappedIdentity, RenderInputs, TemplateBundle};
use serde_json::json;

use crate::exit::Step;
use crate::pam::{PamSession, PamSettings};
use crate::request::{HelperEvent, IdentityRule, MAX_REQUEST_BYTES, SpawnRequest};
use crate::sys;

/// The PATH a user endpoint starts with, before `user_environment.yaml`.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Room left after the UEP's process title so it can later show its state in front of
/// it (`[idle; shut down in 50s] …`) without moving memory.
pub const TITLE_ROOM: usize = 48;

/// The process title of a UEP, as the seed's htop shows them.
pub fn uep_title(uep_id: uuid::Uuid, name: &str) -> String {
    format!("Gantry Endpoint ({uep_id}, {name})")
}

struct Failure {
    step: Step,
    message: String,
}

fn fail(step: Step, message: impl Into<String>) -> Failure {
    Failure {
        step,
        message: message.into(),
    }
}

/// The status pipe: events for the MEP. Writing is best effort; the exit code tells
/// the rest if the MEP stopped listening.
struct Status(std::fs::File);

impl Status {
    fn send(&mut self, event: &HelperEvent) {
        if let Ok(mut line) = serde_json::to_vec(event) {
            line.push(b'\n');
            let _ = self.0.write_all(&line);
        }
    }
}

/// Runs the helper: reads the request from stdin and starts the UEP. Never returns.
pub fn run() -> ! {
    // Step 1: nothing the MEP had open beyond 0–2 reaches the user, then keep the
    // status pipe (stdout) as a close-on-exec descriptor of its own.
    // The audit pipe, if the MEP gave one, sits at descriptor 3 and is kept only if
    // the request asks for it (checked below, once the request is read).
    let _ = sys::close_from(crate::request::AUDIT_FD + 1);
    let status_fd: OwnedFd = match sys::dup_cloexec(1) {
        Ok(fd) => fd,
        Err(_) => std::process::exit(Step::Request.exit_code()),
    };
    let mut status = Status(std::fs::File::from(status_fd));
    // Whatever else writes to stdout from here (a PAM module, the mapping program's
    // stray output) must not reach the status pipe.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = sys::dup_onto(&null, 1);
    }
    let _ = std::env::set_current_dir("/");
    let request = match read_request() {
        Ok(r) => r,
        Err(f) => finish(&mut status, f),
    };
    if !request.audit {
        sys::close_one(crate::request::AUDIT_FD);
    }
    let Err(failure) = start(&request, &mut status);
    finish(&mut status, failure)
}

fn finish(status: &mut Status, failure: Failure) -> ! {
    // Never `eprintln!`: it panics on a broken stderr, and the exit code must survive.
    let _ = writeln!(
        std::io::stderr(),
        "gantry spawn helper: {} (exit {}): {}",
        failure.step.describe(),
        failure.step.exit_code(),
        failure.message
    );
    status.send(&HelperEvent::Failed {
        step: failure.step,
        message: failure.message,
    });
    std::process::exit(failure.step.exit_code())
}

fn read_request() -> Result<SpawnRequest, Failure> {
    let mut text = Vec::new();
    std::io::stdin()
        .take(MAX_REQUEST_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| fail(Step::Request, format!("reading stdin: {e}")))?;
    serde_json::from_slice(&text).map_err(|e| fail(Step::Request, format!("bad request: {e}")))
}

/// A local account, as the template sees it.
struct Account {
    name: String,
    uid: u32,
    gid: u32,
    dir: PathBuf,
    shell: String,
    groups: Vec<u32>,
}

/// Steps 1–5; returns only on failure (success ends in exec).
fn start(request: &SpawnRequest, status: &mut Status) -> Result<std::convert::Infallible, Failure> {
    let parent = sys::parent_pid();
    let root_mode = matches!(request.identity, IdentityRule::Map { .. });

    // Who: map the identity, find and vet the account.
    let user = map_identity(request)?;
    let account = lookup(&user)?;
    vet(request, &account, root_mode)?;
    status.send(&HelperEvent::Mapped {
        user: account.name.clone(),
        uid: account.uid,
    });

    // Read what only root may read, before the drop.
    let bundle = TemplateBundle::read(&request.template_path)
        .map_err(|e| fail(Step::ReadTemplate, e.to_string()))?;
    let schema = match &request.schema_path {
        Some(path) => Some(
            gantry_user_config::read_schema(path)
                .map_err(|e| fail(Step::ReadTemplate, e.to_string()))?,
        ),
        _ => None,
    };

    // Step 2 (optional): PAM's account check, still as root, so a refused account
    // stops before anything else happens for it.
    let mut pam = match &request.pam {
        Some(settings) => Some(pam_account(settings, &account, status)?),
        None => None,
    };

    // Step 2–3: drop privileges for good. Groups first; then PAM's credentials and
    // session (pam_setcred may add groups, which initgroups would wipe, and both still
    // need root); then the uids.
    if root_mode {
        sys::set_groups(&account.name, account.gid)
            .map_err(|e| fail(Step::DropPrivileges, format!("to {}: {e}", account.name)))?;
        // The gid change cleared the death signal; while PAM runs as root, a MEP that
        // dies must still take this helper with it.
        sys::set_parent_death_signal(libc::SIGKILL)
            .map_err(|e| fail(Step::DropPrivileges, format!("death signal: {e}")))?;
        if sys::parent_pid() != parent {
            return Err(fail(
                Step::DropPrivileges,
                "the MEP exited while the UEP was starting",
            ));
        }
    }
    let pam_environment = match pam.as_mut() {
        Some(session) => pam_session(session, status)?,
        None => Vec::new(),
    };
    if root_mode {
        sys::set_uids(account.uid)
            .map_err(|e| fail(Step::DropPrivileges, format!("to {}: {e}", account.name)))?;
    }
    // Whatever a PAM module left open (as root) closes at the exec.
    sys::cloexec_from(if request.audit {
        crate::request::AUDIT_FD + 1
    } else {
        3
    })
    .map_err(|e| fail(Step::DropPrivileges, format!("marking descriptors: {e}")))?;
    sys::verify_dropped(account.uid, account.gid)
        .map_err(|e| fail(Step::DropPrivileges, e.to_string()))?;
    // Without PAM, no exec may regain privileges. With PAM the admin chose setuid
    // programs (schedulers' submit commands) over that guarantee (SPEC §5).
    if pam.is_none() {
        sys::set_no_new_privs()
            .map_err(|e| fail(Step::DropPrivileges, format!("no_new_privs: {e}")))?;
    }
    sys::new_session().map_err(|e| fail(Step::DropPrivileges, format!("setsid: {e}")))?;
    sys::set_umask(0o077);
    // The death signal is cleared by the credential change, so set it now; then check
    // the MEP did not die in between (it would not be signalled any more).
    sys::set_parent_death_signal(libc::SIGTERM)
        .map_err(|e| fail(Step::DropPrivileges, format!("death signal: {e}")))?;
    if sys::parent_pid() != parent {
        return Err(fail(
            Step::DropPrivileges,
            "the MEP exited while the UEP was starting",
        ));
    }

    // Step 4: render as the user, in the UEP's environment (templates see it as
    // `_GC.env`, as with Globus).
    let variables = environment_variables(request, &account, pam_environment);
    for (key, _) in std::env::vars_os() {
        // SAFETY: the helper is single-threaded; nothing reads the environment concurrently.
        unsafe { std::env::remove_var(key) };
    }
    for (key, value) in &variables {
        // SAFETY: as above.
        unsafe { std::env::set_var(key, value) };
    }
    let environment: Vec<CString> = variables
        .into_iter()
        .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok())
        .collect();
    let mapped = MappedIdentity {
        uname: account.name.clone(),
        uid: account.uid,
        gid: account.gid,
        dir: account.dir.display().to_string(),
        shell: account.shell.clone(),
        groups: account.groups.clone(),
    };
    let kwargs = &request.command.kwargs;
    let config = gantry_user_config::render(
        &bundle,
        schema.as_ref(),
        &RenderInputs {
            user_opts: &kwargs.user_opts,
            user_runtime: &kwargs.user_runtime,
            parent_config: &request.parent_config,
            mapped_identity: &mapped,
        },
    )
    .map_err(|e| fail(Step::Render, e.to_string()))?;

    // Step 5: the UEP's directory, log and stdin, then exec.
    let dir = account.dir.join(".gantry").join(request.uep_dir_name());
    let log = prepare_dir_and_log(&account.dir, &dir)?;
    let stdin = uep_stdin(request, &account, &dir, config)?;
    sys::dup_onto(&stdin, 0).map_err(|e| fail(Step::Prepare, format!("stdin: {e}")))?;
    std::env::set_current_dir(&dir)
        .map_err(|e| fail(Step::Prepare, format!("entering {}: {e}", dir.display())))?;
    status.send(&HelperEvent::Exec);
    sys::dup_onto(&log, 1).map_err(|e| fail(Step::Prepare, format!("stdout: {e}")))?;
    sys::dup_onto(&log, 2).map_err(|e| fail(Step::Prepare, format!("stderr: {e}")))?;
    drop(log);
    drop(stdin);
    // `pam` stays alive through the exec: dropping it would end the PAM transaction.
    // The exec replaces the process with the session still open; nobody closes it.
    let result = exec(request, environment);
    drop(pam);
    result
}

/// Starts PAM for the account and runs its account stack (`pam_acct_mgmt`): an
/// expired, locked or refused account fails here, with PAM's reason and messages.
fn pam_account(
    settings: &PamSettings,
    account: &Account,
    status: &mut Status,
) -> Result<PamSession, Failure> {
    let mut session = PamSession::start(&settings.service_name, &account.name)
        .map_err(|e| fail(Step::Pam, e.to_string()))?;
    let checked = session.acct_mgmt();
    forward_pam_messages(&mut session, status);
    checked.map_err(|e| fail(Step::Pam, e.to_string()))?;
    Ok(session)
}

/// Establishes credentials and opens the session, then returns the environment PAM's
/// modules set.
fn pam_session(
    session: &mut PamSession,
    status: &mut Status,
) -> Result<Vec<(String, String)>, Failure> {
    let established = session.setcred();
    forward_pam_messages(session, status);
    established.map_err(|e| fail(Step::Pam, e.to_string()))?;
    let opened = session.open_session();
    forward_pam_messages(session, status);
    opened.map_err(|e| fail(Step::Pam, e.to_string()))?;
    session
        .env_list()
        .map_err(|e| fail(Step::Pam, e.to_string()))
}

/// Hands what PAM's modules said to the MEP, which logs it.
fn forward_pam_messages(session: &mut PamSession, status: &mut Status) {
    for message in session.take_messages() {
        status.send(&HelperEvent::Pam { message });
    }
}

fn map_identity(request: &SpawnRequest) -> Result<String, Failure> {
    let (mapping_json, expected) = match &request.identity {
        IdentityRule::Map { mapping_json } => (mapping_json, None),
        IdentityRule::SameUser {
            mapping_json,
            expected_user,
        } => (mapping_json, Some(expected_user)),
    };
    let mapper = IdentityMapper::from_json(mapping_json)
        .map_err(|e| fail(Step::IdentityMapping, e.to_string()))?;
    let identities = &request.command.globus_identity_set;
    let user = mapper
        .map(identities, request.mep_id)
        .map_err(|e| fail(Step::IdentityMapping, e.to_string()))?
        .ok_or_else(|| {
            let names: Vec<&str> = identities.iter().map(|i| i.username.as_str()).collect();
            fail(
                Step::NoMapping,
                format!(
                    "no identity mapping rule matched {names:?}; ask the endpoint's administrator to map you"
                ),
            )
        })?;
    if let Some(expected) = expected
        && &user != expected
    {
        return Err(fail(
            Step::RefusedAccount,
            format!(
                "this endpoint runs as {expected} (not as root) and serves only identities that map to {expected}; yours maps to {user}"
            ),
        ));
    }
    Ok(user)
}

fn lookup(name: &str) -> Result<Account, Failure> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| fail(Step::NoAccount, format!("looking up {name:?}: {e}")))?
        .ok_or_else(|| {
            fail(
                Step::NoAccount,
                format!("there is no local account {name:?}"),
            )
        })?;
    let uid = user.uid.as_raw();
    let gid = user.gid.as_raw();
    let groups = sys::groups_of(&user.name, gid)
        .map_err(|e| fail(Step::NoAccount, format!("groups of {name:?}: {e}")))?;
    Ok(Account {
        name: user.name,
        uid,
        gid,
        dir: user.dir,
        shell: user.shell.display().to_string(),
        groups,
    })
}

fn vet(request: &SpawnRequest, account: &Account, root_mode: bool) -> Result<(), Failure> {
    let name = &account.name;
    if account.uid == 0 || account.gid == 0 || account.groups.contains(&0) {
        return Err(fail(
            Step::RefusedAccount,
            format!("{name} is root or in root's group; user endpoints never run as root"),
        ));
    }
    // (uid_t)-1 means "unchanged" to setresuid, and the overflow ids stand for nobody.
    const NOBODY: u32 = 65534;
    if [account.uid, account.gid]
        .iter()
        .any(|id| *id == u32::MAX || *id == NOBODY)
    {
        return Err(fail(
            Step::RefusedAccount,
            format!(
                "{name} is an unmapped or overflow account (uid {}, gid {})",
                account.uid, account.gid
            ),
        ));
    }
    if root_mode && account.uid < request.min_uid {
        return Err(fail(
            Step::RefusedAccount,
            format!(
                "{name} has uid {}, below this endpoint's minimum of {} (system accounts never run user endpoints)",
                account.uid, request.min_uid
            ),
        ));
    }
    if root_mode && account.uid == request.mep_uid {
        return Err(fail(
            Step::RefusedAccount,
            format!("{name} is the endpoint's own account"),
        ));
    }
    if !account.dir.is_absolute() {
        return Err(fail(
            Step::RefusedAccount,
            format!("{name} has no absolute home directory"),
        ));
    }
    Ok(())
}

/// The UEP's environment: a clean one with the account's defaults, then what PAM's
/// modules set (pam_env and the like), then the admin's `user_environment.yaml`, which
/// is specific to this endpoint and so has the last word.
fn environment_variables(
    request: &SpawnRequest,
    account: &Account,
    pam_environment: Vec<(String, String)>,
) -> std::collections::BTreeMap<String, String> {
    let mut vars: std::collections::BTreeMap<String, String> = [
        ("HOME", account.dir.display().to_string()),
        ("USER", account.name.clone()),
        ("LOGNAME", account.name.clone()),
        ("SHELL", account.shell.clone()),
        ("PATH", DEFAULT_PATH.to_owned()),
        ("LANG", "C.UTF-8".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    vars.extend(pam_environment);
    for (key, value) in &request.user_environment {
        vars.insert(key.clone(), value.clone());
    }
    vars.retain(|k, v| !k.is_empty() && !k.contains(['=', '\0']) && !v.contains('\0'));
    vars
}

/// `~/.gantry/<uep>/` (0700, created as the user, refusing symlinks) and its
/// `endpoint.log` (0600, appended).
fn prepare_dir_and_log(home: &Path, dir: &Path) -> Result<std::fs::File, Failure> {
    let gantry = home.join(".gantry");
    for path in [&gantry, &dir.to_path_buf()] {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => {
                return Err(fail(
                    Step::Prepare,
                    format!(
                        "{} is not a directory (a symlink or a file is in the way)",
                        path.display()
                    ),
                ));
            }
            Ok(_) => {}
            Err(_) => std::fs::DirBuilder::new()
                .mode(0o700)
                .create(path)
                .map_err(|e| fail(Step::Prepare, format!("creating {}: {e}", path.display())))?,
        }
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let log_path = dir.join("endpoint.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&log_path)
        .map_err(|e| {
            fail(
                Step::Prepare,
                format!("opening {}: {e}", log_path.display()),
            )
        })?;
    log.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(Step::Prepare, format!("chmod {}: {e}", log_path.display())))?;
    Ok(log)
}

/// The UEP's stdin: everything it needs, in an anonymous memory file (no pipe to fill,
/// nothing on disk).
fn uep_stdin(
    request: &SpawnRequest,
    account: &Account,
    dir: &Path,
    config: String,
) -> Result<std::fs::File, Failure> {
    let mut ep_info = request.ep_info.clone();
    ep_info.insert("mep_id".into(), json!(request.mep_id));
    ep_info.insert("uep_name".into(), json!(request.command.kwargs.name));
    ep_info.insert("user".into(), json!(account.name));
    ep_info.insert("uep_dir".into(), json!(dir));
    ep_info.insert("parent_pid".into(), json!(sys::parent_pid()));
    if request.audit {
        ep_info.insert("audit_fd".into(), json!(crate::request::AUDIT_FD));
    }
    ep_info.insert(
        "user_runtime".into(),
        request.command.kwargs.user_runtime.clone(),
    );
    let document = UepStdin {
        amqp_creds: request.command.kwargs.amqp_creds.clone(),
        config,
        ep_info,
        allowed_functions: request.allowed_functions.clone(),
    };
    let mut file =
        sys::memfd("gantry-uep-stdin").map_err(|e| fail(Step::Prepare, format!("memfd: {e}")))?;
    let bytes = serde_json::to_vec(&document).map_err(|e| fail(Step::Prepare, e.to_string()))?;
    file.write_all(&bytes)
        .and_then(|()| file.rewind())
        .map_err(|e| fail(Step::Prepare, format!("writing the UEP's stdin: {e}")))?;
    Ok(file)
}

fn exec(
    request: &SpawnRequest,
    environment: Vec<CString>,
) -> Result<std::convert::Infallible, Failure> {
    let name = &request.command.kwargs.name;
    let title = uep_title(request.uep_id(), name);
    let to_c = |s: &str| CString::new(s).map_err(|_| fail(Step::Exec, "NUL in an argument"));
    let program = CString::new(request.uep_program.as_os_str().as_encoded_bytes())
        .map_err(|_| fail(Step::Exec, "NUL in the UEP program path"))?;
    let argv = [to_c(&title)?, to_c("uep")?, to_c(&" ".repeat(TITLE_ROOM))?];
    let Err(error) = nix::unistd::execve(&program, &argv, &environment);
    Err(fail(
        Step::Exec,
        format!("{}: {error}", request.uep_program.display()),
    ))
}
