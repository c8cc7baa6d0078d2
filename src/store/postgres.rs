//! The fleet engine: the same [`Store`] on a PostgreSQL database that several obmguard
//! instances share.
//!
//! ```text
//! every method ──► pooled connection (deadpool) ──► one short transaction ──► COMMIT
//!   admit:  lock the notification ids (advisory, sorted) ─► duplicate check
//!           ─► held totals; near a bound only: lock the bounds (one advisory lock), again
//!           ─► INSERT message (a trigger keeps `held_shard`) ─► upsert `seen` ─► COMMIT
//!   claim:  lock the route (advisory) ─► count unexpired leases ─► UPDATE the next due row,
//!           picked with FOR UPDATE SKIP LOCKED ─► COMMIT (not waiting for the WAL flush)
//! ```
//!
//! What it defends against:
//! - **An Ack for a message that is not durable.** `admit` answers `Stored` only after
//!   PostgreSQL acknowledged the COMMIT (with the server's `synchronous_commit`, on by default:
//!   the WAL is flushed). A COMMIT whose answer was lost (the connection broke) is an error: the
//!   caller answers 503 and Salesforce's retry is then a duplicate, or stored again: at least
//!   once, never an unbacked Ack.
//! - **Two instances storing the same notification twice.** The duplicate window is the `seen`
//!   table keyed by (route, organization id, Notification Id); `admit` takes a transaction-level
//!   advisory lock per id (sorted, so two admits never deadlock) before it checks and records
//!   them, so concurrent admits of the same ids on any instances are serialized: one is
//!   `Stored`, the others `Duplicate`.
//! - **Bounds passed by a fleet admitting at once.** Within [`BOUNDS_MARGIN`] messages of a
//!   bound, the check and the insert run under one fleet-wide advisory lock, so the bounds are
//!   exact (unless more than that many admits are in flight at once). Further away no lock is
//!   taken, and the totals are kept in 16 shards per route (`held_shard`, by message id), so
//!   concurrent admits commit in parallel and share the server's WAL flushes instead of
//!   queueing behind one row lock.
//! - **Two workers delivering one message, or more than `concurrency` at once on a route.**
//!   `claim` counts the route's unexpired leases and takes the next due message under a
//!   per-route advisory lock, in one transaction: the count holds across the fleet. Worker
//!   names must be unique across the fleet (the lease belongs to the name).
//! - **A worker or an instance that dies mid-delivery.** Its lease (`next_attempt_at`, compared
//!   with the caller's clock) expires and another instance claims the message.
//! - **A database that is down, slow or restarting.** Every connection attempt, wait for a
//!   pooled connection and operation has a deadline ([`PgOptions`]), and the server gets the
//!   same `statement_timeout`/`lock_timeout` (and an `idle_in_transaction_session_timeout`,
//!   so a vanished client frees its locks): a hung server is an error within seconds, never a
//!   hang. Those errors are environmental ([`StoreError::Unavailable`]: queued routes answer
//!   503). A connection that timed out is discarded; closed ones are dropped by the pool, and
//!   new ones are made when the server returns: the same `PgStore` recovers by itself.
//! - **The password leaking.** The URL is a [`Secret`]; errors, logs and `Debug` name the
//!   server as `postgres://user@host:port/database` only, and every message taken from the
//!   client library is scrubbed of the password.
//!
//! What it does not defend against: a PostgreSQL configured with `fsync = off` or
//! `synchronous_commit = off` (an Ack may then outlive a crash of the server; the operator
//! chooses), a failover to a replica that had not received the last commits (asynchronous
//! replication loses them), clocks of instances that disagree (leases and the duplicate window
//! compare the callers' times: keep the fleet on NTP), and anyone who can write the database.
//! Nothing secret is stored: the caller stores rewritten bodies.
//!
//! TLS (rustls with ring, no OpenSSL), from the URL's `sslmode`, as libpq reads it:
//! - `disable`: never;
//! - `prefer` (the default, as libpq): TLS if the server offers it, else plain; the certificate
//!   is not verified (unless `sslrootcert` is given: then as `verify-ca`);
//! - `require`: TLS or no connection; the certificate is not verified (unless `sslrootcert` is
//!   given: then as `verify-ca`). Channel binding (SCRAM-SHA-256-PLUS) still stops a
//!   man in the middle from relaying the password authentication;
//! - `verify-ca`: TLS, the chain verified against `sslrootcert` (a PEM file) or, without it or
//!   with `sslrootcert=system`, the operating system's roots; any host name;
//! - `verify-full`: as `verify-ca`, and the certificate must name the host. Use this one.
//!
//! Client certificates (`sslcert`, `sslkey`) are not supported. Only the URL form
//! (`postgres://` or `postgresql://`) is read; every other parameter is tokio-postgres's.
//!
//! Schema: versioned by the `schema_migrations` table, applied by [`PgStore::migrate`] under
//! an advisory lock (several instances may start at once). Times are `timestamptz`
//! (microseconds), bodies `bytea`, exactly as forwarded
//! (`SELECT convert_from(body, 'UTF8') FROM messages`). Give obmguard a database (or a schema,
//! with `options=-csearch_path%3Dobmguard` in the URL) of its own. PostgreSQL 11 or newer.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{
    Admission, Bound, Bounds, Claimed, Depth, Detail, Filter, NewMessage, Pruned, Retention, State,
    Store, StoreError, Summary, PRUNE_BATCH,
};
use crate::secret::Secret;

type PgError = tokio_postgres::Error;
type Client = deadpool_postgres::Client;

