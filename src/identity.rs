//! Stage 3: what the verified client certificate says, and the route's `[identity]` rule.
//!
//! Threat model: the TLS stage has already proved the peer holds the key of a certificate
//! that chains to a trusted CA or is pinned. Several Salesforce orgs (or other tenants of a
//! shared CA) may hold such certificates, so a route can narrow who may use it by subject
//! common name or by pinning the exact certificate. Parsing is done by x509-parser on bytes
//! that the handshake accepted; a certificate it cannot parse, or whose subject carries more
//! than one common name (which name would a rule mean?), is refused, never guessed at.
//! Not defended here: revocation (no CRL/OCSP; rotate pins instead).

use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

/// How many recently seen certificates [`PeerIdentity::shared`] keeps parsed.
const RECENT: usize = 8;

/// A certificate's exact DER and what it says.
type Remembered = (Box<[u8]>, Arc<PeerIdentity>);

/// The identities of the last [`RECENT`] certificates parsed.
static RECENT_IDENTITIES: Mutex<Vec<Remembered>> = Mutex::new(Vec::new());

/// The client certificate of one connection, parsed once after the handshake.
#[derive(Debug, Clone)]
pub struct PeerIdentity {
    /// SHA-256 of the leaf's DER.
    pub sha256: [u8; 32],
    pub sha256_hex: String,
    /// SHA-256 of the leaf's SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
    /// RFC 4514 subject, for logs and the audit trail.
    pub subject: String,
    /// The subject's common name (exactly one; see the module doc).
    pub common_name: Option<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the client certificate could not be parsed")]
    Unparseable,
    #[error("the client certificate's subject has {0} common names; exactly one is allowed")]
    SeveralCommonNames(usize),
}

impl IdentityError {
    pub fn kind(&self) -> &'static str {
        match self {
            IdentityError::Unparseable => "bad_encoding",
            IdentityError::SeveralCommonNames(_) => "ambiguous_subject",
        }
    }
}

