//! Token broker tests against the real test token endpoint over HTTP (no mocks).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};

use super::*;
use obmguard_testkit::token_server::{
    self as ts, JwtExpectations, Mode, TokenServer, TokenServerConfig,
};

const CLIENT_ID: &str = "3MVG9fake.consumer.key";
const CLIENT_SECRET: &str = "s3cr3t-Value&with=odd:chars";
const USERNAME: &str = "integration@acme.example";
const AUDIENCE: &str = "https://login.salesforce.com";

fn settings(token_url: url::Url, flow: Flow) -> OAuthSettings {
    OAuthSettings {
        token_url,
        client_id: CLIENT_ID.to_owned(),
        flow,
        ttl: DEFAULT_TTL,
        connect_timeout: Duration::from_secs(2),
        total_timeout: Duration::from_secs(5),
    }
}

pub(super) fn client_credentials(token_url: url::Url, client_auth: ClientAuth) -> OAuthSettings {
    settings(
        token_url,
        Flow::ClientCredentials {
            client_secret: Secret::new(CLIENT_SECRET),
            client_auth,
        },
    )
}

fn jwt_bearer(token_url: url::Url, private_key_pem: &str) -> OAuthSettings {
    settings(
        token_url,
        Flow::JwtBearer {
            username: USERNAME.to_owned(),
            private_key_pem: Secret::new(private_key_pem),
            audience: AUDIENCE.to_owned(),
        },
    )
}

pub(super) async fn server(configure: impl FnOnce(&mut TokenServerConfig)) -> TokenServer {
    let mut config = TokenServerConfig::client_credentials(CLIENT_ID, CLIENT_SECRET);
    configure(&mut config);
    TokenServer::start(config).await.unwrap()
}

type Outcomes = Arc<Mutex<Vec<FetchOutcome>>>;

fn broker() -> (TokenBroker, Outcomes) {
    let outcomes = Outcomes::default();
    let seen = outcomes.clone();
    let broker = TokenBroker::new(Arc::new(move |outcome, _elapsed| {
        seen.lock().unwrap().push(outcome)
    }));
    (broker, outcomes)
}

fn source(settings: &OAuthSettings) -> Arc<TokenSource> {
    broker().0.source(settings)
}

struct RsaPems {
    pkcs8: String,
    pkcs1: String,
    public: String,
}

/// One 2048-bit key per test binary: generating it is the slow part.
fn rsa_key() -> &'static RsaPems {
    static KEY: OnceLock<RsaPems> = OnceLock::new();
    KEY.get_or_init(|| {
        let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
        RsaPems {
            pkcs8: key.to_pkcs8_pem(LineEnding::LF).unwrap().to_string(),
            pkcs1: key.to_pkcs1_pem(LineEnding::LF).unwrap().to_string(),
            public: key
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        }
    })
}

async fn jwt_server(username: &str) -> TokenServer {
    let public_key_pem = rsa_key().public.clone();
    let username = username.to_owned();
    server(move |c| {
        c.jwt = Some(JwtExpectations {
            public_key_pem,
            username,
            audience: AUDIENCE.to_owned(),
        })
    })
    .await
}

/// A loopback URL nobody listens on (a port no other test's socket can take meanwhile).
async fn closed_port_url() -> url::Url {
    let port = obmguard_testkit::ports::free_port();
    format!("http://127.0.0.1:{port}/services/oauth2/token")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn client_credentials_in_body_yield_the_issued_token() {
    let server = server(|_| {}).await;
    let token = source(&client_credentials(server.url(), ClientAuth::Body))
        .token()
        .await
        .unwrap();
    assert_eq!(
        Some(token.access_token.expose().to_owned()),
        server.last_issued_token()
    );
    assert_eq!(
        token.instance_url.as_str(),
        "https://acme.my.salesforce.com/"
    );
    assert!(token.issued_at_ms.is_some());
}

#[tokio::test]
async fn client_credentials_with_basic_auth_are_accepted() {
    let server = server(|c| c.client_auth = ts::ClientAuth::Basic).await;
    let token = source(&client_credentials(server.url(), ClientAuth::Basic))
        .token()
        .await
        .unwrap();
    assert_eq!(
        Some(token.access_token.expose().to_owned()),
        server.last_issued_token()
    );
}

#[tokio::test]
async fn secret_in_body_is_refused_by_a_basic_only_endpoint() {
    let server = server(|c| c.client_auth = ts::ClientAuth::Basic).await;
    let err = source(&client_credentials(server.url(), ClientAuth::Body))
        .token()
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "status");
}

