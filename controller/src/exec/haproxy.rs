//! The HAProxy traffic switch, over the runtime API of its admin socket: no reload, so
//! keep-alive clients lose nothing. The pure half reads `show servers state` and decides
//! the `set server` commands; the effectful half sends only those, reads the state again
//! to verify, and writes it to the server-state file so a reload keeps the switch.
//!
//! The backend's servers are a pool pre-declared with `server-template <prefix> 1-N
//! ... disabled`: Berth gives a slot an address, a weight and `state ready`; a slot that
//! leaves goes to `state drain` (open connections finish, no new ones) and, once its
//! replica is stopped, to `state maint`.

use std::time::Duration;

use berth_api::environment::HaproxyTraffic;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::exec::ExecError;
use crate::host::Host;

/// How long one runtime API command may take, connecting included.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The weight of every server Berth makes ready (all replicas serve alike).
pub const WEIGHT: u32 = 1;

/// A server's administrative state, from the `srv_admin_state` bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    Ready,
    Drain,
    Maint,
}

impl Admin {
    /// HAProxy's bits: 0x01 forced maint, 0x02 inherited maint, 0x04 maint from the
    /// configuration (`disabled`, kept after `state ready`), 0x08/0x10 forced/inherited
    /// drain, 0x20/0x40 maint for failed resolution. 0x04 alone is ready: it stays set
    /// on a `disabled` server made ready at run time.
    fn from_bits(bits: u32) -> Admin {
        if bits & 0x63 != 0 {
            Admin::Maint
        } else if bits & 0x18 != 0 {
            Admin::Drain
        } else {
            Admin::Ready
        }
    }
}

/// One server of a backend, as `show servers state` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    pub addr: String,
    pub port: u16,
    pub admin: Admin,
    pub weight: u32,
}

/// Where one replica should receive traffic.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Desired {
    pub addr: String,
    pub port: u16,
    pub weight: u32,
}

/// The servers of `backend` in the output of `show servers state` (format version 1).
///
/// # Errors
/// Not that format (another version, a line with too few fields): the message says what
/// was found. An unknown backend is `Ok` with no server: HAProxy answers that with a
/// message instead of rows, and [`check_backend`] tells the two apart.
pub fn parse_servers_state(text: &str, backend: &str) -> Result<Vec<Server>, String> {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    match lines.next() {
        Some("1") => {}
        Some(other) => {
            return Err(format!(
                "expected `show servers state` format 1, got {:?}",
                first_chars(other)
            ))
        }
        None => return Err("`show servers state` printed nothing".into()),
    }
    let mut out = Vec::new();
    for line in lines.filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 19 {
            return Err(format!(
                "a server line with {} fields, expected at least 19: {:?}",
                f.len(),
                first_chars(line)
            ));
        }
        if f[1] != backend {
            continue;
        }
        let num = |i: usize, what: &str| {
            f[i].parse::<u32>()
                .map_err(|_| format!("server {}: {what} {:?} is not a number", f[3], f[i]))
        };
        out.push(Server {
            name: f[3].to_owned(),
            addr: f[4].to_owned(),
            port: u16::try_from(num(18, "port")?)
                .map_err(|_| format!("server {}: port {} out of range", f[3], f[18]))?,
            admin: Admin::from_bits(num(6, "admin state")?),
            weight: num(7, "weight")?,
        });
    }
    Ok(out)
}

fn first_chars(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The slots of the pool: servers named `<prefix><number>`, by number.
pub fn pool<'a>(servers: &'a [Server], prefix: &str) -> Vec<&'a Server> {
    let mut slots: Vec<(u32, &Server)> = servers
        .iter()
        .filter_map(|s| {
            let n = s.name.strip_prefix(prefix)?;
            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .then(|| n.parse().ok().map(|n| (n, s)))
                .flatten()
        })
        .collect();
    slots.sort_by_key(|(n, _)| *n);
    slots.into_iter().map(|(_, s)| s).collect()
}

