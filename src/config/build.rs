//! File config -> runtime config. Every check records a problem and carries on, so one run
//! lists everything that needs fixing.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::diag::{FileDiag, Problems};
use super::file::{self, S};
use super::ranges::{self, IpSet, SalesforceRanges};
use super::*;
use crate::identity::IdentityRule;
use crate::secret::Secret;
use crate::sfid::SfId;

const DEFAULT_MAX_BODY: i64 = 1024 * 1024;

pub(super) fn load(path: &Path, refreshed: Option<&SalesforceRanges>) -> Result<Config, Problems> {
    let mut problems = Problems::default();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            FileDiag::new(path, "", &mut problems).error(
                None,
                "",
                format!("cannot read the configuration file: {e}; pass --config with the path of obmguard.toml"),
            );
            return Err(problems);
        }
    };
    let parsed: file::ProxyFile = match toml::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            FileDiag::new(path, &text, &mut problems).error(e.span(), "", toml_message(&e));
            return Err(problems);
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut d = FileDiag::new(path, &text, &mut problems);

    let server = build_server(&mut d, &base, &parsed.server);
    let trust = build_trust(&mut d, &base, parsed.client_cert.as_ref());
    let refresh = build_refresh(&mut d, &base, parsed.source.salesforce_refresh.as_ref());
    let origin = match (
        refresh.is_some(),
        refreshed,
        &parsed.source.salesforce_ranges,
    ) {
        (true, Some(_), _) => "refreshed",
        (_, _, Some(_)) => "file",
        _ => "builtin",
    };
    let salesforce = match (refresh.is_some(), refreshed) {
        // A set fetched by the periodic refresh replaces the file only while refresh is on.
        (true, Some(r)) => Some(r.clone()),
        _ => load_salesforce_ranges(&mut d, &base, &parsed.source),
    };
    let salesforce = salesforce.map(|r| NamedSet {
        ranges: r,
        used: std::cell::Cell::new(false),
    });
    let global_allow = ip_list(
        &mut d,
        "source.allow",
        &parsed.source.allow,
        salesforce.as_ref(),
    );
    let trusted_proxies = ip_list(
        &mut d,
        "source.trusted_proxies",
        &parsed.source.trusted_proxies,
        salesforce.as_ref(),
    );
    let timeouts = build_timeouts(&mut d, &parsed.timeouts);
    let limits = build_limits(&mut d, &parsed.limits);
    let default_inflight = positive(
        &mut d,
        "limits.max_inflight_per_route",
        &parsed.limits.max_inflight_per_route,
        256,
        1,
        1_000_000,
    );

    let policies_dir = server.as_ref().map(|s| s.policies_dir.clone());
    let mut routes = Vec::new();
    if let Some(dir) = policies_dir {
        let ctx = RouteCtx {
            salesforce: salesforce.as_ref(),
            global_allow: &global_allow,
            default_inflight,
        };
        routes = load_routes(&mut problems, &dir, &ctx, path);
    }

    let routes_map = index_routes(&mut problems, routes);
    let salesforce = salesforce.filter(|s| s.used.get()).map(|s| s.ranges);
    if let Some(stale) = salesforce
        .as_ref()
        .and_then(|s| s.staleness(ranges::today_utc()))
    {
        let key = if parsed.source.salesforce_ranges.is_some() {
            "source.salesforce_ranges"
        } else {
            "source"
        };
        let at = parsed.source.salesforce_ranges.as_ref().map(span);
        FileDiag::new(path, &text, &mut problems).warn(at, key, stale);
    }
    let Some(server) = server else {
        return Err(problems);
    };
    if !problems.errors.is_empty() {
        return Err(problems);
    }
    let Some(trust) = trust else {
        return Err(problems);
    };
    let admitted = IpSet::union(
        routes_map
            .by_path
            .values()
            .map(|r| &r.source)
            .chain(std::iter::once(&trusted_proxies)),
    );
    Ok(Config {
        file: path.to_path_buf(),
        server,
        trust,
        source: Source {
            admitted,
            trusted_proxies,
            salesforce,
            salesforce_origin: origin,
            refresh,
        },
        timeouts,
        limits,
        routes: routes_map,
        warnings: problems.warnings,
    })
}

