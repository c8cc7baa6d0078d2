//! The pipeline in process: a real configuration (loaded from files, with a generated PKI),
//! and fakes for what lies outside (receiver, body, clock, token provider). Each refusal, each
//! session mode and each receiver outcome, without starting the binary.

#![allow(clippy::type_complexity)] // the case tables

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora_http::RequestHeader;

use super::*;
use crate::accept::Origin;
use crate::identity::PeerIdentity;
use crate::metrics::Metrics;
use crate::record::Facts;
use crate::runtime::Generation;
use crate::secret::Secret;
use crate::soap::SessionIdState;
use crate::token::{Token, TokenError, TokenProvider};
use crate::upstream::Report;
use obmguard_testkit::messages::{Sample, SESSION_ID};
use obmguard_testkit::pki::Pki;

const NOW: i64 = 1_900_000_000;

/// A receiver that records what it got and answers as scripted.
#[derive(Default)]
struct FakeReceiver {
    got: Mutex<Vec<(Vec<u8>, Option<String>)>>,
    answer: Mutex<Option<Failure>>,
}

impl FakeReceiver {
    fn answering(f: Failure) -> Self {
        FakeReceiver {
            answer: Mutex::new(Some(f)),
            ..Default::default()
        }
    }

    fn bodies(&self) -> Vec<Vec<u8>> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(b, _)| b.clone())
            .collect()
    }
}

#[async_trait]
impl Deliver for FakeReceiver {
    async fn deliver(&self, d: &Delivery<'_>) -> (Result<(), Failure>, Report) {
        self.got
            .lock()
            .unwrap()
            .push((d.body.to_vec(), d.bearer.map(str::to_owned)));
        let result = match self.answer.lock().unwrap().take() {
            None => Ok(()),
            Some(f) => Err(f),
        };
        let report = Report {
            status: Some(if result.is_ok() { 200 } else { 500 }),
            ack: Some(result.is_ok()),
            ..Report::default()
        };
        (result, report)
    }
}

struct FixedClock(i64);

impl Clock for FixedClock {
    fn unix_now(&self) -> i64 {
        self.0
    }
}

enum FakeBody {
    Bytes(Vec<u8>),
    Fails(fn() -> Refusal),
}

/// A request made of a head and a body; its raw head never names two lengths.
struct FakeRequest {
    head: RequestHeader,
    body: FakeBody,
}

#[async_trait]
impl Request for FakeRequest {
    fn head(&self) -> &RequestHeader {
        &self.head
    }

    fn raw_length_conflict(&self) -> bool {
        false
    }

    async fn read_body(&mut self, max: usize, _deadline: Duration) -> Result<Bytes, Refusal> {
        match &self.body {
            FakeBody::Bytes(b) if b.len() > max => Err(Refusal::BodyTooLarge(max)),
            FakeBody::Bytes(b) => Ok(Bytes::from(b.clone())),
            FakeBody::Fails(f) => Err(f()),
        }
    }
}

const TOKEN: &str = "00D5e000000AbCd!AQfreshTokenValue0123456789abcdef";

/// A token provider that hands out one token, or fails.
struct FakeTokens {
    fail: bool,
    invalidated: AtomicUsize,
}

#[async_trait]
impl TokenProvider for FakeTokens {
    async fn token(&self) -> Result<Arc<Token>, TokenError> {
        if self.fail {
            return Err(TokenError::Timeout {
                after: Duration::from_secs(1),
            });
        }
        Ok(Arc::new(Token {
            access_token: Secret::new(TOKEN),
            instance_url: url::Url::parse("https://acme.my.salesforce.com/").unwrap(),
            issued_at_ms: None,
            expires_at: Instant::now() + Duration::from_secs(3600),
        }))
    }

    fn invalidate(&self, _stale: &Token) {
        self.invalidated.fetch_add(1, Ordering::SeqCst);
    }
}

struct World {
    _dir: tempfile::TempDir,
    gen: Generation,
    tokens: Arc<FakeTokens>,
    total: Arc<AtomicUsize>,
    store: Arc<dyn crate::store::Store>,
    queued: tokio::sync::Notify,
}

