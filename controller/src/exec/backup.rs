//! Backups: take one to a file on the host, restore one, prune old ones (DESIGN.md rule 5).
//!
//! A backup is a single file on the host, `<directory>/<env>-<id>.<ext>`. It is written as
//! `<path>.partial` and renamed to `<path>` only once complete, so a file at `<path>` is
//! always whole; the caller catalogues it (size and sha256) after [`take`] returns.
//!
//! # Contract with the caller (the `Backup` step)
//! - Before calling [`take`], the caller looks the id up in the store: a catalogued backup
//!   whose file still has the catalogued sha256 ([`is_intact`]) is done, and `take` is not
//!   called again.
//! - Otherwise the caller calls [`take`], which does only what is missing: a `.partial`
//!   left by a crash is deleted and the backup redone; a complete file that was renamed
//!   into place but never catalogued (a crash between the two) is not taken again, only
//!   measured, and returned.
//! - The caller then catalogues the returned [`Taken`] (flushed) before recording the step
//!   as succeeded.
//!
//! # Secrets
//! A PostgreSQL password is only ever read from `passwordFile` by the shell on the host
//! (`PGPASSWORD="$(cat FILE)"`): it never passes through Berth's memory, logs, journal or
//! errors. Errors carry the tool's stderr, which never contains it.

use std::collections::BTreeMap;

use berth_api::environment::{Backup, BackupTarget, PostgresBackup, PostgresSource};

use crate::exec::ExecError;
use crate::host::{Created, Host, Output};
use crate::model::{ContainerSpec, ContainerState, Mount, Revision, Role, Template};

/// Where a volume is mounted in the helper container that archives or restores it.
pub const VOLUME_MOUNT: &str = "/berth-volume";

/// PostgreSQL's port when `postgres.host` names none.
pub const DEFAULT_PG_PORT: u16 = 5432;

/// At most this much of a tool's stderr goes into an error (the end of it, where the
/// reason usually is).
const STDERR_LIMIT: usize = 2000;

/// Where a backup is taken from and restored to, once the caller has resolved what the
/// manifest alone does not say: which container is the current replica of an
/// environment, and which image the volume helper runs. See [`ResolvedSource::resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResolvedSource {
    /// `postgres.container`, or the current replica of `postgres.environment`:
    /// `pg_dump`/`pg_restore` run inside this (running) container, with the container's
    /// own authentication (its local socket); `passwordFile` is for `postgres.host`.
    PostgresContainer { container: String },
    /// `postgres.host`: `pg_dump`/`pg_restore` run on the host against `host:port`.
    PostgresHost { host: String, port: u16 },
    /// `command`: the manifest's own shell commands run on the host.
    Command,
    /// `volume`: a helper container of `image` (the environment's own image, already on
    /// the host), labelled with `revision`, mounts the volume at [`VOLUME_MOUNT`]. It is
    /// never started, so the image needs no shell or tar.
    Volume { image: String, revision: Revision },
}

impl ResolvedSource {
    /// Resolves `target` with what only the caller knows: `current_replica(env)` names
    /// the running replica of a Berth environment (`postgres.environment`), and `image`
    /// and `revision` are those of the environment being backed up (`volume`).
    ///
    /// # Errors
    /// A database environment with no current replica (retryable: it may be starting);
    /// a `postgres.host` that is not `host[:port]` (permanent).
    pub fn resolve(
        target: &BackupTarget,
        current_replica: impl FnOnce(&str) -> Option<String>,
        image: &str,
        revision: Revision,
    ) -> Result<ResolvedSource, ExecError> {
        Ok(match target {
            BackupTarget::Postgres(pg) => match &pg.source {
                PostgresSource::Container(c) => ResolvedSource::PostgresContainer {
                    container: c.clone(),
                },
                PostgresSource::Environment(e) => ResolvedSource::PostgresContainer {
                    container: current_replica(e).ok_or_else(|| {
                        ExecError::failed(
                            format!("backup source environment {e}"),
                            "it has no running replica to run pg_dump in",
                            true,
                        )
                    })?,
                },
                PostgresSource::Host(addr) => {
                    let (host, port) = parse_pg_host(addr)
                        .map_err(|m| ExecError::failed("backup source postgres.host", m, false))?;
                    ResolvedSource::PostgresHost { host, port }
                }
            },
            BackupTarget::Command(_) => ResolvedSource::Command,
            BackupTarget::Volume(_) => ResolvedSource::Volume {
                image: image.to_owned(),
                revision,
            },
        })
    }

