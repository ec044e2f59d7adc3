//! Where an endpoint keeps its files: `~/.gantry/<name>/` (root's home for a MEP), with
//! `config.yaml`, the template and schema, `identity_mapping.json`,
//! `user_environment.yaml`, `endpoint.json` (the id it registered with),
//! `credentials.json` (optional), `daemon.pid` and `endpoint.log` (SPEC §5).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The folder that holds every endpoint of this user: `$GANTRY_HOME`, else
/// `~/.gantry`.
pub fn gantry_home() -> PathBuf {
    if let Some(dir) = std::env::var_os("GANTRY_HOME") {
        return PathBuf::from(dir);
    }
    // Root's folder comes from the password database, never from $HOME, which `sudo -E`
    // would carry over from the user who ran it.
    let from_env = if nix::unistd::geteuid().is_root() {
        None
    } else {
        std::env::var_os("HOME").map(PathBuf::from)
    };
    let home = from_env
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".gantry")
}

/// Whether `name` may name an endpoint (and so a folder): letters, digits, `-`, `_`, `.`,
/// not starting with a dot.
pub fn valid_endpoint_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// One endpoint's folder.
#[derive(Debug, Clone)]
pub struct EndpointDir {
    /// The endpoint's name.
    pub name: String,
    /// `~/.gantry/<name>`.
    pub path: PathBuf,
}

/// What `endpoint.json` keeps: the id the endpoint registered with, reused on restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointState {
    /// The endpoint's id.
    pub endpoint_id: Uuid,
}

/// `credentials.json`: the endpoint client's id and secret, readable by its owner only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialsFile {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
}

impl EndpointDir {
    /// The folder of endpoint `name` under [`gantry_home`].
    pub fn new(name: &str) -> anyhow::Result<EndpointDir> {
        if !valid_endpoint_name(name) {
            anyhow::bail!(
                "{name:?} is not a valid endpoint name: use letters, digits, '-', '_' and '.', at most 64"
            );
        }
        Ok(EndpointDir {
            name: name.to_owned(),
            path: gantry_home().join(name),
        })
    }

    /// `config.yaml`.
    pub fn config(&self) -> PathBuf {
        self.path.join("config.yaml")
    }
    /// `endpoint.json`.
    pub fn state(&self) -> PathBuf {
        self.path.join("endpoint.json")
    }
    /// `daemon.pid`.
    pub fn pidfile(&self) -> PathBuf {
        self.path.join("daemon.pid")
    }
    /// `endpoint.log`.
    pub fn log(&self) -> PathBuf {
        self.path.join("endpoint.log")
    }
    /// `credentials.json`.
    pub fn credentials(&self) -> PathBuf {
        self.path.join("credentials.json")
    }
    /// `ueps.json`: the running MEP's table of user endpoints, for `list`.
    pub fn ueps(&self) -> PathBuf {
        self.path.join("ueps.json")
    }

    /// Whether the endpoint is configured.
    pub fn exists(&self) -> bool {
        self.config().is_file()
    }

    /// The id saved by an earlier registration.
    pub fn saved_id(&self) -> Option<Uuid> {
        let text = std::fs::read_to_string(self.state()).ok()?;
        serde_json::from_str::<EndpointState>(&text)
            .ok()
            .map(|s| s.endpoint_id)
    }

    /// Saves the registered id.
    pub fn save_id(&self, endpoint_id: Uuid) -> std::io::Result<()> {
        write_private(
            &self.state(),
            serde_json::to_string_pretty(&EndpointState { endpoint_id })?.as_bytes(),
        )
    }

    /// The pid in `daemon.pid` if that process still runs.
    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pidfile())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
            .then_some(pid)
    }
}

/// Creates a folder with mode 0700 (and its parents), whatever the umask.
pub fn create_private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Writes a file readable by its owner only (0600), replacing it atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with_mode(path, bytes, 0o600)
}

/// Writes a file with `mode`, replacing it atomically, whatever the umask.
pub fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Reads a credentials file, refusing one that others may read (a secret in a
/// world-readable file is a secret no more).
pub fn read_credentials_file(path: &Path) -> anyhow::Result<CredentialsFile> {
    let meta = std::fs::metadata(path)?;
    if meta.mode() & 0o077 != 0 {
        anyhow::bail!(
            "{} is readable by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        );
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        anyhow::bail!("{} is not owned by this user", path.display());
    }
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}
