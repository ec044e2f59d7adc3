//! The broker master secret: every broker account's password is derived from it (see
//! `gantry_broker_accounts::credentials`), so whoever reads it can log in as any endpoint
//! or user. It therefore lives outside the database, which is backed up, copied and
//! read by more people than the service's key: in a file only the service's account
//! can read (`~/.gantry/broker.key` by default, created 0600 whatever the umask), or in
//! the environment (`GANTRY_BROKER_SECRET`) where a secret store injects it.
//!
//! Versions before this one kept the secret in the `settings` table; it is moved to the
//! key file on the first start and removed from the database.

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
    /// A file (created with a new random secret when missing).
    File(PathBuf),
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
    /// The database failed.
    #[error(transparent)]
    Store(#[from] gantry_store::StoreError),
}

/// The secret, from `source`, moving a secret an older version kept in the database into
/// a new key file and removing it from the database in any case.
pub async fn load(store: &Store, source: &MasterSecretSource) -> Result<String, MasterSecretError> {
    let legacy = store.setting(LEGACY_SETTING).await?;
    let secret = match source {
        MasterSecretSource::Value(value) => checked(value.trim(), "GANTRY_BROKER_SECRET")?,
        MasterSecretSource::File(path) => match read_key_file(path)? {
            Some(secret) => secret,
            None => {
                let secret = legacy
                    .clone()
                    .unwrap_or_else(|| gantry_store::secret::new_secret(""));
                create_key_file(path, &secret)?
            }
        },
    };
    if let Some(legacy) = legacy {
        if legacy != secret {
            tracing::warn!(
                "the database held a broker secret other than the one configured; the \
                 configured one is used, so endpoints get new broker passwords when they \
                 next register"
            );
        } else {
            tracing::info!("moved the broker secret out of the database");
        }
        store.delete_setting(LEGACY_SETTING).await?;
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
/// read, or that another account owns, is refused rather than used.
fn read_key_file(path: &Path) -> Result<Option<String>, MasterSecretError> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(MasterSecretError::Exposed {
            path: path.to_owned(),
            problem: format!("readable by others (mode {mode:04o})"),
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if metadata.uid() != euid {
        return Err(MasterSecretError::Exposed {
            path: path.to_owned(),
            problem: format!(
                "owned by uid {}, not by this service's uid {euid}",
                metadata.uid()
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
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
