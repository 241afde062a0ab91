//! Command-line arguments. The doc comments are the `--help` text.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Exit codes, shown at the end of `ferry --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success
  1    an error not covered below
  2    bad command-line usage
  3    the code did not match (pairing failed); ask for a new code
  4    could not reach the rendezvous server or the peer
  5    data failed verification (a chunk or a whole file did not match its BLAKE3 hash)
  6    the transfer was declined, or the peer went away or cancelled
  7    a local file problem: would overwrite, unsafe path, no space, disk full, unreadable
  130  interrupted (Ctrl-C); a partial file is kept as NAME.ferry-part for resume

Environment:
  FERRY_SERVER   rendezvous server HOST:PORT, used when --server is not given
  FERRY_CODE     the code, for `ferry receive` (and `ferry send`) when none is given
                 on the command line: unlike an argument, it is not in the process list
  HTTPS_PROXY, ALL_PROXY  the proxy of send, receive and nat when --proxy (or the
                 config file's proxy key) is not given, as --proxy; lower case too
  NO_PROXY       hosts to reach without the proxy: a comma list of names (with their
                 subdomains), .suffixes, addresses, networks (10.0.0.0/8), or *
  FERRY_LOG_FORMAT  text or json, as --log-format
  FERRY_CONFIG   the config file of `ferry serve` and `ferry relay` (--config); every
                 option of theirs is also FERRY_ and the option in capitals
  RUST_LOG       log filter (e.g. ferry=debug), overrides -v
  NO_COLOR       disable colours";

/// `ferry --version`: the release and the protocols it speaks (peers and
/// servers of other releases meet it when these agree).
pub fn long_version() -> String {
    format!(
        "{} (signalling protocol {}, relay protocol {}, transfer protocol {}; peer features: {})",
        env!("CARGO_PKG_VERSION"),
        ferry_proto::signal::PROTOCOL_VERSION,
        ferry_proto::signal::RELAY_PROTOCOL_VERSION,
        ferry_transfer::TRANSFER_VERSION,
        ferry_session::FEATURES.join(", ")
    )
}

/// ferry: send files and folders between two computers, even behind NATs.
///
/// One side runs `ferry send PATH...` and reads out the code it prints;
/// the other runs `ferry receive` and types the code when asked. Both meet at a rendezvous server
/// (`ferry serve`, self-hosted), agree on a key from the code (SPAKE2),
/// then connect directly with TLS 1.3 and move the files in
/// BLAKE3-verified chunks. An interrupted transfer resumes when you run
/// the same send and receive again.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, long_version = long_version(), after_help = EXIT_CODES_HELP,
          propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Print one JSON object per line on stdout (events: code, offer,
    /// path, reconnect, reconnected, resume, progress, done, warning, error)
    /// instead of human output. Control and bidi characters in strings
    /// are written as \uXXXX escapes, never raw.
    #[arg(long, global = true)]
    pub json: bool,

    /// How logs are written on stderr: text (for people), or json (one
    /// object per line with time, level, target, message and fields, for
    /// a log collector such as journald or Loki). Event output on stdout
    /// (--json) is separate.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text,
          env = "FERRY_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

/// The format of the logs on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people, coloured unless NO_COLOR is set.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send files, folders or a text message; prints a code for the receiver.
    #[command(after_help = EXIT_CODES_HELP)]
    Send(SendArgs),
    /// Receive what a sender offers under CODE.
    #[command(after_help = EXIT_CODES_HELP)]
    Receive(ReceiveArgs),
    /// Run the rendezvous server (self-hosted) that peers meet at; it
    /// relays too, unless told the relay runs elsewhere (--relay-url).
    #[command(after_help = EXIT_CODES_HELP)]
    Serve(Box<ServeArgs>),
    /// Run only the relay, for a rendezvous server on another host
    ///
    /// The relay joins two peers that have no direct path (symmetric NATs,
    /// networks that only let TCP 443 out) and streams their end-to-end
    /// encrypted bytes. It admits only holders of a token the rendezvous
    /// server signed with the secret both hosts share, each token good for
    /// one pair and two minutes (keep both clocks in sync with NTP):
    ///
    ///     openssl rand -hex 32 > relay.secret   # once; copy it to both hosts
    ///     ferry relay --relay-secret-file relay.secret             # on the relay host
    ///     ferry serve --relay-url relay.example.org:443 \
    ///                 --relay-secret-file relay.secret             # on the rendezvous host
    #[command(after_help = EXIT_CODES_HELP, verbatim_doc_comment)]
    Relay(RelayArgs),
    /// Tell what network this is, and whether direct connections will work
    ///
    /// Like `tailscale netcheck`: IPv4 and IPv6 each (reachable, the public
    /// UDP mapping, NAT mapping and filtering, hairpinning), the TCP
    /// mapping, which port-mapping protocols the gateway answers (UPnP,
    /// NAT-PMP, PCP), round trips to the server, its STUN responder and the
    /// relay, and what works with each kind of peer. Only the server, the
    /// default gateway and this host's own public mapping are sent to.
    ///
    /// --json prints one `nat` object with these fields (times in ms,
    /// null when not measured):
    ///   server, stun_server, interfaces [{name, addr, class}]
    ///   rendezvous {reachable, local, observed, port_preserved, error,
    ///     proxy (the proxy it was reached through, or null)}
    ///   ipv4, ipv6 {status (reachable|no_global_address|no_server_address|
    ///     no_route|failed|no_answer), reachable, why, global_address,
    ///     stun_server, blocked, local, mapped, mapping, mapping_why,
    ///     filtering, filtering_why, port_preserved, rfc5780, error,
    ///     hairpinning (true|false|null), stun_rtt_ms}
    ///   udp: IPv4's {blocked, local, mapped, mapping, filtering, ...}
    ///     mapping/filtering: none|endpoint-independent|address-dependent|
    ///     address-and-port-dependent|unknown
    ///   tcp {local, mapped, port_preserved, mapping_varies_by_dest_port,
    ///     compared, error}: STUN over TCP from the rendezvous port
    ///   portmap {upnp, nat_pmp, pcp, gateway, error}: which answered
    ///   upnp {gateway, external_ip, external_ip_class, test_mapping, error}
    ///   pmp {gateway, version, external, external_ip_class, removed, error}
    ///   latency {rendezvous_tcp_ms, rendezvous_welcome_ms, stun_ipv4_ms,
    ///     stun_ipv6_ms, relay, relay_tcp_ms, relay_error}
    ///   verdict {code (open|direct|direct-tcp|relay|unreachable|unknown),
    ///     text, peers {no_nat, cone, symmetric, udp_blocked: {code, text}}}
    #[command(after_help = EXIT_CODES_HELP, verbatim_doc_comment)]
    Nat(NatArgs),
    /// Print a completion script for SHELL on stdout
    ///
    /// Generated from ferry's own option definitions, so it always matches
    /// this version. Save it where your shell looks for completions:
    ///
    ///     ferry completions bash > ~/.local/share/bash-completion/completions/ferry
    ///     ferry completions zsh > ~/.zfunc/_ferry
    ///         # with `fpath+=(~/.zfunc)` before `compinit` in ~/.zshrc
    ///     ferry completions fish > ~/.config/fish/completions/ferry.fish
    ///     ferry completions elvish > ~/.config/elvish/lib/ferry.elv
    ///         # with `use ferry` in ~/.config/elvish/rc.elv
    ///     ferry completions powershell >> $PROFILE
    ///
    /// Then open a new shell.
    #[command(verbatim_doc_comment)]
    Completions(CompletionsArgs),
    /// Print ferry's manual page (roff) on stdout, or write one page per
    /// subcommand
    ///
    /// `ferry man` prints ferry(1), which lists the subcommands; with --dir
    /// it writes ferry.1 and a page for each subcommand (ferry-send.1,
    /// ferry-receive.1, ...) into that folder instead:
    ///
    ///     mkdir -p ~/.local/share/man/man1
    ///     ferry man > ~/.local/share/man/man1/ferry.1          # then: man ferry
    ///     ferry man --dir ~/.local/share/man/man1              # also: man ferry-send
    ///     sudo ferry man --dir /usr/local/share/man/man1       # for every user
    ///
    /// To read it without installing: `ferry man | man -l -`.
    #[command(verbatim_doc_comment)]
    Man(ManArgs),
    /// Show where ferry reads its config files from, and what the client
    /// file sets.
    ///
    /// The client file, `$XDG_CONFIG_HOME/ferry/config.toml` (else
    /// `~/.config/ferry/config.toml`), holds defaults for `send`, `receive`
    /// and `nat`: keys are their long options, at the top (each applies
    /// where the command has it) or in `[send]`, `[receive]` and `[nat]`
    /// tables, e.g.
    ///
    ///     server = "ferry.example.org:443"
    ///     [receive]
    ///     out = "~/Downloads"
    ///
    /// The command line (and FERRY_SERVER) wins over the file; an unknown
    /// key is an error. A code never comes from it. The servers read
    /// theirs with `ferry serve --config FILE`.
    #[command(verbatim_doc_comment)]
    Config,
}

/// `ferry completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// `ferry man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write ferry.1 and one page per subcommand (ferry-send.1, ...) into
    /// DIR (created if missing) instead of printing ferry.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `ferry nat`.
#[derive(Debug, Args)]
pub struct NatArgs {
    /// UDP port of the server's STUN responder. By default the port the
    /// server announces when ferry connects to it (3478 when the server
    /// cannot be reached over TCP or announces none); give it to test
    /// another port.
    #[arg(long, value_name = "PORT")]
    pub stun_port: Option<u16>,

    /// The gateway to ask about port mapping (NAT-PMP, PCP; UPnP is
    /// searched for from the local address towards it). By default the
    /// IPv4 default route's gateway.
    #[arg(long, value_name = "IP")]
    pub gateway: Option<std::net::Ipv4Addr>,

    #[command(flatten)]
    pub server: ServerArg,
}

/// Where the rendezvous server is.
#[derive(Debug, Args, Clone)]
pub struct ServerArg {
    /// Rendezvous server as HOST:PORT (port 443 when left out). Run one
    /// with `ferry serve`.
    /// HOST:PORT#sha256=HEX pins the server's TLS certificate (as
    /// --server-sha256 does).
    #[arg(long, short = 's', env = "FERRY_SERVER", value_name = "HOST:PORT")]
    pub server: Option<String>,

    /// Reach the rendezvous server and the relay through this proxy:
    /// http://[USER:PASS@]HOST:PORT (HTTP CONNECT), socks5h://HOST:PORT
    /// (SOCKS5; the proxy resolves names) or socks5://HOST:PORT (names
    /// resolved here); `none` for no proxy. Without it: the config file's
    /// proxy key, then https_proxy / HTTPS_PROXY, then all_proxy /
    /// ALL_PROXY; no_proxy / NO_PROXY lists hosts reached directly (names,
    /// .suffixes, addresses, networks, *). Direct paths to the peer are
    /// still tried; -v logs which proxy was chosen (-vv: for which host, and
    /// why).
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,

    /// Reach the server in TLS and accept only the certificate with this
    /// SHA-256 (hex, colons allowed): for a self-signed server, whose
    /// `ferry serve` prints it. A mismatch is an error, never plain.
    #[arg(long, env = "FERRY_SERVER_SHA256", value_name = "HEX")]
    pub server_sha256: Option<String>,

    /// Reach the server in TLS, its certificate checked against the
    /// public roots (Mozilla's, built in) for its name: for a server with
    /// a certificate from a public CA such as Let's Encrypt. Without
    /// this, --server-sha256 or --tls-ca the connection is plain TCP.
    #[arg(long, env = "FERRY_TLS")]
    pub tls: bool,

    /// Reach the server in TLS, its certificate checked against the CA
    /// certificates in FILE (PEM): for a private CA.
    #[arg(long, env = "FERRY_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

/// `ferry send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Files and folders to send (folders recursively, keeping relative
    /// paths, empty folders and file modes).
    #[arg(
        value_name = "PATH",
        required_unless_present = "text",
        conflicts_with = "text"
    )]
    pub paths: Vec<PathBuf>,

    /// Send this short text message instead of files; the receiver prints it.
    #[arg(long, value_name = "MESSAGE")]
    pub text: Option<String>,

    /// Use this code instead of a generated one, e.g. 7-orbit-lantern
    /// (a number, then two words from ferry's word list). Any user of this
    /// computer can read command-line arguments in the process list (ps,
    /// /proc) while ferry runs: prefer FERRY_CODE or --code-file.
    #[arg(long, value_name = "CODE")]
    pub code: Option<String>,

    /// Read the code to use from FILE (its first line) instead of
    /// generating one; not visible in the process list, unlike --code.
    #[arg(long, value_name = "FILE", conflicts_with = "code")]
    pub code_file: Option<PathBuf>,

    /// Also show a QR code of ferry://HOST:PORT/CODE (the server and the
    /// code in one), and that URI as text: `ferry receive` takes it in place
    /// of a code, with no --server. Drawn black on white on a colour
    /// terminal; with NO_COLOR or into a pipe, for light text on a dark
    /// background. In --json mode no QR is drawn; the `code` event always
    /// carries the URI (`uri`).
    #[arg(long)]
    pub qr: bool,

    /// Cap the sending rate, in bytes per second: 10M, 512k, 1.5G.
    #[arg(long, value_name = "RATE", value_parser = crate::throttle::parse_rate)]
    pub limit_rate: Option<u64>,

    #[command(flatten)]
    pub server: ServerArg,

    #[command(flatten)]
    pub path: PathArgs,
}