/// The slots that receive new traffic: ready ones (drained and maint do not).
pub fn serving(servers: &[Server], prefix: &str) -> Vec<Desired> {
    let mut out: Vec<Desired> = pool(servers, prefix)
        .into_iter()
        .filter(|s| s.admin == Admin::Ready)
        .map(|s| Desired {
            addr: s.addr.clone(),
            port: s.port,
            weight: s.weight,
        })
        .collect();
    out.sort();
    out
}

/// Not enough slots for what is desired.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("backend {backend} has {free} slot(s) named {prefix}N free for {wanted} new server(s) ({total} in the pool, the others serve or drain); add slots with `server-template {prefix} 1-N`")]
pub struct Shortage {
    pub backend: String,
    pub prefix: String,
    pub total: usize,
    pub free: usize,
    pub wanted: usize,
}

/// The runtime API commands that make the pool of `backend` serve exactly `desired`.
///
/// A desired address already on a slot keeps its slot (a ready one first); the others go
/// to free slots, maintenance ones first, then drained ones (lowest number first). Slots
/// that serve but are not desired are drained, after every new server is ready, so
/// there is never a moment with nothing to send new requests to. Drained slots stay
/// drained (see [`retire_commands`]). Nothing already right is repeated: the same
/// observed state and desired set give the same commands, and none when it is reached.
///
/// # Errors
/// [`Shortage`] when the pool has too few slots.
pub fn switch_commands(
    backend: &str,
    prefix: &str,
    observed: &[Server],
    desired: &[Desired],
) -> Result<Vec<String>, Shortage> {
    let slots = pool(observed, prefix);
    let mut wanted: Vec<&Desired> = desired.iter().collect();
    wanted.sort();
    wanted.dedup();
    let mut taken = vec![false; slots.len()];
    let mut assigned: Vec<(usize, &Desired)> = Vec::new();
    let mut unplaced = Vec::new();
    for d in &wanted {
        let at = |admin: Admin| {
            (0..slots.len()).find(|&i| {
                !taken[i]
                    && slots[i].admin == admin
                    && slots[i].addr == d.addr
                    && slots[i].port == d.port
            })
        };
        match at(Admin::Ready)
            .or_else(|| at(Admin::Drain))
            .or_else(|| at(Admin::Maint))
        {
            Some(i) => {
                taken[i] = true;
                assigned.push((i, d));
            }
            None => unplaced.push(*d),
        }
    }
    // A slot that serves an address not wanted is drained below, not reused now.
    let serving_unwanted = |s: &Server| {
        s.admin == Admin::Ready && !wanted.iter().any(|d| d.addr == s.addr && d.port == s.port)
    };
    let mut free: Vec<usize> = (0..slots.len())
        .filter(|&i| !taken[i] && !serving_unwanted(slots[i]))
        .collect();
    free.sort_by_key(|&i| (slots[i].admin != Admin::Maint, i));
    if free.len() < unplaced.len() {
        return Err(Shortage {
            backend: backend.to_owned(),
            prefix: prefix.to_owned(),
            total: slots.len(),
            free: free.len(),
            wanted: unplaced.len(),
        });
    }
    for (d, i) in unplaced.into_iter().zip(free) {
        taken[i] = true;
        assigned.push((i, d));
    }
    assigned.sort_by_key(|(i, _)| *i);

    let mut cmds = Vec::new();
    for (i, d) in assigned {
        let s = slots[i];
        let at = format!("{backend}/{}", s.name);
        if s.addr != d.addr || s.port != d.port {
            cmds.push(format!("set server {at} addr {} port {}", d.addr, d.port));
        }
        if s.weight != d.weight {
            cmds.push(format!("set server {at} weight {}", d.weight));
        }
        if s.admin != Admin::Ready {
            cmds.push(format!("set server {at} state ready"));
        }
    }
    for (i, s) in slots.iter().enumerate() {
        if !taken[i] && s.admin == Admin::Ready {
            cmds.push(format!("set server {backend}/{} state drain", s.name));
        }
    }
    Ok(cmds)
}

