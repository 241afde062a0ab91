//! TLS on the server port: the one TCP port of `ferry serve` (signalling
//! and the relay) and of `ferry relay`, plain or inside TLS.
//!
//! ```text
//! server: accept -> Carrier::accept(tcp, Some(&ServerTls))
//!   peek the first byte (within PEEK_WAIT, holding the connection's
//!   accept permit and bucket slot, so a silent client costs one slot
//!   for a bounded time):
//!     0x16 (a TLS handshake record: ClientHello) -> TLS handshake
//!                                                  (HANDSHAKE_TIMEOUT)
//!     anything else ('{' of `hello` or `relay`)  -> plain, unchanged
//! client: ServerSpec::parse("HOST:PORT[#sha256=HEX | #tls | #tls-ca=FILE]")
//!   plain spec                 -> plain TCP, as always
//!   #sha256=HEX (a pin)        -> TLS; the leaf's SHA-256 must match
//!   #tls                       -> TLS; verified against webpki-roots
//!   #tls-ca=FILE               -> TLS; verified against the CAs in FILE
//! ```
//!
//! In the plain protocol the client speaks first (`hello` or `relay`),
//! so peeking costs a plain client nothing: its first byte is already on
//! the way. A TLS client also speaks first (its ClientHello), so the one
//! port serves both without a second listener.
//!
//! Policy: TLS is never silently dropped. A spec that asks for TLS gets
//! TLS or an error ([`TlsError::Handshake`]), never a fallback to plain; a
//! certificate that fails verification is an error. A plain spec stays
//! plain (the lab, old servers); the welcome tells such a client when its
//! server offers TLS (`tls: true`).
//!
//! Roots: `webpki-roots` (Mozilla's list, compiled in), not the
//! platform's verifier: one static binary behaves the same on every host,
//! including minimal containers with no `/etc/ssl`, and needs no OS
//! integration; a private CA is `#tls-ca=FILE` (`--tls-ca`), a
//! self-signed server a pin.
//!
//! The server's certificate ([`ServerTls`]) is read from PEM files (a
//! chain as Let's Encrypt writes it, and its key) and can be
//! [reloaded](ServerTls::reload): connections accepted after that get the
//! new certificate; a file that does not load leaves the old one in use.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};
use tracing::debug;

/// How long the server waits for a new connection's first byte to tell
/// TLS from plain. Plain clients send `hello` at once, so only a silent
/// client waits this long, holding its accept slot meanwhile.
pub const PEEK_WAIT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take, on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS handshake record (the ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What can go wrong with TLS on the server port.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// "the TLS certificate", "the TLS key", "the CA file".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A file held no usable PEM of the kind needed.
    #[error(
        "{path} holds no {what} in PEM form ({reason}); give a PEM file such as Let's Encrypt's fullchain.pem / privkey.pem"
    )]
    Pem {
        /// "certificate", "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error("the TLS configuration does not work: {0}")]
    Config(#[from] rustls::Error),
    /// A `#sha256=` pin that is not 64 hex digits.
    #[error(
        "the pinned fingerprint {pin:?} is not a SHA-256 in hex (64 hex digits, colons allowed); \
         copy it from `ferry serve`'s output"
    )]
    BadPin {
        /// What was given (shortened).
        pin: String,
    },
    /// A server spec ending in `#...` that is not one of the known forms.
    #[error(
        "{spec:?}: after '#' ferry expects sha256=HEX, tls or tls-ca=FILE (e.g. \
         example.org:443#sha256=...)"
    )]
    BadSpec {
        /// The spec (shortened).
        spec: String,
    },
    /// The TLS handshake with the server failed (its certificate did not
    /// verify, it does not speak TLS, or the connection broke).
    #[error("the TLS handshake with {server} failed: {reason}")]
    Handshake {
        /// HOST:PORT.
        server: String,
        /// Why, with what to do.
        reason: String,
    },
}

