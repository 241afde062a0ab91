//! One side's journey, start to end: the sender ([`Sender`]) and the
//! receiver ([`receive`]) connect, pair, gather, race and return a
//! [`PeerLink`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_connect::Identity;
use ferry_connect::race::{PathKind, PeerStream};
use ferry_proto::code::Code;
use ferry_proto::pairing::{Role, SecureChannel};
use ferry_proto::peer::{
    Candidate, CandidateKind, FEATURE_CANDIDATES, NetworkHint, PeerToPeer, Transport,
};
use ferry_rendezvous::{SignalClient, SignalError, SignalEvent, Welcome};
use tracing::{debug, info};

use crate::*;

/// The sender's side, in two steps so the caller can show the code while
/// waiting: [`Sender::start`] then [`Sender::connect`].
pub struct Sender {
    server: String,
    signal: SignalClient,
    code: Code,
    welcome: Welcome,
    options: SessionOptions,
    gathering: Gathering,
}

impl Sender {
    /// Connects to the server, allocates a nameplate (a fresh one, or the
    /// one of `chosen`, a code the user picked) and starts gathering
    /// candidates while the receiver is on its way.
    pub async fn start(
        server: &str,
        chosen: Option<&str>,
        options: SessionOptions,
    ) -> Result<Sender, SessionError> {
        Self::start_with(server, chosen, options, |_| {}).await
    }

    /// Like [`start`](Self::start), telling `on_wait` about retries of the
    /// first connection ([`Backoff::SERVER_CONNECT`]).
    pub async fn start_with(
        server: &str,
        chosen: Option<&str>,
        options: SessionOptions,
        mut on_wait: impl FnMut(Waiting),
    ) -> Result<Sender, SessionError> {
        let chosen = chosen
            .map(|text| {
                text.parse::<Code>()
                    .map_err(|problem| SessionError::BadCode {
                        text: text.to_string(),
                        problem,
                    })
            })
            .transpose()?;
        let (mut signal, welcome) =
            connect_signal_retrying(server, options.proxy, &mut on_wait).await?;
        let code = match chosen {
            Some(code) => {
                signal.reserve(code.nameplate).await?;
                code
            }
            None => {
                let nameplate = signal.allocate().await?;
                Code::generate(nameplate, &mut rand::thread_rng())
            }
        };
        let gathering = start_gathering(&welcome, server, true, !options.no_upnp);
        Ok(Sender {
            server: server.to_string(),
            signal,
            code,
            welcome,
            options,
            gathering,
        })
    }

    /// The code to give to the receiver.
    pub fn code(&self) -> &Code {
        &self.code
    }

    /// What the server told us about ourselves.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Waits for the receiver (as long as the server keeps the nameplate),
    /// pairs, and races the paths. `on_wait` hears when the receiver has
    /// claimed the nameplate ([`Waiting::Joined`]), and when the server
    /// went away and we reconnect ([`Waiting::ServerLost`],
    /// [`Waiting::ServerBack`]): a restarted server has forgotten the
    /// nameplate, so we reserve it again, and the code stays good.
    pub async fn connect(self, mut on_wait: impl FnMut(Waiting)) -> Result<PeerLink, SessionError> {
        let Sender {
            server,
            mut signal,
            code,
            mut welcome,
            options,
            gathering,
        } = self;
        // Wait for the receiver to claim the nameplate.
        loop {
            match signal.recv().await {
                Ok(SignalEvent::PeerJoined) => break,
                Ok(SignalEvent::PeerLeft(reason)) => {
                    gathering.abort();
                    return Err(SessionError::PeerGone(PeerGone::LeftBeforePairing(reason)));
                }
                Ok(SignalEvent::Message(_)) => debug!("message before the peer joined; ignored"),
                Err(error) if error.is_connection_lost() => {
                    info!(%error, "lost the rendezvous server while waiting; reconnecting");
                    match hold_again(&server, options.proxy, code.nameplate, error, &mut on_wait)
                        .await
                    {
                        Ok((again, new_welcome)) => {
                            // Simultaneous open uses the new connection's
                            // mapping; the gathered UDP socket stays.
                            signal = again;
                            welcome = new_welcome;
                        }
                        Err(error) => {
                            gathering.abort();
                            return Err(error);
                        }
                    }
                }
                Err(error) => {
                    gathering.abort();
                    return Err(error.into());
                }
            }
        }
        on_wait(Waiting::Joined);
        let started = Instant::now();
        let (signal, mut channel) = pair(signal, &code, Role::Sender).await?;
        let mut link = run_session(
            &server,
            signal,
            &mut channel,
            welcome,
            gathering,
            options,
            true,
            started,
            true,
        )
        .await?;
        link.rejoin = Some(Rejoin::new(&server, channel, true, options));
        Ok(link)
    }
}