/// toml's own Display quotes the offending line, which may hold a secret: use only the message.
fn toml_message(e: &toml::de::Error) -> String {
    let m = e.message().trim().to_string();
    if m.starts_with("unknown field") {
        format!("{m}; remove or correct the key (see policies/README.md for every key)")
    } else {
        m
    }
}

/// What to do when a file the example configuration names does not exist yet: the dev PKI
/// script makes the certificates under `certs/` and the dummy secret under `secrets/`.
/// Empty unless one of `paths` is missing and `certs/make-dev-pki.sh` sits where it would.
fn dev_pki_hint(paths: &[&Path]) -> String {
    for p in paths.iter().filter(|p| !p.exists()) {
        let dir = p.parent().unwrap_or(Path::new(""));
        let root = dir.parent().unwrap_or(Path::new(""));
        let named = dir
            .file_name()
            .is_some_and(|n| n == "certs" || n == "secrets");
        let script = root.join("certs").join("make-dev-pki.sh");
        if named && script.is_file() {
            return format!(
                "; to try obmguard, run {} first: it makes the development certificates and a dummy secret (for production, see certs/README.md)",
                script.display()
            );
        }
    }
    String::new()
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn span<T>(s: &S<T>) -> std::ops::Range<usize> {
    s.span()
}

/// An integer setting with a default and an allowed range.
fn positive(
    d: &mut FileDiag,
    key: &str,
    v: &Option<S<i64>>,
    default: i64,
    min: i64,
    max: i64,
) -> usize {
    match v {
        None => default as usize,
        Some(s) if (min..=max).contains(s.get_ref()) => *s.get_ref() as usize,
        Some(s) => {
            d.error(
                span(s),
                key,
                format!(
                    "{} is out of range: use a value from {min} to {max}",
                    s.get_ref()
                ),
            );
            default as usize
        }
    }
}

fn millis(
    d: &mut FileDiag,
    key: &str,
    v: &Option<S<i64>>,
    default_ms: i64,
    min: i64,
    max: i64,
) -> Duration {
    Duration::from_millis(positive(d, key, v, default_ms, min, max) as u64)
}

fn build_server(d: &mut FileDiag, base: &Path, s: &file::ServerSection) -> Option<Server> {
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
    let key = crate::tls::load_certified_key(&tls_cert, &tls_key);
    let (certified_key, cert_not_after, cert_subject) = match key {
        Ok(k) => k,
        Err(e) => {
            let hint = dev_pki_hint(&[&tls_cert, &tls_key]);
            d.error(
                span(&s.tls_cert),
                "server.tls_cert / server.tls_key",
                format!("{e}{hint}"),
            );
            return None;
        }
    };
    let days = (cert_not_after - crate::tls::unix_now()) / 86_400;
    if days < 0 {
        d.warn(span(&s.tls_cert), "server.tls_cert", format!("the server certificate ({cert_subject}) has EXPIRED: Salesforce will refuse every delivery until it is renewed"));
    } else if days < 30 {
        d.warn(
            span(&s.tls_cert),
            "server.tls_cert",
            format!("the server certificate ({cert_subject}) expires in {days} days: renew it"),
        );
    }
    let policies_dir = resolve(
        base,
        s.policies
            .as_ref()
            .map(|p| p.get_ref().as_str())
            .unwrap_or("policies"),
    );
    if !policies_dir.is_dir() {
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
    let audit_log = match &s.audit_log {
        None => "-".to_string(),
        Some(a) if a.get_ref() == "-" => "-".to_string(),
        Some(a) => resolve(base, a.get_ref()).to_string_lossy().into_owned(),
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as i64;
    let threads = positive(d, "server.threads", &s.threads, cpus, 1, 1024);
    ok.then_some(Server {
        listen,
        tls_cert,
        tls_key,
        certified_key,
        cert_not_after,
        cert_subject,
        admin_listen,
        policies_dir,
        audit_log,
        threads,
    })
}

/// Hex SHA-256, with or without `sha256:` and colons (as `openssl x509 -fingerprint` prints).
pub(crate) fn parse_pin(text: &str) -> Result<[u8; 32], String> {
    let t = text.trim();
    let t = t
        .strip_prefix("sha256:")
        .or_else(|| t.strip_prefix("SHA256:"))
        .unwrap_or(t);
    let hexs: String = t.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    match hex::decode_to_slice(&hexs, &mut out) {
        Ok(()) => Ok(out),
        Err(_) => Err(format!(
            "\"{text}\" is not a SHA-256 fingerprint: write 64 hex digits, e.g. the output of `openssl x509 -in cert.pem -outform DER | sha256sum`"
        )),
    }
}

fn pins(d: &mut FileDiag, key: &str, list: &[S<String>]) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        match parse_pin(p.get_ref()) {
            Ok(v) => out.push(v),
            Err(m) => d.error(span(p), &format!("{key}[{i}]"), m),
        }
    }
    out
}

fn build_trust(
    d: &mut FileDiag,
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
        match crate::tls::load_ca_bundle(&p) {
            Ok((certs, expiry)) => {
                roots = certs;
                ca_expiry = expiry;
                ca_file = Some(p);
            }
            Err(e) => {
                let hint = dev_pki_hint(&[&p]);
                d.error(span(b), "client_cert.ca_bundle", format!("{e}{hint}"));
            }
        }
    }
    if cc.ca_bundle.is_none() && pins_v.is_empty() && spki.is_empty() {
        d.error(sp, "client_cert", "no way to verify Salesforce's client certificate: set ca_bundle, pin_sha256 or pin_spki_sha256 (a client certificate is always required)");
        return None;
    }
    for (name, na) in &ca_expiry {
        let days = (na - crate::tls::unix_now()) / 86_400;
        if days < 30 {
            d.warn(
                cc.ca_bundle.as_ref().map(span),
                "client_cert.ca_bundle",
                format!("CA certificate {name} expires in {days} days"),
            );
        }
    }
    Some(ClientTrust {
        roots,
        ca_file,
        pins: pins_v,
        spki_pins: spki,
        ca_expiry,
    })
}