/// How to reach the peer.
#[derive(Debug, Args, Clone)]
pub struct PathArgs {
    /// Use only this kind of path, for diagnosis: lan (TCP to a private
    /// address), tcp (direct TCP and TCP simultaneous open), udp (hole
    /// punching, then QUIC) or relay. Without it every path is raced and
    /// the best that works wins.
    #[arg(long, value_name = "PATH", value_parser = ["lan", "tcp", "udp", "relay"])]
    pub force_path: Option<String>,

    /// Do not ask the gateway for port mappings (UPnP / NAT-PMP / PCP).
    #[arg(long)]
    pub no_upnp: bool,

    /// When the path breaks mid-transfer (a reset, a NAT that forgot the
    /// mapping, a link down, a relay restart), reconnect on our own up to N
    /// times, waiting a little longer each time (0.5 s, 1 s, 2 s, ... 8 s).
    /// Each try meets the peer again through the server, without the code,
    /// and races the paths afresh, the relay included; the transfer then
    /// resumes from the last verified byte. 0 never reconnects.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub retries: u32,
}

impl PathArgs {
    /// The session options these flags ask for.
    pub fn options(&self) -> ferry_session::SessionOptions {
        use ferry_connect::PathKind;
        ferry_session::SessionOptions {
            force_path: self.force_path.as_deref().map(|p| match p {
                "lan" => PathKind::Lan,
                "udp" => PathKind::Quic,
                "relay" => PathKind::Relay,
                _ => PathKind::Tcp,
            }),
            no_upnp: self.no_upnp,
            proxy: None,
        }
    }
}

