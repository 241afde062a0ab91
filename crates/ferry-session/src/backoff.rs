//! How often, and after which pauses, to try again: one pure schedule for
//! every retry loop (reconnecting to a restarted server, mending a broken
//! path), so that each policy is a value a test can read.
//!
//! ```text
//! pause(n)  = first * 2^(n-1), at most max        (n = 1, 2, ...)
//! next(n, elapsed) = pause(n), unless try n would exceed `tries`
//!                    or elapsed + pause(n) would exceed `budget`
//! ```

use std::time::Duration;

/// A retry schedule: doubling pauses, bounded in tries and in total time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The pause before the first try.
    pub first: Duration,
    /// The longest pause.
    pub max: Duration,
    /// No try starts later than this after the first failure.
    pub budget: Duration,
    /// At most this many tries (`None`: as many as the budget allows).
    pub tries: Option<u32>,
}

impl Backoff {
    /// A waiting sender whose rendezvous server went away: try soon (a
    /// restart takes seconds), then every 5 s, for up to 5 minutes. The
    /// 5 s cap bounds how long a receiver that arrives right after the
    /// restart waits for the sender to hold its nameplate again.
    pub const SERVER_RESTART: Backoff = Backoff {
        first: Duration::from_millis(250),
        max: Duration::from_secs(5),
        budget: Duration::from_secs(300),
        tries: None,
    };

    /// The first connection to the server failed (refused, timed out): a
    /// few quick tries ride out a restart without making a wrong
    /// `--server` slow to report.
    pub const SERVER_CONNECT: Backoff = Backoff {
        first: Duration::from_millis(500),
        max: Duration::from_secs(2),
        budget: Duration::from_secs(8),
        tries: Some(3),
    };

    /// A path broke mid-transfer: the caller's `--retries` tries, pauses
    /// from 0.5 s up to 8 s, all within 2 minutes.
    pub const fn mend(tries: u32) -> Backoff {
        Backoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(8),
            budget: Duration::from_secs(120),
            tries: Some(tries),
        }
    }

    /// The pause before try `n` (1-based).
    pub fn pause(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        self.first
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The pause before try `n`, when `elapsed` has passed since the first
    /// failure; `None` when the schedule is spent.
    pub fn next(&self, n: u32, elapsed: Duration) -> Option<Duration> {
        if n == 0 || self.tries.is_some_and(|tries| n > tries) {
            return None;
        }
        let pause = self.pause(n);
        (elapsed + pause <= self.budget).then_some(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn pauses_double_up_to_the_cap() {
        let b = Backoff::SERVER_RESTART;
        let pauses: Vec<_> = (1..=7).map(|n| b.pause(n)).collect();
        assert_eq!(
            pauses,
            [
                MS(250),
                MS(500),
                MS(1000),
                MS(2000),
                MS(4000),
                MS(5000),
                MS(5000)
            ]
        );
        // No overflow far out.
        assert_eq!(b.pause(u32::MAX), MS(5000));
    }

    #[test]
    fn the_schedule_ends_at_its_tries_or_its_budget() {
        let b = Backoff::mend(3);
        assert_eq!(b.next(1, Duration::ZERO), Some(MS(500)));
        assert_eq!(b.next(3, Duration::ZERO), Some(MS(2000)));
        assert_eq!(b.next(4, Duration::ZERO), None);
        assert_eq!(b.next(0, Duration::ZERO), None);
        // A try that would start after the budget is not made.
        assert_eq!(b.next(2, MS(119_001)), None);
        assert_eq!(b.next(2, MS(119_000)), Some(MS(1000)));
    }

    #[test]
    fn a_restarting_server_is_tried_for_five_minutes() {
        // Walk the schedule in virtual time, as the driver does: count the
        // tries and where the last one starts.
        let b = Backoff::SERVER_RESTART;
        let (mut elapsed, mut n) = (Duration::ZERO, 0);
        while let Some(pause) = b.next(n + 1, elapsed) {
            n += 1;
            elapsed += pause;
        }
        assert!(elapsed <= Duration::from_secs(300));
        assert!(elapsed > Duration::from_secs(295), "{elapsed:?}");
        assert_eq!(n, 5 + 58, "5 growing pauses (7.75 s), then every 5 s");
        // The first connection: three quick tries, 3.5 s in all.
        let c = Backoff::SERVER_CONNECT;
        let total: Duration = (1..).map_while(|n| c.next(n, Duration::ZERO)).sum();
        assert_eq!(total, MS(3500));
    }
}
