//! Tokio drivers for the STUN client transaction and the responder.
//!
//! - [`binding_udp`]: one transaction on a caller-owned, *unconnected* UDP
//!   socket (answers to CHANGE-REQUEST come from another address), run by
//!   the shared [`drive_udp`] loop.
//! - [`binding_tcp`]: connect (optionally from a given local port, with
//!   `SO_REUSEADDR`/`SO_REUSEPORT` so the same port can later be used for
//!   TCP simultaneous open), send one request, read one framed answer.
//! - [`StunServer`] / [`serve_stun`]: one task per UDP socket (up to four
//!   for RFC 5780) plus a TCP accept loop on the primary address; each
//!   datagram goes through [`respond`], and the answer leaves from the
//!   socket it names.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_limits::{AddrBucket, Bucketing};
use ferry_metrics::{Limit, StunMetrics, StunSocket, Transport};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info};

use super::{
    AltConfig, BindingRequest, BindingResult, HEADER_LEN, MAX_MESSAGE_LEN, RetransmitConfig,
    SourceLimiter, SourceLimits, StunError, StunTransaction, Transmit, framed_len, respond,
};
use crate::drive::{DriveOptions, UdpMachine, drive_udp};

/// Options of one UDP Binding transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindingOptions {
    /// What to ask (CHANGE-REQUEST flags).
    pub request: BindingRequest,
    /// Retransmission schedule (RFC 8489 defaults: 39.5 s in total).
    pub retransmit: RetransmitConfig,
}

/// Runs one Binding transaction on `socket` against `server` over UDP.
///
/// The socket must not be connected. Datagrams that are not the answer
/// (other traffic, stale answers) are read and dropped, so do not share the
/// socket with a concurrent reader while this runs. The transaction id comes
/// from the OS random number generator.
pub async fn binding_udp(
    socket: &UdpSocket,
    server: SocketAddr,
    opts: BindingOptions,
) -> Result<BindingResult, StunError> {
    let id: [u8; 12] = rand::random();
    let mut tx = StunTransaction::new(
        Instant::now().into_std(),
        id,
        server,
        opts.request,
        opts.retransmit,
    )?;
    let options = DriveOptions {
        buffer_len: MAX_MESSAGE_LEN,
        ..DriveOptions::new("STUN")
    };
    drive_udp(socket, &mut tx, options)
        .await
        // Unreachable in practice: a running transaction has a deadline.
        .unwrap_or(Err(StunError::Timeout {
            server,
            sends: 0,
            waited: Duration::ZERO,
        }))
}

/// A transaction ends with its result; [`binding_udp`] drives it.
impl UdpMachine for StunTransaction {
    type Output = Result<BindingResult, StunError>;

    fn poll_transmit(&mut self) -> Option<Transmit> {
        StunTransaction::poll_transmit(self)
    }

    fn poll_output(&mut self) -> Option<Self::Output> {
        self.poll_event()
    }

    fn poll_timeout(&self) -> Option<std::time::Instant> {
        StunTransaction::poll_timeout(self)
    }

    fn handle_timeout(&mut self, now: std::time::Instant) {
        StunTransaction::handle_timeout(self, now);
    }

    fn handle_datagram(&mut self, now: std::time::Instant, from: SocketAddr, bytes: &[u8]) {
        StunTransaction::handle_datagram(self, now, from, bytes);
    }
}

