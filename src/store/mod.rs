//! The message store behind queued (store-and-forward) delivery and the duplicate window.
//!
//! ```text
//! request path:  Store::admit ──► Stored { id }   durable (fsync'd) before it returns: Ack
//!                               ──► Duplicate       every notification already accepted: Ack
//!                               ──► Full(bound)     over a bound: 503, Salesforce retries
//!                               ──► Err(..)         commit failed (disk full, ...): 503
//! delivery:      Store::claim (short transaction, lease) ─► HTTP call (no transaction open)
//!                ─► Store::delivered | Store::retry_later (backoff) | Store::dead
//! direct mode:   Store::seen_all before delivering, Store::record_acked after a verified Ack
//! operators:     list / show / retry_now / replay / drop_messages, while `serve` runs
//! metrics:       depth, oldest_waiting (the caller times `admit` for commit latency)
//! ```
//!
//! [`Store`] is the interface; [`SqliteStore`] is the embedded engine (one SQLite file, WAL,
//! group commit) and [`PgStore`] the engine for a fleet of instances sharing one PostgreSQL
//! database (`postgres.rs`). Both keep the same promises, proved by one conformance suite
//! (`tests/conformance.rs`): every query is a short transaction over one message or one route
//! (`claim` maps onto `FOR UPDATE SKIP LOCKED` in PostgreSQL), leases are timestamps compared
//! with the caller's `now`, per-route concurrency is a count of unexpired leases taken at claim
//! time, and the duplicate window is a table keyed by (route, organization id, Notification Id)
//! with the time last accepted.
//!
//! What the store defends against: an Ack for a message that is not on disk (`admit` answers
//! `Stored` only after the commit's fsync), a worker that dies mid-delivery (its lease
//! expires and another worker claims the message), a full disk (an error, never a corrupt
//! store; it recovers when space returns), unbounded growth (`Bounds`), and files readable by
//! other users (mode 0600, directory 0700). What it does not: it does not know what a secret
//! is. The caller stores the *rewritten* body (never a session id or a token) and never passes
//! a token to any method. Bodies rest uncompressed, exactly as they will be forwarded, so an
//! operator can inspect them with `sqlite3` (`SELECT CAST(body AS TEXT) FROM messages`).
//!
//! Time is the caller's where a decision depends on it (`claim`, `admit` through
//! `accepted_at`, `seen_all`, `prune`, ...), so workers and tests can drive a clock; the
//! moments recorded for operators only (`finished_at`) are the wall clock.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Serialize, Serializer};

mod postgres;
mod sqlite;
pub use postgres::{Migrated, PgOptions, PgStore};
pub use sqlite::{OpenOptions, SqliteStore, WriterStats};

#[cfg(test)]
mod tests;

/// The database file of the embedded store inside `[store] path`.
pub const SQLITE_FILE: &str = "obmguard.sqlite3";

/// Open the store `[store]` names, with its schema up to date. Blocking: call it at start-up
/// or from a command, not from a request. PostgreSQL is connected to and migrated on a thread
/// of its own (several instances may do this at once: the migration takes an advisory lock);
/// the store returned connects lazily, on the runtime that first uses it.
pub fn open(c: &crate::config::StoreConfig) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    use crate::config::StoreEngine;
    match &c.engine {
        StoreEngine::Sqlite { path } => {
            let s = SqliteStore::open(path.join(SQLITE_FILE), OpenOptions::default())?;
            Ok(std::sync::Arc::new(s))
        }
        StoreEngine::Postgres { url, pool_size } => {
            let options = PgOptions {
                max_connections: *pool_size,
                ..PgOptions::default()
            };
            migrate_postgres(url, options.clone())?;
            Ok(std::sync::Arc::new(PgStore::new(url, options)?))
        }
    }
}

/// Connect to PostgreSQL and bring its schema up to date, on a thread and runtime of its own
/// (so it may be called from anywhere, a runtime included).
pub fn migrate_postgres(
    url: &crate::secret::Secret,
    options: PgOptions,
) -> Result<Migrated, StoreError> {
    let url = url.clone();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| StoreError::Other(format!("cannot start a runtime: {e}")))?;
                rt.block_on(async {
                    let store = PgStore::connect(&url, options).await?;
                    store.migrate().await
                })
            })
            .join()
            .unwrap_or_else(|_| Err(StoreError::Other("the migration thread panicked".into())))
    })
}