fn route(name: &str, mode: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\npath = \"/{name}\"\nupstream = \"http://127.0.0.1:9/{name}\"\n{extra}\n[message]\norganization_ids = [\"{}\"]\nsession_id = \"{mode}\"\n",
        obmguard_testkit::messages::ORG_ID
    )
}

fn world(token_fails: bool) -> World {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki")).unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(dir.path().join("secret"), "s3cret").unwrap();
    let oauth = format!(
        "\n[oauth]\nflow = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/token\"\nclient_id = {{ value = \"cid\" }}\nclient_secret = {{ file = {:?} }}\n",
        dir.path().join("secret").display().to_string()
    );
    let routes = [
        ("strip", route("strip", "strip", "")),
        ("remove", route("remove", "remove", "")),
        ("reject", route("reject", "reject", "")),
        ("audit", route("audit", "audit", "")),
        ("inject", route("inject", "inject", "") + &oauth),
        (
            "verify",
            route("verify", "inject", "")
                + &oauth
                + "rewrite_urls = false\n",
        ),
        (
            "narrow",
            route(
                "narrow",
                "strip",
                "max_inflight = 1\n[identity]\nsubject_cn = [\"someone.else\"]\n[source]\nallow = [\"10.0.0.0/8\"]\n",
            ),
        ),
        (
            "queued",
            route("queued", "strip", "[delivery]\nmode = \"queued\"\nmax_messages = 2\n"),
        ),
        (
            "qinject",
            route("qinject", "inject", "[delivery]\nmode = \"queued\"\n") + &oauth,
        ),
        (
            "dedupe",
            route("dedupe", "strip", "[delivery]\ndedupe = true\n"),
        ),
    ];
    for (name, text) in &routes {
        std::fs::write(policies.join(format!("{name}.toml")), text).unwrap();
    }
    let config = dir.path().join("obmguard.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:8443\"]\ntls_cert = {:?}\ntls_key = {:?}\npolicies = \"policies\"\n\n[client_cert]\nca_bundle = {:?}\n\n[source]\nallow = [\"127.0.0.1/32\"]\n\n[store]\npath = \"store\"\n",
            pki.server.cert.display().to_string(),
            pki.server.key.display().to_string(),
            pki.client_ca.display().to_string(),
        ),
    )
    .unwrap();
    let config = crate::config::load(&config).unwrap_or_else(|p| panic!("{p:?}"));
    let store = crate::store::open(config.store.as_ref().unwrap()).unwrap();
    let tokens = Arc::new(FakeTokens {
        fail: token_fails,
        invalidated: AtomicUsize::new(0),
    });
    let t = tokens.clone();
    let metrics = Metrics::new().unwrap();
    let gen = Generation::build(1, config, None, &move |_| t.clone(), &metrics);
    World {
        _dir: dir,
        gen,
        tokens,
        total: Arc::new(AtomicUsize::new(0)),
        store,
        queued: tokio::sync::Notify::new(),
    }
}

fn identity(not_after: i64) -> Arc<PeerIdentity> {
    Arc::new(PeerIdentity {
        sha256: [1; 32],
        sha256_hex: "01".repeat(32),
        spki_sha256: [2; 32],
        subject: "CN=proxy.salesforce.com".into(),
        common_name: Some("proxy.salesforce.com".into()),
        not_before: NOW - 86_400,
        not_after,
    })
}

fn head(method: &str, path: &str, content_type: &str, length: Option<usize>) -> RequestHeader {
    let mut h = RequestHeader::build(method, path.as_bytes(), None).unwrap();
    h.insert_header("Content-Type", content_type).unwrap();
    if let Some(n) = length {
        h.insert_header("Content-Length", n.to_string()).unwrap();
    }
    h
}

struct Outcome {
    result: Result<Accepted, Rejection>,
    facts: Facts,
}

impl Outcome {
    fn status(&self) -> u16 {
        match &self.result {
            Ok(_) => 200,
            Err(r) => r.answer().status,
        }
    }

