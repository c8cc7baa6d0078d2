//! Inject mode against a real HTTP token endpoint that answers like Salesforce.

use crate::harness::*;
use obmguard_testkit::messages::SESSION_ID;
use obmguard_testkit::receiver::{Behaviour, Receiver};
use obmguard_testkit::token_server::{JwtExpectations, Mode, TokenServer, TokenServerConfig};

const CLIENT_ID: &str = "3MVG9-consumer-key";
const SECRET: &str = "client-secret-s3cr3t-value-9f8e7d";

struct Env {
    w: World,
    recv: Receiver,
    tokens: TokenServer,
    p: Proxy,
}

fn oauth_route(recv: &Receiver, tokens: &TokenServer, w: &World, header: bool) -> String {
    let secret_file = w.path("client_secret");
    write(&secret_file, &format!("{SECRET}\n"));
    route("legacy", "/legacy", &recv.url("/legacy"), "inject")
        + &format!(
            "\n[oauth]\nflow = \"client_credentials\"\ntoken_url = \"{}\"\nclient_id = {{ env = \"OBM_TEST_CLIENT_ID\" }}\nclient_secret = {{ file = {:?} }}\nttl_seconds = 3600\nrewrite_urls = true\nheader = {header}\ntimeout_ms = 1000\n",
            tokens.url(),
            secret_file.display().to_string()
        )
}

async fn env(header: bool) -> Env {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let mut cfg = TokenServerConfig::client_credentials(CLIENT_ID, SECRET);
    cfg.instance_url = "https://acme-instance.example.com".into();
    let tokens = TokenServer::start(cfg).await.unwrap();
    let s = Setup::new(&w).route("legacy.toml", oauth_route(&recv, &tokens, &w, header));
    let p = Proxy::try_start(&w, &s, &[("OBM_TEST_CLIENT_ID", CLIENT_ID)])
        .await
        .unwrap();
    Env { w, recv, tokens, p }
}

