//! Stage 2: the rustls listener and client-certificate verification.
//!
//! Threat model: the caller is anyone the source check let through. We require a client
//! certificate on every connection (there is no setting to turn that off) and accept it when
//! it chains to the configured CA bundle (webpki: validity dates, key usage, chain) or when
//! its SHA-256 (of the DER, or of the SPKI) is pinned; webpki refuses a self-signed leaf as
//! its own trust anchor, so pins have their own path here, which still checks the validity
//! dates and the handshake signature. Several pins may be listed to stage a rotation.
//! A certificate x509-parser cannot parse, or with several subject CNs, is refused.
//! A chain webpki accepted is remembered for a few minutes by its exact bytes, inside its
//! validity dates, so a repeat connection skips the CA signature check ([`Accepted`]).
//!
//! The TLS configuration (server certificate, CA bundle, pins) is rebuilt whole on reload and
//! swapped atomically: connections already open keep the one they started with; a new
//! configuration also starts a new session cache, so a session resumed after a reload cannot
//! bypass trust that the reload withdrew.
//! Not defended here: revocation (no CRL or OCSP), client-certificate renegotiation (rustls
//! does not do it), and HTTP/2 (we only offer HTTP/1.1).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::tls::TlsStream;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

use crate::config::{ClientTrust, Config};
use crate::identity::PeerIdentity;
use crate::metrics::Metrics;

/// The crypto provider used everywhere (ring, as pingora-rustls installs), with the TLS 1.3
/// suites in our order of preference: AES-128-GCM/SHA-256 first. ring has no fast SHA-512 on
/// every CPU (on AMD it falls back to portable code), so SHA-384 suites cost more per handshake
/// and resumption without being stronger in any way that matters here.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => 1,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 2,
        _ => 3,
    };
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

pub use crate::certs::unix_now;

/// Why the TLS configuration of a policy generation could not be built. The files were
/// checked when the configuration was loaded, so these are rare; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the CA bundle cannot verify client certificates ({0}): check that client_cert.ca_bundle holds CA certificates")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    #[error("the server key cannot be used ({0}): give server.tls_key an RSA, ECDSA or Ed25519 key that belongs to server.tls_cert")]
    ServerKey(rustls::Error),
    #[error("the TLS protocol versions cannot be set up ({0}); this is a bug, please report it")]
    Versions(rustls::Error),
    #[error("TLS session tickets cannot be set up ({0}): the system's random number generator may be unavailable")]
    Tickets(rustls::Error),
}

/// Verifies client certificates: chain to the CA bundle, or a pin.
pub struct ClientVerifier {
    webpki: Option<Arc<dyn ClientCertVerifier>>,
    /// Chains webpki accepted lately, newest last (see [`Accepted`]).
    accepted: Mutex<Vec<Accepted>>,
    pins: Vec<[u8; 32]>,
    spki_pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
    metrics: Arc<Metrics>,
}

/// How many accepted chains a verifier remembers.
const ACCEPTED_CHAINS: usize = 8;
/// How long, at most, an accepted chain is taken as accepted again without webpki.
const ACCEPTED_FOR_SECS: u64 = 300;

/// A client chain webpki accepted, remembered by its exact bytes.
///
/// Salesforce presents the same certificate, signed by the same CA, on every connection, and
/// checking the CA's signature on it is about a quarter of a full handshake's CPU. webpki's
/// answer depends only on the chain's bytes, the trust anchors and the time: the anchors are
/// fixed for this verifier (a reload builds a new one, with nothing remembered), the bytes
/// are compared whole, and the answer is reused only while the time lies in `[from, until)`,
/// from the check to the earliest expiry in the chain, and for [`ACCEPTED_FOR_SECS`] at
/// most. The handshake's own signature, the client's proof that it holds the key, is still
/// checked on every connection; refusals are never remembered.
struct Accepted {
    /// End entity first, then the intermediates in the order presented.
    chain: Vec<Box<[u8]>>,
    from: u64,
    until: u64,
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("ca", &self.webpki.is_some())
            .field("pins", &self.pins.len())
            .field("spki_pins", &self.spki_pins.len())
            .finish()
    }
}

