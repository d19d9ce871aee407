//! berthctl's side of the API: one HTTP/1.1 request per connection on berthd's unix
//! socket, blocking (berthctl does one thing at a time; a watch polls).
//!
//! The socket is found by itself: `--socket`, else `$BERTH_SOCKET`, else
//! `<--state>/berthd.sock` (the state directory defaults to `.berth`, as berthd's does).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::CtlError;

/// How long berthctl waits for one answer.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// `--socket PATH` and `--state DIR`: where berthd is.
#[derive(Args, Clone, Debug, Default)]
pub struct Connect {
    /// berthd's API socket. Default: $BERTH_SOCKET, else <state>/berthd.sock.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl Connect {
    /// The socket to use, given the state directory.
    pub fn socket_path(&self, state: &Path) -> PathBuf {
        if let Some(s) = &self.socket {
            return s.clone();
        }
        match std::env::var_os("BERTH_SOCKET") {
            Some(s) if !s.is_empty() => PathBuf::from(s),
            _ => state.join("berthd.sock"),
        }
    }

    pub fn client(&self, state: &Path) -> Client {
        Client {
            socket: self.socket_path(state),
        }
    }
}

/// A client of one berthd.
#[derive(Clone, Debug)]
pub struct Client {
    pub socket: PathBuf,
}

impl Client {
    /// Whether berthd answers on the socket (a connection is accepted).
    pub fn reachable(&self) -> bool {
        UnixStream::connect(&self.socket).is_ok()
    }

    /// One request; the status and the body.
    ///
    /// # Errors
    /// [`CtlError::Unreachable`] when nothing answers on the socket;
    /// [`CtlError::Transport`] for a broken answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), CtlError> {
        let unreachable = |source: std::io::Error| CtlError::Unreachable {
            socket: self.socket.clone(),
            source,
        };
        let mut s = UnixStream::connect(&self.socket).map_err(unreachable)?;
        s.set_read_timeout(Some(READ_TIMEOUT))
            .map_err(unreachable)?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: berthd\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let transport = |e: std::io::Error| CtlError::Transport(e.to_string());
        s.write_all(head.as_bytes()).map_err(transport)?;
        s.write_all(body).map_err(transport)?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map_err(transport)?;
        parse_response(&buf)
    }

    /// GET, decoded.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CtlError> {
        let (status, body) = self.request("GET", path, None)?;
        decode(status, &body)
    }

    /// POST with a JSON body, decoded.
    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, CtlError> {
        let bytes = serde_json::to_vec(body).map_err(|e| CtlError::Encode {
            format: "JSON",
            message: e.to_string(),
        })?;
        let (status, body) = self.request("POST", path, Some(&bytes))?;
        decode(status, &body)
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CtlError> {
        let (status, body) = self.request("DELETE", path, None)?;
        decode(status, &body)
    }
}

fn parse_response(buf: &[u8]) -> Result<(u16, Vec<u8>), CtlError> {
    let bad = || CtlError::Transport("berthd's answer is not HTTP".into());
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&buf[..split]).map_err(|_| bad())?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(bad)?;
    Ok((status, buf[split + 4..].to_vec()))
}

fn decode<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, CtlError> {
    if !(200..300).contains(&status) {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        return Err(CtlError::Api {
            status,
            error: v["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned()),
            field: v["field"].as_str().map(str::to_owned),
        });
    }
    serde_json::from_slice(body)
        .map_err(|e| CtlError::Transport(format!("berthd's answer does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_splits_into_status_and_body() {
        let (s, b) =
            parse_response(b"HTTP/1.1 409 Conflict\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_slice()), (409, b"{}".as_slice()));
        let e = decode::<serde_json::Value>(409, br#"{"error":"busy","field":"x"}"#).unwrap_err();
        assert!(matches!(e, CtlError::Api { status: 409, .. }), "{e}");
        assert_eq!(e.to_string(), "busy (field x)");
    }

    #[test]
    fn the_socket_comes_from_the_flag_then_the_environment_then_the_state() {
        let c = Connect {
            socket: Some("/x.sock".into()),
        };
        assert_eq!(c.socket_path(Path::new("/s")), PathBuf::from("/x.sock"));
        let c = Connect::default();
        if std::env::var_os("BERTH_SOCKET").is_none() {
            assert_eq!(
                c.socket_path(Path::new("/s")),
                PathBuf::from("/s/berthd.sock")
            );
        }
    }
}
