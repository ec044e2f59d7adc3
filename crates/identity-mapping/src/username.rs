//! Whether a mapped name is safe to hand to the spawner as a local username.
//!
//! Mapping output is built from identity fields that the identity provider, not the
//! administrator, controls. A name is looked up with `getpwnam` and ends up in paths
//! (`~user/.gantry/...`) and log lines, so anything that could act as a path, an option
//! or a record separator is refused here, before anyone uses it. Names such as
//! `alice@example.org` (SSSD's fully qualified names) stay allowed.

/// The longest username Linux's tools accept (`useradd`, utmp).
pub const MAX_USERNAME_LEN: usize = 32;

/// `Ok` when `name` is usable as a local username, else why not.
pub fn check_username(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_USERNAME_LEN {
        return Err("it is longer than 32 bytes, the longest username Linux accepts");
    }
    if name.starts_with('-') {
        return Err("it starts with '-', so a command could take it for an option");
    }
    if name == "." || name == ".." {
        return Err("it is '.' or '..', a path component");
    }
    if name.contains('/') {
        return Err("it contains '/', so it could name a path");
    }
    if name.contains('\0') {
        return Err("it contains a NUL byte");
    }
    if name.chars().any(char::is_control) {
        return Err("it contains a control character");
    }
    if name.chars().any(char::is_whitespace) {
        return Err("it contains whitespace");
    }
    if name.contains(':') {
        return Err("it contains ':', the field separator of /etc/passwd");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_username;

    #[test]
    fn plain_and_qualified_names_pass() {
        for name in [
            "alice",
            "root",
            "a",
            "john.doe",
            "alice@example.org",
            "svc_x-1",
            "é",
        ] {
            assert_eq!(check_username(name), Ok(()), "{name}");
        }
        assert_eq!(check_username(&"a".repeat(32)), Ok(()));
    }

    #[test]
    fn names_that_could_be_paths_or_options_are_refused() {
        for name in [
            "", "-rf", "../x", "a/b", "/", ".", "..", "a\0b", "a\nb", "a b", "a:b",
        ] {
            assert!(check_username(name).is_err(), "{name:?} was accepted");
        }
        assert!(check_username(&"a".repeat(33)).is_err());
    }
}
