//! `berthctl events [-w] [--environment NAME]` and `berthctl logs NAME [--revision N]
//! [-f] [--tail N]`, through berthd's API. Watching polls (twice a second).

use std::time::Duration;

use clap::Args;

use super::output::{emit, render, utc, Output, Table};
use super::state::StateArgs;
use super::view;
use super::CtlError;
use crate::api::types::LogLine;
use crate::store::EventRecord;

const POLL: Duration = Duration::from_millis(500);

#[derive(Args, Clone, Debug)]
pub struct Events {
    /// Only this environment's events.
    #[arg(long = "environment", visible_alias = "env", value_name = "NAME")]
    pub environment: Option<String>,
    /// Keep printing events as they happen (until interrupted).
    #[arg(short = 'w', long = "watch")]
    pub watch: bool,
    /// How many of the newest events to print first.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[command(flatten)]
    pub state: StateArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Output,
}

impl Events {
    pub fn run(self) -> Result<String, CtlError> {
        let client = self.state.client();
        let filter = self
            .environment
            .as_ref()
            .map(|e| format!("&environment={e}"))
            .unwrap_or_default();
        let first: Vec<EventRecord> = client.get(&format!(
            "/v1/events?limit={}{filter}",
            self.limit.min(1000)
        ))?;
        if !self.watch {
            return self.print(&first, true);
        }
        emit(&self.print(&first, true)?).map_err(CtlError::Write)?;
        let mut since = first.last().map(|e| e.seq);
        loop {
            std::thread::sleep(POLL);
            let after = since.map(|s| format!("&since={s}")).unwrap_or_default();
            let new: Vec<EventRecord> =
                client.get(&format!("/v1/events?limit=1000{filter}{after}"))?;
            if let Some(last) = new.last() {
                since = Some(last.seq);
                emit(&self.print(&new, false)?).map_err(CtlError::Write)?;
            }
        }
    }

    /// Tables get a header only once; JSON and YAML print one document per batch.
    fn print(&self, events: &[EventRecord], header: bool) -> Result<String, CtlError> {
        let views: Vec<_> = events.iter().map(view::event).collect();
        render(self.output, &views, || {
            let mut t = Table::new(["TIME", "ENVIRONMENT", "KIND", "REASON", "MESSAGE"]);
            for e in events {
                t.row([
                    utc(e.at),
                    e.env.clone(),
                    format!("{:?}", e.kind),
                    e.reason.clone(),
                    super::output::one_line(&e.message),
                ]);
            }
            let text = t.render();
            if header {
                text
            } else {
                text.lines().skip(1).map(|l| format!("{l}\n")).collect()
            }
        })
    }
}

#[derive(Args, Clone, Debug)]
pub struct Logs {
    /// The environment whose replicas' logs to print.
    pub name: String,
    /// The revision's replicas (the serving revision by default).
    #[arg(long, value_name = "N")]
    pub revision: Option<u64>,
    /// Lines per replica.
    #[arg(long, default_value_t = 100)]
    pub tail: u64,
    /// Keep printing new lines (until interrupted).
    #[arg(short = 'f', long = "follow")]
    pub follow: bool,
    #[command(flatten)]
    pub state: StateArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: Output,
}

impl Logs {
    pub fn run(self) -> Result<String, CtlError> {
        let client = self.state.client();
        let path = |tail: u64| {
            let rev = self
                .revision
                .map(|r| format!("&revision={r}"))
                .unwrap_or_default();
            format!("/v1/environments/{}/logs?tail={tail}{rev}", self.name)
        };
        let lines: Vec<LogLine> = client.get(&path(self.tail))?;
        let text = |lines: &[LogLine]| {
            render(self.output, &lines, || {
                lines
                    .iter()
                    .map(|l| format!("[{}] {}\n", l.replica, l.line))
                    .collect()
            })
        };
        if !self.follow {
            return text(&lines);
        }
        emit(&text(&lines)?).map_err(CtlError::Write)?;
        let mut seen = lines;
        loop {
            std::thread::sleep(POLL);
            let now: Vec<LogLine> = client.get(&path(200))?;
            let new = new_lines(&seen, &now);
            if !new.is_empty() {
                emit(&text(&new)?).map_err(CtlError::Write)?;
            }
            seen = now;
        }
    }
}

/// The lines of `now` after what `seen` already showed, replica by replica: the longest
/// suffix of `seen`'s lines that `now`'s lines begin with is skipped. (Docker's logs carry
/// no cursor without timestamps; a repeated identical line may be missed or repeated.)
fn new_lines(seen: &[LogLine], now: &[LogLine]) -> Vec<LogLine> {
    let mut out = Vec::new();
    let mut replicas: Vec<&str> = now.iter().map(|l| l.replica.as_str()).collect();
    replicas.dedup();
    for r in replicas {
        let old: Vec<&str> = seen
            .iter()
            .filter(|l| l.replica == r)
            .map(|l| l.line.as_str())
            .collect();
        let cur: Vec<&LogLine> = now.iter().filter(|l| l.replica == r).collect();
        let overlap = (0..=old.len().min(cur.len()))
            .rev()
            .find(|&n| {
                old[old.len() - n..]
                    .iter()
                    .zip(&cur[..n])
                    .all(|(a, b)| *a == b.line)
            })
            .unwrap_or(0);
        out.extend(cur[overlap..].iter().map(|l| (*l).clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(r: &str, ls: &[&str]) -> Vec<LogLine> {
        ls.iter()
            .map(|l| LogLine {
                replica: r.into(),
                line: (*l).into(),
            })
            .collect()
    }

    #[test]
    fn following_prints_only_the_lines_after_what_was_shown() {
        let seen = lines("web-r1-0", &["a", "b", "c"]);
        let now = lines("web-r1-0", &["b", "c", "d", "e"]);
        let new: Vec<String> = new_lines(&seen, &now).into_iter().map(|l| l.line).collect();
        assert_eq!(new, ["d", "e"]);
        assert!(new_lines(&now, &now).is_empty());
    }
}
