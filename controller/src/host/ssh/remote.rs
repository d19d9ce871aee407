//! Commands and files on an SSH host, over `exec` channels: exit status, stderr, bounded
//! output, a timeout; files written atomically (temporary name, fsync, rename, mode
//! kept) and streamed both ways without holding a whole file in memory.
//!
//! Every path and word is quoted for `sh` ([`quote`]); the scripts use POSIX sh and
//! coreutils only (`sync FILE` fsyncs that file).

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream};
use futures_util::StreamExt;
use russh::{ChannelMsg, ChannelReadHalf};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::session::Session;
use crate::exec::backup::shell_quote as quote;
use crate::host::{HostError, Output, Result};

/// What a command may print into an [`Output`] (as for local commands).
pub(crate) const OUTPUT_LIMIT: usize = 1 << 20;
/// A file read whole ([`read_file`]) may be at most this large.
const READ_LIMIT: usize = 16 << 20;
/// The exit status the scripts use for "no such file".
const ABSENT: i64 = 44;

/// A command's outcome with stdout as bytes.
pub(crate) struct Raw {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub truncated: bool,
    pub stderr: Vec<u8>,
}

impl Raw {
    pub fn into_output(self) -> Output {
        Output {
            exit_code: self.exit_code,
            stdout: lossy(&self.stdout, self.truncated),
            stderr: lossy(&self.stderr, self.stderr.len() >= OUTPUT_LIMIT),
        }
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_owned()
    }
}

fn lossy(bytes: &[u8], truncated: bool) -> String {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    if truncated {
        s.push_str("\n[output truncated]");
    }
    s
}

fn command_err(session: &Session, command: &str, message: impl Into<String>) -> HostError {
    HostError::Command {
        host: session.name().to_owned(),
        command: command.to_owned(),
        message: message.into(),
    }
}

