//! What each `gantry-endpoint` verb does. The binary only parses arguments and calls
//! these.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use gantry_endpoint_client::ClientCredentials;
use gantry_user_config::{MappedIdentity, RenderInputs, TemplateBundle};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::config::EndpointConfig;
use crate::dirs::{
    EndpointDir, create_private_dir, gantry_home, read_credentials_file, write_private,
};
use crate::mep::{MepOptions, UepRow};

/// The example identity mapping `configure --multi-user` writes: users of one domain
/// run as the local account of the same name.
pub const EXAMPLE_IDENTITY_MAPPING: &str = r#"[
  {
    "DATA_TYPE": "expression_identity_mapping#1.0.0",
    "mappings": [
      {"source": "{username}", "match": "(.*)@example\\.org", "output": "{0}"}
    ]
  }
]
"#;

/// The environment file `configure --multi-user` writes.
pub const EXAMPLE_USER_ENVIRONMENT: &str = "# Variables set for every user endpoint, on top of HOME, USER, SHELL and\n\
# PATH=/usr/local/bin:/usr/bin:/bin. For example:\n\
# PATH: /opt/python3.11/bin:/usr/local/bin:/usr/bin:/bin\n\
{}\n";

/// `configure NAME [--multi-user]`: writes an endpoint's folder with safe modes.
pub fn configure(
    name: &str,
    multi_user: bool,
    service_url: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let dir = EndpointDir::new(name)?;
    if dir.exists() {
        bail!(
            "endpoint {name} is already configured in {}; edit its files or `gantry-endpoint delete {name}` first",
            dir.path.display()
        );
    }
    create_private_dir(&gantry_home())?;
    create_private_dir(&dir.path)?;
    let service_url = service_url.unwrap_or(crate::config::DEFAULT_SERVICE_URL);
    if multi_user {
        let config = format!(
            "# A multi-user endpoint: it starts one user endpoint per user and configuration.\n\
             display_name: {name}\n\
             multi_user: true\n\
             service_url: {service_url}\n\
             heartbeat_period: 30\n\
             identity_mapping_config_path: {mapping}\n\
             # Accounts below this uid never run user endpoints.\n\
             min_uid: 1000\n\
             # public: false\n\
             # allowed_functions: []\n",
            mapping = dir.path.join("identity_mapping.json").display()
        );
        write_private(&dir.config(), config.as_bytes())?;
        write_private(
            &dir.path.join("identity_mapping.json"),
            EXAMPLE_IDENTITY_MAPPING.as_bytes(),
        )?;
        write_private(
            &dir.path.join("user_config_template.yaml.j2"),
            gantry_user_config::DEFAULT_TEMPLATE.as_bytes(),
        )?;
        write_private(
            &dir.path.join("user_config_schema.json"),
            gantry_user_config::DEFAULT_SCHEMA.as_bytes(),
        )?;
        write_private(
            &dir.path.join("user_environment.yaml"),
            EXAMPLE_USER_ENVIRONMENT.as_bytes(),
        )?;
    } else {
        let config = format!(
            "display_name: {name}\nservice_url: {service_url}\nengine:\n  type: ThreadPoolEngine\n  max_workers: 4\n"
        );
        write_private(&dir.config(), config.as_bytes())?;
    }
    Ok(dir.path)
}

/// The endpoint client's credentials: `GANTRY_CLIENT_ID`/`GANTRY_CLIENT_SECRET`, the
/// official endpoint's `GLOBUS_COMPUTE_CLIENT_ID`/`_SECRET`, or the endpoint's
/// `credentials.json` (mode 0600, owned by the endpoint's user).
pub fn credentials(dir: &EndpointDir) -> anyhow::Result<ClientCredentials> {
    for (id, secret) in [
        ("GANTRY_CLIENT_ID", "GANTRY_CLIENT_SECRET"),
        ("GLOBUS_COMPUTE_CLIENT_ID", "GLOBUS_COMPUTE_CLIENT_SECRET"),
    ] {
        if let (Ok(client_id), Ok(client_secret)) = (std::env::var(id), std::env::var(secret)) {
            return Ok(ClientCredentials {
                client_id,
                client_secret,
            });
        }
    }
    let path = dir.credentials();
    if path.exists() {
        let file = read_credentials_file(&path)?;
        return Ok(ClientCredentials {
            client_id: file.client_id,
            client_secret: file.client_secret,
        });
    }
    bail!(
        "no endpoint client credentials: set GANTRY_CLIENT_ID and GANTRY_CLIENT_SECRET (from \
         `gantry-service admin add-endpoint-client`), or write them to {} as \
         {{\"client_id\":…,\"client_secret\":…}} with mode 0600",
        path.display()
    )
}

/// The MEP's process title.
pub fn mep_title(id: Uuid, name: &str) -> String {
    format!("Gantry Endpoint *({id}, {name})")
}