    fn reason(&self) -> &'static str {
        self.result.as_ref().err().map_or("-", Rejection::reason)
    }
}

async fn send_with(
    w: &World,
    recv: &FakeReceiver,
    req: RequestHeader,
    body: FakeBody,
    peer: &str,
    ident: Arc<PeerIdentity>,
) -> Outcome {
    let peer: SocketAddr = peer.parse().unwrap();
    send_from(w, recv, req, body, Origin::direct(peer), ident).await
}

async fn send_from(
    w: &World,
    recv: &FakeReceiver,
    req: RequestHeader,
    body: FakeBody,
    origin: Origin,
    ident: Arc<PeerIdentity>,
) -> Outcome {
    let out = Outside {
        receiver: recv,
        clock: &FixedClock(NOW),
        inflight_total: &w.total,
        store: Some(w.store.as_ref()),
        queued: &w.queued,
    };
    let mut facts = Facts::new("test".into(), origin, ident);
    let mut request = FakeRequest { head: req, body };
    let result = run(&out, &w.gen, &mut request, &mut facts).await;
    Outcome { result, facts }
}

async fn send(w: &World, recv: &FakeReceiver, path: &str, body: Vec<u8>) -> Outcome {
    let req = head("POST", path, "text/xml; charset=utf-8", Some(body.len()));
    send_with(
        w,
        recv,
        req,
        FakeBody::Bytes(body),
        "127.0.0.1:5000",
        identity(NOW + 86_400),
    )
    .await
}

fn with_value() -> Vec<u8> {
    Sample::default().body()
}

fn nil() -> Vec<u8> {
    Sample {
        session_id: None,
        ..Sample::default()
    }
    .body()
}

fn session_state(body: &[u8]) -> SessionIdState {
    crate::soap::parse(body, &Default::default())
        .unwrap()
        .session_id
}

#[tokio::test]
async fn each_session_mode_forwards_what_its_policy_says() {
    let w = world(false);
    // (route, body, expected state at the receiver, session action)
    let cases: [(&str, Vec<u8>, Option<SessionIdState>, Option<&str>); 10] = [
        (
            "/strip",
            with_value(),
            Some(SessionIdState::Nil),
            Some("stripped"),
        ),
        ("/strip", nil(), Some(SessionIdState::Nil), None),
        (
            "/remove",
            with_value(),
            Some(SessionIdState::Absent),
            Some("removed"),
        ),
        (
            "/remove",
            nil(),
            Some(SessionIdState::Absent),
            Some("removed"),
        ),
        ("/reject", with_value(), None, None),
        ("/reject", nil(), Some(SessionIdState::Nil), None),
        (
            "/audit",
            with_value(),
            Some(SessionIdState::Value),
            Some("audited"),
        ),
        ("/audit", nil(), Some(SessionIdState::Nil), None),
        (
            "/inject",
            with_value(),
            Some(SessionIdState::Value),
            Some("injected"),
        ),
        (
            "/inject",
            nil(),
            Some(SessionIdState::Value),
            Some("injected"),
        ),
    ];
    for (path, body, want, action) in cases {
        let recv = FakeReceiver::default();
        let o = send(&w, &recv, path, body).await;
        let got = recv.bodies();
        match want {
            None => {
                assert_eq!(o.status(), 403, "{path}");
                assert_eq!(o.reason(), "session_id_rejected");
                assert!(got.is_empty(), "{path}: forwarded");
            }
            Some(state) => {
                assert!(o.result.is_ok(), "{path}: {:?}", o.result);
                assert_eq!(session_state(&got[0]), state, "{path}");
                assert_eq!(o.facts.plan.unwrap().action, action, "{path}");
                let text = String::from_utf8_lossy(&got[0]).into_owned();
                assert_eq!(text.contains(TOKEN), path == "/inject", "{path}");
                assert_eq!(
                    text.contains(SESSION_ID),
                    path == "/audit" && action.is_some(),
                    "{path}"
                );
            }
        }
    }
}

