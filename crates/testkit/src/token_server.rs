//! A small Salesforce-like OAuth token endpoint over real HTTP/1.1, for tests and
//! `obmguard-demo`. It answers `POST /services/oauth2/token` for the client-credentials grant
//! (secret in the body or in HTTP Basic, per its config) and the JWT bearer grant (RS256
//! signature checked with a configured public key, plus `iss`/`sub`/`aud`/`exp`), in
//! Salesforce's shape: no `expires_in` unless configured, `instance_url`, `issued_at` in ms as
//! a string. Failure modes can be switched at runtime ([`Mode`]).
//!
//! It is a test double, not a security boundary: it binds 127.0.0.1 only, keeps issued tokens
//! in memory and compares secrets in plain (non constant) time.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use rand::Rng;
use tokio::task::{JoinHandle, JoinSet};

/// How a client-credentials request must present the client secret (the same two ways as
/// obmguard's `token::ClientAuth`; a type of its own so the test kit does not depend on obmguard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` as form fields in the request body.
    Body,
    /// HTTP Basic authentication (RFC 6749 section 2.3.1).
    Basic,
}

/// Path Salesforce serves tokens on.
pub const TOKEN_PATH: &str = "/services/oauth2/token";
const BODY_LIMIT: usize = 64 * 1024;
/// Salesforce refuses assertions that expire further ahead than a few minutes.
const MAX_ASSERTION_LIFETIME_S: u64 = 300;

/// What the server accepts and what it issues.
#[derive(Debug, Clone)]
pub struct TokenServerConfig {
    /// Expected `client_id` (also the JWT `iss`).
    pub client_id: String,
    /// Expected client secret for the client-credentials grant.
    pub client_secret: String,
    /// Where the client-credentials grant must carry the secret.
    pub client_auth: ClientAuth,
    /// Enables the JWT bearer grant.
    pub jwt: Option<JwtExpectations>,
    /// Issued tokens are `<prefix>!<unique random>`.
    pub token_prefix: String,
    /// `instance_url` in every answer.
    pub instance_url: String,
    /// Sent as `expires_in` when set (Salesforce normally sends none).
    pub expires_in: Option<u64>,
}

impl TokenServerConfig {
    /// Client credentials in the request body; tokens like Salesforce's.
    pub fn client_credentials(client_id: &str, client_secret: &str) -> Self {
        TokenServerConfig {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            client_auth: ClientAuth::Body,
            jwt: None,
            token_prefix: "00D5e000000AbCd".to_owned(),
            instance_url: "https://acme.my.salesforce.com".to_owned(),
            expires_in: None,
        }
    }
}

/// How a JWT bearer assertion must look.
#[derive(Debug, Clone)]
pub struct JwtExpectations {
    /// PEM of the RSA public key ("BEGIN PUBLIC KEY" or "BEGIN RSA PUBLIC KEY").
    pub public_key_pem: String,
    /// Expected `sub`.
    pub username: String,
    /// Expected `aud`.
    pub audience: String,
}

/// How the server answers every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Like Salesforce.
    Ok,
    /// 500 with a plain-text body.
    Status500,
    /// 200 with an HTML page, like a login page or a captive portal.
    Html,
    /// 302 to another URL.
    Redirect,
    /// Accepts the request and never answers.
    Hang,
    /// 200 JSON larger than any sane token answer (100 KiB).
    Oversized,
}

/// A running token endpoint; stops (with all its connections) when dropped.
pub struct TokenServer {
    url: url::Url,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    config: TokenServerConfig,
    mode: Mutex<Mode>,
    requests: AtomicUsize,
    issued: AtomicUsize,
    last_token: Mutex<Option<String>>,
}

