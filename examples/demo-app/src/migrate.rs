//! `demo-app migrate`: versioned, recorded migrations.
//!
//! Tests check two things through the tables written here: which migrations the database
//! has (`demo_schema_migrations`, one row per migration) and how many times a migration
//! job actually did something (`demo_migrate_runs`, one row per invocation that applied at
//! least one migration), so "the migration ran exactly once" is a row count.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::Client;

use crate::config::{range_str, Config, Fault};
use crate::db::{self, LEDGER};

pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration any build knows; a build applies those up to its target version.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create_demo_rows",
        sql: "CREATE TABLE demo_rows (
                  id bigserial PRIMARY KEY,
                  body text NOT NULL,
                  created_at timestamptz DEFAULT now()
              )",
    },
    Migration {
        // Expand only: old code neither reads nor writes the new column, so v1 keeps working.
        version: 2,
        name: "add_note_column",
        sql: "ALTER TABLE demo_rows ADD COLUMN note text",
    },
    Migration {
        // Breaking: every INSERT of older builds names `body`.
        version: 3,
        name: "rename_body_to_content",
        sql: "ALTER TABLE demo_rows RENAME COLUMN body TO content",
    },
];

/// Migration 2 of the `migration-fails` build: it really changes the table, then fails in
/// the same transaction, so a test can check the partial work was rolled back.
const FAILING_MIGRATION_2: &str = "ALTER TABLE demo_rows ADD COLUMN note text;
     DO $$ BEGIN RAISE EXCEPTION 'deliberate failure (DEMO_FAULT=migration-fails) after adding column note'; END $$";

/// Any fixed number works, as long as every build agrees on it.
const ADVISORY_LOCK_KEY: i64 = 0x6265_7274_6864; // "berthd"

const SETUP_SQL: &str = "
    CREATE TABLE IF NOT EXISTS demo_schema_migrations (
        version int PRIMARY KEY,
        name text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        applied_by text NOT NULL
    );
    CREATE TABLE IF NOT EXISTS demo_migrate_runs (
        id serial PRIMARY KEY,
        build text NOT NULL,
        versions int[] NOT NULL,
        started_at timestamptz NOT NULL,
        finished_at timestamptz NOT NULL
    );";

/// The migrations still to apply, in order: known, not yet in the ledger, and not beyond
/// what this build targets.
pub fn pending(applied: &[i32], target: i32) -> Vec<&'static Migration> {
    MIGRATIONS
        .iter()
        .filter(|m| m.version <= target && !applied.contains(&m.version))
        .collect()
}

/// The SQL a build runs for `m`: the real one unless the build is the failing one.
pub fn sql_for(m: &Migration, fault: Fault) -> &'static str {
    if fault == Fault::MigrationFails && m.version == 2 {
        FAILING_MIGRATION_2
    } else {
        m.sql
    }
}

