//! Backups: take one to a file on the host, restore one, prune old ones (journal rule 5 of
//! docs/design.md).
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
            check_tool(
                &what,
                &format!("pg_restore in container {container} from {}", file.path),
                &out,
            )
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
                &format!(
                    "pg_restore on the host against {h}:{port} from {}",
                    file.path
                ),
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
            check_tool(
                &what,
                &format!("the restore command (from {})", file.path),
                &out,
            )
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
            check_tool(
                what,
                &format!("pg_dump in container {container} to {partial}"),
                &out,
            )
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
                &format!("pg_dump on the host against {h}:{port} to {partial}"),
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
            check_tool(what, &format!("the backup command (to {partial})"), &out)
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

/// [`FakeHost`](crate::host::fake::FakeHost) with the effects of the few shell commands
/// the steps run on a host, which the fake itself only scripts: `mv` renames a file,
/// host-side dumps and backup commands write their (scripted) stdout to the `.partial`
/// they are given, and `stop` kills like the real engine does a process that ignores
/// SIGTERM (exit 137).
#[cfg(test)]
pub(crate) mod shell_fake {
    use std::time::Duration;

    use async_trait::async_trait;
    use futures_util::stream::BoxStream;

    use crate::host::fake::FakeHost;
    use crate::host::{Conn, ContainerEvent, Created, Host, Output, Result};
    use crate::model::{ContainerInfo, ContainerSpec, ContainerState};

    pub struct ShellFake(pub FakeHost);

    /// The word after `marker` in `command` (the tests' paths need no quoting).
    fn word_after<'a>(command: &'a str, marker: &str) -> Option<&'a str> {
        let at = command.rfind(marker)? + marker.len();
        command[at..].split_whitespace().next()
    }

    #[async_trait]
    impl Host for ShellFake {
        fn name(&self) -> &str {
            self.0.name()
        }
        async fn list(&self, env: &str) -> Result<Vec<ContainerInfo>> {
            self.0.list(env).await
        }
        async fn list_all(&self) -> Result<Vec<ContainerInfo>> {
            self.0.list_all().await
        }
        async fn inspect(&self, name: &str) -> Result<Option<ContainerInfo>> {
            self.0.inspect(name).await
        }
        async fn create(&self, spec: &ContainerSpec) -> Result<Created> {
            self.0.create(spec).await
        }
        async fn start(&self, name: &str) -> Result<()> {
            self.0.start(name).await
        }
        async fn stop(&self, name: &str, grace: Duration) -> Result<()> {
            let was = self.0.container(name).map(|c| c.state);
            self.0.stop(name, grace).await?;
            if was == Some(ContainerState::Running) {
                self.0.set_state(name, ContainerState::Exited(137));
            }
            Ok(())
        }
        async fn remove(&self, name: &str) -> Result<()> {
            self.0.remove(name).await
        }
        async fn logs(&self, name: &str, tail: usize) -> Result<String> {
            self.0.logs(name, tail).await
        }
        async fn pull(&self, image: &str) -> Result<crate::host::Pulled> {
            self.0.pull(image).await
        }
        async fn remove_image(&self, image: &str) -> Result<()> {
            self.0.remove_image(image).await
        }
        async fn exec(&self, container: &str, cmd: &[String]) -> Result<Output> {
            self.0.exec(container, cmd).await
        }
        async fn exec_to_file(
            &self,
            container: &str,
            cmd: &[String],
            path: &str,
        ) -> Result<Output> {
            self.0.exec_to_file(container, cmd, path).await
        }
        async fn exec_from_file(
            &self,
            container: &str,
            cmd: &[String],
            path: &str,
        ) -> Result<Output> {
            self.0.exec_from_file(container, cmd, path).await
        }
        async fn archive_to_file(&self, container: &str, path: &str, file: &str) -> Result<()> {
            self.0.archive_to_file(container, path, file).await
        }
        async fn archive_from_file(&self, container: &str, path: &str, file: &str) -> Result<()> {
            self.0.archive_from_file(container, path, file).await
        }
        async fn run(&self, command: &str) -> Result<Output> {
            let out = self.0.run(command).await?;
            if !out.success() {
                return Ok(out);
            }
            if let Some(rest) = command.split(" && mv -f -- ").nth(1) {
                let mut words = rest.split_whitespace();
                if let (Some(from), Some(to)) = (words.next(), words.next()) {
                    if let Some(data) = self.0.file(from) {
                        self.0.put_file(to, &data);
                        self.0.remove_file(from).await?;
                    }
                }
            } else if let Some(partial) = word_after(command, " -f ")
                .or_else(|| word_after(command, "BERTH_BACKUP_FILE="))
                .filter(|p| p.ends_with(".partial"))
            {
                self.0.put_file(partial, out.stdout.as_bytes());
            }
            Ok(out)
        }
        async fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<()> {
            self.0.write_file(path, data, mode).await
        }
        async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
            self.0.read_file(path).await
        }
        async fn file_digest(&self, path: &str) -> Result<Option<(u64, String)>> {
            self.0.file_digest(path).await
        }
        async fn remove_file(&self, path: &str) -> Result<()> {
            self.0.remove_file(path).await
        }
        async fn connect(&self, addr: &str, port: u16) -> Result<Box<dyn Conn>> {
            self.0.connect(addr, port).await
        }
        async fn connect_unix(&self, path: &str) -> Result<Box<dyn Conn>> {
            self.0.connect_unix(path).await
        }
        async fn events(&self) -> Result<BoxStream<'static, Result<ContainerEvent>>> {
            self.0.events().await
        }
        async fn engine_version(&self) -> Result<String> {
            self.0.engine_version().await
        }
    }
}