#[tokio::test]
async fn wrong_secret_reports_salesforce_error_fields_without_the_secret() {
    let server = server(|c| c.client_secret = "another".to_owned()).await;
    let err = source(&client_credentials(server.url(), ClientAuth::Body))
        .token()
        .await
        .unwrap_err();
    assert_eq!(
        err,
        TokenError::Status {
            status: 400,
            error: Some("invalid_client".to_owned()),
            error_description: Some("invalid client credentials".to_owned()),
        }
    );
    let shown = err.to_string();
    assert!(shown.contains("invalid_client"), "{shown}");
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
}

#[tokio::test]
async fn jwt_bearer_with_pkcs8_key_is_verified_by_the_endpoint() {
    let server = jwt_server(USERNAME).await;
    let token = source(&jwt_bearer(server.url(), &rsa_key().pkcs8))
        .token()
        .await
        .unwrap();
    assert_eq!(
        Some(token.access_token.expose().to_owned()),
        server.last_issued_token()
    );
}

#[tokio::test]
async fn jwt_bearer_with_pkcs1_key_is_verified_by_the_endpoint() {
    let server = jwt_server(USERNAME).await;
    let token = source(&jwt_bearer(server.url(), &rsa_key().pkcs1))
        .token()
        .await
        .unwrap();
    assert_eq!(
        Some(token.access_token.expose().to_owned()),
        server.last_issued_token()
    );
}

#[tokio::test]
async fn jwt_bearer_for_another_user_is_refused() {
    let server = jwt_server("someone.else@acme.example").await;
    let err = source(&jwt_bearer(server.url(), &rsa_key().pkcs8))
        .token()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TokenError::Status { status: 400, error: Some(e), .. } if e == "invalid_grant"),
        "{err:?}"
    );
}

#[tokio::test]
async fn jwt_bearer_signed_with_another_key_is_refused() {
    let server = jwt_server(USERNAME).await;
    let other = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let other_pem = other.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let err = source(&jwt_bearer(server.url(), &other_pem))
        .token()
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "status");
    assert!(server.last_issued_token().is_none());
}

