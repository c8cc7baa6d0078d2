//! The builder, fed from strings through [`Fake`] inputs: each section's defaults and errors
//! (with file:line: key), duplicates across policy files, secrets, `@salesforce`, and CIDRs.

use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use super::defaults as k;
use super::inputs::Fake;
use super::*;

const CFG: &str = "/cfg/obmguard.toml";
const ORG: &str = "00D5e000000AbCdEAK";
const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A server certificate, its key and a CA certificate, generated once per test run.
struct Pki {
    cert: String,
    key: String,
    other_key: String,
    ca: String,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let make = |cn: &str, ca: bool| {
            let mut p = rcgen::CertificateParams::new(vec![cn.to_string()]).unwrap();
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::CommonName, cn);
            p.distinguished_name = dn;
            if ca {
                p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            }
            let key = rcgen::KeyPair::generate().unwrap();
            (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
        };
        let (cert, key) = make("proxy.example", false);
        let (_, other_key) = make("other.example", false);
        let (ca, _) = make("Test Client CA", true);
        Pki {
            cert,
            key,
            other_key,
            ca,
        }
    })
}

/// `obmguard.toml` with one section replaced or added: the lines are, in order,
/// 1 [server], 2 listen, 3 tls_cert, 4 tls_key, 5 blank, 6 [client_cert], 7 pin_sha256,
/// 8 blank, 9 [source], 10 allow, then `extra` from line 11.
fn proxy_toml(extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:8443\"]\ntls_cert = \"certs/server.pem\"\ntls_key = \"certs/server.key\"\n\n[client_cert]\npin_sha256 = [\"{PIN}\"]\n\n[source]\nallow = [\"203.0.113.0/24\"]\n{extra}"
    )
}

/// A route policy: 1 name, 2 path, 3 upstream, 4 blank, 5 [message], 6 organization_ids,
/// then `extra` from line 7.
fn route_toml(name: &str, path: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\npath = \"{path}\"\nupstream = \"http://10.0.0.5:8080/soap\"\n\n[message]\norganization_ids = [\"{ORG}\"]\n{extra}"
    )
}

/// A directory holding a server certificate and key, `obmguard.toml` and the given policies.
fn world(proxy: &str, routes: &[(&str, String)]) -> Fake {
    let p = pki();
    let mut io = Fake::default()
        .file("/cfg/certs/server.pem", p.cert.as_str())
        .file("/cfg/certs/server.key", p.key.as_str())
        .file(CFG, proxy);
    for (file, text) in routes {
        io = io.file(format!("/cfg/policies/{file}"), text.as_str());
    }
    io
}

fn minimal() -> Fake {
    world(
        &proxy_toml(""),
        &[("a.toml", route_toml("a", "/obm/a", ""))],
    )
}

fn load(io: &Fake) -> Result<Config, Problems> {
    load_from(io, Path::new(CFG), None)
}

fn ok(io: &Fake) -> Config {
    match load(io) {
        Ok(c) => c,
        Err(p) => panic!("expected a valid configuration:\n{p}"),
    }
}

/// Every error as `check` prints it.
fn errors(io: &Fake) -> Vec<String> {
    match load(io) {
        Ok(_) => panic!("expected configuration errors"),
        Err(p) => p.errors.iter().map(|e| e.to_string()).collect(),
    }
}

/// Asserts that one error starts with `prefix` (file:line: key) and contains `text`.
#[track_caller]
fn has_error(errors: &[String], prefix: &str, text: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(prefix) && e.contains(text)),
        "no error starting {prefix:?} containing {text:?} in:\n{}",
        errors.join("\n")
    );
}

