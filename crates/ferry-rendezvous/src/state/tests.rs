//! Unit tests of the rendezvous logic, driven in virtual time.

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 7], port))
}

struct Harness {
    core: Rendezvous,
    now: Instant,
}

impl Harness {
    fn new(config: Config) -> Self {
        Harness {
            core: Rendezvous::new(config, 7),
            now: Instant::now(),
        }
    }

    fn greet(&mut self, client: ClientId) {
        self.core
            .handle_connect(self.now, client, addr(40000 + client as u16));
        self.msg(
            client,
            ClientToServer::Hello {
                protocol: PROTOCOL_VERSION,
                agent: "test".into(),
            },
        );
        let out = self.drain();
        assert_eq!(
            out,
            vec![(
                client,
                ServerToClient::Welcome {
                    protocol: PROTOCOL_VERSION,
                    observed_addr: format!("198.51.100.7:{}", 40000 + client as u16),
                    heartbeat_secs: 5,
                    stun_port: None,
                    stun_second_port: None,
                    relay_addr: None,
                    uptime_secs: Some(0),
                    tls: None,
                    relay_tls: None,
                    relay_sha256: None,
                }
            )]
        );
    }

    fn msg(&mut self, client: ClientId, msg: ClientToServer) {
        self.core.handle_message(self.now, client, msg);
    }

    fn drain(&mut self) -> Vec<(ClientId, ServerToClient)> {
        std::iter::from_fn(|| self.core.poll_transmit()).collect()
    }

    fn closes(&mut self) -> Vec<ClientId> {
        std::iter::from_fn(|| self.core.poll_close()).collect()
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.core.handle_timeout(self.now);
    }

    /// Allocates with client 1 and claims with client 2.
    fn paired(&mut self) -> u32 {
        self.paired_again(1, 2)
    }

    /// Allocates with client `first` and claims with client `second`.
    fn paired_again(&mut self, first: ClientId, second: ClientId) -> u32 {
        self.greet(first);
        self.greet(second);
        self.msg(first, ClientToServer::Allocate);
        let [(allocator, ServerToClient::Allocated { nameplate })] = self.drain()[..] else {
            panic!("no allocation");
        };
        assert_eq!(allocator, first);
        self.msg(second, ClientToServer::Claim { nameplate });
        assert_eq!(
            self.drain(),
            vec![
                (
                    second,
                    ServerToClient::Claimed {
                        nameplate,
                        relay_token: None
                    }
                ),
                (first, ServerToClient::PeerJoined { relay_token: None })
            ]
        );
        nameplate
    }
}

fn error_code(out: &[(ClientId, ServerToClient)]) -> Vec<(ClientId, ErrorCode)> {
    out.iter()
        .filter_map(|(c, m)| match m {
            ServerToClient::Error { code, .. } => Some((*c, *code)),
            _ => None,
        })
        .collect()
}

#[test]
fn allocate_claim_forward() {
    let mut h = Harness::new(Config::default());
    let n = h.paired();
    assert!((1..=99).contains(&n));
    h.msg(
        1,
        ClientToServer::Send {
            body: "to receiver".into(),
        },
    );
    h.msg(
        2,
        ClientToServer::Send {
            body: "to sender".into(),
        },
    );
    assert_eq!(
        h.drain(),
        vec![
            (
                2,
                ServerToClient::Message {
                    body: "to receiver".into()
                }
            ),
            (
                1,
                ServerToClient::Message {
                    body: "to sender".into()
                }
            ),
        ]
    );
    h.msg(1, ClientToServer::Ping { id: 9 });
    assert_eq!(h.drain(), vec![(1, ServerToClient::Pong { id: 9 })]);
}

#[test]
fn messages_before_claim_are_queued_and_bounded() {
    let mut h = Harness::new(Config::default());
    h.greet(1);
    h.greet(2);
    h.msg(1, ClientToServer::Allocate);
    let [(1, ServerToClient::Allocated { nameplate })] = h.drain()[..] else {
        panic!()
    };
    for i in 0..MAX_PENDING_MESSAGES {
        h.msg(
            1,
            ClientToServer::Send {
                body: format!("m{i}"),
            },
        );
    }
    assert!(h.drain().is_empty());
    h.msg(
        1,
        ClientToServer::Send {
            body: "overflow".into(),
        },
    );
    assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::QueueFull)]);
    h.msg(2, ClientToServer::Claim { nameplate });
    let out = h.drain();
    assert_eq!(out.len(), 2 + MAX_PENDING_MESSAGES);
    assert_eq!(out[2], (2, ServerToClient::Message { body: "m0".into() }));
}

#[test]
fn third_claimant_is_refused() {
    let mut h = Harness::new(Config::default());
    let n = h.paired();
    h.greet(3);
    h.msg(3, ClientToServer::Claim { nameplate: n });
    let out = h.drain();
    assert_eq!(error_code(&out), vec![(3, ErrorCode::NameplateTaken)]);
    let ServerToClient::Error { message, .. } = &out[0].1 else {
        panic!()
    };
    assert!(message.contains("in use by two peers"), "{message}");
    // The pair is undisturbed.
    h.msg(1, ClientToServer::Send { body: "x".into() });
    assert_eq!(
        h.drain(),
        vec![(2, ServerToClient::Message { body: "x".into() })]
    );
}

#[test]
fn unknown_nameplate() {
    let mut h = Harness::new(Config::default());
    h.greet(1);
    h.msg(1, ClientToServer::Claim { nameplate: 4242 });
    let out = h.drain();
    assert_eq!(error_code(&out), vec![(1, ErrorCode::UnknownNameplate)]);
    assert!(
        h.closes().is_empty(),
        "a typo should not cost the connection"
    );
}

