//! The core's side of a cluster ([`Config::clustered`]): it asks the
//! shared directory before it opens a nameplate or a rejoin channel, and
//! before it calls a claim unknown; it hands clients whose nameplate lives
//! on another instance to the driver, which proxies them there.
//!
//! ```text
//! allocate / reserve{n}  -> DirectoryRequest::Reserve(np n)   client waits
//!   Reserved            -> open n here, allocated{n}
//!   Held(..)            -> allocate: pick again (up to RESERVE_TRIES,
//!                          one digit more every third loss);
//!                          reserve: nameplate-taken, a failed claim
//! claim{n}, n not here   -> DirectoryRequest::Lookup(np n)    client waits
//!   Free / Here         -> as today: unknown-nameplate, a failed claim
//!   Elsewhere(home)     -> Proxy{client, home, frames}: the driver sends
//!                          the client's frames to home from now on; the
//!                          home adds it with handle_remote_connect
//! rejoin{c}, c not here  -> DirectoryRequest::Reserve(channel c)
//!   Reserved / Here     -> open the channel here
//!   Elsewhere(home)     -> Proxy, as for claim
//! Unavailable            -> server-full ("try again"), nothing counted
//! a peer back on a channel here -> DirectoryRequest::Renew (its TTL)
//! a nameplate or channel removed here -> DirectoryRequest::Release
//! ```
//!
//! A waiting client's frames are held (up to [`MAX_HELD`]) and handled once
//! the answer came. Remote clients (proxied here) never cause a lookup:
//! their home is here, so what is not here does not exist.

use super::*;

/// Frames held for a client while the directory answers; more closes it.
pub const MAX_HELD: usize = 16;

/// Random numbers an allocation tries before it gives up (each try is
/// one directory round trip; a loss means another instance picked the
/// same number at the same time, or holds it).
pub const RESERVE_TRIES: u32 = 8;

/// What the directory names (see `ferry_cluster::Key`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DirectoryKey {
    /// A nameplate number.
    Nameplate(u32),
    /// A rejoin channel.
    Channel(String),
}

/// What the core asks the driver to do with the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryRequest {
    /// Take `key` for this instance for `ttl`; answer with
    /// [`Rendezvous::handle_directory`] for `client`.
    Reserve {
        /// Who waits.
        client: ClientId,
        /// What to take.
        key: DirectoryKey,
        /// How long it is held (the nameplate TTL).
        ttl: Duration,
    },
    /// Which instance holds `key`; answer for `client`.
    Lookup {
        /// Who waits.
        client: ClientId,
        /// What to look up.
        key: DirectoryKey,
    },
    /// This instance holds `key` still, for `ttl` from now (a peer came
    /// back to a rejoin channel here); no answer.
    Renew {
        /// What to hold on to.
        key: DirectoryKey,
        /// For how long from now.
        ttl: Duration,
    },
    /// This instance no longer holds `key`; no answer.
    Release {
        /// What to give up.
        key: DirectoryKey,
    },
}

/// The directory's answer to a [`DirectoryRequest::Reserve`] or
/// [`DirectoryRequest::Lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryAnswer {
    /// The reservation took: the key is this instance's now.
    Reserved,
    /// Nobody holds the key.
    Free,
    /// This instance holds it (already).
    Here,
    /// Another instance, by name, holds it.
    Elsewhere(String),
    /// The directory did not answer.
    Unavailable,
}

/// A client to be served by another instance from now on: the core has
/// forgotten it; the driver sends `frames` (and every later frame of the
/// client) to `home`, and what `home` answers back to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// The connection here.
    pub client: ClientId,
    /// Where its nameplate lives.
    pub home: String,
    /// Its address, for the home's per-address budgets.
    pub addr: SocketAddr,
    /// The frame that needed the home, then the frames held since.
    pub frames: Vec<ClientToServer>,
}