/// `ferry receive`.
#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// The code the sender shows, e.g. 7-orbit-lantern, or its URI,
    /// ferry://HOST:PORT/CODE (`ferry send --qr` shows it), which names the
    /// server too, so --server is not needed (given both, --server or
    /// FERRY_SERVER wins, with a warning). Better left out:
    /// any user of this computer can read command-line arguments in the
    /// process list (ps, /proc) while ferry runs, and the code is all it
    /// takes to receive in your place. Leave it out and type it when asked
    /// (on a terminal), or set FERRY_CODE, or pass --code-file.
    pub code: Option<String>,

    /// Read the code (or the ferry:// URI) from FILE (its first line); not
    /// visible in the process list, unlike the CODE argument.
    #[arg(long, value_name = "FILE", conflicts_with = "code")]
    pub code_file: Option<PathBuf>,

    /// Folder to save into (created if missing).
    #[arg(long, short = 'o', default_value = ".", value_name = "DIR")]
    pub out: PathBuf,

    /// Accept the offer without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Replace files that already exist in the output folder.
    #[arg(long)]
    pub overwrite: bool,

    /// Accept entries under a `.git/` folder. Refused by default: a
    /// repository's hooks (`.git/hooks/post-checkout`) and config run code
    /// the next time you use git there.
    #[arg(long)]
    pub allow_git: bool,

    /// List every entry of the offer before asking, not only the top-level
    /// ones (which stop after 200; hidden paths and executable files are
    /// always listed in full).
    #[arg(long)]
    pub list: bool,

    #[command(flatten)]
    pub server: ServerArg,

    #[command(flatten)]
    pub path: PathArgs,
}