fn file_err(session: &Session, path: &str, message: impl Into<String>) -> HostError {
    HostError::File {
        host: session.name().to_owned(),
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Runs `script` with `sh -c` on the host, `stdin` fed to it then closed, keeping at
/// most `limit` bytes of stdout, within `timeout`. `what` names it in errors (never the script: it may carry secrets).
///
/// # Errors
/// [`HostError::Unreachable`] when the connection is lost; [`HostError::Command`] when
/// the channel cannot be opened or the command does not finish in time. A command that
/// fails is not an error: its exit code and stderr are in the result.
pub(crate) async fn run(
    session: &Session,
    what: &str,
    script: &str,
    stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    limit: usize,
    timeout: Option<Duration>,
) -> Result<Raw> {
    let work = run_inner(session, what, script, stdin, limit);
    match timeout {
        None => work.await,
        Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| {
            command_err(
                session,
                what,
                format!("did not finish within {} s", limit.as_secs()),
            )
        })?,
    }
}

async fn run_inner(
    session: &Session,
    what: &str,
    script: &str,
    stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    limit: usize,
) -> Result<Raw> {
    let channel = session
        .open_exec(&format!("exec sh -c {}", quote(script)))
        .await?;
    let _permits = channel.permits;
    let (mut read, write) = channel.inner.split();
    let feed = async {
        if let Some(input) = stdin {
            // A command that stops reading early closes its stdin; what it made of that
            // shows in its exit status.
            let _ = write.data(input).await;
        }
        let _ = write.eof().await;
        Ok::<_, HostError>(())
    };
    let collect = async {
        let mut out = Vec::new();
        let mut truncated = false;
        let mut stderr = Vec::new();
        let mut status = None;
        let code = loop {
            match next_chunk(&mut read, &mut status).await {
                Chunk::Data(data) => {
                    let room = limit.saturating_sub(out.len());
                    truncated |= data.len() > room;
                    out.extend_from_slice(&data[..data.len().min(room)]);
                }
                Chunk::Stderr(data) => push_capped(&mut stderr, &data),
                Chunk::Exit(code) => break Some(code),
                Chunk::Lost => break None,
            }
        };
        Ok::<_, HostError>((code, out, truncated, stderr))
    };
    let ((), (code, stdout, truncated, stderr)) = tokio::try_join!(feed, collect)?;
    let exit_code = code.ok_or_else(|| HostError::Unreachable {
        host: session.name().to_owned(),
        message: format!("the SSH connection ended before `{what}` finished"),
    })?;
    Ok(Raw {
        exit_code,
        stdout,
        truncated,
        stderr,
    })
}

/// A script's result that must be exit 0, else an error naming `path` with its stderr.
fn checked(session: &Session, path: &str, raw: Raw) -> Result<Raw> {
    if raw.exit_code == 0 {
        Ok(raw)
    } else {
        Err(file_err(
            session,
            path,
            format!("exit {}: {}", raw.exit_code, raw.stderr_text()),
        ))
    }
}

/// `(directory, temporary path)` for writing `path`: beside it, so the rename is atomic,
/// and named after it so a later write removes what an interrupted one left.
fn temp_of(path: &str) -> std::result::Result<(String, String, String), String> {
    let (dir, name) = match path.rsplit_once('/') {
        Some(("", name)) => ("/".to_owned(), name),
        Some((dir, name)) => (dir.to_owned(), name),
        None => (".".to_owned(), path),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err("not a file path".into());
    }
    let nonce = ulid::Ulid::new().to_string().to_lowercase();
    let stale = format!("{dir}/.{name}.berth-tmp-");
    Ok((dir, format!("{stale}{nonce}"), stale))
}

/// Writes `data` to `path` atomically with exactly `mode`, in one round trip: the
/// script renames only once it has all `data.len()` bytes, on disk.
pub(crate) async fn write_file(
    session: &Session,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<()> {
    let (dir, tmp, stale) = temp_of(path).map_err(|e| file_err(session, path, e))?;
    let script = format!(
        "set -e; umask 077; mkdir -p -m 700 -- {d}; rm -f -- {s}*; t={t}; trap 'rm -f -- \"$t\"' EXIT; \
         head -c {len} > \"$t\"; [ \"$(wc -c < \"$t\")\" -eq {len} ] || {{ echo 'short write: the connection ended' >&2; exit 1; }}; \
         chmod {mode:o} -- \"$t\"; sync -- \"$t\"; mv -f -- \"$t\" {p}; trap - EXIT; sync -- {d}",
        d = quote(&dir),
        s = quote(&stale),
        t = quote(&tmp),
        p = quote(path),
        len = data.len(),
    );
    let mut input: &[u8] = data;
    let raw = run(
        session,
        "write",
        &script,
        Some(&mut input),
        0,
        Some(Duration::from_secs(120)),
    )
    .await?;
    checked(session, path, raw).map(|_| ())
}

/// A file being streamed to the host, under a temporary name until [`RemoteFile::commit`].
pub(crate) struct RemoteFile {
    pub writer: Box<dyn AsyncWrite + Unpin + Send>,
    /// Reads the channel from the start: russh queues window adjustments there, and a
    /// queue nobody empties would stall the whole connection. Its exit code and stderr.
    reader: tokio::task::JoinHandle<(Option<i64>, Vec<u8>)>,
    write: russh::ChannelWriteHalf<russh::client::Msg>,
    _permits: Vec<tokio::sync::OwnedSemaphorePermit>,
    tmp: String,
    dir: String,
    path: String,
}

impl RemoteFile {
    /// Starts `cat` into a temporary file beside `path` (mode `mode`), removing what an
    /// interrupted write of the same path left.
    pub async fn create(session: &Session, path: &str, mode: u32) -> Result<RemoteFile> {
        let (dir, tmp, stale) = temp_of(path).map_err(|e| file_err(session, path, e))?;
        let script = format!(
            "set -e; umask 077; mkdir -p -m 700 -- {d}; rm -f -- {s}*; cat > {t}; chmod {mode:o} -- {t}; sync -- {t}",
            d = quote(&dir),
            s = quote(&stale),
            t = quote(&tmp),
        );
        let channel = session
            .open_exec(&format!("exec sh -c {}", quote(&script)))
            .await?;
        let (mut read, write) = channel.inner.split();
        let reader = tokio::spawn(async move {
            let mut stderr = Vec::new();
            let mut status = None;
            let code = loop {
                match next_chunk(&mut read, &mut status).await {
                    Chunk::Data(_) => {}
                    Chunk::Stderr(data) => push_capped(&mut stderr, &data),
                    Chunk::Exit(code) => break Some(code),
                    Chunk::Lost => break None,
                }
            };
            (code, stderr)
        });
        Ok(RemoteFile {
            writer: Box::new(write.make_writer()),
            reader,
            write,
            _permits: channel.permits,
            tmp,
            dir,
            path: path.to_owned(),
        })
    }

    /// Ends the stream, waits for the data to be on the host's disk, and renames it into
    /// place. Dropped without this, the file never appears at `path`.
    pub async fn commit(mut self, session: &Session) -> Result<()> {
        let path = self.path.clone();
        self.writer
            .shutdown()
            .await
            .map_err(|e| file_err(session, &path, e.to_string()))?;
        let _ = self.write.eof().await;
        let (code, stderr) = (&mut self.reader).await.unwrap_or((None, Vec::new()));
        let raw = Raw {
            exit_code: code.ok_or_else(|| HostError::Unreachable {
                host: session.name().to_owned(),
                message: format!("the SSH connection ended while writing {path}"),
            })?,
            stdout: Vec::new(),
            truncated: false,
            stderr,
        };
        checked(session, &path, raw)?;
        let script = format!(
            "mv -f -- {t} {p} && sync -- {d}",
            t = quote(&self.tmp),
            p = quote(&path),
            d = quote(&self.dir)
        );
        let raw = run(
            session,
            "rename",
            &script,
            None,
            0,
            Some(Duration::from_secs(60)),
        )
        .await?;
        checked(session, &path, raw).map(|_| ())
    }

    /// Gives up: the temporary file goes (best effort; the next write of the path
    /// removes it otherwise).
    pub async fn abandon(self, session: &Session) {
        let tmp = self.tmp.clone();
        self.reader.abort();
        let _ = self.write.close().await;
        drop(self);
        let _ = remove_file(session, &tmp).await;
    }
}

/// The file's bytes as a stream, read by `cat` on the host: never whole in memory.
/// `Ok(None)` when it does not exist.
pub(crate) async fn stream_file(
    session: &Session,
    path: &str,
) -> Result<Option<BoxStream<'static, std::io::Result<Bytes>>>> {
    let script = format!(
        "[ -e {p} ] || exit {ABSENT}; exec cat -- {p}",
        p = quote(path)
    );
    let channel = session
        .open_exec(&format!("exec sh -c {}", quote(&script)))
        .await?;
    let permits = channel.permits;
    let (mut read, write) = channel.inner.split();
    let _ = write.eof().await;
    // The first message tells an absent file from a present one.
    let mut status = None;
    let first = next_chunk(&mut read, &mut status).await;
    if let Chunk::Exit(ABSENT) = first {
        return Ok(None);
    }
    let state = (
        Some(first),
        Some((read, write, permits, status)),
        Vec::new(),
    );
    let path = path.to_owned();
    Ok(Some(
        stream::unfold(state, move |(pending, ch, mut stderr)| {
            let path = path.clone();
            async move {
                let (mut read, write, permits, mut status) = ch?;
                let mut chunk = match pending {
                    Some(c) => c,
                    None => next_chunk(&mut read, &mut status).await,
                };
                loop {
                    match chunk {
                        Chunk::Data(d) => {
                            let ch = Some((read, write, permits, status));
                            return Some((Ok(d), (None, ch, stderr)));
                        }
                        Chunk::Stderr(e) => {
                            push_capped(&mut stderr, &e);
                            chunk = next_chunk(&mut read, &mut status).await;
                        }
                        Chunk::Exit(0) => return None,
                        Chunk::Exit(code) => {
                            let msg = format!(
                                "reading {path} on the host: exit {code}: {}",
                                String::from_utf8_lossy(&stderr).trim()
                            );
                            return Some((Err(std::io::Error::other(msg)), (None, None, stderr)));
                        }
                        Chunk::Lost => {
                            let msg = format!("the SSH connection ended while reading {path}");
                            return Some((
                                Err(std::io::Error::new(
                                    std::io::ErrorKind::ConnectionAborted,
                                    msg,
                                )),
                                (None, None, stderr),
                            ));
                        }
                    }
                }
            }
        })
        .boxed(),
    ))
}

fn push_capped(buf: &mut Vec<u8>, data: &[u8]) {
    let room = OUTPUT_LIMIT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

enum Chunk {
    Data(Bytes),
    Stderr(Bytes),
    Exit(i64),
    Lost,
}

/// The channel's next message that matters. The exit status may come before the last
/// of stdout (sshd sends it when the command exits, with output still buffered), so it
/// is kept in `code` until the channel closes.
async fn next_chunk(read: &mut ChannelReadHalf, code: &mut Option<i64>) -> Chunk {
    while let Some(msg) = read.wait().await {
        match msg {
            ChannelMsg::Data { data } => return Chunk::Data(data),
            ChannelMsg::ExtendedData { data, .. } => return Chunk::Stderr(data),
            ChannelMsg::ExitStatus { exit_status } => *code = Some(i64::from(exit_status)),
            ChannelMsg::ExitSignal { .. } => *code = Some(128 + 9),
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    match *code {
        Some(c) => Chunk::Exit(c),
        None => Chunk::Lost,
    }
}

/// The whole file (at most [`READ_LIMIT`]); `None` when it does not exist.
pub(crate) async fn read_file(session: &Session, path: &str) -> Result<Option<Vec<u8>>> {
    let script = format!(
        "[ -e {p} ] || exit {ABSENT}; exec cat -- {p}",
        p = quote(path)
    );
    let raw = run(
        session,
        "read",
        &script,
        None,
        READ_LIMIT,
        Some(Duration::from_secs(120)),
    )
    .await?;
    if raw.exit_code == ABSENT {
        return Ok(None);
    }
    if raw.truncated {
        return Err(file_err(
            session,
            path,
            format!("larger than {} MiB", READ_LIMIT >> 20),
        ));
    }
    checked(session, path, raw).map(|r| Some(r.stdout))
}

/// Size and sha256 computed on the host; `None` when the file does not exist.
pub(crate) async fn file_digest(session: &Session, path: &str) -> Result<Option<(u64, String)>> {
    let script = format!(
        "[ -e {p} ] || exit {ABSENT}; wc -c < {p} && sha256sum < {p}",
        p = quote(path)
    );
    let raw = run(
        session,
        "sha256sum",
        &script,
        None,
        4096,
        // Large backups take a while to hash.
        Some(Duration::from_secs(1800)),
    )
    .await?;
    if raw.exit_code == ABSENT {
        return Ok(None);
    }
    let raw = checked(session, path, raw)?;
    let text = String::from_utf8_lossy(&raw.stdout);
    let mut words = text.split_whitespace();
    let size = words.next().and_then(|w| w.parse::<u64>().ok());
    let digest = words
        .next()
        .filter(|d| d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit()));
    match (size, digest) {
        (Some(size), Some(digest)) => Ok(Some((size, digest.to_owned()))),
        _ => Err(file_err(
            session,
            path,
            format!("unexpected output of wc/sha256sum: {}", text.trim()),
        )),
    }
}

pub(crate) async fn remove_file(session: &Session, path: &str) -> Result<()> {
    let raw = run(
        session,
        "rm",
        &format!("rm -f -- {}", quote(path)),
        None,
        0,
        Some(Duration::from_secs(60)),
    )
    .await?;
    checked(session, path, raw).map(|_| ())
}
