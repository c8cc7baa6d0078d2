//! A real TLS client speaking raw HTTP/1.1, playing Salesforce against the proxy in tests and in
//! `obmguard-demo`.
//!
//! It writes exactly the bytes it is given (so tests can send malformed or smuggling-shaped
//! requests), can bind a chosen source address (e.g. `127.0.0.2`) and present a client
//! certificate, can send bytes before TLS (a load balancer's PROXY protocol header), and reads
//! one response at a time from a keep-alive connection. Reading is
//! bounded: at most [`MAX_HEAD`] bytes of head and [`MAX_BODY`] bytes of body, and every read of
//! a response is cut off after [`TlsClientConfig::timeout`].
//!
//! Under TLS 1.3 the server verifies the client certificate after the client considers the
//! handshake finished, so a refused certificate does not fail [`Connection::connect`]: it arrives
//! as an `Err` from the first read ([`Connection::read_response`] and the methods that call it).
//! Under TLS 1.2 ([`TlsVersion::Tls12`]) it fails `connect` itself.
//!
//! It deliberately does not pool connections, follow redirects, or speak HTTP/2.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::messages::find_element;
use crate::pki::{self, Identity};

/// Largest response head (status line and headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest response body accepted.
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// Default cut-off for reading one response.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which TLS versions the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    Any,
    /// TLS 1.2 only: a refused client certificate fails the handshake itself.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// How to connect. Build with [`TlsClientConfig::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct TlsClientConfig {
    /// PEM file of the CA(s) trusted for the server certificate.
    pub ca_pem: PathBuf,
    /// Client certificate chain and key PEM files to present, if any.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Local address to bind before connecting (port chosen by the OS), e.g. `127.0.0.2`.
    pub bind: Option<IpAddr>,
    /// Name sent in SNI, verified against the server certificate, and used in `Host`.
    pub server_name: String,
    /// TLS versions offered.
    pub version: TlsVersion,
    /// Cut-off for reading one response.
    pub timeout: Duration,
    /// Bytes written on the TCP connection before the TLS handshake: a PROXY protocol header,
    /// as a load balancer would send (empty: none).
    pub preamble: Vec<u8>,
}

impl TlsClientConfig {
    /// Trust `ca_pem`, present no client certificate, server name `localhost`, any TLS version,
    /// [`DEFAULT_TIMEOUT`].
    pub fn new(ca_pem: impl Into<PathBuf>) -> Self {
        TlsClientConfig {
            ca_pem: ca_pem.into(),
            client_cert: None,
            bind: None,
            server_name: pki::SERVER_NAME.to_string(),
            version: TlsVersion::Any,
            timeout: DEFAULT_TIMEOUT,
            preamble: Vec::new(),
        }
    }

    /// The same configuration presenting `identity` as client certificate.
    pub fn with_identity(mut self, identity: &Identity) -> Self {
        self.client_cert = Some((identity.cert.clone(), identity.key.clone()));
        self
    }

    /// The rustls configuration, to share between connections so that they resume TLS
    /// sessions (see [`Connection::connect_shared`]).
    pub fn shared(&self) -> io::Result<Arc<rustls::ClientConfig>> {
        self.rustls_config().map(Arc::new)
    }

