//! Keeping secrets out of what Berth stores and logs.
//!
//! Apps print what they like: a migration may echo its `DATABASE_URL`, a failing probe
//! its connection string. Berth copies such output into the journal, events, logs and
//! status files, so every output is passed through a [`Redactor`] where it enters Berth
//! (a migration's log tail, a probe's or smoke check's output, a step's error).
//!
//! A [`Redactor`] replaces with `***`:
//! - every value of the environment's `env` and of its env files at least
//!   [`MIN_SECRET_LEN`] characters long (shorter ones, like `1` or `on`, would blank out
//!   half of any text);
//! - the password of a URL: `scheme://user:pass@` becomes `scheme://user:***@`;
//! - the value of a `password`/`passwd`/`secret`/`token`/`api_key`-like key, in
//!   `key=value` and `key: value` forms, whatever the case.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use regex::Regex;

use crate::host::engine::parse_env_file;
use crate::host::{Host, HostError};
use crate::model::Template;

/// Values shorter than this are not treated as secrets.
pub const MIN_SECRET_LEN: usize = 4;

const MASK: &str = "***";

/// `scheme://user:password@`: the password is group 2.
static URL_CREDENTIALS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@]*:)([^\s/@]+)@").expect("a valid regex")
});

/// `key=value`, `key: value`, `"key": "value"` for keys that name a secret: the value is
/// group 2.
static SECRET_PAIR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)\b([a-z0-9_.-]*(?:password|passwd|secret|token|api[_-]?key)[a-z0-9_.-]*["']?\s*[=:]\s*["']?)([^\s"',;&]+)"#,
    )
    .expect("a valid regex")
});

/// Replaces secrets in text (see the module's documentation). Pure: built once per
/// reconcile from the templates and env file contents, then applied to every output.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// The literal secret values, longest first.
    values: Vec<String>,
    /// The same values as one alternation (longest first, so the longest match wins).
    literals: Option<Regex>,
}

impl PartialEq for Redactor {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values
    }
}

impl Eq for Redactor {}

impl Redactor {
    /// A redactor of the patterns alone (no literal values).
    pub fn none() -> Redactor {
        Redactor::default()
    }

    /// A redactor of `values` (those long enough) and the patterns.
    pub fn new<S: AsRef<str>>(values: impl IntoIterator<Item = S>) -> Redactor {
        let set: BTreeSet<String> = values
            .into_iter()
            .map(|v| v.as_ref().to_owned())
            .filter(|v| v.chars().count() >= MIN_SECRET_LEN)
            .collect();
        let mut values: Vec<String> = set.into_iter().collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        let literals = (!values.is_empty()).then(|| {
            let alternation: Vec<String> = values.iter().map(|v| regex::escape(v)).collect();
            Regex::new(&alternation.join("|")).expect("escaped literals form a valid regex")
        });
        Redactor { values, literals }
    }

    /// The redactor of `templates`: their `env` values and the values of their env files,
    /// read through `host` (each file once). A missing file has nothing to hide; one that
    /// does not parse is redacted line by line (whatever follows a `=`).
    ///
    /// # Errors
    /// An env file that exists but cannot be read: without its values nothing could be
    /// redacted, so nothing may go on.
    pub async fn load<'a>(
        host: &dyn Host,
        templates: impl IntoIterator<Item = &'a Template>,
    ) -> Result<Redactor, HostError> {
        let mut values: Vec<String> = Vec::new();
        let mut files: BTreeSet<&str> = BTreeSet::new();
        for t in templates {
            values.extend(t.env.values().cloned());
            files.extend(t.env_files.iter().map(String::as_str));
        }
        for path in files {
            let Some(bytes) = host.read_file(path).await? else {
                continue;
            };
            match parse_env_file(&bytes) {
                Ok(vars) => values.extend(vars.into_iter().map(|(_, v)| v)),
                Err(_) => values.extend(
                    String::from_utf8_lossy(&bytes)
                        .lines()
                        .filter_map(|l| l.split_once('=').map(|(_, v)| v.trim().to_owned())),
                ),
            }
        }
        Ok(Redactor::new(values))
    }

    /// `text` with every secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let text = match &self.literals {
            Some(re) => re.replace_all(text, MASK).into_owned(),
            None => text.to_owned(),
        };
        let text = URL_CREDENTIALS.replace_all(&text, format!("${{1}}{MASK}@").as_str());
        SECRET_PAIR
            .replace_all(&text, format!("${{1}}{MASK}").as_str())
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_of_the_environment_are_masked_wherever_they_appear() {
        let r = Redactor::new(["S3cr3t-pass", "hunter22", "1", "on"]);
        assert_eq!(
            r.redact("connecting with S3cr3t-pass and hunter22 (retry 1, tls on)"),
            "connecting with *** and *** (retry 1, tls on)"
        );
    }

    #[test]
    fn the_longest_value_wins_when_one_contains_another() {
        let r = Redactor::new(["abcd", "abcdefgh"]);
        assert_eq!(r.redact("x abcdefgh y abcd"), "x *** y ***");
    }

    #[test]
    fn url_credentials_keep_the_user_and_lose_the_password() {
        let r = Redactor::none();
        assert_eq!(
            r.redact("DATABASE_URL=postgres://demo:pa55word@db:5432/prod ok"),
            "DATABASE_URL=postgres://demo:***@db:5432/prod ok"
        );
        assert_eq!(
            r.redact("see https://example.com/a:b@c and redis://:pw@cache"),
            "see https://example.com/a:b@c and redis://:***@cache"
        );
    }

    #[test]
    fn secret_looking_pairs_are_masked_in_every_form_and_case() {
        let r = Redactor::none();
        for (text, want) in [
            ("token=abc123", "token=***"),
            ("SECRET_TOKEN=abc123 next", "SECRET_TOKEN=*** next"),
            ("Password: hunter2", "Password: ***"),
            ("passwd = x1, user=demo", "passwd = ***, user=demo"),
            (
                r#"{"api_key": "k-1", "n": 1}"#,
                r#"{"api_key": "***", "n": 1}"#,
            ),
            ("db_secret:'s'", "db_secret:'***'"),
        ] {
            assert_eq!(r.redact(text), want, "{text}");
        }
        assert_eq!(
            r.redact("password authentication failed for user demo"),
            "password authentication failed for user demo"
        );
    }

    #[test]
    fn text_without_secrets_is_unchanged() {
        let r = Redactor::new(["S3cr3t"]);
        let text = "applying migration 2\nmigration 2 applied in 12ms\n";
        assert_eq!(r.redact(text), text);
    }

    #[tokio::test]
    async fn env_files_are_read_through_the_host_and_their_values_masked() {
        let fake = crate::host::fake::FakeHost::new("h");
        fake.write_file(
            "/env/app.env",
            b"# db\nDATABASE_URL=postgres://u:S3cr3t-x@db/p\nDEBUG=1\n",
            0o600,
        )
        .await
        .unwrap();
        let mut t = Template {
            image: "app:v1".into(),
            command: None,
            args: None,
            env: [("API_KEY_VALUE".to_owned(), "k-77-abc".to_owned())].into(),
            env_files: vec!["/env/app.env".into(), "/env/missing.env".into()],
            ports: vec![],
            volumes: vec![],
            networks: vec![],
        };
        let r = Redactor::load(&fake, [&t]).await.unwrap();
        assert_eq!(
            r.redact("url postgres://u:S3cr3t-x@db/p, key k-77-abc, debug 1"),
            "url ***, key ***, debug 1"
        );
        t.env_files.clear();
        assert_ne!(Redactor::load(&fake, [&t]).await.unwrap(), r);
    }
}