impl ClientVerifier {
    pub fn new(trust: &ClientTrust, metrics: Arc<Metrics>) -> Result<Self, TlsError> {
        let provider = provider();
        let webpki = if trust.roots.is_empty() {
            None
        } else {
            let mut roots = rustls::RootCertStore::empty();
            roots.add_parsable_certificates(trust.roots.iter().cloned());
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?;
            Some(v)
        };
        Ok(ClientVerifier {
            webpki,
            accepted: Mutex::new(Vec::with_capacity(ACCEPTED_CHAINS)),
            pins: trust.pins.clone(),
            spki_pins: trust.spki_pins.clone(),
            provider,
            metrics,
        })
    }

    fn refuse(
        &self,
        kind: &'static str,
        err: rustls::Error,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.metrics.client_cert_rejection(kind);
        Err(err)
    }

    fn accepted(&self) -> std::sync::MutexGuard<'_, Vec<Accepted>> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether webpki accepted exactly this chain lately, for a time that covers `now`.
    fn accepted_lately(
        &self,
        end_entity: &[u8],
        intermediates: &[CertificateDer<'_>],
        now: u64,
    ) -> bool {
        let presented = std::iter::once(end_entity).chain(intermediates.iter().map(|c| &c[..]));
        self.accepted().iter().any(|a| {
            a.from <= now
                && now < a.until
                && a.chain.len() == 1 + intermediates.len()
                && a.chain.iter().map(|c| &c[..]).eq(presented.clone())
        })
    }

    /// Remember a chain webpki has just accepted at `now` (see [`Accepted`]).
    fn remember(
        &self,
        end_entity: &[u8],
        leaf_not_after: i64,
        intermediates: &[CertificateDer<'_>],
        now: u64,
    ) {
        let mut until = now.saturating_add(ACCEPTED_FOR_SECS);
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(Box::from(end_entity));
        let mut not_after = vec![leaf_not_after];
        for c in intermediates {
            // webpki accepted it, so it parses; if x509-parser disagrees, remember nothing.
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(c) else {
                return;
            };
            not_after.push(cert.validity().not_after.timestamp());
            chain.push(Box::from(&c[..]));
        }
        for t in not_after {
            until = until.min(u64::try_from(t).unwrap_or(0));
        }
        if until <= now {
            return;
        }
        let mut accepted = self.accepted();
        if accepted.len() >= ACCEPTED_CHAINS {
            accepted.remove(0);
        }
        accepted.push(Accepted {
            chain,
            from: now,
            until,
        });
    }
}

fn cert_error_kind(e: &rustls::Error) -> &'static str {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => "expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "not_yet_valid",
            C::UnknownIssuer => "unknown_issuer",
            C::BadSignature => "bad_signature",
            C::BadEncoding => "bad_encoding",
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => "wrong_key_usage",
            C::Revoked => "revoked",
            _ => "invalid",
        },
        _ => "invalid",
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        match &self.webpki {
            Some(v) => v.root_hint_subjects(),
            None => &[],
        }
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let id = match PeerIdentity::shared(end_entity) {
            Ok(id) => id,
            Err(e) => {
                return self.refuse(
                    e.kind(),
                    rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding),
                )
            }
        };
        if self.pins.contains(&id.sha256) || self.spki_pins.contains(&id.spki_sha256) {
            let now = now.as_secs() as i64;
            if now > id.not_after {
                return self.refuse(
                    "expired",
                    rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
                );
            }
            if now < id.not_before {
                return self.refuse(
                    "not_yet_valid",
                    rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet),
                );
            }
            return Ok(ClientCertVerified::assertion());
        }
        match &self.webpki {
            Some(_) if self.accepted_lately(end_entity, intermediates, now.as_secs()) => {
                Ok(ClientCertVerified::assertion())
            }
            Some(v) => v
                .verify_client_cert(end_entity, intermediates, now)
                .inspect(|_| self.remember(end_entity, id.not_after, intermediates, now.as_secs()))
                .or_else(|e| {
                    let kind = match cert_error_kind(&e) {
                        "unknown_issuer" if !self.pins.is_empty() || !self.spki_pins.is_empty() => {
                            "unknown_issuer_not_pinned"
                        }
                        k => k,
                    };
                    self.refuse(kind, e)
                }),
            None => self.refuse(
                "not_pinned",
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            ),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Build the rustls server configuration for one policy generation, from the certificates,
/// key and trust that configuration loading already read and checked.
pub fn server_config(
    config: &Config,
    metrics: Arc<Metrics>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = ClientVerifier::new(&config.trust, metrics)?;
    let server = &config.server;
    let key = CertifiedKey::from_der(
        server.cert_chain.clone(),
        server.cert_key.clone_key(),
        &provider(),
    )
    .map_err(TlsError::ServerKey)?;
    let mut sc = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Versions)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(FixedCert(Arc::new(key))));
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    sc.ignore_client_order = true;
    // Resumption by ticket only, with the lifetime enforced here: rustls itself only tells
    // the client how long a ticket lives. (No stateful session cache: it has no lifetime.)
    sc.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    let inner = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Tickets)?;
    sc.ticketer = Arc::new(AgedTickets {
        inner,
        lifetime: config.timeouts.tls_ticket_lifetime,
    });
    Ok(Arc::new(sc))
}