/// The schema, one entry per version: `schema_migrations` holds the versions applied.
/// Never edit an entry once released: add one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: messages, the duplicate window, and the totals the bounds are checked against.
    r#"
    CREATE TABLE messages (
        id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- never reused
        route            text        NOT NULL,
        state            text        NOT NULL
                         CHECK (state IN ('queued', 'delivering', 'delivered', 'dead')),
        organization_id  text        NOT NULL,               -- 15-character form
        action_id        text        NOT NULL,
        notification_ids text[]      NOT NULL,               -- as sent
        request_id       text        NOT NULL,
        attempts         integer     NOT NULL DEFAULT 0,
        replays          integer     NOT NULL DEFAULT 0,
        accepted_at      timestamptz NOT NULL,
        age_from         timestamptz NOT NULL,               -- start of max age; a replay resets it
        next_attempt_at  timestamptz NOT NULL,               -- queued: due; delivering: lease end
        lease_owner      text,
        last_error       text,
        finished_at      timestamptz,                        -- delivered or dead
        body_bytes       bigint      NOT NULL,
        body             bytea                               -- exactly what is forwarded
    );
    CREATE INDEX messages_due ON messages (route, next_attempt_at, id)
        WHERE state IN ('queued', 'delivering');
    CREATE INDEX messages_leases ON messages (route, next_attempt_at)
        WHERE state = 'delivering';
    CREATE INDEX messages_delivered ON messages (finished_at)
        WHERE state = 'delivered';

    -- (route, organization, Notification Id) last accepted (queued) or acked (direct).
    CREATE TABLE seen (
        route           text        NOT NULL,
        organization_id text        NOT NULL,
        notification_id text        NOT NULL,
        seen_at         timestamptz NOT NULL,
        PRIMARY KEY (route, organization_id, notification_id)
    );
    CREATE INDEX seen_by_time ON seen (seen_at);

    -- Messages and body bytes held (not delivered) per route, kept by a trigger so that any
    -- writer, psql included, keeps them right, and a bound check reads one row per route.
    CREATE TABLE held (
        route    text   PRIMARY KEY,
        messages bigint NOT NULL,
        bytes    bigint NOT NULL
    );
    CREATE FUNCTION held_track() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.state <> 'delivered' THEN
            UPDATE held SET messages = messages - 1, bytes = bytes - OLD.body_bytes
                WHERE route = OLD.route;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.state <> 'delivered' THEN
            INSERT INTO held (route, messages, bytes) VALUES (NEW.route, 1, NEW.body_bytes)
                ON CONFLICT (route) DO UPDATE
                SET messages = held.messages + 1, bytes = held.bytes + EXCLUDED.bytes;
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER held_insert AFTER INSERT ON messages
        FOR EACH ROW WHEN (NEW.state <> 'delivered') EXECUTE FUNCTION held_track();
    CREATE TRIGGER held_delete AFTER DELETE ON messages
        FOR EACH ROW WHEN (OLD.state <> 'delivered') EXECUTE FUNCTION held_track();
    -- Only a change of what is held touches `held` (claims and retries do not).
    CREATE TRIGGER held_update AFTER UPDATE ON messages
        FOR EACH ROW WHEN ((OLD.state = 'delivered') IS DISTINCT FROM (NEW.state = 'delivered')
            OR OLD.route IS DISTINCT FROM NEW.route
            OR OLD.body_bytes IS DISTINCT FROM NEW.body_bytes)
        EXECUTE FUNCTION held_track();
    "#,
    // 2: the held totals in 16 shards per route (a message counts in shard id % 16), so
    // concurrent admits on one route do not queue behind one row lock until each commits;
    // `held` becomes the view of their sums.
    r#"
    CREATE TABLE held_shard (
        route    text     NOT NULL,
        shard    smallint NOT NULL,
        messages bigint   NOT NULL,
        bytes    bigint   NOT NULL,
        PRIMARY KEY (route, shard)
    );
    INSERT INTO held_shard (route, shard, messages, bytes)
        SELECT route, 0, messages, bytes FROM held;
    DROP TABLE held;
    CREATE VIEW held AS
        SELECT route, sum(messages)::bigint AS messages, sum(bytes)::bigint AS bytes
        FROM held_shard GROUP BY route;
    CREATE OR REPLACE FUNCTION held_track() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.state <> 'delivered' THEN
            UPDATE held_shard SET messages = messages - 1, bytes = bytes - OLD.body_bytes
                WHERE route = OLD.route AND shard = OLD.id % 16;
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.state <> 'delivered' THEN
            INSERT INTO held_shard (route, shard, messages, bytes)
                VALUES (NEW.route, NEW.id % 16, 1, NEW.body_bytes)
                ON CONFLICT (route, shard) DO UPDATE
                SET messages = held_shard.messages + 1,
                    bytes = held_shard.bytes + EXCLUDED.bytes;
        END IF;
        RETURN NULL;
    END
    $$;
    "#,
];

/// The columns [`summary`] reads, in order.
const SUMMARY_COLUMNS: &str = "id, route, state, organization_id, action_id, notification_ids, \
     request_id, attempts, replays, accepted_at, age_from, next_attempt_at, lease_owner, \
     last_error, finished_at, body_bytes";

/// Longest `last_error` kept, in bytes.
const MAX_ERROR_BYTES: usize = 500;

/// How often a transaction that lost a deadlock or a serialization conflict, or whose pooled
/// connection turned out closed, is tried again.
const RETRIES: u32 = 3;

/// Run `$body` (a future using the connection `$c`) as one operation: a pooled connection,
/// a deadline, and another try when it lost a deadlock, a serialization conflict, or found
/// its connection closed.
macro_rules! run {
    ($store:expr, |$c:ident| $body:expr) => {
        run!($store, $store.inner.options.statement_timeout, |$c| $body)
    };
    ($store:expr, $deadline:expr, |$c:ident| $body:expr) => {{
        let store: &PgStore = $store;
        let deadline: Duration = $deadline;
        let mut attempt = 0u32;
        loop {
            let mut client = store.client().await?;
            let outcome = {
                let $c: &mut Client = &mut client;
                tokio::time::timeout(deadline, $body).await
            };
            if let Some(answer) = store.settle(client, outcome, deadline, &mut attempt) {
                break answer;
            }
        }
    }};
}

/// How a [`PgStore`] connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgOptions {
    /// Connections per instance (the pool's size). A fleet uses up to this many times the
    /// number of instances: keep it under the server's `max_connections`.
    pub max_connections: usize,
    /// Opening a connection (TCP, TLS, authentication), and waiting for a free pooled one,
    /// each fail after this long.
    pub connect_timeout: Duration,
    /// One operation (its whole transaction) fails after this long; the server is also told
    /// to cancel any statement or lock wait this long.
    pub statement_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions {
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

/// What [`PgStore::migrate`] did: the schema version before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migrated {
    pub from: i64,
    pub to: i64,
}