/// `start NAME [--detach]`.
pub fn start(name: &str, detach: bool) -> anyhow::Result<()> {
    let dir = EndpointDir::new(name)?;
    if !dir.exists() {
        bail!("no endpoint {name}: run `gantry-endpoint configure {name} --multi-user` first");
    }
    let config = EndpointConfig::load(&dir.config())?;
    if !config.multi_user {
        bail!(
            "{} has no `multi_user: true`; this version runs multi-user endpoints only",
            dir.config().display()
        );
    }
    if let Some(pid) = dir.running_pid() {
        bail!("endpoint {name} is already running (pid {pid})");
    }
    let credentials = credentials(&dir)?;
    let endpoint_id = match dir.saved_id() {
        Some(id) => id,
        None => {
            let id = Uuid::new_v4();
            dir.save_id(id)?;
            id
        }
    };
    let program = std::env::current_exe().context("cannot find this program's path")?;
    let title = mep_title(endpoint_id, name);
    if detach {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(dir.log())?;
        let mut command = std::process::Command::new(&program);
        command
            .arg0(&title)
            .args(["start", name])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("GANTRY_TITLED", "1");
        // SAFETY: setsid is async-signal-safe and the only call in the hook; it detaches
        // the daemon from this terminal's session.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        std::thread::sleep(Duration::from_millis(1500));
        if let Some(status) = child.try_wait()? {
            bail!(
                "endpoint {name} exited at once ({status}); see {}",
                dir.log().display()
            );
        }
        println!(
            "endpoint {name} started (pid {}, id {endpoint_id}); log: {}",
            child.id(),
            dir.log().display()
        );
        return Ok(());
    }
    if std::env::var_os("GANTRY_TITLED").is_none() {
        // Run again with the title as argv[0], so ps and htop show it (same pid).
        let args: Vec<String> = std::env::args().skip(1).collect();
        let error = std::process::Command::new(&program)
            .arg0(&title)
            .args(args)
            .env("GANTRY_TITLED", "1")
            .exec();
        tracing::warn!(%error, "could not set the process title; going on without it");
    }
    // SAFETY: removing our own marker before any thread starts.
    unsafe { std::env::remove_var("GANTRY_TITLED") };
    let pidfile = lock_pidfile(&dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(crate::mep::run(MepOptions {
        dir: dir.clone(),
        config,
        credentials,
        program,
        endpoint_id,
    }));
    drop(pidfile);
    let _ = std::fs::remove_file(dir.pidfile());
    result
}

/// Holds `daemon.pid`, locked, for the life of the MEP.
fn lock_pidfile(dir: &EndpointDir) -> anyhow::Result<std::fs::File> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.pidfile())?;
    if file.try_lock().is_err() {
        bail!(
            "endpoint {} is already running (its daemon.pid is locked)",
            dir.name
        );
    }
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

