//! A tiny HTTPS server that answers every GET with one settable document: stands in for
//! `https://ip-ranges.salesforce.com/ip-ranges.json` in tests of `import-ranges --fetch` and
//! of the periodic refresh. Real TLS (rustls) and real HTTP/1.1 (hyper), on `127.0.0.1:0`.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

struct Shared {
    answer: Mutex<(u16, Bytes)>,
    requests: AtomicUsize,
}

/// The server; stops when dropped.
pub struct FileServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FileServer {
    /// Serve `body` with status 200 over TLS with `config` (e.g.
    /// [`crate::pki::server_config`]`(&pki.server, None)`).
    pub async fn start(config: rustls::ServerConfig, body: impl Into<Bytes>) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            answer: Mutex::new((200, body.into())),
            requests: AtomicUsize::new(0),
        });
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |_req| {
                        s.requests.fetch_add(1, Ordering::Relaxed);
                        let (status, body) =
                            s.answer.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let mut r = Response::new(Full::new(body));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Ok(FileServer { addr, shared, task })
    }

    /// `https://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{}", self.addr, path)
    }

    /// Answer later requests with `status` and `body`.
    pub fn set(&self, status: u16, body: impl Into<Bytes>) {
        *self.shared.answer.lock().unwrap_or_else(|p| p.into_inner()) = (status, body.into());
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
