//! Per-environment retry delays: exponential backoff with jitter. The `backoff` crate is
//! flagged unmaintained (RUSTSEC-2025-0012) but is the design's choice; it stays behind
//! this one small module so that a swap (to `backon`) touches nothing else.

use std::collections::HashMap;
use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoff;

#[derive(Default)]
pub struct Backoffs {
    by_key: HashMap<String, ExponentialBackoff>,
}

fn fresh() -> ExponentialBackoff {
    ExponentialBackoff {
        initial_interval: Duration::from_millis(500),
        multiplier: 2.0,
        randomization_factor: 0.3,
        max_interval: Duration::from_secs(30),
        // Never give up: the loop retries for as long as the controller runs.
        max_elapsed_time: None,
        ..ExponentialBackoff::default()
    }
}

impl Backoffs {
    /// The delay before the next attempt at `key`, growing with each call.
    pub fn next(&mut self, key: &str) -> Duration {
        let b = self.by_key.entry(key.to_owned()).or_insert_with(fresh);
        b.next_backoff().unwrap_or(Duration::from_secs(30))
    }

    /// `key` succeeded: its next failure starts from the shortest delay again.
    pub fn reset(&mut self, key: &str) {
        self.by_key.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_up_to_the_cap_and_reset() {
        let mut b = Backoffs::default();
        let first = b.next("web");
        assert!(
            first >= Duration::from_millis(350) && first <= Duration::from_millis(650),
            "{first:?}"
        );
        let mut last = first;
        for _ in 0..20 {
            last = b.next("web");
        }
        assert!(last <= Duration::from_secs(39), "{last:?}");
        assert!(last >= Duration::from_secs(21), "{last:?}");
        b.reset("web");
        assert!(b.next("web") <= Duration::from_millis(650));
        // Keys are independent.
        assert!(b.next("api") <= Duration::from_millis(650));
    }
}
