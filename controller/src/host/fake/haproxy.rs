//! An in-memory HAProxy runtime API for [`FakeHost`](super::FakeHost): one backend whose
//! servers come from a `server-template` (all `disabled` at first), answering the
//! commands Berth sends as HAProxy 2.6 does, and printing `show servers state` in its
//! format. Every command received is recorded.

use std::sync::{Arc, Mutex};

#[derive(Clone, Debug)]
struct Slot {
    name: String,
    addr: String,
    port: u16,
    /// `srv_admin_state` bits: 0x01 forced maint, 0x04 maint from `disabled`, 0x08 drain.
    admin: u32,
    weight: u32,
}

#[derive(Debug)]
struct Inner {
    backend: String,
    slots: Vec<Slot>,
    commands: Vec<String>,
}

/// A handle on the fake; clones share it.
#[derive(Clone, Debug)]
pub struct FakeHaproxy {
    inner: Arc<Mutex<Inner>>,
}

const HEADER: &str = "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port";

impl FakeHaproxy {
    /// `backend` with `server-template <prefix> 1-<n> 127.0.0.1:9 disabled`.
    pub fn new(backend: &str, prefix: &str, n: usize) -> FakeHaproxy {
        let slots = (1..=n)
            .map(|i| Slot {
                name: format!("{prefix}{i}"),
                addr: "127.0.0.1".into(),
                port: 9,
                admin: 0x05,
                weight: 1,
            })
            .collect();
        FakeHaproxy {
            inner: Arc::new(Mutex::new(Inner {
                backend: backend.to_owned(),
                slots,
                commands: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every command received, in order (`show` ones included).
    pub fn commands(&self) -> Vec<String> {
        self.lock().commands.clone()
    }

    /// The commands received that change something (`set ...`).
    pub fn sets(&self) -> Vec<String> {
        self.commands()
            .into_iter()
            .filter(|c| c.starts_with("set "))
            .collect()
    }

    /// Applies a command as a person with socat would (drift), unrecorded.
    pub fn hand(&self, cmd: &str) -> String {
        self.lock().execute(cmd)
    }

    /// Answers one command line, recording it.
    pub fn answer(&self, cmd: &str) -> String {
        let mut inner = self.lock();
        inner.commands.push(cmd.to_owned());
        inner.execute(cmd)
    }
}

impl Inner {
    fn execute(&mut self, cmd: &str) -> String {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        match words.as_slice() {
            ["show", "servers", "state"] => self.show(),
            ["show", "servers", "state", b] if *b == self.backend => self.show(),
            ["show", "servers", "state", _] => "Can't find backend.\n".into(),
            ["set", "server", at, rest @ ..] => {
                let Some((b, s)) = at.split_once('/') else {
                    return "Require 'backend/server'.\n".into();
                };
                if b != self.backend {
                    return "No such backend.\n".into();
                }
                let Some(slot) = self.slots.iter_mut().find(|x| x.name == s) else {
                    return "No such server.\n".into();
                };
                set(slot, rest)
            }
            _ => "Unknown command.\n".into(),
        }
    }

    fn show(&self) -> String {
        let mut out = format!("1\n{HEADER}\n");
        for (i, s) in self.slots.iter().enumerate() {
            let op = if s.admin & 0x01 != 0 { 0 } else { 2 };
            out.push_str(&format!(
                "3 {} {} {} {} {op} {} {} 1 0 1 0 0 14 0 0 0 - {} - 0 0 - - 0\n",
                self.backend,
                i + 1,
                s.name,
                s.addr,
                s.admin,
                s.weight,
                s.port
            ));
        }
        out.push('\n');
        out
    }
}

fn set(slot: &mut Slot, rest: &[&str]) -> String {
    match rest {
        ["addr", a, "port", p] => match p.parse() {
            Ok(p) if !a.contains(':') => {
                slot.addr = (*a).to_owned();
                slot.port = p;
                "\n".into()
            }
            _ => format!("Invalid addr '{a}' by 'stats socket command'\n"),
        },
        ["weight", w] => match w.parse() {
            Ok(w) => {
                slot.weight = w;
                "\n".into()
            }
            Err(_) => "Invalid weight.\n".into(),
        },
        ["state", "ready"] => {
            slot.admin &= !0x09;
            "\n".into()
        }
        ["state", "drain"] => {
            slot.admin = (slot.admin & !0x01) | 0x08;
            "\n".into()
        }
        ["state", "maint"] => {
            slot.admin = (slot.admin & !0x08) | 0x01;
            "\n".into()
        }
        _ => "Unknown command.\n".into(),
    }
}