#[tokio::test]
async fn cached_token_is_reused() {
    let server = server(|_| {}).await;
    let source = source(&client_credentials(server.url(), ClientAuth::Body));
    let first = source.token().await.unwrap();
    let second = source.token().await.unwrap();
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn expired_token_is_replaced() {
    let server = server(|_| {}).await;
    let mut settings = client_credentials(server.url(), ClientAuth::Body);
    settings.ttl = Duration::from_secs(1);
    let source = source(&settings);
    let first = source.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = source.token().await.unwrap();
    assert_eq!(server.requests(), 2);
    assert_ne!(first.access_token, second.access_token);
}

#[tokio::test]
async fn expires_in_shorter_than_ttl_is_honoured() {
    let server = server(|c| c.expires_in = Some(1)).await;
    let source = source(&client_credentials(server.url(), ClientAuth::Body));
    source.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    source.token().await.unwrap();
    assert_eq!(server.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_fetch() {
    let server = server(|_| {}).await;
    let source = source(&client_credentials(server.url(), ClientAuth::Body));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let source = source.clone();
        callers.spawn(async move { source.token().await });
    }
    let mut tokens = Vec::new();
    while let Some(result) = callers.join_next().await {
        tokens.push(result.unwrap().unwrap());
    }
    assert_eq!(tokens.len(), 20);
    assert!(tokens.iter().all(|t| Arc::ptr_eq(t, &tokens[0])));
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn endpoint_down_is_unreachable() {
    let err = source(&client_credentials(
        closed_port_url().await,
        ClientAuth::Body,
    ))
    .token()
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "unreachable", "{err}");
}

#[tokio::test]
async fn stopped_server_is_unreachable_even_with_a_pooled_connection() {
    let server = server(|_| {}).await;
    let url = server.url();
    let source = source(&client_credentials(url, ClientAuth::Body));
    source.fetch_once().await.unwrap();
    drop(server);
    let err = source.fetch_once().await.unwrap_err();
    assert_eq!(err.reason(), "unreachable", "{err}");
}

async fn error_in_mode(mode: Mode, total_timeout: Duration) -> (TokenError, usize) {
    let server = server(|_| {}).await;
    server.set_mode(mode);
    let mut settings = client_credentials(server.url(), ClientAuth::Body);
    settings.total_timeout = total_timeout;
    let err = source(&settings).token().await.unwrap_err();
    (err, server.requests())
}

#[tokio::test]
async fn server_error_is_a_status_error() {
    let (err, requests) = error_in_mode(Mode::Status500, Duration::from_secs(5)).await;
    assert_eq!(
        err,
        TokenError::Status {
            status: 500,
            error: None,
            error_description: None
        }
    );
    assert_eq!(requests, 1);
}

#[tokio::test]
async fn html_page_is_not_json() {
    let (err, _) = error_in_mode(Mode::Html, Duration::from_secs(5)).await;
    assert!(
        matches!(&err, TokenError::NotJson { content_type } if content_type.starts_with("text/html")),
        "{err:?}"
    );
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let (err, requests) = error_in_mode(Mode::Redirect, Duration::from_secs(5)).await;
    assert_eq!(err, TokenError::Redirect { status: 302 });
    assert_eq!(requests, 1);
}

#[tokio::test]
async fn hanging_endpoint_times_out() {
    let (err, _) = error_in_mode(Mode::Hang, Duration::from_millis(300)).await;
    assert_eq!(err.reason(), "timeout", "{err}");
}

#[tokio::test]
async fn oversized_answer_is_refused() {
    let (err, _) = error_in_mode(Mode::Oversized, Duration::from_secs(5)).await;
    assert_eq!(err.reason(), "too_large", "{err}");
}

#[tokio::test]
async fn failure_is_remembered_during_backoff_then_retried() {
    let server = server(|_| {}).await;
    server.set_mode(Mode::Status500);
    let (broker, outcomes) = broker();
    let source = broker.source(&client_credentials(server.url(), ClientAuth::Body));
    let first = source.token().await.unwrap_err();
    server.set_mode(Mode::Ok);
    let second = source.token().await.unwrap_err();
    assert_eq!(first, second);
    assert_eq!(server.requests(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    source.token().await.unwrap();
    assert_eq!(server.requests(), 2);
    let labels: Vec<_> = outcomes.lock().unwrap().iter().map(|o| o.label()).collect();
    assert_eq!(labels, ["status", "ok"]);
}

#[tokio::test]
async fn token_with_unsafe_characters_is_refused() {
    let server = server(|c| c.token_prefix = "00D<script>".to_owned()).await;
    let err = source(&client_credentials(server.url(), ClientAuth::Body))
        .token()
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "unsafe_token");
    let issued = server.last_issued_token().unwrap();
    assert!(!err.to_string().contains(&issued));
    assert!(!format!("{err:?}").contains(&issued));
}

#[tokio::test]
async fn plain_http_instance_url_is_refused() {
    let server = server(|c| c.instance_url = "http://acme.my.salesforce.com".to_owned()).await;
    let err = source(&client_credentials(server.url(), ClientAuth::Body))
        .token()
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "bad_instance_url");
}

#[tokio::test]
async fn plain_http_token_url_is_refused_before_sending() {
    let url: url::Url = "http://login.example.com/services/oauth2/token"
        .parse()
        .unwrap();
    let err = source(&client_credentials(url, ClientAuth::Body))
        .fetch_once()
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "insecure_url");
}

#[tokio::test]
async fn invalidated_token_is_refetched_once() {
    let server = server(|_| {}).await;
    let source = source(&client_credentials(server.url(), ClientAuth::Body));
    let stale = source.token().await.unwrap();
    source.invalidate(&stale);
    let fresh = source.token().await.unwrap();
    assert_ne!(stale.access_token, fresh.access_token);
    // A second report about the old token must not discard the new one.
    source.invalidate(&stale);
    let again = source.token().await.unwrap();
    assert!(Arc::ptr_eq(&fresh, &again));
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn fetch_once_bypasses_the_cache() {
    let server = server(|_| {}).await;
    let source = source(&client_credentials(server.url(), ClientAuth::Body));
    source.fetch_once().await.unwrap();
    source.fetch_once().await.unwrap();
    source.token().await.unwrap();
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn identical_credentials_share_one_source() {
    let (broker, _) = broker();
    let url: url::Url = "https://acme.my.salesforce.com/services/oauth2/token"
        .parse()
        .unwrap();
    let a = broker.source(&client_credentials(url.clone(), ClientAuth::Body));
    let b = broker.source(&client_credentials(url.clone(), ClientAuth::Body));
    assert!(Arc::ptr_eq(&a, &b));
    let mut other_secret = client_credentials(url, ClientAuth::Body);
    other_secret.flow = Flow::ClientCredentials {
        client_secret: Secret::new("different"),
        client_auth: ClientAuth::Body,
    };
    assert!(!Arc::ptr_eq(&a, &broker.source(&other_secret)));
}

#[tokio::test]
async fn logs_never_contain_the_token_or_secret() {
    let logs = crate::logfmt::LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = server(|c| c.client_auth = ts::ClientAuth::Basic).await;
    let source = source(&client_credentials(server.url(), ClientAuth::Basic));
    let _ = source.token().await;
    let token = source.fetch_once().await;
    let issued = server.last_issued_token().unwrap();
    server.set_mode(Mode::Status500);
    let _ = source.fetch_once().await;
    let logged = logs.text();
    assert!(logged.contains("obtained an access token"), "{logged}");
    assert!(logged.contains("token fetch failed"), "{logged}");
    assert!(!logged.contains(&issued));
    assert!(!logged.contains(CLIENT_SECRET));
    assert!(!format!("{token:?}").contains(&issued));
}

#[test]
fn settings_debug_hides_secrets() {
    let url: url::Url = "https://acme.my.salesforce.com/services/oauth2/token"
        .parse()
        .unwrap();
    let shown = format!("{:?}", client_credentials(url.clone(), ClientAuth::Body));
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
    // A key-shaped fragment, assembled so no key header sits in the repository.
    let fragment = format!("-----BEGIN {} KEY-----\nMIIE", "PRIVATE");
    let shown = format!("{:?}", jwt_bearer(url, &fragment));
    assert!(!shown.contains("MIIE"), "{shown}");
}

#[test]
fn validation_accepts_https_and_loopback_http() {
    for url in [
        "https://acme.my.salesforce.com/services/oauth2/token",
        "http://127.0.0.1:8080/services/oauth2/token",
        "http://localhost/services/oauth2/token",
        "http://[::1]:8080/services/oauth2/token",
    ] {
        let settings = client_credentials(url.parse().unwrap(), ClientAuth::Body);
        assert_eq!(validate_settings(&settings), Ok(()), "{url}");
    }
}

#[test]
fn validation_refuses_plain_http_to_remote_hosts() {
    let settings = client_credentials(
        "http://acme.my.salesforce.com/services/oauth2/token?x=1"
            .parse()
            .unwrap(),
        ClientAuth::Body,
    );
    let problem = validate_settings(&settings).unwrap_err();
    assert!(problem.contains("must use https"), "{problem}");
    assert!(!problem.contains("x=1"), "{problem}");
}

#[test]
fn validation_reports_every_problem() {
    let mut settings = client_credentials(
        "ftp://acme.my.salesforce.com/".parse().unwrap(),
        ClientAuth::Body,
    );
    settings.client_id = String::new();
    settings.ttl = Duration::ZERO;
    let problem = validate_settings(&settings).unwrap_err();
    for expected in ["https", "client_id", "ttl_seconds"] {
        assert!(problem.contains(expected), "{problem}");
    }
}

#[test]
fn validation_accepts_pkcs8_and_pkcs1_rsa_keys() {
    let url: url::Url = "https://login.salesforce.com/services/oauth2/token"
        .parse()
        .unwrap();
    for pem in [&rsa_key().pkcs8, &rsa_key().pkcs1] {
        assert_eq!(validate_settings(&jwt_bearer(url.clone(), pem)), Ok(()));
    }
}

#[test]
fn validation_refuses_a_non_rsa_key_without_echoing_it() {
    let url: url::Url = "https://login.salesforce.com/services/oauth2/token"
        .parse()
        .unwrap();
    let public_only = rsa_key().public.clone();
    for pem in ["not a key at all", public_only.as_str()] {
        let problem = validate_settings(&jwt_bearer(url.clone(), pem)).unwrap_err();
        assert!(problem.contains("private_key"), "{problem}");
        assert!(!problem.contains("not a key"), "{problem}");
        assert!(!problem.contains("MII"), "{problem}");
    }
}

#[test]
fn credential_key_changes_with_the_secret_but_never_holds_it() {
    let url: url::Url = "https://acme.my.salesforce.com/services/oauth2/token"
        .parse()
        .unwrap();
    let a = client_credentials(url.clone(), ClientAuth::Body);
    let mut b = a.clone();
    b.flow = Flow::ClientCredentials {
        client_secret: Secret::new("other"),
        client_auth: ClientAuth::Body,
    };
    assert!(a.key() == a.clone().key());
    assert!(a.key() != b.key());
    let basic = client_credentials(url, ClientAuth::Basic);
    assert!(a.key() != basic.key());
}
