//! The proxy core: mTLS, source admission, routing, refusals, upstream failures.

use crate::harness::*;
use obmguard_testkit::client::TlsVersion;
use obmguard_testkit::messages::SESSION_ID;
use obmguard_testkit::receiver::{Behaviour, Receiver};

async fn basic(w: &World, recv: &Receiver, mode: &str) -> Proxy {
    let s = Setup::new(w).route(
        "a.toml",
        route("accounts", "/obm/accounts", &recv.url("/soap"), mode),
    );
    Proxy::start(w, &s).await
}

#[tokio::test(flavor = "multi_thread")]
async fn accepts_salesforce_certificate_and_relays_the_ack() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let p = basic(&w, &recv, "strip").await;
    let r = p
        .post(
            &w.salesforce(),
            "/obm/accounts",
            &notification(Some("00D5e000000AbCd!AQ4AQsecretvalue")),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.ack(), Some(true));
    let got = recv.last().expect("the receiver got the message");
    assert_eq!(recv.count(), 1);
    assert!(
        got.is_session_id_nil(),
        "strip makes the SessionId nil: {}",
        got.body_str()
    );
    assert!(!got.body_str().contains("AQ4AQsecretvalue"));
    assert_eq!(got.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        got.header("content-length")
            .map(|v| v.parse::<usize>().unwrap()),
        Some(got.body.len())
    );
    assert_eq!(got.path, "/soap");
    // Works over TLS 1.2 as well.
    let mut c12 = w.salesforce();
    c12.version = TlsVersion::Tls12;
    assert_eq!(
        p.status(&c12, "/obm/accounts", &notification(None)).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_handshakes_without_an_acceptable_client_certificate() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let p = basic(&w, &recv, "strip").await;
    let body = notification(None);
    for (who, id) in [
        ("no certificate", None),
        ("unknown CA", Some(&w.pki.rogue)),
        ("expired", Some(&w.pki.expired)),
        ("not yet valid", Some(&w.pki.not_yet_valid)),
        ("unpinned self-signed", Some(&w.pki.self_signed_a)),
        ("two common names", Some(&w.pki.two_cns)),
    ] {
        let r = p.post(&w.client(id), "/obm/accounts", &body).await;
        assert!(
            r.is_err(),
            "{who}: expected the handshake to fail, got {:?}",
            r.map(|r| r.status)
        );
    }
    assert_eq!(recv.count(), 0, "nothing reaches the receiver");
    let m = p.metrics().await;
    assert!(cert_rejections(&m, "unknown_issuer") >= 1.0, "{m}");
    assert!(cert_rejections(&m, "expired") >= 1.0);
    assert!(cert_rejections(&m, "not_yet_valid") >= 1.0);
    assert!(cert_rejections(&m, "ambiguous_subject") >= 1.0);
    let listener = format!("{}", p.addr);
    assert!(metric(&m, &format!("obmguard_tls_handshake_failures_total{{kind=\"no_client_cert\",listener=\"{listener}\"}}")) >= 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_self_signed_certificate_is_accepted_and_an_unpinned_one_is_not() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let mut s = Setup::new(&w).route(
        "a.toml",
        route("accounts", "/obm/accounts", &recv.url("/soap"), "strip"),
    );
    // Pins only (no CA): the staged-rotation shape with two pins, one of them unknown.
    s.client_cert = format!(
        "pin_sha256 = [{:?}, {:?}]\n",
        w.pki.self_signed_a.sha256,
        "ab".repeat(32)
    );
    let p = Proxy::start(&w, &s).await;
    let ok = p
        .post(
            &w.client(Some(&w.pki.self_signed_a)),
            "/obm/accounts",
            &notification(None),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert!(p
        .post(
            &w.client(Some(&w.pki.self_signed_b)),
            "/obm/accounts",
            &notification(None)
        )
        .await
        .is_err());
    assert!(
        p.post(&w.salesforce(), "/obm/accounts", &notification(None))
            .await
            .is_err(),
        "CA-signed but no CA configured"
    );
    assert_eq!(recv.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn route_identity_rule_refuses_the_wrong_common_name() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let r = route("accounts", "/obm/accounts", &recv.url("/soap"), "strip")
        + "\n[identity]\nsubject_cn = [\"proxy.salesforce.com\"]\n";
    let p = Proxy::start(&w, &Setup::new(&w).route("a.toml", r)).await;
    let denied = p
        .post(
            &w.client(Some(&w.pki.other)),
            "/obm/accounts",
            &notification(None),
        )
        .await
        .unwrap();
    assert_eq!(denied.status, 403);
    assert!(
        denied.fault_string().unwrap().contains("common name"),
        "{}",
        denied.body_str()
    );
    assert!(denied.body_str().contains("soapenv:Client"));
    let ok = p
        .post(&w.salesforce(), "/obm/accounts", &notification(None))
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    assert_eq!(recv.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn source_ranges_are_enforced_before_tls_and_per_route() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let a = route("a", "/a", &recv.url("/a"), "strip") + "\n[source]\nallow = [\"127.0.0.1/32\"]\n";
    let b = route("b", "/b", &recv.url("/b"), "strip") + "\n[source]\nallow = [\"127.0.0.2/32\"]\n";
    let p = Proxy::start(&w, &Setup::new(&w).route("a.toml", a).route("b.toml", b)).await;
    let mut from2 = w.salesforce();
    from2.bind = Some("127.0.0.2".parse().unwrap());
    let mut from3 = w.salesforce();
    from3.bind = Some("127.0.0.3".parse().unwrap());
    // 127.0.0.2 may use /b but not /a.
    assert_eq!(p.status(&from2, "/b", &notification(None)).await, 200);
    let denied = p.post(&from2, "/a", &notification(None)).await.unwrap();
    assert_eq!(denied.status, 403);
    assert!(denied.fault_string().unwrap().contains("127.0.0.2"));
    // 127.0.0.3 is in no route's ranges: refused before the handshake.
    assert!(p.post(&from3, "/b", &notification(None)).await.is_err());
    assert_eq!(recv.count(), 1);
    let m = p.metrics().await;
    assert!(
        metric(
            &m,
            &format!(
                "obmguard_connections_refused_total{{listener=\"{}\",reason=\"source_ip\"}}",
                p.addr
            )
        ) >= 1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "obmguard_rejections_total{reason=\"source_ip\",route=\"a\"}"
        ),
        1.0
    );
}

async fn spoof(c: &mut obmguard_testkit::client::Connection) -> obmguard_testkit::client::Response {
    let body = notification(None);
    let head = format!(
        "POST /sf HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nX-Forwarded-For: 203.0.113.5\r\nX-Real-IP: 203.0.113.5\r\nForwarded: for=203.0.113.5\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut raw = head.into_bytes();
    raw.extend_from_slice(&body);
    c.send_raw(&raw).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let sf = route("sf", "/sf", &recv.url("/sf"), "strip")
        + "\n[source]\nallow = [\"203.0.113.0/24\"]\n";
    let local = route("local", "/local", &recv.url("/local"), "strip");
    // Untrusted peer: the headers are ignored.
    let s = Setup::new(&w)
        .route("sf.toml", sf.clone())
        .route("local.toml", local.clone());
    let p = Proxy::start(&w, &s).await;
    let mut c = p.connect(&w.salesforce()).await.unwrap();
    assert_eq!(spoof(&mut c).await.status, 403);
    assert_eq!(recv.count(), 0);
    drop(p);
    // Trusted proxy: the forwarded address decides, and the receiver sees it.
    let w2 = World::new();
    let mut s = Setup::new(&w2)
        .route("sf.toml", sf)
        .route("local.toml", local);
    s.source = "allow = [\"127.0.0.1/32\"]\ntrusted_proxies = [\"127.0.0.1/32\"]\n".into();
    let p = Proxy::start(&w2, &s).await;
    let mut c = p.connect(&w2.salesforce()).await.unwrap();
    assert_eq!(spoof(&mut c).await.status, 200);
    assert_eq!(
        recv.last().unwrap().header("x-forwarded-for"),
        Some("203.0.113.5")
    );
    // The audit record and the log line name the forwarded client, beside the TCP peer.
    let audit = p.audit_lines();
    let line = audit.last().unwrap();
    assert_eq!(line["client_ip"], "203.0.113.5", "{line}");
    assert!(
        line["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
    let logs = p.logs();
    let request = logs.lines().rfind(|l| l.contains(" request ")).unwrap();
    assert!(request.contains("client_ip=203.0.113.5"), "{request}");
    assert!(request.contains("peer=127.0.0.1:"), "{request}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_path_ambiguous_length_and_wrong_method_are_refused_with_faults() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let p = basic(&w, &recv, "strip").await;
    let r = p
        .post(&w.salesforce(), "/nope", &notification(None))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.fault_string().unwrap().contains("no route"));
    let body = notification(None);
    let mut raw = format!(
        "POST /obm/accounts HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        body.len(),
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(&body);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    let mut c = p.connect(&w.salesforce()).await.unwrap();
    let r = c.send_raw(&raw).await.unwrap();
    assert_eq!(r.status, 400);
    assert!(r
        .fault_string()
        .unwrap()
        .contains("Content-Length and Transfer-Encoding"));
    let mut c = p.connect(&w.salesforce()).await.unwrap();
    let r = c
        .send_raw(b"GET /obm/accounts HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(recv.count(), 0, "nothing was forwarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn receiver_down_is_502_and_receiver_timeout_is_504() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Hang).await.unwrap();
    let down = format!("http://127.0.0.1:{}/soap", free_port());
    let slow = route("slow", "/slow", &recv.url("/soap"), "strip")
        .replace("upstream_timeout_ms = 5000", "upstream_timeout_ms = 500");
    let s = Setup::new(&w)
        .route("down.toml", route("down", "/down", &down, "strip"))
        .route("slow.toml", slow);
    let p = Proxy::start(&w, &s).await;
    let r = p
        .post(&w.salesforce(), "/down", &notification(None))
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert!(r.body_str().contains("soapenv:Server"));
    assert!(r.fault_string().unwrap().contains("could not be reached"));
    let r = p
        .post(&w.salesforce(), "/slow", &notification(None))
        .await
        .unwrap();
    assert_eq!(r.status, 504);
    assert_ne!(r.ack(), Some(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let p = basic(&w, &recv, "strip").await;
    assert_eq!(p.get("/healthz").await.unwrap().0, 200);
    assert_eq!(p.get("/readyz").await.unwrap().0, 200);
    assert_eq!(p.get("/nope").await.unwrap().0, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn https_upstream_is_verified_against_the_policy_ca() {
    let w = World::new();
    let tls = obmguard_testkit::pki::server_config(&w.pki.server, None).unwrap();
    let recv = Receiver::start_tls(Behaviour::Ack, tls).await.unwrap();
    let url = recv.url("/soap");
    assert!(url.starts_with("https://"));
    let trusted = route("trusted", "/trusted", &url, "strip").replacen(
        "\n[message]",
        &format!(
            "upstream_ca = {:?}\n\n[message]",
            w.pki.server_ca.display().to_string()
        ),
        1,
    );
    let unknown = route("unknown", "/unknown", &url, "strip");
    let p = Proxy::start(
        &w,
        &Setup::new(&w)
            .route("t.toml", trusted)
            .route("u.toml", unknown),
    )
    .await;
    assert_eq!(
        p.status(&w.salesforce(), "/trusted", &notification(None))
            .await,
        200
    );
    assert_eq!(recv.count(), 1);
    // Against the system roots our test CA is unknown: refused, never forwarded.
    let r = p
        .post(&w.salesforce(), "/unknown", &notification(None))
        .await
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(recv.count(), 1);
}

/// With `upstream_keepalive`, messages reuse one receiver connection (obmguard's own pool,
/// shown by `obmguard_upstream_idle_connections`); without it, each message has its own. The
/// client's kept-alive connection idles between messages (obmguard waits for the next
/// request's first byte itself) and still carries each one whole.
#[tokio::test(flavor = "multi_thread")]
async fn receiver_connections_are_reused_only_where_keepalive_is_on() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let pooled = route("pooled", "/pooled", &recv.url("/pooled"), "strip").replacen(
        "\n\n[message]",
        "\nupstream_keepalive = true\n\n[message]",
        1,
    );
    let s = Setup::new(&w).route("pooled.toml", pooled).route(
        "single.toml",
        route("single", "/single", &recv.url("/single"), "strip"),
    );
    let p = Proxy::start(&w, &s).await;
    let mut c = p.connect(&w.salesforce()).await.unwrap();
    for path in ["/pooled", "/single"] {
        for i in 0..4 {
            if i == 2 {
                // An idle pause on the client's connection between two messages.
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            let r = c
                .post_soap(path, &notification(Some(SESSION_ID)), &[])
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{path} #{i}: {}", r.body_str());
        }
    }
    let peers = |path: &str| {
        let mut ports: Vec<u16> = recv
            .requests()
            .iter()
            .filter(|r| r.path == path)
            .map(|r| r.peer.port())
            .collect();
        assert_eq!(ports.len(), 4, "{path}: every message arrived once");
        assert!(recv
            .requests()
            .iter()
            .all(|r| !String::from_utf8_lossy(&r.body).contains(SESSION_ID)));
        ports.dedup();
        ports.len()
    };
    assert_eq!(
        peers("/pooled"),
        1,
        "one receiver connection for four messages"
    );
    assert_eq!(
        peers("/single"),
        4,
        "a connection per message without keep-alive"
    );
    let m = p.metrics().await;
    assert_eq!(metric(&m, "obmguard_upstream_idle_connections"), 1.0, "{m}");
    assert_eq!(p.audit_lines().len(), 8);
}