/// Runs one Binding transaction over TCP (RFC 8489 section 6.2.2), from
/// `local` when given, so that the answer tells the public TCP mapping of
/// that very port. The local socket gets `SO_REUSEADDR` (and `SO_REUSEPORT`
/// on Unix) so the port can be reused for other connections. The whole
/// exchange (connect, send, answer) is bounded by `timeout`.
pub async fn binding_tcp(
    server: SocketAddr,
    local: Option<SocketAddr>,
    timeout: Duration,
) -> Result<BindingResult, StunError> {
    match tokio::time::timeout(timeout, binding_tcp_inner(server, local, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(StunError::Timeout {
            server,
            sends: 1,
            waited: timeout,
        }),
    }
}

async fn binding_tcp_inner(
    server: SocketAddr,
    local: Option<SocketAddr>,
    timeout: Duration,
) -> Result<BindingResult, StunError> {
    let io_err = |context: String| move |source| StunError::Io { context, source };
    let stream = connect_tcp(server, local).await.map_err(io_err(format!(
        "cannot connect to STUN server {server} over TCP"
    )))?;
    let id: [u8; 12] = rand::random();
    let mut tx = StunTransaction::new(
        Instant::now().into_std(),
        id,
        server,
        BindingRequest::default(),
        RetransmitConfig::reliable(timeout),
    )?;
    let (mut reader, mut writer) = stream.into_split();
    while let Some(t) = tx.poll_transmit() {
        writer
            .write_all(&t.payload)
            .await
            .map_err(io_err(format!("cannot send to STUN server {server}")))?;
    }
    loop {
        let frame = read_frame(&mut reader).await.map_err(|e| match e {
            FrameError::Io(source) => StunError::Io {
                context: format!("cannot read from STUN server {server}"),
                source,
            },
            FrameError::Closed => StunError::Closed { server },
            FrameError::TooLarge(n) => StunError::Malformed {
                server,
                why: format!("{n}-byte message is over the {MAX_MESSAGE_LEN}-byte limit"),
            },
        })?;
        tx.handle_datagram(Instant::now().into_std(), server, &frame);
        if let Some(result) = tx.poll_event() {
            return result;
        }
    }
}

async fn connect_tcp(server: SocketAddr, local: Option<SocketAddr>) -> io::Result<TcpStream> {
    let Some(local) = local else {
        return TcpStream::connect(server).await;
    };
    let domain = socket2::Domain::for_address(server);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    socket.set_reuse_port(true)?;
    socket.bind(&local.into()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind local TCP address {local}: {e}"),
        )
    })?;
    socket.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
    socket.connect(server).await
}

enum FrameError {
    Io(io::Error),
    Closed,
    TooLarge(usize),
}

/// Reads one STUN message framed by its header's length field, refusing
/// anything over [`MAX_MESSAGE_LEN`] before allocating for it.
async fn read_frame<R: AsyncReadExt + Unpin>(reader: &mut R) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(FrameError::Io(e)),
    }
    let total = framed_len(&header).unwrap_or(HEADER_LEN);
    if total > MAX_MESSAGE_LEN {
        return Err(FrameError::TooLarge(total));
    }
    let mut frame = vec![0u8; total];
    frame[..HEADER_LEN].copy_from_slice(&header);
    match reader.read_exact(&mut frame[HEADER_LEN..]).await {
        Ok(_) => Ok(frame),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(FrameError::Closed),
        Err(e) => Err(FrameError::Io(e)),
    }
}

/// Where and how the STUN server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunServerConfig {
    /// The primary UDP address (also the TCP address when `tcp` is set).
    /// Use a specific IP, not the wildcard, for RFC 5780: RESPONSE-ORIGIN
    /// and OTHER-ADDRESS name the bound addresses. Port 0 picks one.
    pub primary: SocketAddr,
    /// A second UDP port on the primary IP (0 picks one). Needed, with
    /// `alternate_ip`, for RFC 5780 behaviour discovery.
    pub second_port: Option<u16>,
    /// A second IP of this host. With `second_port` it enables RFC 5780:
    /// four UDP sockets, OTHER-ADDRESS, RESPONSE-ORIGIN and CHANGE-REQUEST.
    pub alternate_ip: Option<IpAddr>,
    /// An address of this host of the other family (IPv6 beside an IPv4
    /// primary, or the reverse): STUN there too, on the primary and second
    /// ports (and over TCP with `tcp`), so clients of either family learn
    /// their mapping.
    pub other_family_ip: Option<IpAddr>,
    /// A second address of the other family: RFC 5780 there too (needs
    /// `other_family_ip` and `second_port`).
    pub other_family_alternate_ip: Option<IpAddr>,
    /// Also accept STUN over TCP on the primary address.
    pub tcp: bool,
    /// How long a TCP client may stay idle before it is dropped.
    pub tcp_idle_timeout: Duration,
    /// The most TCP clients served at once; more wait in the backlog.
    pub max_tcp_clients: usize,
    /// The most TCP clients served at once from one source bucket (default
    /// 8); more are closed at once.
    pub max_tcp_clients_per_ip: usize,
    /// The answer budget of each source over UDP (default 20 a second,
    /// 40 at once), shared by all UDP sockets.
    pub udp_limits: SourceLimits,
}