fn route<'c>(c: &'c Config, name: &str) -> &'c Route {
    c.routes.by_name(name).expect("route")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_minimal_configuration_loads_with_every_default() {
    let c = ok(&minimal());
    assert_eq!(c.server.listen, vec!["127.0.0.1:8443".parse().unwrap()]);
    assert_eq!(c.server.policies_dir, Path::new("/cfg/policies"));
    assert_eq!(c.server.audit_log, "-");
    assert_eq!(c.server.threads, 4, "the number of CPUs");
    assert_eq!(c.server.cert_subject, "proxy.example");
    assert_eq!(c.server.cert_chain.len(), 1);
    assert_eq!(c.trust.pins, vec![[0u8; 32]]);
    let t = &c.timeouts;
    let ms = |s: &k::Setting| Duration::from_millis(s.value() as u64);
    assert_eq!(t.tls_handshake, ms(&k::TLS_HANDSHAKE_MS));
    assert_eq!(t.request_head, Duration::from_secs(10));
    assert_eq!(t.request_body, ms(&k::REQUEST_BODY_MS));
    assert_eq!(t.idle_keepalive, ms(&k::IDLE_KEEPALIVE_MS));
    assert_eq!(t.response_write, ms(&k::RESPONSE_WRITE_MS));
    assert_eq!(t.upstream_connect, ms(&k::UPSTREAM_CONNECT_MS));
    assert_eq!(t.drain, Duration::from_secs(60));
    assert_eq!(t.max_connection_age, ms(&k::MAX_CONNECTION_AGE_MS));
    assert_eq!(t.tls_ticket_lifetime, ms(&k::TLS_TICKET_LIFETIME_MS));
    assert_eq!(t.proxy_header, Duration::from_secs(5));
    assert!(c.server.proxy_protocol_from.is_empty(), "no PROXY protocol");
    let l = &c.limits;
    assert_eq!(l.max_connections, 4096);
    assert_eq!(l.max_connections_per_source, 512);
    assert_eq!(l.max_header_count, 64);
    assert_eq!(l.max_header_bytes, 16 * 1024);
    assert_eq!(l.upstream_pool_size, 128);
    assert_eq!(l.upstream_idle, Duration::from_secs(30));
    assert_eq!(l.max_response_bytes, 1024 * 1024);
    let r = route(&c, "a");
    assert_eq!(r.path, "/obm/a");
    assert_eq!(r.upstream.host, "10.0.0.5");
    assert_eq!(r.upstream.port, 8080);
    assert_eq!(r.upstream.authority, "10.0.0.5:8080");
    assert_eq!(r.upstream_timeout, Duration::from_secs(30));
    assert!(!r.upstream_keepalive);
    assert_eq!(r.max_inflight, 256);
    assert!(r.identity.is_none());
    assert!(r.oauth.is_none());
    assert_eq!(r.message.session_id, SessionMode::Strip);
    assert_eq!(r.message.max_body_bytes, 1024 * 1024);
    assert_eq!(r.message.xml, XmlLimits::default());
    assert_eq!(r.message.xml.max_depth, 64);
    assert!(r.source.contains(ip("203.0.113.7")));
    assert!(!r.source.contains(ip("198.51.100.1")));
    assert!(c.source.admitted.contains(ip("203.0.113.7")));
    assert!(c.source.salesforce.is_none(), "no list named @salesforce");
    let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("/cfg/policies/a.toml: identity: no [identity] rule")),
        "{warnings:?}"
    );
}

#[test]
fn the_host_header_names_the_port_only_when_it_is_not_the_schemes_default() {
    for (url, authority) in [
        ("http://rcv.example/soap", "rcv.example"),
        ("http://rcv.example:443/soap", "rcv.example:443"),
        ("https://rcv.example:443/soap", "rcv.example"),
        ("https://rcv.example:8443/soap", "rcv.example:8443"),
        ("http://[::1]/soap", "[::1]"),
        ("https://[2001:db8::5]:8443/soap", "[2001:db8::5]:8443"),
    ] {
        let text = route_toml("a", "/obm/a", "").replace("http://10.0.0.5:8080/soap", url);
        let c = ok(&world(&proxy_toml(""), &[("a.toml", text)]));
        assert_eq!(route(&c, "a").upstream.authority, authority, "{url}");
    }
}

#[test]
fn the_session_id_default_is_the_documented_one() {
    assert_eq!(
        SessionMode::default().as_str(),
        k::SESSION_ID.text(),
        "defaults.rs and SessionMode disagree"
    );
    for word in SessionMode::WORDS {
        let m = SessionMode::try_from(word.to_string()).unwrap();
        assert_eq!(m.as_str(), *word);
    }
}

#[test]
fn server_errors_name_file_line_and_key() {
    let io = world(
        "[server]\nlisten = [\"nowhere\", \"127.0.0.1:8443\"]\ntls_cert = \"certs/server.pem\"\ntls_key = \"certs/server.key\"\nadmin_listen = \"localhost\"\npolicies = \"missing\"\nthreads = 0\n[client_cert]\npin_sha256 = []\nca_bundle = \"certs/ca.pem\"\n",
        &[],
    )
    .file("/cfg/certs/ca.pem", pki().ca.as_str());
    let e = errors(&io);
    has_error(
        &e,
        "/cfg/obmguard.toml:2: server.listen[0]",
        "\"nowhere\" is not an address:port",
    );
    has_error(
        &e,
        "/cfg/obmguard.toml:5: server.admin_listen",
        "write e.g. 127.0.0.1:9090",
    );
    has_error(
        &e,
        "/cfg/obmguard.toml:6: server.policies",
        "/cfg/missing is not a directory",
    );
    has_error(
        &e,
        "/cfg/obmguard.toml:7: server.threads",
        "0 is out of range: use a value from 1 to 1024",
    );
}

#[test]
fn an_empty_listen_list_and_unreadable_or_mismatched_server_files_are_errors() {
    let mut io = world(&proxy_toml("").replace("[\"127.0.0.1:8443\"]", "[]"), &[]);
    let e = errors(&io);
    has_error(
        &e,
        "/cfg/obmguard.toml:2: server.listen",
        "no listen address",
    );
    io.files.remove(Path::new("/cfg/certs/server.pem"));
    let e = errors(&io);
    has_error(
        &e,
        "/cfg/obmguard.toml:3: server.tls_cert / server.tls_key",
        "cannot read /cfg/certs/server.pem",
    );
    // With the dev PKI script where the example configuration keeps it, say to run it.
    let io = io.file("/cfg/certs/make-dev-pki.sh", "#!/bin/sh\n");
    has_error(
        &errors(&io),
        "/cfg/obmguard.toml:3",
        "make-dev-pki.sh first",
    );
    let io = minimal().file("/cfg/certs/server.key", pki().other_key.as_str());
    has_error(
        &errors(&io),
        "/cfg/obmguard.toml:3: server.tls_cert / server.tls_key",
        "does not belong to the certificate",
    );
}

