//! PROXY protocol on the listener: a real HAProxy (Debian's package) in front in TCP mode,
//! sending v2 (`send-proxy-v2`) and v1 (`send-proxy`) headers; then hand-made headers from a
//! raw client, as the load balancer (127.0.0.1, the only `proxy_protocol_from` address) or as
//! a peer outside it (a socket bound to 127.0.0.2 and beyond: Linux routes all of 127/8 to
//! lo). Each test asserts what the client saw, the audit's `peer` and `client_ip`, and the
//! metrics. Bounds below only detect hangs; nothing here measures speed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ppp::v2::{Builder, Command as V2Command, Protocol, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::harness::*;
use obmguard_testkit::receiver::{Behaviour, Receiver};

/// HAProxy from the system's packages, or `None` outside CI where it is not installed (under
/// `CI=true` a missing HAProxy fails the test: .ci/run installs it).
pub(crate) fn haproxy_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "haproxy is not installed: .ci/run installs it (apt-get install -y haproxy)"
        );
        eprintln!("SKIPPED: no haproxy here (apt-get install -y haproxy)");
    }
    found
}

/// A real HAProxy on loopback, TCP mode, forwarding to obmguard with a PROXY header; killed
/// when dropped.
struct HaProxy {
    child: Child,
    addr: SocketAddr,
}

