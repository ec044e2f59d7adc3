//! How a worker pool and its UEP prove to each other that they belong together.
//!
//! The UEP writes a random 32-byte secret to a file only its user can read (mode 0600 in
//! the UEP's private directory) and passes the file's path, never the secret, on the
//! pool's command line. A pool may run on another machine (a batch job) and connect over
//! the network, so the port itself proves nothing: anyone on the node could connect, and
//! whoever holds the port could feed a pool tasks that run as the user. Both sides
//! therefore prove knowledge of the secret with HMAC-SHA256 over fresh random nonces from
//! *both* sides, the UEP id and the block id, and a role label, so that a proof can be
//! neither replayed on another connection nor reflected back by an impostor.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// Bytes of secret and of each nonce.
const RANDOM_BYTES: usize = 32;

/// The per-UEP secret shared with its pools.
#[derive(Clone)]
pub(crate) struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Why a pool cannot use a secret file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SecretError {
    #[error("cannot read the pool secret {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the pool secret {path} may be read by other users (mode {mode:o}) or belongs to \
         another user; it must be a 0600 file of this user"
    )]
    Exposed { path: String, mode: u32 },
    #[error("the pool secret {path} is not the hex text the UEP writes")]
    Malformed { path: String },
}

/// Which side is proving; part of the signed text so one side's proof is never valid
/// as the other's.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    Pool,
    Uep,
}

/// The facts a proof covers, the same on both sides.
#[derive(Debug, Clone)]
pub(crate) struct Transcript<'a> {
    pub uep_id: Uuid,
    pub block: u64,
    pub uep_nonce: &'a str,
    pub pool_nonce: &'a str,
}

fn random_bytes() -> std::io::Result<[u8; RANDOM_BYTES]> {
    let mut bytes = [0u8; RANDOM_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(bytes)
}

/// A fresh nonce, as hex.
pub(crate) fn nonce() -> std::io::Result<String> {
    Ok(hex::encode(random_bytes()?))
}

impl Secret {
    /// Makes a new secret and writes it to `path` (mode 0600, replacing any old one
    /// atomically, so a pool never reads half a file).
    pub(crate) fn create(path: &Path) -> std::io::Result<Secret> {
        let secret = Secret(random_bytes()?.to_vec());
        let temporary = path.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_file(&temporary);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(hex::encode(&secret.0).as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        Ok(secret)
    }

    /// Reads the secret a pool was pointed at, refusing a file others could read.
    pub(crate) fn read(path: &Path) -> Result<Secret, SecretError> {
        let shown = path.display().to_string();
        let read_error = |source| SecretError::Read {
            path: shown.clone(),
            source,
        };
        let metadata = std::fs::metadata(path).map_err(read_error)?;
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 || metadata.uid() != nix::unistd::geteuid().as_raw() {
            return Err(SecretError::Exposed { path: shown, mode });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        match hex::decode(text.trim()) {
            Ok(bytes) if bytes.len() == RANDOM_BYTES => Ok(Secret(bytes)),
            _ => Err(SecretError::Malformed { path: shown }),
        }
    }

    fn mac(&self, role: Role, transcript: &Transcript) -> Hmac<Sha256> {
        // `new_from_slice` accepts keys of any length for HMAC; this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        let role = match role {
            Role::Pool => "pool",
            Role::Uep => "uep",
        };
        // Fields are separated by NUL, which none of them can contain.
        for part in [
            "gantry-pool-auth-v1",
            role,
            &transcript.uep_id.to_string(),
            &transcript.block.to_string(),
            transcript.uep_nonce,
            transcript.pool_nonce,
        ] {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        mac
    }

    /// This side's proof, as hex.
    pub(crate) fn prove(&self, role: Role, transcript: &Transcript) -> String {
        hex::encode(self.mac(role, transcript).finalize().into_bytes())
    }

    /// Whether `claimed` is `role`'s proof; compared in constant time.
    pub(crate) fn verify(&self, role: Role, transcript: &Transcript, claimed: &str) -> bool {
        match hex::decode(claimed) {
            Ok(bytes) => self.mac(role, transcript).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn transcript<'a>(uep_nonce: &'a str, pool_nonce: &'a str) -> Transcript<'a> {
        Transcript {
            uep_id: Uuid::nil(),
            block: 3,
            uep_nonce,
            pool_nonce,
        }
    }

    #[test]
    fn proofs_hold_only_for_the_same_secret_role_and_nonces() {
        let dir = std::env::temp_dir().join(format!("gantry-auth-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        let secret = Secret::create(&path).unwrap();
        let again = Secret::read(&path).unwrap();
        let other = Secret::create(&dir.join("other")).unwrap();
        let (a, b) = (nonce().unwrap(), nonce().unwrap());
        let t = transcript(&a, &b);
        let proof = secret.prove(Role::Pool, &t);
        assert!(again.verify(Role::Pool, &t, &proof));
        assert!(!again.verify(Role::Uep, &t, &proof), "reflected proof");
        assert!(
            !other.verify(Role::Pool, &t, &proof),
            "another UEP's secret"
        );
        assert!(
            !again.verify(Role::Pool, &transcript(&b, &a), &proof),
            "other nonces"
        );
        assert!(!again.verify(Role::Pool, &t, "zz"), "not hex");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_secret_others_can_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("gantry-auth-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        Secret::create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = Secret::read(&path).unwrap_err();
        assert!(matches!(error, SecretError::Exposed { .. }), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
