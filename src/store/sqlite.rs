//! The embedded engine: one SQLite file in WAL mode, written by one thread that groups
//! concurrent commits.
//!
//! ```text
//! admit / claim / mark / operator writes ──► channel ──► writer thread:
//!     take every job waiting (up to max_batch) ─► BEGIN IMMEDIATE
//!     ─► each job in its own SAVEPOINT (a job's own error undoes only that job)
//!     ─► COMMIT (synchronous=FULL: the WAL is fsync'd) ─► answer every job
//! reads (list, show, depth, seen_all, ...) ──► spawn_blocking on a pooled connection
//! ```
//! While one batch is being fsync'd the next one gathers in the channel, so the number of
//! fsyncs follows the disk, not the request rate. An error of the environment (disk full,
//! lock timeout, I/O) undoes the whole batch and every job in it gets that error: nothing is
//! answered `Stored` that was not committed.
//!
//! Another process (the `queue` CLI) may open the same file at any time: WAL lets readers run
//! beside the writer, and a busy timeout makes two writers wait for each other instead of
//! failing. Every write transaction starts `IMMEDIATE`, so it never fails half-way on a lock.
//!
//! Files: the database is created mode 0600 (SQLite gives its `-wal` and `-shm` files the same
//! mode) and its directory 0700 if missing. Temporary tables and sorts stay in memory, so
//! nothing is written anywhere else. The schema is versioned with `PRAGMA user_version`;
//! [`MIGRATIONS`] are applied on open, in one transaction.
//!
//! Not done here: shrinking the file (deleted rows' pages are reused, not returned to the
//! filesystem), encryption at rest (nothing secret is stored).

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, ErrorCode, OpenFlags, OptionalExtension};
use tokio::sync::oneshot;

use super::{
    Admission, Bound, Bounds, Claimed, Depth, Detail, Filter, NewMessage, Pruned, Retention, State,
    Store, StoreError, Summary, PRUNE_BATCH,
};

/// The schema, one entry per version: `PRAGMA user_version` is the number applied.
/// Never edit an entry once released: add one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: messages, the duplicate window, and the totals the bounds are checked against.
    r#"
    CREATE TABLE messages (
        id               INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused, so a CLI id stays valid
        route            TEXT    NOT NULL,
        state            TEXT    NOT NULL
                         CHECK (state IN ('queued', 'delivering', 'delivered', 'dead')),
        organization_id  TEXT    NOT NULL,                  -- 15-character form
        action_id        TEXT    NOT NULL,
        notification_ids TEXT    NOT NULL,                  -- JSON array, as sent
        request_id       TEXT    NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        replays          INTEGER NOT NULL DEFAULT 0,
        accepted_at_ms   INTEGER NOT NULL,                  -- ms since the Unix epoch
        age_from_ms      INTEGER NOT NULL,                  -- start of max age; a replay resets it
        next_attempt_ms  INTEGER NOT NULL,                  -- queued: due; delivering: lease end
        lease_owner      TEXT,
        last_error       TEXT,
        finished_at_ms   INTEGER,                           -- delivered or dead
        body_bytes       INTEGER NOT NULL,                  -- never updated (the held totals rely on it)
        body             BLOB                               -- exactly what is forwarded
    );
    CREATE INDEX messages_due ON messages (route, next_attempt_ms)
        WHERE state IN ('queued', 'delivering');
    CREATE INDEX messages_leases ON messages (route, next_attempt_ms)
        WHERE state = 'delivering';
    CREATE INDEX messages_delivered ON messages (finished_at_ms)
        WHERE state = 'delivered';

    -- (route, organization, Notification Id) last accepted (queued) or acked (direct).
    CREATE TABLE seen (
        route           TEXT    NOT NULL,
        organization_id TEXT    NOT NULL,
        notification_id TEXT    NOT NULL,
        seen_at_ms      INTEGER NOT NULL,
        PRIMARY KEY (route, organization_id, notification_id)
    ) WITHOUT ROWID;
    CREATE INDEX seen_by_time ON seen (seen_at_ms);

    -- Messages and body bytes held (not delivered) per route, kept by triggers so that any
    -- writer, sqlite3 included, keeps them right, and a bound check is one lookup.
    CREATE TABLE held (
        route    TEXT    PRIMARY KEY,
        messages INTEGER NOT NULL,
        bytes    INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TRIGGER held_insert AFTER INSERT ON messages WHEN NEW.state <> 'delivered' BEGIN
        INSERT OR IGNORE INTO held (route, messages, bytes) VALUES (NEW.route, 0, 0);
        UPDATE held SET messages = messages + 1, bytes = bytes + NEW.body_bytes
            WHERE route = NEW.route;
    END;
    CREATE TRIGGER held_delete AFTER DELETE ON messages WHEN OLD.state <> 'delivered' BEGIN
        UPDATE held SET messages = messages - 1, bytes = bytes - OLD.body_bytes
            WHERE route = OLD.route;
    END;
    CREATE TRIGGER held_release AFTER UPDATE OF state ON messages
        WHEN OLD.state <> 'delivered' AND NEW.state = 'delivered' BEGIN
        UPDATE held SET messages = messages - 1, bytes = bytes - OLD.body_bytes
            WHERE route = OLD.route;
    END;
    CREATE TRIGGER held_retake AFTER UPDATE OF state ON messages
        WHEN OLD.state = 'delivered' AND NEW.state <> 'delivered' BEGIN
        INSERT OR IGNORE INTO held (route, messages, bytes) VALUES (NEW.route, 0, 0);
        UPDATE held SET messages = messages + 1, bytes = bytes + NEW.body_bytes
            WHERE route = NEW.route;
    END;
    "#,
];