/// The TCP connection to a ferry server or relay: plain, or inside TLS.
#[derive(Debug)]
pub enum Carrier {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (either end).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Carrier {
    /// On the server: tells TLS from plain by the first byte and, for TLS,
    /// runs the handshake with the certificate `tls` holds now. Without
    /// `tls` the connection stays plain and nothing is read.
    pub async fn accept(tcp: TcpStream, tls: Option<&ServerTls>) -> io::Result<Carrier> {
        let Some(tls) = tls else {
            return Ok(Carrier::Plain(tcp));
        };
        let mut first = [0u8; 1];
        let peeked = timeout(PEEK_WAIT, tcp.peek(&mut first))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no first byte in time"))??;
        if peeked == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            return Ok(Carrier::Plain(tcp));
        }
        let acceptor = tls.acceptor();
        let stream = timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(Carrier::Tls(Box::new(stream.into())))
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Carrier::Plain(tcp) => tcp,
            Carrier::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Whether it runs inside TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Carrier::Tls(_))
    }

    /// Reads what is there (at least one byte, at most `room`) onto
    /// `buf`; `Ok(0)` at the end. Cancel-safe. A plain connection waits
    /// for readiness before it reserves room, so an idle one holds no
    /// buffer; a TLS one reserves first (rustls buffers anyway).
    pub async fn read_into(&mut self, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
        match self {
            Carrier::Plain(tcp) => loop {
                tcp.readable().await?;
                buf.reserve(room);
                let mut limited = (&mut *buf).limit(room);
                match tcp.try_read_buf(&mut limited) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            },
            Carrier::Tls(tls) => {
                buf.reserve(room);
                let mut limited = (&mut *buf).limit(room);
                tls.read_buf(&mut limited).await
            }
        }
    }
}

impl AsyncRead for Carrier {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Carrier::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Carrier::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Carrier {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Carrier::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Carrier::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Carrier::Plain(s) => Pin::new(s).poll_flush(cx),
            Carrier::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Carrier::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Carrier::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The server's certificate and key, shared by every listener of one
/// process and swapped whole by [`reload`](Self::reload).
#[derive(Clone)]
pub struct ServerTls {
    files: Option<(PathBuf, PathBuf)>,
    loaded: Arc<RwLock<Loaded>>,
}

struct Loaded {
    acceptor: TlsAcceptor,
    fingerprint: String,
}

impl ServerTls {
    /// Loads a certificate chain (PEM, leaf first) and its private key
    /// (PEM: PKCS#8, PKCS#1 or SEC1) from files that
    /// [`reload`](Self::reload) reads again.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        let loaded = load_files(cert, key)?;
        Ok(ServerTls {
            files: Some((cert.to_path_buf(), key.to_path_buf())),
            loaded: Arc::new(RwLock::new(loaded)),
        })
    }

    /// From PEM in memory (tests, generated certificates); nothing to
    /// reload.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<ServerTls, TlsError> {
        let loaded = load_pem(cert, key, Path::new("(memory)"), Path::new("(memory)"))?;
        Ok(ServerTls {
            files: None,
            loaded: Arc::new(RwLock::new(loaded)),
        })
    }

    /// Reads the files again; connections accepted from now on get the
    /// new certificate. On an error the old one stays in use. Returns the
    /// new leaf's fingerprint.
    pub fn reload(&self) -> Result<String, TlsError> {
        let Some((cert, key)) = &self.files else {
            return Ok(self.fingerprint());
        };
        let loaded = load_files(cert, key)?;
        let fingerprint = loaded.fingerprint.clone();
        *self
            .loaded
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = loaded;
        Ok(fingerprint)
    }

    /// Lowercase hex SHA-256 of the leaf certificate's DER: what a client
    /// pins (`--server HOST:PORT#sha256=...`).
    pub fn fingerprint(&self) -> String {
        self.read().fingerprint.clone()
    }