impl PeerIdentity {
    /// [`PeerIdentity::from_der`], remembered for the last few certificates by their exact
    /// bytes: Salesforce presents the same certificate on every connection, and the verifier
    /// and the handshake both need it parsed, so a new connection parses it (and hashes it)
    /// at most once in a while instead of twice. A certificate that does not parse is never
    /// remembered.
    pub fn shared(der: &[u8]) -> Result<Arc<PeerIdentity>, IdentityError> {
        let recent = || RECENT_IDENTITIES.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, id)) = recent().iter().find(|(seen, _)| **seen == *der) {
            return Ok(id.clone());
        }
        let id = Arc::new(PeerIdentity::from_der(der)?);
        let mut list = recent();
        if list.len() >= RECENT {
            list.remove(0);
        }
        list.push((der.into(), id.clone()));
        Ok(id)
    }

    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
        let (rest, cert) =
            X509Certificate::from_der(der).map_err(|_| IdentityError::Unparseable)?;
        if !rest.is_empty() {
            return Err(IdentityError::Unparseable);
        }
        let subject = cert.subject();
        let cns: Vec<_> = subject.iter_common_name().collect();
        let common_name = match cns.len() {
            0 => None,
            1 => Some(
                cns[0]
                    .as_str()
                    .map_err(|_| IdentityError::Unparseable)?
                    .to_string(),
            ),
            n => return Err(IdentityError::SeveralCommonNames(n)),
        };
        let sha256: [u8; 32] = Sha256::digest(der).into();
        let spki_sha256: [u8; 32] = Sha256::digest(cert.public_key().raw).into();
        Ok(PeerIdentity {
            sha256,
            sha256_hex: hex::encode(sha256),
            spki_sha256,
            subject: subject.to_string(),
            common_name,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// A route's `[identity]` rule. The configuration holds it as plain data
/// ([`crate::config::IdentityPolicy`]: accepted common names and pins); this stage owns what
/// it means, [`IdentityRule::check`], so the proxy calls `route.identity`'s `check` directly.
pub use crate::config::IdentityPolicy as IdentityRule;

/// Why a verified certificate may not use a route (said to the operator in the fault).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityDenied {
    #[error("the client certificate's common name is not one this route accepts")]
    CommonName,
    #[error("the client certificate is not one this route pins")]
    NotPinned,
    #[error("the client certificate has expired or is not yet valid: a resumed TLS session or a kept-alive connection does not extend it; renew the certificate")]
    OutsideValidity,
}

impl PeerIdentity {
    /// Whether the certificate is within its validity window at `now` (Unix seconds). The
    /// handshake checked it once; a resumed session or a long keep-alive connection must not
    /// outlive it, so every request checks again.
    pub fn check_validity(&self, now: i64) -> Result<(), IdentityDenied> {
        if now < self.not_before || now > self.not_after {
            return Err(IdentityDenied::OutsideValidity);
        }
        Ok(())
    }
}

impl IdentityRule {
    /// Every listed condition must hold: the certificate is one of the pins (when any are
    /// listed) and its common name is one of `subject_cn` (when any are listed).
    pub fn check(&self, peer: &PeerIdentity) -> Result<(), IdentityDenied> {
        if !self.pins.is_empty() && !self.pins.contains(&peer.sha256) {
            return Err(IdentityDenied::NotPinned);
        }
        if !self.subject_cn.is_empty() {
            let ok = peer.common_name.as_deref().is_some_and(|cn| {
                self.subject_cn
                    .iter()
                    .any(|want| want.eq_ignore_ascii_case(cn))
            });
            if !ok {
                return Err(IdentityDenied::CommonName);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn shared_identities_are_parsed_once_per_certificate() {
        let a = rcgen::generate_simple_self_signed(vec!["a.example".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.example".into()]).unwrap();
        let (a, b) = (a.cert.der().to_vec(), b.cert.der().to_vec());
        let first = PeerIdentity::shared(&a).unwrap();
        assert!(Arc::ptr_eq(&first, &PeerIdentity::shared(&a).unwrap()));
        assert_eq!(first.sha256, PeerIdentity::from_der(&a).unwrap().sha256);
        let other = PeerIdentity::shared(&b).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert_ne!(first.sha256, other.sha256);
        // One byte changed is another certificate (here one that does not parse).
        let mut bad = a.clone();
        bad[0] ^= 0xff;
        assert!(PeerIdentity::shared(&bad).is_err());
        assert!(
            PeerIdentity::shared(&bad).is_err(),
            "errors are not remembered"
        );
        // The list stays bounded.
        for n in 0..2 * RECENT {
            let c = rcgen::generate_simple_self_signed(vec![format!("c{n}.example")]).unwrap();
            PeerIdentity::shared(c.cert.der()).unwrap();
        }
        assert!(RECENT_IDENTITIES.lock().unwrap().len() <= RECENT);
    }

    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn cert_with(cns: &[&str]) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Salesforce");
        for cn in cns {
            dn.push(DnType::CommonName, *cn);
        }
        p.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn parses_common_name_and_fingerprint() {
        let der = cert_with(&["proxy.salesforce.com"]);
        let id = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(id.common_name.as_deref(), Some("proxy.salesforce.com"));
        assert_eq!(id.sha256_hex, hex::encode(Sha256::digest(&der)));
        assert!(id.subject.contains("proxy.salesforce.com"));
    }

    #[test]
    fn refuses_garbage_without_panicking() {
        assert_eq!(
            PeerIdentity::from_der(b"\x30\x03\x02\x01").unwrap_err(),
            IdentityError::Unparseable
        );
        assert_eq!(
            PeerIdentity::from_der(&[]).unwrap_err(),
            IdentityError::Unparseable
        );
        let mut der = cert_with(&["a"]);
        der.push(0);
        assert_eq!(
            PeerIdentity::from_der(&der).unwrap_err(),
            IdentityError::Unparseable
        );
    }

    fn rule(subject_cn: Vec<String>, pins: Vec<[u8; 32]>) -> IdentityRule {
        IdentityRule { subject_cn, pins }
    }

    #[test]
    fn rule_checks_cn_case_insensitively_and_pins() {
        let der = cert_with(&["Proxy.Salesforce.com"]);
        let id = PeerIdentity::from_der(&der).unwrap();
        let r = rule(vec!["proxy.salesforce.com".into()], vec![]);
        assert!(r.check(&id).is_ok());
        let r = rule(vec!["other.example".into()], vec![]);
        assert_eq!(r.check(&id), Err(IdentityDenied::CommonName));
        let r = rule(vec![], vec![[0u8; 32]]);
        assert_eq!(r.check(&id), Err(IdentityDenied::NotPinned));
        let r = rule(vec!["proxy.salesforce.com".into()], vec![id.sha256]);
        assert!(r.check(&id).is_ok());
    }
}
