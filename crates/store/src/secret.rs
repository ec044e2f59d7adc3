//! Random secrets and their hashes. Tokens and client secrets are 32 random bytes, shown
//! once and stored only as SHA-256: they carry 256 bits of entropy, so a fast hash is
//! enough to make a stolen database useless for authenticating.

use sha2::{Digest, Sha256};

/// A new random secret as lowercase hex with a readable prefix (`gtu_...`).
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    format!("{prefix}{}", hex::encode(bytes))
}

/// A fresh salt for broker passwords (see `broker_salt` in the schema): 128 random bits
/// as hex. Not secret by itself; it only has to change.
pub fn new_salt() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    hex::encode(bytes)
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashes_stable() {
        let a = new_secret("gtu_");
        let b = new_secret("gtu_");
        assert_ne!(a, b);
        assert!(a.starts_with("gtu_") && a.len() == 4 + 64);
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_ne!(hash_secret(&a), hash_secret(&b));
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