    fn acceptor(&self) -> TlsAcceptor {
        self.read().acceptor.clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

fn load_files(cert: &Path, key: &Path) -> Result<Loaded, TlsError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    load_pem(
        &read("the TLS certificate", cert)?,
        &read("the TLS key", key)?,
        cert,
        key,
    )
}

fn load_pem(
    cert: &[u8],
    key: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<Loaded, TlsError> {
    let chain = read_certificates(cert, cert_path)?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError::Pem {
        what: "private key",
        path: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let fingerprint = sha256_hex(&chain[0]);
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Loaded {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        fingerprint,
    })
}

/// Every certificate in a PEM file; at least one.
fn read_certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem {
        what: "certificate",
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if chain.is_empty() {
        return Err(bad("no BEGIN CERTIFICATE block".into()));
    }
    Ok(chain)
}

/// How a client checks the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Against the roots of `webpki-roots` (a public CA such as Let's
    /// Encrypt), for the host name the client dialled.
    PublicRoots,
    /// Against the CA certificates in this PEM file (a private CA).
    CaFile(PathBuf),
    /// The leaf's SHA-256 must be this (a self-signed server); names and
    /// dates are not checked, the handshake signature is.
    Pin([u8; 32]),
}

impl Trust {
    /// Parses a `sha256=` pin: 64 hex digits, colons and case ignored
    /// (`openssl x509 -fingerprint -sha256` prints `AB:CD:...`).
    pub fn pin(hex_digits: &str) -> Result<Trust, TlsError> {
        let cleaned: String = hex_digits
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        let mut pin = [0u8; 32];
        hex::decode_to_slice(cleaned.trim(), &mut pin).map_err(|_| TlsError::BadPin {
            pin: hex_digits.chars().take(100).collect(),
        })?;
        Ok(Trust::Pin(pin))
    }
}

/// A server as a client names it: `HOST:PORT`, and how to reach it.
///
/// The spec string (what `--server` and the `server` config key hold,
/// and what the session passes around) is `HOST:PORT`, optionally with
/// `#sha256=HEX`, `#tls` or `#tls-ca=FILE`; [`fmt::Display`] writes it
/// back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// HOST:PORT.
    pub addr: String,
    /// `None`: plain TCP.
    pub trust: Option<Trust>,
}

impl ServerSpec {
    /// Parses a spec; a plain `HOST:PORT` is [`trust`](Self::trust) `None`.
    pub fn parse(spec: &str) -> Result<ServerSpec, TlsError> {
        let Some((addr, fragment)) = spec.split_once('#') else {
            return Ok(ServerSpec {
                addr: spec.to_string(),
                trust: None,
            });
        };
        let trust = if let Some(pin) = fragment.strip_prefix("sha256=") {
            Trust::pin(pin)?
        } else if fragment == "tls" {
            Trust::PublicRoots
        } else if let Some(file) = fragment.strip_prefix("tls-ca=") {
            Trust::CaFile(PathBuf::from(file))
        } else {
            return Err(TlsError::BadSpec {
                spec: spec.chars().take(200).collect(),
            });
        };
        Ok(ServerSpec {
            addr: addr.to_string(),
            trust: Some(trust),
        })
    }

    /// The host part of [`addr`](Self::addr) (no port, no brackets): the
    /// name the certificate must carry.
    pub fn host(&self) -> &str {
        host_of(&self.addr)
    }

    /// The client side of TLS for this spec, if it asks for TLS.
    pub fn client_tls(&self) -> Result<Option<ClientTls>, TlsError> {
        self.trust.as_ref().map(ClientTls::new).transpose()
    }
}

impl fmt::Display for ServerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)?;
        match &self.trust {
            None => Ok(()),
            Some(Trust::PublicRoots) => f.write_str("#tls"),
            Some(Trust::CaFile(file)) => write!(f, "#tls-ca={}", file.display()),
            Some(Trust::Pin(pin)) => write!(f, "#sha256={}", hex::encode(pin)),
        }
    }
}

/// The host of `HOST:PORT` (`[v6]:port` too).
pub fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The client side of TLS towards a ferry server or relay.
#[derive(Clone)]
pub struct ClientTls {
    connector: TlsConnector,
    trust: Trust,
}

