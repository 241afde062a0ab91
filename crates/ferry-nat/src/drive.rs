//! One tokio driver for every sans-IO machine that talks over one UDP
//! socket: a STUN transaction ([`binding_udp`](crate::stun::binding_udp)),
//! NAT behaviour discovery ([`discover_udp`](crate::behaviour::discover_udp))
//! and hole punching (`ferry_connect::punch`).
//!
//! ```text
//! loop
//!   poll_transmit ──▶ send_to      each send bounded; a failed one is only
//!                                  logged: the machine's schedule resends
//!   poll_output   ──▶ Some(out)    return it (after the sends above)
//!   poll_timeout  ──▶ None         stalled: return None
//!   wait for whichever comes first:
//!     the deadline  ──▶ handle_timeout(now)
//!     a datagram    ──▶ handle_datagram(now, from, bytes)
//!     an input      ──▶ on_input(machine, now, input)   (drive_udp_with only:
//!                       e.g. targets learnt late; once the inbox closes,
//!                       the drive goes on without it)
//!     a receive error (ICMP from an earlier send): pause, then go on
//! ```
//!
//! On a dual-stack socket (IPv6, bound to `[::]`) the machine still
//! speaks plain IPv4 addresses: IPv4 destinations are sent IPv4-mapped
//! and IPv4-mapped sources are handed over as IPv4
//! ([`for_socket`](crate::addr::for_socket), [`canonical`](crate::addr::canonical)).
//!
//! The clock is tokio's, handed to the machine as a [`std::time::Instant`],
//! so `tokio::time::pause` drives the machine in virtual time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

/// A datagram a sans-IO machine asks its driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub dst: SocketAddr,
    /// The bytes to send.
    pub payload: Vec<u8>,
}

/// A sans-IO state machine that [`drive_udp`] can run on one UDP socket.
///
/// Time is always an argument; the machine never reads a clock.
pub trait UdpMachine {
    /// What the machine ends with, e.g. a STUN transaction's result.
    type Output;

    /// The next datagram to send, if any.
    fn poll_transmit(&mut self) -> Option<Transmit>;

    /// The outcome, once there is one; the driver returns it.
    fn poll_output(&mut self) -> Option<Self::Output>;

    /// When [`handle_timeout`](Self::handle_timeout) must next be called;
    /// `None` when the machine waits for nothing.
    fn poll_timeout(&self) -> Option<Instant>;

    /// Runs the timers due at `now`.
    fn handle_timeout(&mut self, now: Instant);

    /// Feeds a datagram that arrived from `from`. Datagrams that are not
    /// the machine's are its to ignore; the driver drops them either way.
    fn handle_datagram(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]);
}

/// How [`drive_udp`] treats the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriveOptions {
    /// Names the machine in log lines ("STUN", "hole punching", ...).
    pub name: &'static str,
    /// The receive buffer's length: a longer datagram is read cut to this
    /// length (the machine rejects it), never an error.
    pub buffer_len: usize,
    /// The longest one send may wait for room in the socket's buffer; a
    /// stuck send must not hold up the machine's timers.
    pub send_timeout: Duration,
    /// The pause after a receive error, so that a persistent one does not
    /// turn the loop into a spin.
    pub receive_error_pause: Duration,
}

impl DriveOptions {
    /// The defaults under `name`: a 2048-byte buffer, sends bounded by one
    /// second, a 10 ms pause after a receive error.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            buffer_len: 2048,
            send_timeout: Duration::from_secs(1),
            receive_error_pause: Duration::from_millis(10),
        }
    }
}

/// Runs `machine` on `socket` until it has an output, and returns it; `None`
/// when the machine stalls (no output and no timer), which a well-behaved
/// machine never does.
///
/// The socket must not be connected (answers may come from other
/// addresses) and must not be read by anyone else meanwhile: every datagram
/// that arrives goes to the machine. Everything the machine queued is sent
/// before its output is returned, so a last answer (an acknowledgement)
/// still leaves.
pub async fn drive_udp<M: UdpMachine>(
    socket: &UdpSocket,
    machine: &mut M,
    options: DriveOptions,
) -> Option<M::Output> {
    drive(
        socket,
        machine,
        options,
        None::<(&mut mpsc::Receiver<()>, fn(&mut M, Instant, ()))>,
    )
    .await
}