/// The columns [`summary`] reads, in order.
const SUMMARY_COLUMNS: &str = "id, route, state, organization_id, action_id, notification_ids, \
     request_id, attempts, replays, accepted_at_ms, age_from_ms, next_attempt_ms, lease_owner, \
     last_error, finished_at_ms, body_bytes";

/// Longest `last_error` kept, in bytes.
const MAX_ERROR_BYTES: usize = 500;

/// Idle read connections kept for reuse.
const READ_POOL: usize = 4;

/// How a [`SqliteStore`] is opened.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// How long a write waits for another process's write to finish before failing with
    /// `StoreError::Busy`.
    pub busy_timeout: Duration,
    /// The most jobs committed in one transaction.
    pub max_batch: usize,
    /// A hard ceiling on the database file (`PRAGMA max_page_count`): reaching it behaves
    /// like a full disk. `None`: only the filesystem limits it.
    pub max_file_bytes: Option<u64>,
}

impl Default for OpenOptions {
    fn default() -> OpenOptions {
        OpenOptions {
            busy_timeout: Duration::from_secs(5),
            max_batch: 1024,
            max_file_bytes: None,
        }
    }
}

/// What the writer thread has done since open: `transactions` committed, holding `writes`
/// jobs. `writes / transactions` is the group-commit factor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub transactions: u64,
    pub writes: u64,
}

#[derive(Default)]
struct Counters {
    transactions: AtomicU64,
    writes: AtomicU64,
}

/// The SQLite store. Cheap to share (`Arc` it, or clone the store itself); dropping the last
/// handle finishes the queued writes and stops the writer thread.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: OpenOptions,
    jobs: Mutex<Option<mpsc::Sender<Box<dyn Job>>>>,
    writer: Option<JoinHandle<()>>,
    readers: Mutex<Vec<Connection>>,
    counters: Arc<Counters>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer's loop once the queued jobs are done.
        self.jobs
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl SqliteStore {
    /// Open the store at `path` (a file), creating it (0600) and its directory (0700) if
    /// missing, and bring its schema up to date. Blocking: call it at start-up, or from
    /// `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>, options: OpenOptions) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let open_err = |detail: String| StoreError::Open {
            path: path.display().to_string(),
            detail,
        };
        prepare_files(&path).map_err(|e| open_err(e.to_string()))?;
        let conn = connect(&path, &options, false).map_err(|e| open_err(e.to_string()))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| open_err(classify(e).to_string()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_err(format!(
                "the filesystem does not support WAL (journal mode stayed `{mode}`)"
            )));
        }
        migrate(&conn, &path)?;

        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel();
        let max_batch = options.max_batch.max(1);
        let writer_counters = Arc::clone(&counters);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx, max_batch, &writer_counters))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path,
                options,
                jobs: Mutex::new(Some(tx)),
                writer: Some(writer),
                readers: Mutex::new(Vec::new()),
                counters,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// What the writer thread has committed so far.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            transactions: self.inner.counters.transactions.load(Ordering::Relaxed),
            writes: self.inner.counters.writes.load(Ordering::Relaxed),
        }
    }

    /// `PRAGMA integrity_check` ("ok" when sound), for `queue check` and tests.
    pub async fn integrity_check(&self) -> Result<String, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("PRAGMA integrity_check")?;
            let lines: Vec<String> = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()?;
            Ok(lines.join("\n"))
        })
        .await
    }

    /// Run `work` in the writer's next group transaction.
    async fn write<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnMut(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        {
            let jobs = self
                .inner
                .jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let jobs = jobs.as_ref().ok_or(StoreError::Closed)?;
            jobs.send(Box::new(Pending {
                work,
                result: None,
                reply,
            }))
            .map_err(|_| StoreError::Closed)?;
        }
        answer.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Run `work` on a read connection, off the async runtime.
    async fn read<R, F>(&self, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let pooled = inner
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => connect(&inner.path, &inner.options, true).map_err(classify)?,
            };
            let result = work(&conn);
            let mut pool = inner.readers.lock().unwrap_or_else(PoisonError::into_inner);
            if pool.len() < READ_POOL {
                pool.push(conn);
            }
            result
        })
        .await
        .unwrap_or_else(|_| Err(StoreError::Other("a store read panicked".into())))
    }
}

