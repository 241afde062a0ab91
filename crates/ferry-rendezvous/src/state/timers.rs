//! The deadlines: each client's silence, ping and idle deadlines, and
//! each nameplate's expiry, kept in one ordered set.

use super::*;

impl Rendezvous {
    pub(super) fn client_timer(&mut self, now: Instant, client: ClientId, at: Instant) {
        let silence = self.config.heartbeat * MISSED_HEARTBEATS;
        let idle_timeout = self.config.idle_timeout;
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        if state.scheduled != Some(at) {
            return;
        }
        state.scheduled = None;
        if now >= state.last_heard + silence {
            debug!(
                client,
                "client silent for {MISSED_HEARTBEATS} heartbeats, dropping"
            );
            self.remove_client(now, client, Some(PEER_VANISHED));
            self.closes.push_back(client);
            return;
        }
        if state.idle_deadline(idle_timeout).is_some_and(|d| now >= d) {
            debug!(client, "client held no nameplate for too long; closing");
            let message = format!(
                "you held no nameplate for {} s; connect again when you send or receive",
                idle_timeout.as_secs()
            );
            self.fail(now, client, ErrorCode::Idle, message);
            return;
        }
        if state.greeted && now >= state.next_ping {
            state.next_ping = now + self.config.heartbeat;
            let ping = ServerToClient::Ping {
                id: self.next_ping_id,
            };
            self.next_ping_id += 1;
            self.transmits.push_back((client, ping));
        }
        self.schedule(client);
    }

    pub(super) fn nameplate_timer(&mut self, now: Instant, number: u32) {
        let Some(nameplate) = self.nameplates.get_mut(&number) else {
            return;
        };
        if now < nameplate.expires {
            // Pushed back (a rejoin) since this timer was armed.
            nameplate.armed = nameplate.expires;
            self.timers
                .insert((nameplate.expires, Timer::Nameplate(number)));
            return;
        }
        let Some(nameplate) = self.remove_nameplate(number) else {
            return;
        };
        info!(nameplate = number, "nameplate expired");
        self.stats.expired += 1;
        let minutes = self.config.nameplate_ttl.as_secs() / 60;
        for side in nameplate.sides {
            if let Side::Here(client) = side {
                if let Some(state) = self.clients.get_mut(&client) {
                    state.nameplate = None;
                }
                let message = format!(
                    "nameplate {number} expired after {minutes} minutes; start again with a new code"
                );
                self.fail(now, client, ErrorCode::Expired, message);
            }
        }
    }

    /// Arms `client`'s timer for its next deadline (silence, ping, idle),
    /// unless one at or before it is armed already.
    pub(super) fn schedule(&mut self, client: ClientId) {
        let silence = self.config.heartbeat * MISSED_HEARTBEATS;
        let idle_timeout = self.config.idle_timeout;
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        let mut due = state.last_heard + silence;
        if state.greeted {
            due = due.min(state.next_ping);
        }
        if let Some(idle) = state.idle_deadline(idle_timeout) {
            due = due.min(idle);
        }
        match state.scheduled {
            Some(armed) if armed <= due => {}
            armed => {
                if let Some(armed) = armed {
                    self.timers.remove(&(armed, Timer::Client(client)));
                }
                state.scheduled = Some(due);
                self.timers.insert((due, Timer::Client(client)));
            }
        }
    }
}
