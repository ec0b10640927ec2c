//! Reading settings from the environment. The standard variables `DATABASE_URL`, `AMQP_URL`
//! and `REDIS_URL` override the defaults, which are the local services at their default ports,
//! so a fresh checkout runs with no configuration at all. Every other variable is read through
//! [`Env`]; the whole settings tree is `till`'s `settings` module.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Postgres, unless `DATABASE_URL` says otherwise.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/tillstream";
/// RabbitMQ, unless `AMQP_URL` says otherwise.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Redis, unless `REDIS_URL` says otherwise.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// The process environment, read once at start and handed to every part that has settings, so
/// each variable is parsed in one place ([`Env`]'s typed getters) and a bad value is an error
/// that names the variable and what was expected — never a silent default.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

/// A variable whose value is not what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?} is not {expected}")]
pub struct SettingError {
    pub variable: String,
    pub value: String,
    pub expected: String,
}

impl SettingError {
    pub fn new(variable: &str, value: &str, expected: impl Into<String>) -> Self {
        Self {
            variable: variable.to_owned(),
            value: value.to_owned(),
            expected: expected.into(),
        }
    }
}

impl Env {
    /// This process's environment.
    pub fn from_process() -> Self {
        Self(std::env::vars().collect())
    }

    /// An environment of just these variables (tests).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// The variable's value; a blank one counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// Text, or `default` when unset.
    pub fn text(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    /// A value parsed by `parse` (which says `None` for a bad one), or `default` when unset.
    pub fn parsed<T>(
        &self,
        name: &str,
        default: T,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, SettingError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => parse(raw.trim()).ok_or_else(|| SettingError::new(name, raw, expected)),
        }
    }

    /// A socket address such as `127.0.0.1:8080`.
    pub fn addr(&self, name: &str, default: SocketAddr) -> Result<SocketAddr, SettingError> {
        self.parsed(name, default, "an address like 127.0.0.1:8080", |v| {
            v.parse().ok()
        })
    }

    /// A whole number of at least 1.
    pub fn positive(&self, name: &str, default: u32) -> Result<u32, SettingError> {
        self.parsed(name, default, "a positive whole number", |v| {
            v.parse().ok().filter(|n| *n > 0)
        })
    }

    /// A positive whole number of milliseconds.
    pub fn millis(&self, name: &str, default: Duration) -> Result<Duration, SettingError> {
        self.parsed(
            name,
            default,
            "a positive whole number of milliseconds",
            |v| v.parse().ok().filter(|n| *n > 0).map(Duration::from_millis),
        )
    }

    /// A positive whole number of seconds.
    pub fn seconds(&self, name: &str, default: Duration) -> Result<Duration, SettingError> {
        self.parsed(name, default, "a positive whole number of seconds", |v| {
            v.parse().ok().filter(|n| *n > 0).map(Duration::from_secs)
        })
    }

    /// `rate/burst`, both positive whole numbers: requests per second and the burst allowed.
    pub fn rate(&self, name: &str, default: (u32, u32)) -> Result<(u32, u32), SettingError> {
        self.parsed(
            name,
            default,
            "rate/burst in requests per second, e.g. 200/400",
            |v| {
                let (rate, burst) = v.split_once('/')?;
                let rate: u32 = rate.trim().parse().ok().filter(|n| *n > 0)?;
                let burst: u32 = burst.trim().parse().ok().filter(|n| *n > 0)?;
                Some((rate, burst))
            },
        )
    }

    /// A secret: `NAME`, or the contents of the file `NAME_FILE` names (how Kubernetes and
    /// compose mount secrets), trimmed; `None` when neither is set.
    pub fn secret(&self, name: &str) -> Result<Option<String>, SettingError> {
        if let Some(value) = self.get(name) {
            return Ok(Some(value.trim().to_owned()));
        }
        let file_variable = format!("{name}_FILE");
        let Some(path) = self.get(&file_variable) else {
            return Ok(None);
        };
        std::fs::read_to_string(path)
            .map(|contents| Some(contents.trim().to_owned()))
            .map_err(|e| SettingError::new(&file_variable, path, format!("a readable file ({e})")))
    }

    /// A comma-separated list; empty when unset.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| {
                v.split(',')
                    .map(|item| item.trim().to_owned())
                    .filter(|item| !item.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `DATABASE_URL` or the local default.
pub fn database_url() -> String {
    Env::from_process().text("DATABASE_URL", DEFAULT_DATABASE_URL)
}

/// `AMQP_URL` or the local default.
pub fn amqp_url() -> String {
    Env::from_process().text("AMQP_URL", DEFAULT_AMQP_URL)
}

/// `REDIS_URL` or the local default.
pub fn redis_url() -> String {
    Env::from_process().text("REDIS_URL", DEFAULT_REDIS_URL)
}

/// A URL with any password replaced by `***`, safe to print.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_blank_is_unset_and_bad_values_name_the_variable() {
        let env = Env::from_pairs([
            ("ADDR", "127.0.0.1:9000"),
            ("BLANK", "  "),
            ("COUNT", " 8 "),
            ("RATE", "10/20"),
            ("LIST", "a, b,,c"),
        ]);
        let default_addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(env.addr("ADDR", default_addr).unwrap().port(), 9000);
        assert_eq!(env.addr("BLANK", default_addr).unwrap(), default_addr);
        assert_eq!(env.positive("COUNT", 1).unwrap(), 8);
        assert_eq!(env.positive("UNSET", 32).unwrap(), 32);
        assert_eq!(env.rate("RATE", (1, 1)).unwrap(), (10, 20));
        assert_eq!(env.list("LIST"), ["a", "b", "c"]);
        assert!(env.list("UNSET").is_empty());
        assert_eq!(env.text("BLANK", "d"), "d");

        for (value, check) in [
            ("abc", "positive"),
            ("0", "positive"),
            ("-1", "seconds"),
            ("1.5", "millis"),
            ("10", "rate"),
            ("0/5", "rate"),
            ("localhost", "addr"),
        ] {
            let env = Env::from_pairs([("TILL_X", value)]);
            let error = match check {
                "positive" => env.positive("TILL_X", 1).unwrap_err(),
                "seconds" => env.seconds("TILL_X", Duration::ZERO).unwrap_err(),
                "millis" => env.millis("TILL_X", Duration::ZERO).unwrap_err(),
                "rate" => env.rate("TILL_X", (1, 1)).unwrap_err(),
                _ => env.addr("TILL_X", default_addr).unwrap_err(),
            };
            assert_eq!(error.variable, "TILL_X");
            assert!(
                error
                    .to_string()
                    .starts_with(&format!("TILL_X={value:?} is not ")),
                "{error}"
            );
        }
    }

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/db"),
            "postgres://postgres@127.0.0.1/db"
        );
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
    }
}