#[test]
fn release_frees_when_both_left() {
    let mut h = Harness::new(Config::default());
    let n = h.paired();
    h.msg(
        2,
        ClientToServer::Release {
            reason: Some(ReleaseReason::Done),
            path: None,
        },
    );
    assert_eq!(
        h.drain(),
        vec![(
            1,
            ServerToClient::PeerLeft {
                reason: Some(ReleaseReason::Done)
            }
        )]
    );
    assert_eq!(h.closes(), vec![2]);
    assert_eq!(h.core.nameplate_count(), 1, "the sender is still there");
    // Nobody else can take the freed side.
    h.greet(3);
    h.msg(3, ClientToServer::Claim { nameplate: n });
    assert_eq!(error_code(&h.drain()), vec![(3, ErrorCode::NameplateTaken)]);
    h.core.handle_disconnect(h.now, 1);
    assert!(h.drain().is_empty());
    assert_eq!(h.core.nameplate_count(), 0);
    h.msg(3, ClientToServer::Claim { nameplate: n });
    assert_eq!(
        error_code(&h.drain()),
        vec![(3, ErrorCode::UnknownNameplate)]
    );
    let stats = h.core.stats();
    assert_eq!(
        (stats.claimed, stats.claims_taken, stats.claims_unknown),
        (1, 1, 1)
    );
    assert_eq!((stats.freed, stats.burnt), (1, 0));
}

#[test]
fn allocator_leaving_alone_frees() {
    let mut h = Harness::new(Config::default());
    h.greet(1);
    h.msg(1, ClientToServer::Allocate);
    h.drain();
    h.msg(
        1,
        ClientToServer::Release {
            reason: None,
            path: None,
        },
    );
    assert_eq!(h.core.nameplate_count(), 0);
}

#[test]
fn bad_code_burns_at_once() {
    let mut h = Harness::new(Config::default());
    let n = h.paired();
    h.msg(
        2,
        ClientToServer::Release {
            reason: Some(BAD_CODE),
            path: None,
        },
    );
    assert_eq!(
        h.drain(),
        vec![(
            1,
            ServerToClient::PeerLeft {
                reason: Some(BAD_CODE)
            }
        )]
    );
    let mut closes = h.closes();
    closes.sort();
    assert_eq!(closes, vec![1, 2]);
    assert_eq!(h.core.nameplate_count(), 0);
    assert_eq!(h.core.client_count(), 0);
    h.greet(3);
    h.msg(3, ClientToServer::Claim { nameplate: n });
    assert_eq!(
        error_code(&h.drain()),
        vec![(3, ErrorCode::UnknownNameplate)]
    );
    assert_eq!(
        h.core.stats(),
        Stats {
            allocated: 1,
            claimed: 1,
            burnt: 1,
            claims_unknown: 1,
            ..Stats::default()
        }
    );
}

#[test]
fn nameplates_expire_after_ttl() {
    let config = Config {
        nameplate_ttl: Duration::from_secs(60),
        ..Config::default()
    };
    let mut h = Harness::new(config);
    h.greet(1);
    h.msg(1, ClientToServer::Allocate);
    h.drain();
    let deadline = h.core.poll_timeout().unwrap();
    assert!(deadline <= h.now + Duration::from_secs(5));
    // Keep the client alive with pongs while time passes.
    for _ in 0..11 {
        h.advance(Duration::from_secs(5));
        h.msg(1, ClientToServer::Pong { id: 0 });
    }
    assert_eq!(h.core.nameplate_count(), 1);
    h.drain();
    h.advance(Duration::from_secs(5));
    assert_eq!(h.core.nameplate_count(), 0);
    assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::Expired)]);
    assert_eq!(h.closes(), vec![1]);
    let stats = h.core.stats();
    assert_eq!((stats.allocated, stats.expired, stats.freed), (1, 1, 0));
}

#[test]
fn silent_client_is_dropped_and_peer_told() {
    let mut h = Harness::new(Config::default());
    h.paired();
    for _ in 0..2 {
        h.advance(Duration::from_secs(5));
        let pings = h.drain();
        assert_eq!(pings.len(), 2, "both are pinged: {pings:?}");
        h.msg(1, ClientToServer::Pong { id: 0 });
    }
    // Client 2 never answered: after 3 heartbeats it is gone.
    let next = h.core.poll_timeout().unwrap();
    h.now = next;
    h.core.handle_timeout(h.now);
    let out = h.drain();
    assert!(
        out.contains(&(
            1,
            ServerToClient::PeerLeft {
                reason: Some(PEER_VANISHED)
            }
        )),
        "{out:?}"
    );
    assert_eq!(h.closes(), vec![2]);
    assert_eq!(h.core.client_count(), 1);
}

#[test]
fn messages_before_hello_close() {
    let mut h = Harness::new(Config::default());
    h.core.handle_connect(h.now, 1, addr(1));
    h.msg(1, ClientToServer::Allocate);
    assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::BadFrame)]);
    assert_eq!(h.closes(), vec![1]);
    // Later frames from the closed client are ignored.
    h.msg(1, ClientToServer::Allocate);
    assert!(h.drain().is_empty());
}

#[test]
fn protocol_version_mismatch_closes() {
    let mut h = Harness::new(Config::default());
    h.core.handle_connect(h.now, 1, addr(1));
    h.msg(
        1,
        ClientToServer::Hello {
            protocol: 99,
            agent: "future".into(),
        },
    );
    let out = h.drain();
    assert_eq!(error_code(&out), vec![(1, ErrorCode::ProtocolVersion)]);
    assert_eq!(h.closes(), vec![1]);
}

#[test]
fn client_without_hello_times_out() {
    let mut h = Harness::new(Config::default());
    h.core.handle_connect(h.now, 1, addr(1));
    assert_eq!(h.core.poll_timeout(), Some(h.now + Duration::from_secs(15)));
    h.advance(Duration::from_secs(15));
    assert_eq!(h.closes(), vec![1]);
}

#[test]
fn frame_errors_close() {
    let mut h = Harness::new(Config::default());
    h.greet(1);
    h.core
        .handle_frame_error(h.now, 1, &FrameError::FrameTooLarge { limit: 65536 });
    assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::FrameTooLarge)]);
    assert_eq!(h.closes(), vec![1]);
}