    /// Whether this source can serve `target` (a postgres target needs a postgres
    /// source, and so on).
    pub fn fits(&self, target: &BackupTarget) -> bool {
        matches!(
            (target, self),
            (
                BackupTarget::Postgres(_),
                ResolvedSource::PostgresContainer { .. } | ResolvedSource::PostgresHost { .. }
            ) | (BackupTarget::Command(_), ResolvedSource::Command)
                | (BackupTarget::Volume(_), ResolvedSource::Volume { .. })
        )
    }
}

/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address → (host, port).
pub fn parse_pg_host(addr: &str) -> Result<(String, u16), String> {
    let bad = |why: &str| format!("`{addr}` is not host[:port]: {why}");
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number from 1 to 65535"))
    };
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(|| bad("no closing `]`"))?;
        match tail {
            "" => (h, DEFAULT_PG_PORT),
            t => (
                h,
                port(t.strip_prefix(':').ok_or_else(|| bad("junk after `]`"))?)?,
            ),
        }
    } else if addr.matches(':').count() > 1 {
        (addr, DEFAULT_PG_PORT) // a bare IPv6 address
    } else if let Some((h, p)) = addr.split_once(':') {
        (h, port(p)?)
    } else {
        (addr, DEFAULT_PG_PORT)
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace()) {
        return Err(bad("no host name"));
    }
    Ok((host.to_owned(), port))
}

/// A backup file, complete on the host: what the caller catalogues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    pub path: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// A catalogued backup, as `restore` and `prune` need it (borrowed from the store's
/// record, whatever its type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Catalogued<'a> {
    pub id: &'a str,
    pub path: &'a str,
    pub sha256: &'a str,
}

/// The file name extension of a target's backups: `dump` (pg_dump custom format),
/// `tar` (a volume) or `bak` (a command's own format).
pub fn extension(target: &BackupTarget) -> &'static str {
    match target {
        BackupTarget::Postgres(_) => "dump",
        BackupTarget::Volume(_) => "tar",
        BackupTarget::Command(_) => "bak",
    }
}

/// `<directory>/<env>-<id>.<ext>`.
pub fn backup_path(directory: &str, env: &str, id: &str, target: &BackupTarget) -> String {
    format!(
        "{}/{env}-{id}.{}",
        directory.trim_end_matches('/'),
        extension(target)
    )
}

/// Where a backup is written until it is complete.
pub fn partial_path(path: &str) -> String {
    format!("{path}.partial")
}

/// The helper container that archives a volume: `<env>-backup-<id>`.
pub fn helper_name(env: &str, id: &str) -> String {
    format!("{env}-backup-{}", id.to_ascii_lowercase())
}

/// The helper container that restores a volume: `<env>-restore-<id>`, so a helper left
/// behind by a backup (mounting the volume read-only) is never mistaken for it.
pub fn restore_helper_name(env: &str, id: &str) -> String {
    format!("{env}-restore-{}", id.to_ascii_lowercase())
}

/// Quotes `s` as one word for `sh`. Words made only of characters the shell never
/// interprets are left as they are, for readable commands.
pub fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Whether the catalogued file is still there with the catalogued digest.
pub async fn is_intact<H: Host + ?Sized>(
    host: &H,
    path: &str,
    sha256: &str,
) -> Result<bool, ExecError> {
    Ok(host
        .file_digest(path)
        .await?
        .is_some_and(|(_, d)| d.eq_ignore_ascii_case(sha256)))
}