#[test]
fn ports_salesforce_does_not_call_and_a_public_admin_listener_are_warnings() {
    let mut io = world(
        &proxy_toml("").replace("127.0.0.1:8443", "127.0.0.1:6000"),
        &[("a.toml", route_toml("a", "/a", ""))],
    );
    let text = String::from_utf8(io.files[Path::new(CFG)].clone())
        .unwrap()
        .replace(
            "tls_key = \"certs/server.key\"\n",
            "tls_key = \"certs/server.key\"\nadmin_listen = \"0.0.0.0:9090\"\n",
        );
    io.files.insert(CFG.into(), text.into_bytes());
    let c = ok(&io);
    let w: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
    has_error(&w, "/cfg/obmguard.toml:2: server.listen[0]", "port 6000");
    has_error(
        &w,
        "/cfg/obmguard.toml:5: server.admin_listen",
        "not on loopback",
    );
}

#[test]
fn client_cert_errors() {
    let no_table = world(
        "[server]\nlisten = [\"127.0.0.1:8443\"]\ntls_cert = \"certs/server.pem\"\ntls_key = \"certs/server.key\"\n[source]\nallow = [\"203.0.113.0/24\"]\n",
        &[("a.toml", route_toml("a", "/a", ""))],
    );
    has_error(
        &errors(&no_table),
        "/cfg/obmguard.toml: client_cert",
        "missing [client_cert]",
    );
    let empty = world(
        &proxy_toml("").replace(&format!("pin_sha256 = [\"{PIN}\"]"), "pin_sha256 = []"),
        &[("a.toml", route_toml("a", "/a", ""))],
    );
    has_error(
        &errors(&empty),
        "/cfg/obmguard.toml:6: client_cert",
        "no way to verify",
    );
    let bad_pin = world(
        &proxy_toml("").replace(PIN, "abc"),
        &[("a.toml", route_toml("a", "/a", ""))],
    );
    let e = errors(&bad_pin);
    has_error(
        &e,
        "/cfg/obmguard.toml:7: client_cert.pin_sha256[0]",
        "write 64 hex digits",
    );
    let bundle = |pem: &str| {
        world(
            &proxy_toml("").replace(
                &format!("pin_sha256 = [\"{PIN}\"]"),
                "ca_bundle = \"certs/ca.pem\"",
            ),
            &[("a.toml", route_toml("a", "/a", ""))],
        )
        .file("/cfg/certs/ca.pem", pem)
    };
    has_error(
        &errors(&bundle("")),
        "/cfg/obmguard.toml:7: client_cert.ca_bundle",
        "would trust nobody",
    );
    let c = ok(&bundle(&pki().ca));
    assert_eq!(c.trust.roots.len(), 1);
    assert_eq!(
        c.trust.ca_file.as_deref(),
        Some(Path::new("/cfg/certs/ca.pem"))
    );
    assert_eq!(c.trust.ca_expiry[0].0, "Test Client CA");
}

#[test]
fn pins_accept_colons_and_a_prefix() {
    let hex64 = "ab".repeat(32);
    let colons: Vec<String> = hex64
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    assert_eq!(parse_pin(&hex64).unwrap(), [0xab; 32]);
    assert_eq!(
        parse_pin(&format!("SHA256:{}", colons.join(":"))).unwrap(),
        [0xab; 32]
    );
    assert_eq!(parse_pin("ab"), Err(BadPin));
    assert!(!BadPin.to_string().contains("ab"));
}

#[test]
fn cidrs_with_host_bits_or_admitting_everyone_are_refused_at_their_index() {
    let io = world(
        &proxy_toml("trusted_proxies = [\"10.0.0.1/8\", \"@nonsense\", \"0.0.0.0/0\", \"::/0\", \"banana\"]\n"),
        &[("a.toml", route_toml("a", "/a", ""))],
    );
    let e = errors(&io);
    let at = "/cfg/obmguard.toml:11: source.trusted_proxies";
    has_error(
        &e,
        &format!("{at}[0]"),
        "has host bits set: write 10.0.0.0/8 (or /32 for the single address)",
    );
    has_error(&e, &format!("{at}[1]"), "the only named set is @salesforce");
    has_error(&e, &format!("{at}[2]"), "admits every address");
    has_error(&e, &format!("{at}[3]"), "admits every address");
    has_error(&e, &format!("{at}[4]"), "is not an address range");
    // A bare address is a /32, and an IPv4-mapped peer matches it.
    let io = world(
        &proxy_toml("trusted_proxies = [\"192.0.2.9\"]\n"),
        &[("a.toml", route_toml("a", "/a", ""))],
    );
    let c = ok(&io);
    assert!(c.source.trusted_proxies.contains(ip("::ffff:192.0.2.9")));
    assert!(!c.source.trusted_proxies.contains(ip("192.0.2.10")));
}