#[test]
fn send_without_nameplate_and_double_allocate() {
    let mut h = Harness::new(Config::default());
    h.greet(1);
    h.msg(1, ClientToServer::Send { body: "x".into() });
    assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::NotClaimed)]);
    h.msg(1, ClientToServer::Allocate);
    h.drain();
    h.msg(1, ClientToServer::Allocate);
    assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::AlreadyClaimed)]);
}

#[test]
fn reserve_takes_the_chosen_nameplate_once() {
    let mut h = Harness::new(Config::default());
    h.greet(1);
    h.greet(2);
    h.greet(3);
    h.msg(1, ClientToServer::Reserve { nameplate: 4242 });
    assert_eq!(
        h.drain(),
        vec![(1, ServerToClient::Allocated { nameplate: 4242 })]
    );
    h.msg(2, ClientToServer::Reserve { nameplate: 4242 });
    assert_eq!(error_code(&h.drain()), vec![(2, ErrorCode::NameplateTaken)]);
    h.msg(2, ClientToServer::Reserve { nameplate: 0 });
    assert_eq!(error_code(&h.drain()), vec![(2, ErrorCode::NameplateTaken)]);
    h.msg(3, ClientToServer::Claim { nameplate: 4242 });
    assert_eq!(
        h.drain(),
        vec![
            (
                3,
                ServerToClient::Claimed {
                    nameplate: 4242,
                    relay_token: None
                }
            ),
            (1, ServerToClient::PeerJoined { relay_token: None })
        ]
    );
}

#[test]
fn allocation_stays_short_and_grows_at_half_occupancy() {
    let config = Config {
        max_nameplates: 200,
        ..Config::default()
    };
    let mut h = Harness::new(config);
    let mut numbers = Vec::new();
    for client in 1..=150 {
        h.greet(client);
        h.msg(client, ClientToServer::Allocate);
        match h.drain()[..] {
            [(_, ServerToClient::Allocated { nameplate })] => numbers.push(nameplate),
            ref other => panic!("{other:?}"),
        }
    }
    // While fewer than half of 1-99 are in use, codes use two digits.
    assert!(numbers[..50].iter().all(|n| (1..=99).contains(n)));
    // Then 1-999, never more than half of the 99 small ones taken.
    assert!(numbers[50..].iter().all(|n| (1..=999).contains(n)));
    assert!(numbers[50..].iter().any(|n| *n >= 100));
    let mut distinct = numbers.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), numbers.len());
    // Random, not sequential.
    assert_ne!(numbers[..10], (1..=10).collect::<Vec<u32>>()[..]);
    assert_eq!(digits_index(99), 0);
    assert_eq!(digits_index(100), 1);
    assert_eq!(digits_index(u32::MAX), 8);
}

/// Connects and greets `client` from `ip`.
fn greet_from(h: &mut Harness, client: ClientId, ip: [u8; 4]) {
    h.core
        .handle_connect(h.now, client, SocketAddr::from((ip, 40000)));
    h.msg(
        client,
        ClientToServer::Hello {
            protocol: PROTOCOL_VERSION,
            agent: "test".into(),
        },
    );
    h.drain();
}

#[test]
fn failed_claims_close_the_connection_and_block_the_address() {
    let mut h = Harness::new(Config::default());
    // Three misses on one connection: closed, with a clear error.
    greet_from(&mut h, 1, [203, 0, 113, 1]);
    for n in 1..=3 {
        h.msg(1, ClientToServer::Claim { nameplate: n });
    }
    let out = h.drain();
    assert_eq!(
        error_code(&out),
        vec![
            (1, ErrorCode::UnknownNameplate),
            (1, ErrorCode::UnknownNameplate),
            (1, ErrorCode::UnknownNameplate),
            (1, ErrorCode::RateLimited)
        ]
    );
    assert_eq!(h.closes(), vec![1]);
    // Seven more misses from the same address on fresh connections
    // use up its ten a minute; the eleventh blocks the address.
    let mut id = 2;
    for _ in 0..8 {
        greet_from(&mut h, id, [203, 0, 113, 1]);
        h.msg(id, ClientToServer::Claim { nameplate: 50 });
        id += 1;
    }
    h.drain();
    // A genuine sender now allocates: the blocked address cannot
    // claim it even with the right number, another address can.
    greet_from(&mut h, 100, [198, 51, 100, 1]);
    h.msg(100, ClientToServer::Allocate);
    let [(100, ServerToClient::Allocated { nameplate })] = h.drain()[..] else {
        panic!("no allocation");
    };
    greet_from(&mut h, id, [203, 0, 113, 1]);
    h.msg(id, ClientToServer::Claim { nameplate });
    let out = h.drain();
    assert_eq!(error_code(&out), vec![(id, ErrorCode::RateLimited)]);
    let ServerToClient::Error { message, .. } = &out[0].1 else {
        panic!()
    };
    assert!(message.contains("wait"), "{message}");
    greet_from(&mut h, 101, [198, 51, 100, 2]);
    h.msg(101, ClientToServer::Claim { nameplate });
    assert!(matches!(
        h.drain()[0],
        (101, ServerToClient::Claimed { .. })
    ));
    // After the block the address may claim again.
    h.now += Duration::from_secs(61);
    h.msg(id, ClientToServer::Claim { nameplate: 4242 });
    assert_eq!(
        error_code(&h.drain()),
        vec![(id, ErrorCode::UnknownNameplate)]
    );
}

#[test]
fn probing_with_reserve_costs_like_a_failed_claim() {
    let mut h = Harness::new(Config::default());
    greet_from(&mut h, 1, [198, 51, 100, 1]);
    h.msg(1, ClientToServer::Reserve { nameplate: 77 });
    h.drain();
    greet_from(&mut h, 2, [203, 0, 113, 1]);
    for _ in 0..3 {
        h.msg(2, ClientToServer::Reserve { nameplate: 77 });
    }
    let out = h.drain();
    assert_eq!(out.len(), 4, "{out:?}");
    assert!(matches!(
        out[3],
        (
            2,
            ServerToClient::Error {
                code: ErrorCode::RateLimited,
                ..
            }
        )
    ));
    assert_eq!(h.closes(), vec![2]);
}