/// `ferry serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Read options from this TOML file: each key is a long option of
    /// this command, with _ or - (`listen = "0.0.0.0:443"`, `relay_rate =
    /// "64M"`, `no_relay = true`). An option on the command line, or in its
    /// environment variable (FERRY_ and the key in capitals, e.g.
    /// FERRY_RELAY_RATE), wins over the file; an unknown key is an error.
    #[arg(long, env = "FERRY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective options as TOML (from the command line, the
    /// environment, the config file and the defaults), each with where it
    /// came from, and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Address and TCP port for rendezvous signalling. Ports below 1024
    /// need root or CAP_NET_BIND_SERVICE.
    #[arg(long, default_value = "0.0.0.0:443", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// How long an unclaimed or idle nameplate lives, in seconds.
    #[arg(long, default_value_t = 1800, value_name = "SECONDS")]
    pub nameplate_ttl: u64,

    /// Most simultaneous client connections.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections: usize,

    /// Most simultaneous client connections from one address bucket: one
    /// IPv4 address (see --ipv4-prefix) or one IPv6 /64.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub max_connections_per_ip: usize,

    /// IPv4 addresses sharing this many leading bits count as one party
    /// for the per-address limits (32: each address on its own; 24: a
    /// whole /24). IPv6 always counts per /64.
    #[arg(long, default_value_t = 32, value_name = "BITS",
          value_parser = clap::value_parser!(u8).range(0..=32))]
    pub ipv4_prefix: u8,

    /// On Ctrl-C or SIGTERM, stop accepting and give open connections
    /// (relayed transfers above all) this many seconds to finish before
    /// cutting them.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub shutdown_grace: u64,

    /// Most nameplates (waiting or paired transfers) at once.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub max_nameplates: usize,

    /// UDP (and TCP) address of the STUN responder that tells clients
    /// their public address. Use a specific IP, not 0.0.0.0, with
    /// --stun-alt-ip.
    #[arg(long, default_value = "0.0.0.0:3478", value_name = "ADDR:PORT")]
    pub stun_listen: SocketAddr,

    /// A second UDP port for STUN on the same IP (0: any free port).
    #[arg(long, default_value_t = 3479, value_name = "PORT")]
    pub stun_second_port: u16,

    /// A second IP address of this server: enables RFC 5780 NAT behaviour
    /// tests (OTHER-ADDRESS, CHANGE-REQUEST) so `ferry nat` can tell how a
    /// client's NAT filters.
    #[arg(long, value_name = "IP")]
    pub stun_alt_ip: Option<std::net::IpAddr>,

    /// An address of this server of the other family than --stun-listen's
    /// (its IPv6 address beside an IPv4 --stun-listen, or the reverse):
    /// plain STUN there too, on the same two ports, so clients that reach
    /// the server over IPv6 learn their mapping as well. RFC 5780 stays on
    /// --stun-listen's family. For signalling on both families, listen on
    /// [::]:443 (IPv4 arrives there too).
    #[arg(long, value_name = "IP")]
    pub stun_other_family_ip: Option<std::net::IpAddr>,

    /// A second address of that other family: RFC 5780 NAT behaviour
    /// tests over it too, as --stun-alt-ip gives them to the first.
    #[arg(long, value_name = "IP", requires = "stun_other_family_ip")]
    pub stun_other_family_alt_ip: Option<std::net::IpAddr>,

    /// STUN answers per second to one source (one IPv4 address, one IPv6
    /// /64), with bursts of twice that; more requests are dropped, so the
    /// responder cannot be used to flood a spoofed address.
    #[arg(long, default_value_t = 20, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub stun_rate: u32,

    /// Do not run the STUN responder.
    #[arg(long, conflicts_with_all = ["stun_alt_ip", "stun_other_family_ip", "stun_other_family_alt_ip"])]
    pub no_stun: bool,

    /// Do not relay: peers without a direct path then cannot connect.
    #[arg(long)]
    pub no_relay: bool,

    /// Do not relay here: tell clients the relay is at HOST:PORT (a name
    /// or an IP address, port 443 when left out), where `ferry relay`
    /// runs with the same --relay-secret-file. The --relay-* limits then
    /// belong on the relay's command line.
    #[arg(
        long,
        value_name = "HOST:PORT",
        requires = "relay_secret_file",
        conflicts_with_all = [
            "relay_max_pairs", "relay_max_per_ip", "relay_rate", "relay_idle",
            "relay_total_rate", "relay_max_bytes", "relay_max_lifetime",
        ]
    )]
    pub relay_url: Option<String>,

    /// With --relay-url: the secret shared with that relay, a file of at
    /// least 32 random bytes written as hex. Make one with
    /// `openssl rand -hex 32 > relay.secret` and copy it to both hosts.
    #[arg(long, value_name = "FILE")]
    pub relay_secret_file: Option<PathBuf>,

    /// How long a relay token can be presented after this server issued it
    /// (when the receiver claimed the nameplate, or the peers rejoined), in
    /// seconds. Later the relay refuses it as expired.
    #[arg(long, default_value_t = 120, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub relay_token_ttl: u64,

    /// Serve Prometheus metrics (`GET /metrics`) and a health check
    /// (`GET /health`, 200 ok) on this address, e.g. 127.0.0.1:9090. Off
    /// by default. There is no authentication: bind it to loopback or a
    /// private address, never to a public one.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,

    /// Share nameplates and mailboxes with other `ferry serve` instances
    /// through the Redis at this URL (redis://HOST:PORT/DB, or
    /// redis://:PASSWORD@HOST:PORT/DB), so that a sender and a receiver
    /// that reach different instances behind one name still pair. Off by
    /// default: this instance alone, everything in memory.
    #[arg(long, value_name = "redis://HOST:PORT/DB")]
    pub cluster: Option<String>,

    /// This instance's name in the cluster (1 to 64 of a-z, 0-9, -;
    /// default: a random one at each start). Every instance needs its own.
    #[arg(long, value_name = "NAME", requires = "cluster")]
    pub instance_id: Option<String>,

    /// This instance's own HOST:PORT as clients reach it, e.g.
    /// edge-1.example.org:443 (in a cluster; default: the --listen
    /// address when it is a specific IP). The sender's instance names its
    /// relay with each relay token and the receiver joins it there, even
    /// when it came in through another instance; with TLS, the
    /// certificate must be valid for this name too.
    #[arg(long, value_name = "HOST:PORT", requires = "cluster")]
    pub advertise: Option<String>,

    #[command(flatten)]
    pub tls: TlsArgs,

    /// With --relay-url: that relay runs TLS on its port (`ferry relay
    /// --tls-cert`); clients that reach this server in TLS join it in
    /// TLS too, checking it as they checked this server.
    #[arg(long, requires = "relay_url")]
    pub relay_tls: bool,

    /// With --relay-tls: the SHA-256 of that relay's self-signed
    /// certificate (what its `ferry relay` prints), told to clients over
    /// TLS only.
    #[arg(long, value_name = "HEX", requires = "relay_tls")]
    pub relay_sha256: Option<String>,

    #[command(flatten)]
    pub relay: RelayLimitArgs,
}