#[test]
fn load_balancers_sending_proxy_headers_are_ranges_and_bad_ones_fail_closed_at_their_line() {
    let with = |list: &str| {
        proxy_toml("").replacen(
            "[server]\n",
            &format!("[server]\nproxy_protocol_from = {list}\n"),
            1,
        )
    };
    let io = world(
        &with(
            "[\"10.0.0.0/24\", \"10.0.0.300/32\", \"@salesforce\", \"0.0.0.0/0\", \"10.1.0.1/16\"]",
        ),
        &[("a.toml", route_toml("a", "/a", "max_depth = 1\n"))],
    );
    let e = errors(&io);
    let at = "/cfg/obmguard.toml:2: server.proxy_protocol_from";
    has_error(
        &e,
        &format!("{at}[1]"),
        "\"10.0.0.300/32\" is not an address range",
    );
    has_error(
        &e,
        &format!("{at}[2]"),
        "is a named set: list the load balancers' own addresses",
    );
    has_error(&e, &format!("{at}[3]"), "admits every address");
    has_error(
        &e,
        &format!("{at}[4]"),
        "has host bits set: write 10.1.0.0/16",
    );
    // The routes are still checked in the same run.
    has_error(
        &e,
        "/cfg/policies/a.toml:7: message.max_depth",
        "out of range",
    );
    assert_eq!(e.len(), 5, "{e:?}");
    let io = world(
        &with("[\"10.0.0.0/24\", \"192.0.2.9\"]").replace(
            "[source]\n",
            "[timeouts]\nproxy_header_ms = 250\n\n[source]\n",
        ),
        &[("a.toml", route_toml("a", "/a", ""))],
    );
    let c = ok(&io);
    let lbs = &c.server.proxy_protocol_from;
    assert!(lbs.contains(ip("10.0.0.7")) && lbs.contains(ip("::ffff:192.0.2.9")));
    assert!(!lbs.contains(ip("10.0.1.7")));
    assert_eq!(c.timeouts.proxy_header, Duration::from_millis(250));
    // Out of its range, the timeout is an error that names the range.
    let io = world(
        &proxy_toml("").replace(
            "[source]\n",
            "[timeouts]\nproxy_header_ms = 50\n\n[source]\n",
        ),
        &[("a.toml", route_toml("a", "/a", ""))],
    );
    has_error(
        &errors(&io),
        "/cfg/obmguard.toml:10: timeouts.proxy_header_ms",
        "50 is out of range: use a value from 100 to 120000",
    );
}

#[test]
fn at_salesforce_expands_to_the_builtin_ranges_or_a_configured_file() {
    let own = "\n[source]\nallow = [\"@salesforce\"]\n";
    let io = world(&proxy_toml(""), &[("a.toml", route_toml("a", "/a", own))]);
    let c = ok(&io);
    let r = route(&c, "a");
    assert!(
        r.source.contains(ip("13.108.0.1")),
        "a first-party Salesforce range"
    );
    assert!(
        !r.source.contains(ip("203.0.113.7")),
        "the route's own list replaces the global one"
    );
    assert_eq!(c.source.salesforce_origin, "builtin");
    assert!(c.source.salesforce.is_some(), "used, so reported");
    assert!(c.source.admitted.contains(ip("13.108.0.1")));

    let file = r#"{"createDate": "2030-01-01-00-00-00", "prefixes": [{"ip_prefix": ["198.51.100.0/24"]}]}"#;
    let io = world(
        &proxy_toml("salesforce_ranges = \"sf.json\"\n"),
        &[("a.toml", route_toml("a", "/a", own))],
    )
    .file("/cfg/sf.json", file);
    let c = ok(&io);
    let r = route(&c, "a");
    assert!(r.source.contains(ip("198.51.100.77")));
    assert!(!r.source.contains(ip("13.108.0.1")));
    assert_eq!(c.source.salesforce_origin, "file");

    let io = world(
        &proxy_toml("salesforce_ranges = \"missing.json\"\n"),
        &[("a.toml", route_toml("a", "/a", own))],
    );
    has_error(
        &errors(&io),
        "/cfg/obmguard.toml:11: source.salesforce_ranges",
        "obmguard import-ranges --fetch --to /cfg/missing.json",
    );
}

#[test]
fn the_ranges_refresh_has_its_defaults_and_refuses_plain_http() {
    let io = world(
        &proxy_toml("[source.salesforce_refresh]\n"),
        &[("a.toml", route_toml("a", "/a", ""))],
    );
    let r = ok(&io).source.refresh.expect("on");
    assert_eq!(r.interval, Duration::from_secs(1440 * 60));
    assert_eq!(r.url.as_str(), ranges::SALESFORCE_RANGES_URL);
    let io = world(
        &proxy_toml("[source.salesforce_refresh]\ninterval_minutes = 0\nurl = \"http://mirror.example/r.json\"\nca_file = \"nope.pem\"\n"),
        &[("a.toml", route_toml("a", "/a", ""))],
    );
    let e = errors(&io);
    let at = "/cfg/obmguard.toml:";
    has_error(
        &e,
        &format!("{at}12: source.salesforce_refresh.interval_minutes"),
        "use a value from 1 to 10080",
    );
    has_error(
        &e,
        &format!("{at}13: source.salesforce_refresh.url"),
        "not an https:// URL",
    );
}

