//! A throw-away PKI for tests and `obmguard-demo`: every certificate the proxy must accept or
//! refuse, generated at run time with rcgen (ECDSA P-256 everywhere) and written as PEM files
//! into one directory.
//!
//! What is in it (see the fields of [`Pki`]): a server CA with a server certificate for
//! `localhost`, `127.0.0.1` and `::1` plus a second ("rotated") one from the same CA; a client CA
//! ("Test Salesforce Client CA") with a valid client certificate for `proxy.salesforce.com`, one
//! for another subject, an expired one, a not-yet-valid one and one with two CN attributes; a
//! client certificate from an untrusted "Rogue CA"; two self-signed client certificates for
//! pinning. Fingerprints are lowercase hex SHA-256 of the leaf's DER (and of its SPKI).
//!
//! It deliberately does not model intermediates, revocation or RSA keys, and the keys are
//! test keys: nothing here is fit for a real deployment.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// The subject CN Salesforce's client certificate carries in these tests.
pub const SALESFORCE_CN: &str = "proxy.salesforce.com";
/// The subject CN of the second, valid but unwanted, client certificate.
pub const OTHER_CN: &str = "other.example.com";
/// The server name every server certificate is valid for (also `127.0.0.1` and `::1`).
pub const SERVER_NAME: &str = "localhost";