/// Session tickets that expire: the issue time is sealed inside the ticket (by rustls's own
/// ticketer, which encrypts and authenticates it), and a ticket older than `lifetime` no
/// longer decrypts, so the client falls back to a full handshake, which verifies its
/// certificate again.
#[derive(Debug)]
struct AgedTickets {
    inner: Arc<dyn rustls::server::ProducesTickets>,
    lifetime: std::time::Duration,
}

impl rustls::server::ProducesTickets for AgedTickets {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        u32::try_from(self.lifetime.as_secs()).unwrap_or(u32::MAX)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut sealed = Vec::with_capacity(8 + plain.len());
        sealed.extend_from_slice(&unix_now().to_be_bytes());
        sealed.extend_from_slice(plain);
        self.inner.encrypt(&sealed)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let sealed = self.inner.decrypt(cipher)?;
        let (issued, plain) = sealed.split_first_chunk::<8>()?;
        let age = unix_now().saturating_sub(i64::from_be_bytes(*issued));
        (0..=self.lifetime.as_secs() as i64)
            .contains(&age)
            .then(|| plain.to_vec())
    }
}

/// Why a handshake did not complete, as a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    Timeout,
    NoClientCert,
    BadClientCert,
    Protocol,
    Closed,
}

impl HandshakeFailure {
    pub fn kind(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NoClientCert => "no_client_cert",
            HandshakeFailure::BadClientCert => "bad_client_cert",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Closed => "closed",
        }
    }
}

/// pingora flattens the rustls error into its message, so the kind is read from rustls's
/// wording (exact reasons for refused certificates are counted by [`ClientVerifier`]).
fn classify(e: &pingora_core::Error) -> HandshakeFailure {
    let text = e.to_string();
    if text.contains("peer sent no certificates") {
        HandshakeFailure::NoClientCert
    } else if text.contains("invalid peer certificate") {
        HandshakeFailure::BadClientCert
    } else if text.contains("end of file")
        || text.contains("reset by peer")
        || text.contains("Broken pipe")
    {
        HandshakeFailure::Closed
    } else {
        HandshakeFailure::Protocol
    }
}

/// One generation's TLS acceptor (server certificate and client trust), swapped with the
/// policy generation it belongs to: a connection is accepted and routed by the same set.
pub struct TlsStage {
    acceptor: Acceptor,
}

impl TlsStage {
    pub fn new(sc: Arc<ServerConfig>) -> Self {
        TlsStage {
            acceptor: Acceptor::from_server_config(sc),
        }
    }