#[test]
fn out_of_range_timeouts_and_limits_name_their_range() {
    let io = world(
        &proxy_toml("[timeouts]\nrequest_head_ms = 99\ndrain_ms = 0\n[limits]\nmax_connections = 0\nupstream_pool_size = 0\nmax_response_bytes = 100000000\n"),
        &[("a.toml", route_toml("a", "/a", ""))],
    );
    let e = errors(&io);
    has_error(
        &e,
        "/cfg/obmguard.toml:12: timeouts.request_head_ms",
        "99 is out of range: use a value from 100 to 120000",
    );
    has_error(
        &e,
        "/cfg/obmguard.toml:15: limits.max_connections",
        "use a value from 1 to 1000000",
    );
    has_error(
        &e,
        "/cfg/obmguard.toml:17: limits.max_response_bytes",
        "use a value from 1024 to 67108864",
    );
    assert_eq!(
        e.len(),
        3,
        "drain_ms = 0 and upstream_pool_size = 0 are allowed: {e:?}"
    );
}

#[test]
fn limits_and_routes_override_defaults() {
    let io = world(
        &proxy_toml("[timeouts]\ndrain_ms = 0\n[limits]\nmax_inflight_per_route = 7\n"),
        &[
            ("a.toml", route_toml("a", "/a", "")),
            (
                "b.toml",
                "max_inflight = 3\nupstream_keepalive = true\n".to_string()
                    + &route_toml("b", "/b", "max_body_bytes = 2048\nmax_depth = 8\nmax_attributes = 4\nsession_id = \"remove\"\n"),
            ),
        ],
    );
    let c = ok(&io);
    assert_eq!(c.timeouts.drain, Duration::ZERO);
    assert_eq!(
        route(&c, "a").max_inflight,
        7,
        "limits.max_inflight_per_route"
    );
    let b = route(&c, "b");
    assert_eq!(b.max_inflight, 3);
    assert!(b.upstream_keepalive);
    assert_eq!(b.message.max_body_bytes, 2048);
    assert_eq!(
        (b.message.xml.max_depth, b.message.xml.max_attributes),
        (8, 4)
    );
    assert_eq!(b.message.session_id, SessionMode::Remove);
}

#[test]
fn duplicate_route_names_and_paths_are_errors_at_their_line() {
    let io = world(
        &proxy_toml(""),
        &[
            ("a.toml", route_toml("a", "/obm/x", "")),
            (
                "b.toml",
                "# the same path as a.toml\n".to_string() + &route_toml("b", "/obm/x", ""),
            ),
            (
                "c.toml",
                "\n\n".to_string() + &route_toml("a", "/obm/c", ""),
            ),
        ],
    );
    let e = errors(&io);
    has_error(
        &e,
        "/cfg/policies/b.toml:3: path",
        "path /obm/x is already routed by /cfg/policies/a.toml:2: one path, one route",
    );
    has_error(
        &e,
        "/cfg/policies/c.toml:3: name",
        "route name \"a\" is already used by /cfg/policies/a.toml:1",
    );
}

#[test]
fn route_errors_name_file_line_and_key() {
    let io = world(
        &proxy_toml(""),
        &[(
            "a.toml",
            "name = \"a b\"\npath = \"obm?x\"\nupstream = \"ftp://10.0.0.5/\"\nupstream_timeout_ms = 60001\nmax_inflight = 0\nupstream_ca = \"ca.pem\"\n[identity]\nsubject_cn = [\" \"]\npin_sha256 = [\"xyz\"]\n[source]\nallow = []\n[message]\norganization_ids = [\"00D5e000000AbCdEAF\", \"04k5e000000XyZaAAK\"]\naction_ids = [\"00D5e000000AbCdEAK\"]\nmax_body_bytes = 1\n"
                .to_string(),
        )],
    );
    let e = errors(&io);
    let at = "/cfg/policies/a.toml:";
    has_error(&e, &format!("{at}1: name"), "letters, digits");
    has_error(&e, &format!("{at}2: path"), "is not a request path");
    has_error(
        &e,
        &format!("{at}3: upstream"),
        "scheme ftp is not supported",
    );
    has_error(
        &e,
        &format!("{at}4: upstream_timeout_ms"),
        "use a value from 100 to 60000",
    );
    has_error(
        &e,
        &format!("{at}5: max_inflight"),
        "use a value from 1 to 1000000",
    );
    has_error(
        &e,
        &format!("{at}8: identity.subject_cn[0]"),
        "empty common name",
    );
    has_error(
        &e,
        &format!("{at}9: identity.pin_sha256[0]"),
        "64 hex digits",
    );
    has_error(
        &e,
        &format!("{at}11: source.allow"),
        "empty: list who may call this route",
    );
    has_error(
        &e,
        &format!("{at}13: message.organization_ids[0]"),
        "ends EAK",
    );
    has_error(
        &e,
        &format!("{at}13: message.organization_ids[1]"),
        "is not an organization id",
    );
    has_error(
        &e,
        &format!("{at}14: message.action_ids[0]"),
        "is not an outbound message action id",
    );
    has_error(
        &e,
        &format!("{at}15: message.max_body_bytes"),
        "use a value from 1024 to 67108864",
    );

    let io = world(
        &proxy_toml(""),
        &[(
            "a.toml",
            route_toml("a", "/a", "").replace("http://10.0.0.5:8080/soap", "http://10.0.0.5/")
                + "[identity]\n",
        )],
    );
    // An empty [identity] table, and upstream_ca only with https.
    has_error(
        &errors(&io),
        &format!("{at}7: identity"),
        "must list subject_cn or pin_sha256",
    );
    let io = world(
        &proxy_toml(""),
        &[(
            "a.toml",
            "upstream_ca = \"ca.pem\"\n".to_string() + &route_toml("a", "/a", ""),
        )],
    )
    .file("/cfg/policies/ca.pem", pki().ca.as_str());
    has_error(
        &errors(&io),
        &format!("{at}1: upstream_ca"),
        "only applies to an https:// upstream",
    );
}

