//! One SSH connection to a host: the host key verified against `knownHostsFile`, key or
//! agent authentication, keepalives, and a bound on the channels open at once.
//!
//! Nothing here retries: a lost connection is reported ([`Session::lost`]) and the host
//! table connects again with backoff, making a new session.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, DisconnectReason, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::Channel;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::host::{HostError, Result};

/// Channels (Docker connections, commands, probe connections) open at once on one host;
/// more wait for one to close. sshd's own default `MaxSessions` (10) bounds commands.
pub(crate) const MAX_CHANNELS: usize = 64;
/// Commands (session channels) at once: below sshd's default `MaxSessions` of 10.
const MAX_SESSIONS: usize = 8;
/// A keepalive after this much silence; the connection counts as lost after
/// [`KEEPALIVE_MAX`] unanswered ones.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
const KEEPALIVE_MAX: usize = 3;

/// Where to connect and how to authenticate, from the Host resource.
#[derive(Clone, Debug)]
pub struct Target {
    /// The Host resource's name.
    pub name: String,
    pub user: String,
    pub host: String,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    pub known_hosts: PathBuf,
}

impl Target {
    /// `host:port` as known_hosts and messages write it (`[host]:port` off port 22).
    pub fn host_port(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    fn unreachable(&self, message: impl Into<String>) -> HostError {
        HostError::Unreachable {
            host: self.name.clone(),
            message: message.into(),
        }
    }
}

/// The key a server offered, as a person compares it: `ssh-ed25519 SHA256:…`.
pub fn describe_key(key: &PublicKey) -> String {
    format!(
        "{} {}",
        key.algorithm().as_str(),
        key.fingerprint(HashAlg::Sha256)
    )
}

/// What the host-key check found, kept by the handler for the error message.
#[derive(Clone, Debug)]
enum Verdict {
    Unknown(PublicKey),
    Changed { key: PublicKey, line: usize },
    Unreadable(String),
    Certificate,
}

struct Client {
    target: Target,
    verdict: Arc<Mutex<Option<Verdict>>>,
    lost: watch::Sender<Option<String>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let key = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => key,
            PublicKeyOrCertificate::Certificate(_) => {
                self.remember(Verdict::Certificate);
                return Ok(false);
            }
        };
        let t = &self.target;
        let verdict =
            match russh::keys::check_known_hosts_path(&t.host, t.port, key, &t.known_hosts) {
                Ok(true) => return Ok(true),
                Ok(false) => Verdict::Unknown(key.clone()),
                Err(russh::keys::Error::KeyChanged { line }) => Verdict::Changed {
                    key: key.clone(),
                    line,
                },
                Err(e) => Verdict::Unreadable(e.to_string()),
            };
        self.remember(verdict);
        Ok(false)
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<Self::Error>,
    ) -> std::result::Result<(), Self::Error> {
        let why = match &reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                format!(
                    "the server closed the SSH connection ({:?})",
                    info.reason_code
                )
            }
            DisconnectReason::Error(e) => format!("the SSH connection was lost: {e}"),
        };
        self.lost.send_replace(Some(why));
        match reason {
            DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            DisconnectReason::Error(e) => Err(e),
        }
    }
}

impl Client {
    fn remember(&self, verdict: Verdict) {
        if let Ok(mut slot) = self.verdict.lock() {
            *slot = Some(verdict);
        }
    }
}

/// The command that records a host's key, said in every refusal.
fn trust_hint(t: &Target) -> String {
    format!(
        "after checking the fingerprint with the host's owner, run `berthctl hosts trust {} -f <manifests>`",
        t.name
    )
}

pub(crate) struct Session {
    target: Target,
    handle: Handle<Client>,
    channels: Arc<Semaphore>,
    sessions: Arc<Semaphore>,
    lost: watch::Receiver<Option<String>>,
}

/// A channel with the permits it holds; dropping it frees them.
pub(crate) struct Held<T> {
    pub inner: T,
    pub permits: Vec<OwnedSemaphorePermit>,
}

