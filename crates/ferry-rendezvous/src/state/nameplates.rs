//! Nameplates: allocation (random, growing with occupancy), claims, the
//! mailbox between the two sides, rejoin channels, relay tokens, and
//! freeing a nameplate when its sides leave.

use super::*;

impl Rendezvous {
    /// Allocates a fresh nameplate, or `wanted` when the user chose the code.
    pub(super) fn allocate(&mut self, now: Instant, client: ClientId, wanted: Option<u32>) {
        if self.refuse_second_nameplate(client) {
            return;
        }
        if self.refuse_when_full(client) {
            return;
        }
        if let Some(number) = wanted {
            if number == 0 || self.nameplates.contains_key(&number) {
                self.refuse_reserve(now, client, number);
                return;
            }
        }
        let Some(number) = wanted.or_else(|| self.pick_nameplate()) else {
            self.stats.nameplates_full += 1;
            self.error(
                client,
                ErrorCode::ServerFull,
                "no free nameplate; try again later".into(),
            );
            return;
        };
        if self.asks_directory(client) {
            // Opened once the directory confirms no instance holds it.
            self.ask_reserve(client, number, wanted.is_some(), 0);
            return;
        }
        info!(nameplate = number, client, "nameplate allocated");
        if wanted.is_some() {
            self.stats.reserved += 1;
        } else {
            self.stats.allocated += 1;
        }
        self.open_nameplate(now, client, number, None);
    }

    /// Refuses a `reserve` of `number`, taken or invalid.
    pub(super) fn refuse_reserve(&mut self, now: Instant, client: ClientId, number: u32) {
        let message = format!(
            "nameplate {number} is in use or invalid; choose another code, or let ferry pick one"
        );
        self.error(client, ErrorCode::NameplateTaken, message);
        // Probing which nameplates exist costs like a failed claim.
        self.claim_failed(now, client);
    }

    /// Whether `client` already holds a nameplate (then it is told so).
    pub(super) fn refuse_second_nameplate(&mut self, client: ClientId) -> bool {
        let holds = self.nameplate_of(client).is_some();
        if holds {
            let message = "you already hold a nameplate".into();
            self.error(client, ErrorCode::AlreadyClaimed, message);
        }
        holds
    }

    /// Whether there is no room for another nameplate (then `client` is
    /// told so).
    pub(super) fn refuse_when_full(&mut self, client: ClientId) -> bool {
        let full = self.nameplates.len() >= self.config.max_nameplates;
        if full {
            self.stats.nameplates_full += 1;
            debug!(client, "no room for another nameplate");
            let message = "the server has too many transfers waiting; try again later".into();
            self.error(client, ErrorCode::ServerFull, message);
        }
        full
    }

    /// Creates nameplate `number` with `client` on the first side, waiting
    /// for the second, and answers `allocated`.
    pub(super) fn open_nameplate(
        &mut self,
        now: Instant,
        client: ClientId,
        number: u32,
        rejoin: Option<String>,
    ) {
        if let Some(channel) = &rejoin {
            self.rejoins.insert(channel.clone(), number);
        }
        self.digits_used[digits_index(number)] += 1;
        self.nameplates.insert(
            number,
            Nameplate {
                sides: [Side::Here(client), Side::Open],
                expires: now + self.config.nameplate_ttl,
                pending: VecDeque::new(),
                rejoin,
                relay_asked: [false; 2],
                claimer_bucket: None,
                armed: now + self.config.nameplate_ttl,
                paired: false,
                path_counted: false,
            },
        );
        self.timers
            .insert((now + self.config.nameplate_ttl, Timer::Nameplate(number)));
        if let Some(state) = self.clients.get_mut(&client) {
            state.nameplate = Some(number);
        }
        self.transmits
            .push_back((client, ServerToClient::Allocated { nameplate: number }));
    }

    pub(super) fn claim(&mut self, now: Instant, client: ClientId, number: u32) {
        if self.refuse_second_nameplate(client) {
            self.stats.claims_already_holding += 1;
            return;
        }
        if let Some(wait) = self.blocked_for(now, client) {
            debug!(client, "claim from a blocked address bucket");
            let message = format!(
                "too many failed claims or wrong codes from your address; wait {} s, then check the code and try again",
                wait.as_secs().max(1)
            );
            self.error(client, ErrorCode::RateLimited, message);
            self.stats.claims_blocked += 1;
            self.claim_failed(now, client);
            return;
        }
        let here = self
            .nameplates
            .get(&number)
            .is_some_and(|n| n.rejoin.is_none());
        if !here && self.asks_directory(client) {
            // Maybe another instance holds it; the answer decides.
            self.ask_lookup(client, number);
            return;
        }
        self.claim_here(now, client, number);
    }

