//! Per-party budgets: failed claims and bad codes per address bucket,
//! and the blocks they lead to.

use super::*;

impl Rendezvous {
    /// How long `client`'s address bucket may not claim, if it is blocked.
    pub(super) fn blocked_for(&mut self, now: Instant, client: ClientId) -> Option<Duration> {
        let bucket = self.clients.get(&client)?.bucket;
        let until = *self.blocked.get(&bucket)?;
        if now >= until {
            self.blocked.remove(&bucket);
            return None;
        }
        Some(until - now)
    }

    /// Blocks `bucket`'s claims until `until` (a later block wins).
    pub(super) fn block(&mut self, now: Instant, bucket: AddrBucket, until: Instant) {
        if self.blocked.len() >= self.config.max_tracked_buckets {
            self.blocked.retain(|_, t| *t > now);
            if self.blocked.len() >= self.config.max_tracked_buckets {
                debug!(%bucket, "block table full; not blocking");
                return;
            }
        }
        let entry = self.blocked.entry(bucket).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Charges a failed claim to `client` and its address bucket: the
    /// connection closes after a few, the bucket is blocked for a while
    /// beyond its budget.
    pub(super) fn claim_failed(&mut self, now: Instant, client: ClientId) {
        let since = now.saturating_duration_since(*self.origin.get_or_insert(now));
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        state.failed_claims += 1;
        let failed = state.failed_claims;
        let bucket = state.bucket;
        if !self.claim_failures.allow(&bucket, since) {
            debug!(client, %bucket, "address bucket over its failed-claim budget");
            self.block(now, bucket, now + self.config.claim_block);
        }
        if failed >= self.config.failed_claims_per_connection {
            debug!(client, failed, "too many failed claims; closing");
            self.stats.failed_claims_closed += 1;
            let message = format!(
                "{failed} failed claims on this connection; check the code, then try again"
            );
            self.fail(now, client, ErrorCode::RateLimited, message);
        }
    }

    /// A pairing whose claimer came from `bucket` ended in a wrong code.
    pub(super) fn bad_code_from(&mut self, now: Instant, bucket: AddrBucket) {
        let since = now.saturating_duration_since(*self.origin.get_or_insert(now));
        if !self.bad_codes.allow(&bucket, since) {
            debug!(%bucket, "address bucket over its bad-code budget");
            self.block(now, bucket, now + self.config.bad_code_block);
        }
    }
}