/// The receiver's side: claims the nameplate, pairs, races the paths.
pub async fn receive(
    server: &str,
    code: &Code,
    options: SessionOptions,
) -> Result<PeerLink, SessionError> {
    receive_with(server, code, options, |_| {}).await
}

/// Like [`receive`], telling `on_wait` about retries of the connection
/// and about a server that restarted moments ago
/// ([`Waiting::SenderReturning`]).
pub async fn receive_with(
    server: &str,
    code: &Code,
    options: SessionOptions,
    mut on_wait: impl FnMut(Waiting),
) -> Result<PeerLink, SessionError> {
    let (mut signal, welcome) =
        connect_signal_retrying(server, options.proxy, &mut on_wait).await?;
    // Gather while pairing: the receiver listens and maps its ports too,
    // so that a sender whose own gateway maps nothing can connect to it.
    let gathering = start_gathering(&welcome, server, true, !options.no_upnp);
    let claimed = match signal.claim(code.nameplate).await {
        Err(SignalError::UnknownNameplate { .. })
            if welcome.uptime.is_some_and(|up| up < RESTARTED_WITHIN) =>
        {
            // A server that has just restarted: a sender that waited on it
            // is reconnecting and reserves the nameplate again.
            let up = welcome.uptime.unwrap_or_default();
            let wait = RESTART_GRACE.saturating_sub(up).max(Duration::from_secs(1));
            info!(?up, ?wait, "the server restarted moments ago; asking again");
            on_wait(Waiting::SenderReturning { wait });
            tokio::time::sleep(wait).await;
            signal.claim(code.nameplate).await
        }
        other => other,
    };
    if let Err(error) = claimed {
        gathering.abort();
        return Err(error.into());
    }
    let started = Instant::now();
    let (signal, mut channel) = pair(signal, code, Role::Receiver).await?;
    let mut link = run_session(
        server,
        signal,
        &mut channel,
        welcome,
        gathering,
        options,
        false,
        started,
        true,
    )
    .await?;
    link.rejoin = Some(Rejoin::new(server, channel, false, options));
    Ok(link)
}