/// A message that passed every check, ready to be committed.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// The route's name (its path or configured name; the caller chooses, consistently).
    pub route: String,
    /// The organization id in its 15-character canonical form.
    pub organization_id: String,
    /// The Notification Ids as sent (18 characters), in message order.
    pub notification_ids: Vec<String>,
    /// The ActionId as sent.
    pub action_id: String,
    /// The rewritten body: exactly the bytes that will be forwarded. Never a session id or a
    /// token.
    pub body: Bytes,
    /// When obmguard accepted the request. Also the start of the message's maximum age and
    /// the moment its notifications enter the duplicate window.
    pub accepted_at: SystemTime,
    /// The request id of the audit record, to join the two.
    pub request_id: String,
}

/// What `admit` did with a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Committed durably (the fsync is done): answer Salesforce with an Ack.
    Stored { id: i64 },
    /// Every notification was accepted already within the duplicate window: Ack, store
    /// nothing.
    Duplicate,
    /// Storing it would pass this bound: answer 503, Salesforce retries later.
    Full(Bound),
}

/// The bound that refused a message, for the 503's log line and metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// `Bounds::max_messages`: messages held over all routes.
    Messages,
    /// `Bounds::max_bytes`: body bytes held over all routes.
    Bytes,
    /// `Bounds::per_route_max_messages`.
    RouteMessages,
    /// `Bounds::per_route_max_bytes`.
    RouteBytes,
}

impl Bound {
    /// A metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Bound::Messages => "messages",
            Bound::Bytes => "bytes",
            Bound::RouteMessages => "route_messages",
            Bound::RouteBytes => "route_bytes",
        }
    }
}

/// How much the store may hold. "Held" is every message not delivered yet: queued,
/// delivering and dead (dead letters keep their space until an operator replays or drops
/// them). Bytes are body bytes. Passed with every `admit`, so a reload applies at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub max_messages: u64,
    pub max_bytes: u64,
    pub per_route_max_messages: Option<u64>,
    pub per_route_max_bytes: Option<u64>,
}

impl Bounds {
    /// No bound at all (tests, and the CLI's tools that never admit).
    pub fn unbounded() -> Bounds {
        Bounds {
            max_messages: u64::MAX,
            max_bytes: u64::MAX,
            per_route_max_messages: None,
            per_route_max_bytes: None,
        }
    }
}

/// A message handed to a delivery worker, with a lease.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub id: i64,
    pub route: String,
    pub organization_id: String,
    pub action_id: String,
    pub notification_ids: Vec<String>,
    pub request_id: String,
    pub body: Bytes,
    /// Delivery attempts including this one (1 on the first claim). A worker that died
    /// mid-delivery counts as an attempt.
    pub attempts: u32,
    pub accepted_at: SystemTime,
    /// Start of the maximum age: `accepted_at`, or the last replay.
    pub age_from: SystemTime,
    /// The lease ends here; after it another worker may claim the message.
    pub lease_until: SystemTime,
}

/// Where a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for its next attempt (`next_attempt_at`).
    Queued,
    /// Claimed by a worker whose lease ends at `next_attempt_at`.
    Delivering,
    /// The receiver acked it.
    Delivered,
    /// Given up after its maximum age; waits for an operator (replay or drop).
    Dead,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Queued,
        State::Delivering,
        State::Delivered,
        State::Dead,
    ];

    /// The name used in the database, the CLI and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Delivering => "delivering",
            State::Delivered => "delivered",
            State::Dead => "dead",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for State {
    type Err = String;
    fn from_str(s: &str) -> Result<State, String> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown state `{s}`: use queued, delivering, delivered or dead")
            })
    }
}

