//! Connecting to PostgreSQL and reading the schema version.
//!
//! Name lookup is glibc's getaddrinfo (through tokio). It was checked in the `FROM scratch`
//! image on a user-defined Docker network: static glibc 2.36 carries the DNS and files
//! lookups built in, so a container name such as `berth-lab-db` resolves through Docker's
//! embedded DNS without any NSS modules on disk. IP addresses need no lookup at all.

use std::time::{Duration, Instant};

use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// The ledger of applied migrations; `max(version)` is "the schema version".
pub const LEDGER: &str = "demo_schema_migrations";

/// Parses `DATABASE_URL` (`postgres://user:pass@host:port/db`) into a connection config.
///
/// Only TCP hosts are accepted: the app always runs in a container, where a Unix socket
/// path would be a mistake that should fail loudly here rather than as "connection refused".
pub fn pg_config(url: &str, application_name: &str) -> Result<tokio_postgres::Config, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("DATABASE_URL must look like postgres://user:pass@host:port/db".into());
    }
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("DATABASE_URL is not a valid postgres URL: {}", describe(&e)))?;
    match cfg.get_hosts() {
        [] => return Err("DATABASE_URL has no host".into()),
        hosts if hosts.iter().any(|h| !matches!(h, Host::Tcp(_))) => {
            return Err("DATABASE_URL must name a TCP host, not a socket path".into())
        }
        _ => {}
    }
    // Without a bound, a connect to a black-holed address would hang a request (or
    // `migrate`'s retry loop) for the kernel's TCP timeout of minutes.
    cfg.connect_timeout(Duration::from_secs(3));
    cfg.application_name(application_name);
    Ok(cfg)
}

/// Opens one connection and drives it on a background task.
pub async fn connect(cfg: &tokio_postgres::Config) -> Result<Client, String> {
    let (client, connection) = cfg.connect(NoTls).await.map_err(|e| describe(&e))?;
    tokio::spawn(async move {
        // The error, if any, reaches the caller on its next query; nothing to do here.
        let _ = connection.await;
    });
    Ok(client)
}

/// Keeps trying to connect until `patience` has passed: `migrate` is often started right
/// after the database container, which needs a few seconds to accept connections.
pub async fn connect_with_retry(
    cfg: &tokio_postgres::Config,
    patience: Duration,
) -> Result<Client, String> {
    let deadline = Instant::now() + patience;
    let mut attempt = 1u32;
    loop {
        match connect(cfg).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!(
                    "database unreachable after {attempt} attempts in {}s: {e}",
                    patience.as_secs()
                ))
            }
            Err(e) => {
                // One line per few attempts: enough to see what is wrong, not a flood.
                if attempt == 1 || attempt.is_multiple_of(5) {
                    eprintln!("demo-app: database not reachable yet (attempt {attempt}): {e}");
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A one-line account of a database error. tokio-postgres's own Display says only the kind
/// ("db error", "error connecting to server"); the useful part (the server's message, or
/// "Connection refused", "failed to lookup address") is further down.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_string();
    }
    let mut line = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        line.push_str(": ");
        line.push_str(&c.to_string());
        cause = c.source();
    }
    line
}

/// The schema version the database is at now, `None` if nothing was ever migrated.
pub async fn schema_version(client: &Client) -> Result<Option<i32>, tokio_postgres::Error> {
    let sql = format!("SELECT max(version) FROM {LEDGER}");
    match client.query_one(sql.as_str(), &[]).await {
        Ok(row) => Ok(row.get(0)),
        // A fresh database has no ledger yet: that is "version unknown", not a failure.
        Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_container_name_url() {
        let c = pg_config("postgres://demo:secret@berth-lab-db:5433/demo", "t").unwrap();
        assert_eq!(c.get_hosts(), [Host::Tcp("berth-lab-db".into())]);
        assert_eq!(c.get_ports(), [5433]);
        assert_eq!(c.get_user(), Some("demo"));
        assert_eq!(c.get_password(), Some(&b"secret"[..]));
        assert_eq!(c.get_dbname(), Some("demo"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(c.get_application_name(), Some("t"));
    }

    #[test]
    fn parses_an_ip_url_with_the_default_port() {
        let c = pg_config("postgresql://u:p@172.18.0.2/db", "t").unwrap();
        assert_eq!(c.get_hosts(), [Host::Tcp("172.18.0.2".into())]);
        assert_eq!(c.get_ports(), [5432]);
    }

    #[test]
    fn describe_includes_the_cause() {
        let e = "postgres://u:p@db:notaport/x"
            .parse::<tokio_postgres::Config>()
            .unwrap_err();
        let line = describe(&e);
        assert!(line.starts_with("invalid connection string: "), "{line}");
        assert!(line.contains("port"), "{line}");
    }

    #[test]
    fn rejects_what_cannot_work() {
        assert!(pg_config("mysql://u:p@db/x", "t").is_err());
        assert!(pg_config("host=db user=u", "t").is_err());
        assert!(pg_config("postgres://u:p@/x", "t")
            .unwrap_err()
            .contains("no host"));
        assert!(pg_config("postgres://u:p@%2Fvar%2Frun%2Fpostgresql/x", "t")
            .unwrap_err()
            .contains("socket"));
        assert!(pg_config("postgres://u:p@db:notaport/x", "t").is_err());
    }
}
