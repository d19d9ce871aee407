//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4).
//!
//! Counters of rollouts and the step-duration histograms are derived from the journal at
//! each scrape, so they agree with `berthctl rollout history` and survive restarts; the
//! loop's own figures (queue depth, reconcile latency) and the hosts' come from memory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::op::{Entry, Operation, Outcome, Phase, Step};
use crate::reconcile::Controller;

/// Upper bounds of the histograms' buckets, in seconds: from a quick reconcile to a long
/// migration.
const BUCKETS: [f64; 14] = [
    0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A histogram with [`BUCKETS`]; cheap to observe from the loop.
#[derive(Default)]
pub struct Histogram {
    // A std Mutex: held for a few additions, never across an `.await`.
    inner: Mutex<Counts>,
}

#[derive(Clone, Default)]
struct Counts {
    /// Per bucket (not cumulative), then +Inf.
    buckets: [u64; BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Counts {
    fn observe(&mut self, v: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(seconds);
    }

    fn counts(&self) -> Counts {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The whole exposition.
pub fn render(ctl: &Controller) -> String {
    let mut out = Exposition::default();
    let names = super::routes::environment_names(ctl).unwrap_or_default();
    let mut rollouts: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    let mut steps: BTreeMap<(String, &'static str), Counts> = BTreeMap::new();
    let mut current = Vec::new();
    let mut backups = Vec::new();
    let now = crate::reconcile::now_millis();
    for env in &names {
        let ops = ctl.store().operations(env, usize::MAX).unwrap_or_default();
        for (metric, n) in count_outcomes(&ops) {
            rollouts.entry(metric).or_default().insert(env.clone(), n);
        }
        for op in &ops {
            for (step, seconds) in step_durations(op) {
                steps
                    .entry((env.clone(), step.name()))
                    .or_default()
                    .observe(seconds);
            }
        }
        let state = ctl.store().env_state(env).unwrap_or_default();
        if let Some(rev) = state.current {
            current.push((env.clone(), rev));
        }
        if let Some(b) = ctl
            .store()
            .backups(env)
            .unwrap_or_default()
            .into_iter()
            .max_by_key(|b| b.created_at)
        {
            let age = now.saturating_sub(b.created_at) as f64 / 1000.0;
            backups.push((env.clone(), b.size, age));
        }
    }
    for (metric, help) in [
        (
            "berth_rollouts_started_total",
            "Operations begun (rollouts and undos).",
        ),
        (
            "berth_rollouts_succeeded_total",
            "Operations that succeeded.",
        ),
        (
            "berth_rollouts_failed_total",
            "Operations that failed and need an operator.",
        ),
        (
            "berth_rollouts_rolled_back_total",
            "Operations that rolled back by themselves or on abort.",
        ),
    ] {
        out.header(metric, "counter", help);
        for env in &names {
            let n = rollouts
                .get(metric)
                .and_then(|m| m.get(env))
                .copied()
                .unwrap_or(0);
            out.sample(metric, &[("environment", env)], n as f64);
        }
    }
    out.header(
        "berth_step_duration_seconds",
        "histogram",
        "How long finished steps took, from their first start to their end.",
    );
    for ((env, step), counts) in &steps {
        out.histogram(
            "berth_step_duration_seconds",
            &[("environment", env), ("step", step)],
            counts,
        );
    }
    out.header(
        "berth_queue_depth",
        "gauge",
        "Environments waiting in the work queue.",
    );
    out.sample("berth_queue_depth", &[], ctl.queue_depth() as f64);
    out.header(
        "berth_reconcile_duration_seconds",
        "histogram",
        "How long one reconcile of one environment took.",
    );
    out.histogram(
        "berth_reconcile_duration_seconds",
        &[],
        &ctl.loop_metrics().reconcile_seconds.counts(),
    );
    let hosts = ctl.host_statuses();
    out.header(
        "berth_host_reachable",
        "gauge",
        "1 when the host's Docker engine answered its last check.",
    );
    for h in &hosts {
        let v = if h.reachable { 1.0 } else { 0.0 };
        out.sample("berth_host_reachable", &[("host", &h.name)], v);
    }
    out.header(
        "berth_host_rtt_seconds",
        "gauge",
        "Round trip of the host's last check.",
    );
    for h in &hosts {
        if let Some(ms) = h.rtt_ms {
            out.sample("berth_host_rtt_seconds", &[("host", &h.name)], ms / 1000.0);
        }
    }
    out.header(
        "berth_backup_size_bytes",
        "gauge",
        "Size of the environment's newest catalogued backup.",
    );
    for (env, size, _) in &backups {
        out.sample(
            "berth_backup_size_bytes",
            &[("environment", env)],
            *size as f64,
        );
    }
    out.header(
        "berth_backup_age_seconds",
        "gauge",
        "Age of the environment's newest catalogued backup.",
    );
    for (env, _, age) in &backups {
        out.sample("berth_backup_age_seconds", &[("environment", env)], *age);
    }
    out.header(
        "berth_current_revision",
        "gauge",
        "The revision serving in each environment.",
    );
    for (env, rev) in &current {
        out.sample(
            "berth_current_revision",
            &[("environment", env)],
            *rev as f64,
        );
    }
    out.text
}

/// Started, succeeded, failed and rolled back, by metric name.
fn count_outcomes(ops: &[Operation]) -> Vec<(&'static str, u64)> {
    let mut n = [0u64; 4];
    for op in ops {
        n[0] += 1;
        match op.status().ok().and_then(|s| s.outcome) {
            Some(Outcome::Succeeded) => n[1] += 1,
            Some(Outcome::Failed { .. }) => n[2] += 1,
            Some(Outcome::RolledBack { .. }) => n[3] += 1,
            Some(Outcome::Superseded) | None => {}
        }
    }
    vec![
        ("berth_rollouts_started_total", n[0]),
        ("berth_rollouts_succeeded_total", n[1]),
        ("berth_rollouts_failed_total", n[2]),
        ("berth_rollouts_rolled_back_total", n[3]),
    ]
}

/// Each finished step of the operation with its duration: from its first `Started` to
/// its `Succeeded` or final `Failed`.
fn step_durations(op: &Operation) -> Vec<(Step, f64)> {
    let mut out = Vec::new();
    let mut phase_steps: &[Step] = &op.steps;
    let mut started: BTreeMap<(bool, usize), u64> = BTreeMap::new();
    for ev in &op.log {
        match &ev.entry {
            Entry::Started { phase, index } => {
                started
                    .entry((*phase == Phase::Rollback, *index))
                    .or_insert(ev.at);
            }
            Entry::Succeeded { phase, index, .. }
            | Entry::Failed {
                phase,
                index,
                retryable: false,
                ..
            } => {
                let key = (*phase == Phase::Rollback, *index);
                if let (Some(t0), Some(step)) = (started.get(&key), phase_steps.get(*index)) {
                    out.push((*step, ev.at.saturating_sub(*t0) as f64 / 1000.0));
                }
            }
            Entry::RollbackBegan { steps, .. } => phase_steps = steps,
            Entry::Failed { .. } | Entry::Finished { .. } => {}
        }
    }
    out
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        let _ = writeln!(self.text, "{name}{} {}", label_set(labels), number(v));
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], c: &Counts) {
        let mut cumulative = 0;
        for (i, upper) in BUCKETS.iter().enumerate() {
            cumulative += c.buckets[i];
            let le = number(*upper);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, cumulative as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &l, c.count as f64);
        self.sample(&format!("{name}_sum"), labels, c.sum);
        self.sample(&format!("{name}_count"), labels, c.count as f64);
    }
}

fn label_set(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{Event, OpKind};

    #[test]
    fn a_histogram_is_cumulative_with_sum_and_count() {
        let mut c = Counts::default();
        for v in [0.001, 0.3, 0.3, 700.0] {
            c.observe(v);
        }
        let mut e = Exposition::default();
        e.histogram("h", &[("step", "Migrate")], &c);
        assert!(e
            .text
            .contains("h_bucket{step=\"Migrate\",le=\"0.005\"} 1\n"));
        assert!(e.text.contains("h_bucket{step=\"Migrate\",le=\"0.5\"} 3\n"));
        assert!(e.text.contains("h_bucket{step=\"Migrate\",le=\"600\"} 3\n"));
        assert!(e
            .text
            .contains("h_bucket{step=\"Migrate\",le=\"+Inf\"} 4\n"));
        assert!(e.text.contains("h_count{step=\"Migrate\"} 4\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_set(&[("a", "x\"y\\z\n")]), "{a=\"x\\\"y\\\\z\\n\"}");
    }

    #[test]
    fn step_durations_run_from_the_first_start_to_the_end() {
        let ev = |at, entry| Event { at, entry };
        let op = Operation {
            id: "01TEST".into(),
            env: "web".into(),
            kind: OpKind::Rollout,
            from: None,
            to: 1,
            reason: String::new(),
            created_at: 0,
            steps: vec![Step::PullImage, Step::WaitReady],
            spec: serde_json::Value::Null,
            log: vec![
                ev(
                    1000,
                    Entry::Started {
                        phase: Phase::Forward,
                        index: 0,
                    },
                ),
                ev(
                    1500,
                    Entry::Failed {
                        phase: Phase::Forward,
                        index: 0,
                        error: "x".into(),
                        retryable: true,
                    },
                ),
                ev(
                    1600,
                    Entry::Started {
                        phase: Phase::Forward,
                        index: 0,
                    },
                ),
                ev(
                    3000,
                    Entry::Succeeded {
                        phase: Phase::Forward,
                        index: 0,
                        output: crate::op::StepOutput::None,
                    },
                ),
            ],
        };
        assert_eq!(step_durations(&op), vec![(Step::PullImage, 2.0)]);
    }
}