/// `@salesforce` while a configuration is built, and whether any list named it.
struct NamedSet {
    ranges: SalesforceRanges,
    used: std::cell::Cell<bool>,
}

fn load_salesforce_ranges(
    d: &mut FileDiag,
    base: &Path,
    s: &file::GlobalSourceSection,
) -> Option<SalesforceRanges> {
    match &s.salesforce_ranges {
        None => {
            match ranges::parse_salesforce_doc(ranges::BUILTIN_SALESFORCE_RANGES) {
                Ok(set) => Some(set),
                Err(e) => {
                    d.error(None, "source", format!("the built-in Salesforce ranges are invalid ({e}): set salesforce_ranges"));
                    None
                }
            }
        }
        Some(p) => {
            let path = resolve(base, p.get_ref());
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|t| {
                    ranges::parse_salesforce_doc(&t).map_err(|e| format!("{}: {e}", path.display()))
                });
            match parsed {
                Ok(set) => Some(set),
                Err(e) => {
                    d.error(
                        span(p),
                        "source.salesforce_ranges",
                        format!(
                            "{e}; fetch it again with `obmguard import-ranges --fetch --to {}`",
                            path.display()
                        ),
                    );
                    None
                }
            }
        }
    }
}

fn build_refresh(
    d: &mut FileDiag,
    base: &Path,
    r: Option<&S<file::RefreshSection>>,
) -> Option<RangesRefresh> {
    let r = r?;
    let t = r.get_ref();
    let minutes = positive(
        d,
        "source.salesforce_refresh.interval_minutes",
        &t.interval_minutes,
        1440,
        1,
        10080,
    );
    let url = match &t.url {
        None => url::Url::parse(ranges::SALESFORCE_RANGES_URL).ok()?,
        Some(u) => match url::Url::parse(u.get_ref()) {
            Ok(parsed) if parsed.scheme() == "https" && parsed.host().is_some() => parsed,
            _ => {
                d.error(
                    span(u),
                    "source.salesforce_refresh.url",
                    format!(
                        "not an https:// URL: leave the key out for {}",
                        ranges::SALESFORCE_RANGES_URL
                    ),
                );
                return None;
            }
        },
    };
    let ca_file = match &t.ca_file {
        None => None,
        Some(c) => {
            let path = resolve(base, c.get_ref());
            if let Err(e) = std::fs::metadata(&path) {
                d.error(
                    span(c),
                    "source.salesforce_refresh.ca_file",
                    format!(
                        "cannot read {}: {e}; leave the key out to trust the system's roots",
                        path.display()
                    ),
                );
                return None;
            }
            Some(path)
        }
    };
    Some(RangesRefresh {
        interval: Duration::from_secs(minutes as u64 * 60),
        url,
        ca_file,
    })
}

