//! Small value types written as strings in manifests — durations, image references, port
//! ranges, host addresses — with the checks that tell a user exactly what is wrong.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::shape::StrKind;

/// Implements serde as the value's string form, so the typed resources read and write
/// exactly what a manifest holds.
macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

// ---- names -------------------------------------------------------------------------

/// Resource names end up in container names (`<env>-r<rev>-<replica>`), so they follow
/// DNS label rules.
pub const NAME: StrKind = StrKind {
    expected:
        "a name of lowercase letters, digits and '-', starting with a letter, at most 40 characters",
    pattern: Some("^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$"),
    check: Some(check_name),
};

fn check_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 40
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("`{s}` is not a valid name"))
    }
}

pub const ENV_NAME: StrKind = StrKind {
    expected: "an environment variable name like DATABASE_URL",
    pattern: Some("^[A-Za-z_][A-Za-z0-9_]*$"),
    check: Some(|s| {
        let ok = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            Ok(())
        } else {
            Err(format!("`{s}` is not a valid environment variable name"))
        }
    }),
};

pub const LABEL_KEY: StrKind = StrKind {
    expected: "a label key of letters, digits, '-', '_', '.' and '/', at most 63 characters",
    pattern: Some("^[A-Za-z0-9]([-A-Za-z0-9_./]{0,61}[A-Za-z0-9])?$"),
    check: Some(|s| {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric());
        if ok {
            Ok(())
        } else {
            Err(format!("`{s}` is not a valid label key"))
        }
    }),
};

pub const ABS_PATH: StrKind = StrKind {
    expected: "an absolute path",
    pattern: Some("^/"),
    check: Some(|s| {
        if s.starts_with('/') && !s.contains('\0') {
            Ok(())
        } else {
            Err(format!("`{s}` is not an absolute path"))
        }
    }),
};

/// Files on the controller's machine; a relative path is taken from the manifest's folder.
pub const LOCAL_PATH: StrKind = StrKind {
    expected: "a path (relative paths are taken from the manifest's folder)",
    pattern: Some("^[^\\u0000]+$"),
    check: Some(|s| {
        if s.is_empty() || s.contains('\0') {
            Err("the path is empty".into())
        } else {
            Ok(())
        }
    }),
};

pub const HTTP_PATH: StrKind = StrKind {
    expected: "a request path starting with '/'",
    pattern: Some("^/"),
    check: Some(|s| {
        if s.starts_with('/') && !s.contains(char::is_whitespace) {
            Ok(())
        } else {
            Err(format!("`{s}` is not a request path"))
        }
    }),
};

pub const URL: StrKind = StrKind {
    expected: "an http:// or https:// URL",
    pattern: Some("^https?://[^\\s]+$"),
    check: Some(|s| {
        let rest = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"));
        match rest {
            Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => Ok(()),
            _ => Err(format!("`{s}` is not an http(s) URL")),
        }
    }),
};

pub const NON_EMPTY: StrKind = StrKind {
    expected: "a non-empty string",
    pattern: Some("."),
    check: Some(|s| {
        if s.trim().is_empty() {
            Err("the value is empty".into())
        } else {
            Ok(())
        }
    }),
};

/// `address:port` a proxy listens on, as seen from the host.
pub const LISTEN: StrKind = StrKind {
    expected: "an address and port such as 127.0.0.1:8080",
    pattern: Some("^[^\\s]+:[0-9]{1,5}$"),
    check: Some(|s| {
        s.parse::<std::net::SocketAddr>()
            .map(|_| ())
            .map_err(|_| format!("`{s}` is not an address:port"))
    }),
};

pub const IP_ADDR: StrKind = StrKind {
    expected: "an IP address such as 127.0.0.1 or 0.0.0.0",
    pattern: None,
    check: Some(|s| {
        s.parse::<std::net::IpAddr>()
            .map(|_| ())
            .map_err(|_| format!("`{s}` is not an IP address"))
    }),
};

// ---- durations -----------------------------------------------------------------------

/// A span of time written as `500ms`, `30s`, `5m`, `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

pub const DURATION: StrKind = StrKind {
    expected: "a duration like 500ms, 30s, 5m or 1h30m",
    pattern: Some("^([0-9]+(ms|s|m|h))+$"),
    check: Some(|s| s.parse::<Duration>().map(|_| ())),
};