/// What a waiting client waits for.
#[derive(Debug, Clone)]
pub(super) enum Waiting {
    /// Its allocation: `number` (chosen by the user when `chosen`), try `tries`.
    Allocate {
        number: u32,
        chosen: bool,
        tries: u32,
    },
    /// Its claim of `number`.
    Claim { number: u32 },
    /// Its rejoin on `channel`.
    Rejoin { channel: String },
}

const UNAVAILABLE: &str =
    "the server cannot reach the directory its instances share; try again in a moment";

impl Rendezvous {
    /// A client that another instance proxies here (it greeted there):
    /// it starts greeted, with no welcome; its frames come through the
    /// driver as any client's do.
    pub fn handle_remote_connect(&mut self, now: Instant, client: ClientId, addr: SocketAddr) {
        if self.clients.contains_key(&client) {
            debug!(client, "duplicate remote connect ignored");
            return;
        }
        self.handle_connect(now, client, addr);
        if let Some(state) = self.clients.get_mut(&client) {
            state.greeted = true;
            state.greeted_at = Some(now);
            state.remote = true;
        }
        self.schedule(client);
    }

    /// The directory answered the request about `key` that `client` waits
    /// on. A reservation for a client that left meanwhile is given back.
    pub fn handle_directory(
        &mut self,
        now: Instant,
        client: ClientId,
        key: DirectoryKey,
        answer: DirectoryAnswer,
    ) {
        let Some(state) = self.clients.get_mut(&client) else {
            if answer == DirectoryAnswer::Reserved {
                self.directory.push_back(DirectoryRequest::Release { key });
            }
            return;
        };
        let Some(waiting) = state.waiting.take() else {
            debug!(client, "directory answer nobody waits for");
            return;
        };
        match waiting {
            Waiting::Allocate {
                number,
                chosen,
                tries,
            } => self.allocate_answered(now, client, number, chosen, tries, answer),
            Waiting::Claim { number } => match answer {
                DirectoryAnswer::Elsewhere(home) => {
                    self.proxy(client, home, ClientToServer::Claim { nameplate: number });
                }
                DirectoryAnswer::Unavailable => {
                    self.error(client, ErrorCode::ServerFull, UNAVAILABLE.into());
                }
                _ => self.claim_here(now, client, number),
            },
            Waiting::Rejoin { channel } => match answer {
                DirectoryAnswer::Elsewhere(home) => {
                    self.proxy(client, home, ClientToServer::Rejoin { channel });
                }
                DirectoryAnswer::Unavailable => {
                    self.error(client, ErrorCode::ServerFull, UNAVAILABLE.into());
                }
                // Its peer may have come meanwhile (it asked the directory
                // at the same time, or was proxied here): join it.
                _ if self.join_rejoin(now, client, &channel) => {}
                _ => self.open_rejoin(now, client, channel),
            },
        }
        self.release_held(now, client);
    }

    /// The next thing to ask the directory.
    pub fn poll_directory(&mut self) -> Option<DirectoryRequest> {
        self.directory.pop_front()
    }

    /// The next client to proxy to another instance.
    pub fn poll_proxy(&mut self) -> Option<Proxy> {
        self.proxies.pop_front()
    }

    /// Holds `msg` of a waiting `client`; a client over [`MAX_HELD`] is
    /// closed.
    pub(super) fn hold(&mut self, now: Instant, client: ClientId, msg: ClientToServer) {
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        if state.held.len() >= MAX_HELD {
            debug!(client, "too many frames while the directory answers");
            let message = "too many frames before the server answered; wait for each answer".into();
            self.fail(now, client, ErrorCode::BadFrame, message);
            return;
        }
        state.held.push_back(msg);
    }

    /// Whether allocation and claims go through the directory for `client`.
    pub(super) fn asks_directory(&self, client: ClientId) -> bool {
        self.config.clustered && self.clients.get(&client).is_some_and(|c| !c.remote)
    }

    /// Asks the directory for `number` on behalf of `client`'s allocation.
    pub(super) fn ask_reserve(&mut self, client: ClientId, number: u32, chosen: bool, tries: u32) {
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        state.waiting = Some(Waiting::Allocate {
            number,
            chosen,
            tries,
        });
        self.directory.push_back(DirectoryRequest::Reserve {
            client,
            key: DirectoryKey::Nameplate(number),
            ttl: self.config.nameplate_ttl,
        });
    }