#[async_trait]
impl Store for SqliteStore {
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
        let bounds = *bounds;
        let ids = serde_json::to_string(&m.notification_ids)
            .map_err(|e| StoreError::Other(format!("cannot encode notification ids: {e}")))?;
        self.write(move |c| admit_in(c, &m, &ids, dedupe_window, &bounds))
            .await
    }

    async fn seen_all(
        &self,
        route: &str,
        organization_id: &str,
        ids: &[String],
        window: Duration,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let (route, org, ids) = (route.to_owned(), organization_id.to_owned(), ids.to_vec());
        let since = ms(now).saturating_sub(dur_ms(window));
        self.read(move |c| seen_all_in(c, &route, &org, &ids, since))
            .await
    }

    async fn record_acked(
        &self,
        route: &str,
        organization_id: &str,
        ids: &[String],
        at: SystemTime,
    ) -> Result<(), StoreError> {
        let (route, org, ids) = (route.to_owned(), organization_id.to_owned(), ids.to_vec());
        let at = ms(at);
        self.write(move |c| record_seen(c, &route, &org, &ids, at))
            .await
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
        let (route, worker) = (route.to_owned(), worker.to_owned());
        let now = ms(now);
        let until = now.saturating_add(dur_ms(lease));
        let concurrency = i64::try_from(concurrency).unwrap_or(i64::MAX);
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.write(move |c| {
            let live: i64 = c
                .prepare_cached(
                    "SELECT count(*) FROM messages \
                     WHERE state = 'delivering' AND route = ?1 AND next_attempt_ms > ?2",
                )?
                .query_row(params![route, now], |r| r.get(0))?;
            let n = (concurrency - live).min(max);
            if n <= 0 {
                return Ok(Vec::new());
            }
            let mut stmt = c.prepare_cached(
                "UPDATE messages SET state = 'delivering', lease_owner = ?3, \
                     next_attempt_ms = ?4, attempts = attempts + 1 \
                 WHERE id IN (SELECT id FROM messages \
                     WHERE state IN ('queued', 'delivering') AND route = ?1 \
                         AND next_attempt_ms <= ?2 \
                     ORDER BY next_attempt_ms, id LIMIT ?5) \
                 RETURNING id, route, organization_id, action_id, notification_ids, \
                     request_id, body, attempts, accepted_at_ms, age_from_ms, next_attempt_ms",
            )?;
            let rows = stmt.query_map(params![route, now, worker, until, n], |r| {
                Ok(Claimed {
                    id: r.get(0)?,
                    route: r.get(1)?,
                    organization_id: r.get(2)?,
                    action_id: r.get(3)?,
                    notification_ids: json_ids(r, 4)?,
                    request_id: r.get(5)?,
                    body: Bytes::from(r.get::<_, Option<Vec<u8>>>(6)?.unwrap_or_default()),
                    attempts: r.get(7)?,
                    accepted_at: time(r.get(8)?),
                    age_from: time(r.get(9)?),
                    lease_until: time(r.get(10)?),
                })
            })?;
            let mut claimed = rows.collect::<Result<Vec<_>, _>>()?;
            claimed.sort_by_key(|m| m.id);
            Ok(claimed)
        })
        .await
    }

    async fn release(&self, owner_prefix: &str, now: SystemTime) -> Result<usize, StoreError> {
        let (prefix, now) = (owner_prefix.to_owned(), ms(now));
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE messages SET state = 'queued', lease_owner = NULL, \
                         next_attempt_ms = ?2 \
                     WHERE state = 'delivering' \
                         AND substr(lease_owner, 1, length(?1)) = ?1",
                )?
                .execute(params![prefix, now])?;
            Ok(n)
        })
        .await
    }

    async fn delivered(&self, id: i64, _worker: &str) -> Result<bool, StoreError> {
        let now = ms(SystemTime::now());
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE messages SET state = 'delivered', finished_at_ms = ?2, \
                         lease_owner = NULL \
                     WHERE id = ?1 AND state <> 'delivered'",
                )?
                .execute(params![id, now])?;
            Ok(n == 1)
        })
        .await
    }

    async fn retry_later(
        &self,
        id: i64,
        worker: &str,
        at: SystemTime,
        error: &str,
    ) -> Result<bool, StoreError> {
        let (worker, error, at) = (worker.to_owned(), bounded_error(error), ms(at));
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE messages SET state = 'queued', next_attempt_ms = ?3, \
                         lease_owner = NULL, last_error = ?4 \
                     WHERE id = ?1 AND state = 'delivering' AND lease_owner = ?2",
                )?
                .execute(params![id, worker, at, error])?;
            Ok(n == 1)
        })
        .await
    }

    async fn dead(&self, id: i64, worker: &str, error: &str) -> Result<bool, StoreError> {
        let (worker, error) = (worker.to_owned(), bounded_error(error));
        let now = ms(SystemTime::now());
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE messages SET state = 'dead', finished_at_ms = ?3, \
                         lease_owner = NULL, last_error = ?4 \
                     WHERE id = ?1 AND state = 'delivering' AND lease_owner = ?2",
                )?
                .execute(params![id, worker, now, error])?;
            Ok(n == 1)
        })
        .await
    }

    async fn list(&self, f: &Filter) -> Result<Vec<Summary>, StoreError> {
        let (clause, mut values) = where_clause(f);
        values.push(limit(f));
        let sql =
            format!("SELECT {SUMMARY_COLUMNS} FROM messages WHERE {clause} ORDER BY id LIMIT ?");
        self.read(move |c| {
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(values), summary)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn show(&self, id: i64, with_body: bool) -> Result<Option<Detail>, StoreError> {
        let sql = format!("SELECT {SUMMARY_COLUMNS}, body FROM messages WHERE id = ?1");
        self.read(move |c| {
            let detail = c
                .query_row(&sql, [id], |r| {
                    let body = if with_body {
                        r.get::<_, Option<Vec<u8>>>(16)?.map(Bytes::from)
                    } else {
                        None
                    };
                    Ok(Detail {
                        summary: summary(r)?,
                        body,
                    })
                })
                .optional()?;
            Ok(detail)
        })
        .await
    }

    async fn retry_now(&self, f: &Filter, now: SystemTime) -> Result<usize, StoreError> {
        let (clause, filter_values) = where_clause(f);
        let sql = format!(
            "UPDATE messages SET state = 'queued', next_attempt_ms = ?, lease_owner = NULL, \
                 finished_at_ms = NULL \
             WHERE id IN (SELECT id FROM messages WHERE ({clause}) \
                 AND state IN ('queued', 'dead') ORDER BY id LIMIT ?)"
        );
        let mut values = vec![Value::Integer(ms(now))];
        values.extend(filter_values);
        values.push(limit(f));
        self.write(move |c| Ok(c.execute(&sql, params_from_iter(values.iter()))?))
            .await
    }

    async fn replay(&self, f: &Filter, now: SystemTime) -> Result<usize, StoreError> {
        let (clause, filter_values) = where_clause(f);
        let sql = format!(
            "UPDATE messages SET state = 'queued', next_attempt_ms = ?1, age_from_ms = ?1, \
                 attempts = 0, replays = replays + 1, lease_owner = NULL, finished_at_ms = NULL \
             WHERE id IN (SELECT id FROM messages WHERE ({clause}) \
                 AND state = 'dead' ORDER BY id LIMIT ?)"
        );
        let mut values = vec![Value::Integer(ms(now))];
        values.extend(filter_values);
        values.push(limit(f));
        self.write(move |c| Ok(c.execute(&sql, params_from_iter(values.iter()))?))
            .await
    }

    async fn drop_messages(&self, f: &Filter) -> Result<usize, StoreError> {
        let (clause, mut values) = where_clause(f);
        values.push(limit(f));
        let sql = format!(
            "DELETE FROM messages WHERE id IN \
                 (SELECT id FROM messages WHERE ({clause}) ORDER BY id LIMIT ?)"
        );
        self.write(move |c| Ok(c.execute(&sql, params_from_iter(values.iter()))?))
            .await
    }

    async fn depth(&self) -> Result<Vec<Depth>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT route, state, count(*), coalesce(sum(body_bytes), 0) FROM messages \
                 GROUP BY route, state ORDER BY route, state",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(Depth {
                    route: r.get(0)?,
                    state: state(r, 1)?,
                    messages: unsigned(r, 2)?,
                    bytes: unsigned(r, 3)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn oldest_waiting(&self, now: SystemTime) -> Result<Vec<(String, Duration)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT route, min(accepted_at_ms) FROM messages \
                 WHERE state IN ('queued', 'delivering') GROUP BY route ORDER BY route",
            )?;
            let rows = stmt.query_map([], |r| {
                let oldest = time(r.get(1)?);
                Ok((
                    r.get::<_, String>(0)?,
                    now.duration_since(oldest).unwrap_or_default(),
                ))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn prune(&self, now: SystemTime, keep: &Retention) -> Result<Pruned, StoreError> {
        let delivered_before = ms(now).saturating_sub(dur_ms(keep.delivered));
        let seen_before = ms(now).saturating_sub(dur_ms(keep.seen));
        let batch = PRUNE_BATCH as i64;
        self.write(move |c| {
            let delivered = c.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages \
                     WHERE state = 'delivered' AND finished_at_ms < ?1 LIMIT ?2)",
                params![delivered_before, batch],
            )?;
            let seen = c.execute(
                "DELETE FROM seen WHERE (route, organization_id, notification_id) IN \
                     (SELECT route, organization_id, notification_id FROM seen \
                      WHERE seen_at_ms < ?1 LIMIT ?2)",
                params![seen_before, batch],
            )?;
            Ok(Pruned { delivered, seen })
        })
        .await
    }
}