#[test]
fn an_identity_table_becomes_data_the_identity_stage_checks() {
    let pin = "cd".repeat(32);
    let io = world(
        &proxy_toml(""),
        &[("a.toml", route_toml("a", "/a", &format!("[identity]\nsubject_cn = [\"proxy.salesforce.com\"]\npin_sha256 = [\"{pin}\"]\n")))],
    );
    let c = ok(&io);
    assert_eq!(
        route(&c, "a").identity,
        Some(IdentityPolicy {
            subject_cn: vec!["proxy.salesforce.com".into()],
            pins: vec![[0xcd; 32]],
        })
    );
}

#[test]
fn a_route_without_source_ranges_anywhere_is_an_error() {
    let io = world(
        &proxy_toml("").replace("allow = [\"203.0.113.0/24\"]\n", ""),
        &[("a.toml", route_toml("a", "/a", ""))],
    );
    has_error(
        &errors(&io),
        "/cfg/policies/a.toml: source",
        "no source ranges",
    );
}

#[test]
fn an_unknown_session_id_mode_names_the_allowed_words_and_its_line() {
    let io = world(
        &proxy_toml(""),
        &[("a.toml", route_toml("a", "/a", "session_id = \"banana\"\n"))],
    );
    has_error(
        &errors(&io),
        "/cfg/policies/a.toml:7:",
        "\"banana\" is not a mode: use strip, remove, reject, audit or inject",
    );
    // A long value is not repeated: it could be anything.
    let long = "x".repeat(200);
    let io = world(
        &proxy_toml(""),
        &[(
            "a.toml",
            route_toml("a", "/a", &format!("session_id = \"{long}\"\n")),
        )],
    );
    let e = errors(&io);
    has_error(&e, "/cfg/policies/a.toml:7:", "this value is not a mode");
    assert!(!e.iter().any(|e| e.contains(&long)));
}

#[test]
fn modes_audit_warns_and_inject_needs_oauth() {
    let io = world(
        &proxy_toml(""),
        &[
            ("a.toml", route_toml("a", "/a", "session_id = \"audit\"\n")),
            ("b.toml", route_toml("b", "/b", "session_id = \"inject\"\n")),
        ],
    );
    match load(&io) {
        Ok(_) => panic!("inject without [oauth] must be refused"),
        Err(p) => {
            let e: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
            let w: Vec<String> = p.warnings.iter().map(|e| e.to_string()).collect();
            has_error(
                &e,
                "/cfg/policies/b.toml:7: message.session_id",
                "inject needs an [oauth] table",
            );
            has_error(
                &w,
                "/cfg/policies/a.toml:7: message.session_id",
                "audit mode forwards",
            );
        }
    }
}

const SECRET: &str = "s3cr3t-value-that-must-not-appear";

fn oauth_route(body: &str) -> String {
    route_toml("o", "/o", "session_id = \"inject\"\n") + "[oauth]\n" + body
}

fn oauth_world(body: &str) -> Fake {
    world(&proxy_toml(""), &[("o.toml", oauth_route(body))])
}

/// No problem of any load ever holds the secret value.
#[track_caller]
fn never_shows_secret(io: &Fake) {
    if let Err(p) = load(io) {
        assert!(!p.to_string().contains(SECRET), "{p}");
    }
}

