//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/report` and `/queue`, plain HTTP.
//!
//! It is meant for loopback or a monitoring network (`check` warns otherwise) and exposes
//! nothing secret: health, readiness, metrics whose labels are route names and fixed words,
//! and the migration page (identifiers and counts from the audit file, every one escaped;
//! see [`crate::report::html`]). The page is rebuilt from the audit file on each request, off
//! the async threads; the file is streamed, so memory follows its distinct actions, not its
//! size.
//!
//! `/queue` is the queue as `obmguard queue` sees it ([`crate::queue_ops`]): `GET /queue`
//! lists (query `route`, `state`, `notification_id`, `older_than`, `limit`, `id`), `GET
//! /queue/{id}` shows one message's metadata, and `POST /queue/retry|replay|drop` (same
//! query) change it. Reading is open to whoever reaches the listener, like `/metrics`;
//! changing, and a message's body (`?body=true`), need `Authorization: Bearer` with
//! `[store] admin_token`, compared in constant time. Without a configured token they are
//! refused here and stay CLI-only.

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

fn json<T: serde::Serialize + ?Sized>(status: u16, v: &T) -> Response<Vec<u8>> {
    match serde_json::to_vec_pretty(v) {
        Ok(b) => reply(status, "application/json", b),
        Err(_) => reply(500, "text/plain", "cannot encode the answer\n"),
    }
}

/// `None` if the request carries the configured admin token, else the refusal to send.
fn unauthorized(
    s: &ServerSession,
    token: Option<&crate::secret::Secret>,
) -> Option<Response<Vec<u8>>> {
    let Some(token) = token else {
        return Some(reply(
            403,
            "text/plain",
            "changing the queue here needs [store] admin_token in obmguard.toml; until then use `obmguard queue` on the host\n",
        ));
    };
    let given = s
        .req_header()
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|v| crate::secret::Secret::new(v.trim()));
    match given {
        Some(g) if g.ct_eq(token) => None,
        _ => {
            let mut r = reply(
                401,
                "text/plain",
                "a valid `Authorization: Bearer <admin token>` is needed\n",
            );
            r.headers_mut().insert(
                "WWW-Authenticate",
                http::HeaderValue::from_static("Bearer realm=\"obmguard\""),
            );
            Some(r)
        }
    }
}

fn selection(query: Option<&str>) -> (crate::queue_ops::Selection, bool) {
    let mut sel = crate::queue_ops::Selection::default();
    let mut body = false;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let v = v.into_owned();
        match k.as_ref() {
            "route" => sel.route = Some(v),
            "state" => sel.state = Some(v),
            "notification_id" => sel.notification_id = Some(v),
            "older_than" => sel.older_than = Some(v),
            "limit" => sel.limit = v.parse().ok(),
            "id" => sel.id = v.parse().ok(),
            "body" => body = v == "true" || v == "1",
            _ => {}
        }
    }
    (sel, body)
}

impl Admin {
    async fn queue(&self, s: &ServerSession) -> Response<Vec<u8>> {
        use crate::queue_ops::{self, Change, OpError};
        let Some(store) = self.rt.store.as_deref() else {
            return reply(
                404,
                "text/plain",
                "no queue: obmguard.toml has no [store]\n",
            );
        };
        let gen = self.rt.current();
        let token = gen
            .config
            .store
            .as_ref()
            .and_then(|c| c.admin_token.as_ref());
        let req = s.req_header();
        let (sel, body) = selection(req.uri.query());
        let path = req.uri.path().trim_end_matches('/');
        let failed = |e: OpError| match e {
            OpError::Selection(m) => reply(400, "text/plain", format!("{m}\n")),
            OpError::Store(e) => {
                tracing::error!(error = %e, "admin queue operation failed");
                reply(503, "text/plain", format!("{e}\n"))
            }
        };
        match (req.method.as_str(), path) {
            ("GET", "/queue") => match queue_ops::list(store, &sel).await {
                Ok(rows) => json(200, &rows),
                Err(e) => failed(e),
            },
            ("POST", op) if op.starts_with("/queue/") && Change::parse(&op[7..]).is_some() => {
                if let Some(r) = unauthorized(s, token) {
                    return r;
                }
                let Some(change) = Change::parse(&op[7..]) else {
                    return reply(404, "text/plain", "unknown operation\n");
                };
                match queue_ops::change(store, change, &sel).await {
                    Ok(n) => {
                        tracing::info!(
                            operation = change.as_str(),
                            messages = n,
                            "queue changed from the admin listener"
                        );
                        json(
                            200,
                            &serde_json::json!({ "operation": change.as_str(), "messages": n }),
                        )
                    }
                    Err(e) => failed(e),
                }
            }
            ("GET", one) if one.starts_with("/queue/") => {
                let Ok(id) = one[7..].parse::<i64>() else {
                    return reply(404, "text/plain", "try /queue or /queue/{id}\n");
                };
                if body {
                    if let Some(r) = unauthorized(s, token) {
                        return r;
                    }
                }
                match queue_ops::show(store, id, body).await {
                    Ok(Some(d)) => {
                        let mut v = serde_json::to_value(&d).unwrap_or_default();
                        if let (Some(b), Some(obj)) = (&d.body, v.as_object_mut()) {
                            obj.insert("body".into(), String::from_utf8_lossy(b).into());
                        }
                        json(200, &v)
                    }
                    Ok(None) => reply(404, "text/plain", format!("no message {id}\n")),
                    Err(e) => failed(e),
                }
            }
            _ => reply(
                405,
                "text/plain",
                "GET /queue, GET /queue/{id}, POST /queue/retry|replay|drop\n",
            ),
        }
    }

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
            ("GET", "/metrics") => {
                self.rt.metrics.outside(self.rt.outside_figures());
                reply(200, prometheus::TEXT_FORMAT, self.rt.metrics.render())
            }
            ("GET", "/report") => self.report().await,
            (_, p) if p == "/queue" || p.starts_with("/queue/") => self.queue(s).await,
            _ => reply(
                404,
                "text/plain",
                "try /healthz, /readyz, /metrics, /report or /queue\n",
            ),
        }
    }
}
