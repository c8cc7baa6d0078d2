//! What an outside red team broke, one test per finding, each against the real binary: a real
//! SOAP stack (Axis 1.4) where what the receiver reads matters, the test kit's receiver, and
//! receivers written on a raw socket where the point is an answer no HTTP library would send.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::axis::Axis;
use crate::harness::*;
use obmguard_testkit::client::Connection;
use obmguard_testkit::messages::{Sample, SESSION_ID};
use obmguard_testkit::receiver::{Behaviour, Receiver, ACK_BODY, NACK_BODY};
use obmguard_testkit::token_server::{TokenServer, TokenServerConfig};

const SECRET: &str = "00D5e000000AbCd!AQ4AQSmuggledSessionValueXYZ";
const NIL: &str = r#"<SessionId xsi:nil="true"/>"#;

fn nil_text() -> String {
    String::from_utf8(notification(None)).unwrap()
}

/// Replace exactly one occurrence.
fn edit(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from}");
    text.replacen(from, to, 1)
}

/// SOAP-encoding reference tricks that Axis 1.4 follows (see tests/axis and the red team's
/// report): the SessionId (or a callback URL) points at a value elsewhere in the envelope.
fn reference_attacks() -> Vec<(&'static str, String)> {
    let base = nil_text();
    let href = edit(&base, NIL, r##"<SessionId href="#s1"/>"##);
    vec![
        (
            "sObject field with the id",
            edit(
                &href,
                "<sf:Name>Acme Ltd 0</sf:Name>",
                &format!(r#"<sf:Name id="s1">{SECRET}</sf:Name>"#),
            ),
        ),
        (
            "multiRef in the Header",
            edit(
                &href,
                "<soapenv:Body>",
                &format!(
                    r#"<soapenv:Header><multiRef id="s1" xmlns="">{SECRET}</multiRef></soapenv:Header><soapenv:Body>"#
                ),
            ),
        ),
        (
            "multiRef after notifications",
            edit(
                &href,
                "</notifications>",
                &format!(r#"</notifications><multiRef id="s1" xmlns="">{SECRET}</multiRef>"#),
            ),
        ),
        (
            "EnterpriseUrl to a Header multiRef",
            edit(
                &edit(
                    &base,
                    "<EnterpriseUrl>https://acme.my.salesforce.com/services/Soap/c/",
                    r##"<EnterpriseUrl href="#u1"/><Ignored>"##,
                )
                .replace("</EnterpriseUrl>\n", "</Ignored>\n"),
                "<soapenv:Body>",
                r#"<soapenv:Header><multiRef id="u1" xmlns="">https://evil.example/services/Soap/c/59.0/x</multiRef></soapenv:Header><soapenv:Body>"#,
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn soap_encoding_references_never_reach_a_real_soap_stack() {
    let w = World::new();
    let Some(axis) = Axis::start(w.dir.path()) else {
        return;
    };
    // The attack is real: straight to Axis, the reference is followed.
    let (_, direct) = &reference_attacks()[1];
    assert_eq!(axis.post_direct(direct.as_bytes()).await, 200);
    assert_eq!(
        axis.seen()[0]["sessionId"].as_str(),
        Some(SECRET),
        "Axis 1.4 reads a SessionId href from a Header multiRef"
    );

    let tokens = TokenServer::start(TokenServerConfig::client_credentials("cid", "csecret"))
        .await
        .unwrap();
    write(&w.path("secret"), "csecret");
    let mut s = Setup::new(&w);
    for mode in ["strip", "remove", "reject", "audit", "inject"] {
        let mut r = route(mode, &format!("/{mode}"), &axis.url(), mode);
        if mode == "inject" {
            r += &format!(
                "\n[oauth]\nflow = \"client_credentials\"\ntoken_url = \"{}\"\nclient_id = {{ value = \"cid\" }}\nclient_secret = {{ file = {:?} }}\n",
                tokens.url(),
                w.path("secret").display().to_string()
            );
        }
        s = s.route(&format!("{mode}.toml"), r);
    }
    let p = Proxy::start(&w, &s).await;
    let client = w.salesforce();

    for mode in ["strip", "remove", "reject", "audit", "inject"] {
        for (what, body) in reference_attacks() {
            let before = axis.seen().len();
            let r = p
                .post(&client, &format!("/{mode}"), body.as_bytes())
                .await
                .unwrap();
            assert_eq!(r.status, 400, "{mode}, {what}: {}", r.body_str());
            assert!(r.body_str().contains("soapenv:Client"), "{mode}, {what}");
            assert_eq!(axis.seen().len(), before, "{mode}, {what}: forwarded");
        }
    }
    let audit = p.audit_lines();
    let refused = audit
        .iter()
        .filter(|l| l["decision"] == "rejected" && l["reason"] == "bad_xml")
        .count();
    assert_eq!(refused, 20, "each refusal audited");

    // What Salesforce sends still goes through, and Axis reads what obmguard decided.
    let with_value = Sample::default().body();
    for (mode, body, want) in [
        ("strip", notification(None), None),
        ("strip", with_value.clone(), None),
        ("remove", with_value.clone(), None),
        ("audit", with_value.clone(), Some(SESSION_ID.to_string())),
    ] {
        let r = p.post(&client, &format!("/{mode}"), &body).await.unwrap();
        assert_eq!(r.status, 200, "{mode}: {}", r.body_str());
        let seen = axis.seen();
        let last = seen.last().unwrap();
        assert_eq!(
            last["sessionId"].as_str().map(str::to_string),
            want,
            "{mode}"
        );
        assert_eq!(last["organizationId"], ORG);
        assert_eq!(last["notificationIds"][0], "04l5e0000000000AAA");
    }
    let r = p
        .post(&client, "/inject", &notification(None))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = axis.seen();
    let last = seen.last().unwrap();
    let token = tokens.last_issued_token().unwrap();
    assert_eq!(last["sessionId"].as_str(), Some(token.as_str()));
    assert!(last["enterpriseUrl"]
        .as_str()
        .unwrap()
        .starts_with("https://acme.my.salesforce.com/services/Soap/c/"));
}

/// One strip route `/r` to the test kit's receiver, with `extra` appended to obmguard.toml.
async fn strip_env(extra: &str) -> (World, Receiver, Proxy) {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let mut s = Setup::new(&w).route("r.toml", route("r", "/r", &recv.url("/"), "strip"));
    s.extra = extra.into();
    let p = Proxy::start(&w, &s).await;
    (w, recv, p)
}

/// An inject route, its token endpoint and receiver.
async fn inject_env(extra: &str) -> (World, Receiver, TokenServer, Proxy) {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let mut cfg = TokenServerConfig::client_credentials("cid", "csecret");
    cfg.instance_url = "https://acme.my.salesforce.com".into();
    let tokens = TokenServer::start(cfg).await.unwrap();
    write(&w.path("secret"), "csecret");
    let r = route("inject", "/inject", &recv.url("/inject"), "inject")
        + &format!(
            "\n[oauth]\nflow = \"client_credentials\"\ntoken_url = \"{}\"\nclient_id = {{ value = \"cid\" }}\nclient_secret = {{ file = {:?} }}\n{extra}",
            tokens.url(),
            w.path("secret").display().to_string()
        );
    let p = Proxy::start(&w, &Setup::new(&w).route("inject.toml", r)).await;
    (w, recv, tokens, p)
}

const BAD_URLS: &[&str] = &[
    "https://evil.example/services/Soap/c/59.0/00D5e000000AbCd",
    "https://user@acme.my.salesforce.com/services/Soap/c/59.0/00D5e000000AbCd",
    "https://evil.example?@acme.my.salesforce.com/services/Soap/c/59.0/x",
    "https://evil.example#@acme.my.salesforce.com/services/Soap/c/59.0/x",
    "https://%65vil.example/services/Soap/c/59.0/x",
    "//evil.example/services/Soap/c/59.0/x",
    "wss://acme.my.salesforce.com/services/Soap/c/59.0/x",
    "https:\\\\evil.example\\services",
    "https://acme.my.salesforce.com\\@evil.example/x",
    "http://acme.my.salesforce.com/services/Soap/c/59.0/x",
];

#[tokio::test(flavor = "multi_thread")]
async fn inject_never_sends_a_token_beside_an_unverified_callback_url() {
    for extra in [
        "rewrite_urls = true\n",
        "rewrite_urls = false\ncallback_hosts = [\"other.my.salesforce.com\"]\n",
    ] {
        let (w, recv, _tokens, p) = inject_env(extra).await;
        let rewriting = extra.contains("rewrite_urls = true");
        let base = nil_text();
        for bad in BAD_URLS {
            for element in ["EnterpriseUrl", "PartnerUrl"] {
                let start = base.find(&format!("<{element}>")).unwrap() + element.len() + 2;
                let end = base.find(&format!("</{element}>")).unwrap();
                let body = format!(
                    "{}{}{}",
                    &base[..start],
                    obmguard_testkit::messages::escape(bad),
                    &base[end..]
                );
                let before = recv.count();
                let r = p
                    .post(&w.salesforce(), "/inject", body.as_bytes())
                    .await
                    .unwrap();
                if rewriting && bad.starts_with("https://evil.example/") {
                    // Readable: rewritten to the instance, so the token goes where it belongs.
                    assert_eq!(r.status, 200, "{bad}: {}", r.body_str());
                    let got = recv.last().unwrap().body_str();
                    assert!(!got.contains("evil"), "{got}");
                    assert!(got.contains(&format!(
                        "<{element}>https://acme.my.salesforce.com/services/"
                    )));
                    continue;
                }
                assert_eq!(r.status, 403, "{extra} {element} {bad}: {}", r.body_str());
                let f = r.fault_string().unwrap();
                assert!(f.contains(element) && f.contains("callback"), "{f}");
                assert_eq!(recv.count(), before, "{extra} {bad}: forwarded");
            }
        }
        // The instance's own URLs (and, when verifying, an allowed host) pass.
        assert_eq!(
            p.status(&w.salesforce(), "/inject", base.as_bytes()).await,
            200
        );
        if extra.contains("callback_hosts") {
            let other = base.replace("acme.my.salesforce.com", "other.my.salesforce.com");
            assert_eq!(
                p.status(&w.salesforce(), "/inject", other.as_bytes()).await,
                200
            );
            assert!(recv
                .last()
                .unwrap()
                .body_str()
                .contains("https://other.my.salesforce.com/"));
        }
        let audit = p.audit_lines();
        assert!(audit.iter().any(|l| l["reason"] == "callback_url"));
    }
}

/// A receiver on a raw socket. For the n-th request (from 0, across connections) `answer`
/// gives what to write: pieces, each after a pause in milliseconds. It keeps each connection
/// open for the next request unless the request said `Connection: close`.
struct Raw {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
}

type Script = dyn Fn(usize, &[u8]) -> Vec<(u64, Vec<u8>)> + Send + Sync;

impl Raw {
    async fn start(
        answer: impl Fn(usize, &[u8]) -> Vec<(u64, Vec<u8>)> + Send + Sync + 'static,
    ) -> Raw {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let answer: Arc<Script> = Arc::new(answer);
        let (c, b) = (count.clone(), bodies.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (c, b, answer) = (c.clone(), b.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let Some((head_len, body_len, close)) =
                            read_head(&mut sock, &mut buf).await
                        else {
                            return;
                        };
                        while buf.len() < head_len + body_len {
                            let mut chunk = [0u8; 8192];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = buf[head_len..head_len + body_len].to_vec();
                        buf.drain(..head_len + body_len);
                        let n = c.fetch_add(1, Ordering::SeqCst);
                        b.lock().unwrap().push(body.clone());
                        for (pause, bytes) in answer(n, &body) {
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                            if sock.write_all(&bytes).await.is_err() {
                                return;
                            }
                        }
                        if close {
                            let _ = sock.shutdown().await;
                            return;
                        }
                    }
                });
            }
        });
        Raw {
            addr,
            count,
            bodies,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/raw", self.addr)
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// Read a request head into `buf`: (head length, Content-Length, Connection: close).
async fn read_head(
    sock: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(usize, usize, bool)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let close = head
                .lines()
                .any(|l| l.starts_with("connection:") && l.contains("close"));
            return Some((end + 4, len, close));
        }
        let mut chunk = [0u8; 8192];
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An HTTP/1.1 answer with a Content-Length.
fn answer(status: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn raw_env(raw: &Raw, extra_route: &str) -> (World, Proxy) {
    let w = World::new();
    let s = Setup::new(&w).route(
        "raw.toml",
        route("raw", "/raw", &raw.url(), "strip").replacen(
            "\n\n[message]",
            &format!("\n{extra_route}\n[message]"),
            1,
        ),
    );
    let p = Proxy::start(&w, &s).await;
    (w, p)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_answers_twice_never_turns_a_nack_into_an_ack() {
    // Odd messages: an Ack, then 3 ms later a second, unsolicited Ack. Even messages: a nack
    // after 20 ms, so a stray Ack still in flight would be read first on a reused connection.
    let raw = Raw::start(|n, _| {
        if n % 2 == 0 {
            vec![
                (0, answer("200 OK", "", ACK_BODY)),
                (3, answer("200 OK", "", ACK_BODY)),
            ]
        } else {
            vec![(20, answer("200 OK", "", NACK_BODY))]
        }
    })
    .await;
    let (w, p) = raw_env(&raw, "").await;
    let mut conn = p.connect(&w.salesforce()).await.unwrap();
    for i in 0..10 {
        let first = conn
            .post_soap("/raw", &notification(None), &[])
            .await
            .unwrap();
        assert_eq!(first.status, 200, "try {i}");
        let second = conn
            .post_soap("/raw", &notification(None), &[])
            .await
            .unwrap();
        assert_eq!(
            second.status,
            502,
            "try {i}: the receiver nacked: {}",
            second.body_str()
        );
    }
    assert_eq!(raw.count(), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_access_token_never_goes_back_to_salesforce() {
    // A raw receiver that echoes the token in its Ack and, in its fault, at every offset
    // around the 512-character cut.
    let token_seen: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let t = token_seen.clone();
    let raw = Raw::start(move |n, body| {
        let text = String::from_utf8_lossy(body);
        let tok = text
            .split("<SessionId>")
            .nth(1)
            .and_then(|r| r.split("</SessionId>").next())
            .unwrap_or_default()
            .to_string();
        *t.lock().unwrap() = Some(tok.clone());
        let fault = |pad: usize| {
            format!(
                r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>soapenv:Server</faultcode><faultstring>{}{tok} INVALID_SESSION_ID</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#,
                "p".repeat(pad)
            )
        };
        match n {
            0 => {
                let echo = ACK_BODY.replace(
                    "<soapenv:Body>",
                    &format!("<soapenv:Header><echo xmlns=\"urn:x\">{tok}</echo></soapenv:Header><soapenv:Body>"),
                );
                vec![(0, answer("200 OK", "", &echo))]
            }
            n => vec![(0, answer("500 Internal Server Error", "", &fault([0, 400, 450, 500, 511, 600][n % 6])))],
        }
    })
    .await;
    let w = World::new();
    write(&w.path("secret"), "csecret");
    let mut cfg = TokenServerConfig::client_credentials("cid", "csecret");
    cfg.instance_url = "https://acme.my.salesforce.com".into();
    let tokens = TokenServer::start(cfg).await.unwrap();
    let r = route("inject", "/inject", &raw.url(), "inject")
        + &format!(
            "\n[oauth]\nflow = \"client_credentials\"\ntoken_url = \"{}\"\nclient_id = {{ value = \"cid\" }}\nclient_secret = {{ file = {:?} }}\n",
            tokens.url(),
            w.path("secret").display().to_string()
        );
    let p = Proxy::start(&w, &Setup::new(&w).route("inject.toml", r)).await;
    for i in 0..7 {
        let r = p
            .post(&w.salesforce(), "/inject", &notification(None))
            .await
            .unwrap();
        let token = token_seen.lock().unwrap().clone().unwrap();
        assert!(token.len() > 20, "the receiver got a token");
        let body = r.body_str();
        assert!(
            !body.contains(&token[token.len() - 12..]),
            "try {i}: the token's tail went back: {body}"
        );
        assert!(
            !body.contains(&token[..20]),
            "try {i}: the token's head went back: {body}"
        );
        if i == 0 {
            assert_eq!(r.status, 200);
            assert_eq!(
                body,
                String::from_utf8_lossy(obmguard::upstream::CANONICAL_ACK)
            );
        } else {
            assert_eq!(r.status, 502, "{body}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn header_content_and_misplaced_outbound_elements_are_refused() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let mut s = Setup::new(&w);
    for mode in ["reject", "remove"] {
        s = s.route(
            &format!("{mode}.toml"),
            route(mode, &format!("/{mode}"), &recv.url("/"), mode),
        );
    }
    let p = Proxy::start(&w, &s).await;
    let base = nil_text();
    let header = |inner: &str| {
        edit(
            &base,
            "<soapenv:Body>",
            &format!("<soapenv:Header>{inner}</soapenv:Header><soapenv:Body>"),
        )
    };
    let bodies = [
        header(&format!(
            r#"<SessionId xmlns="http://soap.sforce.com/2005/09/outbound">{SECRET}</SessionId>"#
        )),
        header(&format!(
            r#"<notifications xmlns="http://soap.sforce.com/2005/09/outbound"><OrganizationId>00D5e000000XyZwAAA</OrganizationId><ActionId>04k5e000000XyZaAAK</ActionId><SessionId>{SECRET}</SessionId></notifications>"#
        )),
        edit(
            &base,
            "<sf:Name>Acme Ltd 0</sf:Name>",
            &format!(
                r#"<sf:Name>Acme Ltd 0</sf:Name><o:SessionId xmlns:o="http://soap.sforce.com/2005/09/outbound">{SECRET}</o:SessionId>"#
            ),
        ),
        edit(
            &base,
            "<sf:Name>Acme Ltd 0</sf:Name>",
            &format!("<SessionId>{SECRET}</SessionId>"),
        ),
    ];
    for mode in ["reject", "remove"] {
        for body in &bodies {
            let r = p
                .post(&w.salesforce(), &format!("/{mode}"), body.as_bytes())
                .await
                .unwrap();
            assert_eq!(r.status, 400, "{mode}: {}", r.body_str());
            assert!(
                r.fault_string().unwrap().contains("not expected"),
                "{}",
                r.body_str()
            );
        }
    }
    assert_eq!(recv.count(), 0);
    // An empty Header is still fine.
    assert_eq!(
        p.status(&w.salesforce(), "/reject", header("\n").as_bytes())
            .await,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn informational_answers_are_skipped_and_the_message_is_still_judged() {
    let raw = Raw::start(|n, _| {
        let info = if n % 2 == 0 {
            "HTTP/1.1 100 Continue\r\n\r\n".as_bytes().to_vec()
        } else {
            b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n".to_vec()
        };
        let last = if n < 2 { ACK_BODY } else { NACK_BODY };
        vec![(0, info), (5, answer("200 OK", "", last))]
    })
    .await;
    let (w, p) = raw_env(&raw, "").await;
    for (i, want) in [200, 200, 502, 502].into_iter().enumerate() {
        let r = p
            .post(&w.salesforce(), "/raw", &notification(None))
            .await
            .unwrap();
        assert_eq!(r.status, want, "try {i}: {}", r.body_str());
    }
    let audit = p.audit_lines();
    assert_eq!(audit.len(), 4, "every message audited");
    assert_eq!(audit[0]["upstream_status"], 200);
    assert_eq!(audit[3]["decision"], "nacked");
    assert!(!p.logs().contains("panicked"), "{}", p.logs());
}

fn vm(pid: i32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn unfinished_request_heads_cannot_buffer_more_than_the_header_limit() {
    let (w, _recv, p) = strip_env("[limits]\nmax_header_bytes = 16384\n").await;
    let before = vm(p.pid(), "VmHWM:");
    const N: usize = 60;
    let client = w.salesforce();
    let mut tasks = Vec::new();
    for _ in 0..N {
        let mut c = p.connect(&client).await.unwrap();
        tasks.push(tokio::spawn(async move {
            // ~960 KB of header that never ends: obmguard must stop reading and close.
            let mut head = b"POST /r HTTP/1.1\r\nHost: x\r\n".to_vec();
            let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
            let mut sent = 0;
            let mut closed = false;
            for _ in 0..960 {
                head.extend_from_slice(line.as_bytes());
                if c.write_raw(&head).await.is_err() {
                    closed = true;
                    break;
                }
                sent += head.len();
                head.clear();
            }
            (closed || c.read_response().await.is_err(), sent)
        }));
    }
    let mut all_closed = true;
    for t in tasks {
        let (closed, _) = t.await.unwrap();
        all_closed &= closed;
    }
    assert!(
        all_closed,
        "every connection with an endless head was closed"
    );
    let grown_kb = vm(p.pid(), "VmHWM:").saturating_sub(before);
    // Before the fix pingora buffered each head up to 1 MiB: about 60 MB here.
    assert!(
        grown_kb < (N as u64) * 200,
        "peak RSS grew {grown_kb} kB for {N} connections"
    );
    let m = p.metrics().await;
    assert!(
        metric(
            &m,
            "obmguard_rejections_total{reason=\"headers_too_large\",route=\"-\"}"
        ) >= N as f64,
        "{m}"
    );
    // The listener still serves.
    assert_eq!(p.status(&client, "/r", &notification(None)).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_later_request_on_a_kept_alive_connection_has_its_own_head_deadline() {
    let (w, _recv, p) =
        strip_env("[timeouts]\nrequest_head_ms = 1000\nidle_keepalive_ms = 60000\n").await;
    let mut c = p.connect(&w.salesforce()).await.unwrap();
    assert_eq!(
        c.post_soap("/r", &notification(None), &[])
            .await
            .unwrap()
            .status,
        200
    );
    // Idle well beyond request_head_ms between requests: allowed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let start = Instant::now();
    let head = b"POST /r HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n";
    let mut cut = false;
    for b in head.iter() {
        if c.write_raw(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if start.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let closed = cut || c.read_response().await.is_err();
    assert!(
        closed,
        "a head dribbled over {:?} was served",
        start.elapsed()
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "cut off late: {:?}",
        start.elapsed()
    );
    let m = p.metrics().await;
    assert_eq!(
        metric(&m, "obmguard_timeouts_total{stage=\"request_head\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn megabyte_values_in_every_field_leave_the_log_and_the_audit_small() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let mut s = Setup::new(&w).route(
        "r.toml",
        route("r", "/r", &recv.url("/"), "strip") + "max_body_bytes = 4194304\n",
    );
    s.extra = "[limits]\nmax_header_bytes = 16384\n".into();
    let p = Proxy::start(&w, &s).await;
    let big = "A".repeat(1 << 20);
    let base = String::from_utf8(Sample::default().body()).unwrap();
    let bodies = vec![
        ("OrganizationId", edit(&base, ORG, &big)),
        ("ActionId", edit(&base, "04k5e000000XyZaAAK", &big)),
        (
            "SessionId",
            edit(&base, &obmguard_testkit::messages::escape(SESSION_ID), &big),
        ),
        (
            "EnterpriseUrl",
            edit(
                &base,
                "https://acme.my.salesforce.com/services/Soap/c/",
                &format!("https://{big}/"),
            ),
        ),
        (
            "Notification Id",
            edit(
                &base,
                "<Id>04l5e0000000000AAA</Id>",
                &format!("<Id>{big}</Id>"),
            ),
        ),
        (
            "sObject type",
            edit(&base, "sf:Account", &format!("sf:{big}")),
        ),
        ("sObject field", edit(&base, "Acme Ltd 0", &big)),
        (
            "element name",
            edit(
                &base,
                "<sf:Name>Acme Ltd 0</sf:Name>",
                &format!("<sf:{big}>x</sf:{big}>"),
            ),
        ),
        (
            "attribute",
            edit(&base, "<sf:Name>", &format!("<sf:Name xsi:type=\"{big}\">")),
        ),
    ];
    for (what, body) in bodies {
        let audit_before = p.audit_text().len();
        let log_before = p.logs().len();
        let r = p
            .post(&w.salesforce(), "/r", body.as_bytes())
            .await
            .unwrap();
        assert!(r.status == 200 || r.status == 400, "{what}: {}", r.status);
        assert!(
            r.body.len() < 4096,
            "{what}: the answer is {} bytes",
            r.body.len()
        );
        let audit = p.audit_text().len() - audit_before;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let log = p.logs().len() - log_before;
        assert!(
            audit > 0 && audit < 4096,
            "{what}: audit grew {audit} bytes"
        );
        assert!(log < 4096, "{what}: log grew {log} bytes");
    }
    // And in a header the proxy records: the X-Forwarded-For from an untrusted peer.
    let mut c = p.connect(&w.salesforce()).await.unwrap();
    let body = notification(None);
    let head = format!(
        "POST /r HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\nX-Forwarded-For: {}\r\nContent-Length: {}\r\n\r\n",
        "9".repeat(8000),
        body.len()
    );
    let log_before = p.logs().len();
    let mut raw = head.into_bytes();
    raw.extend_from_slice(&body);
    let r = c.send_raw(&raw).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(p.logs().len() - log_before < 4096);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_client_certificate_stops_working_on_keep_alive_and_resumption() {
    let (w, recv, p) = strip_env("[timeouts]\nmax_connection_age_ms = 3600000\n").await;
    let client = w.client(Some(&w.pki.short_lived));
    let shared = client.shared().unwrap();
    let mut kept = Connection::connect_shared(p.addr, &client, shared.clone())
        .await
        .unwrap();
    assert_eq!(
        kept.post_soap("/r", &notification(None), &[])
            .await
            .unwrap()
            .status,
        200
    );
    // A second connection resumes the session while the certificate is still valid.
    let mut early = Connection::connect_shared(p.addr, &client, shared.clone())
        .await
        .unwrap();
    assert!(early.resumed(), "the client resumes its session");
    assert_eq!(
        early
            .post_soap("/r", &notification(None), &[])
            .await
            .unwrap()
            .status,
        200
    );
    let served = recv.count();
    // Wait out the certificate.
    tokio::time::sleep(Duration::from_secs(
        obmguard_testkit::pki::SHORT_LIVED_SECS as u64 + 2,
    ))
    .await;
    let r = kept
        .post_soap("/r", &notification(None), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 403, "kept-alive connection: {}", r.body_str());
    assert!(r.fault_string().unwrap().contains("expired"));
    // Either the handshake refuses the certificate, or a resumed session gets 403.
    if let Ok(mut resumed) = Connection::connect_shared(p.addr, &client, shared).await {
        let r = resumed.post_soap("/r", &notification(None), &[]).await;
        assert!(
            r.as_ref().map_or(true, |r| r.status == 403),
            "resumed={} status={:?}",
            resumed.resumed(),
            r.map(|r| r.status)
        );
    }
    assert_eq!(recv.count(), served, "nothing forwarded after expiry");
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_end_after_their_maximum_age() {
    let (w, _recv, p) = strip_env("[timeouts]\nmax_connection_age_ms = 1000\n").await;
    let mut c = p.connect(&w.salesforce()).await.unwrap();
    assert_eq!(
        c.post_soap("/r", &notification(None), &[])
            .await
            .unwrap()
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = c.post_soap("/r", &notification(None), &[]).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("close")
    );
    assert!(
        c.post_soap("/r", &notification(None), &[]).await.is_err(),
        "the connection was closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_answers_are_refused_and_a_broken_answer_is_not_retried() {
    let raw = Raw::start(|n, _| match n {
        0 => vec![(0, answer("200 OK", "Content-Encoding: gzip\r\n", ACK_BODY))],
        1 => vec![(0, answer("200 OK", "", ACK_BODY))],
        _ => vec![(
            0,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nContent-Length: 3\r\n\r\n{ACK_BODY}",
                ACK_BODY.len()
            )
            .into_bytes(),
        )],
    })
    .await;
    let (w, p) = raw_env(&raw, "upstream_keepalive = true\n").await;
    let r = p
        .post(&w.salesforce(), "/raw", &notification(None))
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert!(r.fault_string().unwrap().contains("Content-Encoding"));
    // A good exchange leaves a pooled connection; the next answer on it is broken.
    assert_eq!(
        p.status(&w.salesforce(), "/raw", &notification(None)).await,
        200
    );
    let r = p
        .post(&w.salesforce(), "/raw", &notification(None))
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert_eq!(raw.count(), 3, "the receiver got each message once");
    let bodies = raw.bodies.lock().unwrap();
    assert_eq!(bodies.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_or_injecting_into_a_nil_session_id_is_recorded() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let s = Setup::new(&w).route(
        "remove.toml",
        route("remove", "/remove", &recv.url("/"), "remove"),
    );
    let p = Proxy::start(&w, &s).await;
    assert_eq!(
        p.status(&w.salesforce(), "/remove", &notification(None))
            .await,
        200
    );
    assert!(!recv.last().unwrap().body_str().contains("SessionId"));
    let audit = p.audit_lines();
    assert_eq!(audit[0]["session_action"], "removed");
    assert_eq!(audit[0]["session_id"], "nil");
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "obmguard_session_ids_total{action=\"removed\",route=\"remove\"}"
        ),
        1.0
    );

    let (w, _recv, _tokens, p) = inject_env("").await;
    assert_eq!(
        p.status(&w.salesforce(), "/inject", &notification(None))
            .await,
        200
    );
    assert_eq!(p.audit_lines()[0]["session_action"], "injected");
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "obmguard_session_ids_total{action=\"injected\",route=\"inject\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notifications_answer_is_a_failure_and_the_fault_says_why() {
    let raw = Raw::start(|n, _| {
        let inner = if n == 0 { "<Ack>true</Ack>" } else { "<Ack>1</Ack>" };
        let body = format!(
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notifications xmlns="http://soap.sforce.com/2005/09/outbound">{inner}</notifications></soapenv:Body></soapenv:Envelope>"#
        );
        vec![(0, answer("200 OK", "", &body))]
    })
    .await;
    let (w, p) = raw_env(&raw, "").await;
    for _ in 0..2 {
        let r = p
            .post(&w.salesforce(), "/raw", &notification(None))
            .await
            .unwrap();
        assert_eq!(r.status, 502);
        let f = r.fault_string().unwrap();
        assert!(
            f.contains("notificationsResponse") && f.contains("000381752"),
            "{f}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_id_in_the_message_must_be_a_valid_id() {
    // No action_ids on this route: the action id is checked all the same.
    let (w, recv, p) = strip_env("").await;
    let base = nil_text();
    for (what, body) in [
        (
            "action",
            edit(&base, "04k5e000000XyZaAAK", "04k5e000000XyZaAAB"),
        ),
        ("action", edit(&base, "04k5e000000XyZaAAK", "not-an-id")),
        (
            "Notification",
            edit(
                &base,
                "<Id>04l5e0000000000AAA</Id>",
                "<Id>04l5e0000000000AAB</Id>",
            ),
        ),
        (
            "Notification",
            edit(&base, "<Id>04l5e0000000000AAA</Id>", "<Id>x</Id>"),
        ),
    ] {
        let r = p
            .post(&w.salesforce(), "/r", body.as_bytes())
            .await
            .unwrap();
        assert_eq!(r.status, 400, "{what}: {}", r.body_str());
        assert!(r.fault_string().unwrap().contains(what), "{}", r.body_str());
    }
    assert_eq!(recv.count(), 0);
}
