//! `[client_cert]`: how the handshake verifies Salesforce's client certificate (a CA bundle,
//! certificate pins, SPKI pins), and the pin syntax shared with a route's `[identity]`.

use std::path::Path;

use super::build::{dev_pki_hint, resolve, span, Ctx};
use super::diag::FileDiag;
use super::file::{self, S};
use super::ClientTrust;
use crate::certs::{self, CertError};

/// Why a pin could not be read. Holds no part of the value: it could be anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SHA-256 fingerprint: write 64 hex digits, e.g. the output of `openssl x509 -in cert.pem -outform DER | sha256sum`")]
pub struct BadPin;

/// Hex SHA-256, with or without `sha256:` and colons (as `openssl x509 -fingerprint` prints).
pub fn parse_pin(text: &str) -> Result<[u8; 32], BadPin> {
    let t = text.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hexs: String = t.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&hexs, &mut out).map_err(|_| BadPin)?;
    Ok(out)
}

/// A list of pins; each bad one is an error at its own line and index.
pub(super) fn pins(d: &mut FileDiag, key: &str, list: &[S<String>]) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        match parse_pin(p.get_ref()) {
            Ok(v) => out.push(v),
            Err(e) => d.error(span(p), &format!("{key}[{i}]"), e.to_string()),
        }
    }
    out
}

pub(super) fn build(
    d: &mut FileDiag,
    ctx: &Ctx,
    base: &Path,
    cc: Option<&S<file::ClientCertSection>>,
) -> Option<ClientTrust> {
    let Some(cc) = cc else {
        d.error(None, "client_cert", "missing [client_cert]: a client certificate is mandatory; set ca_bundle (Salesforce's CA) or pin_sha256 (Salesforce's certificate)");
        return None;
    };
    let sp = span(cc);
    let cc = cc.get_ref();
    let pins_v = pins(d, "client_cert.pin_sha256", &cc.pin_sha256);
    let spki = pins(d, "client_cert.pin_spki_sha256", &cc.pin_spki_sha256);
    let mut roots = Vec::new();
    let mut ca_expiry = Vec::new();
    let mut ca_file = None;
    if let Some(b) = &cc.ca_bundle {
        let p = resolve(base, b.get_ref());
        let bundle = ctx
            .io
            .read(&p)
            .map_err(|e| CertError::read(&p, e))
            .and_then(|pem| certs::ca_bundle(&p, &pem));
        match bundle {
            Ok(bundle) => {
                for f in &bundle.facts {
                    let days = f.days_left(ctx.now);
                    if days < 30 {
                        d.warn(
                            span(b),
                            "client_cert.ca_bundle",
                            format!("CA certificate {} expires in {days} days", f.name),
                        );
                    }
                }
                roots = bundle.certs;
                ca_expiry = bundle
                    .facts
                    .into_iter()
                    .map(|f| (f.name, f.not_after))
                    .collect();
                ca_file = Some(p);
            }
            Err(e) => {
                let hint = dev_pki_hint(ctx.io, &[&p]);
                d.error(span(b), "client_cert.ca_bundle", format!("{e}{hint}"));
            }
        }
    }
    if cc.ca_bundle.is_none() && pins_v.is_empty() && spki.is_empty() {
        d.error(sp, "client_cert", "no way to verify Salesforce's client certificate: set ca_bundle, pin_sha256 or pin_spki_sha256 (a client certificate is always required)");
        return None;
    }
    Some(ClientTrust {
        roots,
        ca_file,
        pins: pins_v,
        spki_pins: spki,
        ca_expiry,
    })
}