/// Runs the subcommand; `Err` carries the message to print before exiting non-zero.
pub async fn run(cfg: &Config) -> Result<(), String> {
    let url = cfg
        .database_url
        .as_deref()
        .ok_or("DATABASE_URL is not set")?;
    let build = cfg.build();
    let pg = db::pg_config(url, &format!("demo-app {build} migrate"))?;
    let mut client = db::connect_with_retry(&pg, Duration::from_secs(30)).await?;
    let started = Instant::now();
    let started_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());

    // Session-level lock, held until we return (or the connection drops): a second
    // concurrent `migrate` waits here, then finds nothing left to do. Taken before the
    // CREATE TABLE IF NOT EXISTS below, which itself is not safe to run concurrently.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&ADVISORY_LOCK_KEY])
        .await
        .map_err(|e| format!("taking the migration lock: {}", db::describe(&e)))?;
    client
        .batch_execute(SETUP_SQL)
        .await
        .map_err(|e| format!("creating the ledger tables: {}", db::describe(&e)))?;

    let applied: Vec<i32> = client
        .query(
            &format!("SELECT version FROM {LEDGER} ORDER BY version"),
            &[],
        )
        .await
        .map_err(|e| format!("reading the ledger: {}", db::describe(&e)))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let target = cfg.version.target_schema();
    let todo = pending(&applied, target);
    if !todo.is_empty() {
        // A test hook: a migration that takes a while, so a test can kill the controller
        // while it runs (holding the lock, as a real long migration would).
        if let Some(secs) = std::env::var("DEMO_MIGRATE_DELAY")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            println!("migrating slowly: waiting {secs}s first (DEMO_MIGRATE_DELAY)");
            tokio::time::sleep(Duration::from_secs(secs)).await;
        }
    }
    if todo.is_empty() {
        let current = applied.iter().max().copied();
        println!(
            "nothing to migrate: schema is at {}, this build ({build}) targets {target}",
            current.map_or("nothing".into(), |v| v.to_string())
        );
        let compatible = cfg.version.compatible();
        if !current.is_some_and(|v| compatible.contains(&v)) {
            // Not an error of `migrate` (it never goes backwards), but worth saying: this
            // build will not become ready on this database.
            println!(
                "warning: this build needs schema {}, it will not be ready",
                range_str(&compatible)
            );
        }
        return Ok(());
    }

    let mut done = Vec::new();
    let mut failure = None;
    for m in todo {
        println!("applying migration {} ({})", m.version, m.name);
        match apply(&mut client, m, cfg.fault, &build).await {
            Ok(()) => done.push(m.version),
            Err(e) => {
                failure = Some(format!(
                    "migration {} ({}) failed and was rolled back: {e}",
                    m.version, m.name
                ));
                break;
            }
        }
    }
    // Recorded even when a later migration failed: the ones before it did apply.
    if !done.is_empty() {
        client
            .execute(
                "INSERT INTO demo_migrate_runs (build, versions, started_at, finished_at)
                 VALUES ($1, $2, to_timestamp($3), clock_timestamp())",
                &[&build, &done, &started_epoch],
            )
            .await
            .map_err(|e| {
                format!(
                    "recording the run (migrations {done:?} did apply): {}",
                    db::describe(&e)
                )
            })?;
    }
    if let Some(f) = failure {
        return Err(f);
    }
    println!(
        "migrated to schema {target} (applied {done:?}) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Applies one migration and its ledger row in a single transaction, so the ledger never
/// claims a migration that did not fully happen.
async fn apply(
    client: &mut Client,
    m: &Migration,
    fault: Fault,
    build: &str,
) -> Result<(), String> {
    let tx = client.transaction().await.map_err(|e| db::describe(&e))?;
    tx.batch_execute(sql_for(m, fault))
        .await
        .map_err(|e| db::describe(&e))?;
    tx.execute(
        &format!("INSERT INTO {LEDGER} (version, name, applied_at, applied_by) VALUES ($1, $2, now(), $3)"),
        &[&m.version, &m.name, &build],
    )
    .await
    .map_err(|e| db::describe(&e))?;
    // Dropping `tx` on an error path above rolls it back.
    tx.commit().await.map_err(|e| db::describe(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Version;

    fn versions(ms: Vec<&Migration>) -> Vec<i32> {
        ms.iter().map(|m| m.version).collect()
    }

    #[test]
    fn migrations_are_numbered_one_by_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
        }
        assert_eq!(MIGRATIONS.len() as i32, Version::V3.target_schema());
    }

    #[test]
    fn fresh_database_gets_everything_up_to_the_target() {
        assert_eq!(versions(pending(&[], 1)), [1]);
        assert_eq!(versions(pending(&[], 2)), [1, 2]);
        assert_eq!(versions(pending(&[], 3)), [1, 2, 3]);
    }

    #[test]
    fn applied_ones_are_skipped() {
        assert_eq!(versions(pending(&[1], 3)), [2, 3]);
        assert_eq!(versions(pending(&[1, 2], 3)), [3]);
        assert!(pending(&[1, 2], 2).is_empty());
    }

    #[test]
    fn never_goes_backwards() {
        // v1's migrate on a v3 database has nothing to do; it does not undo anything.
        assert!(pending(&[1, 2, 3], 1).is_empty());
    }

    #[test]
    fn only_the_failing_build_swaps_migration_2() {
        let m2 = &MIGRATIONS[1];
        assert_eq!(sql_for(m2, Fault::None), m2.sql);
        assert_eq!(sql_for(m2, Fault::NeverReady), m2.sql);
        let bad = sql_for(m2, Fault::MigrationFails);
        // Partial work first, then the failure, in one batch (one transaction).
        assert!(bad.starts_with(m2.sql));
        assert!(bad.contains("RAISE EXCEPTION"));
        assert_eq!(
            sql_for(&MIGRATIONS[0], Fault::MigrationFails),
            MIGRATIONS[0].sql
        );
    }
}