#[test]
fn three_bad_codes_block_the_claimers_address_for_ten_minutes() {
    let mut h = Harness::new(Config::default());
    let mut id = 1;
    let guesser = [203, 0, 113, 9];
    for round in 0..3 {
        greet_from(&mut h, id, [198, 51, 100, 1]);
        h.msg(id, ClientToServer::Allocate);
        let [(_, ServerToClient::Allocated { nameplate })] = h.drain()[..] else {
            panic!("no allocation");
        };
        greet_from(&mut h, id + 1, guesser);
        h.msg(id + 1, ClientToServer::Claim { nameplate });
        assert!(
            matches!(h.drain()[0], (_, ServerToClient::Claimed { .. })),
            "round {round}: the guesser may still claim"
        );
        // The sender finds the code wrong and burns the nameplate.
        h.msg(
            id,
            ClientToServer::Release {
                reason: Some(BAD_CODE),
                path: None,
            },
        );
        h.drain();
        h.closes();
        id += 2;
    }
    greet_from(&mut h, id, [198, 51, 100, 1]);
    h.msg(id, ClientToServer::Allocate);
    let [(_, ServerToClient::Allocated { nameplate })] = h.drain()[..] else {
        panic!("no allocation");
    };
    greet_from(&mut h, id + 1, guesser);
    h.msg(id + 1, ClientToServer::Claim { nameplate });
    assert_eq!(
        error_code(&h.drain()),
        vec![(id + 1, ErrorCode::RateLimited)]
    );
    h.now += Duration::from_secs(9 * 60);
    h.msg(id + 1, ClientToServer::Claim { nameplate });
    assert_eq!(
        error_code(&h.drain()),
        vec![(id + 1, ErrorCode::RateLimited)]
    );
    h.now += Duration::from_secs(61);
    greet_from(&mut h, id + 2, guesser);
    h.msg(id + 2, ClientToServer::Claim { nameplate });
    assert!(matches!(h.drain()[0], (_, ServerToClient::Claimed { .. })));
}

#[test]
fn greeted_clients_without_a_nameplate_are_closed_after_the_idle_timeout() {
    let mut h = Harness::new(Config {
        idle_timeout: Duration::from_secs(30),
        ..Config::default()
    });
    h.greet(1);
    h.greet(2);
    h.greet(3);
    h.msg(2, ClientToServer::Allocate);
    h.msg(
        3,
        ClientToServer::Rejoin {
            channel: "ab".repeat(16),
        },
    );
    h.drain();
    for _ in 0..6 {
        h.advance(Duration::from_secs(5));
        for client in 1..=3 {
            h.msg(client, ClientToServer::Pong { id: 0 });
        }
    }
    let out = h.drain();
    assert_eq!(error_code(&out), vec![(1, ErrorCode::Idle)]);
    assert_eq!(h.closes(), vec![1]);
    assert_eq!(h.core.client_count(), 2, "holders of a nameplate stay");
}

/// Both sides of `nameplate`'s pair ask for the relay token; returns
/// the one both got.
fn both_ask(h: &mut Harness, first: ClientId, second: ClientId) -> String {
    h.msg(first, ClientToServer::RelayRequest);
    assert!(h.drain().is_empty(), "no token before both asked");
    h.msg(second, ClientToServer::RelayRequest);
    let out = h.drain();
    let [
        (
            a,
            ServerToClient::RelayToken {
                relay_token: Some(ref x),
                ..
            },
        ),
        (
            b,
            ServerToClient::RelayToken {
                relay_token: Some(ref y),
                ..
            },
        ),
    ] = out[..]
    else {
        panic!("no token for both sides: {out:?}");
    };
    let mut got = [a, b];
    got.sort();
    let mut want = [first, second];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(x, y, "both sides got the same token");
    x.clone()
}

#[test]
fn timers_track_only_live_clients_and_nameplates() {
    let mut h = Harness::new(Config::default());
    for round in 0..50u64 {
        let a = 1000 + 2 * round;
        h.greet(a);
        h.greet(a + 1);
        h.msg(a, ClientToServer::Allocate);
        let [(_, ServerToClient::Allocated { nameplate })] = h.drain()[..] else {
            panic!("no allocation");
        };
        h.msg(a + 1, ClientToServer::Claim { nameplate });
        h.msg(
            a + 1,
            ClientToServer::Release {
                reason: Some(ReleaseReason::Done),
                path: None,
            },
        );
        h.core.handle_disconnect(h.now, a);
        h.drain();
        h.closes();
    }
    h.greet(1);
    h.msg(1, ClientToServer::Allocate);
    h.drain();
    assert_eq!(h.core.client_count(), 1);
    // One timer for the client, one for its nameplate.
    assert_eq!(h.core.timers.len(), 2);
}

#[test]
fn relay_token_only_once_both_paired_sides_ask() {
    let key = TokenKey::from_secret(&[5; 32]).unwrap();
    let config = Config {
        relay_key: Some(key.clone()),
        relay_token_ttl: Duration::from_secs(90),
        ..Config::default()
    };
    let mut h = Harness::new(config);
    h.core.handle_unix_time(1_700_000_000);
    // Claiming alone gives no token (paired() asserts none in
    // claimed and peer-joined)...
    let nameplate = h.paired();
    // ...nor does asking alone: a claimer that guessed the nameplate
    // but not the code never pairs, so the sender never asks.
    h.msg(2, ClientToServer::RelayRequest);
    h.msg(2, ClientToServer::RelayRequest);
    assert!(h.drain().is_empty());
    let token = both_ask(&mut h, 2, 1);
    let bytes = ferry_relay::token_from_hex(&token).expect("64 hex digits");
    // The relay's view: signed with the key, bound to this nameplate,
    // expiring one TTL after it was issued.
    let claims = key.verify(&bytes).expect("signed with the relay key");
    assert_eq!(claims.nameplate, nameplate);
    assert_eq!(claims.expires, 1_700_000_090);
    let other_key = TokenKey::from_secret(&[6; 32]).unwrap();
    assert_eq!(other_key.verify(&bytes), None);
    // Another pair gets another token.
    h.greet(3);
    h.greet(4);
    h.msg(3, ClientToServer::Allocate);
    let [(3, ServerToClient::Allocated { nameplate })] = h.drain()[..] else {
        panic!("no allocation");
    };
    h.msg(4, ClientToServer::Claim { nameplate });
    h.drain();
    assert_ne!(both_ask(&mut h, 3, 4), token);
    // Without a nameplate there is nothing to ask for.
    h.greet(5);
    h.msg(5, ClientToServer::RelayRequest);
    assert_eq!(error_code(&h.drain()), vec![(5, ErrorCode::NotClaimed)]);
    // A side alone (its peer not come yet) gets nothing either.
    h.msg(5, ClientToServer::Allocate);
    h.drain();
    h.msg(5, ClientToServer::RelayRequest);
    assert!(h.drain().is_empty());
}