#[tokio::test]
async fn every_refusal_before_the_receiver_forwards_nothing() {
    let w = world(false);
    let ok_ident = identity(NOW + 86_400);
    let body = nil();
    let len = Some(body.len());
    let post = |p: &str| head("POST", p, "text/xml", len);
    let bad_org = Sample {
        org_id: "00D5e000000XyZw".into(),
        session_id: None,
        ..Sample::default()
    }
    .body();
    let cases: Vec<(
        &str,
        RequestHeader,
        FakeBody,
        &str,
        Arc<PeerIdentity>,
        u16,
        &str,
    )> = vec![
        (
            "path",
            post("/nowhere"),
            FakeBody::Bytes(body.clone()),
            "127.0.0.1:1",
            ok_ident.clone(),
            404,
            "unknown_path",
        ),
        (
            "source",
            post("/strip"),
            FakeBody::Bytes(body.clone()),
            "127.0.0.2:1",
            ok_ident.clone(),
            403,
            "source_ip",
        ),
        (
            "route source",
            post("/narrow"),
            FakeBody::Bytes(body.clone()),
            "127.0.0.1:1",
            ok_ident.clone(),
            403,
            "source_ip",
        ),
        (
            "expired",
            post("/strip"),
            FakeBody::Bytes(body.clone()),
            "127.0.0.1:1",
            identity(NOW - 1),
            403,
            "identity",
        ),
        (
            "method",
            head("GET", "/strip", "text/xml", None),
            FakeBody::Bytes(vec![]),
            "127.0.0.1:1",
            ok_ident.clone(),
            405,
            "method",
        ),
        (
            "content type",
            head("POST", "/strip", "application/json", len),
            FakeBody::Bytes(body.clone()),
            "127.0.0.1:1",
            ok_ident.clone(),
            415,
            "content_type",
        ),
        (
            "declared length",
            head("POST", "/strip", "text/xml", Some(10 << 20)),
            FakeBody::Bytes(vec![]),
            "127.0.0.1:1",
            ok_ident.clone(),
            413,
            "body_too_large",
        ),
        (
            "body timeout",
            post("/strip"),
            FakeBody::Fails(|| Refusal::BodyTimeout(30)),
            "127.0.0.1:1",
            ok_ident.clone(),
            408,
            "body_timeout",
        ),
        (
            "body cut",
            post("/strip"),
            FakeBody::Fails(|| Refusal::BodyIncomplete),
            "127.0.0.1:1",
            ok_ident.clone(),
            400,
            "body_incomplete",
        ),
        (
            "xml",
            post("/strip"),
            FakeBody::Bytes(b"<x/>".to_vec()),
            "127.0.0.1:1",
            ok_ident.clone(),
            400,
            "bad_xml",
        ),
        (
            "org",
            post("/strip"),
            FakeBody::Bytes(bad_org),
            "127.0.0.1:1",
            ok_ident.clone(),
            403,
            "organization",
        ),
    ];
    for (what, req, body, peer, ident, status, reason) in cases {
        let recv = FakeReceiver::default();
        let o = send_with(&w, &recv, req, body, peer, ident).await;
        assert_eq!(o.status(), status, "{what}: {:?}", o.result);
        assert_eq!(o.reason(), reason, "{what}");
        assert!(recv.bodies().is_empty(), "{what}: forwarded");
    }
}

#[tokio::test]
async fn identity_rules_and_the_in_flight_cap() {
    let w = world(false);
    let recv = FakeReceiver::default();
    // /narrow admits only 10.0.0.0/8 and CN someone.else; from a trusted address it is the CN
    // that refuses.
    let body = nil();
    let o = send_with(
        &w,
        &recv,
        head("POST", "/narrow", "text/xml", Some(body.len())),
        FakeBody::Bytes(body.clone()),
        "10.1.2.3:1",
        identity(NOW + 86_400),
    )
    .await;
    assert_eq!((o.status(), o.reason()), (403, "identity"));
    // At its in-flight cap, a route answers 503 before reading the body.
    let state = w.gen.route("/strip").unwrap().clone();
    let mut held = Vec::new();
    while let Some(slot) = w.gen.begin(&state, &w.total) {
        held.push(slot);
    }
    let o = send(&w, &recv, "/strip", body.clone()).await;
    assert_eq!((o.status(), o.reason()), (503, "overloaded"));
    assert!(!o.facts.body_read);
    drop(held);
    assert!(send(&w, &recv, "/strip", body).await.result.is_ok());
}