/// Exchanges hellos, races the paths, releases the nameplate; reports
/// the path to the server when `reporting` (the pairing's first race,
/// not a rejoin: see [`report`](crate::report)).
// `server` joined the other seven for the proxy: it names the server the
// relay may be reached by; `reporting` came with the path reports.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_session(
    server: &str,
    mut signal: SignalClient,
    channel: &mut SecureChannel,
    mut welcome: Welcome,
    gathering: Gathering,
    options: SessionOptions,
    controlling: bool,
    started: Instant,
    reporting: bool,
) -> Result<PeerLink, SessionError> {
    // Paired (or rejoined) on both sides: only now does the server hand
    // out the relay token, once both of us asked; in a cluster it names
    // the relay both of us join.
    signal.request_relay_token().await?;
    signal.follow_pair_relay(&mut welcome).await?;
    let gathered = gathering
        .await
        .map_err(|e| SessionError::Io(std::io::Error::other(e)))??;
    let identity = Arc::new(Identity::generate()?);
    let mut ours = gathered.candidates.clone();
    // A peer that takes candidates during the race gets our hello at once,
    // and the UPnP mappings when they are done; an older one gets them in
    // the hello, if they are done within UPNP_WAIT.
    let (mapped, pending) = if channel.peer_understands(FEATURE_CANDIDATES) {
        upnp_if_done(gathered.upnp).await
    } else {
        (upnp_result(gathered.upnp).await, None)
    };
    let mut guard = None;
    if let Some(mapped) = mapped {
        ours.extend(mapped.candidates);
        guard = mapped.guard;
    }
    let mut upnp = Upnp::new(pending, guard, welcome.server_addr);
    // Through a proxy, the server observed the proxy's mapping, not ours.
    let proxied = server_proxy(server, options.proxy).is_some();
    if !proxied {
        ours.push(Candidate {
            addr: welcome.observed_addr,
            transport: Transport::Tcp,
            kind: CandidateKind::ServerObserved,
            priority: ferry_connect::priority::of(
                ferry_connect::priority::Origin::ServerObserved,
                Transport::Tcp,
            ),
        });
    }
    let ours = ferry_connect::address::offered_candidates(ours, welcome.server_addr);
    let network = NetworkHint {
        udp: gathered.udp_mapping,
        tcp_port_kept: (!proxied)
            .then(|| welcome.observed_addr.port() == welcome.local_addr.port()),
        udp_ports: gathered.udp_ports,
    };
    let hello = PeerToPeer::Hello {
        cert_fingerprint: identity.fingerprint(),
        candidates: ours.clone(),
        network,
    };
    signal.send(channel.seal(&hello)).await?;
    let (peer_fingerprint, theirs, their_network) = receive_hello(&mut signal, channel).await?;
    let theirs = ferry_connect::address::peer_candidates(theirs, welcome.observed_addr);
    let our_ips: Vec<std::net::IpAddr> = ferry_nat::interfaces().iter().map(|i| i.addr).collect();
    let theirs = ferry_connect::address::on_our_links(theirs, &our_ips);
    debug!(?theirs, ?their_network, "peer candidates");
    let hopeless = direct_hopeless(&network, &their_network, &ours, &theirs);
    let no_common_family = !crate::plan::share_a_family(&ours, &theirs);
    if no_common_family {
        info!("no address family in common with the peer: the relay starts at once");
    }
    if let Some(why) = &hopeless {
        info!(%why, "no direct path can work: the relay starts at once");
    }
    let spray = spray_role(&network, &their_network, &theirs);
    if let Some(spray) = &spray {
        info!(
            ?spray,
            "one NAT maps a port per destination: port spraying instead of a plain punch"
        );
    }
    let relay_token = signal.relay_token();
    if options.force_path == Some(PathKind::Relay) && relay_token.is_none() {
        let report = reporting.then_some(ferry_proto::signal::PathOutcome::NoPath);
        let _ = signal.release_reporting(None, report).await;
        return Err(SessionError::NoPath {
            failures: Vec::new(),
            relay_forced: true,
        });
    }
    let plan = Plan {
        relay_route: relay_route(server, &welcome, options.proxy),
        identity,
        peer_fingerprint,
        theirs,
        welcome,
        punch_key: channel.derive_secret(ferry_connect::punch::PROBE_KEY_CONTEXT),
        relay_token,
        // Shown as our end of a QUIC path: the socket itself is bound to
        // the wildcard address.
        udp_mapped: gathered
            .candidates
            .iter()
            .find(|c| c.transport == Transport::Udp && c.kind == CandidateKind::Stun)
            .map(|c| c.addr),
        controlling,
        options,
        hopeless: hopeless.is_some() || no_common_family,
        spray,
        spray_key: channel.derive_secret(ferry_connect::spray::SPRAY_KEY_CONTEXT),
        can_move: channel.peer_understands(ferry_proto::peer::FEATURE_MOVE),
    };
    let mut result = plan
        .race(
            gathered.udp,
            gathered.listener,
            &mut signal,
            channel,
            &mut upnp,
        )
        .await;
    let own_mapping = upnp.mapped_by();
    upnp.close().await;
    let report = release_after_race(signal, &mut result, reporting).await;
    let Won {
        path: established,
        lost,
        upgrade,
    } = result?;
    for (kind, why) in &lost {
        info!(path = %kind, %why, "path lost");
    }
    match &established.stream {
        PeerStream::Tls(tls) => detect_breaks(tls.get_ref().0),
        PeerStream::Relayed(tls) => detect_breaks(tls.get_ref().0.tcp()),
        PeerStream::Quic(_) => {}
    }
    let relay_reason = (established.kind == PathKind::Relay).then(|| match hopeless {
        _ if options.force_path == Some(PathKind::Relay) => RelayReason::Forced,
        Some(why) => RelayReason::Hopeless(why),
        None if no_common_family => RelayReason::NoCommonFamily,
        None => RelayReason::NoneAnswered {
            within: started.elapsed(),
            failed: lost.clone(),
        },
    });
    Ok(PeerLink {
        stream: established.stream,
        path: established.kind,
        local: established.local,
        remote: established.remote,
        connect_time: started.elapsed(),
        lost,
        relay_reason,
        relay_limits: established.relay_limits,
        found_by: match established.found_by {
            // From outside our NAT, only through the port it mapped for us.
            None if established.accepted && established.kind == PathKind::Tcp => {
                own_mapping.map(|protocol| FoundBy::OwnPortMapping { protocol })
            }
            other => other,
        },
        rejoin: None,
        upgrade,
        report,
    })
}

/// Makes a broken TCP path fail within about [`TCP_DEAD_AFTER`] instead of
/// hanging: keepalive probes while we only read, and a user timeout while
/// our data goes unacknowledged (a NAT that lost its state, a link down).
pub(crate) fn detect_breaks(tcp: &tokio::net::TcpStream) {
    let socket = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2))
        .with_retries(4);
    if let Err(error) = socket.set_tcp_keepalive(&keepalive) {
        debug!(%error, "cannot enable TCP keepalive");
    }
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "fuchsia"))]
    if let Err(error) = socket.set_tcp_user_timeout(Some(TCP_DEAD_AFTER)) {
        debug!(%error, "cannot set the TCP user timeout");
    }
}

#[cfg(test)]
mod tests;