#[test]
fn without_a_relay_key_the_answer_has_no_token() {
    let mut h = Harness::new(Config::default());
    h.paired();
    h.msg(1, ClientToServer::RelayRequest);
    h.msg(2, ClientToServer::RelayRequest);
    let none = ServerToClient::RelayToken {
        relay_token: None,
        relay_addr: None,
        relay_tls: None,
        relay_sha256: None,
    };
    assert_eq!(h.drain(), vec![(1, none.clone()), (2, none)]);
}

#[test]
fn a_pair_relay_is_named_with_every_token_and_only_with_one() {
    let relay = PairRelay {
        addr: "edge-1.example.org:443".into(),
        tls: true,
        sha256: None,
    };
    let config = Config {
        relay_key: Some(TokenKey::from_secret(&[5; 32]).unwrap()),
        pair_relay: Some(relay.clone()),
        ..Config::default()
    };
    let mut h = Harness::new(config);
    h.paired();
    both_ask(&mut h, 1, 2);
    h.msg(1, ClientToServer::RelayRequest);
    h.msg(2, ClientToServer::RelayRequest);
    let out = h.drain();
    assert_eq!(out.len(), 2, "{out:?}");
    for (_, answer) in out {
        let ServerToClient::RelayToken {
            relay_token: Some(_),
            relay_addr: Some(addr),
            relay_tls: Some(true),
            relay_sha256: None,
        } = answer
        else {
            panic!("the pair relay is not named: {answer:?}");
        };
        assert_eq!(addr, relay.addr);
    }
    // Without a key there is no token, so no relay to name.
    let mut h = Harness::new(Config {
        pair_relay: Some(relay),
        ..Config::default()
    });
    h.paired();
    h.msg(1, ClientToServer::RelayRequest);
    h.msg(2, ClientToServer::RelayRequest);
    for (_, answer) in h.drain() {
        assert!(
            matches!(
                answer,
                ServerToClient::RelayToken {
                    relay_token: None,
                    relay_addr: None,
                    ..
                }
            ),
            "{answer:?}"
        );
    }
}

#[test]
fn welcome_names_a_relay_on_another_host() {
    let config = Config {
        relay_key: Some(TokenKey::from_secret(&[5; 32]).unwrap()),
        relay_addr: Some("relay.example.org:443".into()),
        ..Config::default()
    };
    let mut h = Harness::new(config);
    h.core.handle_connect(h.now, 1, addr(1));
    h.msg(
        1,
        ClientToServer::Hello {
            protocol: PROTOCOL_VERSION,
            agent: "test".into(),
        },
    );
    let out = h.drain();
    let [(1, ServerToClient::Welcome { ref relay_addr, .. })] = out[..] else {
        panic!("no welcome: {out:?}");
    };
    assert_eq!(relay_addr.as_deref(), Some("relay.example.org:443"));
}

#[test]
fn relay_frame_on_signalling_connection_closes() {
    let mut h = Harness::new(Config::default());
    h.greet(1);
    h.msg(
        1,
        ClientToServer::Relay {
            protocol: 1,
            token: "00".repeat(32),
        },
    );
    assert_eq!(error_code(&h.drain()), vec![(1, ErrorCode::BadFrame)]);
    assert_eq!(h.closes(), vec![1]);
}

#[test]
fn server_full() {
    let config = Config {
        max_nameplates: 1,
        ..Config::default()
    };
    let mut h = Harness::new(config);
    h.greet(1);
    h.greet(2);
    h.msg(1, ClientToServer::Allocate);
    h.drain();
    h.msg(2, ClientToServer::Allocate);
    assert_eq!(error_code(&h.drain()), vec![(2, ErrorCode::ServerFull)]);
}

fn rejoin(h: &mut Harness, client: ClientId, channel: &str) -> Vec<(ClientId, ServerToClient)> {
    h.msg(
        client,
        ClientToServer::Rejoin {
            channel: channel.into(),
        },
    );
    h.drain()
}

const CHANNEL: &str = "00112233445566778899aabbccddeeff";