/// Why the test PKI could not be created.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused to build a key or certificate (a bug in the parameters here).
    #[error("could not generate the test certificate `{what}`: {source}")]
    Generate {
        /// Which certificate was being made.
        what: &'static str,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// A PEM file could not be written.
    #[error("could not write {path}: {source}; check that the directory is writable")]
    Write {
        /// The file that failed.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// A certificate file, its private key file and the leaf's fingerprints.
#[derive(Debug, Clone)]
pub struct Identity {
    /// PEM certificate file: the leaf, followed by its issuing CA for server certificates.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key file (mode 0600 on Unix).
    pub key: PathBuf,
    /// Lowercase hex SHA-256 of the leaf certificate's DER (the usual certificate pin).
    pub sha256: String,
    /// Lowercase hex SHA-256 of the leaf's SubjectPublicKeyInfo DER (the SPKI pin).
    pub spki_sha256: String,
}

/// How long [`Pki::short_lived`] stays valid after generation, in seconds.
pub const SHORT_LIVED_SECS: i64 = 6;

/// Every file of the test PKI. Created by [`Pki::generate`].
#[derive(Debug, Clone)]
pub struct Pki {
    /// The directory holding every file.
    pub dir: PathBuf,
    /// The server CA certificate (what clients of the proxy trust).
    pub server_ca: PathBuf,
    /// Server certificate chain (leaf then CA) and key for `localhost`, `127.0.0.1`, `::1`.
    pub server: Identity,
    /// A second server certificate from the same CA, same names, for live-rotation tests.
    pub server_rotated: Identity,
    /// The client CA ("Test Salesforce Client CA") the proxy trusts for client certificates.
    pub client_ca: PathBuf,
    /// An untrusted CA ("Rogue CA"), written so tests can trust it on purpose.
    pub rogue_ca: PathBuf,
    /// Valid client certificate, CN `proxy.salesforce.com`, from the client CA.
    pub salesforce: Identity,
    /// Valid client certificate, CN `other.example.com`, from the client CA.
    pub other: Identity,
    /// Client certificate from the client CA whose `not_after` is one day ago.
    pub expired: Identity,
    /// Client certificate from the client CA whose `not_before` is one day ahead.
    pub not_yet_valid: Identity,
    /// Client certificate, CN `proxy.salesforce.com`, from the untrusted Rogue CA.
    pub rogue: Identity,
    /// Self-signed client certificate "Salesforce self-signed A", CN `proxy.salesforce.com`.
    pub self_signed_a: Identity,
    /// Self-signed client certificate "Salesforce self-signed B", CN `proxy.salesforce.com`.
    pub self_signed_b: Identity,
    /// Client certificate from the client CA whose subject holds two CN attributes, in this
    /// order: `proxy.salesforce.com`, then `other.example.com` (two separate RDNs).
    pub two_cns: Identity,
    /// Signed by the client CA, valid until [`SHORT_LIVED_SECS`] after the PKI was generated
    /// (for tests of what happens when a certificate expires during a session).
    pub short_lived: Identity,
}

/// A generated certificate with its key, kept in memory to sign others.
struct Made {
    cert: Certificate,
    key: KeyPair,
}

/// What kind of leaf to make.
enum Leaf {
    Server,
    Client,
}

impl Pki {
    /// Generate every key and certificate and write them into `dir` (created if missing).
    /// Takes about a few milliseconds per certificate.
    pub fn generate(dir: &Path) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
        let now = OffsetDateTime::now_utc();
        let valid = (now - Duration::days(1), now + Duration::days(365));
        let w = Writer { dir };

        let server_ca = make_ca("Test Server CA", "server CA")?;
        let client_ca = make_ca("Test Salesforce Client CA", "client CA")?;
        let rogue_ca = make_ca("Rogue CA", "rogue CA")?;

        let server_names = vec![
            SERVER_NAME.to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let server = make_leaf(
            "server",
            Leaf::Server,
            subject(&[(DnType::CommonName, SERVER_NAME)]),
            server_names.clone(),
            valid,
            Some(&server_ca),
        )?;
        let server_rotated = make_leaf(
            "rotated server",
            Leaf::Server,
            subject(&[
                (DnType::CommonName, SERVER_NAME),
                (DnType::OrganizationName, "rotated"),
            ]),
            server_names,
            valid,
            Some(&server_ca),
        )?;

        let sf = subject(&[(DnType::CommonName, SALESFORCE_CN)]);
        let salesforce = make_leaf(
            "salesforce client",
            Leaf::Client,
            sf.clone(),
            vec![],
            valid,
            Some(&client_ca),
        )?;
        let other = make_leaf(
            "other client",
            Leaf::Client,
            subject(&[(DnType::CommonName, OTHER_CN)]),
            vec![],
            valid,
            Some(&client_ca),
        )?;
        let expired = make_leaf(
            "expired client",
            Leaf::Client,
            sf.clone(),
            vec![],
            (now - Duration::days(30), now - Duration::days(1)),
            Some(&client_ca),
        )?;
        let not_yet_valid = make_leaf(
            "not-yet-valid client",
            Leaf::Client,
            sf.clone(),
            vec![],
            (now + Duration::days(1), now + Duration::days(365)),
            Some(&client_ca),
        )?;
        let rogue = make_leaf(
            "rogue client",
            Leaf::Client,
            sf,
            vec![],
            valid,
            Some(&rogue_ca),
        )?;
        let self_signed_a = make_leaf(
            "self-signed client A",
            Leaf::Client,
            subject(&[
                (DnType::OrganizationName, "Salesforce self-signed A"),
                (DnType::CommonName, SALESFORCE_CN),
            ]),
            vec![],
            valid,
            None,
        )?;
        let self_signed_b = make_leaf(
            "self-signed client B",
            Leaf::Client,
            subject(&[
                (DnType::OrganizationName, "Salesforce self-signed B"),
                (DnType::CommonName, SALESFORCE_CN),
            ]),
            vec![],
            valid,
            None,
        )?;
        // rcgen keys a DistinguishedName by attribute type, so a second `CommonName` would
        // replace the first; a custom type with the CN OID (2.5.4.3) is a distinct key that
        // serialises as a second CN RDN.
        let two_cns = make_leaf(
            "two-CN client",
            Leaf::Client,
            subject(&[
                (DnType::CommonName, SALESFORCE_CN),
                (DnType::CustomDnType(vec![2, 5, 4, 3]), OTHER_CN),
            ]),
            vec![],
            valid,
            Some(&client_ca),
        )?;

        let short_lived = make_leaf(
            "short-lived client",
            Leaf::Client,
            subject(&[(DnType::CommonName, SALESFORCE_CN)]),
            vec![],
            (
                now - Duration::days(1),
                now + Duration::seconds(SHORT_LIVED_SECS),
            ),
            Some(&client_ca),
        )?;

        Ok(Pki {
            dir: dir.to_path_buf(),
            server_ca: w.cert("server-ca.pem", &[&server_ca])?,
            server: w.identity("server", &server, Some(&server_ca))?,
            server_rotated: w.identity("server-rotated", &server_rotated, Some(&server_ca))?,
            client_ca: w.cert("client-ca.pem", &[&client_ca])?,
            rogue_ca: w.cert("rogue-ca.pem", &[&rogue_ca])?,
            salesforce: w.identity("client-salesforce", &salesforce, None)?,
            other: w.identity("client-other", &other, None)?,
            expired: w.identity("client-expired", &expired, None)?,
            not_yet_valid: w.identity("client-not-yet-valid", &not_yet_valid, None)?,
            rogue: w.identity("client-rogue", &rogue, None)?,
            self_signed_a: w.identity("client-self-signed-a", &self_signed_a, None)?,
            self_signed_b: w.identity("client-self-signed-b", &self_signed_b, None)?,
            two_cns: w.identity("client-two-cns", &two_cns, None)?,
            short_lived: w.identity("client-short-lived", &short_lived, None)?,
        })
    }
}

fn subject(attrs: &[(DnType, &str)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (ty, value) in attrs {
        dn.push(ty.clone(), *value);
    }
    dn
}

fn new_key(what: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::Generate { what, source })
}

fn make_ca(common_name: &str, what: &'static str) -> Result<Made, PkiError> {
    let key = new_key(what)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(&[(DnType::CommonName, common_name)]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(2);
    params.not_after = now + Duration::days(3650);
    let cert = params
        .self_signed(&key)
        .map_err(|source| PkiError::Generate { what, source })?;
    Ok(Made { cert, key })
}

fn make_leaf(
    what: &'static str,
    kind: Leaf,
    dn: DistinguishedName,
    sans: Vec<String>,
    (not_before, not_after): (OffsetDateTime, OffsetDateTime),
    issuer: Option<&Made>,
) -> Result<Made, PkiError> {
    let key = new_key(what)?;
    let err = |source| PkiError::Generate { what, source };
    let mut params = CertificateParams::new(sans).map_err(err)?;
    params.distinguished_name = dn;
    params.not_before = not_before;
    params.not_after = not_after;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![match kind {
        Leaf::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Leaf::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    let cert = match issuer {
        Some(ca) => {
            params.use_authority_key_identifier_extension = true;
            params.signed_by(&key, &ca.cert, &ca.key).map_err(err)?
        }
        None => params.self_signed(&key).map_err(err)?,
    };
    Ok(Made { cert, key })
}

struct Writer<'a> {
    dir: &'a Path,
}

impl Writer<'_> {
    fn write(&self, name: &str, contents: &str, private: bool) -> Result<PathBuf, PkiError> {
        let path = self.dir.join(name);
        write_file(&path, contents.as_bytes(), private).map_err(|source| PkiError::Write {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    fn cert(&self, name: &str, chain: &[&Made]) -> Result<PathBuf, PkiError> {
        let pem: String = chain.iter().map(|m| m.cert.pem()).collect();
        self.write(name, &pem, false)
    }

    fn identity(&self, stem: &str, leaf: &Made, ca: Option<&Made>) -> Result<Identity, PkiError> {
        let mut chain = vec![leaf];
        chain.extend(ca);
        Ok(Identity {
            cert: self.cert(&format!("{stem}.pem"), &chain)?,
            key: self.write(&format!("{stem}.key"), &leaf.key.serialize_pem(), true)?,
            sha256: sha256_hex(leaf.cert.der()),
            spki_sha256: sha256_hex(&leaf.key.public_key_der()),
        })
    }
}

fn write_file(path: &Path, contents: &[u8], private: bool) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    options.open(path)?.write_all(contents)
}

fn sha256_hex(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Lowercase hex SHA-256 of the DER of the first certificate in `pem`; `None` when `pem` holds
/// no parsable certificate.
pub fn cert_sha256_hex(pem: &str) -> Option<String> {
    let mut reader = pem.as_bytes();
    let first = rustls_pemfile::certs(&mut reader).next()?.ok()?;
    Some(sha256_hex(&first))
}

/// The ring crypto provider, passed explicitly so the test kit never depends on (or races
/// with) the process-wide default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read every certificate of a PEM file.
pub fn load_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice()).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certs)
}

/// Read the first private key of a PEM file.
pub fn load_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds no PEM private key", path.display()),
        )
    })
}

