//! Hostile and broken peers: slow clients over real TLS, connection and in-flight caps,
//! hanging or broken receivers and token endpoints, an unwritable audit file, reloads under
//! traffic, and a graceful drain on SIGTERM. Each test asserts what Salesforce would see and
//! what reached the receiver. Bounds below only detect hangs; nothing here measures speed.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::ops::wait_for;
use obmguard_testkit::messages::SESSION_ID;
use obmguard_testkit::receiver::{Behaviour, Receiver};
use obmguard_testkit::token_server::{Mode, TokenServer, TokenServerConfig};

/// Read until the peer closes (Ok) or the generous hang bound passes (Err).
async fn closed_by_peer(s: &mut (impl AsyncReadExt + Unpin)) -> Result<(), &'static str> {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Err(_) => return Err("still open"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// One strip route `/a`; `top` adds top-level route keys, `extra` tables to obmguard.toml.
async fn proxy_with(w: &World, recv: &Receiver, extra: &str, top: &str) -> Proxy {
    let policy = route("a", "/a", &recv.url("/a"), "strip").replacen(
        "\n[message]",
        &format!("{top}\n[message]"),
        1,
    );
    let mut s = Setup::new(w).route("a.toml", policy);
    s.extra = extra.into();
    Proxy::start(w, &s).await
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_clients_are_cut_off_and_counted() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let p = proxy_with(
        &w,
        &recv,
        "[timeouts]\ntls_handshake_ms = 300\nrequest_head_ms = 300\nrequest_body_ms = 400\n",
        "",
    )
    .await;

    // Never a ClientHello.
    let mut idle = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    assert_eq!(closed_by_peer(&mut idle).await, Ok(()));

    // A head dripped one byte at a time.
    let mut c = p.connect(&w.salesforce()).await.unwrap();
    let head = b"POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nContent-Length: 10\r\n\r\n";
    let dripped = c.write_slowly(head, 1, Duration::from_millis(60)).await;
    let answer = c.read_response().await;
    assert!(
        dripped.is_err() || answer.is_err(),
        "a dripped head gets no answer: {:?}",
        answer.map(|r| r.status)
    );

    // A body dripped past its deadline: 408 and nothing forwarded.
    let body = notification(Some(SESSION_ID));
    let mut c = p.connect(&w.salesforce()).await.unwrap();
    let head = format!("POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n", body.len());
    c.write_slowly(head.as_bytes(), head.len(), Duration::ZERO)
        .await
        .unwrap();
    let _ = c
        .write_slowly(&body[..40], 4, Duration::from_millis(100))
        .await;
    let r = c.read_response().await.unwrap();
    assert_eq!(r.status, 408, "{}", r.body_str());
    assert_eq!(recv.count(), 0);

    let m = p.metrics().await;
    for stage in ["handshake", "request_head", "request_body"] {
        assert!(
            metric(&m, &format!("obmguard_timeouts_total{{stage=\"{stage}\"}}")) >= 1.0,
            "{stage}\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_and_in_flight_caps_refuse_the_excess() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::SlowAck(Duration::from_millis(1500)))
        .await
        .unwrap();
    let p = proxy_with(
        &w,
        &recv,
        "[limits]\nmax_connections_per_source = 2\n",
        "max_inflight = 1\n",
    )
    .await;
    let mut c1 = p.connect(&w.salesforce()).await.unwrap();
    let mut c2 = p.connect(&w.salesforce()).await.unwrap();
    // Third connection from the same address: closed before TLS.
    let third = p.post(&w.salesforce(), "/a", &notification(None)).await;
    assert!(third.is_err());
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!(
                "obmguard_connections_refused_total{{listener=\"{}\",reason=\"per_source_limit\"}}",
                p.addr
            )
        ),
        1.0,
        "{m}"
    );

    // One message in flight on a route with max_inflight = 1: the next gets 503, retryable.
    let body = notification(None);
    let b1 = body.clone();
    let first = tokio::spawn(async move { c1.post_soap("/a", &b1, &[]).await.unwrap().status });
    while recv.count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = c2.post_soap("/a", &body, &[]).await.unwrap();
    assert_eq!(r.status, 503);
    assert!(
        r.body_str().contains("soapenv:Server")
            && r.fault_string()
                .unwrap()
                .contains("too many messages in flight")
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(recv.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_slower_than_the_route_timeout_gets_504_never_an_ack() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::SlowAck(Duration::from_secs(3)))
        .await
        .unwrap();
    let mut s = Setup::new(&w).route(
        "a.toml",
        route("a", "/a", &recv.url("/a"), "strip")
            .replace("upstream_timeout_ms = 5000", "upstream_timeout_ms = 400"),
    );
    s.extra = String::new();
    let p = Proxy::start(&w, &s).await;
    let r = p
        .post(&w.salesforce(), "/a", &notification(None))
        .await
        .unwrap();
    assert_eq!(r.status, 504);
    assert_ne!(r.ack(), Some(true));
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, "obmguard_timeouts_total{stage=\"upstream\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "obmguard_requests_total{outcome=\"upstream_error\",route=\"a\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_token_endpoint_slows_no_other_route() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let tokens = TokenServer::start(TokenServerConfig::client_credentials(
        "id",
        "secret-value-123",
    ))
    .await
    .unwrap();
    tokens.set_mode(Mode::Hang);
    write(&w.path("secret"), "secret-value-123");
    let inject = route("inject", "/inject", &recv.url("/i"), "inject")
        + &format!(
            "\n[oauth]\nflow = \"client_credentials\"\ntoken_url = \"{}\"\nclient_id = {{ value = \"id\" }}\nclient_secret = {{ file = {:?} }}\ntimeout_ms = 5000\n",
            tokens.url(),
            w.path("secret").display().to_string()
        );
    let s = Setup::new(&w).route("inject.toml", inject).route(
        "plain.toml",
        route("plain", "/plain", &recv.url("/p"), "strip"),
    );
    let p = Proxy::start(&w, &s).await;
    let (addr, client, body) = (p.addr, w.salesforce(), notification(Some(SESSION_ID)));
    let stuck = tokio::spawn(async move {
        obmguard_testkit::client::post_once(addr, &client, "/inject", &body)
            .await
            .unwrap()
            .status
    });
    while tokens.requests() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        p.status(&w.salesforce(), "/plain", &notification(None))
            .await,
        200
    );
    assert!(
        !stuck.is_finished(),
        "the plain route answered while the inject route still waits for its token"
    );
    assert_eq!(stuck.await.unwrap(), 503);
    assert_eq!(recv.count(), 1, "only the plain message was forwarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_audit_file_is_reported_loudly_and_messages_still_get_their_real_answer() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    // Write the usual configuration, then point the audit trail at /dev/full, where every
    // write fails with ENOSPC.
    drop(proxy_with(&w, &recv, "", "").await);
    let text = std::fs::read_to_string(w.path("obmguard.toml")).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("audit_log") {
                "audit_log = \"/dev/full\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    write(&w.path("obmguard.toml"), &text.join("\n"));
    let p = start_existing(&w).await;
    let r = p
        .post(&w.salesforce(), "/a", &notification(None))
        .await
        .unwrap();
    assert_eq!(
        r.status, 200,
        "fail open for the audit trail: the receiver accepted the message"
    );
    // The writer thread fails a moment after the answer.
    let mut m = p.metrics().await;
    for _ in 0..100 {
        if metric(&m, "obmguard_audit_write_failures_total") > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        m = p.metrics().await;
    }
    assert_eq!(
        metric(&m, "obmguard_audit_write_failures_total"),
        1.0,
        "{m}"
    );
    let logs = p.logs_with("audit");
    assert!(logs.to_lowercase().contains("audit"), "{logs}");
}

/// Start obmguard on the configuration already written in `w`.
async fn start_existing(w: &World) -> Proxy {
    Proxy::start_config(w, &w.path("obmguard.toml")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_under_traffic_lose_nothing() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let policy = route("a", "/a", &recv.url("/a"), "strip");
    let p = Proxy::start(&w, &Setup::new(&w).route("a.toml", policy.clone())).await;
    let (addr, client) = (p.addr, w.salesforce());
    let traffic = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for i in 0..40 {
            let body = notification(if i % 2 == 0 { Some(SESSION_ID) } else { None });
            statuses.push(
                obmguard_testkit::client::post_once(addr, &client, "/a", &body)
                    .await
                    .unwrap()
                    .status,
            );
        }
        statuses
    });
    for i in 0..5 {
        let mode = if i % 2 == 0 { "audit" } else { "strip" };
        write(
            &w.path("policies/a.toml"),
            &policy.replace("\"strip\"", &format!("\"{mode}\"")),
        );
        wait_for(&p, "obmguard_policy_generation", 2.0 + i as f64).await;
    }
    let statuses = traffic.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(recv.count(), 40);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_messages_then_exits_cleanly() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::SlowAck(Duration::from_millis(1500)))
        .await
        .unwrap();
    let mut p = Proxy::start(
        &w,
        &Setup::new(&w).route("a.toml", route("a", "/a", &recv.url("/a"), "strip")),
    )
    .await;
    let (addr, client, body) = (p.addr, w.salesforce(), notification(None));
    let inflight = tokio::spawn(async move {
        obmguard_testkit::client::post_once(addr, &client, "/a", &body).await
    });
    while recv.count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Draining: no new connections are served.
    let late = p.post(&w.salesforce(), "/a", &notification(None)).await;
    assert!(
        late.is_err() || late.as_ref().unwrap().status != 200,
        "a connection after SIGTERM is not served"
    );
    let r = inflight
        .await
        .unwrap()
        .expect("the in-flight message gets its answer");
    assert_eq!(r.status, 200);
    assert_eq!(r.ack(), Some(true));
    assert_eq!(p.wait(Duration::from_secs(15)), Some(0), "{}", p.logs());
    assert!(p.logs_with("drained").contains("drained"));
    assert_eq!(recv.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_listener_is_plain_http_and_unaffected_by_source_rules() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let p = proxy_with(&w, &recv, "", "").await;
    let mut s = tokio::net::TcpStream::connect(p.admin).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn graceful_upgrade_hands_the_listeners_to_a_new_process() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let mut old = proxy_with(&w, &recv, "[timeouts]\ndrain_ms = 1000\n", "").await;
    assert_eq!(
        old.status(&w.salesforce(), "/a", &notification(None)).await,
        200
    );
    // The new process waits on the upgrade socket for the old one's listeners; SIGQUIT makes
    // the old one hand them over.
    let cfg = w.path("obmguard.toml");
    let (new_proxy, ()) = tokio::join!(Proxy::start_config_with(&w, &cfg, &["--upgrade"]), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        old.signal("QUIT");
    });
    assert_eq!(
        old.wait(Duration::from_secs(20)),
        Some(0),
        "the old process exits cleanly:\n{}",
        old.logs()
    );
    // Only the new process is left, on the same address.
    let r = new_proxy
        .post(&w.salesforce(), "/a", &notification(None))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", new_proxy.logs());
    assert_eq!(recv.count(), 2);
}