/// The PostgreSQL store. Cheap to clone (the pool is shared); build one per process.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// `postgres://user@host:port/database`: never the password.
    server: String,
    redact: Redactor,
    options: PgOptions,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("server", &self.inner.server)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Read the URL and set up the pool, without connecting (the first operation does).
    /// A URL that cannot be used is `StoreError::Invalid`, naming no password.
    pub fn new(url: &Secret, options: PgOptions) -> Result<PgStore, StoreError> {
        let redact = Redactor::from_url(url.expose());
        let parsed = parse_url(url.expose()).map_err(|e| StoreError::Invalid(redact.apply(&e)))?;
        let mut config = parsed.config;
        if let Some(password) = config.get_password() {
            redact.add(&String::from_utf8_lossy(password));
        }
        let server = describe(&config);
        let tls = tls_config(parsed.tls, parsed.root_cert.as_ref()).map_err(|e| {
            StoreError::Invalid(format!(
                "the store's PostgreSQL URL ({server}) asks for TLS that cannot be set up: {}",
                redact.apply(&e)
            ))
        })?;
        config.ssl_mode(match parsed.tls {
            TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
            TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("obmguard");
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let statement_ms = options.statement_timeout.as_millis().max(1);
        let idle_ms = (statement_ms * 2).max(10_000);
        let ours = format!(
            "-c statement_timeout={statement_ms} -c lock_timeout={statement_ms} \
             -c idle_in_transaction_session_timeout={idle_ms}"
        );
        let merged = match config.get_options() {
            Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
            _ => ours,
        };
        config.options(merged);

        let manager = Manager::from_config(
            config,
            tokio_postgres_rustls::MakeRustlsConnect::new(tls),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.connect_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Other(format!("cannot build the connection pool: {e}")))?;
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                server,
                redact,
                options,
            }),
        })
    }

    /// [`PgStore::new`], then one connection to check that the server answers and accepts
    /// the credentials.
    pub async fn connect(url: &Secret, options: PgOptions) -> Result<PgStore, StoreError> {
        let store = PgStore::new(url, options)?;
        store.ping().await?;
        Ok(store)
    }

    /// The server as errors name it: `postgres://user@host:port/database`.
    pub fn server(&self) -> &str {
        &self.inner.server
    }

    /// One round trip to the server.
    pub async fn ping(&self) -> Result<(), StoreError> {
        run!(self, |c| async move {
            c.simple_query("SELECT 1").await?;
            Ok(())
        })
    }

    /// Bring the schema up to date: apply every migration this obmguard knows and the
    /// database lacks, in one transaction, under an advisory lock (instances starting at once
    /// wait for each other; the first applies, the others find nothing to do). A schema newer
    /// than this obmguard is `StoreError::SchemaTooNew` and is left untouched.
    pub async fn migrate(&self) -> Result<Migrated, StoreError> {
        // DDL may wait for other sessions' locks: give it longer than one operation.
        let patience = self
            .inner
            .options
            .statement_timeout
            .max(Duration::from_secs(60));
        let outcome = run!(self, patience, |c| migrate_tx(c, patience))?;
        match outcome {
            Ok(m) => Ok(m),
            Err(found) => Err(StoreError::SchemaTooNew {
                path: self.inner.server.clone(),
                found,
                supported: MIGRATIONS.len() as i64,
            }),
        }
    }

    /// Check, without changing anything, that the schema is the one this obmguard uses:
    /// `SchemaTooNew` or `SchemaTooOld` (run [`PgStore::migrate`]) otherwise.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let found = run!(self, |c| async move {
            let exists: bool = c
                .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
                .await?
                .get(0);
            if !exists {
                return Ok(0);
            }
            let v: i64 = c
                .query_one(
                    "SELECT coalesce(max(version), 0)::bigint FROM schema_migrations",
                    &[],
                )
                .await?
                .get(0);
            Ok(v)
        })?;
        let supported = MIGRATIONS.len() as i64;
        let path = self.inner.server.clone();
        match found.cmp(&supported) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Greater => Err(StoreError::SchemaTooNew {
                path,
                found,
                supported,
            }),
            std::cmp::Ordering::Less => Err(StoreError::SchemaTooOld {
                path,
                found,
                supported,
            }),
        }
    }

    /// A pooled connection.
    async fn client(&self) -> Result<Client, StoreError> {
        self.inner.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => self.classify(&e),
            PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => self.unavailable(format!(
                "no free connection within {} ms: all {} are busy; raise the pool's size or \
                 look for slow statements",
                self.inner.options.connect_timeout.as_millis(),
                self.inner.options.max_connections
            )),
            PoolError::Timeout(_) => self.unavailable(format!(
                "no connection within {} ms",
                self.inner.options.connect_timeout.as_millis()
            )),
            PoolError::Closed => StoreError::Closed,
            other => self.unavailable(self.inner.redact.apply(&other.to_string())),
        })
    }

    /// What to do with one attempt's outcome: `Some` is the answer, `None` means try again.
    fn settle<R>(
        &self,
        client: Client,
        outcome: Result<Result<R, PgError>, tokio::time::error::Elapsed>,
        deadline: Duration,
        attempt: &mut u32,
    ) -> Option<Result<R, StoreError>> {
        match outcome {
            Ok(Ok(r)) => Some(Ok(r)),
            Ok(Err(e)) if *attempt < RETRIES && retryable(&e) => {
                *attempt += 1;
                None
            }
            Ok(Err(e)) => Some(Err(self.classify(&e))),
            Err(_) => {
                // The server did not answer in time: this connection may be mid-statement
                // with locks held. Close it (the server rolls back) rather than reuse it.
                drop(deadpool_postgres::Object::take(client));
                Some(Err(self.unavailable(format!(
                    "no answer within {} ms",
                    deadline.as_millis()
                ))))
            }
        }
    }

    fn unavailable(&self, detail: String) -> StoreError {
        StoreError::Unavailable {
            server: self.inner.server.clone(),
            detail,
        }
    }

    /// A client error as the operator should read it, scrubbed of the password.
    fn classify(&self, e: &PgError) -> StoreError {
        let redact = &self.inner.redact;
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            let detail = redact.apply(&format!("{} (SQLSTATE {code})", db.message()));
            return match code {
                "53100" => StoreError::DiskFull,
                "58030" => StoreError::Io { detail },
                "XX001" | "XX002" => StoreError::Corrupt { detail },
                "42P01" | "42703" | "42883" => self.unavailable(format!(
                    "its schema is missing or older than this obmguard ({detail}): run \
                     `obmguard store migrate`"
                )),
                c if c.starts_with("08")
                    || c.starts_with("28")
                    || c.starts_with("40")
                    || c.starts_with("53")
                    || c.starts_with("57")
                    || matches!(c, "55P03" | "3D000" | "42501" | "25006") =>
                {
                    self.unavailable(detail)
                }
                _ => StoreError::Other(format!("the store's PostgreSQL refused: {detail}")),
            };
        }
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        let text = redact.apply(&text);
        if text.starts_with("error serializing")
            || text.starts_with("error deserializing")
            || text.starts_with("query returned an unexpected number")
        {
            StoreError::Other(format!("the store's PostgreSQL client: {text}"))
        } else {
            self.unavailable(text)
        }
    }
}