fn ip_list(
    d: &mut FileDiag,
    key: &str,
    list: &[S<String>],
    salesforce: Option<&NamedSet>,
) -> IpSet {
    let mut nets = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let v = item.get_ref().trim();
        if v == "@salesforce" {
            if let Some(sf) = salesforce {
                sf.used.set(true);
                nets.extend_from_slice(sf.ranges.set.nets());
            }
        } else if v.starts_with('@') {
            d.error(
                span(item),
                &format!("{key}[{i}]"),
                format!("unknown range set \"{v}\": the only named set is @salesforce"),
            );
        } else {
            match ranges::parse_cidr(v) {
                Ok(n) => nets.push(n),
                Err(m) => d.error(span(item), &format!("{key}[{i}]"), m),
            }
        }
    }
    IpSet::new(nets)
}

fn build_timeouts(d: &mut FileDiag, t: &file::TimeoutsSection) -> Timeouts {
    Timeouts {
        tls_handshake: millis(
            d,
            "timeouts.tls_handshake_ms",
            &t.tls_handshake_ms,
            10_000,
            100,
            120_000,
        ),
        request_head: millis(
            d,
            "timeouts.request_head_ms",
            &t.request_head_ms,
            10_000,
            100,
            120_000,
        ),
        request_body: millis(
            d,
            "timeouts.request_body_ms",
            &t.request_body_ms,
            30_000,
            100,
            300_000,
        ),
        idle_keepalive: millis(
            d,
            "timeouts.idle_keepalive_ms",
            &t.idle_keepalive_ms,
            60_000,
            1_000,
            3_600_000,
        ),
        response_write: millis(
            d,
            "timeouts.response_write_ms",
            &t.response_write_ms,
            30_000,
            100,
            300_000,
        ),
        upstream_connect: millis(
            d,
            "timeouts.upstream_connect_ms",
            &t.upstream_connect_ms,
            5_000,
            10,
            60_000,
        ),
        drain: millis(d, "timeouts.drain_ms", &t.drain_ms, 60_000, 0, 600_000),
        max_connection_age: millis(
            d,
            "timeouts.max_connection_age_ms",
            &t.max_connection_age_ms,
            3_600_000,
            1_000,
            86_400_000,
        ),
        tls_ticket_lifetime: millis(
            d,
            "timeouts.tls_ticket_lifetime_ms",
            &t.tls_ticket_lifetime_ms,
            3_600_000,
            1_000,
            86_400_000,
        ),
    }
}

fn build_limits(d: &mut FileDiag, l: &file::LimitsSection) -> Limits {
    Limits {
        max_connections: positive(
            d,
            "limits.max_connections",
            &l.max_connections,
            4096,
            1,
            1_000_000,
        ),
        max_connections_per_source: positive(
            d,
            "limits.max_connections_per_source",
            &l.max_connections_per_source,
            512,
            1,
            1_000_000,
        ),
        max_header_count: positive(
            d,
            "limits.max_header_count",
            &l.max_header_count,
            64,
            8,
            1024,
        ),
        max_header_bytes: positive(
            d,
            "limits.max_header_bytes",
            &l.max_header_bytes,
            16 * 1024,
            1024,
            1024 * 1024,
        ),
        upstream_pool_size: positive(
            d,
            "limits.upstream_pool_size",
            &l.upstream_pool_size,
            128,
            0,
            100_000,
        ),
        upstream_idle: millis(
            d,
            "limits.upstream_idle_ms",
            &l.upstream_idle_ms,
            30_000,
            100,
            3_600_000,
        ),
        max_response_bytes: positive(
            d,
            "limits.max_response_bytes",
            &l.max_response_bytes,
            1024 * 1024,
            1024,
            64 * 1024 * 1024,
        ),
    }
}

struct RouteCtx<'a> {
    salesforce: Option<&'a NamedSet>,
    global_allow: &'a IpSet,
    default_inflight: usize,
}