/// [`drive_udp`], also handing the machine what arrives on `inputs` while
/// it runs, through `on_input(machine, now, input)`: what the machine
/// learns from elsewhere meanwhile (e.g. a peer's address that came late
/// over signalling). When every sender of `inputs` is gone, the drive goes
/// on without it.
pub async fn drive_udp_with<M: UdpMachine, T>(
    socket: &UdpSocket,
    machine: &mut M,
    options: DriveOptions,
    inputs: &mut mpsc::Receiver<T>,
    on_input: impl FnMut(&mut M, Instant, T),
) -> Option<M::Output> {
    drive(socket, machine, options, Some((inputs, on_input))).await
}

/// The one loop behind [`drive_udp`] and [`drive_udp_with`].
async fn drive<M: UdpMachine, T, F: FnMut(&mut M, Instant, T)>(
    socket: &UdpSocket,
    machine: &mut M,
    options: DriveOptions,
    mut inputs: Option<(&mut mpsc::Receiver<T>, F)>,
) -> Option<M::Output> {
    let name = options.name;
    let mut buffer = vec![0u8; options.buffer_len];
    let local = socket.local_addr().ok();
    loop {
        while let Some(transmit) = machine.poll_transmit() {
            let dst = transmit.dst;
            let to = local.map_or(dst, |local| crate::addr::for_socket(local, dst));
            match tokio::time::timeout(options.send_timeout, socket.send_to(&transmit.payload, to))
                .await
            {
                Ok(Ok(_)) => {}
                // A transient error (e.g. ICMP-induced) is retried by the
                // machine's schedule; a persistent one ends in its timeout.
                Ok(Err(e)) => debug!(%dst, "{name}: send failed: {e}"),
                Err(_) => debug!(%dst, "{name}: send timed out"),
            }
        }
        if let Some(output) = machine.poll_output() {
            return Some(output);
        }
        let deadline = machine.poll_timeout()?;
        let inbox_open = inputs.is_some();
        let input = async {
            match inputs.as_mut() {
                Some((inbox, _)) => inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                machine.handle_timeout(now());
            }
            input = input, if inbox_open => match (input, inputs.as_mut()) {
                (Some(input), Some((_, on_input))) => on_input(machine, now(), input),
                _ => inputs = None,
            },
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, from)) => {
                    machine.handle_datagram(now(), crate::addr::canonical(from), &buffer[..len]);
                }
                Err(e) => {
                    // Windows and some Linux setups report ICMP port
                    // unreachable from an earlier send as a receive error:
                    // one dead destination must not end the machine.
                    debug!("{name}: receive error: {e}");
                    tokio::time::sleep(options.receive_error_pause).await;
                }
            },
        }
    }
}

