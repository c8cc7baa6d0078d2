//! `[store]` in obmguard.toml and a route's `[delivery]`: where queued messages and the
//! duplicate window rest, and how each route uses them.
//!
//! The cross-checks live here too: a route that queues or dedupes needs a `[store]`, and a
//! queued route may not be in audit mode (its messages would rest with session ids in them).

use std::path::Path;
use std::time::Duration;

use super::build::{count, int, int_or, millis, resolve, span, Ctx};
use super::defaults as k;
use super::diag::FileDiag;
use super::file::{self, DeliveryMode, S};
use super::secrets::{resolve_secret, Inline};
use super::{DeliveryPolicy, SessionMode, StoreConfig, StoreEngine};

pub(super) fn build(
    d: &mut FileDiag,
    ctx: &Ctx,
    base: &Path,
    s: Option<&S<file::StoreSection>>,
) -> Option<StoreConfig> {
    let s = s?;
    let t = s.get_ref();
    let max_messages = int(d, &k::STORE_MAX_MESSAGES, &t.max_messages) as u64;
    let max_bytes = int(d, &k::STORE_MAX_BYTES, &t.max_bytes) as u64;
    let lease = millis(d, &k::LEASE_MS, &t.lease_ms);
    let pool_size = count(d, &k::POOL_SIZE, &t.pool_size);
    let engine = match (&t.path, &t.url) {
        (Some(_), Some(url)) => {
            d.error(
                span(url),
                "store.url",
                "a [store] has either path (the embedded store) or url (PostgreSQL), not both",
            );
            None
        }
        (None, None) => {
            d.error(
                span(s),
                "store.path",
                "a [store] needs path (the embedded store's directory, e.g. path = \"/var/lib/obmguard\") or url (PostgreSQL, e.g. url = { env = \"OBMGUARD_STORE_URL\" })",
            );
            None
        }
        (Some(path), None) if path.get_ref().trim().is_empty() => {
            d.error(
                span(path),
                "store.path",
                "empty: write the store's directory, e.g. \"/var/lib/obmguard\"",
            );
            None
        }
        (Some(path), None) => Some(StoreEngine::Sqlite {
            path: resolve(base, path.get_ref()),
        }),
        (None, Some(url)) => {
            let url = resolve_secret(d, ctx, base, "store.url", url, Inline::Refused)?;
            let e = url.expose();
            if !(e.starts_with("postgres://") || e.starts_with("postgresql://")) {
                d.error(
                    t.url.as_ref().map(span),
                    "store.url",
                    "the store URL must be a postgres:// (or postgresql://) URL, e.g. postgres://obmguard:PASSWORD@db.internal:5432/obmguard?sslmode=verify-full",
                );
                return None;
            }
            Some(StoreEngine::Postgres { url, pool_size })
        }
    };
    let engine = engine?;
    let admin_token = t.admin_token.as_ref().and_then(|a| {
        let token = resolve_secret(d, ctx, base, "store.admin_token", a, Inline::Refused)?;
        if token.expose().len() < 16 {
            d.error(
                span(a),
                "store.admin_token",
                "the admin token is shorter than 16 characters: use a long random value (e.g. `openssl rand -hex 32`)",
            );
            return None;
        }
        Some(token)
    });
    Some(StoreConfig {
        engine,
        max_messages,
        max_bytes,
        lease,
        admin_token,
    })
}

/// A route's `[delivery]`, checked against its session mode and the `[store]` in force.
pub(super) fn build_delivery(
    d: &mut FileDiag,
    rf: &file::RouteFile,
    mode: SessionMode,
    has_store: bool,
) -> DeliveryPolicy {
    let Some(sec) = &rf.delivery else {
        return DeliveryPolicy::default();
    };
    let t = sec.get_ref();
    let delivery_mode = t.mode.as_ref().map(|m| *m.get_ref()).unwrap_or_default();
    let queued = delivery_mode == DeliveryMode::Queued;
    let dedupe = t.dedupe.as_ref().map_or(queued, |b| *b.get_ref());
    let secs = |d: &mut FileDiag, s: &k::Setting, v: &Option<S<i64>>| {
        Duration::from_secs(int(d, s, v) as u64)
    };
    let retry_initial = millis(d, &k::RETRY_INITIAL_MS, &t.retry_initial_ms);
    let retry_max = millis(d, &k::RETRY_MAX_MS, &t.retry_max_ms);
    if retry_max < retry_initial {
        d.error(
            t.retry_max_ms.as_ref().map(span),
            "delivery.retry_max_ms",
            "retry_max_ms is shorter than retry_initial_ms: the longest wait between retries must be at least the first",
        );
    }
    let at = t
        .mode
        .as_ref()
        .map(span)
        .or(t.dedupe.as_ref().map(span))
        .or(Some(span(sec)));
    if (queued || dedupe) && !has_store {
        let what = if queued {
            "mode = \"queued\""
        } else {
            "dedupe = true"
        };
        d.error(
            at.clone(),
            "delivery",
            format!(
                "{what} needs a store: add [store] path = \"/var/lib/obmguard\" to obmguard.toml"
            ),
        );
    }
    if queued && mode == SessionMode::Audit {
        d.error(
            at,
            "delivery.mode",
            "a queued route may not use session_id = \"audit\": its messages would rest in the store with session ids in them; use strip, remove or inject",
        );
    }
    let max_messages = t
        .max_messages
        .as_ref()
        .map(|_| int_or(d, &k::ROUTE_MAX_MESSAGES, &t.max_messages, 0) as u64);
    let max_bytes = t
        .max_bytes
        .as_ref()
        .map(|_| int_or(d, &k::ROUTE_MAX_BYTES, &t.max_bytes, 0) as u64);
    DeliveryPolicy {
        mode: delivery_mode,
        dedupe,
        concurrency: count(d, &k::CONCURRENCY, &t.concurrency),
        max_age: secs(d, &k::MAX_AGE_SECONDS, &t.max_age_seconds),
        dedupe_window: secs(d, &k::DEDUPE_WINDOW_SECONDS, &t.dedupe_window_seconds),
        retry_initial,
        retry_max,
        max_messages,
        max_bytes,
    }
}
