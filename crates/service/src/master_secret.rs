//! The broker master secret: every broker account's password is derived from it (see
//! `gantry_broker_accounts::credentials`), so whoever reads it can log in as any endpoint
//! or user. It therefore lives outside the database, which is backed up, copied and
//! read by more people than the service's key: in a file only the service's account
//! can read (`~/.gantry/broker.key` by default, created 0600 whatever the umask), or in
//! the environment (`GANTRY_BROKER_SECRET`) where a secret store injects it.
//!
//! The database keeps only a check value (an HMAC of a constant under the secret), so
//! that a second service process on the same database that finds no key file refuses to
//! start instead of making up a secret of its own (its endpoints' passwords would then
//! change with every request that lands on it), while a key the administrator put in
//! place on purpose is taken as a rotation.
//!
//! Versions before this one kept the secret itself in the `settings` table. That copy
//! is dropped, not moved: every backup of the database holds it, so a fresh secret is
//! made in its place (every broker password changes; endpoints register again).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use gantry_store::Store;

/// The `settings` key older versions kept the secret under.
const LEGACY_SETTING: &str = "broker_secret";
/// The shortest secret accepted: 128 bits of hex.
const MIN_LEN: usize = 32;

/// Where the secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterSecretSource {
    /// A file, created with a new random secret when missing and the database was not
    /// set up with another one.
    File(PathBuf),
    /// A new file with a new secret, though the database was set up with another: for a
    /// key file that was lost (`--new-broker-secret`). Refused when the file exists.
    NewFile(PathBuf),
    /// The value itself (from `GANTRY_BROKER_SECRET`).
    Value(String),
}

/// Why the secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum MasterSecretError {
    /// The key file could not be read or written.
    #[error("broker key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The key file may be read by others, or is not the service's.
    #[error(
        "the broker key file {path} is {problem}: anyone who reads it can log in to \
         RabbitMQ as any endpoint or user. Fix it (chown to this account, chmod 600) and \
         start again; if others may have read it, rotate it (see README)"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The secret is too short to be one.
    #[error(
        "the broker secret from {from} is {len} characters; use at least {MIN_LEN} random ones"
    )]
    TooShort {
        /// Where it came from.
        from: String,
        /// Its length.
        len: usize,
    },
    /// No key file, though the database was set up with a secret.
    #[error(
        "the database was set up with a broker secret, but there is no key file at {path}: \
         copy the key file of the service that set the database up (or set \
         GANTRY_BROKER_SECRET). If the key is lost, start once with --new-broker-secret: \
         every endpoint and user then gets a new broker password (restart the endpoints)"
    )]
    Missing {
        /// The key file looked for.
        path: PathBuf,
    },
    /// `--new-broker-secret` with a key file in place.
    #[error(
        "--new-broker-secret makes a new key file, but {path} exists; move it away first \
         (or start without --new-broker-secret to use it)"
    )]
    NewButExists {
        /// The key file.
        path: PathBuf,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] gantry_store::StoreError),
}

/// The `settings` key of the secret's check value.
const CHECK_SETTING: &str = "broker_secret_check";

/// The check value of a secret: it tells secrets apart and reveals nothing of them.
fn check_value(secret: &str) -> String {
    gantry_broker_accounts::credentials::account_password(secret, "gantry-broker-secret-check", "")
}