/// One message as `queue list` shows it (no body). Serializes for `--format json`; times are
/// RFC 3339 UTC with milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub id: i64,
    pub route: String,
    pub state: State,
    pub organization_id: String,
    pub action_id: String,
    pub notification_ids: Vec<String>,
    pub request_id: String,
    pub attempts: u32,
    /// How many times an operator replayed it.
    pub replays: u32,
    #[serde(serialize_with = "rfc3339")]
    pub accepted_at: SystemTime,
    /// Start of the maximum age (`accepted_at`, or the last replay).
    #[serde(serialize_with = "rfc3339")]
    pub age_from: SystemTime,
    /// Queued: when it is due. Delivering: when the lease ends.
    #[serde(serialize_with = "rfc3339")]
    pub next_attempt_at: SystemTime,
    pub lease_owner: Option<String>,
    pub last_error: Option<String>,
    /// Delivered or dead: when.
    #[serde(serialize_with = "rfc3339_opt")]
    pub finished_at: Option<SystemTime>,
    pub body_bytes: u64,
}

/// One message as `queue show` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Detail {
    #[serde(flatten)]
    pub summary: Summary,
    /// Only when asked for, and `None` once a delivered message's body was pruned. Not
    /// serialized: the CLI prints it as it is.
    #[serde(skip)]
    pub body: Option<Bytes>,
}

/// Which messages an operator command applies to. Every field narrows; the default matches
/// every message (the CLI should ask before dropping everything).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub id: Option<i64>,
    pub route: Option<String>,
    pub state: Option<State>,
    /// Accepted before this moment (`queue list --older-than 1h`: see [`Filter::older_than`]).
    pub accepted_before: Option<SystemTime>,
    /// Carries this Notification Id (exactly as sent).
    pub notification_id: Option<String>,
    /// At most this many, oldest first.
    pub limit: Option<usize>,
}

impl Filter {
    /// Messages accepted more than `age` ago, by the wall clock.
    pub fn older_than(mut self, age: Duration) -> Filter {
        self.accepted_before = Some(SystemTime::now() - age);
        self
    }
}

/// Messages and body bytes in one state on one route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Depth {
    pub route: String,
    pub state: State,
    pub messages: u64,
    pub bytes: u64,
}

/// How long `prune` keeps what it can forget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Delivered messages (metadata and body), after they were delivered.
    pub delivered: Duration,
    /// Duplicate-window entries, after they were last accepted: the longest window of any
    /// route.
    pub seen: Duration,
}

/// What one `prune` forgot. Each kind is capped per call ([`PRUNE_BATCH`]) to keep the
/// transaction short: call again while a count equals the cap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub delivered: usize,
    pub seen: usize,
}

/// The most rows of each kind one `prune` deletes.
pub const PRUNE_BATCH: usize = 5_000;

/// The store. Every method is a short transaction; none is held across a network call.
/// Methods that take `now` use it for every decision about time.
#[async_trait]
pub trait Store: Send + Sync {
    /// Commit a message unless it is a duplicate or would pass a bound. `Stored` means durable.
    /// With a `dedupe_window`, a message whose every Notification Id was accepted on this
    /// route for this organization less than `dedupe_window` before `m.accepted_at` is a
    /// `Duplicate`; otherwise its ids are recorded as accepted in the same transaction
    /// (a partial overlap is stored, and refreshes the overlapping entries).
    ///
    /// A message with no route, organization id or Notification Id is a caller's bug:
    /// `StoreError::Invalid`. If the caller stops waiting (its future is dropped) once the
    /// write was queued, the message may still be stored: delivery stays at least once, and
    /// Salesforce's retry of it is then a duplicate.
    async fn admit(
        &self,
        m: NewMessage,
        dedupe_window: Option<Duration>,
        bounds: &Bounds,
    ) -> Result<Admission, StoreError>;

    /// Direct mode: were all these ids recorded (`record_acked` or `admit`) on this route
    /// within `window` before `now`? False for an empty list.
    async fn seen_all(
        &self,
        route: &str,
        organization_id: &str,
        ids: &[String],
        window: Duration,
        now: SystemTime,
    ) -> Result<bool, StoreError>;

