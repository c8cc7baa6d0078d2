//! The admin listener: `/healthz`, `/readyz` and `/metrics`, plain HTTP.
//!
//! It is meant for loopback or a monitoring network (`check` warns otherwise) and exposes
//! nothing secret: health, readiness and metrics whose labels are route names and fixed words.

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

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        match (s.req_header().method.as_str(), s.req_header().uri.path()) {
            ("GET", "/healthz") => reply(200, "text/plain", "ok\n"),
            ("GET", "/readyz") if self.rt.is_ready() => reply(200, "text/plain", "ready\n"),
            ("GET", "/readyz") => reply(503, "text/plain", "not ready\n"),
            ("GET", "/metrics") => reply(200, prometheus::TEXT_FORMAT, self.rt.metrics.render()),
            _ => reply(404, "text/plain", "try /healthz, /readyz or /metrics\n"),
        }
    }
}