/// The commands that put drained slots at `ports` into maintenance: their replicas are
/// being stopped, so nothing is left to finish.
pub fn retire_commands(
    backend: &str,
    prefix: &str,
    observed: &[Server],
    ports: &[u16],
) -> Vec<String> {
    pool(observed, prefix)
        .into_iter()
        .filter(|s| s.admin == Admin::Drain && ports.contains(&s.port))
        .map(|s| format!("set server {backend}/{} state maint", s.name))
        .collect()
}

/// The significant part of a server-state text for `backend`: its servers as
/// [`Server`]s (name, address, port, state, weight; the rest, such as seconds since the
/// last change, moves on its own). Two texts with the same summary restore the same
/// switch.
pub fn state_summary(text: &str, backend: &str) -> Option<Vec<Server>> {
    parse_servers_state(text, backend).ok()
}

/// The content of the server-state file from the live `show servers state` (every
/// backend: with `load-server-state-from-file global` one file holds them all), or why
/// it is not one.
pub fn state_file_content(live: &str) -> Result<String, String> {
    parse_servers_state(live, "")?;
    let mut text = live.trim_end().to_owned();
    text.push('\n');
    Ok(text)
}

/// Sends one command to the admin socket and returns what HAProxy answered.
///
/// # Errors
/// The socket cannot be reached or does not answer in time: retryable.
pub async fn command(host: &dyn Host, socket: &str, cmd: &str) -> Result<String, ExecError> {
    let what = format!("haproxy {socket}");
    let exchange = async {
        let mut conn = host.connect_unix(socket).await?;
        // Non-interactive mode: one line, one answer, then HAProxy closes.
        conn.write_all(format!("{cmd}\n").as_bytes())
            .await
            .map_err(|e| ExecError::failed(&what, format!("`{cmd}`: {e}"), true))?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)
            .await
            .map_err(|e| ExecError::failed(&what, format!("`{cmd}`: {e}"), true))?;
        Ok::<_, ExecError>(answer)
    };
    tokio::time::timeout(COMMAND_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            ExecError::failed(
                &what,
                format!("`{cmd}`: no answer in {COMMAND_TIMEOUT:?}"),
                true,
            )
        })?
}

/// The servers of the backend now.
///
/// # Errors
/// The socket (retryable), an unknown backend or an unreadable answer (not retryable:
/// the configuration must change).
pub async fn observe(host: &dyn Host, cfg: &HaproxyTraffic) -> Result<Vec<Server>, ExecError> {
    let text = command(
        host,
        &cfg.socket,
        &format!("show servers state {}", cfg.backend),
    )
    .await?;
    check_backend(&text, cfg)
        .map_err(|m| ExecError::failed(format!("haproxy {}", cfg.socket), m, false))
}

/// The servers in an answer to `show servers state <backend>`, or why there are none.
pub fn check_backend(text: &str, cfg: &HaproxyTraffic) -> Result<Vec<Server>, String> {
    if text.trim_start().starts_with("Can't find backend") {
        return Err(format!("HAProxy has no backend {:?}", cfg.backend));
    }
    let servers = parse_servers_state(text, &cfg.backend)?;
    if pool(&servers, &cfg.server_prefix).is_empty() {
        return Err(format!(
            "backend {} has no server named {}N: declare the pool with `server-template {} 1-N ... disabled`",
            cfg.backend, cfg.server_prefix, cfg.server_prefix
        ));
    }
    Ok(servers)
}