fn load_routes(
    problems: &mut Problems,
    dir: &Path,
    ctx: &RouteCtx,
    config_file: &Path,
) -> Vec<Route> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            FileDiag::new(config_file, "", problems).error(
                None,
                "server.policies",
                format!("cannot list {}: {e}", dir.display()),
            );
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        FileDiag::new(config_file, "", problems).error(
            None,
            "server.policies",
            format!(
                "{} holds no *.toml route policy: add one (see policies/README.md)",
                dir.display()
            ),
        );
    }
    let mut routes = Vec::new();
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                FileDiag::new(&f, "", problems).error(None, "", format!("cannot read: {e}"));
                continue;
            }
        };
        let mut d = FileDiag::new(&f, &text, problems);
        match toml::from_str::<file::RouteFile>(&text) {
            Ok(rf) => {
                if let Some(r) = build_route(&mut d, &f, &rf, ctx) {
                    routes.push(r);
                }
            }
            Err(e) => d.error(e.span(), "", toml_message(&e)),
        }
    }
    routes
}

fn index_routes(problems: &mut Problems, routes: Vec<Route>) -> Routes {
    let mut by_path: HashMap<String, Arc<Route>> = HashMap::new();
    let mut names: HashMap<String, PathBuf> = HashMap::new();
    for r in routes {
        if let Some(prev) = names.get(&r.name) {
            problems.errors.push(Problem {
                file: r.file.clone(),
                line: 0,
                key: "name".into(),
                message: format!(
                    "route name \"{}\" is already used by {}: give each route its own name",
                    r.name,
                    prev.display()
                ),
            });
            continue;
        }
        if let Some(prev) = by_path.get(&r.path) {
            problems.errors.push(Problem {
                file: r.file.clone(),
                line: 0,
                key: "path".into(),
                message: format!(
                    "path {} is already routed by {}: one path, one route",
                    r.path,
                    prev.file.display()
                ),
            });
            continue;
        }
        names.insert(r.name.clone(), r.file.clone());
        by_path.insert(r.path.clone(), Arc::new(r));
    }
    Routes { by_path }
}

fn build_route(d: &mut FileDiag, f: &Path, rf: &file::RouteFile, ctx: &RouteCtx) -> Option<Route> {
    let errors_before = d_errors(d);
    let base = f.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = rf.name.get_ref().trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        d.error(span(&rf.name), "name", "a route name is a short label made of letters, digits, '-', '_' or '.' (it appears in metrics)");
    }
    let path = rf.path.get_ref().clone();
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        d.error(
            span(&rf.path),
            "path",
            format!(
                "\"{path}\" is not a request path: write e.g. /obm/accounts (no query, no spaces)"
            ),
        );
    }
    let upstream = build_upstream(d, &base, rf);
    let upstream_timeout = millis(
        d,
        "upstream_timeout_ms",
        &rf.upstream_timeout_ms,
        30_000,
        100,
        60_000,
    );
    if upstream_timeout > Duration::from_secs(55) {
        d.warn(rf.upstream_timeout_ms.as_ref().map(span), "upstream_timeout_ms", "Salesforce gives up after 60 s: above 55 s the receiver may accept a message Salesforce already counts as failed (it will be delivered twice)");
    }
    let max_inflight = positive(
        d,
        "max_inflight",
        &rf.max_inflight,
        ctx.default_inflight as i64,
        1,
        1_000_000,
    );

    let identity = rf.identity.as_ref().map(|id| {
        let idr = id.get_ref();
        let mut cns = Vec::new();
        for (i, cn) in idr.subject_cn.iter().enumerate() {
            let v = cn.get_ref().trim();
            if v.is_empty() {
                d.error(span(cn), &format!("identity.subject_cn[{i}]"), "empty common name: write the CN of Salesforce's certificate, e.g. proxy.salesforce.com");
            } else {
                cns.push(v.to_string());
            }
        }
        let p = pins(d, "identity.pin_sha256", &idr.pin_sha256);
        if cns.is_empty() && p.is_empty() {
            d.error(span(id), "identity", "an [identity] table must list subject_cn or pin_sha256 (or remove the table)");
        }
        IdentityRule::new(cns, p)
    });
    if identity.is_none() {
        d.warn(None, "identity", "no [identity] rule: any certificate the handshake accepts may use this route; add subject_cn or pin_sha256 to narrow it");
    }

    let source = match &rf.source {
        Some(s) => {
            let set = ip_list(
                d,
                "source.allow",
                s.get_ref().allow.get_ref(),
                ctx.salesforce,
            );
            if set.is_empty() && d_errors(d) == errors_before {
                d.error(
                    span(&s.get_ref().allow),
                    "source.allow",
                    "empty: list who may call this route, e.g. [\"@salesforce\"]",
                );
            }
            set
        }
        None => {
            if ctx.global_allow.is_empty() {
                d.error(
                    None,
                    "source",
                    "no source ranges: add [source] allow to this route or to obmguard.toml",
                );
            }
            ctx.global_allow.clone()
        }
    };

    let message = build_message(d, rf);
    let oauth = rf.oauth.as_ref().and_then(|o| build_oauth(d, &base, o));
    if let Some(m) = &message {
        if m.session_id == SessionMode::Inject && rf.oauth.is_none() {
            d.error(rf.message.get_ref().session_id.as_ref().map(span), "message.session_id", "inject needs an [oauth] table in this policy (the credentials obmguard uses to fetch a token)");
        }
        if m.session_id == SessionMode::Audit {
            d.warn(rf.message.get_ref().session_id.as_ref().map(span), "message.session_id", "audit mode forwards session ids unchanged: move to strip or inject once `obmguard report` shows what still depends on them");
        }
    }
    if d_errors(d) != errors_before {
        return None;
    }
    Some(Route {
        name,
        path,
        file: f.to_path_buf(),
        upstream: upstream?,
        upstream_timeout,
        upstream_keepalive: rf.upstream_keepalive.unwrap_or(false),
        max_inflight,
        identity,
        source,
        message: message?,
        oauth,
    })
}