/// Takes backup `id` of environment `env` to [`backup_path`] on the host.
///
/// # Guarantees
/// - Idempotent (see the module's contract): a complete file is returned, measured
///   again, and never retaken; a `.partial` is deleted and redone.
/// - Only a complete, non-empty file is ever at the returned path: a failed dump leaves
///   no final file (and its partial is removed).
/// - The directory is created with mode 0700 if missing; the file has mode 0600.
///
/// # Errors
/// A dump or command that fails (with its stderr; retryable, the database may be
/// restarting) or leaves an empty file; a host error; a backup without a target or a
/// directory, an id unfit for a file name, or a source that does not fit the target
/// (permanent).
pub async fn take<H: Host + ?Sized>(
    host: &H,
    env: &str,
    backup: &Backup,
    id: &str,
    source: &ResolvedSource,
) -> Result<Taken, ExecError> {
    let what = format!("backup {env} {id}");
    let (target, directory) = settings(&what, backup, source)?;
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ExecError::failed(
            &what,
            "the backup id is not fit for a file name",
            false,
        ));
    }
    let path = backup_path(directory, env, id, target);
    let partial = partial_path(&path);

    if let Some((size, sha256)) = host.file_digest(&path).await? {
        // Renamed into place by an attempt that stopped before it was catalogued.
        host.remove_file(&partial).await?;
        return Ok(Taken { path, size, sha256 });
    }
    run_ok(
        host,
        &what,
        &format!("mkdir -p -m 700 -- {}", shell_quote(directory)),
    )
    .await?;
    host.remove_file(&partial).await?;

    if let Err(e) = produce(host, env, id, &what, target, source, &partial).await {
        // Best effort: the next attempt removes a stale partial anyway.
        let _ = host.remove_file(&partial).await;
        return Err(e);
    }
    let (size, sha256) = match host.file_digest(&partial).await? {
        Some((size, sha)) if size > 0 => (size, sha),
        found => {
            let _ = host.remove_file(&partial).await;
            let why = if found.is_some() {
                "an empty file"
            } else {
                "no file"
            };
            return Err(ExecError::failed(
                &what,
                format!("the backup left {why} at {partial}"),
                true,
            ));
        }
    };
    // rename(2) within one directory: `path` is either absent or complete.
    run_ok(
        host,
        &what,
        &format!(
            "chmod 600 -- {p} && mv -f -- {p} {f}",
            p = shell_quote(&partial),
            f = shell_quote(&path)
        ),
    )
    .await?;
    Ok(Taken { path, size, sha256 })
}