    /// Direct mode: the receiver acked a message carrying these ids at `at`.
    async fn record_acked(
        &self,
        route: &str,
        organization_id: &str,
        ids: &[String],
        at: SystemTime,
    ) -> Result<(), StoreError>;

    /// The route's due messages (queued and due, or delivering with an expired lease), at
    /// most `max`, oldest due first, each leased to `worker` until `now + lease`, in one
    /// transaction; never more than `concurrency` unexpired leases out on the route in all.
    /// Empty if nothing is due or the route is at its concurrency. Worker names must be unique
    /// across every process sharing the store (the lease belongs to the name).
    async fn claim_batch(
        &self,
        route: &str,
        worker: &str,
        lease: Duration,
        concurrency: usize,
        max: usize,
        now: SystemTime,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// As [`Store::claim_batch`], one message.
    async fn claim(
        &self,
        route: &str,
        worker: &str,
        lease: Duration,
        concurrency: usize,
        now: SystemTime,
    ) -> Result<Option<Claimed>, StoreError> {
        let mut one = self
            .claim_batch(route, worker, lease, concurrency, 1, now)
            .await?;
        Ok(one.pop())
    }

    /// Leases held by workers whose id starts with `owner_prefix` end now: their messages are
    /// due at `now`. For start-up, to take back what a process that died was delivering
    /// (without waiting for its leases to expire). Returns how many.
    async fn release(&self, owner_prefix: &str, now: SystemTime) -> Result<usize, StoreError>;

    /// The receiver acked message `id`. Applies even if `worker`'s lease has expired (an Ack
    /// is a fact); `false` if the message is no longer waiting (dropped, or already
    /// delivered).
    async fn delivered(&self, id: i64, worker: &str) -> Result<bool, StoreError>;

    /// Delivery failed; try again at `at` (see [`RetryPolicy::after_failure`]). `false`, and
    /// nothing changed, if `worker` no longer holds the lease.
    async fn retry_later(
        &self,
        id: i64,
        worker: &str,
        at: SystemTime,
        error: &str,
    ) -> Result<bool, StoreError>;

    /// Give up: a dead letter. `false`, and nothing changed, if `worker` no longer holds the
    /// lease.
    async fn dead(&self, id: i64, worker: &str, error: &str) -> Result<bool, StoreError>;

    /// Messages matching `f`, oldest first, without bodies.
    async fn list(&self, f: &Filter) -> Result<Vec<Summary>, StoreError>;

    /// One message; its body only when `with_body`.
    async fn show(&self, id: i64, with_body: bool) -> Result<Option<Detail>, StoreError>;

    /// Queued or dead messages matching `f` become due at `now` (dead ones keep their age,
    /// so a failure dead-letters them again). Returns how many.
    async fn retry_now(&self, f: &Filter, now: SystemTime) -> Result<usize, StoreError>;

    /// Dead letters matching `f` go back in the queue, due at `now`, with a fresh age (a
    /// full maximum age from `now`) and their attempts reset. Returns how many.
    async fn replay(&self, f: &Filter, now: SystemTime) -> Result<usize, StoreError>;

    /// Delete the messages matching `f`, in any state. Returns how many.
    async fn drop_messages(&self, f: &Filter) -> Result<usize, StoreError>;

    /// Messages and bytes per route and state (only the pairs that exist).
    async fn depth(&self) -> Result<Vec<Depth>, StoreError>;

    /// Per route with waiting messages (queued or delivering): the age at `now` of the
    /// oldest, by `accepted_at`.
    async fn oldest_waiting(&self, now: SystemTime) -> Result<Vec<(String, Duration)>, StoreError>;

    /// Forget delivered messages and duplicate-window entries older than `keep`.
    async fn prune(&self, now: SystemTime, keep: &Retention) -> Result<Pruned, StoreError>;
}

/// Why the store could not do what was asked. Messages say what to do; none contains a body.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the store's filesystem is full: free space; messages are refused with 503 meanwhile")]
    DiskFull,
    #[error(
        "the store stayed locked by another process past the busy timeout: look for a \
         long-running `queue` command on the same store; messages are refused with 503 meanwhile"
    )]
    Busy,
    #[error("cannot open the store at {path}: {detail}; check that the directory exists or can be created, and that obmguard's user may write to it")]
    Open { path: String, detail: String },
    #[error(
        "the store at {path} has schema version {found}, newer than this obmguard knows \
         ({supported}): run the obmguard that wrote it, or a newer one"
    )]
    SchemaTooNew {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error(
        "the store at {path} has schema version {found}, older than this obmguard's \
         ({supported}): run `obmguard store migrate`"
    )]
    SchemaTooOld {
        path: String,
        found: i64,
        supported: i64,
    },
    /// The store's database server cannot be reached, refused obmguard, or did not answer in
    /// time (PostgreSQL). `server` never holds a password.
    #[error(
        "the store's PostgreSQL at {server} is unavailable ({detail}): check that it runs, \
         is reachable and accepts obmguard's user; messages are refused with 503 meanwhile"
    )]
    Unavailable { server: String, detail: String },
    #[error("the store is corrupt ({detail}): stop obmguard, keep a copy of the store's files, and restore it or start an empty one")]
    Corrupt { detail: String },
    #[error(
        "the store's disk reported an I/O error ({detail}): check the disk and the kernel log"
    )]
    Io { detail: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the store's writer has stopped: restart obmguard")]
    Closed,
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// Errors of the environment (disk, locks, a broken file, a database server unavailable),
    /// as opposed to one request's. In SQLite they fail a whole group commit; any other error
    /// fails only its own request.
    pub fn is_environmental(&self) -> bool {
        matches!(
            self,
            StoreError::DiskFull
                | StoreError::Busy
                | StoreError::Corrupt { .. }
                | StoreError::Io { .. }
                | StoreError::Closed
                | StoreError::Unavailable { .. }
        )
    }
}