impl Session {
    /// Connects, verifies the host key, authenticates.
    ///
    /// # Errors
    /// [`HostError::Unreachable`] saying why: the TCP connection, a host key that is
    /// unknown or changed (with the offered key's type and SHA256 fingerprint and the
    /// command to trust it), a key that cannot be used, authentication refused.
    pub async fn connect(target: Target) -> Result<Session> {
        let config = Arc::new(client::Config {
            keepalive_interval: Some(KEEPALIVE_EVERY),
            keepalive_max: KEEPALIVE_MAX,
            inactivity_timeout: None,
            nodelay: true,
            ..Default::default()
        });
        let verdict = Arc::new(Mutex::new(None));
        let (lost_tx, lost) = watch::channel(None);
        let handler = Client {
            target: target.clone(),
            verdict: verdict.clone(),
            lost: lost_tx,
        };
        let addr = (target.host.clone(), target.port);
        let mut handle = match client::connect(config, addr, handler).await {
            Ok(h) => h,
            Err(e) => {
                let found = verdict.lock().ok().and_then(|v| v.clone());
                return Err(match found {
                    Some(v) => target.unreachable(refusal(&target, v)),
                    None => target.unreachable(format!(
                        "ssh {}@{}: {e}",
                        target.user,
                        target.host_port()
                    )),
                });
            }
        };
        authenticate(&target, &mut handle).await?;
        Ok(Session {
            target,
            handle,
            channels: Arc::new(Semaphore::new(MAX_CHANNELS)),
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
            lost,
        })
    }

    pub fn name(&self) -> &str {
        &self.target.name
    }

    /// Resolves once the connection is gone, with why.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "the SSH connection was lost".into();
            }
        }
    }

    fn channel_error(&self, what: &str, e: russh::Error) -> HostError {
        if self.handle.is_closed() {
            let why = self
                .lost
                .borrow()
                .clone()
                .unwrap_or_else(|| "the SSH connection was lost".into());
            return self.target.unreachable(why);
        }
        self.target
            .unreachable(format!("sshd refused a channel to {what}: {e}"))
    }

    async fn permit(sem: &Arc<Semaphore>) -> OwnedSemaphorePermit {
        // Never closed: the semaphores live as long as the session.
        sem.clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("semaphore closed"))
    }

    /// A stream to the unix socket `path` on the host (`direct-streamlocal`).
    pub async fn open_socket(&self, path: &str) -> Result<Held<Channel<client::Msg>>> {
        let permit = Self::permit(&self.channels).await;
        let channel = self
            .handle
            .channel_open_direct_streamlocal(path)
            .await
            .map_err(|e| {
                self.channel_error(
                    &format!("{path} (is AllowStreamLocalForwarding on, the socket there?)"),
                    e,
                )
            })?;
        Ok(Held {
            inner: channel,
            permits: vec![permit],
        })
    }

    /// A TCP connection to `addr:port` as seen from the host (`direct-tcpip`).
    pub async fn open_tcp(&self, addr: &str, port: u16) -> Result<Held<Channel<client::Msg>>> {
        let permit = Self::permit(&self.channels).await;
        let channel = self
            .handle
            .channel_open_direct_tcpip(addr, u32::from(port), "127.0.0.1", 0)
            .await
            .map_err(|e| HostError::Connect {
                host: self.target.name.clone(),
                port,
                message: if self.handle.is_closed() {
                    "the SSH connection was lost".into()
                } else {
                    format!("{addr}: {e}")
                },
            })?;
        Ok(Held {
            inner: channel,
            permits: vec![permit],
        })
    }

    /// A session channel running `command` (by the login shell, as sshd does).
    pub async fn open_exec(&self, command: &str) -> Result<Held<Channel<client::Msg>>> {
        let session = Self::permit(&self.sessions).await;
        let channel = Self::permit(&self.channels).await;
        let ch = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.channel_error("run a command", e))?;
        ch.exec(true, command)
            .await
            .map_err(|e| self.channel_error("run a command", e))?;
        Ok(Held {
            inner: ch,
            permits: vec![channel, session],
        })
    }
}

impl<T> std::ops::Deref for Held<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

/// The refusal of a host key, with what to do about it.
fn refusal(t: &Target, v: Verdict) -> String {
    let file = t.known_hosts.display();
    match v {
        // The key first: `get hosts` shows the start of the error.
        Verdict::Unknown(key) => format!(
            "host key not trusted: {} offered by {}, which {file} does not list; nothing was sent to it; {}",
            describe_key(&key),
            t.host_port(),
            trust_hint(t)
        ),
        Verdict::Changed { key, line } => format!(
            "HOST KEY CHANGED: {} offered by {}, but {file} line {line} records another key for it; this may be an attack; nothing was sent to it; if the host was reinstalled, remove that line and {}",
            describe_key(&key),
            t.host_port(),
            trust_hint(t)
        ),
        Verdict::Unreadable(e) => format!("cannot check the host key against {file}: {e}"),
        Verdict::Certificate => format!(
            "{} offered a host certificate; Berth verifies plain host keys from {file} only",
            t.host_port()
        ),
    }
}