/// Restores the catalogued backup `file` of environment `env`.
///
/// # Guarantees
/// Nothing is restored unless the file on the host has the catalogued sha256. PostgreSQL
/// restores run in one transaction (`--single-transaction`), so a failed one changes
/// nothing and can be run again. A volume is unpacked over its current contents: files
/// in the backup get their backed-up contents back, files created since are left.
///
/// # Errors
/// A missing file or a digest mismatch (permanent); a restore that fails (with its
/// stderr; retryable); a host error.
pub async fn restore<H: Host + ?Sized>(
    host: &H,
    env: &str,
    backup: &Backup,
    file: &Catalogued<'_>,
    source: &ResolvedSource,
) -> Result<(), ExecError> {
    let what = format!("restore {env} {}", file.id);
    let (target, _) = settings(&what, backup, source)?;
    match host.file_digest(file.path).await? {
        None => {
            return Err(ExecError::failed(
                &what,
                format!("the backup file {} is missing", file.path),
                false,
            ))
        }
        Some((_, sha)) if !sha.eq_ignore_ascii_case(file.sha256) => {
            return Err(ExecError::failed(
                &what,
                format!(
                    "{} has sha256 {sha}, but {} was catalogued: refusing to restore it",
                    file.path, file.sha256
                ),
                false,
            ))
        }
        Some(_) => {}
    }
    match (target, source) {
        (BackupTarget::Postgres(pg), ResolvedSource::PostgresContainer { container }) => {
            let cmd = strings(&[
                "pg_restore",
                "--clean",
                "--if-exists",
                "--single-transaction",
                "--no-owner",
                "-U",
                &pg.user,
                "-d",
                &pg.database,
            ]);
            let out = host.exec_from_file(container, &cmd, file.path).await?;
            check_tool(&what, &format!("pg_restore in container {container}"), &out)
        }
        (BackupTarget::Postgres(pg), ResolvedSource::PostgresHost { host: h, port }) => {
            let cmd = format!(
                "pg_restore --clean --if-exists --single-transaction --no-owner --no-password \
                 -h {} -p {port} -U {} -d {} {}",
                shell_quote(h),
                shell_quote(&pg.user),
                shell_quote(&pg.database),
                shell_quote(file.path)
            );
            let out = host.run(&with_password(pg, &cmd)).await?;
            check_tool(
                &what,
                &format!("pg_restore on the host against {h}:{port}"),
                &out,
            )
        }
        (BackupTarget::Command(c), ResolvedSource::Command) => {
            let cmd = format!(
                "BERTH_BACKUP_FILE={} sh -c {}",
                shell_quote(file.path),
                shell_quote(&c.restore)
            );
            let out = host.run(&cmd).await?;
            check_tool(&what, "the restore command", &out)
        }
        (BackupTarget::Volume(v), ResolvedSource::Volume { image, revision }) => {
            let helper = restore_helper_name(env, file.id);
            let spec = helper_spec(env, &helper, image, *revision, &v.name, false);
            with_helper(host, &spec, async {
                // The archive holds `berth-volume/...`: unpacked at `/` it lands in the mount.
                host.archive_from_file(&helper, "/", file.path).await
            })
            .await
        }
        _ => Err(mismatch(&what)),
    }
}

/// Removes the files of the oldest backups beyond `keep` (`oldest_first` is the
/// environment's catalogue, oldest first) and returns their ids, oldest first.
///
/// # Guarantees
/// Removing a file that is already gone succeeds, so after an error the caller (who
/// removes the catalogue entries of the returned ids) simply prunes again.
pub async fn prune<H: Host + ?Sized>(
    host: &H,
    oldest_first: &[Catalogued<'_>],
    keep: usize,
) -> Result<Vec<String>, ExecError> {
    let excess = oldest_first.len().saturating_sub(keep);
    let mut removed = Vec::with_capacity(excess);
    for c in &oldest_first[..excess] {
        host.remove_file(c.path).await?;
        // A partial of an id that is being pruned can only be a leftover.
        host.remove_file(&partial_path(c.path)).await?;
        removed.push(c.id.to_owned());
    }
    Ok(removed)
}

// ---- internals ----------------------------------------------------------------------

fn settings<'a>(
    what: &str,
    backup: &'a Backup,
    source: &ResolvedSource,
) -> Result<(&'a BackupTarget, &'a str), ExecError> {
    let target = backup
        .target
        .as_ref()
        .ok_or_else(|| ExecError::failed(what, "the backup has no target", false))?;
    let directory = backup
        .directory
        .as_deref()
        .ok_or_else(|| ExecError::failed(what, "the backup has no directory", false))?;
    if !source.fits(target) {
        return Err(mismatch(what));
    }
    Ok((target, directory))
}