#[test]
fn rejoin_meets_the_peer_again_with_a_fresh_relay_token() {
    let mut h = Harness::new(Config {
        relay_key: Some(TokenKey::from_secret(&[5; 32]).unwrap()),
        ..Config::default()
    });
    h.greet(1);
    h.greet(2);
    let out = rejoin(&mut h, 1, CHANNEL);
    let [(1, ServerToClient::Allocated { nameplate })] = out[..] else {
        panic!("first rejoin should wait: {out:?}");
    };
    // Not reachable by claim.
    h.greet(3);
    h.msg(3, ClientToServer::Claim { nameplate });
    assert_eq!(
        error_code(&h.drain()),
        vec![(3, ErrorCode::UnknownNameplate)]
    );
    // A message sent while waiting reaches the peer once it is there.
    h.msg(
        1,
        ClientToServer::Send {
            body: "early".into(),
        },
    );
    assert!(h.drain().is_empty());
    let out = rejoin(&mut h, 2, CHANNEL);
    match &out[..] {
        [
            (
                2,
                ServerToClient::Claimed {
                    nameplate: n,
                    relay_token: None,
                },
            ),
            (1, ServerToClient::PeerJoined { relay_token: None }),
            (2, ServerToClient::Message { body }),
        ] if *n == nameplate && body == "early" => {}
        other => panic!("unexpected {other:?}"),
    }
    let token = both_ask(&mut h, 1, 2);
    // A third party on the same channel is refused.
    let out = rejoin(&mut h, 3, CHANNEL);
    assert_eq!(error_code(&out), vec![(3, ErrorCode::NameplateTaken)]);
    // One side drops and comes back: the other hears both, and a new
    // token is drawn.
    h.core.handle_disconnect(h.now, 2);
    let out = h.drain();
    assert!(
        matches!(&out[..], [(1, ServerToClient::PeerLeft { .. })]),
        "{out:?}"
    );
    h.greet(4);
    let out = rejoin(&mut h, 4, CHANNEL);
    assert!(
        matches!(
            &out[..],
            [
                (4, ServerToClient::Claimed { .. }),
                (1, ServerToClient::PeerJoined { .. })
            ]
        ),
        "{out:?}"
    );
    assert_ne!(both_ask(&mut h, 4, 1), token);
    // Both leave: the channel is gone, the next rejoin waits afresh.
    h.core.handle_disconnect(h.now, 1);
    h.core.handle_disconnect(h.now, 4);
    h.drain();
    assert_eq!(h.core.nameplate_count(), 0);
    h.greet(5);
    let out = rejoin(&mut h, 5, CHANNEL);
    assert!(
        matches!(&out[..], [(5, ServerToClient::Allocated { .. })]),
        "{out:?}"
    );
    let stats = h.core.stats();
    assert_eq!((stats.rejoin_channels, stats.rejoined), (2, 2));
    assert_eq!((stats.allocated, stats.claimed, stats.freed), (0, 0, 1));
    assert_eq!(stats.claims_unknown, 1);
}

#[test]
fn rejoin_refuses_bad_channels_and_double_holding() {
    let mut h = Harness::new(Config::default());
    h.greet(1);
    let out = rejoin(&mut h, 1, "short");
    assert_eq!(error_code(&out), vec![(1, ErrorCode::BadFrame)]);
    assert_eq!(h.closes(), vec![1]);
    h.greet(2);
    h.msg(2, ClientToServer::Allocate);
    h.drain();
    let out = rejoin(&mut h, 2, CHANNEL);
    assert_eq!(error_code(&out), vec![(2, ErrorCode::AlreadyClaimed)]);
    let out = rejoin(&mut h, 3, &CHANNEL.to_uppercase());
    assert!(out.is_empty(), "unknown client ignored");
}

fn release_reporting(h: &mut Harness, client: ClientId, path: PathOutcome) {
    h.msg(
        client,
        ClientToServer::Release {
            reason: None,
            path: Some(path),
        },
    );
    // What the release tells the other side (peer-left) is not the point.
    h.drain();
}

/// Both sides ask for the relay token (as they do once paired), without
/// a relay: the answer carries none.
fn both_paired(h: &mut Harness, first: ClientId, second: ClientId) {
    h.msg(first, ClientToServer::RelayRequest);
    h.msg(second, ClientToServer::RelayRequest);
    let out = h.drain();
    assert_eq!(out.len(), 2, "{out:?}");
}

#[test]
fn a_pairing_counts_its_path_once_though_both_sides_report_it() {
    let mut h = Harness::new(Config::default());
    h.paired();
    both_paired(&mut h, 1, 2);
    release_reporting(&mut h, 1, PathOutcome::Quic);
    release_reporting(&mut h, 2, PathOutcome::Quic);
    assert_eq!(h.core.nameplate_count(), 0);
    let paths = h.core.stats().paths;
    assert_eq!(paths.get(PathOutcome::Quic), 1);
    assert_eq!(paths.total(), 1);
    // The second side's report differs: still the first one counts.
    h.paired_again(3, 4);
    both_paired(&mut h, 3, 4);
    release_reporting(&mut h, 4, PathOutcome::MovedToDirect);
    release_reporting(&mut h, 3, PathOutcome::Relay);
    let paths = h.core.stats().paths;
    assert_eq!(paths.get(PathOutcome::MovedToDirect), 1);
    assert_eq!(paths.get(PathOutcome::Relay), 0);
    assert_eq!(paths.total(), 2);
    let counted: Vec<_> = paths.iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(
        counted,
        vec![(PathOutcome::Quic, 1), (PathOutcome::MovedToDirect, 1)]
    );
}

#[test]
fn a_report_after_a_silent_release_of_the_other_side_counts() {
    // An older peer releases without a report; the newer one's counts.
    let mut h = Harness::new(Config::default());
    h.paired();
    both_paired(&mut h, 1, 2);
    h.msg(
        2,
        ClientToServer::Release {
            reason: Some(ReleaseReason::Done),
            path: None,
        },
    );
    assert_eq!(h.core.stats().paths.total(), 0);
    release_reporting(&mut h, 1, PathOutcome::Lan);
    assert_eq!(h.core.stats().paths.get(PathOutcome::Lan), 1);
    assert_eq!(h.core.stats().paths.total(), 1);
}

#[test]
fn reports_from_clients_that_never_paired_are_not_counted() {
    let mut h = Harness::new(Config::default());
    // No nameplate at all.
    h.greet(1);
    release_reporting(&mut h, 1, PathOutcome::DirectTcp);
    // Alone on a nameplate.
    h.greet(2);
    h.msg(2, ClientToServer::Allocate);
    h.drain();
    release_reporting(&mut h, 2, PathOutcome::DirectTcp);
    // Claimed, but only one side asked for the relay token: the claimer
    // may be a stranger that guessed the nameplate, not the code.
    h.paired_again(3, 4);
    h.msg(4, ClientToServer::RelayRequest);
    h.drain();
    release_reporting(&mut h, 4, PathOutcome::DirectTcp);
    release_reporting(&mut h, 3, PathOutcome::DirectTcp);
    // A wrong code, reported along with the burn.
    h.paired_again(5, 6);
    h.msg(
        5,
        ClientToServer::Release {
            reason: Some(BAD_CODE),
            path: Some(PathOutcome::NoPath),
        },
    );
    assert_eq!(h.core.stats().burnt, 1);
    assert_eq!(h.core.stats().paths, PathCounts::default());
}