/// A rustls server configuration presenting `identity`; when `client_ca` is given, clients must
/// present a certificate chaining to it (webpki verification, with expiry checks).
pub fn server_config(
    identity: &Identity,
    client_ca: Option<&Path>,
) -> io::Result<rustls::ServerConfig> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots.add(cert).map_err(io::Error::other)?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(io::Error::other)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(load_certs(&identity.cert)?, load_key(&identity.key)?)
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_file_and_distinct_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path()).unwrap();
        let ids = [
            &pki.server,
            &pki.server_rotated,
            &pki.salesforce,
            &pki.other,
            &pki.expired,
            &pki.not_yet_valid,
            &pki.rogue,
            &pki.self_signed_a,
            &pki.self_signed_b,
            &pki.two_cns,
        ];
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            let pem = std::fs::read_to_string(&id.cert).unwrap();
            assert_eq!(cert_sha256_hex(&pem).as_deref(), Some(id.sha256.as_str()));
            assert_eq!(id.sha256.len(), 64);
            assert!(seen.insert(id.sha256.clone()), "duplicate fingerprint");
            load_key(&id.key).unwrap();
        }
        for ca in [&pki.server_ca, &pki.client_ca, &pki.rogue_ca] {
            assert_eq!(load_certs(ca).unwrap().len(), 1);
        }
    }

    #[test]
    fn server_chain_is_leaf_then_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path()).unwrap();
        let chain = load_certs(&pki.server.cert).unwrap();
        let ca = load_certs(&pki.server_ca).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(sha256_hex(&chain[0]), pki.server.sha256);
        assert_eq!(chain[1], ca[0]);
    }

    #[test]
    fn two_cn_subject_keeps_both_common_names() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path()).unwrap();
        let der = load_certs(&pki.two_cns.cert).unwrap().remove(0);
        // The CN OID (06 03 55 04 03) must occur twice in the subject, plus once in the issuer.
        let cn_oid = [0x06, 0x03, 0x55, 0x04, 0x03];
        let count = der.windows(cn_oid.len()).filter(|w| *w == cn_oid).count();
        assert_eq!(count, 3);
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains(SALESFORCE_CN) && text.contains(OTHER_CN));
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path()).unwrap();
        let mode = std::fs::metadata(&pki.salesforce.key)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn cert_sha256_hex_refuses_non_pem() {
        assert_eq!(cert_sha256_hex("not a certificate"), None);
    }
}