fn d_errors(d: &FileDiag) -> usize {
    d.error_count()
}

fn build_upstream(d: &mut FileDiag, base: &Path, rf: &file::RouteFile) -> Option<Upstream> {
    let raw = rf.upstream.get_ref();
    let url = match url::Url::parse(raw) {
        Ok(u) => u,
        Err(_) => {
            d.error(span(&rf.upstream), "upstream", format!("\"{raw}\" is not a URL: write e.g. http://10.0.0.5:8080/soap/AccountNotification"));
            return None;
        }
    };
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => {
            d.error(
                span(&rf.upstream),
                "upstream",
                format!("scheme {other} is not supported: use http:// or https://"),
            );
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        d.error(
            span(&rf.upstream),
            "upstream",
            "remove the credentials or #fragment from the upstream URL",
        );
        return None;
    }
    let Some(host) = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
    else {
        d.error(
            span(&rf.upstream),
            "upstream",
            "the upstream URL has no host",
        );
        return None;
    };
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let mut path_and_query = url.path().to_string();
    if let Some(q) = url.query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    let mut trust_key = 0u64;
    let ca = match &rf.upstream_ca {
        None => None,
        Some(c) => {
            if !tls {
                d.error(
                    span(c),
                    "upstream_ca",
                    "upstream_ca only applies to an https:// upstream",
                );
            }
            match crate::tls::load_ca_bundle(&resolve(base, c.get_ref())) {
                Ok((certs, _)) => {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    certs.iter().for_each(|c| c.as_ref().hash(&mut h));
                    trust_key = h.finish() | 1;
                    // Every certificate was parsed by x509-parser in load_ca_bundle, which
                    // is what pingora's wrapper does (and would panic on otherwise).
                    let wrapped: Vec<_> = certs
                        .into_iter()
                        .map(|c| {
                            pingora_core::utils::tls::WrappedX509::new(
                                c.to_vec(),
                                pingora_core::utils::tls::parse_x509,
                            )
                        })
                        .collect();
                    Some(Arc::from(wrapped.into_boxed_slice()))
                }
                Err(e) => {
                    d.error(span(c), "upstream_ca", e);
                    None
                }
            }
        }
    };
    Some(Upstream {
        url,
        tls,
        host,
        port,
        path_and_query,
        ca,
        trust_key,
    })
}

fn sfids(
    d: &mut FileDiag,
    key: &str,
    list: &[S<String>],
    prefix: &str,
    what: &str,
) -> HashSet<SfId> {
    let mut out = HashSet::new();
    for (i, v) in list.iter().enumerate() {
        match SfId::parse(v.get_ref().trim()) {
            Ok(id) => {
                if !id.as_15().starts_with(prefix) {
                    d.error(
                        span(v),
                        &format!("{key}[{i}]"),
                        format!(
                            "\"{}\" is not {what} (those start with {prefix})",
                            v.get_ref()
                        ),
                    );
                }
                out.insert(id);
            }
            Err(e) => d.error(span(v), &format!("{key}[{i}]"), e.to_string()),
        }
    }
    out
}