    fn rustls_config(&self) -> io::Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in pki::load_certs(&self.ca_pem)? {
            roots.add(cert).map_err(io::Error::other)?;
        }
        let versions: &[&rustls::SupportedProtocolVersion] = match self.version {
            TlsVersion::Any => rustls::ALL_VERSIONS,
            TlsVersion::Tls12 => &[&rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = rustls::ClientConfig::builder_with_provider(pki::provider())
            .with_protocol_versions(versions)
            .map_err(io::Error::other)?
            .with_root_certificates(roots);
        match &self.client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(pki::load_certs(cert)?, pki::load_key(key)?)
                .map_err(io::Error::other),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// One HTTP response as read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Header fields in wire order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
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

    /// `Some(true)` / `Some(false)` for a body with `<Ack>true</Ack>` / `<Ack>false</Ack>`,
    /// `None` when there is no `Ack` element. Checks the body only, not the status.
    pub fn ack(&self) -> Option<bool> {
        let body = self.body_str();
        match find_element(&body, "Ack")?.text?.trim() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// The text of the SOAP `faultstring` (unescaped), when the body is a fault.
    pub fn fault_string(&self) -> Option<String> {
        let body = self.body_str();
        let raw = find_element(&body, "faultstring")?.text?;
        Some(
            quick_xml::escape::unescape(raw)
                .map(|t| t.into_owned())
                .unwrap_or_else(|_| raw.to_string()),
        )
    }
}

/// One TLS connection to a server, reusable for several requests (keep-alive).
pub struct Connection {
    stream: TlsStream<TcpStream>,
    /// Bytes read past the end of the previous response.
    buf: Vec<u8>,
    host: String,
    timeout: Duration,
}

impl Connection {
    /// Connect (binding `cfg.bind` if set) and complete the TLS handshake. See the module
    /// documentation for when a refused client certificate is reported.
    pub async fn connect(addr: SocketAddr, cfg: &TlsClientConfig) -> io::Result<Connection> {
        Self::connect_shared(addr, cfg, Arc::new(cfg.rustls_config()?)).await
    }

    /// As [`Connection::connect`] with a rustls configuration from [`TlsClientConfig::shared`]:
    /// a second connection with the same one resumes the first one's TLS session.
    pub async fn connect_shared(
        addr: SocketAddr,
        cfg: &TlsClientConfig,
        rustls: Arc<rustls::ClientConfig>,
    ) -> io::Result<Connection> {
        let tls = TlsConnector::from(rustls);
        let name = ServerName::try_from(cfg.server_name.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut tcp = match cfg.bind {
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await?
            }
            None => TcpStream::connect(addr).await?,
        };
        if !cfg.preamble.is_empty() {
            tcp.write_all(&cfg.preamble).await?;
        }
        let stream = tokio::time::timeout(cfg.timeout, tls.connect(name, tcp))
            .await
            .map_err(|_| timed_out("TLS handshake"))??;
        Ok(Connection {
            stream,
            buf: Vec::new(),
            host: format!("{}:{}", cfg.server_name, addr.port()),
            timeout: cfg.timeout,
        })
    }

    /// Write bytes as they are (no framing) and flush.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Whether the handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The negotiated TLS version.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.stream.get_ref().1.protocol_version()
    }

    /// Lowercase hex SHA-256 of the server's leaf certificate (DER), to see which certificate
    /// the server presented.
    pub fn server_cert_sha256(&self) -> Option<String> {
        use sha2::{Digest, Sha256};
        let leaf = self.stream.get_ref().1.peer_certificates()?.first()?;
        Some(hex::encode(Sha256::digest(leaf.as_ref())))
    }

    /// Write `bytes` as they are, then read one response.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<Response> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        self.read_response().await
    }

    /// POST `body` to `path` the way Salesforce does (`Host`, `Content-Type: text/xml;
    /// charset=UTF-8`, `SOAPAction: ""`, `Content-Length`), followed by `extra_headers`
    /// (appended, not replacing), then read one response.
    pub async fn post_soap(
        &mut self,
        path: &str,
        body: &[u8],
        extra_headers: &[(&str, &str)],
    ) -> io::Result<Response> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=UTF-8\r\n\
             SOAPAction: \"\"\r\nContent-Length: {}\r\n",
            self.host,
            body.len()
        );
        for (name, value) in extra_headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes).await
    }

    /// Write `bytes` in pieces of `chunk` bytes with `pause` between them (slow-client tests).
    /// Reads nothing.
    pub async fn write_slowly(
        &mut self,
        bytes: &[u8],
        chunk: usize,
        pause: Duration,
    ) -> io::Result<()> {
        for (i, piece) in bytes.chunks(chunk.max(1)).enumerate() {
            if i > 0 {
                tokio::time::sleep(pause).await;
            }
            self.stream.write_all(piece).await?;
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// Send TLS close_notify and close the write side.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }

    /// Read one response (skipping `1xx` interim ones). The body is delimited by
    /// `Transfer-Encoding: chunked`, `Content-Length`, or the end of the connection. Errs on a
    /// timeout, on a connection closed before a complete response, on a malformed head, and on
    /// a response over the size bounds.
    pub async fn read_response(&mut self) -> io::Result<Response> {
        tokio::time::timeout(self.timeout, self.read_response_inner())
            .await
            .map_err(|_| timed_out("reading the response"))?
    }

    async fn read_response_inner(&mut self) -> io::Result<Response> {
        loop {
            let head_len = self.fill_until_head().await?;
            let head = String::from_utf8_lossy(&self.buf[..head_len]).into_owned();
            self.buf.drain(..head_len);
            let (status, headers) = parse_head(&head)?;
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let mut response = Response {
                status,
                headers,
                body: Vec::new(),
            };
            let chunked = response
                .header("transfer-encoding")
                .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
            if status == 204 || status == 304 {
            } else if chunked {
                response.body = self.read_chunked().await?;
            } else if let Some(len) = response.header("content-length") {
                let len: usize = len
                    .trim()
                    .parse()
                    .map_err(|_| invalid("response Content-Length is not a number"))?;
                if len > MAX_BODY {
                    return Err(invalid("response body exceeds the test client's bound"));
                }
                self.fill_to(len).await?;
                response.body = self.buf.drain(..len).collect();
            } else {
                self.read_to_close().await?;
                response.body = std::mem::take(&mut self.buf);
            }
            return Ok(response);
        }
    }

    /// Read more bytes into `buf`; `Ok(0)` at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf
            .extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(n)
    }

    async fn fill_to(&mut self, len: usize) -> io::Result<()> {
        while self.buf.len() < len {
            if self.fill().await? == 0 {
                return Err(closed("before the end of the response body"));
            }
        }
        Ok(())
    }

    /// Length of the head including its blank line, once it is all in `buf`.
    async fn fill_until_head(&mut self) -> io::Result<usize> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                return Ok(pos + 4);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("response head exceeds the test client's bound"));
            }
            if self.fill().await? == 0 {
                return Err(closed(if self.buf.is_empty() {
                    "without a response"
                } else {
                    "in the middle of the response head"
                }));
            }
        }
    }

    /// One CRLF-terminated line, without its CRLF.
    async fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let mut line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                line.truncate(pos);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("chunk line exceeds the test client's bound"));
            }
            if self.fill().await? == 0 {
                return Err(closed("in the middle of a chunked body"));
            }
        }
    }

    async fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let line = String::from_utf8_lossy(&line);
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid("malformed chunk size in the response"))?;
            if size == 0 {
                // Trailer fields, up to the blank line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            if body.len().saturating_add(size) > MAX_BODY {
                return Err(invalid("response body exceeds the test client's bound"));
            }
            self.fill_to(size + 2).await?;
            body.extend(self.buf.drain(..size));
            if self.buf.drain(..2).as_slice() != b"\r\n" {
                return Err(invalid("chunk not followed by CRLF in the response"));
            }
        }
    }

    async fn read_to_close(&mut self) -> io::Result<()> {
        loop {
            match self.fill().await {
                Ok(0) => return Ok(()),
                Ok(_) if self.buf.len() > MAX_BODY => {
                    return Err(invalid("response body exceeds the test client's bound"))
                }
                Ok(_) => {}
                // A peer that closes without TLS close_notify still ends a close-delimited body.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

/// Connect, POST `body` to `path` with [`Connection::post_soap`], and read the response.
pub async fn post_once(
    addr: SocketAddr,
    cfg: &TlsClientConfig,
    path: &str,
    body: &[u8],
) -> io::Result<Response> {
    Connection::connect(addr, cfg)
        .await?
        .post_soap(path, body, &[])
        .await
}

fn parse_head(head: &str) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(invalid(
            "response does not start with an HTTP/1.x status line",
        ));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| invalid("response status code is not a number"))?;
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once(':')
                .map(|(n, v)| (n.to_string(), v.trim().to_string()))
                .ok_or_else(|| invalid("response header line without a colon"))
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok((status, headers))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn closed(when: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("server closed the connection {when}"),
    )
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("timed out {what}"))
}