/// One admission, inside the writer's transaction.
fn admit_in(
    c: &Connection,
    m: &NewMessage,
    ids_json: &str,
    dedupe_window: Option<Duration>,
    bounds: &Bounds,
) -> Result<Admission, StoreError> {
    let now = ms(m.accepted_at);
    if let Some(window) = dedupe_window {
        let since = now.saturating_sub(dur_ms(window));
        if seen_all_in(c, &m.route, &m.organization_id, &m.notification_ids, since)? {
            return Ok(Admission::Duplicate);
        }
    }
    if let Some(bound) = over_bounds(c, &m.route, m.body.len() as u64, bounds)? {
        return Ok(Admission::Full(bound));
    }
    c.prepare_cached(
        "INSERT INTO messages (route, state, organization_id, action_id, notification_ids, \
             request_id, accepted_at_ms, age_from_ms, next_attempt_ms, body_bytes, body) \
         VALUES (?1, 'queued', ?2, ?3, ?4, ?5, ?6, ?6, ?6, ?7, ?8)",
    )?
    .execute(params![
        m.route,
        m.organization_id,
        m.action_id,
        ids_json,
        m.request_id,
        now,
        m.body.len() as i64,
        &m.body[..],
    ])?;
    let id = c.last_insert_rowid();
    if dedupe_window.is_some() {
        record_seen(c, &m.route, &m.organization_id, &m.notification_ids, now)?;
    }
    Ok(Admission::Stored { id })
}

