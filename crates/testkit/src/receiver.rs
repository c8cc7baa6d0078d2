//! A sample legacy receiver: a real HTTP/1.1 server (hyper) on `127.0.0.1:0`, plain or HTTPS,
//! that records every request it receives and answers the way the current [`Behaviour`] says:
//! a proper Ack, a nack, a SOAP fault, an HTML page, a bare status, nothing at all, a slow Ack,
//! a huge body, garbage, or a closed connection.
//!
//! It plays the receiver behind the proxy in the integration tests, in `obmguard-demo`, and as
//! `obmguard-demo sample-receiver` (bound with [`Receiver::start_on`], logging with
//! [`Receiver::set_logging`]: one line per request, the SessionId reduced to its length).
//! It deliberately does not validate the SOAP it receives: tests assert on [`Received`]. Request
//! bodies are bounded at [`MAX_REQUEST_BODY`] (larger ones get 413 and are recorded empty).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::messages::find_element;

/// Largest request body the receiver reads.
pub const MAX_REQUEST_BODY: usize = 64 * 1024 * 1024;
/// While logging is on, only this many of the latest requests are kept, so a long-running
/// sample receiver does not grow without bound.
pub const LOGGING_KEEP: usize = 100;

/// The exact body of a successful answer.
pub const ACK_BODY: &str = r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;
/// The exact body of a nack.
pub const NACK_BODY: &str = r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><notificationsResponse xmlns="http://soap.sforce.com/2005/09/outbound"><Ack>false</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>"#;
/// The body of [`Behaviour::Html`].
pub const HTML_BODY: &str =
    "<!DOCTYPE html><html><head><title>Sign in</title></head><body><h1>Sign in</h1></body></html>";
/// The body of [`Behaviour::Garbage`]: fixed bytes that are neither XML nor UTF-8.
pub const GARBAGE_BODY: &[u8] = b"\x00\x9f\xff}{ not <xml &&& \x01\x02\x03 ]]> <<< \xfe";

/// How the receiver answers. Switch at run time with [`Receiver::set_behaviour`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// 200, `text/xml`, [`ACK_BODY`].
    Ack,
    /// 200, `text/xml`, [`NACK_BODY`].
    Nack,
    /// 500, `text/xml`, a SOAP fault (`soapenv:Server`) with this `faultstring`.
    Fault(String),
    /// 200, `text/html`, [`HTML_BODY`] (a login page, as a misrouted receiver would answer).
    Html,
    /// This status (500 if invalid) with an empty body.
    Status(u16),
    /// Never answers; the connection stays open until the client or [`Receiver::shutdown`].
    Hang,
    /// Answers like `Ack` after this delay.
    SlowAck(Duration),
    /// 200, `text/xml`, a body of this many `x` bytes.
    Huge(usize),
    /// 200, `text/xml`, [`GARBAGE_BODY`].
    Garbage,
    /// Reads the request, then closes the connection without answering.
    Reset,
}

/// One request as the receiver got it. Its `Debug` shows header names and the body length
/// only: the body carries a session id or an injected token.
#[derive(Clone)]
pub struct Received {
    /// Request method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header fields in order (values lossily decoded), names lower-cased by hyper.
    pub headers: Vec<(String, String)>,
    /// The whole body.
    pub body: Vec<u8>,
    /// The direct peer (the proxy).
    pub peer: SocketAddr,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Received")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("header_names", &names)
            .field("body_len", &self.body.len())
            .field("peer", &self.peer)
            .finish()
    }
}

impl Received {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The raw text of the first `SessionId` element, as a legacy receiver would take it;
    /// `None` when the element is missing, nil or self-closing.
    pub fn session_id_value(&self) -> Option<String> {
        let body = self.body_str();
        let element = find_element(&body, "SessionId")?;
        if element.is_nil() {
            return None;
        }
        element.text.map(str::to_string)
    }

    /// Whether the first `SessionId` element is present and `xsi:nil="true"`.
    pub fn is_session_id_nil(&self) -> bool {
        find_element(&self.body_str(), "SessionId").is_some_and(|e| e.is_nil())
    }

