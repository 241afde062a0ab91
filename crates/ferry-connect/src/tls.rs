//! TLS 1.3 with mutually pinned, throw-away self-signed certificates.
//!
//! ```text
//! each side:  Identity::generate()  ──fingerprint (under the SPAKE2 key)──▶  peer
//! listener:   tls_acceptor(ours, peer_fp)   requires a client certificate == peer_fp
//! connector:  tls_connector(ours, peer_fp)  requires a server certificate == peer_fp
//! ```
//!
//! Names, validity dates and CAs are ignored: the only thing that makes a
//! certificate acceptable is that the SHA-256 of its DER equals the pinned
//! fingerprint. The handshake signature is still verified with the crypto
//! provider's algorithms, which proves the peer holds the private key.
//! One crypto provider (ring) is used explicitly, never the process default.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::error::ConnectError;

/// The ALPN protocol both sides require.
pub const ALPN: &[u8] = b"ferry/1";

/// The subject alternative name put in the certificate; it carries no
/// meaning, the fingerprint is what is checked.
pub const CERTIFICATE_NAME: &str = "ferry";

/// A throw-away self-signed certificate and its private key (ECDSA P-256).
pub struct Identity {
    certificate: CertificateDer<'static>,
    private_key: PrivatePkcs8KeyDer<'static>,
    fingerprint: [u8; 32],
}

impl Identity {
    /// Generates a fresh key pair and a self-signed certificate for it, with
    /// the subject alternative name `ferry`.
    pub fn generate() -> Result<Identity, ConnectError> {
        let certified = rcgen::generate_simple_self_signed(vec![CERTIFICATE_NAME.to_owned()])
            .map_err(|e| ConnectError::Identity {
                reason: e.to_string(),
            })?;
        let certificate = certified.cert.der().clone();
        let private_key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let fingerprint = sha256(&certificate);
        Ok(Identity {
            certificate,
            private_key,
            fingerprint,
        })
    }

    /// Lowercase hex SHA-256 of the certificate's DER: what the peer pins.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.fingerprint)
    }

    /// The certificate in DER form.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.private_key.clone_key())
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// Lowercase hex SHA-256 of a certificate's DER, as [`Identity::fingerprint`]
/// computes it.
pub fn certificate_fingerprint(certificate_der: &[u8]) -> String {
    hex::encode(sha256(certificate_der))
}

/// TLS server side: requires a client certificate whose fingerprint equals
/// `peer_fingerprint` and presents ours.
pub fn tls_acceptor(
    ours: &Identity,
    peer_fingerprint: &str,
) -> Result<tokio_rustls::TlsAcceptor, ConnectError> {
    Ok(tokio_rustls::TlsAcceptor::from(server_config(
        ours,
        peer_fingerprint,
    )?))
}

/// TLS client side: accepts only a server certificate whose fingerprint
/// equals `peer_fingerprint` and presents ours as the client certificate.
pub fn tls_connector(
    ours: &Identity,
    peer_fingerprint: &str,
) -> Result<tokio_rustls::TlsConnector, ConnectError> {
    Ok(tokio_rustls::TlsConnector::from(client_config(
        ours,
        peer_fingerprint,
    )?))
}