impl StunServerConfig {
    /// A server on `primary` with TCP, no second port or IP.
    pub fn new(primary: SocketAddr) -> Self {
        Self {
            primary,
            second_port: None,
            alternate_ip: None,
            other_family_ip: None,
            other_family_alternate_ip: None,
            tcp: true,
            tcp_idle_timeout: Duration::from_secs(10),
            max_tcp_clients: 256,
            max_tcp_clients_per_ip: 8,
            udp_limits: SourceLimits::default(),
        }
    }
}

/// A bound STUN server, ready to [`run`](StunServer::run).
#[derive(Debug)]
pub struct StunServer {
    udp: Vec<Arc<UdpSocket>>,
    /// The sockets on the other family's addresses, in the order of `udp`.
    other_family: Vec<Arc<UdpSocket>>,
    other_family_tcp: Option<TcpListener>,
    other_family_alt: Option<AltConfig>,
    tcp: Option<TcpListener>,
    alt: Option<AltConfig>,
    tcp_idle_timeout: Duration,
    max_tcp_clients: usize,
    max_tcp_clients_per_ip: usize,
    udp_limits: SourceLimits,
    metrics: StunMetrics,
}

impl StunServer {
    /// Binds every socket the configuration asks for. Errors name the
    /// address that failed and what to do. With port 0 (pick one), the
    /// whole set is retried a few times when a picked port turns out to be
    /// taken on the TCP side or on the alternate IP.
    pub async fn bind(config: StunServerConfig) -> io::Result<Self> {
        let ephemeral = config.primary.port() == 0 || config.second_port == Some(0);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::bind_once(&config).await {
                Err(e) if ephemeral && e.kind() == io::ErrorKind::AddrInUse && attempts < 16 => {
                    debug!("STUN server: picked port clashed, retrying: {e}");
                }
                other => return other,
            }
        }
    }

    async fn bind_once(config: &StunServerConfig) -> io::Result<Self> {
        if let Some(ip) = config.alternate_ip {
            if config.second_port.is_none() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "alternate STUN IP {ip} needs a second port too (RFC 5780 uses 2 IPs x 2 ports)"
                    ),
                ));
            }
            if ip == config.primary.ip() || ip.is_ipv4() != config.primary.is_ipv4() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "alternate STUN IP {ip} must differ from the primary IP {} and be of the same family",
                        config.primary.ip()
                    ),
                ));
            }
        }
        let primary = bind_udp(config.primary).await?;
        let primary_addr = primary.local_addr()?;
        let mut udp = vec![Arc::new(primary)];
        let mut alt = None;
        if let Some(port) = config.second_port {
            let second = bind_udp(SocketAddr::new(primary_addr.ip(), port)).await?;
            let second_port = second.local_addr()?.port();
            udp.push(Arc::new(second));
            if let Some(ip) = config.alternate_ip {
                for port in [primary_addr.port(), second_port] {
                    udp.push(Arc::new(bind_udp(SocketAddr::new(ip, port)).await?));
                }
                alt = Some(AltConfig {
                    primary: primary_addr,
                    alternate: SocketAddr::new(ip, second_port),
                });
            }
        }
        let mut other_family = Vec::new();
        let mut other_family_alt = None;
        let mut other_family_tcp = None;
        if let Some(ip) = config.other_family_ip {
            let ips = std::iter::once(ip).chain(config.other_family_alternate_ip);
            for ip in ips.clone() {
                if ip.is_ipv4() == primary_addr.is_ipv4() || ip.is_unspecified() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "the other family's STUN IP {ip} must be a specific address of the other family than the primary {}",
                            primary_addr.ip()
                        ),
                    ));
                }
            }
            let ports = udp
                .iter()
                .take(if config.second_port.is_some() { 2 } else { 1 })
                .map(|s| s.local_addr().map(|a| a.port()))
                .collect::<io::Result<Vec<u16>>>()?;
            if config.other_family_alternate_ip.is_some() && ports.len() < 2 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an alternate STUN IP of the other family needs a second port too (RFC 5780 uses 2 IPs x 2 ports)",
                ));
            }
            for ip in ips {
                for &port in &ports {
                    other_family.push(Arc::new(bind_udp(SocketAddr::new(ip, port)).await?));
                }
            }
            if let (Some(alternate), [first, second]) =
                (config.other_family_alternate_ip, ports.as_slice())
            {
                if alternate == ip {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "the other family's alternate STUN IP {alternate} must differ from {ip}"
                        ),
                    ));
                }
                other_family_alt = Some(AltConfig {
                    primary: SocketAddr::new(ip, *first),
                    alternate: SocketAddr::new(alternate, *second),
                });
            }
            if config.tcp {
                let addr = SocketAddr::new(ip, primary_addr.port());
                other_family_tcp = Some(TcpListener::bind(addr).await.map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot listen for STUN over TCP on {addr}: {e}; stop the program using that port or choose another"),
                    )
                })?);
            }
        }
        let tcp = if config.tcp {
            let listener = TcpListener::bind(primary_addr).await.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot listen for STUN over TCP on {primary_addr}: {e}; \
                         stop the program using that port, choose another, or turn STUN over TCP off"
                    ),
                )
            })?;
            Some(listener)
        } else {
            None
        };
        Ok(Self {
            udp,
            other_family,
            other_family_tcp,
            other_family_alt,
            tcp,
            alt,
            tcp_idle_timeout: config.tcp_idle_timeout,
            max_tcp_clients: config.max_tcp_clients.max(1),
            max_tcp_clients_per_ip: config.max_tcp_clients_per_ip.max(1),
            udp_limits: config.udp_limits,
            metrics: StunMetrics::default(),
        })
    }

    /// The bound UDP addresses: primary first, then the second port, then
    /// the alternate IP with the primary and second ports, then the same
    /// for the other family's addresses.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .chain(&self.other_family)
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// The bound TCP address, when STUN over TCP is on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The RFC 5780 layout, when an alternate IP and port are configured.
    pub fn alt_config(&self) -> Option<AltConfig> {
        self.alt
    }

    /// Counts the answers (by socket) and the requests its limits drop in
    /// `metrics` (default: a handle nobody reads).
    pub fn with_metrics(mut self, metrics: StunMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Serves until `shutdown` resolves, then stops every task.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let mut by_addr = HashMap::new();
        for socket in self.udp.iter().chain(&self.other_family) {
            by_addr.insert(socket.local_addr()?, socket.clone());
        }
        let by_addr = Arc::new(by_addr);
        let mut tasks = JoinSet::new();
        let limiter = Arc::new(UdpLimiter {
            origin: Instant::now(),
            limiter: Mutex::new(SourceLimiter::new(self.udp_limits)),
        });
        for (index, socket) in self.udp.iter().enumerate() {
            let local = socket.local_addr()?;
            tasks.spawn(serve_udp(
                socket.clone(),
                local,
                by_addr.clone(),
                self.alt,
                limiter.clone(),
                Counted {
                    metrics: self.metrics.clone(),
                    socket: StunSocket::from_index(index),
                },
            ));
        }
        // The other family's sockets, with their own RFC 5780 layout (or
        // none), counted as the primary family's sockets in their place.
        for (index, socket) in self.other_family.iter().enumerate() {
            tasks.spawn(serve_udp(
                socket.clone(),
                socket.local_addr()?,
                by_addr.clone(),
                self.other_family_alt,
                limiter.clone(),
                Counted {
                    metrics: self.metrics.clone(),
                    socket: StunSocket::from_index(index),
                },
            ));
        }
        // One budget of TCP clients for both families' listeners.
        let tcp_clients = Arc::new(Semaphore::new(self.max_tcp_clients));
        for listener in self.tcp.into_iter().chain(self.other_family_tcp) {
            tasks.spawn(serve_tcp(
                listener,
                self.tcp_idle_timeout,
                tcp_clients.clone(),
                TcpPerSource {
                    bucketing: self.udp_limits.bucketing,
                    max: self.max_tcp_clients_per_ip,
                },
                self.metrics.clone(),
            ));
        }
        info!(udp = ?self.udp.iter().chain(&self.other_family).filter_map(|s| s.local_addr().ok()).collect::<Vec<_>>(), rfc5780 = self.alt.is_some(), "STUN server running");
        shutdown.await;
        tasks.shutdown().await;
        info!("STUN server stopped");
        Ok(())
    }
}