/// Tokio's clock, as the machines take it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    async fn bind() -> (UdpSocket, SocketAddr) {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = socket.local_addr().unwrap();
        (socket, addr)
    }

    /// Sends `ping` to each destination in turn, resends to the last one
    /// every `resend` until `give_up`, and finishes on the first datagram
    /// that says `pong`.
    struct Pinger {
        queue: Vec<SocketAddr>,
        last: SocketAddr,
        resend: Duration,
        next: Instant,
        give_up: Instant,
        output: Option<Result<(SocketAddr, Vec<u8>), u32>>,
        sends: u32,
        seen: Vec<Vec<u8>>,
    }

    impl Pinger {
        fn new(destinations: &[SocketAddr], resend: Duration, give_up: Duration) -> Self {
            let start = now();
            Pinger {
                queue: destinations.iter().rev().copied().collect(),
                last: *destinations.last().unwrap(),
                resend,
                next: start + resend,
                give_up: start + give_up,
                output: None,
                sends: 0,
                seen: Vec::new(),
            }
        }
    }

    impl UdpMachine for Pinger {
        type Output = Result<(SocketAddr, Vec<u8>), u32>;

        fn poll_transmit(&mut self) -> Option<Transmit> {
            let dst = self.queue.pop()?;
            self.sends += 1;
            Some(Transmit {
                dst,
                payload: b"ping".to_vec(),
            })
        }

        fn poll_output(&mut self) -> Option<Self::Output> {
            self.output.take()
        }

        fn poll_timeout(&self) -> Option<Instant> {
            Some(self.next.min(self.give_up))
        }

        fn handle_timeout(&mut self, now: Instant) {
            if now >= self.give_up {
                self.output = Some(Err(self.sends));
            } else if now >= self.next {
                self.queue.push(self.last);
                self.next = now + self.resend;
            }
        }

        fn handle_datagram(&mut self, _now: Instant, from: SocketAddr, bytes: &[u8]) {
            self.seen.push(bytes.to_vec());
            if bytes == b"pong" {
                self.output = Some(Ok((from, bytes.to_vec())));
            }
        }
    }

    /// Answers every datagram with `pong`, after some noise.
    async fn echo(socket: UdpSocket) {
        let mut buffer = [0u8; 64];
        while let Ok((_, from)) = socket.recv_from(&mut buffer).await {
            socket.send_to(b"noise", from).await.unwrap();
            socket.send_to(b"pong", from).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_dual_stack_socket_speaks_plain_ipv4_to_the_machine() {
        // A dual-stack socket ([::], not IPv6-only) where this host has one;
        // hosts without IPv6 have nothing to test.
        let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, None);
        let Ok(socket) = socket else { return };
        socket.set_only_v6(false).unwrap();
        if socket
            .bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)).into())
            .is_err()
        {
            return;
        }
        socket.set_nonblocking(true).unwrap();
        let client = UdpSocket::from_std(socket.into()).unwrap();
        let (server, server_addr) = bind().await;
        tokio::spawn(echo(server));
        let mut machine = Pinger::new(
            &[server_addr],
            Duration::from_secs(1),
            Duration::from_secs(10),
        );
        let output = drive_udp(&client, &mut machine, DriveOptions::new("test")).await;
        // Sent to a plain IPv4 address, answered from it as IPv4 (not
        // ::ffff:127.0.0.1).
        assert_eq!(output, Some(Ok((server_addr, b"pong".to_vec()))));
    }

    #[tokio::test]
    async fn finishes_on_the_answer_from_a_second_socket() {
        let (client, _) = bind().await;
        let (server, server_addr) = bind().await;
        tokio::spawn(echo(server));
        let mut machine = Pinger::new(
            &[server_addr],
            Duration::from_secs(1),
            Duration::from_secs(10),
        );
        let output = drive_udp(&client, &mut machine, DriveOptions::new("test")).await;
        assert_eq!(output, Some(Ok((server_addr, b"pong".to_vec()))));
        assert_eq!(machine.seen, [b"noise".to_vec(), b"pong".to_vec()]);
    }

    #[tokio::test]
    async fn a_failed_send_does_not_end_the_drive() {
        let (client, _) = bind().await;
        let (server, server_addr) = bind().await;
        tokio::spawn(echo(server));
        // An IPv6 destination from an IPv4 socket fails at once, locally.
        let unsendable = SocketAddr::from((Ipv6Addr::LOCALHOST, 9));
        assert!(client.send_to(b"x", unsendable).await.is_err());
        let mut machine = Pinger::new(
            &[unsendable, server_addr],
            Duration::from_secs(1),
            Duration::from_secs(10),
        );
        let output = drive_udp(&client, &mut machine, DriveOptions::new("test")).await;
        assert_eq!(output, Some(Ok((server_addr, b"pong".to_vec()))));
        assert_eq!(machine.sends, 2);
    }

    #[tokio::test]
    async fn an_input_that_arrives_meanwhile_reaches_the_machine() {
        let (client, _) = bind().await;
        let (silent, silent_addr) = bind().await;
        let (server, server_addr) = bind().await;
        tokio::spawn(echo(server));
        let mut machine = Pinger::new(
            &[silent_addr],
            Duration::from_millis(200),
            Duration::from_secs(10),
        );
        let (late, mut inbox) = mpsc::channel(4);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            late.send(server_addr).await.unwrap();
            // The sender goes away here: the drive goes on without it.
        });
        let output = drive_udp_with(
            &client,
            &mut machine,
            DriveOptions::new("test"),
            &mut inbox,
            |machine: &mut Pinger, _now, addr| {
                machine.last = addr;
                machine.queue.push(addr);
            },
        )
        .await;
        assert_eq!(output, Some(Ok((server_addr, b"pong".to_vec()))));
        drop(silent);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_inbox_does_not_end_the_drive() {
        let (client, _) = bind().await;
        let (_silent, silent_addr) = bind().await;
        let mut machine = Pinger::new(
            &[silent_addr],
            Duration::from_millis(500),
            Duration::from_millis(1750),
        );
        let (closed, mut inbox) = mpsc::channel::<SocketAddr>(1);
        drop(closed);
        let output = drive_udp_with(
            &client,
            &mut machine,
            DriveOptions::new("test"),
            &mut inbox,
            |_: &mut Pinger, _, _| unreachable!("nothing was sent"),
        )
        .await;
        assert_eq!(output, Some(Err(4)), "the machine's own schedule ended it");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_on_the_machines_schedule_when_nobody_answers() {
        let (client, _) = bind().await;
        let (silent, silent_addr) = bind().await;
        let started = tokio::time::Instant::now();
        let mut machine = Pinger::new(
            &[silent_addr],
            Duration::from_millis(500),
            Duration::from_millis(1750),
        );
        let output = drive_udp(&client, &mut machine, DriveOptions::new("test")).await;
        // Sends at 0, 0.5, 1 and 1.5 s; gives up at 1.75 s of virtual time.
        assert_eq!(output, Some(Err(4)));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(1750) && waited < Duration::from_millis(1760),
            "{waited:?}"
        );
        let mut buffer = [0u8; 16];
        for _ in 0..4 {
            let (len, _) = silent.try_recv_from(&mut buffer).expect("a ping");
            assert_eq!(&buffer[..len], b"ping");
        }
        assert!(silent.try_recv_from(&mut buffer).is_err(), "only four");
    }

    /// Queues one last datagram together with its output, then has none.
    struct LastWord {
        to: SocketAddr,
        said: bool,
    }

    impl UdpMachine for LastWord {
        type Output = &'static str;

        fn poll_transmit(&mut self) -> Option<Transmit> {
            (!std::mem::replace(&mut self.said, true)).then(|| Transmit {
                dst: self.to,
                payload: b"bye".to_vec(),
            })
        }

        fn poll_output(&mut self) -> Option<&'static str> {
            self.said.then_some("done")
        }

        fn poll_timeout(&self) -> Option<Instant> {
            None
        }

        fn handle_timeout(&mut self, _now: Instant) {}

        fn handle_datagram(&mut self, _now: Instant, _from: SocketAddr, _bytes: &[u8]) {}
    }

    #[tokio::test]
    async fn sends_what_was_queued_before_returning_the_output() {
        let (client, client_addr) = bind().await;
        let (peer, peer_addr) = bind().await;
        let mut machine = LastWord {
            to: peer_addr,
            said: false,
        };
        let output = drive_udp(&client, &mut machine, DriveOptions::new("test")).await;
        assert_eq!(output, Some("done"));
        let mut buffer = [0u8; 16];
        let (len, from) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buffer))
            .await
            .expect("the last word arrived")
            .unwrap();
        assert_eq!((&buffer[..len], from), (&b"bye"[..], client_addr));
    }

    /// Never has an output and waits for nothing.
    struct Stuck;

    impl UdpMachine for Stuck {
        type Output = ();

        fn poll_transmit(&mut self) -> Option<Transmit> {
            None
        }

        fn poll_output(&mut self) -> Option<()> {
            None
        }

        fn poll_timeout(&self) -> Option<Instant> {
            None
        }

        fn handle_timeout(&mut self, _now: Instant) {}

        fn handle_datagram(&mut self, _now: Instant, _from: SocketAddr, _bytes: &[u8]) {}
    }

    #[tokio::test]
    async fn a_stalled_machine_ends_the_drive_with_none() {
        let (client, _) = bind().await;
        assert_eq!(
            drive_udp(&client, &mut Stuck, DriveOptions::new("test")).await,
            None
        );
    }
}