/// The first bound that one more message of `bytes` on `route` would pass.
fn over_bounds(
    c: &Connection,
    route: &str,
    bytes: u64,
    b: &Bounds,
) -> Result<Option<Bound>, StoreError> {
    let (all_messages, all_bytes) = c
        .prepare_cached("SELECT coalesce(sum(messages), 0), coalesce(sum(bytes), 0) FROM held")?
        .query_row([], |r| Ok((unsigned(r, 0)?, unsigned(r, 1)?)))?;
    if all_messages.saturating_add(1) > b.max_messages {
        return Ok(Some(Bound::Messages));
    }
    if all_bytes.saturating_add(bytes) > b.max_bytes {
        return Ok(Some(Bound::Bytes));
    }
    if b.per_route_max_messages.is_none() && b.per_route_max_bytes.is_none() {
        return Ok(None);
    }
    let (route_messages, route_bytes) = c
        .prepare_cached("SELECT messages, bytes FROM held WHERE route = ?1")?
        .query_row([route], |r| Ok((unsigned(r, 0)?, unsigned(r, 1)?)))
        .optional()?
        .unwrap_or((0, 0));
    if b.per_route_max_messages
        .is_some_and(|max| route_messages.saturating_add(1) > max)
    {
        return Ok(Some(Bound::RouteMessages));
    }
    if b.per_route_max_bytes
        .is_some_and(|max| route_bytes.saturating_add(bytes) > max)
    {
        return Ok(Some(Bound::RouteBytes));
    }
    Ok(None)
}