    /// Complete the handshake within `limit`, and parse the verified client certificate.
    pub async fn handshake(
        &self,
        l4: L4Stream,
        limit: Duration,
    ) -> Result<(TlsStream<L4Stream>, Arc<PeerIdentity>), HandshakeFailure> {
        let tls = match tokio::time::timeout(
            limit,
            pingora_core::protocols::tls::server::handshake(&self.acceptor, l4),
        )
        .await
        {
            Err(_) => return Err(HandshakeFailure::Timeout),
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(t)) => t,
        };
        use pingora_core::protocols::Ssl;
        let der = tls
            .get_ssl()
            .and_then(|s| s.peer_certificate_der())
            .ok_or(HandshakeFailure::NoClientCert)?;
        // The verifier already parsed this certificate (and `shared` remembers it); failure
        // here would be a bug, and is still a refusal rather than a panic.
        let id = PeerIdentity::shared(der).map_err(|_| HandshakeFailure::BadClientCert)?;
        Ok((tls, id))
    }
}

#[cfg(test)]
mod handshake_kinds {
    use super::*;
    use pingora_core::ErrorType::TLSHandshakeFailure;

    /// The handshake-failure kinds are read from the wording of rustls's and the OS's errors,
    /// as pingora passes them on (`TLS accept() failed: {e}`). An upgrade that changes the
    /// wording must fail here, not silently turn every failure into `protocol`.
    #[test]
    fn handshake_failure_kinds_follow_the_wording_pingora_passes_on() {
        let via_pingora = |e: &dyn std::fmt::Display| {
            classify(&pingora_core::Error::explain(
                TLSHandshakeFailure,
                format!("TLS accept() failed: {e}"),
            ))
        };
        let io = |e: std::io::Error| via_pingora(&e);
        let rustls_io =
            |e: rustls::Error| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        assert_eq!(
            rustls_io(rustls::Error::NoCertificatesPresented),
            HandshakeFailure::NoClientCert
        );
        for cert in [
            rustls::CertificateError::UnknownIssuer,
            rustls::CertificateError::Expired,
            rustls::CertificateError::NotValidYet,
            rustls::CertificateError::BadSignature,
            rustls::CertificateError::ApplicationVerificationFailure,
        ] {
            assert_eq!(
                rustls_io(rustls::Error::InvalidCertificate(cert.clone())),
                HandshakeFailure::BadClientCert,
                "{cert:?}"
            );
        }
        assert_eq!(
            io(std::io::ErrorKind::UnexpectedEof.into()),
            HandshakeFailure::Closed
        );
        assert_eq!(
            io(std::io::Error::from_raw_os_error(104)),
            HandshakeFailure::Closed,
            "ECONNRESET"
        );
        assert_eq!(
            io(std::io::Error::from_raw_os_error(32)),
            HandshakeFailure::Closed,
            "EPIPE"
        );
        assert_eq!(
            rustls_io(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::NoCipherSuitesInCommon
            )),
            HandshakeFailure::Protocol
        );
    }
}

#[cfg(test)]
mod accepted_chains {
    use super::*;

