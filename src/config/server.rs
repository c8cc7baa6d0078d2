//! `[server]`: listeners, the server certificate and key, the policies directory, the audit
//! log, worker threads, and the load balancers that send a PROXY protocol header.

use std::net::SocketAddr;
use std::path::Path;

use super::build::{dev_pki_hint, int_or, resolve, span, Ctx};
use super::defaults;
use super::diag::FileDiag;
use super::file::{self, S};
use super::ranges::{self, IpSet};
use super::Server;
use crate::certs::{self, CertError};

pub(super) fn build(
    d: &mut FileDiag,
    ctx: &Ctx,
    base: &Path,
    s: &file::ServerSection,
) -> Option<Server> {
    let mut ok = true;
    let mut listen = Vec::new();
    if s.listen.get_ref().is_empty() {
        d.error(
            span(&s.listen),
            "server.listen",
            "no listen address: add one, e.g. [\"0.0.0.0:8443\"]",
        );
        ok = false;
    }
    for (i, a) in s.listen.get_ref().iter().enumerate() {
        match a.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                let p = addr.port();
                if p != 0 && p != 443 && !(7000..=10000).contains(&p) {
                    d.warn(span(a), &format!("server.listen[{i}]"), format!("Salesforce only calls ports 443 and 7000-10000; port {p} works only behind a port-forwarding load balancer"));
                }
                listen.push(addr);
            }
            Err(_) => {
                d.error(
                    span(a),
                    &format!("server.listen[{i}]"),
                    format!(
                        "\"{}\" is not an address:port: write e.g. 0.0.0.0:8443 or [::]:8443",
                        a.get_ref()
                    ),
                );
                ok = false;
            }
        }
    }
    let admin_listen = match &s.admin_listen {
        None => None,
        Some(a) => match a.get_ref().parse::<SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    d.warn(span(a), "server.admin_listen", "the admin listener (metrics, health) is not on loopback: make sure only your monitoring can reach it");
                }
                Some(addr)
            }
            Err(_) => {
                d.error(
                    span(a),
                    "server.admin_listen",
                    format!(
                        "\"{}\" is not an address:port: write e.g. 127.0.0.1:9090",
                        a.get_ref()
                    ),
                );
                ok = false;
                None
            }
        },
    };
    let tls_cert = resolve(base, s.tls_cert.get_ref());
    let tls_key = resolve(base, s.tls_key.get_ref());
    let loaded = ctx
        .io
        .read(&tls_cert)
        .map_err(|e| CertError::read(&tls_cert, e))
        .and_then(|cert| {
            let key = ctx
                .io
                .read(&tls_key)
                .map_err(|e| CertError::read(&tls_key, e))?;
            certs::server_cert(&tls_cert, &cert, &tls_key, &key)
        });
    let cert = match loaded {
        Ok(c) => c,
        Err(e) => {
            let hint = dev_pki_hint(ctx.io, &[&tls_cert, &tls_key]);
            d.error(
                span(&s.tls_cert),
                "server.tls_cert / server.tls_key",
                format!("{e}{hint}"),
            );
            return None;
        }
    };
    let subject = &cert.leaf.name;
    let days = cert.leaf.days_left(ctx.now);
    if days < 0 {
        d.warn(span(&s.tls_cert), "server.tls_cert", format!("the server certificate ({subject}) has EXPIRED: Salesforce will refuse every delivery until it is renewed"));
    } else if days < 30 {
        d.warn(
            span(&s.tls_cert),
            "server.tls_cert",
            format!("the server certificate ({subject}) expires in {days} days: renew it"),
        );
    }
    let policies_dir = resolve(
        base,
        s.policies
            .as_ref()
            .map(|p| p.get_ref().as_str())
            .unwrap_or(defaults::POLICIES.text()),
    );
    if !ctx.io.is_dir(&policies_dir) {
        let sp = s.policies.as_ref().map(span);
        d.error(
            sp,
            "server.policies",
            format!(
                "{} is not a directory: create it and put one *.toml route policy in it per route",
                policies_dir.display()
            ),
        );
        ok = false;
    }
    let stdout = defaults::AUDIT_LOG.text();
    let audit_log = match &s.audit_log {
        Some(a) if a.get_ref() != stdout => {
            resolve(base, a.get_ref()).to_string_lossy().into_owned()
        }
        _ => stdout.to_string(),
    };
    let threads = int_or(d, &defaults::THREADS, &s.threads, ctx.io.cpus() as i64) as usize;
    let proxy_protocol_from = load_balancers(d, &s.proxy_protocol_from);
    ok.then_some(Server {
        listen,
        tls_cert,
        tls_key,
        cert_not_after: cert.leaf.not_after,
        cert_subject: cert.leaf.name,
        cert_chain: cert.chain,
        cert_key: cert.key,
        admin_listen,
        policies_dir,
        audit_log,
        threads,
        proxy_protocol_from,
    })
}

/// `server.proxy_protocol_from`: the load balancers' own addresses, as CIDRs or bare
/// addresses. A named set is refused: `@salesforce` is who calls, never who forwards. A bad
/// entry is an error (so the configuration is refused) that does not stop the routes from
/// being checked in the same run.
fn load_balancers(d: &mut FileDiag, list: &[S<String>]) -> IpSet {
    let key = "server.proxy_protocol_from";
    let mut nets = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let v = item.get_ref().trim();
        let parsed = if v.starts_with('@') {
            Err(format!(
                "\"{v}\" is a named set: list the load balancers' own addresses (CIDRs such as 10.0.0.0/24), not the ranges of the clients behind them"
            ))
        } else {
            ranges::parse_cidr(v)
        };
        match parsed {
            Ok(n) => nets.push(n),
            Err(m) => d.error(span(item), &format!("{key}[{i}]"), m),
        }
    }
    IpSet::new(nets)
}