#[async_trait]
impl Store for PgStore {
    async fn admit(
        &self,
        m: NewMessage,
        dedupe_window: Option<Duration>,
        bounds: &Bounds,
    ) -> Result<Admission, StoreError> {
        if m.route.is_empty() || m.organization_id.is_empty() || m.notification_ids.is_empty() {
            return Err(StoreError::Invalid(
                "a message to store needs a route, an organization id and at least one \
                 Notification Id"
                    .into(),
            ));
        }
        let ids = distinct(&m.notification_ids);
        run!(self, |c| admit_tx(c, &m, &ids, dedupe_window, bounds))
    }

    async fn seen_all(
        &self,
        route: &str,
        organization_id: &str,
        ids: &[String],
        window: Duration,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        if ids.is_empty() {
            return Ok(false);
        }
        let ids = distinct(ids);
        let since = before(now, window);
        run!(self, |c| async {
            let stmt = c.prepare_cached(SEEN_COUNT).await?;
            let n: i64 = c
                .query_one(&stmt, &[&route, &organization_id, &ids, &since])
                .await?
                .get(0);
            Ok(n == ids.len() as i64)
        })
    }

    async fn record_acked(
        &self,
        route: &str,
        organization_id: &str,
        ids: &[String],
        at: SystemTime,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = distinct(ids);
        run!(self, |c| async {
            let stmt = c.prepare_cached(SEEN_UPSERT).await?;
            c.execute(&stmt, &[&route, &organization_id, &ids, &at])
                .await?;
            Ok(())
        })
    }

    async fn claim_batch(
        &self,
        route: &str,
        worker: &str,
        lease: Duration,
        concurrency: usize,
        max: usize,
        now: SystemTime,
    ) -> Result<Vec<Claimed>, StoreError> {
        if concurrency == 0 || max == 0 {
            return Ok(Vec::new());
        }
        let until = after(now, lease);
        let concurrency = i64::try_from(concurrency).unwrap_or(i64::MAX);
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let key = lock_key(&["claim", route]);
        run!(self, |c| async {
            let tx = c.transaction().await?;
            // A claim lost with a crash of the server only leaves the message due again (at
            // least once): it need not wait for its WAL flush while it holds the route's lock.
            let relaxed = tx
                .prepare_cached("SET LOCAL synchronous_commit = off")
                .await?;
            tx.execute(&relaxed, &[]).await?;
            let lock = tx.prepare_cached(LOCK).await?;
            tx.execute(&lock, &[&key]).await?;
            let live_stmt = tx
                .prepare_cached(
                    "SELECT count(*) FROM messages \
                     WHERE state = 'delivering' AND route = $1 AND next_attempt_at > $2",
                )
                .await?;
            let live: i64 = tx.query_one(&live_stmt, &[&route, &now]).await?.get(0);
            let n = (concurrency - live).min(max);
            if n <= 0 {
                tx.rollback().await?;
                return Ok(Vec::new());
            }
            let stmt = tx
                .prepare_cached(
                    "UPDATE messages SET state = 'delivering', lease_owner = $3, \
                         next_attempt_at = $4, attempts = attempts + 1 \
                     WHERE id IN (SELECT id FROM messages \
                         WHERE state IN ('queued', 'delivering') AND route = $1 \
                             AND next_attempt_at <= $2 \
                         ORDER BY next_attempt_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) \
                     RETURNING id, route, organization_id, action_id, notification_ids, \
                         request_id, body, attempts, accepted_at, age_from, next_attempt_at",
                )
                .await?;
            let rows = tx
                .query(&stmt, &[&route, &now, &worker, &until, &n])
                .await?;
            tx.commit().await?;
            let mut out = rows.iter().map(claimed).collect::<Result<Vec<_>, _>>()?;
            out.sort_by_key(|m| m.id);
            Ok(out)
        })
    }

    async fn release(&self, owner_prefix: &str, now: SystemTime) -> Result<usize, StoreError> {
        let prefix = owner_prefix.to_owned();
        run!(self, |c| async {
            let stmt = c
                .prepare_cached(
                    "UPDATE messages SET state = 'queued', lease_owner = NULL, \
                         next_attempt_at = $2 \
                     WHERE state = 'delivering' AND starts_with(lease_owner, $1)",
                )
                .await?;
            Ok(c.execute(&stmt, &[&prefix, &now]).await? as usize)
        })
    }

    async fn delivered(&self, id: i64, _worker: &str) -> Result<bool, StoreError> {
        let now = SystemTime::now();
        run!(self, |c| async {
            let stmt = c
                .prepare_cached(
                    "UPDATE messages SET state = 'delivered', finished_at = $2, \
                         lease_owner = NULL \
                     WHERE id = $1 AND state <> 'delivered'",
                )
                .await?;
            Ok(c.execute(&stmt, &[&id, &now]).await? == 1)
        })
    }

    async fn retry_later(
        &self,
        id: i64,
        worker: &str,
        at: SystemTime,
        error: &str,
    ) -> Result<bool, StoreError> {
        let error = bounded_error(error);
        run!(self, |c| async {
            let stmt = c
                .prepare_cached(
                    "UPDATE messages SET state = 'queued', next_attempt_at = $3, \
                         lease_owner = NULL, last_error = $4 \
                     WHERE id = $1 AND state = 'delivering' AND lease_owner = $2",
                )
                .await?;
            Ok(c.execute(&stmt, &[&id, &worker, &at, &error]).await? == 1)
        })
    }