/// Whether every id was seen on the route at or after `since_ms`.
fn seen_all_in(
    c: &Connection,
    route: &str,
    org: &str,
    ids: &[String],
    since_ms: i64,
) -> Result<bool, StoreError> {
    if ids.is_empty() {
        return Ok(false);
    }
    let mut stmt = c.prepare_cached(
        "SELECT 1 FROM seen WHERE route = ?1 AND organization_id = ?2 \
             AND notification_id = ?3 AND seen_at_ms >= ?4",
    )?;
    for id in ids {
        if !stmt.exists(params![route, org, id, since_ms])? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn record_seen(
    c: &Connection,
    route: &str,
    org: &str,
    ids: &[String],
    at_ms: i64,
) -> Result<(), StoreError> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO seen (route, organization_id, notification_id, seen_at_ms) \
         VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (route, organization_id, notification_id) \
         DO UPDATE SET seen_at_ms = max(seen_at_ms, excluded.seen_at_ms)",
    )?;
    for id in ids {
        stmt.execute(params![route, org, id, at_ms])?;
    }
    Ok(())
}

/// `f` as a WHERE clause (never empty) and its values, in order.
fn where_clause(f: &Filter) -> (String, Vec<Value>) {
    let mut clauses = vec!["1 = 1"];
    let mut values = Vec::new();
    if let Some(id) = f.id {
        clauses.push("id = ?");
        values.push(Value::Integer(id));
    }
    if let Some(route) = &f.route {
        clauses.push("route = ?");
        values.push(Value::Text(route.clone()));
    }
    if let Some(state) = f.state {
        clauses.push("state = ?");
        values.push(Value::Text(state.as_str().to_owned()));
    }
    if let Some(before) = f.accepted_before {
        clauses.push("accepted_at_ms < ?");
        values.push(Value::Integer(ms(before)));
    }
    if let Some(nid) = &f.notification_id {
        clauses.push("EXISTS (SELECT 1 FROM json_each(notification_ids) WHERE value = ?)");
        values.push(Value::Text(nid.clone()));
    }
    (clauses.join(" AND "), values)
}

fn limit(f: &Filter) -> Value {
    // SQLite: a negative LIMIT means none.
    Value::Integer(f.limit.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)))
}

fn summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<Summary> {
    Ok(Summary {
        id: r.get(0)?,
        route: r.get(1)?,
        state: state(r, 2)?,
        organization_id: r.get(3)?,
        action_id: r.get(4)?,
        notification_ids: json_ids(r, 5)?,
        request_id: r.get(6)?,
        attempts: r.get(7)?,
        replays: r.get(8)?,
        accepted_at: time(r.get(9)?),
        age_from: time(r.get(10)?),
        next_attempt_at: time(r.get(11)?),
        lease_owner: r.get(12)?,
        last_error: r.get(13)?,
        finished_at: r.get::<_, Option<i64>>(14)?.map(time),
        body_bytes: unsigned(r, 15)?,
    })
}

/// A count or a size (never negative in the store; read as 0 if it were).
fn unsigned(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    Ok(r.get::<_, i64>(i)?.max(0).unsigned_abs())
}