/// TLS on the server port, for `ferry serve` and `ferry relay`.
#[derive(Debug, Args, Clone)]
pub struct TlsArgs {
    /// Run TLS on the TCP port with this certificate chain (PEM, leaf
    /// first, e.g. Let's Encrypt's fullchain.pem); plain clients keep
    /// working on the same port. Read again on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM, e.g. privkey.pem). Read again
    /// on SIGHUP.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The relay's limits, for `ferry serve` and `ferry relay`.
#[derive(Debug, Args, Clone)]
pub struct RelayLimitArgs {
    /// Most relayed pairs at once.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub relay_max_pairs: usize,

    /// Most relay connections from one address (one IPv4 address, one
    /// IPv6 /64); on `ferry relay` counted from accept, before the token.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub relay_max_per_ip: usize,

    /// Cap each relayed pair at this many bytes per second, both
    /// directions together: 10M, 512k; `off` for no cap.
    #[arg(long, default_value = "64M", value_name = "RATE", value_parser = parse_limit)]
    pub relay_rate: Limit,

    /// Cap the whole relay, all pairs together, at this many bytes per
    /// second (the default is about a 1 Gbit/s link); `off` for no cap.
    #[arg(long, default_value = "128M", value_name = "RATE", value_parser = parse_limit)]
    pub relay_total_rate: Limit,