fn build_message(d: &mut FileDiag, rf: &file::RouteFile) -> Option<MessagePolicy> {
    let m = rf.message.get_ref();
    let organizations = match &m.organization_ids {
        Some(list) if !list.get_ref().is_empty() => sfids(
            d,
            "message.organization_ids",
            list.get_ref(),
            "00D",
            "an organization id",
        ),
        other => {
            d.error(other.as_ref().map(span).unwrap_or(span(&rf.message)), "message.organization_ids", "required and non-empty: Salesforce's IP ranges are shared by all its customers, so the organization id is what tells your org from another; copy it from Setup > Company Information");
            HashSet::new()
        }
    };
    let actions = if m.action_ids.is_empty() {
        None
    } else {
        Some(sfids(
            d,
            "message.action_ids",
            &m.action_ids,
            "04k",
            "an outbound message action id",
        ))
    };
    let max_body_bytes = positive(
        d,
        "message.max_body_bytes",
        &m.max_body_bytes,
        DEFAULT_MAX_BODY,
        1024,
        64 * 1024 * 1024,
    );
    let session_id = match m.session_id.as_ref().map(|s| s.get_ref().as_str()) {
        None | Some("strip") => SessionMode::Strip,
        Some("remove") => SessionMode::Remove,
        Some("reject") => SessionMode::Reject,
        Some("audit") => SessionMode::Audit,
        Some("inject") => SessionMode::Inject,
        Some(other) => {
            d.error(
                m.session_id.as_ref().map(span),
                "message.session_id",
                format!("\"{other}\" is not a mode: use strip, remove, reject, audit or inject"),
            );
            SessionMode::Strip
        }
    };
    let xml = crate::soap::Limits {
        max_depth: positive(d, "message.max_depth", &m.max_depth, 64, 8, 1024),
        max_attributes: positive(d, "message.max_attributes", &m.max_attributes, 32, 4, 1024),
        ..crate::soap::Limits::default()
    };
    Some(MessagePolicy {
        organizations,
        actions,
        max_body_bytes,
        session_id,
        xml,
    })
}

/// Resolve `{ env }`, `{ file }` or `{ value }`. Secrets may not be written inline.
fn secret_source(
    d: &mut FileDiag,
    base: &Path,
    key: &str,
    s: &S<file::SecretSource>,
    secret: bool,
) -> Option<Secret> {
    let src = s.get_ref();
    let n = [src.env.is_some(), src.file.is_some(), src.value.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if n != 1 {
        d.error(
            span(s),
            key,
            "write exactly one of { env = \"VAR\" }, { file = \"/path\" } or { value = \"...\" }",
        );
        return None;
    }
    if let Some(var) = &src.env {
        return match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
            _ => {
                d.error(span(s), key, format!("environment variable {var} is not set (or empty): export it before starting obmguard"));
                None
            }
        };
    }
    if let Some(f) = &src.file {
        let p = resolve(base, f);
        return match std::fs::read_to_string(&p) {
            Ok(v) if !v.trim().is_empty() => Some(Secret::new(v.trim())),
            Ok(_) => {
                d.error(span(s), key, format!("{} is empty", p.display()));
                None
            }
            Err(e) => {
                let hint = dev_pki_hint(&[&p]);
                d.error(
                    span(s),
                    key,
                    format!("cannot read {}: {e}{hint}", p.display()),
                );
                None
            }
        };
    }
    if secret {
        d.error(span(s), key, "a secret may not be written in a policy file (it would end up in version control): use { env = \"VAR\" } or { file = \"/run/secrets/...\" }");
        return None;
    }
    src.value.as_ref().map(|v| Secret::new(v.as_str()))
}