/// Binds the sockets of `config` and serves until `shutdown` resolves.
pub async fn serve_stun(
    config: StunServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    StunServer::bind(config).await?.run(shutdown).await
}

async fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::AddrInUse => "another program (another STUN server such as coturn?) uses it: stop it or choose another port",
            io::ErrorKind::AddrNotAvailable => "that IP is not configured on this host: give one of its own addresses",
            io::ErrorKind::PermissionDenied => "ports below 1024 need privileges: run as root, grant CAP_NET_BIND_SERVICE, or choose a port >= 1024",
            _ => "check the address",
        };
        io::Error::new(e.kind(), format!("cannot bind STUN UDP socket {addr}: {e}; {hint}"))
    })
}

/// The UDP sockets' shared answer budgets per source.
#[derive(Debug)]
struct UdpLimiter {
    origin: Instant,
    limiter: Mutex<SourceLimiter>,
}

impl UdpLimiter {
    fn allow(&self, from: SocketAddr) -> bool {
        let now = self.origin.elapsed();
        let mut limiter = self
            .limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        limiter.allow(from, now)
    }

    fn forget_rested(&self) {
        let now = self.origin.elapsed();
        self.limiter
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .forget_rested(now);
    }
}

/// Where one UDP socket counts its answers.
struct Counted {
    metrics: StunMetrics,
    socket: StunSocket,
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    by_addr: Arc<HashMap<SocketAddr, Arc<UdpSocket>>>,
    alt: Option<AltConfig>,
    limiter: Arc<UdpLimiter>,
    counted: Counted,
) {
    let mut buf = vec![0u8; MAX_MESSAGE_LEN + 1];
    let mut received: u32 = 0;
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here; keep serving.
                debug!(%local, "STUN server: receive error: {e}");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        received = received.wrapping_add(1);
        if received % 4096 == 0 {
            limiter.forget_rested();
        }
        // Checked before parsing: a flood costs one lookup per datagram.
        if !limiter.allow(from) {
            counted.metrics.refusals.count(Limit::StunRate);
            continue;
        }
        let Some(response) = respond(&buf[..n], from, local, alt) else {
            continue;
        };
        let Some(out) = by_addr.get(&response.send_from) else {
            debug!(send_from = %response.send_from, "STUN server: no socket to answer from");
            continue;
        };
        match out.send_to(&response.payload, response.dst).await {
            Ok(_) => counted.metrics.answered(Transport::Udp, counted.socket),
            Err(e) => debug!(dst = %response.dst, "STUN server: send failed: {e}"),
        }
    }
}