    /// A claim of `number` decided here: this instance is its home, or
    /// nobody's.
    pub(super) fn claim_here(&mut self, now: Instant, client: ClientId, number: u32) {
        let bucket = self.clients.get(&client).map(|c| c.bucket);
        let Some(nameplate) = self
            .nameplates
            .get_mut(&number)
            .filter(|n| n.rejoin.is_none())
        else {
            let message = format!(
                "no transfer is waiting under {number}; check the code or ask for a new one"
            );
            self.error(client, ErrorCode::UnknownNameplate, message);
            self.stats.claims_unknown += 1;
            self.claim_failed(now, client);
            return;
        };
        if nameplate.sides[1] != Side::Open {
            let message = format!(
                "nameplate {number} is in use by two peers already; ask the sender for a new code"
            );
            self.error(client, ErrorCode::NameplateTaken, message);
            self.stats.claims_taken += 1;
            self.claim_failed(now, client);
            return;
        }
        nameplate.sides[1] = Side::Here(client);
        nameplate.claimer_bucket = bucket;
        info!(nameplate = number, client, "nameplate claimed");
        self.stats.claimed += 1;
        self.join(client, number, 1);
    }

    /// `client` has just taken side `index` of nameplate `number`, whose
    /// other side is present (or gone): tell both, draw the relay token,
    /// deliver what waited.
    pub(super) fn join(&mut self, client: ClientId, number: u32, index: usize) {
        let Some(nameplate) = self.nameplates.get_mut(&number) else {
            return;
        };
        let other = nameplate.sides[1 - index];
        let pending = std::mem::take(&mut nameplate.pending);
        nameplate.relay_asked = [false; 2];
        if let Some(state) = self.clients.get_mut(&client) {
            state.nameplate = Some(number);
        }
        // No relay token yet: a claimer who guessed the nameplate but not
        // the code never pairs, so it never gets one (see relay_request).
        self.transmits.push_back((
            client,
            ServerToClient::Claimed {
                nameplate: number,
                relay_token: None,
            },
        ));
        if let Side::Here(other) = other {
            self.transmits
                .push_back((other, ServerToClient::PeerJoined { relay_token: None }));
        }
        for body in pending {
            self.transmits
                .push_back((client, ServerToClient::Message { body }));
        }
    }