fn build_oauth(d: &mut FileDiag, base: &Path, o: &S<file::OAuthSection>) -> Option<RouteOAuth> {
    use crate::token::{ClientAuth, Flow, OAuthSettings};
    let errors_before = d_errors(d);
    let oa = o.get_ref();
    let token_url = match url::Url::parse(oa.token_url.get_ref()) {
        Ok(u) => Some(u),
        Err(_) => {
            d.error(
                span(&oa.token_url),
                "oauth.token_url",
                "not a URL: write e.g. https://acme.my.salesforce.com/services/oauth2/token",
            );
            None
        }
    };
    let client_id = secret_source(d, base, "oauth.client_id", &oa.client_id, false);
    let flow = match oa.flow.get_ref().as_str() {
        "client_credentials" => {
            for (field, present) in [
                ("username", oa.username.is_some()),
                ("private_key", oa.private_key.is_some()),
                ("audience", oa.audience.is_some()),
            ] {
                if present {
                    d.error(
                        span(o),
                        &format!("oauth.{field}"),
                        format!("{field} belongs to flow = \"jwt_bearer\"; remove it"),
                    );
                }
            }
            let client_auth = match oa.client_auth.as_ref().map(|s| s.get_ref().as_str()) {
                None | Some("body") => ClientAuth::Body,
                Some("basic") => ClientAuth::Basic,
                Some(other) => {
                    d.error(
                        oa.client_auth.as_ref().map(span),
                        "oauth.client_auth",
                        format!("\"{other}\": use body or basic"),
                    );
                    ClientAuth::Body
                }
            };
            match &oa.client_secret {
                None => {
                    d.error(span(o), "oauth.client_secret", "client_credentials needs client_secret = { env = \"VAR\" } or { file = \"/path\" }");
                    None
                }
                Some(s) => {
                    secret_source(d, base, "oauth.client_secret", s, true).map(|client_secret| {
                        Flow::ClientCredentials {
                            client_secret,
                            client_auth,
                        }
                    })
                }
            }
        }
        "jwt_bearer" => {
            if oa.client_secret.is_some() || oa.client_auth.is_some() {
                d.error(span(o), "oauth.client_secret", "client_secret and client_auth belong to flow = \"client_credentials\"; remove them");
            }
            let username = oa
                .username
                .as_ref()
                .map(|u| u.get_ref().trim().to_string())
                .filter(|u| !u.is_empty());
            if username.is_none() {
                d.error(
                    span(o),
                    "oauth.username",
                    "jwt_bearer needs username (the integration user obmguard acts as)",
                );
            }
            let key = match &oa.private_key {
                None => {
                    d.error(span(o), "oauth.private_key", "jwt_bearer needs private_key = { file = \"/run/secrets/key.pem\" } (RS256)");
                    None
                }
                Some(k) => secret_source(d, base, "oauth.private_key", k, true),
            };
            let audience = oa
                .audience
                .as_ref()
                .map(|a| a.get_ref().clone())
                .unwrap_or_else(|| "https://login.salesforce.com".into());
            match (username, key) {
                (Some(username), Some(private_key_pem)) => Some(Flow::JwtBearer {
                    username,
                    private_key_pem,
                    audience,
                }),
                _ => None,
            }
        }
        other => {
            d.error(
                span(&oa.flow),
                "oauth.flow",
                format!("\"{other}\": use client_credentials or jwt_bearer"),
            );
            None
        }
    };
    let ttl =
        Duration::from_secs(
            positive(d, "oauth.ttl_seconds", &oa.ttl_seconds, 3600, 60, 86_400) as u64,
        );
    let connect_timeout = millis(
        d,
        "oauth.connect_timeout_ms",
        &oa.connect_timeout_ms,
        5_000,
        10,
        60_000,
    );
    let total_timeout = millis(d, "oauth.timeout_ms", &oa.timeout_ms, 10_000, 10, 60_000);
    let mut callback_hosts = Vec::new();
    for (i, h) in oa.callback_hosts.iter().enumerate() {
        let host = h.get_ref().trim().to_ascii_lowercase();
        let plain = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        if plain {
            callback_hosts.push(host);
        } else {
            d.error(
                span(h),
                &format!("oauth.callback_hosts[{i}]"),
                "write a plain host name such as acme.my.salesforce.com (no scheme, port, path or wildcard)",
            );
        }
    }
    if d_errors(d) != errors_before {
        return None;
    }
    let settings = OAuthSettings {
        token_url: token_url?,
        client_id: client_id?.expose().to_string(),
        flow: flow?,
        ttl,
        connect_timeout,
        total_timeout,
    };
    if let Err(m) = crate::token::validate_settings(&settings) {
        d.error(span(o), "oauth", m);
        return None;
    }
    Some(RouteOAuth {
        settings,
        rewrite_urls: oa.rewrite_urls.unwrap_or(true),
        callback_hosts,
        header: oa.header.unwrap_or(false),
    })
}