impl TokenServer {
    /// Binds 127.0.0.1 on an ephemeral port and serves on the current tokio runtime.
    pub async fn start(config: TokenServerConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let url = url::Url::parse(&format!("http://{addr}{TOKEN_PATH}"))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let shared = Arc::new(Shared {
            config,
            mode: Mutex::new(Mode::Ok),
            requests: AtomicUsize::new(0),
            issued: AtomicUsize::new(0),
            last_token: Mutex::new(None),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(TokenServer { url, shared, task })
    }

    /// The token URL, e.g. `http://127.0.0.1:41234/services/oauth2/token`.
    pub fn url(&self) -> url::Url {
        self.url.clone()
    }

    /// Requests received so far (any path, any outcome).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// The last access token issued, to search logs and forwarded bodies for it.
    pub fn last_issued_token(&self) -> Option<String> {
        lock(&self.shared.last_token).clone()
    }

    /// Changes how the following requests are answered.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let mode = *lock(&shared.mode);
    match mode {
        Mode::Ok => {}
        Mode::Status500 => {
            return reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "internal error",
            )
        }
        Mode::Html => {
            return reply(
                StatusCode::OK,
                "text/html; charset=UTF-8",
                "<html><body>Please log in</body></html>",
            )
        }
        Mode::Redirect => {
            let mut response = reply(StatusCode::FOUND, "text/plain", "moved");
            response.headers_mut().insert(
                hyper::header::LOCATION,
                hyper::header::HeaderValue::from_static("http://127.0.0.1:9/elsewhere"),
            );
            return response;
        }
        Mode::Hang => std::future::pending().await,
        Mode::Oversized => {
            let padding = "x".repeat(100 * 1024);
            return reply(
                StatusCode::OK,
                "application/json",
                format!(r#"{{"padding":"{padding}"}}"#),
            );
        }
    }
    if request.uri().path() != TOKEN_PATH {
        return oauth_error(StatusCode::NOT_FOUND, "not_found", "unknown path");
    }
    if request.method() != hyper::Method::POST {
        return oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "must use HTTP POST",
        );
    }
    let basic = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let Ok(body) = Limited::new(request.into_body(), BODY_LIMIT)
        .collect()
        .await
    else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "body too large");
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body.to_bytes())
        .into_owned()
        .collect();
    let field = |name: &str| {
        form.iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let config = &shared.config;
    let authorised = match field("grant_type") {
        Some("client_credentials") => {
            let presented = match config.client_auth {
                ClientAuth::Body => field("client_id").zip(field("client_secret")),
                ClientAuth::Basic => basic.as_ref().map(|(id, s)| (id.as_str(), s.as_str())),
            };
            if presented != Some((config.client_id.as_str(), config.client_secret.as_str())) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_client",
                    "invalid client credentials",
                );
            }
            true
        }
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") if config.jwt.is_some() => {
            field("assertion").is_some_and(|assertion| assertion_ok(config, assertion))
        }
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "grant type not supported",
            )
        }
    };
    if !authorised {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "invalid assertion",
        );
    }
    issue(shared)
}

fn assertion_ok(config: &TokenServerConfig, assertion: &str) -> bool {
    let Some(jwt) = &config.jwt else {
        return false;
    };
    let Ok(key) = jsonwebtoken::DecodingKey::from_rsa_pem(jwt.public_key_pem.as_bytes()) else {
        return false;
    };
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&[&config.client_id]);
    validation.set_audience(&[&jwt.audience]);
    validation.sub = Some(jwt.username.clone());
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    #[derive(serde::Deserialize)]
    struct Exp {
        exp: u64,
    }
    jsonwebtoken::decode::<Exp>(assertion, &key, &validation)
        .is_ok_and(|data| data.claims.exp <= now_ms() / 1000 + MAX_ASSERTION_LIFETIME_S)
}

fn issue(shared: &Shared) -> Response<Full<Bytes>> {
    let config = &shared.config;
    let serial = shared.issued.fetch_add(1, Ordering::SeqCst);
    let mut rng = rand::thread_rng();
    let random: String = (0..40)
        .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
        .collect();
    let token = format!("{}!AQ{serial}.{random}", config.token_prefix);
    let signature: [u8; 32] = rng.gen();
    let mut body = serde_json::json!({
        "access_token": token,
        "instance_url": config.instance_url,
        "id": "https://login.salesforce.com/id/00D5e000000AbCdEAK/0055e000001XyZaAAK",
        "token_type": "Bearer",
        "issued_at": now_ms().to_string(),
        "signature": STANDARD.encode(signature),
    });
    if let (Some(expires_in), Some(fields)) = (config.expires_in, body.as_object_mut()) {
        fields.insert("expires_in".to_owned(), expires_in.into());
    }
    *lock(&shared.last_token) = Some(token);
    reply(
        StatusCode::OK,
        "application/json;charset=UTF-8",
        body.to_string(),
    )
}

/// `Basic base64(urlencode(id):urlencode(secret))`, as RFC 6749 section 2.3.1 sends it.
fn parse_basic(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    // A lone form-urlencoded component decodes as a key with no value.
    let unescape = |part: &str| {
        url::form_urlencoded::parse(part.as_bytes())
            .next()
            .map(|(key, _)| key.into_owned())
            .unwrap_or_default()
    };
    Some((unescape(id), unescape(secret)))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": error, "error_description": description });
    reply(status, "application/json;charset=UTF-8", body.to_string())
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
