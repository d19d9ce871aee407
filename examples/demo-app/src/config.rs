//! Configuration from the environment.
//!
//! One binary serves every image tag: the Dockerfile bakes `DEMO_VERSION` and `DEMO_FAULT`
//! into each image as ENV, and what a "version" means (which migrations it owns, which
//! schemas it can run against) is decided here, in pure functions that are unit tested.

use std::ops::RangeInclusive;
use std::time::Duration;

/// Which release of the demo app this build pretends to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
    V3,
}

impl Version {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(Self::V1),
            "v2" => Ok(Self::V2),
            "v3" => Ok(Self::V3),
            _ => Err(format!("DEMO_VERSION must be v1, v2 or v3, not {s:?}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
            Self::V3 => "v3",
        }
    }

    /// The highest migration `demo-app migrate` of this build applies.
    pub fn target_schema(self) -> i32 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
            Self::V3 => 3,
        }
    }

    /// Schema versions this build runs correctly against. v1 tolerates schema 2 because
    /// migration 2 only adds a nullable column (expand); migration 3 renames a column, so
    /// nothing older than v3 survives it, and v3 cannot run before it.
    pub fn compatible(self) -> RangeInclusive<i32> {
        match self {
            Self::V1 => 1..=2,
            Self::V2 => 2..=2,
            Self::V3 => 3..=3,
        }
    }

    /// The column holding a row's text in the schemas this build supports (migration 3
    /// renames `body` to `content`).
    pub fn row_column(self) -> &'static str {
        match self {
            Self::V1 | Self::V2 => "body",
            Self::V3 => "content",
        }
    }
}

/// A deliberate defect, so tests can watch Berth refuse or roll back a bad release.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// `/ready` always answers 503.
    NeverReady,
    /// Migration 2 does part of its work, then fails inside its transaction.
    MigrationFails,
    /// `serve` exits with status 1 after `DEMO_CRASH_AFTER` seconds.
    CrashAfter,
}

impl Fault {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "never-ready" => Ok(Self::NeverReady),
            "migration-fails" => Ok(Self::MigrationFails),
            "crash-after" => Ok(Self::CrashAfter),
            _ => Err(format!(
                "DEMO_FAULT must be none, never-ready, migration-fails or crash-after, not {s:?}"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::NeverReady => "never-ready",
            Self::MigrationFails => "migration-fails",
            Self::CrashAfter => "crash-after",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub port: u16,
    /// Kept optional so `serve` can start (and answer /health) without a database and say
    /// why it is not ready, instead of crash-looping.
    pub database_url: Option<String>,
    pub version: Version,
    pub fault: Fault,
    pub crash_after: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Reads the settings through `get`, so tests need not touch the process environment.
    /// An empty value counts as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |key: &str| get(key).filter(|v| !v.trim().is_empty());
        let port = match get("PORT") {
            None => 8080,
            Some(p) => p
                .trim()
                .parse()
                .map_err(|_| format!("PORT must be a port number, not {p:?}"))?,
        };
        let crash_after = match get("DEMO_CRASH_AFTER") {
            None => Duration::from_secs(15),
            Some(s) => Duration::from_secs(
                s.trim()
                    .parse()
                    .map_err(|_| format!("DEMO_CRASH_AFTER must be whole seconds, not {s:?}"))?,
            ),
        };
        Ok(Self {
            port,
            database_url: get("DATABASE_URL"),
            version: Version::parse(get("DEMO_VERSION").as_deref().unwrap_or("v1").trim())?,
            fault: Fault::parse(get("DEMO_FAULT").as_deref().unwrap_or("none").trim())?,
            crash_after,
        })
    }

    /// How this build names itself in logs and in the migration ledger: `v2`, or
    /// `v2+never-ready` for a deliberately bad one.
    pub fn build(&self) -> String {
        match self.fault {
            Fault::None => self.version.as_str().to_string(),
            f => format!("{}+{}", self.version.as_str(), f.as_str()),
        }
    }
}

/// `1..=2` prints as `1..=2`, the way a person reads a range in a reason line.
pub fn range_str(r: &RangeInclusive<i32>) -> String {
    format!("{}..={}", r.start(), r.end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = cfg(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.version, Version::V1);
        assert_eq!(c.fault, Fault::None);
        assert_eq!(c.crash_after, Duration::from_secs(15));
        assert_eq!(c.database_url, None);
        assert_eq!(c.build(), "v1");
    }

    #[test]
    fn reads_everything() {
        let c = cfg(&[
            ("PORT", "9000"),
            ("DATABASE_URL", "postgres://u:p@db/x"),
            ("DEMO_VERSION", "v3"),
            ("DEMO_FAULT", "crash-after"),
            ("DEMO_CRASH_AFTER", "3"),
        ])
        .unwrap();
        assert_eq!(c.port, 9000);
        assert_eq!(c.database_url.as_deref(), Some("postgres://u:p@db/x"));
        assert_eq!(c.version, Version::V3);
        assert_eq!(c.fault, Fault::CrashAfter);
        assert_eq!(c.crash_after, Duration::from_secs(3));
        assert_eq!(c.build(), "v3+crash-after");
    }

    #[test]
    fn empty_means_unset() {
        let c = cfg(&[("PORT", ""), ("DATABASE_URL", " "), ("DEMO_VERSION", "")]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.database_url, None);
        assert_eq!(c.version, Version::V1);
    }

    #[test]
    fn rejects_bad_values_with_the_variable_name() {
        assert!(cfg(&[("PORT", "http")]).unwrap_err().contains("PORT"));
        assert!(cfg(&[("PORT", "70000")]).unwrap_err().contains("PORT"));
        assert!(cfg(&[("DEMO_VERSION", "v4")])
            .unwrap_err()
            .contains("DEMO_VERSION"));
        assert!(cfg(&[("DEMO_FAULT", "oops")])
            .unwrap_err()
            .contains("DEMO_FAULT"));
        assert!(cfg(&[("DEMO_CRASH_AFTER", "1.5")])
            .unwrap_err()
            .contains("DEMO_CRASH_AFTER"));
    }

    #[test]
    fn compatible_ranges() {
        // v2's migration only expands, so v1 keeps working on it; v3's breaks everyone older.
        assert_eq!(Version::V1.compatible(), 1..=2);
        assert_eq!(Version::V2.compatible(), 2..=2);
        assert_eq!(Version::V3.compatible(), 3..=3);
        for v in [Version::V1, Version::V2, Version::V3] {
            assert!(
                v.compatible().contains(&v.target_schema()),
                "{v:?} must run on the schema its own migrate leaves"
            );
        }
        assert!(!Version::V1.compatible().contains(&3));
        assert!(!Version::V2.compatible().contains(&3));
        assert!(!Version::V2.compatible().contains(&1));
        assert_eq!(range_str(&Version::V1.compatible()), "1..=2");
    }

    #[test]
    fn row_column_follows_the_rename() {
        assert_eq!(Version::V1.row_column(), "body");
        assert_eq!(Version::V2.row_column(), "body");
        assert_eq!(Version::V3.row_column(), "content");
    }

    #[test]
    fn names_round_trip() {
        for v in [Version::V1, Version::V2, Version::V3] {
            assert_eq!(Version::parse(v.as_str()), Ok(v));
        }
        for f in [
            Fault::None,
            Fault::NeverReady,
            Fault::MigrationFails,
            Fault::CrashAfter,
        ] {
            assert_eq!(Fault::parse(f.as_str()), Ok(f));
        }
    }
}
