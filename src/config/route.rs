//! A route policy file: its top-level keys (name, path, receiver, limits), `[identity]`,
//! its own `[source]`, and `[message]`. `[oauth]` is in oauth.rs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::build::{count, int, int_or, millis, resolve, span, Ctx};
use super::defaults as k;
use super::diag::FileDiag;
use super::file::{self, S};
use super::source::{ip_list, NamedSet};
use super::trust::pins;
use super::{IdentityPolicy, IpSet, MessagePolicy, Route, SessionMode, Upstream, XmlLimits};
use crate::certs::{self, CertError};
use crate::sfid::SfId;
use crate::FastSet;

/// What routes share: `@salesforce`, the global `[source] allow` and `[limits]`'s default.
pub(super) struct RouteCtx<'a> {
    pub salesforce: Option<&'a NamedSet>,
    pub global_allow: &'a IpSet,
    pub default_inflight: usize,
    /// obmguard.toml has a `[store]` (queued routes and dedupe need one).
    pub has_store: bool,
}

/// A route and the lines of its name and path, for the duplicate checks across files.
pub(super) struct BuiltRoute {
    pub route: Route,
    pub name_line: usize,
    pub path_line: usize,
}

pub(super) fn build(
    d: &mut FileDiag,
    ctx: &Ctx,
    f: &Path,
    rf: &file::RouteFile,
    rctx: &RouteCtx,
) -> Option<BuiltRoute> {
    let errors_before = d.error_count();
    let base = f.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = rf.name.get_ref().trim().to_string();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    {
        d.error(span(&rf.name), "name", "a route name is a short label made of letters, digits, '-', '_' or '.' (it appears in metrics)");
    }
    let path = rf.path.get_ref().clone();
    if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
        d.error(
            span(&rf.path),
            "path",
            format!(
                "\"{path}\" is not a request path: write e.g. /obm/accounts (no query, no spaces)"
            ),
        );
    }
    let upstream = build_upstream(d, ctx, &base, rf);
    let upstream_timeout = millis(d, &k::UPSTREAM_TIMEOUT_MS, &rf.upstream_timeout_ms);
    if upstream_timeout > Duration::from_secs(55) {
        d.warn(rf.upstream_timeout_ms.as_ref().map(span), "upstream_timeout_ms", "Salesforce gives up after 60 s: above 55 s the receiver may accept a message Salesforce already counts as failed (it will be delivered twice)");
    }
    let max_inflight = int_or(
        d,
        &k::MAX_INFLIGHT,
        &rf.max_inflight,
        rctx.default_inflight as i64,
    ) as usize;
    let identity = rf.identity.as_ref().map(|id| build_identity(d, id));
    if identity.is_none() {
        d.warn(None, "identity", "no [identity] rule: any certificate the handshake accepts may use this route; add subject_cn or pin_sha256 to narrow it");
    }
    let source = build_source(d, rf, rctx);
    let message = build_message(d, rf);
    let oauth = rf
        .oauth
        .as_ref()
        .and_then(|o| super::oauth::build(d, ctx, &base, o));
    let mode = rf.message.get_ref().session_id.as_ref();
    if message.session_id == SessionMode::Inject && rf.oauth.is_none() {
        d.error(mode.map(span), "message.session_id", "inject needs an [oauth] table in this policy (the credentials obmguard uses to fetch a token)");
    }
    if message.session_id == SessionMode::Audit {
        d.warn(mode.map(span), "message.session_id", "audit mode forwards session ids unchanged: move to strip or inject once `obmguard report` shows what still depends on them");
    }
    let delivery = super::store::build_delivery(d, rf, message.session_id, rctx.has_store);
    if d.error_count() != errors_before {
        return None;
    }
    Some(BuiltRoute {
        name_line: d.line_of(rf.name.span().start),
        path_line: d.line_of(rf.path.span().start),
        route: Route {
            name,
            path,
            file: f.to_path_buf(),
            upstream: upstream?,
            upstream_timeout,
            upstream_keepalive: rf
                .upstream_keepalive
                .unwrap_or(k::UPSTREAM_KEEPALIVE.flag()),
            max_inflight,
            identity,
            source,
            message,
            oauth,
            delivery,
        },
    })
}

/// `[identity]`: at least one of `subject_cn` and `pin_sha256`.
fn build_identity(d: &mut FileDiag, id: &S<file::IdentitySection>) -> IdentityPolicy {
    let idr = id.get_ref();
    let mut subject_cn = Vec::new();
    for (i, cn) in idr.subject_cn.iter().enumerate() {
        let v = cn.get_ref().trim();
        if v.is_empty() {
            d.error(span(cn), &format!("identity.subject_cn[{i}]"), "empty common name: write the CN of Salesforce's certificate, e.g. proxy.salesforce.com");
        } else {
            subject_cn.push(v.to_string());
        }
    }
    let pins = pins(d, "identity.pin_sha256", &idr.pin_sha256);
    if subject_cn.is_empty() && pins.is_empty() {
        d.error(
            span(id),
            "identity",
            "an [identity] table must list subject_cn or pin_sha256 (or remove the table)",
        );
    }
    IdentityPolicy { subject_cn, pins }
}

