//! QUIC flow-control windows sized to the path while it runs, sans-IO.
//!
//! quinn keeps every byte it may still have to send (unacknowledged or not
//! yet sent) in user space, up to the connection's send window, and every
//! byte that arrived but was not yet read, up to the receive window. With
//! fixed windows large enough for a long fat path (tens of MiB) that is
//! tens of MiB of RSS on a LAN, where the bandwidth-delay product is a few
//! KiB: a 512 MiB transfer on loopback peaked at 35 MB (sender, 12 MB of it
//! quinn's send buffer) and 51 MB (receiver, 17 MB of it quinn's
//! reassembly buffer) with 16/32 MiB windows.
//!
//! So the windows follow the path, as TCP's buffer auto-tuning does: every
//! tick (about one round trip) the driver feeds the connection's round
//! trip and byte counters in, and the tuner answers with windows of
//! [`HEADROOM`] × the bandwidth-delay product it measured (the rate times
//! the smallest round trip: queues are not part of the path), between
//! [`MIN_WINDOW`] and [`MAX_WINDOW`]. A window that limits the rate shows
//! up as rate × round trip = window, so it grows by `HEADROOM` per tick until it
//! no longer limits; windows shrink by at most a quarter per tick, so one
//! quiet tick (the receiver fsyncing) does not throttle the next burst.
//!
//! ```text
//! every tick (clamp(rtt, TICK_MIN, TICK_MAX)):
//!   driver --Sample { rtt, min_rtt, sent, received }--> WindowTuner
//!   rate = Δbytes / Δt,  target = clamp(HEADROOM × rate × min_rtt, MIN, MAX)
//!   window = max(target, window × 3/4)
//!   WindowTuner --Some(Windows { send, receive }) when changed--> driver
//!   driver: connection.set_send_window / set_receive_window
//! ```
//!
//! The send window follows what we send, the receive window what we
//! receive: on a one-way transfer the idle direction stays at the minimum.

use std::time::{Duration, Instant};

/// Smallest window, either direction: enough for a LAN at any rate
/// (10 Gbit/s × 1 ms is 1.25 MB) and for the bursts of a busy receiver.
pub const MIN_WINDOW: u64 = 2 * 1024 * 1024;

/// Largest window: 320 MB/s at 200 ms round trip.
pub const MAX_WINDOW: u64 = 64 * 1024 * 1024;

/// Windows are this many bandwidth-delay products: room for the rate to
/// double twice (slow start) before the next tick.
pub const HEADROOM: u64 = 4;

/// Shortest tick: below this the byte counters are too noisy.
pub const TICK_MIN: Duration = Duration::from_millis(20);

/// Longest tick: a slow path still grows its window within a second.
pub const TICK_MAX: Duration = Duration::from_millis(250);

/// What the driver reads from the connection at each tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The smoothed round trip (paces the ticks).
    pub rtt: Duration,
    /// The smallest round trip seen: the path's own delay, without the
    /// queues (and, on a busy machine, the scheduling delays) in `rtt`.
    /// Windows are sized by it, as BBR sizes its window.
    pub min_rtt: Duration,
    /// UDP bytes sent so far.
    pub sent: u64,
    /// UDP bytes received so far.
    pub received: u64,
}

/// The two windows to set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// How much quinn may hold unacknowledged or unsent.
    pub send: u64,
    /// How much the peer may send beyond what we have read.
    pub receive: u64,
}

/// Follows the path's bandwidth-delay product (see the module doc).
#[derive(Debug, Clone)]
pub struct WindowTuner {
    last: Option<(Instant, Sample)>,
    windows: Windows,
}

impl Default for WindowTuner {
    fn default() -> Self {
        Self::new()
    }
}

impl WindowTuner {
    /// Both windows at [`MIN_WINDOW`], the values to configure the
    /// connection with.
    pub fn new() -> WindowTuner {
        WindowTuner {
            last: None,
            windows: Windows {
                send: MIN_WINDOW,
                receive: MIN_WINDOW,
            },
        }
    }

    /// The windows now.
    pub fn windows(&self) -> Windows {
        self.windows
    }

    /// When to take the next sample after one with this round trip.
    pub fn tick(rtt: Duration) -> Duration {
        rtt.clamp(TICK_MIN, TICK_MAX)
    }

    /// Feeds one sample; the new windows if either changed. The first
    /// sample only sets the baseline.
    pub fn update(&mut self, now: Instant, sample: Sample) -> Option<Windows> {
        let (then, before) = self.last.replace((now, sample))?;
        let elapsed = now.saturating_duration_since(then);
        if elapsed.is_zero() {
            self.last = Some((then, before));
            return None;
        }
        let next = Windows {
            send: next_window(
                self.windows.send,
                sample.sent.saturating_sub(before.sent),
                elapsed,
                sample.min_rtt,
            ),
            receive: next_window(
                self.windows.receive,
                sample.received.saturating_sub(before.received),
                elapsed,
                sample.min_rtt,
            ),
        };
        (next != self.windows).then(|| {
            self.windows = next;
            next
        })
    }
}

