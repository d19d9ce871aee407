//! systemd's readiness protocol (`Type=notify`): one datagram to `$NOTIFY_SOCKET`.
//!
//! Hand-written rather than a crate: the protocol is a single `sendto` of `READY=1` on a
//! unix datagram socket (a path, or `@name` in the abstract namespace), documented in
//! sd_notify(3); a dependency would be larger than this file.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=…`) to the service manager when
/// `$NOTIFY_SOCKET` names one: `Ok(true)` when sent, `Ok(false)` when berthd does not run
/// under a manager that asked for it.
///
/// # Errors
/// The socket cannot be reached or the datagram not sent.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(path) => notify_to(&path.to_string_lossy(), state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` to the socket at `path` (`@name`: the abstract namespace).
///
/// # Errors
/// As [`notify`].
pub fn notify_to(path: &str, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        None => {
            socket.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_a_socket_named_by_path_or_in_the_abstract_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let by_path = UnixDatagram::bind(&path).unwrap();
        notify_to(&path.display().to_string(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = by_path.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("berth-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_ = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = abstract_.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