impl Duration {
    pub const fn secs(s: u64) -> Self {
        Duration(std::time::Duration::from_secs(s))
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a duration");
        if s.is_empty() {
            return Err(bad());
        }
        let mut total = std::time::Duration::ZERO;
        let mut rest = s;
        let mut last_rank = usize::MAX;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(|| format!("`{s}` has a number without a unit (ms, s, m or h)"))?;
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let (unit, rank, len) = if rest.starts_with("ms") {
                (std::time::Duration::from_millis(1), 0, 2)
            } else if rest.starts_with('s') {
                (std::time::Duration::from_secs(1), 1, 1)
            } else if rest.starts_with('m') {
                (std::time::Duration::from_secs(60), 2, 1)
            } else if rest.starts_with('h') {
                (std::time::Duration::from_secs(3600), 3, 1)
            } else {
                return Err(format!("`{s}` has an unknown unit (use ms, s, m or h)"));
            };
            if rank >= last_rank {
                return Err(format!(
                    "`{s}` repeats or misorders its units (write 1h30m)"
                ));
            }
            last_rank = rank;
            rest = &rest[len..];
            let part = u32::try_from(n)
                .ok()
                .and_then(|n| unit.checked_mul(n))
                .ok_or_else(|| format!("`{s}` is too long"))?;
            total = total
                .checked_add(part)
                .ok_or_else(|| format!("`{s}` is too long"))?;
        }
        Ok(Duration(total))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        for (n, unit) in [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")] {
            if n > 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        Ok(())
    }
}
string_serde!(Duration);

// ---- image references ---------------------------------------------------------------

/// `[registry[:port]/]path[:tag]` or `...@sha256:<64 hex>`; a tag or a digest is required,
/// because `latest` is not a revision anyone can roll back to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

pub const IMAGE: StrKind = StrKind {
    expected: "an image reference `repo:tag` or `repo@sha256:<digest>`",
    pattern: Some(
        "^[a-z0-9]([-a-z0-9._:/]*[a-z0-9])?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?@sha256:[a-f0-9]{64})$",
    ),
    check: Some(|s| s.parse::<ImageRef>().map(|_| ())),
};

impl FromStr for ImageRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| format!("`{s}`: a digest must start with `sha256:`"))?;
                if hex.len() != 64
                    || !hex
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                {
                    return Err(format!(
                        "`{s}`: a sha256 digest is 64 lowercase hex characters"
                    ));
                }
                (r, Some(d.to_owned()))
            }
            None => (s, None),
        };
        // A ':' after the last '/' is a tag; one before it belongs to a registry port.
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(&rest[slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
                && tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !ok {
                return Err(format!("`{s}`: `{tag}` is not a valid tag"));
            }
        }
        if tag.is_none() && digest.is_none() {
            return Err(format!(
                "`{s}` has no tag or digest (write `{s}:<tag>`; `latest` cannot be rolled back to)"
            ));
        }
        check_repository(repository).map_err(|why| format!("`{s}`: {why}"))?;
        Ok(ImageRef {
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }
}

fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("the repository is empty".into());
    }
    let mut parts: Vec<&str> = repo.split('/').collect();
    // The first part is a registry when it looks like a host: has a '.' or ':' or is localhost.
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (name, port) = host.split_once(':').unwrap_or((host, ""));
        let host_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
        let port_ok = port.is_empty() || port.parse::<u16>().is_ok_and(|p| p > 0);
        if !host_ok || !port_ok {
            return Err(format!("`{host}` is not a valid registry host"));
        }
    }
    for part in parts {
        let ok = !part.is_empty()
            && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
        if !ok {
            return Err(format!(
                "`{part}` is not a valid repository path component (lowercase letters, digits, '.', '_', '-')"
            ));
        }
    }
    Ok(())
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}
string_serde!(ImageRef);

// ---- port ranges ----------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

pub const PORT_RANGE: StrKind = StrKind {
    expected: "a port range like 20000-29999",
    pattern: Some("^[0-9]{1,5}-[0-9]{1,5}$"),
    check: Some(|s| s.parse::<PortRange>().map(|_| ())),
};

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not a range (write FIRST-LAST)"))?;
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{p}` is not a port from 1 to 65535"))
        };
        let (start, end) = (port(a)?, port(b)?);
        if start > end {
            return Err(format!("`{s}` starts after it ends"));
        }
        Ok(PortRange { start, end })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}
string_serde!(PortRange);

// ---- host addresses -------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// The controller's own Docker socket; host commands run as local processes.
    Local,
    Ssh {
        user: String,
        host: String,
        port: u16,
    },
}

pub const ADDRESS: StrKind = StrKind {
    expected: "`local` or `ssh://user@host[:port]`",
    pattern: Some("^(local|ssh://[^@/\\s]+@[^/\\s]+)$"),
    check: Some(|s| s.parse::<Address>().map(|_| ())),
};