    /// Asks the directory where `number` lives, for `client`'s claim.
    pub(super) fn ask_lookup(&mut self, client: ClientId, number: u32) {
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        state.waiting = Some(Waiting::Claim { number });
        self.directory.push_back(DirectoryRequest::Lookup {
            client,
            key: DirectoryKey::Nameplate(number),
        });
    }

    /// Asks the directory for `channel`, for `client`'s rejoin.
    pub(super) fn ask_channel(&mut self, client: ClientId, channel: String) {
        let Some(state) = self.clients.get_mut(&client) else {
            return;
        };
        state.waiting = Some(Waiting::Rejoin {
            channel: channel.clone(),
        });
        self.directory.push_back(DirectoryRequest::Reserve {
            client,
            key: DirectoryKey::Channel(channel),
            ttl: self.config.nameplate_ttl,
        });
    }

    /// Tells the directory a nameplate (or channel) here is gone.
    pub(super) fn released(&mut self, number: u32, rejoin: Option<&String>) {
        if !self.config.clustered {
            return;
        }
        let key = match rejoin {
            Some(channel) => DirectoryKey::Channel(channel.clone()),
            None => DirectoryKey::Nameplate(number),
        };
        self.directory.push_back(DirectoryRequest::Release { key });
    }

    fn allocate_answered(
        &mut self,
        now: Instant,
        client: ClientId,
        number: u32,
        chosen: bool,
        tries: u32,
        answer: DirectoryAnswer,
    ) {
        let here = self.nameplates.contains_key(&number);
        match answer {
            DirectoryAnswer::Reserved if !here => {
                info!(nameplate = number, client, "nameplate allocated");
                if chosen {
                    self.stats.reserved += 1;
                } else {
                    self.stats.allocated += 1;
                }
                self.open_nameplate(now, client, number, None);
            }
            DirectoryAnswer::Unavailable => {
                self.error(client, ErrorCode::ServerFull, UNAVAILABLE.into());
            }
            _ if chosen => self.refuse_reserve(now, client, number),
            _ => {
                // Lost the number to another instance (or our own
                // earlier client): pick again, a bounded number of times.
                // Before it fills, the room may have gone meanwhile.
                if self.refuse_when_full(client) {
                    return;
                }
                // Every third loss, a range one digit longer.
                let min_digits = ((tries + 1) / 3) as usize;
                match self.pick_nameplate_from(min_digits) {
                    Some(next) if tries + 1 < RESERVE_TRIES => {
                        self.ask_reserve(client, next, false, tries + 1);
                    }
                    _ => {
                        self.stats.nameplates_full += 1;
                        let message = "no free nameplate; try again later".into();
                        self.error(client, ErrorCode::ServerFull, message);
                    }
                }
            }
        }
    }

    /// Hands `client` to `home`: the core forgets it without closing it.
    fn proxy(&mut self, client: ClientId, home: String, first: ClientToServer) {
        let Some(state) = self.clients.remove(&client) else {
            return;
        };
        if let Some(armed) = state.scheduled {
            self.timers.remove(&(armed, Timer::Client(client)));
        }
        debug!(client, home, "client proxied to its nameplate's home");
        let mut frames = Vec::with_capacity(1 + state.held.len());
        frames.push(first);
        frames.extend(state.held);
        self.proxies.push_back(Proxy {
            client,
            home,
            addr: state.addr,
            frames,
        });
    }

    /// Handles what `client` sent while it waited, until it waits again.
    fn release_held(&mut self, now: Instant, client: ClientId) {
        loop {
            let Some(state) = self.clients.get_mut(&client) else {
                return;
            };
            if state.waiting.is_some() {
                return;
            }
            let Some(msg) = state.held.pop_front() else {
                return;
            };
            self.handle_message(now, client, msg);
        }
    }
}