fn mismatch(what: &str) -> ExecError {
    ExecError::failed(
        what,
        "the resolved source does not fit the backup target",
        false,
    )
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// Writes the backup to `partial`.
async fn produce<H: Host + ?Sized>(
    host: &H,
    env: &str,
    id: &str,
    what: &str,
    target: &BackupTarget,
    source: &ResolvedSource,
    partial: &str,
) -> Result<(), ExecError> {
    match (target, source) {
        (BackupTarget::Postgres(pg), ResolvedSource::PostgresContainer { container }) => {
            let cmd = strings(&["pg_dump", "-Fc", "-U", &pg.user, "-d", &pg.database]);
            let out = host.exec_to_file(container, &cmd, partial).await?;
            check_tool(what, &format!("pg_dump in container {container}"), &out)
        }
        (BackupTarget::Postgres(pg), ResolvedSource::PostgresHost { host: h, port }) => {
            let cmd = format!(
                "umask 077 && pg_dump -Fc --no-password -h {} -p {port} -U {} -d {} -f {}",
                shell_quote(h),
                shell_quote(&pg.user),
                shell_quote(&pg.database),
                shell_quote(partial)
            );
            let out = host.run(&with_password(pg, &cmd)).await?;
            check_tool(
                what,
                &format!("pg_dump on the host against {h}:{port}"),
                &out,
            )
        }
        (BackupTarget::Command(c), ResolvedSource::Command) => {
            let cmd = format!(
                "umask 077 && BERTH_BACKUP_FILE={} sh -c {}",
                shell_quote(partial),
                shell_quote(&c.backup)
            );
            let out = host.run(&cmd).await?;
            check_tool(what, "the backup command", &out)
        }
        (BackupTarget::Volume(v), ResolvedSource::Volume { image, revision }) => {
            let helper = helper_name(env, id);
            let spec = helper_spec(env, &helper, image, *revision, &v.name, true);
            with_helper(host, &spec, async {
                host.archive_to_file(&helper, VOLUME_MOUNT, partial).await
            })
            .await
        }
        _ => Err(mismatch(what)),
    }
}

/// Prefixes `command` with `PGPASSWORD` read by the shell from the password file, so
/// the password never passes through Berth. A file that cannot be read stops the command.
fn with_password(pg: &PostgresBackup, command: &str) -> String {
    match &pg.password_file {
        None => command.to_owned(),
        Some(f) => format!(
            "PGPASSWORD=\"$(cat -- {f})\" || {{ echo 'cannot read the password file' >&2; exit 2; }}; \
             export PGPASSWORD; {command}",
            f = shell_quote(f)
        ),
    }
}

/// A stopped helper container mounting `volume` at [`VOLUME_MOUNT`].
fn helper_spec(
    env: &str,
    name: &str,
    image: &str,
    revision: Revision,
    volume: &str,
    read_only: bool,
) -> ContainerSpec {
    let template = Template {
        image: image.to_owned(),
        command: None,
        args: None,
        env: BTreeMap::new(),
        env_files: Vec::new(),
        ports: Vec::new(),
        volumes: vec![Mount {
            source: volume.to_owned(),
            is_volume: true,
            target: VOLUME_MOUNT.to_owned(),
            read_only,
        }],
        networks: Vec::new(),
    };
    ContainerSpec {
        name: name.to_owned(),
        env_name: env.to_owned(),
        revision,
        role: Role::Backup,
        replica: None,
        op: None,
        template_hash: template.hash(),
        template,
        host_ports: Vec::new(),
        override_args: None,
        aliases: Vec::new(),
    }
}

/// Creates the helper afresh (one left by a crashed attempt is removed first: it is never
/// started, so nothing is lost), runs `work`, and removes the helper whatever happened.
async fn with_helper<H: Host + ?Sized>(
    host: &H,
    spec: &ContainerSpec,
    work: impl std::future::Future<Output = crate::host::Result<()>>,
) -> Result<(), ExecError> {
    host.remove(&spec.name).await?;
    if let Created::Existed(c) = host.create(spec).await? {
        // Only another Berth racing us could have made it; do not touch a running one.
        if c.state == ContainerState::Running {
            return Err(ExecError::failed(
                format!("volume helper {}", spec.name),
                "a container of that name is running",
                true,
            ));
        }
    }
    let done = work.await;
    let removed = host.remove(&spec.name).await;
    done?;
    removed?;
    Ok(())
}

async fn run_ok<H: Host + ?Sized>(
    host: &H,
    what: &str,
    command: &str,
) -> Result<Output, ExecError> {
    let out = host.run(command).await?;
    check_tool(what, &format!("`{command}`"), &out)?;
    Ok(out)
}

/// A non-zero exit as an error naming `tool`, with the end of its stderr.
fn check_tool(what: &str, tool: &str, out: &Output) -> Result<(), ExecError> {
    if out.success() {
        return Ok(());
    }
    Err(ExecError::failed(
        what,
        format!(
            "{tool} exited with {}: {}",
            out.exit_code,
            tail_chars(out.stderr.trim(), STDERR_LIMIT)
        ),
        true,
    ))
}

/// The last `limit` bytes of `s`, cut at a character boundary.
pub(crate) fn tail_chars(s: &str, limit: usize) -> &str {
    if s.len() <= limit {
        return s;
    }
    let mut start = s.len() - limit;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_api::environment::{BackupWhen, CommandBackup, VolumeBackup};

    fn postgres(source: PostgresSource) -> BackupTarget {
        BackupTarget::Postgres(PostgresBackup {
            source,
            database: "app".into(),
            user: "app".into(),
            password_file: Some("/etc/berth/db password".into()),
        })
    }

    fn command() -> BackupTarget {
        BackupTarget::Command(CommandBackup {
            backup: "cp /data \"$BERTH_BACKUP_FILE\"".into(),
            restore: "cp \"$BERTH_BACKUP_FILE\" /data".into(),
        })
    }

    fn volume() -> BackupTarget {
        BackupTarget::Volume(VolumeBackup {
            name: "data".into(),
        })
    }

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(
            shell_quote("/var/backups/web-01J.dump"),
            "/var/backups/web-01J.dump"
        );
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn shell_quote_round_trips_through_sh() {
        let nasty = [
            "plain",
            "",
            "two words",
            "it's",
            "''",
            "\"double\"",
            "$HOME `id` $(id) \\ * ? [a] ~ # ; & | < > !",
            "new\nline\ttab",
            "-n",
            "é ü 日本",
        ];
        for word in nasty {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(word)))
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), word, "{word:?}");
        }
    }

    #[test]
    fn backup_paths_name_the_environment_the_id_and_the_format() {
        let t = postgres(PostgresSource::Container("db".into()));
        assert_eq!(backup_path("/b", "web", "01J", &t), "/b/web-01J.dump");
        assert_eq!(
            backup_path("/b/", "web", "01J", &volume()),
            "/b/web-01J.tar"
        );
        assert_eq!(
            backup_path("/b", "web", "01J", &command()),
            "/b/web-01J.bak"
        );
        assert_eq!(partial_path("/b/web-01J.tar"), "/b/web-01J.tar.partial");
    }

    #[test]
    fn postgres_host_addresses_parse_with_a_default_port() {
        let ok = |s: &str| parse_pg_host(s).unwrap();
        assert_eq!(ok("db.internal"), ("db.internal".into(), 5432));
        assert_eq!(ok("10.0.0.5:6543"), ("10.0.0.5".into(), 6543));
        assert_eq!(ok("[::1]:5433"), ("::1".into(), 5433));
        assert_eq!(ok("[::1]"), ("::1".into(), 5432));
        assert_eq!(ok("fd00::5"), ("fd00::5".into(), 5432));
        for bad in [
            "", ":5432", "db:", "db:0", "db:99999", "db:x", "[::1", "[::1]x", "a b:1",
        ] {
            assert!(parse_pg_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sources_resolve_from_the_target_and_what_the_caller_knows() {
        let none = |_: &str| None;
        let r = |t: &BackupTarget| ResolvedSource::resolve(t, none, "app:v1", 3);
        assert_eq!(
            r(&postgres(PostgresSource::Container("db".into()))).unwrap(),
            ResolvedSource::PostgresContainer {
                container: "db".into()
            }
        );
        assert_eq!(
            r(&postgres(PostgresSource::Host("db:6000".into()))).unwrap(),
            ResolvedSource::PostgresHost {
                host: "db".into(),
                port: 6000
            }
        );
        assert!(!r(&postgres(PostgresSource::Host("db:x".into())))
            .unwrap_err()
            .is_retryable());
        assert_eq!(r(&command()).unwrap(), ResolvedSource::Command);
        assert_eq!(
            r(&volume()).unwrap(),
            ResolvedSource::Volume {
                image: "app:v1".into(),
                revision: 3
            }
        );
        // An environment without a replica yet may get one: retry.
        let env = postgres(PostgresSource::Environment("db".into()));
        assert!(r(&env).unwrap_err().is_retryable());
        let found = ResolvedSource::resolve(
            &env,
            |e| Some(crate::model::replica_name(e, 2, 1)),
            "app:v1",
            3,
        )
        .unwrap();
        assert_eq!(
            found,
            ResolvedSource::PostgresContainer {
                container: "db-r2-1".into()
            }
        );
        assert!(found.fits(&env));
        assert!(!found.fits(&volume()));
        assert!(!ResolvedSource::Command.fits(&env));
    }

    #[test]
    fn the_password_is_read_by_the_shell_and_never_part_of_the_command() {
        let BackupTarget::Postgres(pg) = postgres(PostgresSource::Host("db".into())) else {
            unreachable!()
        };
        let cmd = with_password(&pg, "pg_dump");
        assert!(cmd.starts_with("PGPASSWORD=\"$(cat -- '/etc/berth/db password')\" ||"));
        assert!(cmd.ends_with("export PGPASSWORD; pg_dump"));
        let no_file = PostgresBackup {
            password_file: None,
            ..pg
        };
        assert_eq!(with_password(&no_file, "pg_dump"), "pg_dump");
    }

    #[test]
    fn a_password_file_that_cannot_be_read_stops_the_command() {
        let pg = PostgresBackup {
            source: PostgresSource::Host("db".into()),
            database: "d".into(),
            user: "u".into(),
            password_file: Some("/nonexistent/berth-test-password".into()),
        };
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(with_password(&pg, "echo ran"))
            .output()
            .expect("sh runs");
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty());
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").expect("write");
        let pg = PostgresBackup {
            password_file: Some(file.to_string_lossy().into_owned()),
            ..pg
        };
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(with_password(&pg, "printf %s \"$PGPASSWORD\""))
            .output()
            .expect("sh runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "s3cret");
    }

    #[test]
    fn a_backup_without_target_or_directory_or_a_mismatched_source_is_refused() {
        let b = Backup {
            when: BackupWhen::Always,
            target: Some(volume()),
            directory: Some("/b".into()),
            keep: 3,
        };
        assert!(settings("x", &b, &ResolvedSource::Command).is_err());
        let vol = ResolvedSource::Volume {
            image: "i".into(),
            revision: 1,
        };
        assert!(settings("x", &b, &vol).is_ok());
        let no_dir = Backup {
            directory: None,
            ..b.clone()
        };
        assert!(!settings("x", &no_dir, &vol).unwrap_err().is_retryable());
        let no_target = Backup { target: None, ..b };
        assert!(!settings("x", &no_target, &vol).unwrap_err().is_retryable());
    }

    #[test]
    fn the_volume_helper_is_a_labelled_backup_container_mounting_the_volume() {
        let s = helper_spec("web", &helper_name("web", "01J"), "app:v1", 4, "data", true);
        assert_eq!(s.name, "web-backup-01j");
        assert_eq!(s.role, Role::Backup);
        assert_eq!(s.template.volumes[0].target, VOLUME_MOUNT);
        assert!(s.template.volumes[0].is_volume && s.template.volumes[0].read_only);
        assert!(s.host_ports.is_empty() && s.template.networks.is_empty());
        assert_eq!(s.labels()[crate::model::LABEL_ROLE], "backup");
    }

    #[test]
    fn errors_keep_the_end_of_stderr() {
        let out = Output {
            exit_code: 1,
            stdout: String::new(),
            stderr: format!("{}pg_dump: error: connection refused\n", "x".repeat(5000)),
        };
        let e = check_tool("backup web 1", "pg_dump", &out)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("backup web 1: pg_dump exited with 1: "));
        assert!(e.ends_with("connection refused"));
        assert!(e.len() < STDERR_LIMIT + 100);
    }
}