impl HaProxy {
    /// `send` is the server option: `send-proxy-v2` or `send-proxy` (v1).
    async fn start(w: &World, send: &str, to: SocketAddr) -> Option<HaProxy> {
        let bin = haproxy_binary()?;
        let port = free_port();
        let cfg = w.path(&format!("haproxy-{send}.cfg"));
        write(
            &cfg,
            &format!(
                "global\n    maxconn 100\n\ndefaults\n    mode tcp\n    retries 0\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\nfrontend salesforce\n    bind 127.0.0.1:{port}\n    default_backend obmguard\n\nbackend obmguard\n    server obm {to} {send}\n"
            ),
        );
        let check = Command::new(&bin)
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy refused its configuration: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut h = HaProxy {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        // Probed from 127.0.0.2, a client obmguard admits: HAProxy connects to obmguard for
        // every client, and this one must not count as a refusal.
        let probe = || async {
            let s = TcpSocket::new_v4()?;
            s.bind("127.0.0.2:0".parse().unwrap())?;
            s.connect(h.addr).await
        };
        let start = Instant::now();
        while probe().await.is_err() {
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!("haproxy exited with {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "haproxy did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(h)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Load balancer 127.0.0.1; clients 127.0.0.2 (route `/a`, the global ranges) and 127.0.0.3
/// (route `/b`, its own); `extra` more tables.
async fn behind_a_load_balancer(w: &World, recv: &Receiver, extra: &str) -> Proxy {
    let b = route("b", "/b", &recv.url("/b"), "strip") + "\n[source]\nallow = [\"127.0.0.3/32\"]\n";
    let mut s = Setup::new(w)
        .route("a.toml", route("a", "/a", &recv.url("/a"), "strip"))
        .route("b.toml", b);
    s.server = "proxy_protocol_from = [\"127.0.0.1/32\"]\n".into();
    s.source = "allow = [\"127.0.0.2/32\"]\n".into();
    s.extra = extra.into();
    Proxy::start(w, &s).await
}

/// A client presenting Salesforce's certificate from `bind`, sending `preamble` before TLS.
fn client(w: &World, bind: &str, preamble: Vec<u8>) -> obmguard_testkit::client::TlsClientConfig {
    let mut c = w.salesforce();
    c.bind = Some(bind.parse().unwrap());
    c.preamble = preamble;
    c
}

fn v1(src: &str) -> Vec<u8> {
    format!("PROXY TCP4 {src} 127.0.0.1 40000 443\r\n").into_bytes()
}

/// A v2 header: `PROXY` from `src` (TCP over IPv4 or IPv6), or `LOCAL` when `src` is `None`.
fn v2(src: Option<&str>, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut b = match src {
        Some(s) => {
            let s: SocketAddr = s.parse().unwrap();
            let d: SocketAddr = if s.is_ipv4() {
                "127.0.0.1:443".parse().unwrap()
            } else {
                "[::1]:443".parse().unwrap()
            };
            Builder::with_addresses(Version::Two | V2Command::Proxy, Protocol::Stream, (s, d))
        }
        None => Builder::with_addresses(
            Version::Two | V2Command::Local,
            Protocol::Unspecified,
            ppp::v2::Addresses::Unspecified,
        ),
    };
    for (k, v) in tlvs {
        b = b.write_tlv(*k, v).unwrap();
    }
    b.build().unwrap()
}

/// A raw TCP connection to obmguard from `bind`.
async fn raw(p: &Proxy, bind: &str) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(bind.parse().unwrap(), 0)).unwrap();
    s.connect(p.addr).await.unwrap()
}

/// Read until the server closes (Ok) or the generous hang bound passes (Err).
async fn closed_by_server(s: &mut TcpStream) -> Result<(), &'static str> {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
            Err(_) => return Err("still open"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => continue,
        }
    }
}

fn header_errors(m: &str, p: &Proxy, kind: &str) -> f64 {
    metric(
        m,
        &format!(
            "obmguard_proxy_protocol_errors_total{{kind=\"{kind}\",listener=\"{}\"}}",
            p.addr
        ),
    )
}

fn refused_by_source(m: &str, p: &Proxy) -> f64 {
    metric(
        m,
        &format!(
            "obmguard_connections_refused_total{{listener=\"{}\",reason=\"source_ip\"}}",
            p.addr
        ),
    )
}

const KINDS: [&str; 7] = [
    "untrusted",
    "repeated",
    "missing",
    "malformed",
    "truncated",
    "timeout",
    "unsupported",
];

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_in_front_names_the_client_that_admission_route_ranges_and_the_audit_see() {
    for send in ["send-proxy-v2", "send-proxy"] {
        let w = World::new();
        let recv = Receiver::start(Behaviour::Ack).await.unwrap();
        let p = behind_a_load_balancer(&w, &recv, "").await;
        let Some(lb) = HaProxy::start(&w, send, p.addr).await else {
            return;
        };
        let body = notification(None);

        // 127.0.0.2 through HAProxy: its route admits it, the receiver hears of it.
        let r = post_once_via(&lb, &client(&w, "127.0.0.2", Vec::new()), "/a", &body).await;
        assert_eq!(r.map(|r| r.status).ok(), Some(200), "{send}");
        let got = recv.last().expect("delivered");
        assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.2"), "{send}");
        // Route /b admits only 127.0.0.3: the client HAProxy named is refused there.
        let r = post_once_via(&lb, &client(&w, "127.0.0.2", Vec::new()), "/b", &body).await;
        assert_eq!(r.map(|r| r.status).ok(), Some(403), "{send}");
        // 127.0.0.4 is in no route's ranges: refused before TLS.
        let r = post_once_via(&lb, &client(&w, "127.0.0.4", Vec::new()), "/a", &body).await;
        assert!(r.is_err(), "{send}: {:?}", r.map(|r| r.status));
        assert_eq!(recv.count(), 1, "{send}");

        let audit = p.audit_lines();
        assert_eq!(audit.len(), 2, "{send}: {audit:?}");
        for (line, reason) in audit.iter().zip([None, Some("source_ip")]) {
            assert_eq!(line["client_ip"], "127.0.0.2", "{send}: {line}");
            let peer = line["peer"].as_str().unwrap();
            assert!(
                peer.starts_with("127.0.0.1:"),
                "{send}: the load balancer: {line}"
            );
            assert_eq!(line["reason"].as_str(), reason, "{send}: {line}");
            assert!(line.get("vpce_id").is_none(), "{send}: {line}");
        }
        let m = p.metrics().await;
        assert_eq!(refused_by_source(&m, &p), 1.0, "{send}");
        for kind in KINDS {
            assert_eq!(header_errors(&m, &p, kind), 0.0, "{send}: {kind}");
        }
        assert!(
            p.logs_with("named by load balancer 127.0.0.1")
                .contains("source address 127.0.0.4 (named by load balancer 127.0.0.1)"),
            "{send}"
        );
    }
}

async fn post_once_via(
    lb: &HaProxy,
    c: &obmguard_testkit::client::TlsClientConfig,
    path: &str,
    body: &[u8],
) -> std::io::Result<obmguard_testkit::client::Response> {
    obmguard_testkit::client::post_once(lb.addr, c, path, body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_load_balancers_header_names_the_client_and_its_vpc_endpoint() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let p = behind_a_load_balancer(&w, &recv, "").await;
    let body = notification(None);
    let vpce = [(0x04, &b""[..]), (0xEA, b"\x01vpce-0a1b2c3d4e5f60718")];

    let h = v2(Some("127.0.0.2:50000"), &vpce);
    assert_eq!(
        p.status(&client(&w, "127.0.0.1", h), "/a", &body).await,
        200
    );
    // v1, and an IPv4-mapped IPv6 client, are the same client.
    let h = v1("127.0.0.2");
    assert_eq!(
        p.status(&client(&w, "127.0.0.1", h), "/a", &body).await,
        200
    );
    let h = v2(Some("[::ffff:127.0.0.2]:50000"), &[]);
    assert_eq!(
        p.status(&client(&w, "127.0.0.1", h), "/a", &body).await,
        200
    );
    // A client outside every range is refused before TLS, however it is named.
    for h in [v1("198.51.100.7"), v2(Some("198.51.100.7:1"), &vpce)] {
        let r = p.post(&client(&w, "127.0.0.1", h), "/a", &body).await;
        assert!(r.is_err(), "{:?}", r.map(|r| r.status));
    }
    // LOCAL: the load balancer's own connection, its client the load balancer, which no
    // route admits.
    let r = p
        .post(&client(&w, "127.0.0.1", v2(None, &[])), "/a", &body)
        .await;
    assert_eq!(r.map(|r| r.status).ok(), Some(403));
    // A health check that sends LOCAL and closes, or opens and closes: no error.
    for hello in [v2(None, &[]), Vec::new()] {
        let mut c = raw(&p, "127.0.0.1").await;
        c.write_all(&hello).await.unwrap();
        c.shutdown().await.unwrap();
        assert_eq!(closed_by_server(&mut c).await, Ok(()));
    }
    // The load balancer must send a header: TLS straight away is refused.
    let r = p
        .post(&client(&w, "127.0.0.1", Vec::new()), "/a", &body)
        .await;
    assert!(r.is_err(), "{:?}", r.map(|r| r.status));
    assert_eq!(recv.count(), 3);

    let audit = p.audit_lines();
    let clients: Vec<&str> = audit
        .iter()
        .map(|l| l["client_ip"].as_str().unwrap())
        .collect();
    assert_eq!(
        clients,
        ["127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.1"]
    );
    assert_eq!(audit[0]["vpce_id"], "vpce-0a1b2c3d4e5f60718");
    assert!(audit[1].get("vpce_id").is_none());
    assert_eq!(audit[3]["reason"], "source_ip");
    for line in &audit {
        assert!(
            line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{line}"
        );
    }
    let m = p.metrics().await;
    assert_eq!(refused_by_source(&m, &p), 2.0);
    assert_eq!(header_errors(&m, &p, "missing"), 1.0);
    for kind in KINDS.iter().filter(|k| **k != "missing") {
        assert_eq!(header_errors(&m, &p, kind), 0.0, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_header_from_anyone_else_or_a_second_one_is_never_believed() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let p = behind_a_load_balancer(&w, &recv, "").await;
    let body = notification(None);

    // 127.0.0.2 is not a load balancer: admitted as itself, without a header.
    assert_eq!(
        p.status(&client(&w, "127.0.0.2", Vec::new()), "/a", &body)
            .await,
        200
    );
    // Its header naming 127.0.0.3 (whom /b admits) is refused, not believed.
    let r = p
        .post(&client(&w, "127.0.0.2", v1("127.0.0.3")), "/b", &body)
        .await;
    assert!(r.is_err(), "{:?}", r.map(|r| r.status));
    let r = p
        .post(
            &client(&w, "127.0.0.2", v2(Some("127.0.0.3:1"), &[])),
            "/b",
            &body,
        )
        .await;
    assert!(r.is_err(), "{:?}", r.map(|r| r.status));
    // From outside every range, a header naming an admitted client changes nothing.
    let r = p
        .post(&client(&w, "127.0.0.4", v1("127.0.0.2")), "/a", &body)
        .await;
    assert!(r.is_err(), "{:?}", r.map(|r| r.status));
    // The load balancer's header, then a second one: refused.
    let two = [v2(Some("127.0.0.2:1"), &[]), v1("127.0.0.3")].concat();
    let r = p.post(&client(&w, "127.0.0.1", two), "/b", &body).await;
    assert!(r.is_err(), "{:?}", r.map(|r| r.status));
    // A header inside TLS is request bytes that are not HTTP.
    let mut c = p
        .connect(&client(&w, "127.0.0.1", v2(Some("127.0.0.2:1"), &[])))
        .await
        .unwrap();
    let mut inside = v1("127.0.0.3");
    inside.extend_from_slice(
        format!(
            "POST /b HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    inside.extend_from_slice(&body);
    let r = c.send_raw(&inside).await;
    assert!(
        r.as_ref().map_or(true, |r| r.status == 400),
        "{:?}",
        r.map(|r| r.status)
    );
    assert_eq!(recv.count(), 1, "only the first message was delivered");

    let audit = p.audit_lines();
    assert!(
        audit.iter().all(|l| l["client_ip"] != "127.0.0.3"),
        "{audit:?}"
    );
    assert!(audit[0]["peer"].as_str().unwrap().starts_with("127.0.0.2:"));
    assert_eq!(audit[0]["client_ip"], "127.0.0.2");
    let m = p.metrics().await;
    assert_eq!(header_errors(&m, &p, "untrusted"), 2.0);
    assert_eq!(header_errors(&m, &p, "repeated"), 1.0);
    assert_eq!(
        refused_by_source(&m, &p),
        1.0,
        "127.0.0.4, before any header"
    );
    assert!(p
        .logs_with("is not in server.proxy_protocol_from")
        .contains("so its header is not believed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_and_slow_headers_are_refused_and_counted_by_kind() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let p = behind_a_load_balancer(&w, &recv, "[timeouts]\nproxy_header_ms = 300\n").await;

    let good = v2(Some("127.0.0.2:1"), &[]);
    let mut udp = good.clone();
    udp[13] = 0x12;
    for (kind, bytes, close) in [
        (
            "malformed",
            b"PROXY TCP4 banana 127.0.0.1 1 443\r\n".to_vec(),
            false,
        ),
        ("malformed", with_leftover(&good), false),
        ("truncated", good[..20].to_vec(), true),
        ("truncated", b"PROXY TCP4 127.0.0.2".to_vec(), true),
        ("unsupported", udp, false),
    ] {
        let mut c = raw(&p, "127.0.0.1").await;
        c.write_all(&bytes).await.unwrap();
        if close {
            c.shutdown().await.unwrap();
        }
        assert_eq!(closed_by_server(&mut c).await, Ok(()), "{kind}");
    }

    // A header dripped a byte at a time is cut off at its deadline: it declares the longest
    // payload obmguard reads, which this drip would take a minute to send.
    let mut c = raw(&p, "127.0.0.1").await;
    let mut start = good[..14].to_vec();
    start.extend(1024u16.to_be_bytes());
    c.write_all(&start).await.unwrap();
    let (mut rd, mut wr) = c.into_split();
    let drip = tokio::spawn(async move {
        for _ in 0..1024 {
            if wr.write_all(&[0]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    });
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf)).await;
    assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "{end:?}");
    drip.abort();

    let m = p.metrics().await;
    assert_eq!(header_errors(&m, &p, "malformed"), 2.0);
    assert_eq!(header_errors(&m, &p, "truncated"), 2.0);
    assert_eq!(header_errors(&m, &p, "unsupported"), 1.0);
    assert_eq!(header_errors(&m, &p, "timeout"), 1.0);
    assert_eq!(
        metric(&m, "obmguard_timeouts_total{stage=\"proxy_header\"}"),
        1.0
    );
    assert!(p.audit_lines().is_empty());
    assert_eq!(recv.count(), 0);
}

/// `h` (a v2 header) with two more payload bytes, declared, that are not a whole TLV.
fn with_leftover(h: &[u8]) -> Vec<u8> {
    let mut v = h.to_vec();
    v.extend([0x04, 0x00]);
    let len = u16::from_be_bytes([v[14], v[15]]) + 2;
    v[14..16].copy_from_slice(&len.to_be_bytes());
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn the_per_source_cap_counts_the_client_a_load_balancer_names() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let p = behind_a_load_balancer(&w, &recv, "[limits]\nmax_connections_per_source = 1\n").await;
    // Every connection comes from the load balancer; the cap is per client it names.
    let held = p
        .connect(&client(&w, "127.0.0.1", v2(Some("127.0.0.2:1"), &[])))
        .await
        .unwrap();
    let again = p.connect(&client(&w, "127.0.0.1", v1("127.0.0.2"))).await;
    assert!(again.is_err(), "a second connection of 127.0.0.2");
    let mut other = p
        .connect(&client(&w, "127.0.0.1", v1("127.0.0.3")))
        .await
        .expect("127.0.0.3 has a slot of its own");
    let r = other
        .post_soap("/b", &notification(None), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    drop(held);
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!(
                "obmguard_connections_refused_total{{listener=\"{}\",reason=\"per_source_limit\"}}",
                p.addr
            )
        ),
        1.0
    );
}
