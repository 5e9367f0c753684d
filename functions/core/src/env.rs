//! Function settings, declared once as clap arguments and read from the environment (as Lambda provides it).
//!
//! A function declares its settings once, as a `#[derive(clap::Args)]` struct whose fields carry
//! the variable (`env = "..."`), the flag, the default and the help. `damselfly` flattens that
//! struct into its commands (flags, or the same variables); the function's Lambda binary reads it
//! with [`from_env`], where only the variables and the defaults apply. The value parsers below
//! fail with a [`Problem`], which says what is wrong and how to fix it: clap shows it after the
//! flag, [`from_env`] after the variable.

use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Command, FromArgMatches};

/// A configuration problem, naming the variable and how to fix it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvError {
    /// A required variable is not set.
    #[error("{var} is not set: {fix}")]
    Missing {
        /// The environment variable.
        var: String,
        /// How to fix it.
        fix: String,
    },
    /// A variable is set to something unusable.
    #[error("{var}={value:?} is invalid ({why}): {fix}")]
    Invalid {
        /// The environment variable.
        var: String,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
        /// How to fix it.
        fix: String,
    },
}

/// Why a setting's text is unusable, and how to fix it: the error of every value parser here.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{why}: {fix}")]
pub struct Problem {
    /// What is wrong.
    pub why: String,
    /// How to fix it.
    pub fix: &'static str,
}

impl Problem {
    /// A problem with its fix.
    pub fn new(why: impl ToString, fix: &'static str) -> Self {
        Self {
            why: why.to_string(),
            fix,
        }
    }
}

/// The settings `T` from the process environment: each field's variable, or its default.
///
/// Command-line arguments are not read (Lambda passes none). A variable set to blank counts as
/// not set. A bad value is an [`EnvError`] naming the variable, the value and the fix; a missing
/// required one names the variable and asks for what its help describes (so a required setting's
/// help is a noun phrase: "The lake URL, e.g. ...").
pub fn from_env<T: Args + FromArgMatches>() -> Result<T, EnvError> {
    from_lookup(|var| std::env::var(var).ok())
}

/// The settings `T` at their defaults, whatever the environment holds (an error when a field
/// has none).
pub fn defaults<T: Args + FromArgMatches>() -> Result<T, EnvError> {
    from_lookup(|_| None)
}

/// As [`from_env`], with the variables looked up through `get` (tests pass a map).
pub fn from_lookup<T: Args + FromArgMatches>(
    get: impl Fn(&str) -> Option<String>,
) -> Result<T, EnvError> {
    let cmd = T::augment_args(Command::new("function").no_binary_name(true));
    // The variables become flags, so that clap parses them with the fields' own value parsers,
    // and clap is kept from reading the real environment itself.
    let mut argv = Vec::new();
    let mut vars = Vec::new();
    for arg in cmd.get_arguments() {
        if let (Some(var), Some(long)) = (arg.get_env().and_then(|v| v.to_str()), arg.get_long()) {
            if let Some(value) = get(var).filter(|v| !v.trim().is_empty()) {
                argv.push(format!("--{long}={value}"));
            }
            vars.push((format!("--{long}"), var.to_owned()));
        }
    }
    let mut cmd = cmd.mut_args(|a| a.env(None::<&'static str>));
    let matches = cmd
        .try_get_matches_from_mut(&argv)
        .map_err(|e| env_error(&cmd, &vars, &e, &get))?;
    T::from_arg_matches(&matches).map_err(|e| env_error(&cmd, &vars, &e, &get))
}

/// A clap error about flags made from variables (`vars`: flag, variable), told in terms of the
/// variables.
fn env_error(
    cmd: &Command,
    vars: &[(String, String)],
    e: &clap::Error,
    get: &impl Fn(&str) -> Option<String>,
) -> EnvError {
    let named = |key: ContextKind| match e.get(key) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    // clap names the flag as `--long <VALUE>`; find its argument (and so its variable).
    let flag = named(ContextKind::InvalidArg).unwrap_or_default();
    let arg = cmd.get_arguments().find(|a| {
        a.get_long().is_some_and(|long| {
            let long = format!("--{long}");
            flag == long
                || flag.starts_with(&format!("{long} "))
                || flag.starts_with(&format!("{long}="))
        })
    });
    let var = arg
        .and_then(|a| a.get_long())
        .and_then(|long| vars.iter().find(|(f, _)| f[2..] == *long))
        .map_or_else(|| flag.clone(), |(_, var)| var.clone());
    let help = arg
        .and_then(|a| a.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    if e.kind() == ErrorKind::MissingRequiredArgument {
        return EnvError::Missing {
            fix: format!("set it to {}", lowercase_first(&help)),
            var,
        };
    }
    let value = named(ContextKind::InvalidValue)
        .or_else(|| get(&var))
        .unwrap_or_default();
    let source = std::error::Error::source(e);
    match source.and_then(|s| s.downcast_ref::<Problem>()) {
        Some(p) => EnvError::Invalid {
            var,
            value,
            why: p.why.clone(),
            fix: p.fix.to_owned(),
        },
        None => EnvError::Invalid {
            var,
            value,
            why: source.map_or_else(|| e.kind().to_string(), ToString::to_string),
            fix: format!("use {}", lowercase_first(&help)),
        },
    }
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_lowercase().chain(chars).collect::<String>()
    })
}

/// The lake setting and a function's own settings: what a Lambda binary reads with [`from_env`].
#[derive(Debug, Clone, PartialEq, Args)]
pub struct WithLake<S: Args> {
    /// The lake URL, e.g. s3://my-bucket/lake or /var/lib/damselfly/lake
    #[arg(long, env = "LAKE")]
    pub lake: String,
    /// The function's own settings.
    #[command(flatten)]
    pub settings: S,
}

/// How to write a duration.
pub const DURATION_FIX: &str = "use a duration such as 90s, 10m, 7d";

/// A duration setting (`90s`, `10m`, `1h30m`, `7d`).
pub fn duration(text: &str) -> Result<Duration, Problem> {
    humantime::parse_duration(text.trim()).map_err(|e| Problem::new(e, DURATION_FIX))
}

/// How a duration default is shown (and read back by [`duration`]): `1h`, `7days`.
pub fn show_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A count setting: a whole number without units.
pub fn whole_number<T>(text: &str) -> Result<T, Problem>
where
    T: std::str::FromStr<Err = std::num::ParseIntError>,
{
    text.trim()
        .parse()
        .map_err(|e| Problem::new(e, "use a whole number, digits only (no units)"))
}

/// Parses a byte size: `64MiB`, `512 KiB`, `1GiB`, `500MB` or a plain number of bytes (the
/// `bytesize` crate's syntax: binary units with `i`, decimal ones without).
pub fn parse_byte_size(text: &str) -> Option<u64> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .ok()
        .map(|b| b.as_u64())
}