/// Makes the backend serve exactly `desired`: sends the missing commands, reads the state
/// again to verify, and brings the state file up to date. Returns the commands sent.
///
/// # Errors
/// Too few slots, or a state that does not read back as desired (HAProxy's answers are
/// quoted): not retryable. The socket and the file: retryable.
pub async fn apply(
    host: &dyn Host,
    cfg: &HaproxyTraffic,
    desired: &[Desired],
) -> Result<Vec<String>, ExecError> {
    let what = format!("haproxy switch of backend {}", cfg.backend);
    let observed = observe(host, cfg).await?;
    let cmds = switch_commands(&cfg.backend, &cfg.server_prefix, &observed, desired)
        .map_err(|e| ExecError::failed(&what, e.to_string(), false))?;
    let answers = send_all(host, cfg, &cmds).await?;
    let after = observe(host, cfg).await?;
    let mut want: Vec<Desired> = desired.to_vec();
    want.sort();
    want.dedup();
    if serving(&after, &cfg.server_prefix) != want {
        return Err(ExecError::failed(
            &what,
            format!(
                "after {} command(s) the backend does not serve what was set; HAProxy said: {}",
                cmds.len(),
                if answers.is_empty() {
                    "nothing".into()
                } else {
                    answers.join(" | ")
                }
            ),
            false,
        ));
    }
    save_state(host, cfg).await?;
    Ok(cmds)
}

/// Puts the drained slots at `ports` into maintenance (their replicas are stopping), and
/// saves the state.
pub async fn retire(
    host: &dyn Host,
    cfg: &HaproxyTraffic,
    ports: &[u16],
) -> Result<Vec<String>, ExecError> {
    let observed = observe(host, cfg).await?;
    let cmds = retire_commands(&cfg.backend, &cfg.server_prefix, &observed, ports);
    send_all(host, cfg, &cmds).await?;
    if !cmds.is_empty() {
        save_state(host, cfg).await?;
    }
    Ok(cmds)
}

/// Sends `cmds` in order; returns the non-empty answers (HAProxy answers success with an
/// empty line, and some successes with a note).
async fn send_all(
    host: &dyn Host,
    cfg: &HaproxyTraffic,
    cmds: &[String],
) -> Result<Vec<String>, ExecError> {
    let mut answers = Vec::new();
    for cmd in cmds {
        let a = command(host, &cfg.socket, cmd).await?;
        let a = a.trim();
        if !a.is_empty() {
            answers.push(format!("{cmd}: {a}"));
        }
    }
    Ok(answers)
}

/// Whether `cfg.state_file` restores the backend's servers as they are live (always,
/// without a state file).
pub async fn state_file_in_sync(host: &dyn Host, cfg: &HaproxyTraffic) -> Result<bool, ExecError> {
    let Some(path) = &cfg.state_file else {
        return Ok(true);
    };
    let live = command(host, &cfg.socket, "show servers state").await?;
    same_state(host, path, &live, &cfg.backend).await
}

async fn same_state(
    host: &dyn Host,
    path: &str,
    live: &str,
    backend: &str,
) -> Result<bool, ExecError> {
    let on_disk = host.read_file(path).await?;
    Ok(on_disk
        .as_deref()
        .map(String::from_utf8_lossy)
        .and_then(|t| state_summary(&t, backend))
        .is_some_and(|s| Some(s) == state_summary(live, backend)))
}