    fn at(y: i32, m: u8, d: u8) -> time::OffsetDateTime {
        time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d)
            .unwrap()
            .midnight()
            .assume_utc()
    }

    fn unix(t: time::OffsetDateTime) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(t.unix_timestamp() as u64))
    }

    struct Pki {
        ca: CertificateDer<'static>,
        /// Valid from 2026-01-01 to 2026-06-01, issued by `ca`.
        leaf: CertificateDer<'static>,
        /// A certificate of another CA, sent as a stray intermediate.
        stray: CertificateDer<'static>,
    }

    fn pki() -> Pki {
        let ca_params = |cn: &str| {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.not_before = at(2025, 1, 1);
            p.not_after = at(2030, 1, 1);
            p
        };
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params("Client CA").self_signed(&ca_key).unwrap();
        let other_key = rcgen::KeyPair::generate().unwrap();
        let stray = ca_params("Other CA").self_signed(&other_key).unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["proxy.example".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "proxy.example");
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = at(2026, 1, 1);
        p.not_after = at(2026, 6, 1);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = p.signed_by(&leaf_key, &ca, &ca_key).unwrap();
        Pki {
            ca: ca.der().clone(),
            leaf: leaf.der().clone(),
            stray: stray.der().clone(),
        }
    }

    /// A verifier trusting the CA `root` (as a policy generation builds one).
    fn verifier(root: &CertificateDer<'static>) -> ClientVerifier {
        let trust = ClientTrust {
            roots: vec![root.clone()],
            ca_file: None,
            pins: vec![],
            spki_pins: vec![],
            ca_expiry: vec![],
        };
        ClientVerifier::new(&trust, Arc::new(Metrics::new().unwrap())).unwrap()
    }

    #[test]
    fn an_accepted_chain_is_remembered_only_for_its_bytes_and_its_validity() {
        let pki = pki();
        let v = verifier(&pki.ca);
        let check = |chain: &[CertificateDer<'static>], t| {
            v.verify_client_cert(&pki.leaf, chain, unix(t))
                .map(|_| ())
                .map_err(|e| cert_error_kind(&e))
        };
        let march = at(2026, 3, 1);
        assert_eq!(check(&[], march), Ok(()));
        {
            let accepted = v.accepted();
            assert_eq!(accepted.len(), 1, "the chain is remembered");
            let a = &accepted[0];
            assert_eq!(a.from, march.unix_timestamp() as u64);
            assert_eq!(a.until, a.from + ACCEPTED_FOR_SECS);
        }
        assert!(v.accepted_lately(&pki.leaf, &[], march.unix_timestamp() as u64 + 10));
        assert_eq!(check(&[], march + time::Duration::seconds(10)), Ok(()));

        // Outside the remembered window webpki decides again: after the leaf's expiry, and
        // before the check (a clock set back past the leaf's start).
        assert!(!v.accepted_lately(&pki.leaf, &[], at(2026, 7, 1).unix_timestamp() as u64));
        assert_eq!(check(&[], at(2026, 7, 1)), Err("expired"));
        assert_eq!(check(&[], at(2025, 12, 1)), Err("not_yet_valid"));

        // The same leaf with other intermediates is another chain.
        assert!(!v.accepted_lately(
            &pki.leaf,
            std::slice::from_ref(&pki.stray),
            march.unix_timestamp() as u64
        ));
        assert_eq!(check(std::slice::from_ref(&pki.stray), march), Ok(()));
        assert_eq!(v.accepted().len(), 2);

        // Close to the leaf's expiry, the window ends with the leaf.
        let late = at(2026, 6, 1) - time::Duration::seconds(30);
        assert_eq!(check(&[], late), Ok(()));
        let a = v.accepted().last().map(|a| (a.from, a.until)).unwrap();
        assert_eq!(
            a,
            (
                late.unix_timestamp() as u64,
                at(2026, 6, 1).unix_timestamp() as u64
            )
        );
    }

    #[test]
    fn a_refused_chain_is_never_remembered() {
        let pki = pki();
        let v = verifier(&pki.ca);
        let t = unix(at(2026, 7, 1));
        assert!(v.verify_client_cert(&pki.leaf, &[], t).is_err());
        assert!(v.verify_client_cert(&pki.stray, &[], t).is_err());
        assert!(v.accepted().is_empty());
    }

    #[test]
    fn a_reload_starts_with_nothing_remembered() {
        let pki = pki();
        let first = verifier(&pki.ca);
        let march = unix(at(2026, 3, 1));
        assert!(first.verify_client_cert(&pki.leaf, &[], march).is_ok());
        // A configuration that no longer trusts the CA: the new verifier refuses at once.
        let second = verifier(&pki.stray);
        assert!(second.verify_client_cert(&pki.leaf, &[], march).is_err());
    }
}