/// The per-source cap of STUN over TCP.
#[derive(Debug, Clone, Copy)]
struct TcpPerSource {
    bucketing: Bucketing,
    max: usize,
}

async fn serve_tcp(
    listener: TcpListener,
    idle: Duration,
    limit: Arc<Semaphore>,
    per_source: TcpPerSource,
    metrics: StunMetrics,
) {
    let mut clients = JoinSet::new();
    let counts: Arc<Mutex<HashMap<AddrBucket, usize>>> = Arc::default();
    let mut backoff = Duration::from_millis(10);
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        // Reap finished client tasks so the set does not grow.
        while clients.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, from)) => {
                backoff = Duration::from_millis(10);
                let bucket = per_source.bucketing.bucket(from.ip());
                let Some(slot) = SourceSlot::take(&counts, bucket, per_source.max) else {
                    // STUN over TCP has no refusal message; closing is the answer.
                    metrics.refusals.count(Limit::StunTcpPerAddress);
                    debug!(%from, %bucket, "STUN server: too many TCP clients from one source; closing");
                    drop(stream);
                    continue;
                };
                let metrics = metrics.clone();
                clients.spawn(async move {
                    serve_tcp_client(stream, from, idle, &metrics).await;
                    drop(slot);
                    drop(permit);
                });
            }
            Err(e) => {
                debug!("STUN server: accept failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// One TCP client's share of its source bucket; given back on drop.
struct SourceSlot {
    counts: Arc<Mutex<HashMap<AddrBucket, usize>>>,
    bucket: AddrBucket,
}

impl SourceSlot {
    fn take(
        counts: &Arc<Mutex<HashMap<AddrBucket, usize>>>,
        bucket: AddrBucket,
        max: usize,
    ) -> Option<Self> {
        let mut guard = counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = guard.entry(bucket).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            counts: counts.clone(),
            bucket,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut guard = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = guard.get_mut(&self.bucket) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                guard.remove(&self.bucket);
            }
        }
    }
}

