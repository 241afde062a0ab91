//! Mending a transfer whose path broke: which ends are mendable, how often
//! and after which pauses to reconnect ([`Backoff::mend`]), and why the
//! path ended (a limit of the relay, or a break). The caller renders the
//! [`MendEvent`]s and resumes the transfer on the new link
//! (`ferry_transfer::resume_offer` on the receiving side).
//!
//! ```text
//! transfer error ── mendable? ── no ──> the caller fails
//!                      │ yes
//!                      ▼
//!   path_end(bytes on this link, time on it): relay limit | broken
//!   try n = 1..=retries, pause Backoff::mend(retries).next(n) ──> Trying
//!     rejoin.reconnect() ── ok ──> Reconnected, new link
//!                        └─ err ──> next try (the error is kept as `last`)
//!   schedule spent ──> MendError::GaveUp
//! ```

use std::time::{Duration, Instant};

use ferry_transfer::TransferError;
use tracing::info;

use crate::{Backoff, PairLimits, PeerLink, Rejoin};

/// The most breaks one transfer may survive.
pub const MAX_BREAKS: u32 = 20;

/// Whether `error` ended the transfer because the path broke, which a
/// reconnect may mend: a reset, an end without TLS close_notify, a dead
/// QUIC connection, a stall. Not a deliberate end (the peer closed its
/// stream cleanly, as after Ctrl-C), a refusal, a verification failure or
/// a local problem.
pub fn mendable(error: &TransferError) -> bool {
    matches!(error, TransferError::Stream(_) | TransferError::Timeout(_))
}

/// Why the current path ended, as far as this side can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathEnd {
    /// The relay's limit of bytes per pair ended it.
    RelayByteLimit {
        /// The limit, in bytes.
        max_bytes: u64,
    },
    /// The relay's limit on a pair's lifetime ended it.
    RelayLifetime {
        /// The limit.
        max: Duration,
    },
    /// The path broke.
    Broken,
}

/// What mending does, for the caller to show.
#[derive(Debug)]
#[non_exhaustive]
pub enum MendEvent<'a> {
    /// Try `attempt` of `of` follows after `pause`.
    Trying {
        /// Which try (1-based).
        attempt: u32,
        /// Tries at most.
        of: u32,
        /// The pause before it.
        pause: Duration,
        /// Why the path ended.
        end: PathEnd,
        /// The error the transfer ended with.
        error: &'a TransferError,
        /// Why the previous try failed, from the second try on.
        last: Option<&'a str>,
    },
    /// Connected again, `after` the path ended, on try `tries`.
    Reconnected {
        /// Since the path ended.
        after: Duration,
        /// Tries it took.
        tries: u32,
    },
}

/// Mending gave up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MendError {
    /// The link carries nothing to find the peer again with.
    #[error("cannot reconnect: nothing to rejoin")]
    NoRejoin,
    /// Every try failed, or the time ran out.
    #[error("reconnecting failed ({last})")]
    GaveUp {
        /// Why the last try failed.
        last: String,
    },
}

/// Reconnecting after the path broke mid-transfer, up to `retries` tries
/// per break and [`MAX_BREAKS`] breaks.
pub struct Mender {
    rejoin: Option<Rejoin>,
    retries: u32,
    breaks: u32,
    /// When the current link started, and the relay's limits on it.
    since: Instant,
    relay_limits: Option<PairLimits>,
}

impl Mender {
    /// Takes what the first link offers to find the peer again.
    pub fn new(link: &mut PeerLink, retries: u32) -> Self {
        Mender {
            rejoin: link.rejoin.take(),
            retries,
            breaks: 0,
            since: Instant::now(),
            relay_limits: link.relay_limits,
        }
    }

    /// The transfer moved to `link` (a direct path that replaced the
    /// relay, [`Upgrade`](crate::Upgrade)): its ends are this link's.
    pub fn moved(&mut self, link: &PeerLink) {
        self.since = Instant::now();
        self.relay_limits = link.relay_limits;
    }

    /// Whether `error` is a break this mender may mend now.
    pub fn may_mend(&self, error: &TransferError) -> bool {
        mendable(error) && self.retries > 0 && self.rejoin.is_some() && self.breaks < MAX_BREAKS
    }

    /// Why the current link ended, after `bytes_on_link` bytes of payload
    /// moved on it (see [`PairLimits::explains`]).
    pub fn path_end(&self, bytes_on_link: u64) -> PathEnd {
        let Some(limits) = self.relay_limits else {
            return PathEnd::Broken;
        };
        match limits.explains(bytes_on_link, self.since.elapsed()) {
            Some(ferry_relay::PairEnd::ByteLimit) => PathEnd::RelayByteLimit {
                max_bytes: limits.max_bytes.unwrap_or_default(),
            },
            Some(ferry_relay::PairEnd::Lifetime) => PathEnd::RelayLifetime {
                max: limits.max_lifetime.unwrap_or_default(),
            },
            _ => PathEnd::Broken,
        }
    }

    /// Reconnects after `error` ended the path (after `bytes_on_link`
    /// bytes on it): up to `retries` tries on [`Backoff::mend`], telling
    /// `on_event` about each.
    pub async fn mend(
        &mut self,
        error: &TransferError,
        bytes_on_link: u64,
        mut on_event: impl FnMut(MendEvent<'_>),
    ) -> Result<PeerLink, MendError> {
        let end = self.path_end(bytes_on_link);
        let Some(rejoin) = self.rejoin.as_mut() else {
            return Err(MendError::NoRejoin);
        };
        self.breaks += 1;
        let broke = Instant::now();
        let mut last: Option<String> = None;
        let schedule = Backoff::mend(self.retries);
        for attempt in 1..=self.retries {
            let Some(pause) = schedule.next(attempt, broke.elapsed()) else {
                break;
            };
            on_event(MendEvent::Trying {
                attempt,
                of: self.retries,
                pause,
                end,
                error,
                last: last.as_deref(),
            });
            tokio::time::sleep(pause).await;
            let remaining = schedule.budget.saturating_sub(broke.elapsed());
            match tokio::time::timeout(remaining, rejoin.reconnect()).await {
                Ok(Ok(link)) => {
                    self.since = Instant::now();
                    self.relay_limits = link.relay_limits;
                    on_event(MendEvent::Reconnected {
                        after: broke.elapsed(),
                        tries: attempt,
                    });
                    return Ok(link);
                }
                Ok(Err(why)) => {
                    info!(attempt, error = %why, "reconnecting failed");
                    last = Some(why.to_string());
                }
                Err(_) => {
                    last = Some("out of time".into());
                    break;
                }
            }
        }
        Err(MendError::GaveUp {
            last: last.unwrap_or_else(|| "no try was made".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_broken_paths_are_mendable() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(mendable(&TransferError::Stream(reset)));
        assert!(mendable(&TransferError::Timeout("waiting for data")));
        assert!(!mendable(&TransferError::PeerClosed));
        assert!(!mendable(&TransferError::Declined("no".into())));
        assert!(!mendable(&TransferError::Protocol("bad frame".into())));
    }
}