    async fn dead(&self, id: i64, worker: &str, error: &str) -> Result<bool, StoreError> {
        let error = bounded_error(error);
        let now = SystemTime::now();
        run!(self, |c| async {
            let stmt = c
                .prepare_cached(
                    "UPDATE messages SET state = 'dead', finished_at = $3, \
                         lease_owner = NULL, last_error = $4 \
                     WHERE id = $1 AND state = 'delivering' AND lease_owner = $2",
                )
                .await?;
            Ok(c.execute(&stmt, &[&id, &worker, &now, &error]).await? == 1)
        })
    }

    async fn list(&self, f: &Filter) -> Result<Vec<Summary>, StoreError> {
        let mut q = Query::default();
        let clause = q.filter(f);
        let limit = q.push(limit(f));
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM messages WHERE {clause} ORDER BY id LIMIT {limit}"
        );
        run!(self, |c| async {
            let rows = c.query(sql.as_str(), &q.refs()).await?;
            rows.iter().map(summary).collect()
        })
    }

    async fn show(&self, id: i64, with_body: bool) -> Result<Option<Detail>, StoreError> {
        let sql = if with_body {
            format!("SELECT {SUMMARY_COLUMNS}, body FROM messages WHERE id = $1")
        } else {
            format!("SELECT {SUMMARY_COLUMNS} FROM messages WHERE id = $1")
        };
        run!(self, |c| async {
            let Some(r) = c.query_opt(sql.as_str(), &[&id]).await? else {
                return Ok(None);
            };
            let body = if with_body {
                r.try_get::<_, Option<Vec<u8>>>(16)?.map(Bytes::from)
            } else {
                None
            };
            Ok(Some(Detail {
                summary: summary(&r)?,
                body,
            }))
        })
    }

    async fn retry_now(&self, f: &Filter, now: SystemTime) -> Result<usize, StoreError> {
        let mut q = Query::default();
        let at = q.push(now);
        let clause = q.filter(f);
        let limit = q.push(limit(f));
        let sql = format!(
            "UPDATE messages SET state = 'queued', next_attempt_at = {at}, lease_owner = NULL, \
                 finished_at = NULL \
             WHERE id IN (SELECT id FROM messages WHERE ({clause}) \
                 AND state IN ('queued', 'dead') ORDER BY id LIMIT {limit} FOR UPDATE) \
               AND state IN ('queued', 'dead')"
        );
        run!(self, |c| async {
            Ok(c.execute(sql.as_str(), &q.refs()).await? as usize)
        })
    }

    async fn replay(&self, f: &Filter, now: SystemTime) -> Result<usize, StoreError> {
        let mut q = Query::default();
        let at = q.push(now);
        let clause = q.filter(f);
        let limit = q.push(limit(f));
        let sql = format!(
            "UPDATE messages SET state = 'queued', next_attempt_at = {at}, age_from = {at}, \
                 attempts = 0, replays = replays + 1, lease_owner = NULL, finished_at = NULL \
             WHERE id IN (SELECT id FROM messages WHERE ({clause}) \
                 AND state = 'dead' ORDER BY id LIMIT {limit} FOR UPDATE) \
               AND state = 'dead'"
        );
        run!(self, |c| async {
            Ok(c.execute(sql.as_str(), &q.refs()).await? as usize)
        })
    }

    async fn drop_messages(&self, f: &Filter) -> Result<usize, StoreError> {
        let mut q = Query::default();
        let clause = q.filter(f);
        let limit = q.push(limit(f));
        let sql = format!(
            "DELETE FROM messages WHERE id IN \
                 (SELECT id FROM messages WHERE ({clause}) ORDER BY id LIMIT {limit} FOR UPDATE)"
        );
        run!(self, |c| async {
            Ok(c.execute(sql.as_str(), &q.refs()).await? as usize)
        })
    }

    async fn depth(&self) -> Result<Vec<Depth>, StoreError> {
        run!(self, |c| async {
            let rows = c
                .query(
                    "SELECT route, state, count(*), coalesce(sum(body_bytes), 0)::bigint \
                     FROM messages GROUP BY route, state \
                     ORDER BY route COLLATE \"C\", state COLLATE \"C\"",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(Depth {
                        route: r.try_get(0)?,
                        state: state(r, 1)?,
                        messages: unsigned(r.try_get(2)?),
                        bytes: unsigned(r.try_get(3)?),
                    })
                })
                .collect()
        })
    }

    async fn oldest_waiting(&self, now: SystemTime) -> Result<Vec<(String, Duration)>, StoreError> {
        run!(self, |c| async {
            let rows = c
                .query(
                    "SELECT route, min(accepted_at) FROM messages \
                     WHERE state IN ('queued', 'delivering') \
                     GROUP BY route ORDER BY route COLLATE \"C\"",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    let oldest: SystemTime = r.try_get(1)?;
                    Ok((
                        r.try_get::<_, String>(0)?,
                        now.duration_since(oldest).unwrap_or_default(),
                    ))
                })
                .collect()
        })
    }

    async fn prune(&self, now: SystemTime, keep: &Retention) -> Result<Pruned, StoreError> {
        let delivered_before = before(now, keep.delivered);
        let seen_before = before(now, keep.seen);
        let batch = PRUNE_BATCH as i64;
        run!(self, |c| async {
            let tx = c.transaction().await?;
            let delivered = tx
                .execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages \
                         WHERE state = 'delivered' AND finished_at < $1 LIMIT $2)",
                    &[&delivered_before, &batch],
                )
                .await?;
            let seen = tx
                .execute(
                    "DELETE FROM seen WHERE (route, organization_id, notification_id) IN \
                         (SELECT route, organization_id, notification_id FROM seen \
                          WHERE seen_at < $1 LIMIT $2)",
                    &[&seen_before, &batch],
                )
                .await?;
            tx.commit().await?;
            Ok(Pruned {
                delivered: delivered as usize,
                seen: seen as usize,
            })
        })
    }
}

const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

const SEEN_COUNT: &str = "SELECT count(*) FROM seen WHERE route = $1 AND organization_id = $2 \
     AND notification_id = ANY($3) AND seen_at >= $4";

const SEEN_UPSERT: &str = "INSERT INTO seen (route, organization_id, notification_id, seen_at) \
     SELECT $1, $2, id, $4 FROM unnest($3::text[]) AS id \
     ON CONFLICT (route, organization_id, notification_id) \
     DO UPDATE SET seen_at = greatest(seen.seen_at, EXCLUDED.seen_at)";