#[cfg(test)]
mod fake_tests {
    use super::shell_fake::ShellFake;
    use super::*;
    use crate::host::fake::FakeHost;
    use berth_api::environment::{BackupWhen, CommandBackup, VolumeBackup};

    const DUMP: &str = "PGDMP custom format bytes";
    const DB: &str = "db-r1-0";

    fn backup(target: BackupTarget) -> Backup {
        Backup {
            when: BackupWhen::BeforeMigration,
            target: Some(target),
            directory: Some("/var/backups/web".into()),
            keep: 3,
        }
    }

    fn pg(source: PostgresSource, password_file: Option<&str>) -> Backup {
        backup(BackupTarget::Postgres(PostgresBackup {
            source,
            database: "app".into(),
            user: "app".into(),
            password_file: password_file.map(str::to_owned),
        }))
    }

    fn pg_in_container() -> (Backup, ResolvedSource) {
        (
            pg(PostgresSource::Container(DB.into()), None),
            ResolvedSource::PostgresContainer {
                container: DB.into(),
            },
        )
    }

    fn sha(data: &[u8]) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(data))
    }

    fn out(code: i64, stdout: &str, stderr: &str) -> Output {
        Output {
            exit_code: code,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    /// A host with a running database container whose pg_dump prints `DUMP`.
    fn host_with_db() -> ShellFake {
        let fake = FakeHost::new("vm-a");
        fake.add_image("postgres:15");
        let db = helper_spec("db", DB, "postgres:15", 1, "db-data", false);
        fake.add_container(
            &ContainerSpec {
                role: Role::App,
                ..db
            },
            ContainerState::Running,
        );
        fake.on_exec("pg_dump", out(0, DUMP, ""));
        ShellFake(fake)
    }

    const PATH: &str = "/var/backups/web/web-01J.dump";
    const PARTIAL: &str = "/var/backups/web/web-01J.dump.partial";

    #[tokio::test]
    async fn a_backup_taken_twice_is_dumped_once() {
        let host = host_with_db();
        let (b, src) = pg_in_container();
        let first = take(&host, "web", &b, "01J", &src).await.unwrap();
        assert_eq!(
            first,
            Taken {
                path: PATH.into(),
                size: DUMP.len() as u64,
                sha256: sha(DUMP.as_bytes()),
            }
        );
        let second = take(&host, "web", &b, "01J", &src).await.unwrap();
        assert_eq!(second, first);
        let fake = &host.0;
        assert_eq!(
            fake.count(&format!(
                "exec_to_file {DB} pg_dump -Fc -U app -d app > {PARTIAL}"
            )),
            1
        );
        assert_eq!(fake.file(PATH).as_deref(), Some(DUMP.as_bytes()));
        assert_eq!(fake.file_mode(PATH), Some(0o600));
        assert_eq!(fake.file(PARTIAL), None);
        assert_eq!(fake.count("run mkdir -p -m 700 -- /var/backups/web"), 1);
    }

    #[tokio::test]
    async fn a_partial_left_by_a_crash_is_deleted_and_the_backup_redone() {
        let host = host_with_db();
        host.0.put_file(PARTIAL, b"half a dum");
        let (b, src) = pg_in_container();
        let taken = take(&host, "web", &b, "01J", &src).await.unwrap();
        assert_eq!(taken.sha256, sha(DUMP.as_bytes()));
        assert_eq!(host.0.file(PATH).as_deref(), Some(DUMP.as_bytes()));
        assert_eq!(host.0.file(PARTIAL), None);
        let calls = host.0.mutations();
        let removed = calls
            .iter()
            .position(|c| *c == format!("remove_file {PARTIAL}"));
        let dumped = calls.iter().position(|c| c.starts_with("exec_to_file"));
        assert!(removed < dumped, "{calls:?}");
    }

    #[tokio::test]
    async fn a_complete_file_that_was_never_catalogued_is_measured_not_retaken() {
        let host = host_with_db();
        host.0.put_file(PATH, b"the earlier, complete dump");
        host.0.put_file(PARTIAL, b"stale");
        let (b, src) = pg_in_container();
        let taken = take(&host, "web", &b, "01J", &src).await.unwrap();
        assert_eq!(taken.size, 26);
        assert_eq!(taken.sha256, sha(b"the earlier, complete dump"));
        assert_eq!(host.0.mutations(), [format!("remove_file {PARTIAL}")]);
        assert_eq!(host.0.file(PARTIAL), None);
    }

    #[tokio::test]
    async fn a_failed_pg_dump_leaves_no_file_and_carries_its_stderr() {
        let host = host_with_db();
        host.0.on_exec(
            "pg_dump",
            out(
                1,
                "PGDMP partial",
                "pg_dump: error: connection to server failed",
            ),
        );
        let (b, src) = pg_in_container();
        let err = take(&host, "web", &b, "01J", &src).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("backup web 01J"), "{text}");
        assert!(
            text.contains(&format!(
                "pg_dump in container {DB} to {PARTIAL} exited with 1"
            )),
            "{text}"
        );
        assert!(text.ends_with("connection to server failed"), "{text}");
        assert!(err.is_retryable());
        assert_eq!(host.0.file(PATH), None);
        assert_eq!(host.0.file(PARTIAL), None);
    }

    #[tokio::test]
    async fn an_empty_dump_is_not_a_backup() {
        let host = host_with_db();
        host.0.on_exec("pg_dump", out(0, "", ""));
        let (b, src) = pg_in_container();
        let err = take(&host, "web", &b, "01J", &src).await.unwrap_err();
        assert!(err.to_string().contains("an empty file"), "{err}");
        assert_eq!(host.0.file(PATH), None);
        assert_eq!(host.0.file(PARTIAL), None);
    }

    /// Every mutating call of a backup fails in turn, with or without its effect; the
    /// retry (a resumed step) ends with exactly the one complete backup.
    #[tokio::test]
    async fn a_backup_recovers_from_a_failure_at_every_call() {
        let clean = host_with_db();
        let (b, src) = pg_in_container();
        take(&clean, "web", &b, "01J", &src).await.unwrap();
        let calls = clean.0.mutating_calls();
        assert!(calls >= 5, "{:?}", clean.0.mutations());
        for n in 1..=calls {
            for after_effect in [false, true] {
                let host = host_with_db();
                if after_effect {
                    host.0.fail_call_after_effect(n);
                } else {
                    host.0.fail_call(n);
                }
                let first = take(&host, "web", &b, "01J", &src).await;
                let taken = match first {
                    Ok(t) => t,
                    Err(e) => {
                        assert!(e.is_retryable(), "call {n}: {e}");
                        take(&host, "web", &b, "01J", &src).await.unwrap()
                    }
                };
                let ctx = format!(
                    "call {n}, after effect {after_effect}: {:?}",
                    host.0.mutations()
                );
                assert_eq!(taken.sha256, sha(DUMP.as_bytes()), "{ctx}");
                assert_eq!(host.0.file(PATH).as_deref(), Some(DUMP.as_bytes()), "{ctx}");
                assert_eq!(host.0.file(PARTIAL), None, "{ctx}");
                let dumps = host
                    .0
                    .mutations()
                    .iter()
                    .filter(|c| c.starts_with("exec_to_file"))
                    .count();
                assert!(dumps <= 2, "{ctx}");
            }
        }
    }

    #[tokio::test]
    async fn a_postgres_backup_over_the_network_never_holds_the_password() {
        let host = ShellFake(FakeHost::new("vm-a"));
        host.0.put_file("/etc/berth/pg-password", b"s3cret");
        host.0
            .on_command("PGPASSWORD=", out(0, DUMP, "pg_dump: warning: nothing"));
        let b = pg(
            PostgresSource::Host("10.0.0.5:6432".into()),
            Some("/etc/berth/pg-password"),
        );
        let src = ResolvedSource::resolve(b.target.as_ref().unwrap(), |_| None, "", 0).unwrap();
        let taken = take(&host, "web", &b, "01J", &src).await.unwrap();
        assert_eq!(taken.sha256, sha(DUMP.as_bytes()));
        let dump = host
            .0
            .calls()
            .into_iter()
            .find(|c| c.contains("pg_dump"))
            .unwrap();
        assert_eq!(
            dump,
            format!(
                "run PGPASSWORD=\"$(cat -- /etc/berth/pg-password)\" || {{ echo 'cannot read the password file' >&2; exit 2; }}; \
                 export PGPASSWORD; umask 077 && pg_dump -Fc --no-password -h 10.0.0.5 -p 6432 -U app -d app -f {PARTIAL}"
            )
        );
        for call in host.0.calls() {
            assert!(!call.contains("s3cret"), "{call}");
        }
        // A failure carries pg_dump's stderr and names the server, never the password.
        host.0.on_command(
            "PGPASSWORD=",
            out(
                1,
                "",
                "pg_dump: error: password authentication failed for user \"app\"",
            ),
        );
        let err = take(&host, "web", &b, "01K", &src)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pg_dump on the host against 10.0.0.5:6432 to /var/backups/web/web-01K.dump.partial exited with 1"),
            "{err}"
        );
        assert!(!err.contains("s3cret"));
    }

    #[tokio::test]
    async fn a_command_backup_gets_the_partial_in_its_environment_and_must_write_it() {
        let host = ShellFake(FakeHost::new("vm-a"));
        let b = backup(BackupTarget::Command(CommandBackup {
            backup: "my-backup --to \"$BERTH_BACKUP_FILE\"".into(),
            restore: "my-restore --from \"$BERTH_BACKUP_FILE\"".into(),
        }));
        host.0
            .on_command("umask 077 && BERTH_BACKUP_FILE=", out(0, "bytes", ""));
        let taken = take(&host, "web", &b, "01J", &ResolvedSource::Command)
            .await
            .unwrap();
        assert_eq!(taken.path, "/var/backups/web/web-01J.bak");
        assert!(host.0.calls().contains(
            &"run umask 077 && BERTH_BACKUP_FILE=/var/backups/web/web-01J.bak.partial sh -c 'my-backup --to \"$BERTH_BACKUP_FILE\"'".to_owned()
        ));
        // A command that succeeds without writing anything did not back anything up.
        host.0
            .on_command("umask 077 && BERTH_BACKUP_FILE=", out(0, "", ""));
        let err = take(&host, "web", &b, "01K", &ResolvedSource::Command)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("an empty file"), "{err}");
        assert_eq!(host.0.file("/var/backups/web/web-01K.bak"), None);

        let record = Catalogued {
            id: "01J",
            path: &taken.path,
            sha256: &taken.sha256,
        };
        restore(&host, "web", &b, &record, &ResolvedSource::Command)
            .await
            .unwrap();
        assert!(host.0.calls().contains(
            &"run BERTH_BACKUP_FILE=/var/backups/web/web-01J.bak sh -c 'my-restore --from \"$BERTH_BACKUP_FILE\"'".to_owned()
        ));
    }

    fn volume() -> (Backup, ResolvedSource) {
        (
            backup(BackupTarget::Volume(VolumeBackup {
                name: "web-data".into(),
            })),
            ResolvedSource::Volume {
                image: "app:v1".into(),
                revision: 4,
            },
        )
    }

    #[tokio::test]
    async fn a_volume_is_archived_through_a_helper_that_is_removed_after() {
        let host = ShellFake(FakeHost::new("vm-a"));
        host.0.add_image("app:v1");
        let (b, src) = volume();
        // A helper left by a crashed attempt is replaced.
        let stale = helper_spec("web", "web-backup-01j", "app:v1", 3, "other", false);
        host.0.add_container(&stale, ContainerState::Created);
        let taken = take(&host, "web", &b, "01J", &src).await.unwrap();
        assert_eq!(taken.path, "/var/backups/web/web-01J.tar");
        let tar = "tar of web-backup-01j:/berth-volume";
        assert_eq!(taken.sha256, sha(tar.as_bytes()));
        assert_eq!(host.0.container("web-backup-01j"), None);
        let m = host.0.mutations();
        let helper: Vec<_> = m.iter().filter(|c| c.contains("web-backup-01j")).collect();
        assert_eq!(
            helper,
            [
                "remove web-backup-01j",
                "create web-backup-01j",
                "archive_to_file web-backup-01j:/berth-volume > /var/backups/web/web-01J.tar.partial",
                "remove web-backup-01j",
            ]
        );
        // Taken again: nothing is archived again.
        take(&host, "web", &b, "01J", &src).await.unwrap();
        assert_eq!(host.0.count("create web-backup-01j"), 1);
    }

    #[tokio::test]
    async fn a_volume_helper_is_removed_even_when_the_archive_fails() {
        let host = ShellFake(FakeHost::new("vm-a"));
        host.0.add_image("app:v1");
        host.0.fail_next(
            "archive_to_file",
            crate::host::HostError::Docker {
                host: "vm-a".into(),
                op: "archive_to_file",
                object: "web-backup-01j".into(),
                message: "boom".into(),
                retryable: true,
            },
        );
        let (b, src) = volume();
        let err = take(&host, "web", &b, "01J", &src).await.unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert!(err.is_retryable());
        assert_eq!(host.0.container("web-backup-01j"), None);
        assert_eq!(host.0.file("/var/backups/web/web-01J.tar.partial"), None);
        assert_eq!(host.0.file("/var/backups/web/web-01J.tar"), None);
    }

    #[tokio::test]
    async fn a_volume_helper_mounts_the_volume_read_only_for_a_backup() {
        let host = ShellFake(FakeHost::new("vm-a"));
        host.0.add_image("app:v1");
        let (b, src) = volume();
        // Keep the helper: its final removal fails.
        take(&host, "web", &b, "01J", &src).await.unwrap();
        let m = host.0.mutations();
        let last_remove = m
            .iter()
            .rposition(|c| c == "remove web-backup-01j")
            .unwrap();
        let host = ShellFake(FakeHost::new("vm-a"));
        host.0.add_image("app:v1");
        host.0.fail_call(last_remove + 1);
        assert!(take(&host, "web", &b, "01J", &src).await.is_err());
        let helper = host
            .0
            .spec_of("web-backup-01j")
            .expect("the helper is kept");
        assert_eq!(helper.role, Role::Backup);
        assert_eq!(helper.template.image, "app:v1");
        assert_eq!(helper.revision, 4);
        let mount = &helper.template.volumes[0];
        assert_eq!(
            (
                mount.source.as_str(),
                mount.target.as_str(),
                mount.is_volume,
                mount.read_only
            ),
            ("web-data", VOLUME_MOUNT, true, true)
        );
        assert_eq!(
            host.0.container("web-backup-01j").map(|c| c.state),
            Some(ContainerState::Created)
        );
        // The retry replaces it and finishes.
        take(&host, "web", &b, "01J", &src).await.unwrap();
        assert_eq!(host.0.container("web-backup-01j"), None);
    }

    #[tokio::test]
    async fn a_volume_is_restored_through_its_own_helper() {
        let host = ShellFake(FakeHost::new("vm-a"));
        host.0.add_image("app:v1");
        host.0.put_file("/var/backups/web/web-01J.tar", b"tar");
        let (b, src) = volume();
        let record = Catalogued {
            id: "01J",
            path: "/var/backups/web/web-01J.tar",
            sha256: &sha(b"tar"),
        };
        restore(&host, "web", &b, &record, &src).await.unwrap();
        let m = host.0.mutations();
        assert_eq!(
            m,
            [
                "remove web-restore-01j",
                "create web-restore-01j",
                "archive_from_file web-restore-01j:/ < /var/backups/web/web-01J.tar",
                "remove web-restore-01j",
            ]
        );
    }

    #[tokio::test]
    async fn a_restore_refuses_a_file_that_does_not_match_its_catalogue_entry() {
        let host = host_with_db();
        host.0.put_file(PATH, b"tampered");
        let (b, src) = pg_in_container();
        let catalogued = sha(DUMP.as_bytes());
        let record = Catalogued {
            id: "01J",
            path: PATH,
            sha256: &catalogued,
        };
        let err = restore(&host, "web", &b, &record, &src).await.unwrap_err();
        assert!(!err.is_retryable());
        let text = err.to_string();
        assert!(
            text.contains("restore web 01J") && text.contains(PATH),
            "{text}"
        );
        assert!(text.contains("refusing"), "{text}");
        assert!(host.0.mutations().is_empty(), "{:?}", host.0.mutations());

        host.0.remove_file(PATH).await.unwrap();
        let err = restore(&host, "web", &b, &record, &src).await.unwrap_err();
        assert!(
            !err.is_retryable() && err.to_string().contains("missing"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_postgres_restore_runs_pg_restore_in_one_transaction() {
        let host = host_with_db();
        host.0.put_file(PATH, DUMP.as_bytes());
        host.0.on_exec("pg_restore", out(0, "", ""));
        let (b, src) = pg_in_container();
        let digest = sha(DUMP.as_bytes()).to_uppercase();
        let record = Catalogued {
            id: "01J",
            path: PATH,
            sha256: &digest,
        };
        restore(&host, "web", &b, &record, &src).await.unwrap();
        restore(&host, "web", &b, &record, &src).await.unwrap();
        let call = format!(
            "exec_from_file {DB} pg_restore --clean --if-exists --single-transaction --no-owner -U app -d app < {PATH}"
        );
        assert_eq!(host.0.count(&call), 2);

        host.0.on_exec(
            "pg_restore",
            out(1, "", "pg_restore: error: could not execute query"),
        );
        let err = restore(&host, "web", &b, &record, &src).await.unwrap_err();
        assert!(
            err.to_string().contains(
                "pg_restore in container db-r1-0 from /var/backups/web/web-01J.dump exited with 1"
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn prune_removes_the_oldest_files_beyond_keep_and_can_be_repeated() {
        let host = ShellFake(FakeHost::new("vm-a"));
        let ids = ["01A", "01B", "01C", "01D"];
        let paths: Vec<String> = ids.iter().map(|i| format!("/b/web-{i}.dump")).collect();
        for p in &paths {
            host.0.put_file(p, b"x");
        }
        let records: Vec<Catalogued> = ids
            .iter()
            .zip(&paths)
            .map(|(id, path)| Catalogued {
                id,
                path,
                sha256: "",
            })
            .collect();
        assert_eq!(prune(&host, &records, 2).await.unwrap(), ["01A", "01B"]);
        let left: Vec<bool> = paths.iter().map(|p| host.0.file(p).is_some()).collect();
        assert_eq!(left, [false, false, true, true]);
        // The catalogue was not updated (a crash): pruning again removes nothing more.
        assert_eq!(prune(&host, &records, 2).await.unwrap(), ["01A", "01B"]);
        assert_eq!(host.0.file(&paths[2]).as_deref(), Some(&b"x"[..]));
        assert!(prune(&host, &records[2..], 2).await.unwrap().is_empty());
        assert!(prune(&host, &[], 2).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_id_that_is_not_a_file_name_is_refused() {
        let host = host_with_db();
        let (b, src) = pg_in_container();
        for id in ["", "../etc", "a b", "x/y"] {
            let err = take(&host, "web", &b, id, &src).await.unwrap_err();
            assert!(!err.is_retryable(), "{id:?}");
        }
        assert!(host.0.mutations().is_empty());
    }
}
