//! Certificates and keys as files hold them: PEM parsed into DER, every certificate parsed
//! once by x509-parser, a server key checked against its certificate, and the expiry facts
//! (`notAfter`, a readable name) that `check` warns about and the metrics export.
//!
//! Configuration validation calls this on the bytes it read, so `check` and `serve` refuse
//! exactly the same files; the TLS stage then builds its rustls configuration from the DER
//! held in the validated configuration and never reads a file itself (pingora's own loader
//! panics on an unreadable one).
//!
//! This module does not read files, decide trust, or verify a peer: it knows no stage and no
//! configuration layout. Errors name the file and say what to do; they never hold key bytes.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::*;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Problems with a certificate or key file, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {err}")]
    Read { path: String, err: std::io::Error },
    #[error("{path} holds no PEM certificate: give the chain, leaf first")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: String },
    #[error("{path}: a certificate could not be parsed; re-export it as PEM")]
    BadCertificate { path: String },
    #[error("{key} does not belong to the certificate in {cert}, or its type is unsupported: use the key the certificate was issued for")]
    KeyMismatch { cert: String, key: String },
    #[error("{path} holds no certificate: an empty CA bundle would trust nobody; put Salesforce's CA (PEM) in it or use pin_sha256")]
    EmptyCaBundle { path: String },
    #[error("{path}: {count} certificate(s) cannot be used as a trust anchor; put only CA certificates (PEM) in the bundle")]
    NotTrustAnchor { path: String, count: usize },
}

impl CertError {
    /// The error for a file that could not be read.
    pub fn read(path: &Path, err: std::io::Error) -> Self {
        CertError::Read {
            path: path.display().to_string(),
            err,
        }
    }
}

/// What one certificate says about itself, for expiry warnings and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// The subject's common name, else the whole RFC 4514 subject.
    pub name: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl CertFacts {
    /// Parse one DER certificate; `None` when x509-parser refuses it (or bytes trail it).
    pub fn from_der(der: &[u8]) -> Option<CertFacts> {
        let (rest, cert) = X509Certificate::from_der(der).ok()?;
        if !rest.is_empty() {
            return None;
        }
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| subject.to_string());
        Some(CertFacts {
            name,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// Whole days until `not_after` (negative once expired).
    pub fn days_left(&self, now: i64) -> i64 {
        (self.not_after - now) / 86_400
    }
}

/// Every certificate of a PEM file, each of which x509-parser accepts.
pub fn pem_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bad = || CertError::BadCertificate {
        path: path.display().to_string(),
    };
    let certs = rustls_pemfile::certs(&mut &*pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad())?;
    if certs.is_empty() {
        return Err(CertError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    if certs.iter().any(|c| CertFacts::from_der(c).is_none()) {
        return Err(bad());
    }
    Ok(certs)
}

/// A server certificate chain (leaf first) and its private key, checked to belong together.
#[derive(Debug)]
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    /// `Debug` of the DER key type prints no key material.
    pub key: PrivateKeyDer<'static>,
    /// The leaf's facts.
    pub leaf: CertFacts,
}

/// Parse a server chain and key and check that the key belongs to the leaf (with the same
/// ring provider the TLS stage signs with).
pub fn server_cert(
    cert_path: &Path,
    cert_pem: &[u8],
    key_path: &Path,
    key_pem: &[u8],
) -> Result<ServerCert, CertError> {
    let chain = pem_certs(cert_path, cert_pem)?;
    let key = rustls_pemfile::private_key(&mut &*key_pem)
        .ok()
        .flatten()
        .ok_or_else(|| CertError::NoKey {
            path: key_path.display().to_string(),
        })?;
    let leaf = CertFacts::from_der(&chain[0]).ok_or_else(|| CertError::BadCertificate {
        path: cert_path.display().to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
        |_| CertError::KeyMismatch {
            cert: cert_path.display().to_string(),
            key: key_path.display().to_string(),
        },
    )?;
    Ok(ServerCert { chain, key, leaf })
}

/// A PEM bundle of CA certificates, every one usable as a trust anchor.
#[derive(Debug, Clone)]
pub struct CaBundle {
    pub certs: Vec<CertificateDer<'static>>,
    /// The facts of each certificate, in file order.
    pub facts: Vec<CertFacts>,
}

/// Parse a CA bundle; an empty one is refused (it would trust nobody).
pub fn ca_bundle(path: &Path, pem: &[u8]) -> Result<CaBundle, CertError> {
    let certs = match pem_certs(path, pem) {
        Err(CertError::NoCertificate { path }) => return Err(CertError::EmptyCaBundle { path }),
        other => other?,
    };
    let facts = certs
        .iter()
        .filter_map(|c| CertFacts::from_der(c))
        .collect();
    let mut roots = rustls::RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs.iter().cloned());
    if bad > 0 {
        return Err(CertError::NotTrustAnchor {
            path: path.display().to_string(),
            count: bad,
        });
    }
    Ok(CaBundle { certs, facts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn self_signed(cn: &str) -> (String, String) {
        let mut p = CertificateParams::new(vec![cn.to_string()]).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn accepts_a_matching_chain_and_key_and_reads_its_facts() {
        let (cert, key) = self_signed("proxy.example");
        let sc = server_cert(
            Path::new("c.pem"),
            cert.as_bytes(),
            Path::new("k.pem"),
            key.as_bytes(),
        )
        .unwrap();
        assert_eq!(sc.chain.len(), 1);
        assert_eq!(sc.leaf.name, "proxy.example");
        assert!(sc.leaf.days_left(unix_now()) > 300);
        assert!(!format!("{sc:?}").contains(&key[30..60]));
    }

    #[test]
    fn refuses_a_key_of_another_certificate() {
        let (cert, _) = self_signed("a");
        let (_, other_key) = self_signed("b");
        let e = server_cert(
            Path::new("c.pem"),
            cert.as_bytes(),
            Path::new("k.pem"),
            other_key.as_bytes(),
        )
        .unwrap_err();
        assert!(matches!(e, CertError::KeyMismatch { .. }), "{e}");
        assert!(e
            .to_string()
            .contains("use the key the certificate was issued for"));
    }

    #[test]
    fn refuses_files_without_pem() {
        let (cert, _) = self_signed("a");
        let e = server_cert(Path::new("c.pem"), b"", Path::new("k.pem"), b"").unwrap_err();
        assert!(matches!(e, CertError::NoCertificate { .. }), "{e}");
        let e = server_cert(
            Path::new("c.pem"),
            cert.as_bytes(),
            Path::new("k.pem"),
            b"no key here",
        )
        .unwrap_err();
        assert!(matches!(e, CertError::NoKey { .. }), "{e}");
        let garbage = "-----BEGIN CERTIFICATE-----\nMAMCAQA=\n-----END CERTIFICATE-----\n";
        let e = pem_certs(Path::new("g.pem"), garbage.as_bytes()).unwrap_err();
        assert!(matches!(e, CertError::BadCertificate { .. }), "{e}");
    }

    #[test]
    fn an_empty_ca_bundle_is_refused_with_advice() {
        let e = ca_bundle(Path::new("ca.pem"), b"").unwrap_err();
        assert!(e.to_string().contains("would trust nobody"), "{e}");
        let (ca, _) = self_signed("Test CA");
        let b = ca_bundle(Path::new("ca.pem"), ca.as_bytes()).unwrap();
        assert_eq!(b.certs.len(), 1);
        assert_eq!(b.facts[0].name, "Test CA");
    }
}