#[test]
fn oauth_secrets_come_from_env_or_file_and_never_inline() {
    let base = "flow = \"client_credentials\"\ntoken_url = \"https://acme.my.salesforce.com/services/oauth2/token\"\nclient_id = { value = \"consumer-key\" }\n";
    // 7 session_id, 8 [oauth], 9 flow, 10 token_url, 11 client_id, 12 client_secret
    let by_env = oauth_world(&format!(
        "{base}client_secret = {{ env = \"OBM_SECRET\" }}\n"
    ))
    .var("OBM_SECRET", &format!("  {SECRET}\n"));
    let c = ok(&by_env);
    let o = route(&c, "o").oauth.as_ref().unwrap();
    match &o.settings.flow {
        crate::token::Flow::ClientCredentials {
            client_secret,
            client_auth,
        } => {
            assert_eq!(client_secret.expose(), SECRET, "trimmed");
            assert_eq!(*client_auth, crate::token::ClientAuth::Body);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(o.settings.client_id, "consumer-key");
    assert_eq!(o.settings.ttl, Duration::from_secs(3600));
    assert_eq!(o.settings.connect_timeout, Duration::from_secs(5));
    assert_eq!(o.settings.total_timeout, Duration::from_secs(10));
    assert!(o.rewrite_urls && !o.header);

    let by_file = oauth_world(&format!(
        "{base}client_secret = {{ file = \"../secrets/s\" }}\nclient_auth = \"basic\"\n"
    ))
    .file("/cfg/secrets/s", SECRET);
    let c = ok(&by_file);
    let o = route(&c, "o").oauth.as_ref().unwrap();
    assert!(matches!(
        &o.settings.flow,
        crate::token::Flow::ClientCredentials { client_secret, client_auth: crate::token::ClientAuth::Basic }
            if client_secret.expose() == SECRET
    ));

    let inline = oauth_world(&format!(
        "{base}client_secret = {{ value = \"{SECRET}\" }}\n"
    ));
    has_error(
        &errors(&inline),
        "/cfg/policies/o.toml:12: oauth.client_secret",
        "may not be written in a policy file",
    );
    never_shows_secret(&inline);

    let unset = oauth_world(&format!(
        "{base}client_secret = {{ env = \"OBM_UNSET\" }}\n"
    ));
    has_error(
        &errors(&unset),
        "/cfg/policies/o.toml:12: oauth.client_secret",
        "environment variable OBM_UNSET is not set",
    );
    let empty = oauth_world(&format!("{base}client_secret = {{ file = \"empty\" }}\n"))
        .file("/cfg/policies/empty", "\n");
    has_error(
        &errors(&empty),
        "/cfg/policies/o.toml:12: oauth.client_secret",
        "/cfg/policies/empty is empty",
    );
    let missing = oauth_world(&format!("{base}client_secret = {{ file = \"nope\" }}\n"));
    has_error(
        &errors(&missing),
        "/cfg/policies/o.toml:12: oauth.client_secret",
        "cannot read /cfg/policies/nope",
    );
    let two = oauth_world(&format!(
        "{base}client_secret = {{ env = \"A\", file = \"B\" }}\n"
    ));
    has_error(
        &errors(&two),
        "/cfg/policies/o.toml:12: oauth.client_secret",
        "write exactly one of",
    );
}

#[test]
fn oauth_flows_and_client_auth_are_words_from_a_list() {
    let io = oauth_world(
        "flow = \"password\"\ntoken_url = \"https://a.example/t\"\nclient_id = { value = \"k\" }\n",
    );
    has_error(
        &errors(&io),
        "/cfg/policies/o.toml:9:",
        "\"password\" is not an OAuth flow: use client_credentials or jwt_bearer",
    );
    let io = oauth_world("flow = \"client_credentials\"\ntoken_url = \"https://a.example/t\"\nclient_id = { value = \"k\" }\nclient_secret = { env = \"S\" }\nclient_auth = \"header\"\n")
        .var("S", SECRET);
    has_error(
        &errors(&io),
        "/cfg/policies/o.toml:13:",
        "\"header\" is not a client_auth: use body or basic",
    );
}

#[test]
fn oauth_section_errors() {
    let io = oauth_world("flow = \"jwt_bearer\"\ntoken_url = \"not a url\"\nclient_id = { value = \"k\" }\nclient_secret = { env = \"S\" }\nttl_seconds = 1\ntimeout_ms = 0\ncallback_hosts = [\"https://x.example\"]\n")
        .var("S", SECRET);
    let e = errors(&io);
    let at = "/cfg/policies/o.toml:";
    has_error(&e, &format!("{at}10: oauth.token_url"), "not a URL");
    has_error(
        &e,
        &format!("{at}8: oauth.client_secret"),
        "belong to flow = \"client_credentials\"",
    );
    has_error(
        &e,
        &format!("{at}8: oauth.username"),
        "jwt_bearer needs username",
    );
    has_error(
        &e,
        &format!("{at}8: oauth.private_key"),
        "jwt_bearer needs private_key",
    );
    has_error(
        &e,
        &format!("{at}13: oauth.ttl_seconds"),
        "use a value from 60 to 86400",
    );
    has_error(
        &e,
        &format!("{at}14: oauth.timeout_ms"),
        "use a value from 10 to 60000",
    );
    has_error(
        &e,
        &format!("{at}15: oauth.callback_hosts[0]"),
        "plain host name",
    );
    // The token broker's own checks run too: plain http only to loopback.
    let io = oauth_world("flow = \"client_credentials\"\ntoken_url = \"http://acme.example/t\"\nclient_id = { value = \"k\" }\nclient_secret = { env = \"S\" }\n").var("S", SECRET);
    has_error(&errors(&io), &format!("{at}8: oauth"), "must use https");
    never_shows_secret(&io);
}

#[test]
fn the_configuration_file_itself_unreadable_or_malformed() {
    let io = Fake::default();
    has_error(
        &errors(&io),
        "/cfg/obmguard.toml: ",
        "cannot read the configuration file",
    );
    let io = world(
        "[server]\nlisten = [\"127.0.0.1:8443\"]\ncolour = \"blue\"\n",
        &[],
    );
    has_error(
        &errors(&io),
        "/cfg/obmguard.toml:3: ",
        "unknown field `colour`",
    );
    let io = world(&proxy_toml(""), &[]);
    has_error(
        &errors(&io),
        "/cfg/obmguard.toml: server.policies",
        "is not a directory",
    );
    let io = world(&proxy_toml(""), &[("README.md", "# not a policy".into())]);
    has_error(
        &errors(&io),
        "/cfg/obmguard.toml: server.policies",
        "holds no *.toml route policy",
    );
}

#[test]
fn delivery_settings_load_with_their_defaults_and_cross_checks() {
    let queued = "[delivery]\nmode = \"queued\"\nconcurrency = 2\nretry_initial_ms = 500\nretry_max_ms = 1000\n";
    let io = world(
        &proxy_toml("\n[store]\npath = \"state\"\nmax_messages = 10\nlease_ms = 2000\n"),
        &[
            ("a.toml", route_toml("a", "/obm/a", queued)),
            ("b.toml", route_toml("b", "/obm/b", "")),
        ],
    );
    let c = ok(&io);
    let store = c.store.as_ref().expect("[store]");
    assert_eq!(
        store.engine,
        crate::config::StoreEngine::Sqlite {
            path: "/cfg/state".into()
        }
    );
    assert_eq!(
        (store.max_messages, store.lease),
        (10, Duration::from_millis(2000))
    );
    let a = &route(&c, "a").delivery;
    assert!(a.queued() && a.dedupe, "queued routes dedupe by default");
    assert_eq!(a.concurrency, 2);
    assert_eq!(a.max_age, Duration::from_secs(604_800));
    assert_eq!(a.dedupe_window, Duration::from_secs(172_800));
    let b = &route(&c, "b").delivery;
    assert!(!b.queued() && !b.dedupe);

    // Without a [store]: queued and dedupe are errors naming the file, line and key.
    let io = world(
        &proxy_toml(""),
        &[
            ("a.toml", route_toml("a", "/obm/a", queued)),
            ("c.toml", route_toml("c", "/obm/c", "[delivery]\ndedupe = true\n")),
            (
                "d.toml",
                route_toml(
                    "d",
                    "/obm/d",
                    "session_id = \"audit\"\n[delivery]\nmode = \"queued\"\nretry_initial_ms = 5000\nretry_max_ms = 1000\n",
                ),
            ),
        ],
    );
    let e = errors(&io);
    has_error(
        &e,
        "/cfg/policies/a.toml:8: delivery",
        "needs a store: add [store] path",
    );
    has_error(
        &e,
        "/cfg/policies/c.toml:8: delivery",
        "dedupe = true needs a store",
    );
    has_error(
        &e,
        "/cfg/policies/d.toml:9: delivery.mode",
        "may not use session_id = \"audit\"",
    );
    has_error(
        &e,
        "/cfg/policies/d.toml:11: delivery.retry_max_ms",
        "shorter than retry_initial_ms",
    );

    let io = world(&proxy_toml("\n[store]\nmax_bytes = 5\n"), &[]);
    let e = errors(&io);
    has_error(&e, "/cfg/obmguard.toml:12: store", "needs path");
    has_error(&e, "/cfg/obmguard.toml:13: store.max_bytes", "out of range");
}

#[test]
fn a_postgresql_store_url_is_a_secret_and_excludes_a_path() {
    let pw = "pa55word-never-printed";
    let url = format!("postgres://obmguard:{pw}@db.internal:5432/obmguard");
    let io = world(
        &proxy_toml("\n[store]\nurl = { env = \"OBMGUARD_STORE_URL\" }\npool_size = 4\n"),
        &[(
            "a.toml",
            route_toml("a", "/obm/a", "[delivery]\nmode = \"queued\"\n"),
        )],
    )
    .var("OBMGUARD_STORE_URL", &url);
    let c = ok(&io);
    let store = c.store.as_ref().unwrap();
    match &store.engine {
        crate::config::StoreEngine::Postgres { url: u, pool_size } => {
            assert_eq!((u.expose(), *pool_size), (url.as_str(), 4));
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{c:?}").contains(pw), "Debug shows no password");

    let both = world(
        &proxy_toml("\n[store]\npath = \"state\"\nurl = { env = \"OBMGUARD_STORE_URL\" }\n"),
        &[],
    )
    .var("OBMGUARD_STORE_URL", &url);
    has_error(
        &errors(&both),
        "/cfg/obmguard.toml:14: store.url",
        "not both",
    );
    let inline = world(
        &proxy_toml(&format!("\n[store]\nurl = {{ value = \"{url}\" }}\n")),
        &[],
    );
    let e = errors(&inline);
    has_error(&e, "/cfg/obmguard.toml:13: store.url", "may not be written");
    assert!(e.iter().all(|m| !m.contains(pw)), "{e:?}");
    let unset = world(
        &proxy_toml("\n[store]\nurl = { env = \"OBMGUARD_STORE_URL\" }\n"),
        &[],
    );
    has_error(
        &errors(&unset),
        "/cfg/obmguard.toml:13: store.url",
        "OBMGUARD_STORE_URL is not set",
    );
    let mysql =
        world(&proxy_toml("\n[store]\nurl = { env = \"U\" }\n"), &[]).var("U", "mysql://x:y@h/d");
    let e = errors(&mysql);
    has_error(&e, "/cfg/obmguard.toml:13: store.url", "postgres://");
    assert!(e.iter().all(|m| !m.contains("x:y")), "{e:?}");
}