#[test]
fn reports_on_a_rejoin_channel_are_not_counted() {
    let mut h = Harness::new(Config::default());
    h.greet(1);
    h.greet(2);
    rejoin(&mut h, 1, CHANNEL);
    rejoin(&mut h, 2, CHANNEL);
    both_paired(&mut h, 1, 2);
    release_reporting(&mut h, 1, PathOutcome::Quic);
    release_reporting(&mut h, 2, PathOutcome::Quic);
    assert_eq!(h.core.stats().rejoined, 1);
    assert_eq!(h.core.stats().paths.total(), 0);
}

#[test]
fn an_outcome_a_newer_client_sends_counts_as_unknown() {
    let mut h = Harness::new(Config::default());
    h.paired();
    both_paired(&mut h, 1, 2);
    let mut buf = bytes::BytesMut::from(
        &b"{\"type\":\"release\",\"path\":\"pigeon\",\"reason\":\"done\"}\n"[..],
    );
    let release: ClientToServer = ferry_proto::signal::decode_frame(&mut buf)
        .unwrap()
        .unwrap();
    h.msg(2, release);
    // The release itself worked as ever.
    assert_eq!(
        h.drain(),
        vec![(
            1,
            ServerToClient::PeerLeft {
                reason: Some(ReleaseReason::Done)
            }
        )]
    );
    assert_eq!(h.closes(), vec![2]);
    assert_eq!(h.core.stats().paths.get(PathOutcome::Unknown), 1);
    assert_eq!(h.core.stats().paths.total(), 1);
}

/// Clustered: each directory request, in order, with nothing else queued.
fn requests(h: &mut Harness) -> Vec<DirectoryRequest> {
    std::iter::from_fn(|| h.core.poll_directory()).collect()
}

fn clustered() -> Harness {
    Harness::new(Config {
        clustered: true,
        ..Config::default()
    })
}

#[test]
fn single_instance_never_asks_a_directory() {
    let mut h = Harness::new(Config::default());
    let nameplate = h.paired();
    h.msg(
        2,
        ClientToServer::Release {
            reason: None,
            path: None,
        },
    );
    h.drain();
    h.msg(3, ClientToServer::Claim { nameplate });
    assert!(requests(&mut h).is_empty());
    assert!(h.core.poll_proxy().is_none());
}

#[test]
fn clustered_allocation_waits_for_the_directory_and_holds_frames() {
    let mut h = clustered();
    h.greet(1);
    h.msg(1, ClientToServer::Allocate);
    h.msg(1, ClientToServer::Ping { id: 9 });
    assert!(h.drain().is_empty(), "nothing before the directory answers");
    let [
        DirectoryRequest::Reserve {
            client: 1,
            key,
            ttl,
        },
    ] = &requests(&mut h)[..]
    else {
        panic!("no reserve");
    };
    assert_eq!(*ttl, Config::default().nameplate_ttl);
    assert!(matches!(key, DirectoryKey::Nameplate(_)), "{key:?}");
    // Another instance holds it: try again with another number.
    h.core.handle_directory(
        h.now,
        1,
        key.clone(),
        DirectoryAnswer::Elsewhere("b".into()),
    );
    let [DirectoryRequest::Reserve { key: second, .. }] = &requests(&mut h)[..] else {
        panic!("no second try");
    };
    assert!(h.drain().is_empty());
    h.core
        .handle_directory(h.now, 1, second.clone(), DirectoryAnswer::Reserved);
    let DirectoryKey::Nameplate(number) = second.clone() else {
        panic!()
    };
    assert_eq!(
        h.drain(),
        vec![
            (1, ServerToClient::Allocated { nameplate: number }),
            (1, ServerToClient::Pong { id: 9 }),
        ]
    );
    // Gone: the directory hears of it.
    h.msg(
        1,
        ClientToServer::Release {
            reason: None,
            path: None,
        },
    );
    assert_eq!(
        requests(&mut h),
        vec![DirectoryRequest::Release {
            key: DirectoryKey::Nameplate(number)
        }]
    );
}

#[test]
fn clustered_allocation_gives_up_after_bounded_tries() {
    let mut h = clustered();
    h.greet(1);
    h.msg(1, ClientToServer::Allocate);
    for _ in 0..cluster::RESERVE_TRIES {
        let [DirectoryRequest::Reserve { key, .. }] = &requests(&mut h)[..] else {
            break;
        };
        h.core
            .handle_directory(h.now, 1, key.clone(), DirectoryAnswer::Here);
    }
    let out = h.drain();
    assert!(
        matches!(
            &out[..],
            [(
                1,
                ServerToClient::Error {
                    code: ErrorCode::ServerFull,
                    ..
                }
            )]
        ),
        "{out:?}"
    );
    assert!(requests(&mut h).is_empty());
}

#[test]
fn clustered_claim_of_a_nameplate_elsewhere_is_proxied_with_its_frames() {
    let mut h = clustered();
    h.greet(2);
    h.msg(2, ClientToServer::Claim { nameplate: 31 });
    h.msg(
        2,
        ClientToServer::Send {
            body: "early".into(),
        },
    );
    assert_eq!(
        requests(&mut h),
        vec![DirectoryRequest::Lookup {
            client: 2,
            key: DirectoryKey::Nameplate(31)
        }]
    );
    h.core.handle_directory(
        h.now,
        2,
        DirectoryKey::Nameplate(31),
        DirectoryAnswer::Elsewhere("home".into()),
    );
    let proxy = h.core.poll_proxy().unwrap();
    assert_eq!(proxy.home, "home");
    assert_eq!(proxy.addr, addr(40002));
    assert_eq!(
        proxy.frames,
        vec![
            ClientToServer::Claim { nameplate: 31 },
            ClientToServer::Send {
                body: "early".into()
            },
        ]
    );
    assert_eq!(h.core.client_count(), 0, "forgotten here");
    assert!(h.closes().is_empty(), "not closed: the driver proxies it");
}