/// The retry schedule of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First retry after about this long (`retry_initial_ms`).
    pub initial: Duration,
    /// Retries never wait longer than this (`retry_max_ms`).
    pub max: Duration,
    /// After this long since `age_from`, a failed message becomes a dead letter
    /// (`max_age_seconds`).
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(2 * 3600),
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    RetryAt(SystemTime),
    Dead,
}

impl RetryPolicy {
    /// After attempt number `attempts` failed at `now`: a dead letter once the message's age
    /// reached `max_age`, else a retry after [`backoff`], never later than the moment it
    /// reaches `max_age` (so the last try happens at that moment).
    pub fn after_failure(
        &self,
        attempts: u32,
        age_from: SystemTime,
        now: SystemTime,
        jitter_seed: u64,
    ) -> AfterFailure {
        let deadline = age_from + self.max_age;
        if now >= deadline {
            return AfterFailure::Dead;
        }
        let at = now + backoff(attempts, self.initial, self.max, jitter_seed);
        AfterFailure::RetryAt(at.min(deadline))
    }

    /// Whether a message is past its maximum age at `now` (a worker may dead-letter it
    /// without trying).
    pub fn expired(&self, age_from: SystemTime, now: SystemTime) -> bool {
        now >= age_from + self.max_age
    }
}

/// The wait after failed attempt number `attempt` (1-based): `initial`, doubling each
/// attempt, capped at `max`, less a jitter of up to a quarter (so between 3/4 and all of the
/// schedule, never more than `max`). Pure: the same seed gives the same wait; use e.g. the
/// message id mixed with the worker's randomness to spread retries that failed together.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, jitter_seed: u64) -> Duration {
    let attempt = attempt.max(1);
    let mut base = initial.min(max);
    if base.is_zero() {
        return base;
    }
    for _ in 1..attempt {
        base = base.saturating_mul(2);
        if base >= max {
            base = max;
            break;
        }
    }
    let base_ns = base.as_nanos();
    let r = splitmix64(jitter_seed ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let cut = (base_ns / 4) * u128::from(r) / u128::from(u64::MAX);
    let ns = base_ns - cut;
    Duration::new(
        u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX),
        (ns % 1_000_000_000) as u32,
    )
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn rfc3339<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::audit::timestamp(*t))
}

fn rfc3339_opt<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}