/// How a byte-size default is shown, exactly (and read back by [`parse_byte_size`]): `64MiB`,
/// `256KiB`, or a number of bytes.
pub fn show_byte_size(bytes: u64) -> String {
    let unit = ["GiB", "MiB", "KiB"]
        .into_iter()
        .zip([30, 20, 10])
        .find(|&(_, shift)| bytes != 0 && bytes.trailing_zeros() >= shift);
    match unit {
        Some((unit, shift)) => format!("{}{unit}", bytes >> shift),
        None => bytes.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Settings shaped as a function's.
    #[derive(Debug, Clone, PartialEq, Args)]
    struct Knobs {
        /// How long to wait.
        #[arg(long, env = "T_WAIT", value_parser = duration, default_value = show_duration(Duration::from_secs(3600)))]
        wait: Duration,
        /// Most things kept.
        #[arg(long, env = "T_MOST", value_parser = whole_number::<usize>, default_value_t = 7)]
        most: usize,
        /// Where the things go.
        #[arg(long, env = "T_WHERE")]
        place: Option<String>,
    }

    fn read(pairs: &[(&str, &str)]) -> Result<WithLake<Knobs>, EnvError> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        from_lookup(|k| map.get(k).map(|v| v.to_string()))
    }

    #[test]
    fn variables_or_defaults_apply() {
        let c = read(&[("LAKE", "s3://b/l")]).unwrap();
        assert_eq!(c.lake, "s3://b/l");
        assert_eq!(
            c.settings,
            Knobs {
                wait: Duration::from_secs(3600),
                most: 7,
                place: None
            }
        );
        // Blank counts as not set; values starting with a dash are values, not flags.
        let c = read(&[
            ("LAKE", "/l"),
            ("T_WAIT", "90s"),
            ("T_MOST", " "),
            ("T_WHERE", "-x"),
        ])
        .unwrap();
        assert_eq!(c.settings.wait, Duration::from_secs(90));
        assert_eq!(c.settings.most, 7);
        assert_eq!(c.settings.place.as_deref(), Some("-x"));
    }

    #[test]
    fn errors_name_the_variable_the_value_and_the_fix() {
        let e = read(&[]).unwrap_err().to_string();
        assert_eq!(
            e,
            "LAKE is not set: set it to the lake URL, e.g. s3://my-bucket/lake or /var/lib/damselfly/lake"
        );
        let e = read(&[("LAKE", " ")]).unwrap_err().to_string();
        assert!(e.starts_with("LAKE is not set"), "{e}");
        let e = read(&[("LAKE", "/l"), ("T_WAIT", "soon")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "T_WAIT=\"soon\" is invalid (expected number at 0): use a duration such as 90s, 10m, 7d"
        );
        let e = read(&[("LAKE", "/l"), ("T_MOST", "1k")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "T_MOST=\"1k\" is invalid (invalid digit found in string): use a whole number, digits only (no units)"
        );
    }

    #[test]
    fn the_real_environment_does_not_leak_into_a_lookup() {
        // PATH is set in every test process; a setting reading it must still take its default.
        #[derive(Debug, Args)]
        struct Path {
            /// A setting named after a variable that is set.
            #[arg(long, env = "PATH", default_value = "none")]
            path: String,
        }
        let p: Path = defaults().unwrap();
        assert_eq!(p.path, "none");
    }

    #[test]
    fn defaults_read_back() {
        for d in [3600, 7 * 86_400, 600, 90] {
            let d = Duration::from_secs(d);
            assert_eq!(duration(&show_duration(d)), Ok(d));
        }
        for b in [64 << 20, 256 << 10, 1_000_000_000, 1] {
            assert_eq!(
                parse_byte_size(&show_byte_size(b)),
                Some(b),
                "{}",
                show_byte_size(b)
            );
        }
    }

    #[test]
    fn byte_sizes_parse_with_units_or_without() {
        assert_eq!(parse_byte_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_byte_size(" 512 KiB "), Some(512 << 10));
        assert_eq!(parse_byte_size("4096"), Some(4096));
        assert_eq!(parse_byte_size("1 GB"), Some(1_000_000_000));
        assert_eq!(parse_byte_size("lots"), None);
        assert_eq!(parse_byte_size("12 parsecs"), None);
    }
}