/// One admission, in one transaction. `ids` are the message's distinct ids, sorted.
async fn admit_tx(
    c: &mut Client,
    m: &NewMessage,
    ids: &[String],
    dedupe_window: Option<Duration>,
    bounds: &Bounds,
) -> Result<Admission, PgError> {
    let tx = c.transaction().await?;
    if let Some(window) = dedupe_window {
        // Admits of the same ids, on any instance, wait for each other here. Sorted keys: two
        // admits take their common locks in the same order, so they cannot deadlock.
        let keys: Vec<i64> = ids
            .iter()
            .map(|id| lock_key(&["seen", &m.route, &m.organization_id, id]))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let lock = tx
            .prepare_cached("SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS k")
            .await?;
        tx.execute(&lock, &[&keys]).await?;
        let since = before(m.accepted_at, window);
        let count = tx.prepare_cached(SEEN_COUNT).await?;
        let n: i64 = tx
            .query_one(&count, &[&m.route, &m.organization_id, &ids, &since])
            .await?
            .get(0);
        if n == ids.len() as i64 {
            tx.rollback().await?;
            return Ok(Admission::Duplicate);
        }
    }
    if let Some(bound) = over_bounds(&tx, &m.route, m.body.len() as u64, bounds).await? {
        tx.rollback().await?;
        return Ok(Admission::Full(bound));
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO messages (route, state, organization_id, action_id, notification_ids, \
                 request_id, accepted_at, age_from, next_attempt_at, body_bytes, body) \
             VALUES ($1, 'queued', $2, $3, $4, $5, $6, $6, $6, $7, $8) RETURNING id",
        )
        .await?;
    let id: i64 = tx
        .query_one(
            &insert,
            &[
                &m.route,
                &m.organization_id,
                &m.action_id,
                &m.notification_ids,
                &m.request_id,
                &m.accepted_at,
                &(m.body.len() as i64),
                &&m.body[..],
            ],
        )
        .await?
        .get(0);
    if dedupe_window.is_some() {
        let upsert = tx.prepare_cached(SEEN_UPSERT).await?;
        tx.execute(
            &upsert,
            &[&m.route, &m.organization_id, &ids, &m.accepted_at],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Admission::Stored { id })
}

/// The first bound that one more message of `bytes` on `route` would pass. Takes the
/// fleet-wide bounds lock (held to the end of the transaction) unless nothing is bounded.
async fn over_bounds(
    tx: &deadpool_postgres::Transaction<'_>,
    route: &str,
    bytes: u64,
    b: &Bounds,
) -> Result<Option<Bound>, PgError> {
    if *b == Bounds::unbounded() {
        return Ok(None);
    }
    // Far from every bound (more than BOUNDS_MARGIN messages like this one away), no admit in
    // flight anywhere can make this one pass a bound: no lock. Near one, the exact check runs
    // under the fleet-wide bounds lock.
    let held = held_totals(tx, route).await?;
    if far_from(&held, bytes, b) {
        return Ok(None);
    }
    let lock = tx.prepare_cached(LOCK).await?;
    tx.execute(&lock, &[&lock_key(&["bounds"])]).await?;
    let held = held_totals(tx, route).await?;
    Ok(first_bound(&held, bytes, b))
}

/// Messages like this one that may be admitted at once, fleet-wide, without the bounds lock
/// (each instance's pool holds a few dozen connections at most).
const BOUNDS_MARGIN: u64 = 1024;

/// (all messages, all bytes, the route's messages, the route's bytes) held now.
type Held = (u64, u64, u64, u64);

async fn held_totals(
    tx: &deadpool_postgres::Transaction<'_>,
    route: &str,
) -> Result<Held, PgError> {
    let totals = tx
        .prepare_cached(
            "SELECT coalesce(sum(messages), 0)::bigint, coalesce(sum(bytes), 0)::bigint, \
                 coalesce(sum(messages) FILTER (WHERE route = $1), 0)::bigint, \
                 coalesce(sum(bytes) FILTER (WHERE route = $1), 0)::bigint \
             FROM held_shard",
        )
        .await?;
    let row = tx.query_one(&totals, &[&route]).await?;
    Ok((
        unsigned(row.get(0)),
        unsigned(row.get(1)),
        unsigned(row.get(2)),
        unsigned(row.get(3)),
    ))
}

fn far_from(held: &Held, bytes: u64, b: &Bounds) -> bool {
    let m = BOUNDS_MARGIN;
    let by = bytes.max(1).saturating_mul(BOUNDS_MARGIN);
    let (all_m, all_b, route_m, route_b) = *held;
    all_m.saturating_add(m) < b.max_messages
        && all_b.saturating_add(by) < b.max_bytes
        && b.per_route_max_messages
            .is_none_or(|max| route_m.saturating_add(m) < max)
        && b.per_route_max_bytes
            .is_none_or(|max| route_b.saturating_add(by) < max)
}

fn first_bound(held: &Held, bytes: u64, b: &Bounds) -> Option<Bound> {
    let (all_m, all_b, route_m, route_b) = *held;
    if all_m.saturating_add(1) > b.max_messages {
        return Some(Bound::Messages);
    }
    if all_b.saturating_add(bytes) > b.max_bytes {
        return Some(Bound::Bytes);
    }
    if b.per_route_max_messages
        .is_some_and(|max| route_m.saturating_add(1) > max)
    {
        return Some(Bound::RouteMessages);
    }
    if b.per_route_max_bytes
        .is_some_and(|max| route_b.saturating_add(bytes) > max)
    {
        return Some(Bound::RouteBytes);
    }
    None
}

/// The migrations, under the migration lock. `Err(found)`: the schema is newer than ours.
async fn migrate_tx(c: &mut Client, patience: Duration) -> Result<Result<Migrated, i64>, PgError> {
    let tx = c.transaction().await?;
    let ms = patience.as_millis();
    tx.batch_execute(&format!(
        "SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms};"
    ))
    .await?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key(&["migrate"])],
    )
    .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (\
             version    integer     PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let found: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let supported = MIGRATIONS.len() as i64;
    if found > supported {
        tx.rollback().await?;
        return Ok(Err(found));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tx.batch_execute(sql).await?;
        let version = i as i32 + 1;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(Ok(Migrated {
        from: found,
        to: supported,
    }))
}

/// Errors after which the same transaction may simply run again: it was rolled back (a lost
/// deadlock or serialization conflict), or never reached the server (a pooled connection that
/// closed while idle, as after a server restart).
fn retryable(e: &PgError) -> bool {
    if e.is_closed() {
        return true;
    }
    matches!(
        e.code().map(|c| c.code()),
        Some("40001" | "40P01" | "57P01")
    )
}

/// A transaction-level advisory lock key for these parts (64 bits of SHA-256: the key space
/// is shared with any other user of the database, so collisions are as unlikely as can be).
fn lock_key(parts: &[&str]) -> i64 {
    let mut h = Sha256::new();
    h.update(b"obmguard");
    for p in parts {
        h.update([0u8]);
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    let mut k = [0u8; 8];
    k.copy_from_slice(&d[..8]);
    i64::from_be_bytes(k)
}

/// The distinct ids, sorted (a stable order for locks and upserts: no deadlock between two
/// writers of overlapping sets, and no row touched twice by one upsert).
fn distinct(ids: &[String]) -> Vec<String> {
    ids.iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Parameters of a statement built at run time, numbered as they are pushed.
#[derive(Default)]
struct Query {
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Query {
    /// Add a value; returns its placeholder (`$n`).
    fn push(&mut self, v: impl ToSql + Sync + Send + 'static) -> String {
        self.values.push(Box::new(v));
        format!("${}", self.values.len())
    }

    /// `f` as a WHERE clause (never empty).
    fn filter(&mut self, f: &Filter) -> String {
        let mut clauses = vec!["true".to_owned()];
        if let Some(id) = f.id {
            clauses.push(format!("id = {}", self.push(id)));
        }
        if let Some(route) = &f.route {
            clauses.push(format!("route = {}", self.push(route.clone())));
        }
        if let Some(state) = f.state {
            clauses.push(format!("state = {}", self.push(state.as_str().to_owned())));
        }
        if let Some(t) = f.accepted_before {
            clauses.push(format!("accepted_at < {}", self.push(t)));
        }
        if let Some(nid) = &f.notification_id {
            clauses.push(format!(
                "{} = ANY(notification_ids)",
                self.push(nid.clone())
            ));
        }
        clauses.join(" AND ")
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

/// `LIMIT NULL` is no limit.
fn limit(f: &Filter) -> Option<i64> {
    f.limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

fn summary(r: &Row) -> Result<Summary, PgError> {
    Ok(Summary {
        id: r.try_get(0)?,
        route: r.try_get(1)?,
        state: state(r, 2)?,
        organization_id: r.try_get(3)?,
        action_id: r.try_get(4)?,
        notification_ids: r.try_get(5)?,
        request_id: r.try_get(6)?,
        attempts: count(r.try_get(7)?),
        replays: count(r.try_get(8)?),
        accepted_at: r.try_get(9)?,
        age_from: r.try_get(10)?,
        next_attempt_at: r.try_get(11)?,
        lease_owner: r.try_get(12)?,
        last_error: r.try_get(13)?,
        finished_at: r.try_get(14)?,
        body_bytes: unsigned(r.try_get(15)?),
    })
}

fn claimed(r: &Row) -> Result<Claimed, PgError> {
    Ok(Claimed {
        id: r.try_get(0)?,
        route: r.try_get(1)?,
        organization_id: r.try_get(2)?,
        action_id: r.try_get(3)?,
        notification_ids: r.try_get(4)?,
        request_id: r.try_get(5)?,
        body: Bytes::from(r.try_get::<_, Option<Vec<u8>>>(6)?.unwrap_or_default()),
        attempts: count(r.try_get(7)?),
        accepted_at: r.try_get(8)?,
        age_from: r.try_get(9)?,
        lease_until: r.try_get(10)?,
    })
}

/// A state read back; the CHECK constraint keeps it one of ours (`queued` if it were not).
fn state(r: &Row, i: usize) -> Result<State, PgError> {
    let s: String = r.try_get(i)?;
    Ok(s.parse().unwrap_or(State::Queued))
}

/// A count or a size (never negative in the store; read as 0 if it were).
fn unsigned(v: i64) -> u64 {
    v.max(0).unsigned_abs()
}

fn count(v: i32) -> u32 {
    v.max(0).unsigned_abs()
}

/// At most [`MAX_ERROR_BYTES`], without NUL (PostgreSQL text cannot hold one).
fn bounded_error(e: &str) -> String {
    let e = e.replace('\0', "");
    let mut end = e.len().min(MAX_ERROR_BYTES);
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    e[..end].to_owned()
}

/// `t - d`, never before the Unix epoch (PostgreSQL's range is far wider; the epoch is a
/// safe floor for every window the store compares).
fn before(t: SystemTime, d: Duration) -> SystemTime {
    t.checked_sub(d)
        .filter(|v| *v >= UNIX_EPOCH)
        .unwrap_or(UNIX_EPOCH)
}

/// `t + d`, capped in the year 9999.
fn after(t: SystemTime, d: Duration) -> SystemTime {
    const LAST: Duration = Duration::from_secs(253_402_300_799);
    t.checked_add(d)
        .filter(|v| *v <= UNIX_EPOCH + LAST)
        .unwrap_or(UNIX_EPOCH + LAST)
}

/// `sslmode`, as libpq reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

struct ParsedUrl {
    config: tokio_postgres::Config,
    tls: TlsMode,
    root_cert: Option<RootCert>,
}

enum RootCert {
    /// The operating system's roots.
    System,
    File(PathBuf),
}

/// Read the URL: the TLS parameters tokio-postgres does not know are taken out here, the rest
/// is its own. Messages never quote the URL.
fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let lower = url.get(..13).unwrap_or(url).to_ascii_lowercase();
    if !(lower.starts_with("postgres://") || lower.starts_with("postgresql://")) {
        return Err(
            "the store's PostgreSQL URL must start with postgres:// or postgresql://".into(),
        );
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut tls = TlsMode::Prefer;
    let mut root_cert = None;
    let mut rest = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "sslmode" => {
                tls = match &*v {
                    "disable" => TlsMode::Disable,
                    "prefer" => TlsMode::Prefer,
                    "require" => TlsMode::Require,
                    "verify-ca" => TlsMode::VerifyCa,
                    "verify-full" => TlsMode::VerifyFull,
                    _ => {
                        return Err("the store's PostgreSQL URL has an unknown sslmode: use \
                             disable, prefer, require, verify-ca or verify-full"
                            .into())
                    }
                }
            }
            "sslrootcert" => {
                root_cert = Some(if &*v == "system" {
                    RootCert::System
                } else {
                    RootCert::File(PathBuf::from(&*v))
                })
            }
            "sslcert" | "sslkey" | "sslpassword" | "sslcrl" => {
                return Err(format!(
                    "the store's PostgreSQL URL sets `{k}`: client certificates and CRLs are \
                     not supported; authenticate with a password (SCRAM) over verify-full"
                ))
            }
            _ => {
                rest.append_pair(&k, &v);
            }
        }
    }
    let rest = rest.finish();
    let cleaned = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{rest}")
    };
    let config = tokio_postgres::Config::from_str(&cleaned).map_err(|e| {
        let mut text = e.to_string();
        if let Some(s) = std::error::Error::source(&e) {
            text = format!("{text}: {s}");
        }
        format!("the store's PostgreSQL URL cannot be read: {text}")
    })?;
    if config.get_hosts().is_empty() {
        return Err("the store's PostgreSQL URL names no host".into());
    }
    Ok(ParsedUrl {
        config,
        tls,
        root_cert,
    })
}

/// `postgres://user@host:port/database`, for messages.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            let port = config
                .get_ports()
                .get(i)
                .or_else(|| config.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default();
    format!("postgres://{user}{}/{db}", hosts.join(","))
}

/// The rustls client configuration for `mode` (unused when TLS is off).
fn tls_config(mode: TlsMode, root: Option<&RootCert>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verify = match mode {
        TlsMode::Disable => None,
        TlsMode::VerifyFull => Some(true),
        TlsMode::VerifyCa => Some(false),
        TlsMode::Prefer | TlsMode::Require => root.map(|_| false),
    };
    let config = match verify {
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
        Some(check_name) => {
            let roots = Arc::new(roots(root)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                .build()
                .map_err(|e| e.to_string())?;
            if check_name {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyHostName(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    Ok(config)
}

fn roots(root: Option<&RootCert>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match root {
        Some(RootCert::File(path)) => {
            let certs = std::fs::File::open(path)
                .and_then(|f| {
                    rustls_pemfile::certs(&mut std::io::BufReader::new(f))
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
            let (ok, _) = roots.add_parsable_certificates(certs);
            if ok == 0 {
                return Err(format!(
                    "sslrootcert {} holds no certificate",
                    path.display()
                ));
            }
        }
        None | Some(RootCert::System) => {
            let certs = rustls_native_certs::load_native_certs()
                .map_err(|e| format!("cannot load the system's root certificates: {e}"))?;
            let (ok, _) = roots.add_parsable_certificates(certs);
            if ok == 0 {
                return Err("the system has no root certificate: set sslrootcert".into());
            }
        }
    }
    Ok(roots)
}

/// `prefer`/`require` without a root: any certificate (libpq's behaviour), but the handshake's
/// signatures are still checked, so channel binding means something.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must verify; the name in it is not compared with the host.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain first and the name last: a name error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Scrubs the password (as written in the URL, and decoded) from any text before it leaves.
struct Redactor {
    needles: std::sync::Mutex<Vec<String>>,
}

impl Redactor {
    fn from_url(url: &str) -> Redactor {
        let r = Redactor {
            needles: std::sync::Mutex::new(Vec::new()),
        };
        // The userinfo's password: between the scheme's `//` and the last `@` before the
        // path, after the first `:`.
        if let Some((_, after_scheme)) = url.split_once("://") {
            let authority = after_scheme
                .split(['/', '?'])
                .next()
                .unwrap_or(after_scheme);
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                if let Some((_, password)) = userinfo.split_once(':') {
                    r.add(password);
                }
            }
        }
        if let Some((_, query)) = url.split_once('?') {
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                if k == "password" {
                    r.add(&v);
                }
            }
            for pair in query.split('&') {
                if let Some(("password", raw)) = pair.split_once('=') {
                    r.add(raw);
                }
            }
        }
        r
    }

    fn add(&self, needle: &str) {
        let mut needles = self
            .needles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let decoded = url::form_urlencoded::parse(format!("x={needle}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned());
        for n in std::iter::once(needle.to_owned()).chain(decoded) {
            if !n.is_empty() && !needles.contains(&n) {
                needles.push(n);
            }
        }
        // Longest first, so a password containing another is scrubbed whole.
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
    }

    fn apply(&self, text: &str) -> String {
        let needles = self
            .needles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = text.to_owned();
        for n in needles.iter() {
            out = out.replace(n.as_str(), "<redacted>");
        }
        out
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_server_is_named_without_the_password() {
        let url = "postgresql://obm:s3cr%40t-pw@db.example:6432/queue?sslmode=verify-full&application_name=x";
        let parsed = parse_url(url).unwrap();
        assert_eq!(parsed.tls, TlsMode::VerifyFull);
        assert_eq!(
            describe(&parsed.config),
            "postgres://obm@db.example:6432/queue"
        );
        let r = Redactor::from_url(url);
        assert_eq!(
            r.apply("a s3cr%40t-pw b s3cr@t-pw c"),
            "a <redacted> b <redacted> c"
        );
        let q = Redactor::from_url("postgres://h/db?user=u&password=p%2Bq");
        assert_eq!(q.apply("p+q and p%2Bq"), "<redacted> and <redacted>");
    }

    #[test]
    fn url_errors_say_what_is_wrong_and_quote_nothing() {
        for (url, want) in [
            ("mysql://u:hunter2@h/db", "must start with postgres://"),
            (
                "postgres://u:hunter2@h/db?sslmode=verify-everything",
                "unknown sslmode",
            ),
            (
                "postgres://u:hunter2@h/db?sslcert=/x.pem",
                "client certificates",
            ),
            ("postgres://u:hunter2@h/db?bogus=1", "cannot be read"),
            ("postgres://u:hunter2@h:99999/db", "cannot be read"),
        ] {
            let err = PgStore::new(&Secret::new(url), PgOptions::default()).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(want), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!format!("{err:?}").contains("hunter2"));
        }
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(
            lock_key(&["claim", "orders"]),
            lock_key(&["claim", "orders"])
        );
        assert_ne!(
            lock_key(&["claim", "orders"]),
            lock_key(&["claim", "invoices"])
        );
        assert_ne!(lock_key(&["ab", "c"]), lock_key(&["a", "bc"]));
    }
}