/// A Salesforce-like message with a session id on the inject route.
async fn post_legacy(e: &Env) -> obmguard_testkit::client::Response {
    e.p.post(
        &e.w.salesforce(),
        "/legacy",
        &notification(Some(SESSION_ID)),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn inject_replaces_the_session_id_with_a_fresh_token_and_rewrites_urls() {
    let e = env(true).await;
    let r = post_legacy(&e).await;
    assert_eq!(r.status, 200, "{}", r.body_str());
    let token = e.tokens.last_issued_token().unwrap();
    let got = e.recv.last().unwrap();
    assert_eq!(got.session_id_value().as_deref(), Some(token.as_str()));
    assert!(
        !got.body_str().contains("AQ4AQFakeSessionValue"),
        "the original session id is never forwarded"
    );
    assert!(
        got.body_str()
            .contains("https://acme-instance.example.com/services/Soap/c/"),
        "{}",
        got.body_str()
    );
    assert!(got
        .body_str()
        .contains("https://acme-instance.example.com/services/Soap/u/"));
    assert_eq!(
        got.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    // A nil SessionId gets a token too.
    assert_eq!(
        e.p.status(&e.w.salesforce(), "/legacy", &notification(None))
            .await,
        200
    );
    assert_eq!(
        e.recv.last().unwrap().session_id_value().as_deref(),
        Some(token.as_str())
    );
    assert_eq!(e.tokens.requests(), 1, "the cached token is reused");
    let m = e.p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "obmguard_session_ids_total{action=\"injected\",route=\"legacy\"}"
        ),
        2.0,
        "an injection into a nil SessionId is counted too"
    );
    assert!(
        metric(
            &m,
            "obmguard_token_fetch_duration_seconds_count{outcome=\"ok\"}"
        ) >= 1.0,
        "{m}"
    );
    // Neither the token nor the client secret reaches logs, metrics or the audit trail.
    let audit = e.p.audit_text();
    for (place, text) in [("logs", e.p.logs()), ("metrics", m), ("audit", audit)] {
        assert!(!text.contains(&token), "token found in {place}");
        assert!(!text.contains(SECRET), "client secret found in {place}");
        assert!(
            !text.contains("AQ4AQFakeSessionValue"),
            "session id found in {place}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_concurrent_messages_cause_one_token_request() {
    let e = env(false).await;
    let body = notification(Some(SESSION_ID));
    let client = e.w.salesforce();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (addr, client, body) = (e.p.addr, client.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            obmguard_testkit::client::post_once(addr, &client, "/legacy", &body)
                .await
                .unwrap()
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(e.tokens.requests(), 1);
    assert_eq!(e.recv.count(), 20);
    assert!(
        e.recv.last().unwrap().header("authorization").is_none(),
        "header = false"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_means_503_and_nothing_forwarded() {
    let e = env(false).await;
    for mode in [Mode::Status500, Mode::Html, Mode::Redirect, Mode::Hang] {
        e.tokens.set_mode(mode);
        // Let the previous failure's back-off pass so this mode is really exercised.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let r = post_legacy(&e).await;
        assert_eq!(r.status, 503, "{mode:?}: {}", r.body_str());
        assert!(r.body_str().contains("soapenv:Server"));
        assert!(
            r.fault_string().unwrap().contains("no OAuth access token"),
            "{mode:?}"
        );
    }
    assert_eq!(e.recv.count(), 0, "nothing was forwarded without a token");
    let m = e.p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "obmguard_requests_total{outcome=\"token_unavailable\",route=\"legacy\"}"
        ),
        4.0,
        "{m}"
    );
    assert!(!e.p.logs().contains(SECRET));
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_bearer_flow_is_signed_and_checked_by_the_endpoint() {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let w = World::new();
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let private_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let public_pem = key
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let key_file = w.path("jwt.key");
    write(&key_file, &private_pem);
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let mut cfg = TokenServerConfig::client_credentials(CLIENT_ID, "unused");
    cfg.jwt = Some(JwtExpectations {
        public_key_pem: public_pem,
        username: "integration@acme.example".into(),
        audience: "https://login.salesforce.com".into(),
    });
    cfg.instance_url = "https://jwt-instance.example.com".into();
    let tokens = TokenServer::start(cfg).await.unwrap();
    let policy = route("jwt", "/jwt", &recv.url("/jwt"), "inject")
        + &format!(
            "\n[oauth]\nflow = \"jwt_bearer\"\ntoken_url = \"{}\"\nclient_id = {{ value = \"{CLIENT_ID}\" }}\nusername = \"integration@acme.example\"\nprivate_key = {{ file = {:?} }}\n",
            tokens.url(),
            key_file.display().to_string()
        );
    let p = Proxy::start(&w, &Setup::new(&w).route("jwt.toml", policy)).await;
    let r = p
        .post(&w.salesforce(), "/jwt", &notification(Some(SESSION_ID)))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}\n{}", r.body_str(), p.logs());
    let token = tokens.last_issued_token().unwrap();
    assert_eq!(
        recv.last().unwrap().session_id_value().as_deref(),
        Some(token.as_str())
    );
    assert!(!p.logs().contains("BEGIN PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_subcommand_prints_a_connectivity_check_without_the_token() {
    let e = env(false).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_obmguard"))
        .args(["token", "--config"])
        .arg(&e.p.config)
        .args(["--route", "legacy"])
        .env("OBM_TEST_CLIENT_ID", CLIENT_ID)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("instance_url: https://acme-instance.example.com"),
        "{stdout}"
    );
    assert!(stdout.contains("issued_at: "));
    let token = e.tokens.last_issued_token().unwrap();
    assert!(stdout.contains(&format!("token length: {}", token.len())));
    assert!(!stdout.contains(&token) && !String::from_utf8_lossy(&out.stderr).contains(&token));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_session_from_the_receiver_drops_the_token_and_never_echoes_it() {
    let e = env(false).await;
    assert_eq!(post_legacy(&e).await.status, 200);
    let token = e.tokens.last_issued_token().unwrap();
    // The receiver's callback was refused and it says so, quoting the session it used.
    e.recv.set_behaviour(Behaviour::Fault(format!(
        "INVALID_SESSION_ID: Invalid Session ID found in SessionHeader: {token}"
    )));
    let r = post_legacy(&e).await;
    assert_eq!(r.status, 502);
    let fault = r.fault_string().unwrap();
    assert!(
        fault.contains("INVALID_SESSION_ID") && fault.contains("<access token>"),
        "{fault}"
    );
    assert!(
        !r.body_str().contains(&token),
        "the token is not relayed to Salesforce"
    );
    // Salesforce's retry gets a fresh token.
    e.recv.set_behaviour(Behaviour::Ack);
    assert_eq!(post_legacy(&e).await.status, 200);
    assert_eq!(e.tokens.requests(), 2);
    let fresh = e.tokens.last_issued_token().unwrap();
    assert_ne!(fresh, token);
    assert_eq!(
        e.recv.last().unwrap().session_id_value().as_deref(),
        Some(fresh.as_str())
    );
    assert!(!e.p.logs().contains(&token) && !e.p.logs().contains(&fresh));
}