/// The route's own `[source] allow`, or the global one.
fn build_source(d: &mut FileDiag, rf: &file::RouteFile, rctx: &RouteCtx) -> IpSet {
    let Some(s) = &rf.source else {
        if rctx.global_allow.is_empty() {
            d.error(
                None,
                "source",
                "no source ranges: add [source] allow to this route or to obmguard.toml",
            );
        }
        return rctx.global_allow.clone();
    };
    let before = d.error_count();
    let allow = &s.get_ref().allow;
    let set = ip_list(d, "source.allow", allow.get_ref(), rctx.salesforce);
    if set.is_empty() && d.error_count() == before {
        d.error(
            span(allow),
            "source.allow",
            "empty: list who may call this route, e.g. [\"@salesforce\"]",
        );
    }
    set
}

fn build_upstream(
    d: &mut FileDiag,
    ctx: &Ctx,
    base: &Path,
    rf: &file::RouteFile,
) -> Option<Upstream> {
    let raw = rf.upstream.get_ref();
    let Ok(url) = url::Url::parse(raw) else {
        d.error(
            span(&rf.upstream),
            "upstream",
            format!(
                "\"{raw}\" is not a URL: write e.g. http://10.0.0.5:8080/soap/AccountNotification"
            ),
        );
        return None;
    };
    let tls = match url.scheme() {
        "http" => false,
        "https" => true,
        other => {
            d.error(
                span(&rf.upstream),
                "upstream",
                format!("scheme {other} is not supported: use http:// or https://"),
            );
            return None;
        }
    };
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        d.error(
            span(&rf.upstream),
            "upstream",
            "remove the credentials or #fragment from the upstream URL",
        );
        return None;
    }
    let Some(host) = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
    else {
        d.error(
            span(&rf.upstream),
            "upstream",
            "the upstream URL has no host",
        );
        return None;
    };
    let default_port = if tls { 443 } else { 80 };
    let port = url.port_or_known_default().unwrap_or(default_port);
    // The Host header's value.
    let authority = {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        if port == default_port {
            host
        } else {
            format!("{host}:{port}")
        }
    };
    let mut path_and_query = url.path().to_string();
    if let Some(q) = url.query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    let mut trust_key = 0u64;
    let ca = match &rf.upstream_ca {
        None => None,
        Some(c) => {
            if !tls {
                d.error(
                    span(c),
                    "upstream_ca",
                    "upstream_ca only applies to an https:// upstream",
                );
            }
            let p = resolve(base, c.get_ref());
            let bundle = ctx
                .io
                .read(&p)
                .map_err(|e| CertError::read(&p, e))
                .and_then(|pem| certs::ca_bundle(&p, &pem));
            match bundle {
                Ok(bundle) => {
                    use std::hash::{Hash, Hasher};
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    bundle.certs.iter().for_each(|c| c.as_ref().hash(&mut h));
                    trust_key = h.finish() | 1;
                    // Every certificate was parsed by x509-parser in certs::ca_bundle, which
                    // is what pingora's wrapper does (and would panic on otherwise).
                    let wrapped: Vec<_> = bundle
                        .certs
                        .into_iter()
                        .map(|c| {
                            pingora_core::utils::tls::WrappedX509::new(
                                c.to_vec(),
                                pingora_core::utils::tls::parse_x509,
                            )
                        })
                        .collect();
                    Some(Arc::from(wrapped.into_boxed_slice()))
                }
                Err(e) => {
                    d.error(span(c), "upstream_ca", e.to_string());
                    None
                }
            }
        }
    };
    Some(Upstream {
        url,
        tls,
        host,
        port,
        authority,
        path_and_query,
        ca,
        trust_key,
    })
}

fn sfids(
    d: &mut FileDiag,
    key: &str,
    list: &[S<String>],
    prefix: &str,
    what: &str,
) -> FastSet<SfId> {
    let mut out = FastSet::default();
    for (i, v) in list.iter().enumerate() {
        match SfId::parse(v.get_ref().trim()) {
            Ok(id) => {
                if !id.as_15().starts_with(prefix) {
                    d.error(
                        span(v),
                        &format!("{key}[{i}]"),
                        format!(
                            "\"{}\" is not {what} (those start with {prefix})",
                            v.get_ref()
                        ),
                    );
                }
                out.insert(id);
            }
            Err(e) => d.error(span(v), &format!("{key}[{i}]"), e.to_string()),
        }
    }
    out
}

/// `[message]`: who may send (organizations, actions), how big and deep a body may be, and
/// the session id mode (already an enum: serde refused any other word with its line).
fn build_message(d: &mut FileDiag, rf: &file::RouteFile) -> MessagePolicy {
    let m = rf.message.get_ref();
    let organizations = match &m.organization_ids {
        Some(list) if !list.get_ref().is_empty() => sfids(
            d,
            "message.organization_ids",
            list.get_ref(),
            "00D",
            "an organization id",
        ),
        other => {
            d.error(other.as_ref().map(span).unwrap_or(span(&rf.message)), "message.organization_ids", "required and non-empty: Salesforce's IP ranges are shared by all its customers, so the organization id is what tells your org from another; copy it from Setup > Company Information");
            FastSet::default()
        }
    };
    let actions = (!m.action_ids.is_empty()).then(|| {
        sfids(
            d,
            "message.action_ids",
            &m.action_ids,
            "04k",
            "an outbound message action id",
        )
    });
    MessagePolicy {
        organizations,
        actions,
        max_body_bytes: count(d, &k::MAX_BODY_BYTES, &m.max_body_bytes),
        session_id: m
            .session_id
            .as_ref()
            .map(|s| *s.get_ref())
            .unwrap_or_default(),
        xml: XmlLimits {
            max_depth: int(d, &k::MAX_DEPTH, &m.max_depth) as usize,
            max_attributes: int(d, &k::MAX_ATTRIBUTES, &m.max_attributes) as usize,
            ..XmlLimits::default()
        },
    }
}