#[tokio::test]
async fn route_ranges_see_the_client_a_load_balancer_named_not_the_load_balancer() {
    let w = world(false);
    let recv = FakeReceiver::default();
    let body = nil();
    let behind = |peer: &str, client: &str| {
        Origin::behind(
            peer.parse().unwrap(),
            client.parse().unwrap(),
            Some("vpce-1".into()),
        )
    };
    // /strip admits 127.0.0.1 only. The load balancer (the TCP peer) is not a trusted proxy,
    // so an X-Forwarded-For through it is not believed either.
    for (origin, xff, want) in [
        (behind("10.9.9.9:1", "127.0.0.1"), None, (200, "-")),
        (behind("127.0.0.1:1", "10.9.9.9"), None, (403, "source_ip")),
        (
            behind("127.0.0.1:1", "10.9.9.9"),
            Some("127.0.0.1"),
            (403, "source_ip"),
        ),
    ] {
        let mut req = head("POST", "/strip", "text/xml", Some(body.len()));
        if let Some(x) = xff {
            req.insert_header("X-Forwarded-For", x).unwrap();
        }
        let o = send_from(
            &w,
            &recv,
            req,
            FakeBody::Bytes(body.clone()),
            origin.clone(),
            identity(NOW + 86_400),
        )
        .await;
        assert_eq!((o.status(), o.reason()), want, "{origin:?} {xff:?}");
        assert_eq!(o.facts.client_ip, origin.client);
        assert_eq!(
            o.facts.origin, origin,
            "the TCP peer is kept beside the client"
        );
    }
}

#[tokio::test]
async fn each_receiver_outcome_becomes_its_answer() {
    let w = world(false);
    let cases: [(Failure, u16, &str); 5] = [
        (Failure::UpstreamNack, 502, "nack"),
        (Failure::UpstreamTimeout(30), 504, "upstream_timeout"),
        (Failure::UpstreamUnreachable, 502, "upstream_unreachable"),
        (Failure::UpstreamStatus(500), 502, "upstream_status"),
        (Failure::UpstreamBadAnswer("x"), 502, "upstream_bad_answer"),
    ];
    for (failure, status, reason) in cases {
        let recv = FakeReceiver::answering(failure);
        let o = send(&w, &recv, "/strip", with_value()).await;
        assert_eq!((o.status(), o.reason()), (status, reason));
        assert_eq!(recv.bodies().len(), 1);
    }
    let recv = FakeReceiver::default();
    assert!(send(&w, &recv, "/strip", with_value()).await.result.is_ok());
}

#[tokio::test]
async fn inject_scrubs_faults_drops_invalid_tokens_and_verifies_urls() {
    let w = world(false);
    // The receiver echoes the token in a fault that reports it invalid.
    let fault = format!("{}{TOKEN} INVALID_SESSION_ID", "p".repeat(480));
    let recv = FakeReceiver::answering(Failure::UpstreamFault(fault));
    let o = send(&w, &recv, "/inject", nil()).await;
    assert_eq!(o.status(), 502);
    let answer = String::from_utf8(o.result.unwrap_err().answer().body).unwrap();
    assert!(!answer.contains(&TOKEN[..20]) && !answer.contains(&TOKEN[TOKEN.len() - 10..]));
    assert_eq!(w.tokens.invalidated.load(Ordering::SeqCst), 1);
    // Without URL rewriting, a callback URL on another host refuses the message.
    let evil = String::from_utf8(nil())
        .unwrap()
        .replace("acme.my.salesforce.com", "evil.example");
    let recv = FakeReceiver::default();
    let o = send(&w, &recv, "/verify", evil.into_bytes()).await;
    assert_eq!((o.status(), o.reason()), (403, "callback_url"));
    assert!(recv.bodies().is_empty());
    // The instance's own URLs pass unchanged.
    let o = send(&w, &recv, "/verify", nil()).await;
    assert!(o.result.is_ok(), "{:?}", o.result);

    // No token: 503, nothing delivered.
    let w = world(true);
    let recv = FakeReceiver::default();
    let o = send(&w, &recv, "/inject", nil()).await;
    assert_eq!((o.status(), o.reason()), (503, "token_unavailable"));
    assert!(recv.bodies().is_empty());
}