/// Writes the live state to `cfg.state_file` (atomically) when the file does not already
/// restore the same servers of this backend. Without a state file, nothing. Returns
/// whether it wrote.
pub async fn save_state(host: &dyn Host, cfg: &HaproxyTraffic) -> Result<bool, ExecError> {
    let Some(path) = &cfg.state_file else {
        return Ok(false);
    };
    let live = command(host, &cfg.socket, "show servers state").await?;
    let content = state_file_content(&live)
        .map_err(|m| ExecError::failed(format!("haproxy {}", cfg.socket), m, true))?;
    if same_state(host, path, &content, &cfg.backend).await? {
        return Ok(false);
    }
    host.write_file(path, content.as_bytes(), 0o644).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fake::{FakeHaproxy, FakeHost};

    const SOCK: &str = "/run/haproxy/admin.sock";
    const STATE: &str = "/var/lib/haproxy/server-state";
    /// What HAProxy 2.6 printed for `server-template app 1-3 127.0.0.1:9 disabled` after
    /// `app1` was given 127.0.0.1:20001 and made ready, and `app2` was drained.
    const SHOWN: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
        3 web 1 app1 127.0.0.1 2 4 1 1 1 1 0 1 6 0 0 0 - 20001 - 0 0 - - 0\n\
        3 web 2 app2 127.0.0.1 2 12 1 1 0 1 0 1 6 0 0 0 - 9 - 0 0 - - 0\n\
        3 web 3 app3 127.0.0.1 0 5 1 1 0 1 0 0 14 0 0 0 - 9 - 0 0 - - 0\n\
        4 other 1 app1 10.0.0.1 0 5 1 1 0 1 0 0 14 0 0 0 - 80 - 0 0 - - 0\n\n";

    fn srv(name: &str, port: u16, admin: Admin) -> Server {
        Server {
            name: name.into(),
            addr: "127.0.0.1".into(),
            port,
            admin,
            weight: 1,
        }
    }

    fn want(ports: &[u16]) -> Vec<Desired> {
        ports
            .iter()
            .map(|p| Desired {
                addr: "127.0.0.1".into(),
                port: *p,
                weight: 1,
            })
            .collect()
    }

    fn cfg() -> HaproxyTraffic {
        HaproxyTraffic {
            socket: SOCK.into(),
            backend: "web".into(),
            server_prefix: "app".into(),
            state_file: Some(STATE.into()),
            port: None,
        }
    }

    #[test]
    fn show_servers_state_is_read_for_one_backend_with_its_admin_states() {
        use Admin::*;
        assert_eq!(
            parse_servers_state(SHOWN, "web").unwrap(),
            [
                srv("app1", 20001, Ready),
                srv("app2", 9, Drain),
                srv("app3", 9, Maint)
            ]
        );
        assert_eq!(parse_servers_state(SHOWN, "nope").unwrap(), []);
        for (text, err) in [
            ("", "`show servers state` printed nothing"),
            (
                "Can't find backend.\n",
                "expected `show servers state` format 1, got \"Can't find backend.\"",
            ),
            (
                "1\n3 web 1 app1 127.0.0.1 2\n",
                "a server line with 6 fields, expected at least 19: \"3 web 1 app1 127.0.0.1 2\"",
            ),
            (
                "1\n3 web 1 app1 127.0.0.1 2 x 1 1 1 1 0 1 6 0 0 0 - 20001 - 0 0 - - 0\n",
                "server app1: admin state \"x\" is not a number",
            ),
        ] {
            assert_eq!(
                parse_servers_state(text, "web").unwrap_err(),
                err,
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_pool_is_the_prefixed_servers_by_number() {
        let servers = [
            srv("app10", 1, Admin::Maint),
            srv("app2", 2, Admin::Maint),
            srv("apple", 3, Admin::Ready),
            srv("app", 4, Admin::Ready),
            srv("db1", 5, Admin::Ready),
        ];
        let names: Vec<&str> = pool(&servers, "app")
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["app2", "app10"]);
    }

    #[test]
    fn the_commands_are_only_the_missing_ones() {
        use Admin::*;
        let fresh = [
            srv("app1", 9, Maint),
            srv("app2", 9, Maint),
            srv("app3", 9, Maint),
            srv("app4", 9, Maint),
        ];
        let v1 = [
            srv("app1", 20001, Ready),
            srv("app2", 20002, Ready),
            srv("app3", 9, Maint),
            srv("app4", 9, Maint),
        ];
        let switched = [
            srv("app1", 20001, Drain),
            srv("app2", 20002, Drain),
            srv("app3", 20003, Ready),
            srv("app4", 20004, Ready),
        ];
        type Case<'a> = (&'a str, &'a [Server], Vec<u16>, Vec<&'a str>);
        let cases: Vec<Case> = vec![
            (
                "first deploy",
                &fresh,
                vec![20001, 20002],
                vec![
                    "set server web/app1 addr 127.0.0.1 port 20001",
                    "set server web/app1 state ready",
                    "set server web/app2 addr 127.0.0.1 port 20002",
                    "set server web/app2 state ready",
                ],
            ),
            ("nothing to do", &v1, vec![20002, 20001, 20001], vec![]),
            (
                "switch: the new ones ready, then the old ones drained",
                &v1,
                vec![20003, 20004],
                vec![
                    "set server web/app3 addr 127.0.0.1 port 20003",
                    "set server web/app3 state ready",
                    "set server web/app4 addr 127.0.0.1 port 20004",
                    "set server web/app4 state ready",
                    "set server web/app1 state drain",
                    "set server web/app2 state drain",
                ],
            ),
            (
                "switch back reuses the drained slots as they are",
                &switched,
                vec![20001, 20002],
                vec![
                    "set server web/app1 state ready",
                    "set server web/app2 state ready",
                    "set server web/app3 state drain",
                    "set server web/app4 state drain",
                ],
            ),
            (
                "scale down drains one",
                &v1,
                vec![20001],
                vec!["set server web/app2 state drain"],
            ),
        ];
        for (what, observed, ports, expected) in cases {
            assert_eq!(
                switch_commands("web", "app", observed, &want(&ports)).unwrap(),
                expected,
                "{what}"
            );
        }
    }

    #[test]
    fn hand_changes_are_undone() {
        use Admin::*;
        // app2 put in maintenance by hand, app1 given another address and weight.
        let mut moved = srv("app1", 20001, Ready);
        moved.addr = "127.0.0.9".into();
        moved.weight = 7;
        let observed = [
            moved,
            srv("app2", 20002, Maint),
            srv("app3", 9, Maint),
            srv("app4", 9, Maint),
        ];
        assert_eq!(
            switch_commands("web", "app", &observed, &want(&[20001, 20002])).unwrap(),
            [
                "set server web/app2 state ready",
                "set server web/app3 addr 127.0.0.1 port 20001",
                "set server web/app3 state ready",
                "set server web/app1 state drain",
            ]
        );
        let mut heavy = srv("app1", 20001, Ready);
        heavy.weight = 7;
        assert_eq!(
            switch_commands("web", "app", &[heavy], &want(&[20001])).unwrap(),
            ["set server web/app1 weight 1"]
        );
    }

    #[test]
    fn a_pool_too_small_is_refused_before_any_command() {
        use Admin::*;
        let observed = [srv("app1", 20001, Ready), srv("app2", 9, Maint)];
        let err = switch_commands("web", "app", &observed, &want(&[20003, 20004])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "backend web has 1 slot(s) named appN free for 2 new server(s) (2 in the pool, the others serve or drain); add slots with `server-template app 1-N`"
        );
    }

    #[test]
    fn drained_slots_of_a_stopping_revision_go_to_maintenance() {
        use Admin::*;
        let observed = [
            srv("app1", 20001, Drain),
            srv("app2", 20002, Ready),
            srv("app3", 20003, Drain),
        ];
        assert_eq!(
            retire_commands("web", "app", &observed, &[20001, 20002]),
            ["set server web/app1 state maint"]
        );
    }

    #[test]
    fn the_state_file_is_the_live_state_and_compares_on_what_a_reload_restores() {
        assert_eq!(
            state_file_content(SHOWN).unwrap(),
            SHOWN.trim_end().to_owned() + "\n"
        );
        assert!(state_file_content("Permission denied\n").is_err());
        // Seconds since the last change and check results differ; the switch does not.
        let later = SHOWN.replace("2 4 1 1 1 1 0 1 6", "2 4 1 1 73 6 0 3 6");
        assert_eq!(state_summary(SHOWN, "web"), state_summary(&later, "web"));
        let moved = SHOWN.replace("- 20001 -", "- 20009 -");
        assert_ne!(state_summary(SHOWN, "web"), state_summary(&moved, "web"));
    }

    fn host_with(slots: usize) -> (FakeHost, FakeHaproxy) {
        let host = FakeHost::new("h");
        let ha = FakeHaproxy::new("web", "app", slots);
        host.add_haproxy(SOCK, ha.clone());
        (host, ha)
    }

    #[tokio::test]
    async fn apply_sends_only_what_is_missing_verifies_and_saves_the_state() {
        let (host, ha) = host_with(4);
        let sent = apply(&host, &cfg(), &want(&[20001])).await.unwrap();
        assert_eq!(
            sent,
            [
                "set server web/app1 addr 127.0.0.1 port 20001",
                "set server web/app1 state ready"
            ]
        );
        assert_eq!(ha.sets(), sent);
        let file = String::from_utf8(host.file(STATE).unwrap()).unwrap();
        assert_eq!(
            state_summary(&file, "web").unwrap()[0],
            srv("app1", 20001, Admin::Ready)
        );
        assert_eq!(host.count(&format!("write_file {STATE}")), 1);

        // Again: nothing sent, nothing written.
        assert_eq!(
            apply(&host, &cfg(), &want(&[20001])).await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(ha.sets().len(), 2);
        assert_eq!(host.count(&format!("write_file {STATE}")), 1);
        assert!(state_file_in_sync(&host, &cfg()).await.unwrap());

        // A hand `maint` is seen, and undone; the state file follows.
        ha.hand("set server web/app1 state maint");
        assert!(!state_file_in_sync(&host, &cfg()).await.unwrap());
        assert_eq!(serving(&observe(&host, &cfg()).await.unwrap(), "app"), []);
        assert_eq!(
            apply(&host, &cfg(), &want(&[20001])).await.unwrap(),
            ["set server web/app1 state ready"]
        );
        assert!(state_file_in_sync(&host, &cfg()).await.unwrap());
    }

    #[tokio::test]
    async fn a_switch_drains_then_retire_puts_the_old_slots_in_maintenance() {
        let (host, ha) = host_with(4);
        apply(&host, &cfg(), &want(&[20001, 20002])).await.unwrap();
        apply(&host, &cfg(), &want(&[20003, 20004])).await.unwrap();
        let servers = observe(&host, &cfg()).await.unwrap();
        assert_eq!(serving(&servers, "app"), want(&[20003, 20004]));
        assert!(
            servers[..2].iter().all(|s| s.admin == Admin::Drain),
            "{servers:?}"
        );
        assert_eq!(
            retire(&host, &cfg(), &[20001, 20002]).await.unwrap(),
            [
                "set server web/app1 state maint",
                "set server web/app2 state maint"
            ]
        );
        let file = String::from_utf8(host.file(STATE).unwrap()).unwrap();
        assert_eq!(state_summary(&file, "web").unwrap()[0].admin, Admin::Maint);
        let _ = ha;
    }

    #[tokio::test]
    async fn what_cannot_be_done_says_why_and_changes_nothing() {
        let (host, ha) = host_with(1);
        let err = apply(&host, &cfg(), &want(&[20001, 20002]))
            .await
            .unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.to_string()
                .contains("backend web has 1 slot(s) named appN free for 2"),
            "{err}"
        );
        assert_eq!(ha.sets(), Vec::<String>::new());

        let other = HaproxyTraffic {
            backend: "shop".into(),
            ..cfg()
        };
        let err = apply(&host, &other, &want(&[20001])).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "haproxy /run/haproxy/admin.sock: HAProxy has no backend \"shop\""
        );

        let prefix = HaproxyTraffic {
            server_prefix: "srv".into(),
            ..cfg()
        };
        let err = observe(&host, &prefix).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("backend web has no server named srvN"),
            "{err}"
        );

        let gone = HaproxyTraffic {
            socket: "/nowhere.sock".into(),
            ..cfg()
        };
        let err = observe(&host, &gone).await.unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(
            err.to_string(),
            "host h: /nowhere.sock: cannot connect: No such file or directory"
        );
    }
}
