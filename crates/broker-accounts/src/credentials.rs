//! Broker passwords derived from one service secret, so the service never stores a
//! password yet can hand the same one out again after a restart:
//! `password = hex(HMAC-SHA256(secret, account name, 0, salt))`. The salt is stored per
//! identity and per endpoint and changes when their credentials are revoked (and is new
//! for every new endpoint row), which is what rotates a password.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Derives an account's password from the service's broker secret and the account's
/// current salt.
pub fn account_password(secret: &str, account: &str, salt: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(account.as_bytes());
    // A separator no account name contains, so that (name, salt) pairs cannot collide.
    mac.update(&[0]);
    mac.update(salt.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_differ_by_account_secret_and_salt_and_are_stable() {
        let a = account_password("s1", "gantry-ep-1", "x");
        assert_eq!(a, account_password("s1", "gantry-ep-1", "x"));
        assert_ne!(a, account_password("s1", "gantry-ep-2", "x"));
        assert_ne!(a, account_password("s2", "gantry-ep-1", "x"));
        assert_ne!(a, account_password("s1", "gantry-ep-1", "y"));
        assert_ne!(
            account_password("s1", "ab", "c"),
            account_password("s1", "a", "bc")
        );
        assert_eq!(a.len(), 64);
    }
}