    /// What the first `SessionId` element held, safe to log: `absent`, `nil`, `empty`, or
    /// `a value of N bytes` (never the value itself).
    pub fn session_id_summary(&self) -> String {
        let body = self.body_str();
        match find_element(&body, "SessionId") {
            None => "absent".to_string(),
            Some(e) if e.is_nil() => "nil".to_string(),
            Some(e) => match e.text.map(str::trim).unwrap_or_default().len() {
                0 => "empty".to_string(),
                n => format!("a value of {n} bytes"),
            },
        }
    }
}

#[derive(Debug)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Received>>,
    logging: AtomicBool,
}

/// A running receiver. Dropping it stops it like [`Receiver::shutdown`].
#[derive(Debug)]
pub struct Receiver {
    addr: SocketAddr,
    scheme: &'static str,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Start a plain-HTTP receiver on `127.0.0.1` with an OS-chosen port.
    pub async fn start(behaviour: Behaviour) -> io::Result<Receiver> {
        Self::bind(SocketAddr::from(([127, 0, 0, 1], 0)), behaviour, None).await
    }

    /// Start a plain-HTTP receiver on `addr` (port 0: chosen by the OS).
    pub async fn start_on(addr: SocketAddr, behaviour: Behaviour) -> io::Result<Receiver> {
        Self::bind(addr, behaviour, None).await
    }

    /// Start an HTTPS receiver presenting the certificate of `config` (for example
    /// [`crate::pki::server_config`]`(&pki.server, None)`).
    pub async fn start_tls(
        behaviour: Behaviour,
        config: rustls::ServerConfig,
    ) -> io::Result<Receiver> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::bind(addr, behaviour, Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn bind(
        addr: SocketAddr,
        behaviour: Behaviour,
        tls: Option<TlsAcceptor>,
    ) -> io::Result<Receiver> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(behaviour),
            requests: Mutex::new(Vec::new()),
            logging: AtomicBool::new(false),
        });
        let task = tokio::spawn(accept_loop(listener, tls, shared.clone()));
        Ok(Receiver {
            addr,
            scheme,
            shared,
            task,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>` (or `https://`), `path` starting with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// Answer later requests, including ones on open connections, this way.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *lock(&self.shared.behaviour) = behaviour;
    }

    /// Log one `info` line per later request (path, peer, body size, and what its SessionId
    /// held per [`Received::session_id_summary`]), keeping only the latest [`LOGGING_KEEP`].
    pub fn set_logging(&self, on: bool) {
        self.shared.logging.store(on, Ordering::Relaxed);
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.shared.requests).clone()
    }

    /// How many requests were received.
    pub fn count(&self) -> usize {
        lock(&self.shared.requests).len()
    }

    /// The latest request.
    pub fn last(&self) -> Option<Received> {
        lock(&self.shared.requests).last().cloned()
    }

    /// Forget the recorded requests.
    pub fn clear(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Stop listening and drop every open connection (hanging ones included).
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A poisoned lock only means a test thread panicked while holding it; the data is still fine.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Accepts connections; aborting this task drops the JoinSet, which aborts every connection.
async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(req, peer, shared.clone()));
            let builder = http1::Builder::new();
            // Connection errors (including the deliberate Reset) end only this connection.
            let _ = match tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(stream) => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Err(_) => return,
                },
                None => builder.serve_connection(TokioIo::new(tcp), service).await,
            };
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, io::Error> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_REQUEST_BODY).collect().await;
    let too_large = body.is_err();
    let received = Received {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.map(|b| b.to_bytes().to_vec()).unwrap_or_default(),
        peer,
    };
    if shared.logging.load(Ordering::Relaxed) {
        tracing::info!(
            method = %received.method,
            path = %received.path,
            peer = %received.peer,
            body_bytes = received.body.len(),
            session_id = %received.session_id_summary(),
            "sample receiver got a request; answering {:?}",
            lock(&shared.behaviour).clone()
        );
        let mut requests = lock(&shared.requests);
        let excess = (requests.len() + 1).saturating_sub(LOGGING_KEEP);
        requests.drain(..excess);
        requests.push(received);
    } else {
        lock(&shared.requests).push(received);
    }
    if too_large {
        return Ok(reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            "text/plain",
            Bytes::new(),
        ));
    }
    let behaviour = lock(&shared.behaviour).clone();
    let xml = "text/xml; charset=utf-8";
    Ok(match behaviour {
        Behaviour::Ack => reply(StatusCode::OK, xml, ACK_BODY),
        Behaviour::Nack => reply(StatusCode::OK, xml, NACK_BODY),
        Behaviour::Fault(message) => {
            reply(StatusCode::INTERNAL_SERVER_ERROR, xml, fault_body(&message))
        }
        Behaviour::Html => reply(StatusCode::OK, "text/html; charset=utf-8", HTML_BODY),
        Behaviour::Status(code) => reply(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "text/plain",
            Bytes::new(),
        ),
        Behaviour::Hang => {
            let never: Infallible = std::future::pending().await;
            match never {}
        }
        Behaviour::SlowAck(delay) => {
            tokio::time::sleep(delay).await;
            reply(StatusCode::OK, xml, ACK_BODY)
        }
        Behaviour::Huge(size) => reply(StatusCode::OK, xml, vec![b'x'; size]),
        Behaviour::Garbage => reply(StatusCode::OK, xml, GARBAGE_BODY),
        // hyper closes the connection without a response when the service fails.
        Behaviour::Reset => {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "receiver told to reset",
            ))
        }
    })
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, value);
    }
    response
}