/// Authenticates with `identityFile` (ed25519, ECDSA, RSA), or through ssh-agent when
/// `SSH_AUTH_SOCK` is set (the only way to use a key protected by a passphrase).
async fn authenticate(t: &Target, handle: &mut Handle<Client>) -> Result<()> {
    let agent = std::env::var_os("SSH_AUTH_SOCK").is_some_and(|s| !s.is_empty());
    let mut tried = Vec::new();
    if let Some(file) = &t.identity_file {
        match load_key(t, file)? {
            Some(key) => {
                if auth_with_key(t, handle, key).await? {
                    return Ok(());
                }
                tried.push(format!("key {}", file.display()));
            }
            None if !agent => {
                return Err(t.unreachable(format!(
                    "identityFile {} is protected by a passphrase and no ssh-agent is running (SSH_AUTH_SOCK is not set): add the key to an agent (`ssh-add {}`) for berthd, or use a key without a passphrase",
                    file.display(),
                    file.display()
                )))
            }
            None => {}
        }
    }
    if agent {
        if auth_with_agent(t, handle).await? {
            return Ok(());
        }
        tried.push("the keys of ssh-agent".into());
    }
    if tried.is_empty() {
        return Err(t.unreachable(
            "no identityFile in the Host and no ssh-agent (SSH_AUTH_SOCK) to authenticate with",
        ));
    }
    Err(t.unreachable(format!(
        "{}@{} refused {}",
        t.user,
        t.host_port(),
        tried.join(" and ")
    )))
}

/// The private key in `file`; `None` when it needs a passphrase.
fn load_key(t: &Target, file: &Path) -> Result<Option<russh::keys::PrivateKey>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| t.unreachable(format!("identityFile {}: {e}", file.display())))?;
    match russh::keys::decode_secret_key(&text, None) {
        Ok(key) => Ok(Some(key)),
        Err(russh::keys::Error::KeyIsEncrypted) => Ok(None),
        Err(e) => Err(t.unreachable(format!(
            "identityFile {}: not a usable private key: {e}",
            file.display()
        ))),
    }
}

async fn auth_with_key(
    t: &Target,
    handle: &mut Handle<Client>,
    key: russh::keys::PrivateKey,
) -> Result<bool> {
    let hash = if key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .map_err(|e| t.unreachable(format!("ssh authentication: {e}")))?
            .flatten()
    } else {
        None
    };
    let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
    let result = handle
        .authenticate_publickey(t.user.clone(), key)
        .await
        .map_err(|e| t.unreachable(format!("ssh authentication: {e}")))?;
    Ok(result.success())
}

async fn auth_with_agent(t: &Target, handle: &mut Handle<Client>) -> Result<bool> {
    let agent_err = |e: &dyn std::fmt::Display| t.unreachable(format!("ssh-agent: {e}"));
    let mut agent = AgentClient::connect_env()
        .await
        .map_err(|e| agent_err(&e))?;
    let identities = agent
        .request_identities()
        .await
        .map_err(|e| agent_err(&e))?;
    for identity in identities {
        let key = match identity {
            russh::keys::agent::AgentIdentity::PublicKey { key, .. } => key,
            russh::keys::agent::AgentIdentity::Certificate { .. } => continue,
        };
        let hash = if key.algorithm().is_rsa() {
            handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| agent_err(&e))?
                .flatten()
        } else {
            None
        };
        let result = handle
            .authenticate_publickey_with(t.user.clone(), key, hash, &mut agent)
            .await
            .map_err(|e| agent_err(&e))?;
        if result.success() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Fetches the key `target` offers, without authenticating or trusting it (for
/// `berthctl hosts trust`).
pub async fn offered_key(host: &str, port: u16) -> std::result::Result<PublicKey, String> {
    struct Grab(Arc<Mutex<Option<PublicKey>>>);
    impl client::Handler for Grab {
        type Error = russh::Error;
        async fn check_server_key(
            &mut self,
            offered: &PublicKeyOrCertificate,
        ) -> std::result::Result<bool, Self::Error> {
            if let PublicKeyOrCertificate::PublicKey { key, .. } = offered {
                if let Ok(mut slot) = self.0.lock() {
                    *slot = Some(key.clone());
                }
            }
            // Refused: nothing more is said to a host not trusted yet.
            Ok(false)
        }
    }
    let slot = Arc::new(Mutex::new(None));
    let config = Arc::new(client::Config::default());
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        client::connect(config, (host.to_owned(), port), Grab(slot.clone())),
    )
    .await;
    let key = slot.lock().ok().and_then(|s| s.clone());
    match (key, result) {
        (Some(key), _) => Ok(key),
        (None, Err(_)) => Err(format!("{host}:{port} did not answer within 10 s")),
        (None, Ok(Err(e))) => Err(format!("{host}:{port}: {e}")),
        (None, Ok(Ok(_))) => Err(format!("{host}:{port} offered no plain host key")),
    }
}
