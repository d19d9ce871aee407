//! bollard's transport over SSH: each HTTP connection to the Docker engine is a
//! `direct-streamlocal` channel to the host's Docker socket, so no Docker TCP port is
//! ever opened on the VM. A request opens its own channel and keeps it until its
//! response ends (a streaming call such as events or an attached exec holds its own).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bollard::errors::Error as DockerError;
use bollard::{BollardRequest, ClientVersion, Docker};
use http::header::HOST;
use http::{HeaderValue, Response, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;

use super::session::Session;

/// A Docker client whose every connection is a new channel of `session` to `socket`.
pub(crate) fn docker(
    session: Arc<Session>,
    socket: String,
    timeout_secs: u64,
    version: &ClientVersion,
) -> Result<Docker, DockerError> {
    let transport = move |req: BollardRequest| {
        let session = session.clone();
        let socket = socket.clone();
        async move { send(&session, &socket, req).await }
    };
    // The address only names the scheme: `send` puts the request in origin form.
    Docker::connect_with_custom_transport(transport, Some("http://docker"), timeout_secs, version)
}

async fn send(
    session: &Session,
    socket: &str,
    req: BollardRequest,
) -> Result<Response<Incoming>, DockerError> {
    let channel = session
        .open_socket(socket)
        .await
        .map_err(|e| DockerError::IOError {
            err: std::io::Error::new(std::io::ErrorKind::ConnectionAborted, e.to_string()),
        })?;
    let stream = Tunnel {
        inner: channel.inner.into_stream(),
        _permits: channel.permits,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Drives the connection until the response (or an upgraded exec stream) is done;
    // the channel closes with it.
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let (mut parts, body) = req.into_parts();
    // dockerd answers 400 to a request without a Host header, and expects origin form.
    parts
        .headers
        .entry(HOST)
        .or_insert(HeaderValue::from_static("docker"));
    if let Some(pq) = parts.uri.path_and_query().cloned() {
        parts.uri = Uri::from(pq);
    }
    Ok(sender
        .send_request(http::Request::from_parts(parts, body))
        .await?)
}

/// The channel's byte stream, holding its permit of the session's channel bound.
struct Tunnel<S> {
    inner: S,
    _permits: Vec<OwnedSemaphorePermit>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tunnel<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tunnel<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TCP connection through the host (probes, smoke checks), holding its permit.
pub(crate) fn tcp_stream(
    channel: super::session::Held<russh::Channel<russh::client::Msg>>,
) -> impl AsyncRead + AsyncWrite + Unpin + Send {
    Tunnel {
        inner: channel.inner.into_stream(),
        _permits: channel.permits,
    }
}