impl ClientTls {
    /// A client configuration that checks certificates as `trust` says.
    pub fn new(trust: &Trust) -> Result<ClientTls, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let config = match trust {
            Trust::PublicRoots => {
                let roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::CaFile(path) => {
                let pem = std::fs::read(path).map_err(|source| TlsError::Read {
                    what: "the CA file",
                    path: path.clone(),
                    source,
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for ca in read_certificates(&pem, path)? {
                    roots.add(ca)?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Pin(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier {
                    pin: *pin,
                    algorithms: provider().signature_verification_algorithms,
                }))
                .with_no_client_auth(),
        };
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            trust: trust.clone(),
        })
    }

    /// How it checks certificates.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Runs the handshake over `tcp` to `server` (HOST:PORT, whose host
    /// the certificate must name unless pinned), within
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn connect(&self, tcp: TcpStream, server: &str) -> Result<Carrier, TlsError> {
        let failed = |reason: String| TlsError::Handshake {
            server: server.to_string(),
            reason,
        };
        let host = host_of(server);
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| failed(format!("{host:?} is not a valid server name")))?;
        let stream = timeout(HANDSHAKE_TIMEOUT, self.connector.connect(name, tcp))
            .await
            .map_err(|_| {
                failed(format!(
                    "no answer within {} s; does it offer TLS on this port?",
                    HANDSHAKE_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|error| failed(self.explain(&error)))?;
        Ok(Carrier::Tls(Box::new(stream.into())))
    }

    /// What a failed handshake means, and what to do.
    fn explain(&self, error: &io::Error) -> String {
        let rustls_error = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match rustls_error {
            Some(rustls::Error::General(message)) => message.clone(),
            Some(rustls::Error::InvalidCertificate(why)) => format!(
                "its certificate is not valid ({why:?}){}",
                match self.trust {
                    Trust::PublicRoots =>
                        "; for a self-signed server pin its fingerprint \
                                           (HOST:PORT#sha256=..., `ferry serve` prints it), \
                                           for a private CA give --tls-ca FILE",
                    Trust::CaFile(_) => "; is it signed by the CA in --tls-ca?",
                    Trust::Pin(_) => "",
                }
            ),
            Some(rustls::Error::InvalidMessage(_))
            | Some(rustls::Error::InappropriateMessage { .. }) => {
                "it did not answer in TLS; an older or plain server (e.g. a lab server) speaks \
                 plain TCP only: drop #sha256=/#tls (and --tls) for it"
                    .to_string()
            }
            _ => error.to_string(),
        }
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("trust", &self.trust)
            .finish()
    }
}

/// Where the relay is when a client relays over TLS, and how to reach it.
#[derive(Debug, Clone)]
pub struct RelayTls {
    /// The relay's HOST:PORT (its host is the certificate's name).
    pub addr: String,
    /// How to check its certificate.
    pub tls: ClientTls,
}

/// One crypto provider (ring), named explicitly, never the process default.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Lowercase hex SHA-256 of a DER certificate.
pub fn sha256_hex(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// Accepts exactly the leaf whose SHA-256 is pinned.
#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = sha256_hex(end_entity);
        if got == hex::encode(self.pin) {
            return Ok(ServerCertVerified::assertion());
        }
        debug!(%got, "server certificate does not match the pin");
        Err(rustls::Error::General(format!(
            "the server's certificate has SHA-256 fingerprint {got}, not the pinned {}; if its \
             operator replaced the certificate, get the new fingerprint from its output (`ferry \
             serve` or `ferry relay`; a relay's pin is the server's --relay-sha256), or \
             someone may be in the middle",
            hex::encode(self.pin)
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        let pin = "ab".repeat(32);
        for spec in [
            "example.org:443".to_string(),
            "example.org:443#tls".to_string(),
            "[2001:db8::1]:443#tls-ca=/etc/ferry/ca.pem".to_string(),
            format!("203.0.113.7:443#sha256={pin}"),
        ] {
            assert_eq!(ServerSpec::parse(&spec).unwrap().to_string(), spec);
        }
        let colons = pin
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        let spec = ServerSpec::parse(&format!("h:1#sha256={colons}")).unwrap();
        assert_eq!(spec.trust, Some(Trust::Pin([0xab; 32])));
        assert_eq!(ServerSpec::parse("[::1]:443").unwrap().host(), "::1");
    }

    #[test]
    fn bad_specs_say_what_is_expected() {
        let bad = ServerSpec::parse("h:1#sha256=12").unwrap_err();
        assert!(bad.to_string().contains("64 hex digits"), "{bad}");
        let bad = ServerSpec::parse("h:1#https").unwrap_err();
        assert!(
            bad.to_string().contains("sha256=HEX, tls or tls-ca=FILE"),
            "{bad}"
        );
    }
}