fn next_window(current: u64, bytes: u64, elapsed: Duration, rtt: Duration) -> u64 {
    // bytes / elapsed × rtt, in u128 so that no product overflows.
    let bdp = u128::from(bytes) * rtt.as_nanos() / elapsed.as_nanos().max(1);
    let target = u64::try_from(bdp.saturating_mul(u128::from(HEADROOM)))
        .unwrap_or(u64::MAX)
        .clamp(MIN_WINDOW, MAX_WINDOW);
    target.max(current - current / 4).max(MIN_WINDOW)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn sample(rtt_ms: u64, sent: u64, received: u64) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            min_rtt: Duration::from_millis(rtt_ms),
            sent,
            received,
        }
    }

    #[test]
    fn a_lan_keeps_the_minimum() {
        let mut tuner = WindowTuner::new();
        let t0 = Instant::now();
        assert_eq!(tuner.update(t0, sample(1, 0, 0)), None);
        // 400 MB/s at 0.2 ms: 80 KB in flight, though a busy machine
        // makes the smoothed round trip 3 ms (1.2 MB).
        let mut sent = 0;
        for i in 1..=50 {
            sent += 8_000_000;
            let got = tuner.update(
                t0 + i * 20 * MS,
                Sample {
                    rtt: Duration::from_millis(3),
                    min_rtt: Duration::from_micros(200),
                    sent,
                    received: 0,
                },
            );
            assert_eq!(got, None, "tick {i}");
        }
        assert_eq!(
            tuner.windows(),
            Windows {
                send: MIN_WINDOW,
                receive: MIN_WINDOW
            }
        );
    }

    #[test]
    fn a_limiting_window_grows_until_it_no_longer_limits() {
        // 50 ms, a link of 125 MB/s: the bandwidth-delay product is 6.25 MB.
        let link = 125_000_000u64;
        let rtt = 50 * MS;
        let mut tuner = WindowTuner::new();
        let t0 = Instant::now();
        let mut now = t0;
        let mut received = 0u64;
        tuner.update(now, sample(50, 0, 0));
        let mut windows = Vec::new();
        for _ in 0..10 {
            // What the receiver gets in one tick: a window per round trip,
            // at most the link.
            let per_rtt = tuner.windows().receive.min(link / 20);
            received += per_rtt;
            now += rtt;
            tuner.update(now, sample(50, 0, received));
            windows.push(tuner.windows().receive);
        }
        assert_eq!(windows[0], 4 * MIN_WINDOW, "{windows:?}");
        let last = *windows.last().unwrap();
        assert_eq!(last, HEADROOM * link / 20, "{windows:?}");
        assert!(last < MAX_WINDOW);
        assert_eq!(tuner.windows().send, MIN_WINDOW);
    }

    #[test]
    fn windows_shrink_by_a_quarter_per_tick_at_most() {
        let mut tuner = WindowTuner::new();
        let t0 = Instant::now();
        tuner.update(t0, sample(100, 0, 0));
        // 100 MB in 100 ms at 100 ms: window to the maximum.
        tuner.update(t0 + 100 * MS, sample(100, 100_000_000, 0));
        assert_eq!(tuner.windows().send, MAX_WINDOW);
        // Silence: a quarter less each tick, down to the minimum.
        let mut now = t0 + 100 * MS;
        let mut seen = vec![MAX_WINDOW];
        for _ in 0..20 {
            now += 100 * MS;
            tuner.update(now, sample(100, 100_000_000, 0));
            seen.push(tuner.windows().send);
        }
        for pair in seen.windows(2) {
            assert!(pair[1] >= pair[0] - pair[0] / 4, "{seen:?}");
        }
        assert_eq!(*seen.last().unwrap(), MIN_WINDOW, "{seen:?}");
    }

    #[test]
    fn nonsense_samples_stay_within_bounds() {
        let mut tuner = WindowTuner::new();
        let t0 = Instant::now();
        tuner.update(t0, sample(0, u64::MAX, 0));
        // Counters that go backwards, a zero interval, a huge rtt.
        assert_eq!(tuner.update(t0, sample(10, 0, 0)), None);
        tuner.update(t0 + MS, sample(u64::MAX / 1_000_000, u64::MAX, u64::MAX));
        let w = tuner.windows();
        assert!((MIN_WINDOW..=MAX_WINDOW).contains(&w.send));
        assert!((MIN_WINDOW..=MAX_WINDOW).contains(&w.receive));
        tuner.update(t0 + 2 * MS, sample(10, 0, 0));
        let w = tuner.windows();
        assert!((MIN_WINDOW..=MAX_WINDOW).contains(&w.send));
    }

    #[test]
    fn ticks_follow_the_round_trip_within_bounds() {
        assert_eq!(WindowTuner::tick(Duration::ZERO), TICK_MIN);
        assert_eq!(WindowTuner::tick(50 * MS), 50 * MS);
        assert_eq!(WindowTuner::tick(Duration::from_secs(3)), TICK_MAX);
    }
}