/// The secret, from `source`. Drops a secret an older version kept in the database (see
/// the module's documentation), refuses to make up a new one for a database that was
/// set up with another, and records the check value of the one in use.
pub async fn load(store: &Store, source: &MasterSecretSource) -> Result<String, MasterSecretError> {
    let legacy = store.setting(LEGACY_SETTING).await?.is_some();
    let recorded = store.setting(CHECK_SETTING).await?;
    let secret = match source {
        MasterSecretSource::Value(value) => checked(value.trim(), "GANTRY_BROKER_SECRET")?,
        MasterSecretSource::File(path) => match read_key_file(path)? {
            Some(secret) => secret,
            None if recorded.is_some() => {
                return Err(MasterSecretError::Missing { path: path.clone() });
            }
            None => create_key_file(path, &gantry_store::secret::new_secret(""))?,
        },
        MasterSecretSource::NewFile(path) => {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(MasterSecretError::NewButExists { path: path.clone() });
            }
            create_key_file(path, &gantry_store::secret::new_secret(""))?
        }
    };
    let check = check_value(&secret);
    if recorded.as_deref() != Some(check.as_str()) {
        if recorded.is_some() {
            tracing::warn!(
                "the broker secret is not the one this database was last used with: taken as \
                 a rotation; every broker account gets a new password when it is next handed \
                 out (restart the endpoints so that they register again)"
            );
        }
        store.set_setting(CHECK_SETTING, &check).await?;
    }
    if legacy {
        store.forget_setting(LEGACY_SETTING).await?;
        tracing::warn!(
            "dropped the broker secret an older version kept in the database (backups hold \
             it); a new one is in use, so restart the endpoints so that they register again"
        );
    }
    Ok(secret)
}

fn checked(secret: &str, from: &str) -> Result<String, MasterSecretError> {
    if secret.len() < MIN_LEN {
        return Err(MasterSecretError::TooShort {
            from: from.to_owned(),
            len: secret.len(),
        });
    }
    Ok(secret.to_owned())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> MasterSecretError + '_ {
    move |source| MasterSecretError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The secret in `path`, or `None` when there is no such file. A file that others may
/// read, that another account owns, that is not a plain file (a symbolic link is not
/// followed), or whose folder others may write to (they could swap the file between a
/// check and the read) is refused rather than used. The checks and the read use one
/// open descriptor.
fn read_key_file(path: &Path) -> Result<Option<String>, MasterSecretError> {
    use std::io::Read;
    let exposed = |problem: String| MasterSecretError::Exposed {
        path: path.to_owned(),
        problem,
    };
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
            return Err(exposed("a symbolic link".into()));
        }
        Err(e) => return Err(io_error(path)(e)),
    };
    let metadata = file.metadata().map_err(io_error(path))?;
    if !metadata.is_file() {
        return Err(exposed("not a plain file".into()));
    }
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(exposed(format!("readable by others (mode {mode:04o})")));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if metadata.uid() != euid {
        return Err(exposed(format!(
            "owned by uid {}, not by this service's uid {euid}",
            metadata.uid()
        )));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let folder = std::fs::metadata(parent).map_err(io_error(parent))?;
        let sticky = folder.permissions().mode() & 0o1000 != 0;
        if folder.permissions().mode() & 0o022 != 0 && !sticky {
            return Err(exposed(format!(
                "in {}, a folder others may write to",
                parent.display()
            )));
        }
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io_error(path))?;
    checked(text.trim(), &path.display().to_string()).map(Some)
}

/// Writes a new key file, mode 0600 whatever the umask (its folder 0700 when it has to
/// be made). When another service process made it first, its secret wins.
fn create_key_file(path: &Path, secret: &str) -> Result<String, MasterSecretError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_error(parent))?;
    }
    // Written whole under a private name, then linked into place: a second service
    // process starting at the same moment never reads a half-written file, and of two
    // racing, the first link wins and both use its secret.
    let staging = path.with_extension(format!("new-{}", std::process::id()));
    let _ = std::fs::remove_file(&staging);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&staging)?;
        // The umask can only take bits away, but say 0600 in so many words.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(format!("{secret}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::hard_link(&staging, path)
    })();
    let _ = std::fs::remove_file(&staging);
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return read_key_file(path)?.ok_or_else(|| {
                io_error(path)(std::io::Error::other("vanished while being created"))
            });
        }
        Err(e) => return Err(io_error(path)(e)),
    }
    tracing::info!(path = %path.display(), "wrote the broker key file; back it up with the database");
    Ok(secret.to_owned())
}
