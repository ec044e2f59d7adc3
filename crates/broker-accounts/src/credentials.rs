//! Broker passwords derived from one service secret, so the service never stores a
//! password per account yet can hand the same one out again after a restart:
//! `password = hex(HMAC-SHA256(secret, account name))`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Derives an account's password from the service's broker secret.
pub fn account_password(secret: &str, account: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(account.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_differ_by_account_and_secret_and_are_stable() {
        let a = account_password("s1", "gantry-ep-1");
        assert_eq!(a, account_password("s1", "gantry-ep-1"));
        assert_ne!(a, account_password("s1", "gantry-ep-2"));
        assert_ne!(a, account_password("s2", "gantry-ep-1"));
        assert_eq!(a.len(), 64);
    }
}
