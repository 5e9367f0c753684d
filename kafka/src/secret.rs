//! Secrets: kept out of logs and `Debug`, read from files or the environment, never taken from a command line.

use std::fmt;
use std::path::Path;

/// librdkafka properties whose values are secrets: refused on a command line, never logged.
const SECRET_OPTIONS: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl.truststore.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
];

/// Whether the librdkafka property `key` holds a secret.
pub fn is_secret_option(key: &str) -> bool {
    SECRET_OPTIONS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(key.trim()))
}

/// A password or key: its `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for the one place that hands it to librdkafka.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a secret from a file: the first line, without its line ending (as `echo pw > file` writes
/// it). A file others may read is used, with a warning: mounted secrets are often mode 0644.
pub fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value = text.lines().next().unwrap_or("").to_owned();
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if let Err(why) = private(path) {
        tracing::warn!(file = %path.display(), %why, "secret file readable by others");
    }
    Ok(Secret(value))
}

/// Whether only the owner may read `path` (mode `0600` or stricter): `Err` says who else can.
pub fn private(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)
            .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            let who = match (mode & 0o070 != 0, mode & 0o007 != 0) {
                (true, true) => "its group and every other user",
                (true, false) => "its group",
                _ => "every other user",
            };
            return Err(format!(
                "{} (mode {:04o}) can be read or written by {who}: run `chmod 600 {}`",
                path.display(),
                mode & 0o7777,
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn secret_files_give_their_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read_secret_file(&f).unwrap().expose(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        assert!(read_secret_file(&f).unwrap_err().ends_with("is empty"));
        assert!(
            read_secret_file(&dir.path().join("missing"))
                .unwrap_err()
                .starts_with("cannot read")
        );
    }

    #[cfg(unix)]
    #[test]
    fn private_means_nobody_but_the_owner() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("agent.toml");
        std::fs::write(&f, "").unwrap();
        for (mode, ok, who) in [
            (0o600, true, ""),
            (0o400, true, ""),
            (0o640, false, "its group"),
            (0o604, false, "every other user"),
            (0o644, false, "its group and every other user"),
        ] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            match private(&f) {
                Ok(()) => assert!(ok, "{mode:o} passed"),
                Err(e) => {
                    assert!(!ok, "{mode:o}: {e}");
                    assert!(e.contains(who) && e.contains("chmod 600"), "{e}");
                }
            }
        }
    }

    #[test]
    fn secret_options_are_recognised_in_any_case() {
        assert!(is_secret_option("sasl.password"));
        assert!(is_secret_option(" SASL.OAUTHBEARER.CLIENT.SECRET "));
        assert!(!is_secret_option("sasl.username"));
    }
}