fn fault_body(message: &str) -> String {
    let message = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>soapenv:Server</faultcode><faultstring>{message}</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{post_once, Connection, TlsClientConfig};
    use crate::messages::{Sample, SESSION_ID};
    use crate::pki::{server_config, Pki};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// A minimal plain-HTTP exchange (the test kit's client speaks TLS only).
    async fn post(receiver: &Receiver, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let mut tcp = TcpStream::connect(receiver.addr()).await?;
        let head = format!(
            "POST /obm?x=1 HTTP/1.1\r\nHost: r\r\nContent-Type: text/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await?;
        tcp.write_all(body).await?;
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw);
        let status = text
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no response"))?;
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
        Ok((status, raw[split..].to_vec()))
    }

    #[tokio::test]
    async fn records_requests_and_answers_ack() {
        let receiver = Receiver::start(Behaviour::Ack).await.unwrap();
        let body = Sample::default().body();
        let (status, answer) = post(&receiver, &body).await.unwrap();
        assert_eq!((status, answer.as_slice()), (200, ACK_BODY.as_bytes()));
        let got = receiver.last().unwrap();
        assert_eq!(receiver.count(), 1);
        assert_eq!(
            (got.method.as_str(), got.path.as_str()),
            ("POST", "/obm?x=1")
        );
        assert_eq!(got.body, body);
        assert_eq!(got.header("Content-Type"), Some("text/xml"));
        assert_eq!(got.session_id_value().as_deref(), Some(SESSION_ID));
        assert!(!got.is_session_id_nil());
        assert!(!format!("{got:?}").contains(SESSION_ID));
        receiver.clear();
        assert_eq!(receiver.count(), 0);
    }

    #[tokio::test]
    async fn sees_nil_session_id() {
        let receiver = Receiver::start(Behaviour::Ack).await.unwrap();
        let body = Sample {
            session_id: None,
            ..Sample::default()
        }
        .body();
        post(&receiver, &body).await.unwrap();
        let got = receiver.last().unwrap();
        assert!(got.is_session_id_nil());
        assert_eq!(got.session_id_value(), None);
    }

    #[tokio::test]
    async fn summarises_the_session_id_without_its_value() {
        let receiver = Receiver::start_on("127.0.0.1:0".parse().unwrap(), Behaviour::Ack)
            .await
            .unwrap();
        receiver.set_logging(true);
        let nil = Sample {
            session_id: None,
            ..Sample::default()
        };
        for body in [Sample::default().body(), nil.body(), b"<x/>".to_vec()] {
            post(&receiver, &body).await.unwrap();
        }
        let seen: Vec<String> = receiver
            .requests()
            .iter()
            .map(Received::session_id_summary)
            .collect();
        let value = format!("a value of {} bytes", SESSION_ID.len());
        assert_eq!(seen, [value.as_str(), "nil", "absent"]);
    }

    #[tokio::test]
    async fn logging_keeps_only_the_latest_requests() {
        let receiver = Receiver::start(Behaviour::Ack).await.unwrap();
        receiver.set_logging(true);
        for i in 0..LOGGING_KEEP + 3 {
            post(&receiver, format!("<m>{i}</m>").as_bytes())
                .await
                .unwrap();
        }
        assert_eq!(receiver.count(), LOGGING_KEEP);
        let last = format!("<m>{}</m>", LOGGING_KEEP + 2);
        assert_eq!(receiver.last().unwrap().body, last.as_bytes());
    }

    #[tokio::test]
    async fn answers_each_behaviour() {
        let receiver = Receiver::start(Behaviour::Nack).await.unwrap();
        let cases: Vec<(Behaviour, u16, Vec<u8>)> = vec![
            (Behaviour::Nack, 200, NACK_BODY.into()),
            (Behaviour::Html, 200, HTML_BODY.into()),
            (Behaviour::Status(503), 503, vec![]),
            (Behaviour::Status(7), 500, vec![]),
            (Behaviour::Huge(100_000), 200, vec![b'x'; 100_000]),
            (Behaviour::Garbage, 200, GARBAGE_BODY.into()),
            (
                Behaviour::SlowAck(Duration::from_millis(10)),
                200,
                ACK_BODY.into(),
            ),
        ];
        for (behaviour, status, body) in cases {
            receiver.set_behaviour(behaviour.clone());
            let got = post(&receiver, b"<x/>").await.unwrap();
            assert_eq!(got, (status, body), "{behaviour:?}");
        }
        receiver.set_behaviour(Behaviour::Fault("db <down>".into()));
        let (status, body) = post(&receiver, b"<x/>").await.unwrap();
        assert_eq!(status, 500);
        let body = String::from_utf8(body).unwrap();
        assert!(body.contains("<faultstring>db &lt;down&gt;</faultstring>"));
        assert!(body.contains("<faultcode>soapenv:Server</faultcode>"));
        assert_eq!(receiver.count(), 8);
    }

    #[tokio::test]
    async fn reset_closes_without_answer_but_records() {
        let receiver = Receiver::start(Behaviour::Reset).await.unwrap();
        assert!(post(&receiver, b"<x/>").await.is_err());
        assert_eq!(receiver.count(), 1);
    }

    #[tokio::test]
    async fn hang_never_answers_until_shutdown() {
        let receiver = Receiver::start(Behaviour::Hang).await.unwrap();
        let pending = tokio::time::timeout(Duration::from_millis(200), post(&receiver, b"x")).await;
        assert!(pending.is_err(), "a hanging receiver answered");
        assert_eq!(receiver.count(), 1);
        let addr = receiver.addr();
        receiver.shutdown();
        // After shutdown the open connection is dropped and nothing listens any more.
        let mut refused = false;
        for _ in 0..50 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused);
    }

    #[tokio::test]
    async fn https_receiver_answers_the_test_client() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path()).unwrap();
        let receiver =
            Receiver::start_tls(Behaviour::Ack, server_config(&pki.server, None).unwrap())
                .await
                .unwrap();
        assert!(receiver.url("/obm").starts_with("https://127.0.0.1:"));
        let cfg = TlsClientConfig::new(&pki.server_ca);
        let response = post_once(receiver.addr(), &cfg, "/obm", b"<x/>")
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.ack(), Some(true));
        let mut conn = Connection::connect(receiver.addr(), &cfg).await.unwrap();
        receiver.set_behaviour(Behaviour::Fault("boom".into()));
        let fault = conn.post_soap("/obm", b"<x/>", &[]).await.unwrap();
        assert_eq!(fault.fault_string().as_deref(), Some("boom"));
        let got = receiver.last().unwrap();
        assert_eq!(got.header("soapaction"), Some("\"\""));
        assert_eq!(
            got.header("host"),
            Some(&*format!("localhost:{}", receiver.addr().port()))
        );
    }
}