fn state(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<State> {
    let s: String = r.get(i)?;
    s.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
}

fn json_ids(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Vec<String>> {
    let s: String = r.get(i)?;
    serde_json::from_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn bounded_error(e: &str) -> String {
    let mut end = e.len().min(MAX_ERROR_BYTES);
    while !e.is_char_boundary(end) {
        end -= 1;
    }
    e[..end].to_owned()
}

/// Milliseconds since the Unix epoch (negative before it).
fn ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |v| -v),
    }
}

fn time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn dur_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The directory (0700 if created) and the database file (0600, tightened if wider).
fn prepare_files(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        if let Ok(meta) = fs::metadata(&file) {
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(&file, fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    Ok(())
}

fn connect(path: &Path, options: &OpenOptions, read_only: bool) -> rusqlite::Result<Connection> {
    // The file exists (prepare_files): never let SQLite create one with its default mode.
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(options.busy_timeout)?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA temp_store = MEMORY;",
    )?;
    if let Some(bytes) = options.max_file_bytes {
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages = (bytes / page.max(1).unsigned_abs()).max(1);
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
    }
    if read_only {
        conn.execute_batch("PRAGMA query_only = ON;")?;
    }
    Ok(conn)
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let supported = MIGRATIONS.len() as i64;
        if found > supported {
            return Err(StoreError::SchemaTooNew {
                path: path.display().to_string(),
                found,
                supported,
            });
        }
        for sql in &MIGRATIONS[found.max(0) as usize..] {
            conn.execute_batch(sql)?;
        }
        conn.pragma_update(None, "user_version", supported)?;
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(classify),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// A rusqlite error as the operator should read it.
pub(crate) fn classify(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StoreError::DiskFull,
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy,
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
            detail: e.to_string(),
        },
        Some(ErrorCode::SystemIoFailure) => StoreError::Io {
            detail: e.to_string(),
        },
        _ => StoreError::Other(e.to_string()),
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        classify(e)
    }
}

/// One write waiting for the writer thread.
trait Job: Send {
    /// Do the work inside the open transaction and keep its answer. An `Err` is an error of
    /// the environment: the whole batch is undone.
    fn run(&mut self, conn: &Connection) -> Result<(), StoreError>;
    /// Answer the caller once the batch committed (`Ok`) or was undone (`Err`).
    fn answer(self: Box<Self>, batch: Result<(), StoreError>);
}

struct Pending<R, F> {
    work: F,
    result: Option<Result<R, StoreError>>,
    reply: oneshot::Sender<Result<R, StoreError>>,
}

impl<R, F> Job for Pending<R, F>
where
    R: Send,
    F: FnMut(&Connection) -> Result<R, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> Result<(), StoreError> {
        conn.execute_batch("SAVEPOINT job")?;
        let outcome = catch_unwind(AssertUnwindSafe(|| (self.work)(conn)))
            .unwrap_or_else(|_| Err(StoreError::Other("a store operation panicked".into())));
        match outcome {
            Ok(r) => {
                conn.execute_batch("RELEASE job")?;
                self.result = Some(Ok(r));
                Ok(())
            }
            Err(e) if e.is_environmental() => Err(e),
            Err(e) => {
                conn.execute_batch("ROLLBACK TO job; RELEASE job")?;
                self.result = Some(Err(e));
                Ok(())
            }
        }
    }

    fn answer(self: Box<Self>, batch: Result<(), StoreError>) {
        let answer = match batch {
            Ok(()) => self
                .result
                .unwrap_or_else(|| Err(StoreError::Other("a store write was not run".into()))),
            Err(e) => Err(e),
        };
        // The caller may have gone away (its request was cancelled): nothing to tell.
        let _ = self.reply.send(answer);
    }
}

fn writer_loop(
    conn: Connection,
    jobs: mpsc::Receiver<Box<dyn Job>>,
    max_batch: usize,
    counters: &Counters,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let outcome = run_batch(&conn, &mut batch);
        if outcome.is_ok() {
            counters.transactions.fetch_add(1, Ordering::Relaxed);
            counters
                .writes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        for job in batch {
            job.answer(outcome.clone());
        }
    }
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut outcome = Ok(());
    for job in batch.iter_mut() {
        outcome = job.run(conn);
        if outcome.is_err() {
            break;
        }
    }
    if outcome.is_ok() {
        outcome = conn.execute_batch("COMMIT").map_err(classify);
    }
    if outcome.is_err() && !conn.is_autocommit() {
        // SQLite may have rolled back already (a full disk can do that); otherwise undo here.
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome
}