impl FromStr for Address {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "local" {
            return Ok(Address::Local);
        }
        let rest = s
            .strip_prefix("ssh://")
            .ok_or_else(|| format!("`{s}` is neither `local` nor an ssh:// address"))?;
        let (user, hostport) = rest
            .split_once('@')
            .ok_or_else(|| format!("`{s}` names no user (write ssh://user@host)"))?;
        if user.is_empty() || user.contains(['/', ':', ' ']) {
            return Err(format!("`{s}` has an invalid user"));
        }
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("`{s}`: unclosed '[' in the host"))?;
                (h, after.strip_prefix(':'))
            }
            None => match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            },
        };
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(format!("`{s}` has an invalid host"));
        }
        let port = match port {
            None => 22,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{s}`: `{p}` is not a port from 1 to 65535"))?,
        };
        Ok(Address::Ssh {
            user: user.to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Local => f.write_str("local"),
            Address::Ssh { user, host, port } if host.contains(':') => {
                write!(f, "ssh://{user}@[{host}]:{port}")
            }
            Address::Ssh { user, host, port } => write!(f, "ssh://{user}@{host}:{port}"),
        }
    }
}
string_serde!(Address);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        for (text, ms, back) in [
            ("30s", 30_000, "30s"),
            ("5m", 300_000, "5m"),
            ("1h30m", 5_400_000, "1h30m"),
            ("500ms", 500, "500ms"),
            ("0s", 0, "0s"),
            ("90s", 90_000, "1m30s"),
        ] {
            let d: Duration = text.parse().unwrap();
            assert_eq!(d.0.as_millis(), ms, "{text}");
            assert_eq!(d.to_string(), back);
        }
    }

    #[test]
    fn bad_durations_say_why() {
        for (text, why) in [
            ("30", "without a unit"),
            ("5x", "unknown unit"),
            ("m5", "not a duration"),
            ("30m1h", "misorders"),
            ("", "not a duration"),
            ("1.5s", "unknown unit"),
            ("99999999999h", "too long"),
        ] {
            let err = text.parse::<Duration>().unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn image_references() {
        let ok = [
            ("demo:v1", "demo", Some("v1"), None),
            (
                "127.0.0.1:5000/berth/demo-app:v2",
                "127.0.0.1:5000/berth/demo-app",
                Some("v2"),
                None,
            ),
            ("localhost/x:1.0", "localhost/x", Some("1.0"), None),
        ];
        for (s, repo, tag, digest) in ok {
            let r: ImageRef = s.parse().unwrap();
            assert_eq!(
                (r.repository.as_str(), r.tag.as_deref(), r.digest.as_deref()),
                (repo, tag, digest)
            );
            assert_eq!(r.to_string(), s);
        }
        let digest = format!("app@sha256:{}", "a".repeat(64));
        assert!(digest.parse::<ImageRef>().is_ok());
        for bad in [
            "demo",
            "127.0.0.1:5000/demo",
            "Demo:v1",
            "demo:",
            "demo:-x",
            "app@sha256:abc",
            "app@md5:aa",
            "a//b:v1",
            "reg:99999/a:v1",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn port_ranges_and_addresses() {
        assert_eq!(
            "20000-29999".parse::<PortRange>().unwrap(),
            PortRange {
                start: 20000,
                end: 29999
            }
        );
        for bad in ["20000", "0-10", "10-5", "1-70000", "a-b"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        assert_eq!("local".parse::<Address>().unwrap(), Address::Local);
        assert_eq!(
            "ssh://root@127.0.0.2:2222".parse::<Address>().unwrap(),
            Address::Ssh {
                user: "root".into(),
                host: "127.0.0.2".into(),
                port: 2222
            }
        );
        assert_eq!(
            "ssh://me@[::1]:22".parse::<Address>().unwrap().to_string(),
            "ssh://me@[::1]:22"
        );
        for bad in [
            "remote",
            "ssh://host",
            "ssh://u@h:0",
            "ssh://u@:22",
            "http://u@h",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad}");
        }
    }
}