    /// End a relayed pair once it has moved this many bytes, both
    /// directions together: 64G, 500M; `off` for no cap. The transfer can
    /// then be resumed.
    #[arg(long, default_value = "64G", value_name = "BYTES", value_parser = parse_limit)]
    pub relay_max_bytes: Limit,

    /// End a relayed pair after this many seconds, busy or not (default
    /// 24 h); 0 for no limit. The transfer can then be resumed.
    #[arg(long, default_value_t = 86_400, value_name = "SECONDS")]
    pub relay_max_lifetime: u64,

    /// Close a relayed pair after this many seconds without a byte.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub relay_idle: u64,
}

/// A byte or rate limit from the command line; `None` is `off`.
pub type Limit = Option<u64>;

/// Parses a byte count or rate such as 64M, 512k, 1.5G (binary units), or
/// `off` (also `none`, `0`) for no limit.
fn parse_limit(text: &str) -> Result<Limit, String> {
    match text.trim() {
        "off" | "none" | "0" => Ok(None),
        other => crate::throttle::parse_rate(other)
            .map(Some)
            .map_err(|e| format!("{e}, or off for no limit")),
    }
}

/// `ferry relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Read options from this TOML file, as `ferry serve --config` does:
    /// each key is a long option of this command (`relay_secret_file =
    /// "/etc/ferry/relay.secret"`); the command line and FERRY_* variables
    /// win over it.
    #[arg(long, env = "FERRY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective options as TOML, each with where it came from,
    /// and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Address and TCP port to relay on: the HOST:PORT given to the
    /// rendezvous server's --relay-url. Ports below 1024 need root or
    /// CAP_NET_BIND_SERVICE.
    #[arg(long, default_value = "0.0.0.0:443", value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// The secret shared with the rendezvous server (its
    /// --relay-secret-file): at least 32 random bytes written as hex.
    /// Make one with `openssl rand -hex 32 > relay.secret`.
    #[arg(long, value_name = "FILE")]
    pub relay_secret_file: PathBuf,