/// Plain-HTTP GET (the admin listener: /healthz, /readyz, /metrics): (status, body), bounded
/// by a 5 s timeout.
pub async fn admin_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    admin_request(addr, "GET", path, None).await
}

/// One plain-HTTP request without a body to the admin listener, with `Authorization:
/// Bearer` when `bearer` is given: status and body.
pub async fn admin_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
) -> io::Result<(u16, String)> {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, io::Error>(String::from_utf8_lossy(&raw).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "admin listener did not answer"))??;
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{server_config, Pki};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    /// A one-shot mTLS server: reads whatever arrives and answers `response` to every read.
    async fn tls_server(config: rustls::ServerConfig, response: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(response).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    fn setup() -> (tempfile::TempDir, Pki) {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path()).unwrap();
        (dir, pki)
    }

    async fn mtls_server(pki: &Pki, response: &'static [u8]) -> SocketAddr {
        tls_server(
            server_config(&pki.server, Some(&pki.client_ca)).unwrap(),
            response,
        )
        .await
    }

    #[tokio::test]
    async fn completes_mtls_handshake_and_reads_response() {
        let (_dir, pki) = setup();
        let addr = mtls_server(&pki, OK).await;
        let cfg = TlsClientConfig::new(&pki.server_ca).with_identity(&pki.salesforce);
        let response = post_once(addr, &cfg, "/obm", b"<x/>").await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, b"hello");
        assert_eq!(response.header("content-length"), Some("5"));
    }

    #[tokio::test]
    async fn keeps_the_connection_alive_across_requests() {
        let (_dir, pki) = setup();
        let addr = mtls_server(&pki, OK).await;
        let cfg = TlsClientConfig::new(&pki.server_ca).with_identity(&pki.salesforce);
        let mut conn = Connection::connect(addr, &cfg).await.unwrap();
        for _ in 0..3 {
            assert_eq!(
                conn.post_soap("/obm", b"x", &[]).await.unwrap().body,
                b"hello"
            );
        }
    }

    /// The error that ends an exchange with an mTLS server presenting `identity`.
    async fn refusal(pki: &Pki, identity: &Identity) -> Option<String> {
        let addr = mtls_server(pki, OK).await;
        let mut cfg = TlsClientConfig::new(&pki.server_ca).with_identity(identity);
        cfg.version = TlsVersion::Tls13;
        let result = match Connection::connect(addr, &cfg).await {
            Err(e) => Err(e),
            Ok(mut conn) => conn.post_soap("/obm", b"x", &[]).await,
        };
        result.err().map(|e| e.to_string())
    }

    #[tokio::test]
    async fn expired_rogue_and_early_certs_are_refused_by_webpki() {
        let (_dir, pki) = setup();
        let cases = [
            (&pki.expired, "CertificateExpired"),
            (&pki.not_yet_valid, "CertificateExpired"),
            (&pki.rogue, "UnknownCA"),
            (&pki.self_signed_a, "UnknownCA"),
        ];
        for (id, alert) in cases {
            let err = refusal(&pki, id).await.unwrap_or_default();
            assert!(err.contains(alert), "{:?}: {err}", id.cert);
        }
        assert_eq!(refusal(&pki, &pki.two_cns).await, None);
    }

    #[tokio::test]
    async fn tls12_refusal_fails_the_handshake_itself() {
        let (_dir, pki) = setup();
        let addr = mtls_server(&pki, OK).await;
        let mut cfg = TlsClientConfig::new(&pki.server_ca).with_identity(&pki.expired);
        cfg.version = TlsVersion::Tls12;
        assert!(Connection::connect(addr, &cfg).await.is_err());
    }

    #[tokio::test]
    async fn missing_client_cert_is_refused() {
        let (_dir, pki) = setup();
        let addr = mtls_server(&pki, OK).await;
        let cfg = TlsClientConfig::new(&pki.server_ca);
        let result = match Connection::connect(addr, &cfg).await {
            Err(e) => Err(e),
            Ok(mut conn) => conn.post_soap("/obm", b"x", &[]).await,
        };
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn server_cert_from_unknown_ca_is_refused() {
        let (_dir, pki) = setup();
        let addr = mtls_server(&pki, OK).await;
        let cfg = TlsClientConfig::new(&pki.client_ca).with_identity(&pki.salesforce);
        assert!(Connection::connect(addr, &cfg).await.is_err());
    }

    #[tokio::test]
    async fn negotiates_requested_version_and_binds_source() {
        let (_dir, pki) = setup();
        let addr = mtls_server(&pki, OK).await;
        let mut cfg = TlsClientConfig::new(&pki.server_ca).with_identity(&pki.salesforce);
        cfg.version = TlsVersion::Tls12;
        cfg.bind = Some("127.0.0.1".parse().unwrap());
        let conn = Connection::connect(addr, &cfg).await.unwrap();
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        assert_eq!(
            conn.stream.get_ref().0.local_addr().unwrap().ip(),
            cfg.bind.unwrap()
        );
    }

    #[tokio::test]
    async fn decodes_chunked_and_skips_interim_responses() {
        let (_dir, pki) = setup();
        let addr = mtls_server(
            &pki,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\n<Ack\r\n10\r\n>false</Ack>xxxx\r\n0\r\n\r\n",
        )
        .await;
        let cfg = TlsClientConfig::new(&pki.server_ca).with_identity(&pki.salesforce);
        let response = post_once(addr, &cfg, "/obm", b"x").await.unwrap();
        assert_eq!(response.status, 502);
        assert_eq!(response.body_str(), "<Ack>false</Ack>xxxx");
        assert_eq!(response.ack(), Some(false));
    }

    #[tokio::test]
    async fn truncated_body_is_an_error_not_a_hang() {
        let (_dir, pki) = setup();
        let config = server_config(&pki.server, None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tls.read(&mut buf).await;
            let _ = tls
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
                .await;
            let _ = tls.shutdown().await;
        });
        let cfg = TlsClientConfig::new(&pki.server_ca);
        let err = post_once(addr, &cfg, "/obm", b"x").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn parse_head_refuses_garbage() {
        assert!(parse_head("SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_head("HTTP/1.1 abc OK\r\n\r\n").is_err());
        let (status, headers) = parse_head("HTTP/1.1 200 OK\r\nA: b \r\n\r\n").unwrap();
        assert_eq!((status, headers), (200, vec![("A".into(), "b".into())]));
    }
}
