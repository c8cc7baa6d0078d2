//! The admin listener: `/healthz`, `/readyz`, `/metrics` and `/report`, plain HTTP.
//!
//! It is meant for loopback or a monitoring network (`check` warns otherwise) and exposes
//! nothing secret: health, readiness, metrics whose labels are route names and fixed words,
//! and the migration page (identifiers and counts from the audit file, every one escaped;
//! see [`crate::report::html`]). The page is rebuilt from the audit file on each request, off
//! the async threads; the file is streamed, so memory follows its distinct actions, not its
//! size.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::runtime::Runtime;

pub struct Admin {
    rt: Arc<Runtime>,
}

impl Admin {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Admin { rt }
    }
}

fn reply(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .body(body)
        .unwrap_or_default()
}

impl Admin {
    async fn report(&self) -> Response<Vec<u8>> {
        let audit_log = self.rt.current().config.server.audit_log.clone();
        if audit_log == "-" {
            return reply(
                404,
                "text/plain",
                "no report: [server] audit_log is standard output; set it to a file to get the migration page\n",
            );
        }
        let path = std::path::PathBuf::from(&audit_log);
        let page = tokio::task::spawn_blocking(move || {
            crate::report::Audit::read(&path)
                .map(|a| crate::report::html::render(&a, &audit_log, std::time::SystemTime::now()))
        })
        .await;
        match page {
            Ok(Ok(html)) => {
                let mut r = reply(200, "text/html; charset=utf-8", html);
                let h = r.headers_mut();
                if let Ok(v) = http::HeaderValue::from_str(crate::report::html::CSP) {
                    h.insert("Content-Security-Policy", v);
                }
                h.insert(
                    "X-Content-Type-Options",
                    http::HeaderValue::from_static("nosniff"),
                );
                h.insert("Cache-Control", http::HeaderValue::from_static("no-store"));
                r
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot build the migration page");
                reply(503, "text/plain", format!("{e}\n"))
            }
            Err(_) => reply(500, "text/plain", "the report task failed; see the log\n"),
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        match (s.req_header().method.as_str(), s.req_header().uri.path()) {
            ("GET", "/healthz") => reply(200, "text/plain", "ok\n"),
            ("GET", "/readyz") if self.rt.is_ready() => reply(200, "text/plain", "ready\n"),
            ("GET", "/readyz") => reply(503, "text/plain", "not ready\n"),
            ("GET", "/metrics") => reply(200, prometheus::TEXT_FORMAT, self.rt.metrics.render()),
            ("GET", "/report") => self.report().await,
            _ => reply(
                404,
                "text/plain",
                "try /healthz, /readyz, /metrics or /report\n",
            ),
        }
    }
}