fn notifications(n: usize) -> Vec<u8> {
    Sample {
        notifications: n,
        ..Sample::default()
    }
    .body()
}

#[tokio::test]
async fn a_queued_route_acks_only_what_it_committed_and_stores_no_secret() {
    let w = world(false);
    let recv = FakeReceiver::default();
    let o = send(&w, &recv, "/queued", with_value()).await;
    let Ok(Accepted::Queued(id)) = o.result else {
        panic!("not queued: {:?}", o.result.err().map(|r| r.reason()));
    };
    assert_eq!(o.facts.queued, Some(id));
    assert!(
        recv.bodies().is_empty(),
        "queued mode delivers later, not in the request"
    );
    let stored = w.store.show(id, true).await.unwrap().unwrap();
    let body = stored.body.unwrap();
    assert_eq!(session_state(&body), SessionIdState::Nil);
    assert!(!String::from_utf8_lossy(&body).contains(SESSION_ID));
    assert_eq!(stored.summary.route, "queued");
    assert_eq!(stored.summary.notification_ids.len(), 1);

    // Salesforce's retry of the same message: an Ack, nothing stored twice.
    let again = send(&w, &recv, "/queued", with_value()).await;
    assert!(matches!(again.result, Ok(Accepted::Duplicate)));
    // A partial overlap is stored; then the route's max_messages (2) is reached: 503.
    let partial = send(&w, &recv, "/queued", notifications(2)).await;
    assert!(matches!(partial.result, Ok(Accepted::Queued(_))));
    let full = send(&w, &recv, "/queued", notifications(3)).await;
    assert_eq!((full.status(), full.reason()), (503, "store_full"));
    let fault = full.result.unwrap_err().answer().body;
    assert!(String::from_utf8_lossy(&fault).contains("soapenv:Server"));
    assert!(recv.bodies().is_empty());
}

#[tokio::test]
async fn a_queued_inject_route_stores_the_message_without_a_token() {
    let w = world(true);
    let recv = FakeReceiver::default();
    // The token endpoint is down: the message is still accepted (the token is fetched at
    // delivery time), and what rests has neither the session id nor a token.
    let o = send(&w, &recv, "/qinject", with_value()).await;
    let Ok(Accepted::Queued(id)) = o.result else {
        panic!("not queued: {:?}", o.result.err().map(|r| r.reason()));
    };
    let body = w.store.show(id, true).await.unwrap().unwrap().body.unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        !text.contains(SESSION_ID) && !text.contains(TOKEN),
        "{text}"
    );
    assert_eq!(session_state(&body), SessionIdState::Nil);
    assert!(recv.bodies().is_empty());
}

#[tokio::test]
async fn direct_with_dedupe_delivers_a_message_the_receiver_acked_only_once() {
    let w = world(false);
    let recv = FakeReceiver::answering(Failure::UpstreamNack);
    // A Nack is not remembered: the retry is delivered.
    let first = send(&w, &recv, "/dedupe", nil()).await;
    assert_eq!(first.reason(), "nack");
    let second = send(&w, &recv, "/dedupe", nil()).await;
    assert!(matches!(second.result, Ok(Accepted::Delivered)));
    let third = send(&w, &recv, "/dedupe", nil()).await;
    assert!(matches!(third.result, Ok(Accepted::Duplicate)));
    assert_eq!(recv.bodies().len(), 2, "the duplicate was not delivered");
    // A message with one new notification is delivered.
    let more = send(&w, &recv, "/dedupe", notifications(2)).await;
    assert!(matches!(more.result, Ok(Accepted::Delivered)));
    assert_eq!(recv.bodies().len(), 3);
}