#[test]
fn clustered_claim_unknown_everywhere_counts_as_a_failed_claim() {
    let mut h = clustered();
    h.greet(2);
    for _ in 0..3 {
        h.msg(2, ClientToServer::Claim { nameplate: 44 });
        h.core
            .handle_directory(h.now, 2, DirectoryKey::Nameplate(44), DirectoryAnswer::Free);
    }
    let codes: Vec<_> = h
        .drain()
        .into_iter()
        .filter_map(|(_, m)| match m {
            ServerToClient::Error { code, .. } => Some(code),
            _ => None,
        })
        .collect();
    use ErrorCode::{RateLimited, UnknownNameplate};
    assert_eq!(
        codes,
        vec![
            UnknownNameplate,
            UnknownNameplate,
            UnknownNameplate,
            RateLimited
        ]
    );
    assert_eq!(h.closes(), vec![2], "closed after three failed claims");
    assert_eq!(h.core.stats().claims_unknown, 3);
}

#[test]
fn remote_client_at_the_home_claims_without_a_lookup() {
    let mut h = clustered();
    h.greet(1);
    h.msg(1, ClientToServer::Allocate);
    let [DirectoryRequest::Reserve { key, .. }] = &requests(&mut h)[..] else {
        panic!()
    };
    h.core
        .handle_directory(h.now, 1, key.clone(), DirectoryAnswer::Reserved);
    let DirectoryKey::Nameplate(nameplate) = key.clone() else {
        panic!()
    };
    h.drain();
    h.core.handle_remote_connect(h.now, 50, addr(9));
    h.msg(50, ClientToServer::Claim { nameplate });
    assert_eq!(
        h.drain(),
        vec![
            (
                50,
                ServerToClient::Claimed {
                    nameplate,
                    relay_token: None
                }
            ),
            (1, ServerToClient::PeerJoined { relay_token: None }),
        ]
    );
    // A claim of a number not here, from a remote client: unknown, no lookup.
    h.core.handle_remote_connect(h.now, 51, addr(10));
    h.msg(51, ClientToServer::Claim { nameplate: 77 });
    assert!(requests(&mut h).is_empty());
    assert!(matches!(
        &h.drain()[..],
        [(
            51,
            ServerToClient::Error {
                code: ErrorCode::UnknownNameplate,
                ..
            }
        )]
    ));
    // Bad code: burnt, and the directory hears of it.
    h.msg(
        50,
        ClientToServer::Release {
            reason: Some(ReleaseReason::BadCode),
            path: None,
        },
    );
    assert_eq!(
        requests(&mut h),
        vec![DirectoryRequest::Release {
            key: DirectoryKey::Nameplate(nameplate)
        }]
    );
    assert_eq!(h.core.stats().burnt, 1);
}

#[test]
fn reservation_for_a_client_that_left_is_given_back() {
    let mut h = clustered();
    h.greet(1);
    h.msg(1, ClientToServer::Allocate);
    let [DirectoryRequest::Reserve { key, .. }] = &requests(&mut h)[..] else {
        panic!()
    };
    h.core.handle_disconnect(h.now, 1);
    h.core
        .handle_directory(h.now, 1, key.clone(), DirectoryAnswer::Reserved);
    assert_eq!(
        requests(&mut h),
        vec![DirectoryRequest::Release { key: key.clone() }]
    );
}

#[test]
fn a_peer_back_on_a_channel_renews_it_in_the_directory() {
    let mut h = clustered();
    let channel = "ab".repeat(16);
    let ttl = Config::default().nameplate_ttl;
    h.greet(1);
    h.msg(
        1,
        ClientToServer::Rejoin {
            channel: channel.clone(),
        },
    );
    let key = DirectoryKey::Channel(channel.clone());
    assert_eq!(
        requests(&mut h),
        vec![DirectoryRequest::Reserve {
            client: 1,
            key: key.clone(),
            ttl
        }]
    );
    h.core
        .handle_directory(h.now, 1, key.clone(), DirectoryAnswer::Reserved);
    h.drain();
    // The peer comes back through another instance, proxied here.
    h.core.handle_remote_connect(h.now, 50, addr(9));
    h.msg(50, ClientToServer::Rejoin { channel });
    assert!(matches!(
        &h.drain()[..],
        [
            (50, ServerToClient::Claimed { .. }),
            (1, ServerToClient::PeerJoined { .. })
        ]
    ));
    assert_eq!(requests(&mut h), vec![DirectoryRequest::Renew { key, ttl }]);
}

#[test]
fn two_peers_rejoining_at_once_on_one_instance_meet() {
    // Both ask the directory before either answer came back: the second
    // answer must join the channel the first opened, not open another.
    let mut h = clustered();
    let channel = "cd".repeat(16);
    let key = DirectoryKey::Channel(channel.clone());
    for client in [1, 2] {
        h.greet(client);
        h.msg(
            client,
            ClientToServer::Rejoin {
                channel: channel.clone(),
            },
        );
    }
    assert_eq!(requests(&mut h).len(), 2, "both asked");
    h.core
        .handle_directory(h.now, 1, key.clone(), DirectoryAnswer::Reserved);
    h.drain();
    h.core
        .handle_directory(h.now, 2, key.clone(), DirectoryAnswer::Here);
    assert!(
        matches!(
            &h.drain()[..],
            [
                (2, ServerToClient::Claimed { .. }),
                (1, ServerToClient::PeerJoined { .. })
            ]
        ),
        "the second joined the first"
    );
    assert_eq!(h.core.stats().rejoined, 1);
}