    /// On Ctrl-C or SIGTERM, stop accepting and give relayed transfers
    /// this many seconds to finish before cutting them.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub shutdown_grace: u64,

    /// Serve Prometheus metrics (`GET /metrics`) and a health check
    /// (`GET /health`, 200 ok) on this address, e.g. 127.0.0.1:9090. Off
    /// by default. There is no authentication: bind it to loopback or a
    /// private address, never to a public one.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,

    #[command(flatten)]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub relay: RelayLimitArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn relay_url_needs_a_secret_and_leaves_the_limits_to_the_relay() {
        let serve = |extra: &[&str]| {
            let mut args = vec!["ferry", "serve"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
        };
        assert!(serve(&["--relay-url", "r:443"]).is_err());
        assert!(serve(&["--relay-url", "r:443", "--relay-secret-file", "s"]).is_ok());
        assert!(
            serve(&[
                "--relay-url",
                "r:443",
                "--relay-secret-file",
                "s",
                "--relay-max-pairs",
                "3"
            ])
            .is_err()
        );
        assert!(serve(&["--relay-max-pairs", "3"]).is_ok());
        assert!(Cli::try_parse_from(["ferry", "relay"]).is_err());
        assert!(
            Cli::try_parse_from([
                "ferry",
                "relay",
                "--relay-secret-file",
                "s",
                "--relay-rate",
                "10M"
            ])
            .is_ok()
        );
    }

