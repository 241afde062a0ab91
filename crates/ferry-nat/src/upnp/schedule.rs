//! The lease renewal schedule, sans-IO: which mapping to renew when, given
//! the time passed in. Driven by the guard's renewal task.

use std::time::{Duration, Instant};

use super::guard::MappingKey;

/// A renewal that failed is retried no later than this.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Renewals are never scheduled closer together than this.
const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// When to renew which lease (sans-IO: the caller passes the time in).
///
/// A lease is renewed at half its length; a failed renewal is retried after
/// half the time left (between 1 s and 30 s), or every 30 s once the lease has
/// run out (the router may come back). Permanent mappings (lease zero) are
/// never renewed.
#[derive(Debug)]
pub(crate) struct RenewSchedule<K = MappingKey> {
    entries: Vec<ScheduleEntry<K>>,
}

impl<K> Default for RenewSchedule<K> {
    fn default() -> Self {
        RenewSchedule {
            entries: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct ScheduleEntry<K> {
    key: K,
    lease: Duration,
    renew_at: Instant,
    expires_at: Instant,
}

impl<K: PartialEq + Clone> RenewSchedule<K> {
    /// Starts (or restarts) tracking a lease just granted at `now`.
    pub(crate) fn insert(&mut self, key: K, lease: Duration, now: Instant) {
        self.remove(&key);
        if lease.is_zero() {
            return;
        }
        self.entries.push(ScheduleEntry {
            key,
            lease,
            renew_at: now + (lease / 2).max(MIN_RENEW_INTERVAL),
            expires_at: now + lease,
        });
    }

    pub(crate) fn remove(&mut self, key: &K) {
        self.entries.retain(|e| e.key != *key);
    }

    /// The earliest renewal time, if any lease is tracked.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.entries.iter().map(|e| e.renew_at).min()
    }

    /// The keys whose renewal is due at `now`.
    pub(crate) fn due(&self, now: Instant) -> Vec<K> {
        self.entries
            .iter()
            .filter(|e| e.renew_at <= now)
            .map(|e| e.key.clone())
            .collect()
    }

    /// The router granted the lease again at `now`.
    pub(crate) fn renewed(&mut self, key: &K, now: Instant) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.key == *key) {
            entry.renew_at = now + (entry.lease / 2).max(MIN_RENEW_INTERVAL);
            entry.expires_at = now + entry.lease;
        }
    }

    /// The renewal attempted at `now` failed.
    pub(crate) fn failed(&mut self, key: &K, now: Instant) {
        if let Some(entry) = self.entries.iter_mut().find(|e| e.key == *key) {
            let left = entry.expires_at.saturating_duration_since(now);
            let wait = if left.is_zero() {
                MAX_RETRY
            } else {
                (left / 2).clamp(MIN_RENEW_INTERVAL, MAX_RETRY)
            };
            entry.renew_at = now + wait;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn schedule_renews_at_half_lease() {
        let t0 = Instant::now();
        let mut s = RenewSchedule::<u8>::default();
        assert_eq!(s.next_deadline(), None);
        s.insert(1, Duration::from_secs(120), t0);
        s.insert(2, Duration::from_secs(60), t0);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(30)));
        assert!(s.due(t0 + Duration::from_secs(29)).is_empty());
        assert_eq!(s.due(t0 + Duration::from_secs(30)), [2]);
        s.renewed(&2, t0 + Duration::from_secs(30));
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(60)));
        assert_eq!(s.due(t0 + Duration::from_secs(60)), [1, 2]);
        s.remove(&1);
        assert_eq!(s.due(t0 + Duration::from_secs(60)), [2]);
    }

    #[test]
    fn schedule_ignores_permanent_and_floors_tiny_leases() {
        let t0 = Instant::now();
        let mut s = RenewSchedule::<u8>::default();
        s.insert(1, Duration::ZERO, t0);
        assert_eq!(s.next_deadline(), None);
        s.insert(2, Duration::from_millis(100), t0);
        assert_eq!(s.next_deadline(), Some(t0 + MIN_RENEW_INTERVAL));
        // Re-inserting replaces rather than duplicates.
        s.insert(2, Duration::from_secs(10), t0);
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.next_deadline(), Some(t0 + Duration::from_secs(5)));
    }

    #[test]
    fn schedule_retries_failed_renewal_within_the_lease_then_every_30s() {
        let t0 = Instant::now();
        let mut s = RenewSchedule::<u8>::default();
        s.insert(1, Duration::from_secs(120), t0);
        let t = t0 + Duration::from_secs(60);
        s.failed(&1, t);
        // 60 s left: retry after 30 s (capped).
        assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(30)));
        let t = t0 + Duration::from_secs(110);
        s.failed(&1, t);
        // 10 s left: retry after 5 s, before the lease ends.
        assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(5)));
        let t = t0 + Duration::from_millis(119_500);
        s.failed(&1, t);
        assert_eq!(s.next_deadline(), Some(t + MIN_RENEW_INTERVAL));
        let t = t0 + Duration::from_secs(200);
        s.failed(&1, t);
        // Expired: keep trying, slowly.
        assert_eq!(s.next_deadline(), Some(t + MAX_RETRY));
        s.renewed(&1, t);
        assert_eq!(s.next_deadline(), Some(t + Duration::from_secs(60)));
    }
}