/// `stop NAME`: SIGTERM to the MEP, then waits for it (it stops its UEPs first).
pub fn stop(name: &str) -> anyhow::Result<()> {
    let dir = EndpointDir::new(name)?;
    let Some(pid) = dir.running_pid() else {
        println!("endpoint {name} is not running");
        return Ok(());
    };
    // A running MEP holds a lock on its daemon.pid; without that lock the pid in it is
    // stale and may belong to anyone by now.
    if let Ok(file) = std::fs::File::open(dir.pidfile())
        && file.try_lock().is_ok()
    {
        println!("endpoint {name} is not running (its daemon.pid is stale)");
        return Ok(());
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    for _ in 0..200 {
        if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err() {
            println!("endpoint {name} stopped");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("endpoint {name} (pid {pid}) did not stop within 20 s")
}

/// `delete NAME`: stops it and removes its folder.
pub fn delete(name: &str) -> anyhow::Result<()> {
    let dir = EndpointDir::new(name)?;
    if !dir.path.exists() {
        bail!("no endpoint {name}");
    }
    stop(name)?;
    std::fs::remove_dir_all(&dir.path)?;
    println!(
        "endpoint {name} deleted (its registration stays with the service until an admin removes it)"
    );
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

fn human_age(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, (seconds % 3600) / 60),
    }
}

/// `list`: every configured endpoint, and for a running MEP a table of its UEPs.
pub fn list() -> anyhow::Result<String> {
    let mut out = String::new();
    let home = gantry_home();
    let mut names: Vec<String> = std::fs::read_dir(&home)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| home.join(n).join("config.yaml").is_file())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    if names.is_empty() {
        out.push_str(&format!("no endpoints in {}\n", home.display()));
        return Ok(out);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    for name in names {
        let dir = EndpointDir::new(&name)?;
        let id = dir
            .saved_id()
            .map(|i| i.to_string())
            .unwrap_or_else(|| "(not registered)".into());
        match dir.running_pid() {
            Some(pid) => out.push_str(&format!(
                "{name}  {id}  running (pid {pid}, {} resident)\n",
                human_bytes(crate::process::rss_bytes(pid))
            )),
            None => {
                out.push_str(&format!("{name}  {id}  stopped\n"));
                continue;
            }
        }
        let rows: Vec<UepRow> = std::fs::read(dir.ueps())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if rows.is_empty() {
            out.push_str("  no user endpoints running\n");
            continue;
        }
        out.push_str(&format!(
            "  {:<12} {:<36} {:>8} {:>10} {:>8}  {:<28} {:>11}\n",
            "USER", "UEP ID", "PID", "RSS(tree)", "AGE", "STATE", "OUTSTANDING"
        ));
        for row in rows {
            let status: Value = row
                .user
                .as_deref()
                .and_then(|u| nix::unistd::User::from_name(u).ok().flatten())
                .and_then(|u| {
                    let path = u.dir.join(".gantry").join(format!(
                        "uep.{}.{}",
                        dir.saved_id().unwrap_or_default(),
                        row.uep_id
                    ));
                    read_user_status(&path.join("status.json"), u.uid.as_raw())
                })
                .unwrap_or(Value::Null);
            // The user writes status.json: no control characters reach the terminal.
            let state: String = status["state"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or(&row.phase)
                .chars()
                .filter(|c| !c.is_control())
                .take(40)
                .collect();
            let outstanding = status["outstanding"]
                .as_u64()
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "  {:<12} {:<36} {:>8} {:>10} {:>8}  {:<28} {:>11}\n",
                row.user.as_deref().unwrap_or("?"),
                row.uep_id,
                row.pid,
                human_bytes(crate::process::tree_rss_bytes(row.pid)),
                human_age(now.saturating_sub(row.started_s)),
                state,
                outstanding
            ));
        }
    }
    Ok(out)
}

/// Reads a UEP's `status.json`, which its user controls, as root would safely: no
/// symlinks, no FIFOs or devices, owned by that user, at most 64 KiB.
fn read_user_status(path: &std::path::Path, uid: u32) -> Option<Value> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != uid {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(64 * 1024).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `render-user-config NAME --user-config JSON [--identity USERNAME]`: renders the
/// template as the MEP would for that user, or says exactly why it would refuse.
pub fn render_user_config(
    name: &str,
    user_config: &str,
    identity: Option<&str>,
    user_runtime: Option<&str>,
) -> anyhow::Result<String> {
    let dir = EndpointDir::new(name)?;
    let config = EndpointConfig::load(&dir.config())?;
    let user_opts: Map<String, Value> = serde_json::from_str(user_config)
        .context("--user-config must be a JSON object, e.g. '{\"ACCOUNT_ID\": \"314159265\"}'")?;
    let user_runtime: Value = match user_runtime {
        Some(text) => serde_json::from_str(text).context("--user-runtime must be JSON")?,
        None => json!({"python_version": "3.11.2"}),
    };
    let local_name = match identity {
        Some(username) => {
            let path = config
                .identity_mapping_config_path
                .clone()
                .context("--identity needs identity_mapping_config_path in config.yaml")?;
            let text = std::fs::read_to_string(&path)?;
            let mapper = gantry_identity_mapping::IdentityMapper::from_json(&text)?;
            let identities = vec![gantry_protocol::command::IdentityInfo {
                id: Uuid::new_v4(),
                sub: None,
                username: username.to_owned(),
                email: None,
                name: None,
                organization: None,
                identity_provider: None,
                status: Some("used".into()),
            }];
            mapper
                .map(&identities, dir.saved_id().unwrap_or_default())?
                .with_context(|| format!("{username} maps to no local account"))?
        }
        None => {
            nix::unistd::User::from_uid(nix::unistd::geteuid())?
                .context("this account has no name")?
                .name
        }
    };
    let user = nix::unistd::User::from_name(&local_name)?
        .with_context(|| format!("there is no local account {local_name:?}"))?;
    let groups = nix::unistd::getgrouplist(&std::ffi::CString::new(local_name.clone())?, user.gid)
        .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();
    let mapped = MappedIdentity {
        uname: user.name.clone(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        dir: user.dir.display().to_string(),
        shell: user.shell.display().to_string(),
        groups,
    };
    let bundle = TemplateBundle::read(&config.user_config_template_path)?;
    let schema = match &config.user_config_schema_path {
        Some(path) => Some(gantry_user_config::read_schema(path)?),
        None => None,
    };
    let rendered = gantry_user_config::render(
        &bundle,
        schema.as_ref(),
        &RenderInputs {
            user_opts: &user_opts,
            user_runtime: &user_runtime,
            parent_config: &Value::Object(config.raw.clone()),
            mapped_identity: &mapped,
        },
    )?;
    crate::uep::UepConfig::parse(&rendered)
        .context("the template rendered, but the result is not a valid user endpoint config")?;
    Ok(rendered)
}