    #[test]
    fn relay_limits_have_defaults_and_can_be_switched_off() {
        let relay = |extra: &[&str]| {
            let mut args = vec!["ferry", "relay", "--relay-secret-file", "s"];
            args.extend_from_slice(extra);
            match Cli::try_parse_from(args).map(|cli| cli.command) {
                Ok(Command::Relay(args)) => Ok(args),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        };
        let defaults = relay(&[]).unwrap();
        assert_eq!(defaults.relay.relay_rate, Some(64 << 20));
        assert_eq!(defaults.relay.relay_total_rate, Some(128 << 20));
        assert_eq!(defaults.relay.relay_max_bytes, Some(64 << 30));
        assert_eq!(defaults.relay.relay_max_lifetime, 86_400);
        assert_eq!(defaults.shutdown_grace, 5);
        let off = relay(&[
            "--relay-rate",
            "off",
            "--relay-total-rate",
            "0",
            "--relay-max-bytes",
            "none",
            "--relay-max-lifetime",
            "0",
        ])
        .unwrap();
        assert_eq!(off.relay.relay_rate, None);
        assert_eq!(off.relay.relay_total_rate, None);
        assert_eq!(off.relay.relay_max_bytes, None);
        assert!(relay(&["--relay-max-bytes", "lots"]).is_err());
        // On serve too, and refused with a relay elsewhere.
        let serve = |extra: &[&str]| {
            let mut args = vec!["ferry", "serve"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args)
        };
        assert!(serve(&["--relay-total-rate", "1G", "--stun-rate", "50"]).is_ok());
        assert!(serve(&["--stun-rate", "0"]).is_err());
        let elsewhere = ["--relay-url", "r:443", "--relay-secret-file", "s"];
        assert!(serve(&[&elsewhere[..], &["--relay-max-bytes", "1G"]].concat()).is_err());
    }

    #[test]
    fn a_code_comes_from_one_place_only() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["ferry"], args].concat());
        assert!(parse(&["receive"]).is_ok());
        assert!(parse(&["receive", "7-a-b"]).is_ok());
        assert!(parse(&["receive", "--code-file", "f"]).is_ok());
        assert!(parse(&["receive", "7-a-b", "--code-file", "f"]).is_err());
        assert!(parse(&["send", "x", "--code-file", "f"]).is_ok());
        assert!(parse(&["send", "x", "--code", "7-a-b", "--code-file", "f"]).is_err());
    }

    #[test]
    fn send_needs_paths_or_text() {
        assert!(Cli::try_parse_from(["ferry", "send"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "send", "--text", "hi"]).is_ok());
        assert!(Cli::try_parse_from(["ferry", "send", "a", "--text", "hi"]).is_err());
    }
}
