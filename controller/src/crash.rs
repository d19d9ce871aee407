//! Crash points: the named places at the journal's boundaries where a test build of
//! berthd aborts itself, to prove that a crash at any of them resumes without repeating
//! an effect (tests/crash_points.rs, hack/torture).
//!
//! Compiled in only with the cargo feature `crash-points` (off by default, never in a
//! release build); without it [`step`] and [`operation`] are empty and inline away.
//! Armed by `BERTH_CRASH_AT=<point>[:<nth>]`: the `nth` time (default 1) the process
//! reaches `<point>`, it aborts there, as SIGKILL would stop it (no destructor, no flush).
//!
//! This module is the one place that names them: [`names`] lists every point.

use crate::op::Step;

/// Where in a step's journal boundary a crash point sits (reconcile::act::run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    /// The step's `Started` is about to be flushed (nothing of the step is durable).
    BeforeStartedFlush,
    /// `Started` is durable; the step's side effect is about to happen.
    BeforeEffect,
    /// The step ran and is still under way (a migration container running).
    Pending,
    /// The effect is done; its `Succeeded` is not flushed yet.
    AfterEffect,
    /// `Succeeded` (and a pulled image's digest) is durable.
    AfterSucceededFlush,
}

impl Moment {
    pub const ALL: [Moment; 5] = [
        Moment::BeforeStartedFlush,
        Moment::BeforeEffect,
        Moment::Pending,
        Moment::AfterEffect,
        Moment::AfterSucceededFlush,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Moment::BeforeStartedFlush => "before-started-flush",
            Moment::BeforeEffect => "before-effect",
            Moment::Pending => "pending",
            Moment::AfterEffect => "after-effect",
            Moment::AfterSucceededFlush => "after-succeeded-flush",
        }
    }
}

/// The points around an operation's own records (reconcile::act::start and finish).
pub const OPERATION_POINTS: [&str; 4] = [
    "Begin:before-flush",
    "Begin:after-flush",
    "Finish:before-flush",
    "Finish:after-flush",
];

/// Every crash point, `<Step>:<moment>` and the operation's own.
pub fn names() -> Vec<String> {
    let mut out: Vec<String> = Step::ALL
        .iter()
        .flat_map(|s| Moment::ALL.iter().map(move |m| step_point(*s, *m)))
        .collect();
    out.extend(OPERATION_POINTS.iter().map(|p| p.to_string()));
    out
}

fn step_point(step: Step, moment: Moment) -> String {
    format!("{}:{}", step.name(), moment.name())
}

/// `BERTH_CRASH_AT`'s value as (point, nth); an unknown point is an error, so that a
/// typo cannot pass for a crash that never came.
pub fn parse(spec: &str) -> Result<(String, usize), String> {
    let (point, nth) = match spec.rsplit_once(':') {
        Some((p, n)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
            let nth: usize = n.parse().map_err(|_| format!("bad count in {spec:?}"))?;
            (p, nth)
        }
        _ => (spec, 1),
    };
    if nth == 0 {
        return Err(format!("{spec:?}: the count starts at 1"));
    }
    if !names().iter().any(|n| n == point) {
        return Err(format!(
            "{point:?} is not a crash point (see controller/src/crash.rs)"
        ));
    }
    Ok((point.to_owned(), nth))
}

/// A crash point of `step`.
#[inline]
pub fn step(step: Step, moment: Moment) {
    #[cfg(feature = "crash-points")]
    armed::hit(&step_point(step, moment));
    #[cfg(not(feature = "crash-points"))]
    let _ = (step, moment);
}

/// A crash point of the operation's own records: one of [`OPERATION_POINTS`].
#[inline]
pub fn operation(point: &'static str) {
    #[cfg(feature = "crash-points")]
    armed::hit(point);
    #[cfg(not(feature = "crash-points"))]
    let _ = point;
}

#[cfg(feature = "crash-points")]
mod armed {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::OnceLock;

    static ARMED: OnceLock<Option<(String, usize)>> = OnceLock::new();
    static HITS: AtomicUsize = AtomicUsize::new(0);

    fn armed() -> &'static Option<(String, usize)> {
        ARMED.get_or_init(|| {
            let spec = std::env::var("BERTH_CRASH_AT").ok()?;
            match super::parse(&spec) {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("berth: BERTH_CRASH_AT: {e}");
                    std::process::exit(2);
                }
            }
        })
    }

    pub fn hit(point: &str) {
        let Some((at, nth)) = armed() else { return };
        if at == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            eprintln!("berth: crash point {point} (time {nth}): aborting");
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_has_every_moment_and_the_names_are_unique() {
        let names = names();
        assert_eq!(
            names.len(),
            Step::ALL.len() * Moment::ALL.len() + OPERATION_POINTS.len()
        );
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert!(names.contains(&"Backup:after-effect".to_owned()));
    }

    #[test]
    fn a_point_is_armed_by_name_and_count_and_a_typo_is_refused() {
        assert_eq!(
            parse("Backup:after-effect"),
            Ok(("Backup:after-effect".into(), 1))
        );
        assert_eq!(
            parse("Migrate:pending:2"),
            Ok(("Migrate:pending".into(), 2))
        );
        assert!(parse("Backup:after-efect").is_err());
        assert!(parse("Backup:after-effect:0").is_err());
    }
}