async fn serve_tcp_client(
    mut stream: TcpStream,
    from: SocketAddr,
    idle: Duration,
    metrics: &StunMetrics,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    loop {
        let frame = match tokio::time::timeout(idle, read_frame(&mut stream)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(FrameError::Closed)) => return,
            Ok(Err(FrameError::TooLarge(n))) => {
                debug!(%from, n, "STUN server: TCP message too large, closing");
                return;
            }
            Ok(Err(FrameError::Io(e))) => {
                debug!(%from, "STUN server: TCP read failed: {e}");
                return;
            }
            Err(_) => {
                debug!(%from, "STUN server: TCP client idle, closing");
                return;
            }
        };
        // Over TCP the answer can only leave on this connection, so
        // CHANGE-REQUEST cannot be honoured: no alternate config here.
        let Some(response) = respond(&frame, from, local, None) else {
            continue;
        };
        match tokio::time::timeout(idle, stream.write_all(&response.payload)).await {
            Ok(Ok(())) => metrics.answered(Transport::Tcp, StunSocket::Primary),
            _ => {
                debug!(%from, "STUN server: TCP write failed or stalled, closing");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const LO2: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    /// Starts a server; returns its handle, addresses and the shutdown sender.
    async fn start(
        config: StunServerConfig,
    ) -> (
        tokio::task::JoinHandle<io::Result<()>>,
        Vec<SocketAddr>,
        Option<SocketAddr>,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let server = StunServer::bind(config).await.expect("bind STUN server");
        let udp = server.udp_addrs();
        let tcp = server.tcp_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        (handle, udp, tcp, stop)
    }

    fn fast() -> BindingOptions {
        BindingOptions {
            retransmit: RetransmitConfig {
                rto: Duration::from_millis(200),
                max_sends: 5,
                last_wait_factor: 4,
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn answers_by_socket_and_requests_over_the_rate_are_counted() {
        let metrics = ferry_metrics::Metrics::new();
        let config = StunServerConfig {
            second_port: Some(0),
            udp_limits: SourceLimits {
                rate: 1,
                burst: 2,
                ..SourceLimits::default()
            },
            ..StunServerConfig::new(SocketAddr::new(LO, 0))
        };
        let server = StunServer::bind(config)
            .await
            .unwrap()
            .with_metrics(metrics.stun());
        let (udp, tcp) = (server.udp_addrs(), server.tcp_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let once = BindingOptions {
            retransmit: RetransmitConfig {
                rto: Duration::from_millis(100),
                max_sends: 1,
                last_wait_factor: 2,
            },
            ..Default::default()
        };
        let client = UdpSocket::bind((LO, 0)).await.unwrap();
        binding_udp(&client, udp[0], once).await.unwrap();
        binding_udp(&client, udp[1], once).await.unwrap();
        // The source's budget is spent: dropped, and counted as refused.
        assert!(binding_udp(&client, udp[0], once).await.is_err());
        binding_tcp(tcp, None, Duration::from_secs(5))
            .await
            .unwrap();

        let text = metrics.encode();
        for (series, want) in [
            (r#"transport="udp",socket="primary""#, " 1"),
            (r#"transport="udp",socket="second_port""#, " 1"),
            (r#"transport="tcp",socket="primary""#, " 1"),
        ] {
            let line = format!("ferry_stun_requests_total{{{series}}}{want}\n");
            assert!(text.contains(&line), "no {line:?} in {text}");
        }
        assert!(
            text.contains("ferry_refusals_total{limit=\"stun_rate\"} 1\n"),
            "{text}"
        );
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn udp_binding_against_our_server_on_loopback() {
        let (handle, udp, _, stop) = start(StunServerConfig::new(SocketAddr::new(LO, 0))).await;
        let client = UdpSocket::bind((LO, 0)).await.unwrap();
        let result = binding_udp(&client, udp[0], fast()).await.expect("binding");
        assert_eq!(result.mapped, client.local_addr().unwrap());
        assert_eq!(result.source, udp[0]);
        assert!(!result.legacy);
        assert_eq!(result.other_address, None);
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn tcp_binding_reports_the_chosen_local_port() {
        let (handle, _, tcp, stop) = start(StunServerConfig::new(SocketAddr::new(LO, 0))).await;
        let tcp = tcp.unwrap();
        let anywhere = binding_tcp(tcp, None, Duration::from_secs(5))
            .await
            .expect("binding");
        assert_eq!(anywhere.mapped.ip(), LO);
        assert_ne!(anywhere.mapped.port(), 0);
        // From a port we choose: the mapping is that port. Pick a free one.
        let probe = std::net::TcpListener::bind((LO, 0)).unwrap();
        let local = probe.local_addr().unwrap();
        drop(probe);
        let result = binding_tcp(tcp, Some(local), Duration::from_secs(5))
            .await
            .expect("binding");
        assert_eq!(result.mapped, local);
        assert_eq!(result.source, tcp);
        // SO_REUSEADDR/SO_REUSEPORT: the same local port can be used again
        // right away for another destination (as TCP simultaneous open
        // will), although the first connection sits in TIME_WAIT.
        let (handle2, _, tcp2, stop2) = start(StunServerConfig::new(SocketAddr::new(LO, 0))).await;
        let again = binding_tcp(tcp2.unwrap(), Some(local), Duration::from_secs(5))
            .await
            .expect("reuse the local port");
        assert_eq!(again.mapped, local);
        stop2.send(()).unwrap();
        handle2.await.unwrap().unwrap();
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn rfc5780_on_two_loopback_ips() {
        let config = StunServerConfig {
            second_port: Some(0),
            alternate_ip: Some(LO2),
            ..StunServerConfig::new(SocketAddr::new(LO, 0))
        };
        let (handle, udp, _, stop) = start(config).await;
        assert_eq!(udp.len(), 4);
        let (p, p2, a1, a) = (udp[0], udp[1], udp[2], udp[3]);
        assert_eq!((p.ip(), p2.ip(), a1.ip(), a.ip()), (LO, LO, LO2, LO2));
        assert_eq!((a1.port(), a.port()), (p.port(), p2.port()));

        let client = UdpSocket::bind((LO, 0)).await.unwrap();
        let me = client.local_addr().unwrap();
        let plain = binding_udp(&client, p, fast()).await.unwrap();
        assert_eq!(plain.mapped, me);
        assert_eq!(plain.other_address, Some(a));
        assert_eq!(plain.response_origin, Some(p));

        let cases = [(true, false, a1), (false, true, p2), (true, true, a)];
        for (change_ip, change_port, expected) in cases {
            let opts = BindingOptions {
                request: BindingRequest {
                    change_ip,
                    change_port,
                },
                ..fast()
            };
            let r = binding_udp(&client, p, opts).await.unwrap();
            assert_eq!(
                r.source, expected,
                "answer really came from the other socket"
            );
            assert_eq!(r.response_origin, Some(expected));
            assert_eq!(r.mapped, me);
        }
        // Asking the alternate socket: OTHER-ADDRESS points back at primary.
        let from_alt = binding_udp(&client, a, fast()).await.unwrap();
        assert_eq!(from_alt.other_address, Some(p));
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_other_familys_address_answers_plainly_on_both_ports() {
        // ::1 where this host has IPv6 loopback; without it nothing to test.
        let lo6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        if std::net::UdpSocket::bind((lo6, 0)).is_err() {
            return;
        }
        let config = StunServerConfig {
            second_port: Some(0),
            alternate_ip: Some(LO2),
            other_family_ip: Some(lo6),
            ..StunServerConfig::new(SocketAddr::new(LO, 0))
        };
        let (handle, udp, _, stop) = start(config).await;
        assert_eq!(udp.len(), 6);
        let (p, p2, v6, v6_2) = (udp[0], udp[1], udp[4], udp[5]);
        assert_eq!((v6.ip(), v6_2.ip()), (lo6, lo6));
        assert_eq!((v6.port(), v6_2.port()), (p.port(), p2.port()));
        let client = UdpSocket::bind((lo6, 0)).await.unwrap();
        for server in [v6, v6_2] {
            let r = binding_udp(&client, server, fast()).await.unwrap();
            assert_eq!(r.mapped, client.local_addr().unwrap());
            assert_eq!(r.source, server);
            // No RFC 5780 of the other family's addresses here.
            assert_eq!(r.other_address, None);
        }
        // The primary family keeps its RFC 5780 answers.
        let client4 = UdpSocket::bind((LO, 0)).await.unwrap();
        let r = binding_udp(&client4, p, fast()).await.unwrap();
        assert_eq!(r.other_address, Some(udp[3]));
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_other_familys_ip_must_be_of_the_other_family() {
        let config = StunServerConfig {
            other_family_ip: Some(LO2),
            ..StunServerConfig::new(SocketAddr::new(LO, 0))
        };
        let error = StunServer::bind(config).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("other family"), "{error}");
    }

    #[tokio::test]
    async fn change_request_to_single_ip_server_is_refused() {
        let (handle, udp, _, stop) = start(StunServerConfig::new(SocketAddr::new(LO, 0))).await;
        let client = UdpSocket::bind((LO, 0)).await.unwrap();
        let opts = BindingOptions {
            request: BindingRequest {
                change_ip: true,
                change_port: false,
            },
            ..fast()
        };
        match binding_udp(&client, udp[0], opts).await {
            Err(StunError::ErrorResponse { code: 420, .. }) => {}
            other => panic!("expected 420, got {other:?}"),
        }
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn udp_timeout_when_nobody_answers() {
        // A bound socket that never answers: requests are swallowed.
        let silent = UdpSocket::bind((LO, 0)).await.unwrap();
        let client = UdpSocket::bind((LO, 0)).await.unwrap();
        let started = Instant::now();
        let err = binding_udp(
            &client,
            silent.local_addr().unwrap(),
            BindingOptions::default(),
        )
        .await
        .unwrap_err();
        match err {
            StunError::Timeout { sends, .. } => assert_eq!(sends, 7),
            other => panic!("expected timeout, got {other:?}"),
        }
        // Virtual time: exactly the RFC 8489 total.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(39_500) && waited < Duration::from_millis(39_600));
        // The silent socket saw all seven requests.
        let mut buf = [0u8; 64];
        for _ in 0..7 {
            let (n, _) = silent.try_recv_from(&mut buf).expect("a request");
            assert!(crate::stun::is_stun(&buf[..n]));
        }
    }

    #[tokio::test]
    async fn udp_binding_ignores_noise_before_the_answer() {
        let (handle, udp, _, stop) = start(StunServerConfig::new(SocketAddr::new(LO, 0))).await;
        let client = UdpSocket::bind((LO, 0)).await.unwrap();
        let me = client.local_addr().unwrap();
        // Noise from another socket reaches the client first.
        let noisy = UdpSocket::bind((LO, 0)).await.unwrap();
        noisy.send_to(b"not stun at all", me).await.unwrap();
        let result = binding_udp(&client, udp[0], fast()).await.unwrap();
        assert_eq!(result.mapped, me);
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn tcp_server_closes_on_oversized_frame() {
        let (handle, _, tcp, stop) = start(StunServerConfig::new(SocketAddr::new(LO, 0))).await;
        let mut s = TcpStream::connect(tcp.unwrap()).await.unwrap();
        // A header announcing 60000 bytes of attributes.
        let mut header = vec![0x00, 0x01, 0xEA, 0x60, 0x21, 0x12, 0xa4, 0x42];
        header.extend_from_slice(&[0; 12]);
        s.write_all(&header).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("server closes promptly")
            .unwrap_or(0);
        assert_eq!(n, 0, "connection closed without an answer");
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn tcp_timeout_when_server_never_answers() {
        // A listener that accepts but never reads or answers.
        let listener = TcpListener::bind((LO, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let mut held = vec![];
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let err = binding_tcp(addr, None, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, StunError::Timeout { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn bind_errors_name_the_address() {
        let taken = UdpSocket::bind((LO, 0)).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = StunServer::bind(StunServerConfig::new(addr))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let config = StunServerConfig {
            alternate_ip: Some(LO2),
            ..StunServerConfig::new(SocketAddr::new(LO, 0))
        };
        let err = StunServer::bind(config).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