    /// Meets the peer of an earlier transfer on a secret channel.
    pub(super) fn rejoin(&mut self, now: Instant, client: ClientId, channel: String) {
        if self.refuse_second_nameplate(client) {
            return;
        }
        let valid = (32..=64).contains(&channel.len())
            && channel
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            let message = "a rejoin channel is 32 to 64 lowercase hex digits".to_string();
            self.fail(now, client, ErrorCode::BadFrame, message);
            return;
        }
        if self.join_rejoin(now, client, &channel) {
            return;
        }
        if self.refuse_when_full(client) {
            return;
        }
        if self.asks_directory(client) {
            self.ask_channel(client, channel);
            return;
        }
        self.open_rejoin(now, client, channel);
    }

    /// Joins `client` to the peer waiting on `channel` here, if there is
    /// one (or refuses it, two being there already): whether it did.
    pub(super) fn join_rejoin(&mut self, now: Instant, client: ClientId, channel: &str) -> bool {
        let Some(&number) = self.rejoins.get(channel) else {
            return false;
        };
        let Some(nameplate) = self.nameplates.get_mut(&number) else {
            return false;
        };
        let Some(index) = nameplate.sides.iter().position(|s| *s == Side::Open) else {
            let message = "two peers already use this rejoin channel".to_string();
            self.error(client, ErrorCode::NameplateTaken, message);
            return true;
        };
        nameplate.sides[index] = Side::Here(client);
        nameplate.expires = now + self.config.nameplate_ttl;
        if self.config.clustered {
            // The directory holds the channel as long as this core does.
            self.directory.push_back(DirectoryRequest::Renew {
                key: DirectoryKey::Channel(channel.to_string()),
                ttl: self.config.nameplate_ttl,
            });
        }
        info!(nameplate = number, client, "peer rejoined");
        self.stats.rejoined += 1;
        self.join(client, number, index);
        true
    }

    /// Opens rejoin channel `channel` here, `client` waiting on it.
    pub(super) fn open_rejoin(&mut self, now: Instant, client: ClientId, channel: String) {
        // Hidden nameplates live above the range codes use in practice;
        // `claim` refuses them anyway.
        let number = loop {
            let candidate = self.rng.gen_range(1_000_000_000..=u32::MAX);
            if !self.nameplates.contains_key(&candidate) {
                break candidate;
            }
        };
        info!(nameplate = number, client, "waiting on a rejoin channel");
        self.stats.rejoin_channels += 1;
        self.open_nameplate(now, client, number, Some(channel));
    }

    /// `client` asks for the relay token: both sides get it once both are
    /// here and both asked since the latest join (so both paired).
    pub(super) fn relay_request(&mut self, client: ClientId) {
        let Some(number) = self.nameplate_of(client) else {
            let message = "claim or allocate a nameplate before asking for a relay token".into();
            self.error(client, ErrorCode::NotClaimed, message);
            return;
        };
        let Some(nameplate) = self.nameplates.get_mut(&number) else {
            return;
        };
        let Some(index) = nameplate.side_of(client) else {
            return;
        };
        nameplate.relay_asked[index] = true;
        let [Side::Here(first), Side::Here(second)] = nameplate.sides else {
            return;
        };
        if nameplate.relay_asked != [true, true] {
            return;
        }
        nameplate.relay_asked = [false; 2];
        nameplate.paired = true;
        let relay_token = self.relay_token(number);
        debug!(
            nameplate = number,
            "relay token issued to a paired nameplate"
        );
        // The relay this server names, with a token for it: in a cluster,
        // the home's (a side on another instance follows it).
        let pair_relay = relay_token.as_ref().and(self.config.pair_relay.as_ref());
        let answer = ServerToClient::RelayToken {
            relay_token,
            relay_addr: pair_relay.map(|relay| relay.addr.clone()),
            relay_tls: pair_relay.and_then(|relay| relay.tls.then_some(true)),
            relay_sha256: pair_relay.and_then(|relay| relay.sha256.clone()),
        };
        for side in [first, second] {
            self.transmits.push_back((side, answer.clone()));
        }
    }

    /// A fresh relay token for nameplate `number`, when the server issues them.
    pub(super) fn relay_token(&mut self, number: u32) -> Option<String> {
        self.config.relay_key.as_ref().map(|key| {
            let expires = ferry_relay::token::expiry(self.unix, self.config.relay_token_ttl);
            let token = key.issue(number, expires, self.rng.r#gen());
            ferry_relay::token_to_hex(&token)
        })
    }

    pub(super) fn send(&mut self, client: ClientId, body: String) {
        let Some(number) = self.nameplate_of(client) else {
            let message = "claim or allocate a nameplate before sending".into();
            self.error(client, ErrorCode::NotClaimed, message);
            return;
        };
        let Some(nameplate) = self.nameplates.get_mut(&number) else {
            return;
        };
        let other = if nameplate.sides[0] == Side::Here(client) {
            nameplate.sides[1]
        } else {
            nameplate.sides[0]
        };
        match other {
            Side::Here(other) => {
                self.transmits
                    .push_back((other, ServerToClient::Message { body }));
            }
            Side::Open if nameplate.pending.len() < MAX_PENDING_MESSAGES => {
                nameplate.pending.push_back(body);
            }
            Side::Open => {
                debug!(client, "too many messages for an absent peer");
                let message = "too many messages are waiting for the other side to join".into();
                self.stats.pending_full += 1;
                self.error(client, ErrorCode::QueueFull, message);
            }
            Side::Gone => debug!(client, "message for a peer that left dropped"),
        }
    }

    /// `client` reports the path its pairing found: counted when it is
    /// the first report of a nameplate (not a rejoin channel) whose two
    /// sides paired. Both sides report the same race, so the second
    /// report is not counted; nor is one from a client that never paired
    /// (a stranger that claimed a nameplate, its peer gone), nor a mend
    /// on a rejoin channel, whose transfer was counted when it began.
    pub(super) fn path_reported(&mut self, client: ClientId, path: PathOutcome) {
        let Some(nameplate) = self
            .nameplate_of(client)
            .and_then(|number| self.nameplates.get_mut(&number))
        else {
            debug!(client, "path report without a nameplate ignored");
            return;
        };
        if nameplate.rejoin.is_some() || !nameplate.paired || nameplate.path_counted {
            debug!(
                client,
                rejoin = nameplate.rejoin.is_some(),
                paired = nameplate.paired,
                "path report not counted"
            );
            return;
        }
        nameplate.path_counted = true;
        debug!(client, path = path.code(), "path reported");
        self.stats.paths.count(path);
    }

    pub(super) fn nameplate_of(&self, client: ClientId) -> Option<u32> {
        self.clients.get(&client).and_then(|c| c.nameplate)
    }

    /// Forgets `client` and takes it out of its nameplate; the other side
    /// hears `reason`.
    pub(super) fn remove_client(
        &mut self,
        now: Instant,
        client: ClientId,
        reason: Option<ReleaseReason>,
    ) {
        let Some(state) = self.clients.remove(&client) else {
            return;
        };
        if let Some(armed) = state.scheduled {
            self.timers.remove(&(armed, Timer::Client(client)));
        }
        let Some(number) = state.nameplate else {
            return;
        };
        let Some(nameplate) = self.nameplates.get_mut(&number) else {
            return;
        };
        let Some(index) = nameplate.side_of(client) else {
            return;
        };
        let rejoin = nameplate.rejoin.is_some();
        nameplate.sides[index] = if rejoin { Side::Open } else { Side::Gone };
        let other = nameplate.sides[1 - index];
        let burn = reason == Some(BAD_CODE);
        let claimer_bucket = nameplate.claimer_bucket;
        if rejoin {
            if let Side::Here(other) = other {
                self.transmits
                    .push_back((other, ServerToClient::PeerLeft { reason }));
            } else {
                self.remove_nameplate(number);
                self.stats.freed += 1;
                debug!(nameplate = number, "rejoin channel closed");
            }
            return;
        }
        if let Side::Here(other) = other {
            self.transmits
                .push_back((other, ServerToClient::PeerLeft { reason }));
            if burn {
                // The other side learns the code was wrong, then leaves too.
                if let Some(gone) = self.clients.remove(&other) {
                    if let Some(armed) = gone.scheduled {
                        self.timers.remove(&(armed, Timer::Client(other)));
                    }
                }
                self.closes.push_back(other);
            } else {
                return;
            }
        }
        self.remove_nameplate(number);
        if burn {
            if let Some(bucket) = claimer_bucket {
                self.bad_code_from(now, bucket);
            }
            info!(nameplate = number, "nameplate burnt after a wrong code");
            self.stats.burnt += 1;
        } else {
            info!(nameplate = number, "nameplate freed");
            self.stats.freed += 1;
        }
    }

    /// Forgets a nameplate (and its rejoin channel).
    pub(super) fn remove_nameplate(&mut self, number: u32) -> Option<Nameplate> {
        let nameplate = self.nameplates.remove(&number)?;
        self.timers
            .remove(&(nameplate.armed, Timer::Nameplate(number)));
        let used = &mut self.digits_used[digits_index(number)];
        *used = used.saturating_sub(1);
        if let Some(channel) = &nameplate.rejoin {
            self.rejoins.remove(channel);
        }
        self.released(number, nameplate.rejoin.as_ref());
        Some(nameplate)
    }

    /// A free number, at random, from the smallest range `1..=99`,
    /// `1..=999`, ... that is less than half full, so that a guess hits a
    /// nameplate in use at most half the time, and codes stay short.
    /// Counts per number of digits are kept, so this needs no scan.
    pub(super) fn pick_nameplate(&mut self) -> Option<u32> {
        self.pick_nameplate_from(0)
    }

    /// Like [`Rendezvous::pick_nameplate`], from the `min_digits`-th range
    /// up (0: `1..=99`, 1: `1..=999`, ...): an allocation that keeps losing
    /// its number to other instances of a cluster (whose nameplates this
    /// core does not count) moves to a larger range.
    pub(super) fn pick_nameplate_from(&mut self, min_digits: usize) -> Option<u32> {
        let mut high: u32 = 99;
        let mut used = 0;
        for digits in 0..self.digits_used.len() - 1 {
            used += self.digits_used[digits];
            if digits >= min_digits && used * 2 < high as usize {
                // Less than half full: 64 misses in a row are a 2^-64 event.
                for _ in 0..64 {
                    let candidate = self.rng.gen_range(1..=high);
                    if !self.nameplates.contains_key(&candidate) {
                        return Some(candidate);
                    }
                }
            }
            high = high.saturating_mul(10).saturating_add(9);
        }
        None
    }
}