/// The rustls server configuration behind [`tls_acceptor`] (TLS 1.3 only,
/// ALPN `ferry/1`, no session resumption), for transports that take a
/// rustls configuration directly.
pub fn server_config(
    ours: &Identity,
    peer_fingerprint: &str,
) -> Result<Arc<rustls::ServerConfig>, ConnectError> {
    let pin = Pin::parse(peer_fingerprint)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedClientVerifier {
        pin,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![ours.certificate.clone()], ours.private_key())
        .map_err(tls_error)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // Every pairing has fresh certificates: there is nothing to resume.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The rustls client configuration behind [`tls_connector`] (TLS 1.3 only,
/// ALPN `ferry/1`, no session resumption).
pub fn client_config(
    ours: &Identity,
    peer_fingerprint: &str,
) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    let pin = Pin::parse(peer_fingerprint)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = PinnedServerVerifier {
        pin,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![ours.certificate.clone()], ours.private_key())
        .map_err(tls_error)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

fn tls_error(source: rustls::Error) -> ConnectError {
    ConnectError::Tls { source }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A pinned certificate fingerprint.
#[derive(Debug, Clone, Copy)]
struct Pin([u8; 32]);

impl Pin {
    fn parse(fingerprint: &str) -> Result<Pin, ConnectError> {
        let invalid = || ConnectError::InvalidFingerprint {
            fingerprint: fingerprint.chars().take(80).collect(),
        };
        let bytes = hex::decode(fingerprint.trim()).map_err(|_| invalid())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| invalid())?;
        Ok(Pin(bytes))
    }

    fn check(&self, certificate: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if sha256(certificate) == self.0 {
            Ok(())
        } else {
            tracing::debug!(
                expected = %hex::encode(self.0),
                got = %certificate_fingerprint(certificate),
                "peer presented a certificate that does not match the pinned fingerprint"
            );
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

#[derive(Debug)]
struct PinnedServerVerifier {
    pin: Pin,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.pin.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable with a TLS 1.3-only configuration, but still correct.
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

#[derive(Debug)]
struct PinnedClientVerifier {
    pin: Pin,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.pin.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
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
    fn fingerprint_is_lowercase_hex_sha256_of_the_certificate() {
        let identity = Identity::generate().unwrap();
        let fingerprint = identity.fingerprint();
        assert_eq!(fingerprint.len(), 64);
        assert!(
            fingerprint
                .chars()
                .all(|c| matches!(c, '0'..='9' | 'a'..='f'))
        );
        assert_eq!(
            fingerprint,
            certificate_fingerprint(identity.certificate_der())
        );
        let digest = ring::digest::digest(&ring::digest::SHA256, identity.certificate_der());
        assert_eq!(fingerprint, hex::encode(digest.as_ref()));
    }

    #[test]
    fn identities_are_fresh_each_time() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn debug_does_not_print_the_key() {
        let identity = Identity::generate().unwrap();
        let text = format!("{identity:?}");
        assert!(text.contains(&identity.fingerprint()));
        assert!(!text.contains("private"));
    }

    #[test]
    fn invalid_fingerprints_are_rejected() {
        let identity = Identity::generate().unwrap();
        for bad in [
            "",
            "abc",
            "zz",
            &"a".repeat(63),
            &"a".repeat(66),
            &"g".repeat(64),
        ] {
            let err = tls_connector(&identity, bad).err().unwrap();
            assert!(
                matches!(err, ConnectError::InvalidFingerprint { .. }),
                "{bad}: {err}"
            );
            let err = tls_acceptor(&identity, bad).err().unwrap();
            assert!(matches!(err, ConnectError::InvalidFingerprint { .. }));
        }
        // Upper-case hex is the same fingerprint.
        let upper = identity.fingerprint().to_uppercase();
        assert!(tls_connector(&identity, &upper).is_ok());
    }

    /// Runs a handshake between two in-memory connections.
    fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<(rustls::ClientConnection, rustls::ServerConnection), rustls::Error> {
        let name = ServerName::from(std::net::Ipv4Addr::LOCALHOST);
        let mut client = rustls::ClientConnection::new(client, name)?;
        let mut server = rustls::ServerConnection::new(server)?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                server.read_tls(&mut buf.as_slice()).unwrap();
                server.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                client.read_tls(&mut buf.as_slice()).unwrap();
                client.process_new_packets()?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok((client, server));
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn pinned_handshake_is_tls13_with_ferry_alpn() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let client = client_config(&a, &b.fingerprint()).unwrap();
        let server = server_config(&b, &a.fingerprint()).unwrap();
        let (client, server) = handshake(client, server).unwrap();
        assert_eq!(
            client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(client.alpn_protocol(), Some(ALPN));
        assert_eq!(server.alpn_protocol(), Some(ALPN));
        let seen = server.peer_certificates().unwrap();
        assert_eq!(certificate_fingerprint(&seen[0]), a.fingerprint());
    }

    #[test]
    fn handshake_fails_on_either_wrong_pin() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let c = Identity::generate().unwrap();
        // Client pins someone else.
        let err = handshake(
            client_config(&a, &c.fingerprint()).unwrap(),
            server_config(&b, &a.fingerprint()).unwrap(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
        // Server pins someone else.
        let err = handshake(
            client_config(&a, &b.fingerprint()).unwrap(),
            server_config(&b, &c.fingerprint()).unwrap(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");
    }

    #[test]
    fn tls12_clients_are_refused() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = PinnedServerVerifier {
            pin: Pin::parse(&b.fingerprint()).unwrap(),
            algorithms: provider.signature_verification_algorithms,
        };
        let mut tls12 = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(vec![a.certificate.clone()], a.private_key())
            .unwrap();
        tls12.alpn_protocols = vec![ALPN.to_vec()];
        let server = server_config(&b, &a.fingerprint()).unwrap();
        assert!(handshake(Arc::new(tls12), server).is_err());
    }

    #[test]
    fn pin_accepts_only_the_pinned_certificate() {
        let a = Identity::generate().unwrap();
        let b = Identity::generate().unwrap();
        let pin = Pin::parse(&a.fingerprint()).unwrap();
        assert!(pin.check(a.certificate_der()).is_ok());
        assert!(pin.check(b.certificate_der()).is_err());
    }
}
