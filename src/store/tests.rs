//! The store's tests. The behaviour every engine owes the [`Store`] contract is in
//! [`conformance`], run on both engines by [`engines!`]: SQLite files in temporary directories,
//! and a fresh PostgreSQL database per test on a throw-away cluster shared by this test binary
//! (`obmguard_testkit::postgres`; skipped with a printed line where PostgreSQL is missing,
//! never under CI). What only one engine has (files, group commit, a full disk; a fleet of
//! instances, server restarts) is tested beside it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use tempfile::TempDir;

use super::sqlite::MIGRATIONS;
use super::*;

mod conformance;
mod pg;

const ORG: &str = "00D5e000000AbCd";
const LEASE: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);
const WINDOW: Duration = Duration::from_secs(48 * 3600);

/// A moment `secs` after a fixed start, whole milliseconds as the store keeps them.
fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_772_000_000 + secs)
}

fn nid(n: u32) -> String {
    format!("04l5e00000Ab{n:04}AAV")
}

fn msg(route: &str, ids: &[u32], body: &str, at: SystemTime) -> NewMessage {
    NewMessage {
        route: route.into(),
        organization_id: ORG.into(),
        notification_ids: ids.iter().map(|&n| nid(n)).collect(),
        action_id: "04k5e000000XyZaAAK".into(),
        body: Bytes::from(body.to_owned()),
        accepted_at: at,
        request_id: format!("req-{}", ids.first().copied().unwrap_or(0)),
    }
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("store").join("queue.db")
}

fn open(dir: &TempDir) -> SqliteStore {
    SqliteStore::open(db_path(dir), OpenOptions::default()).expect("open the store")
}

async fn admit(store: &dyn Store, m: NewMessage) -> Admission {
    store
        .admit(m, Some(WINDOW), &Bounds::unbounded())
        .await
        .expect("admit")
}

async fn stored(store: &dyn Store, m: NewMessage) -> i64 {
    match admit(store, m).await {
        Admission::Stored { id } => id,
        other => panic!("expected Stored, got {other:?}"),
    }
}

async fn state_of(store: &dyn Store, id: i64) -> State {
    store
        .show(id, false)
        .await
        .unwrap()
        .expect("message exists")
        .summary
        .state
}

async fn ids(store: &dyn Store, f: Filter) -> Vec<i64> {
    store.list(&f).await.unwrap().iter().map(|s| s.id).collect()
}

/// A store under test, opened as often as a test needs: each `open` is another handle on the
/// same data (another process on the file, another instance on the database).
#[async_trait]
trait Engine: Send + Sync {
    async fn open(&self) -> Arc<dyn Store>;
    /// The engine's own consistency check, after a test that wrote concurrently.
    async fn check(&self);
}

struct Sqlite {
    dir: TempDir,
}

#[async_trait]
impl Engine for Sqlite {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(open(&self.dir))
    }

    async fn check(&self) {
        assert_eq!(open(&self.dir).integrity_check().await.unwrap(), "ok");
    }
}

/// The conformance tests, once per engine: `sqlite::NAME` and `postgres::NAME`.
macro_rules! engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let engine = super::Sqlite { dir: tempfile::TempDir::new().unwrap() };
                    super::conformance::$name(&engine).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(engine) = super::pg::Pg::fresh().await else { return };
                    super::conformance::$name(&engine).await;
                }
            )*
        }
    };
}

engines!(
    a_message_is_admitted_claimed_and_delivered,
    a_worker_that_died_loses_its_lease_to_another_worker,
    release_takes_back_only_the_named_owners_leases,
    a_batch_claim_takes_the_due_messages_in_order_up_to_the_concurrency,
    claims_stop_at_the_route_concurrency,
    a_message_waits_for_its_retry_time,
    failures_follow_the_backoff_schedule_until_the_message_is_a_dead_letter,
    a_message_whose_notifications_were_all_accepted_in_the_window_is_a_duplicate,
    a_partial_overlap_is_stored_and_its_notifications_recorded,
    notifications_accepted_before_the_window_are_accepted_again,
    duplicates_are_per_route_and_per_organization,
    without_a_window_nothing_is_a_duplicate,
    the_duplicate_window_survives_a_restart,
    direct_mode_finds_notifications_the_receiver_acked_within_the_window,
    bounds_refuse_what_would_pass_them,
    list_filters_by_route_state_age_notification_id_and_limit,
    show_gives_the_body_only_when_asked,
    retry_now_makes_waiting_and_dead_messages_due_at_once,
    replay_puts_dead_letters_back_with_a_fresh_age,
    drop_deletes_what_the_filter_matches,
    depth_and_oldest_waiting_per_route,
    prune_forgets_delivered_messages_and_old_duplicate_entries,
    another_process_sees_and_changes_the_store_while_serve_runs,
    a_message_without_notifications_is_a_callers_bug,
    bodies_come_back_byte_for_byte,
    concurrent_admits_of_the_same_notifications_store_one,
);

#[test]
fn backoff_doubles_from_initial_to_max_less_at_most_a_quarter() {
    let (initial, max) = (Duration::from_secs(30), Duration::from_secs(7200));
    let mut schedule = initial;
    for attempt in 1..=20 {
        for seed in 0..200u64 {
            let d = backoff(attempt, initial, max, seed);
            assert!(d <= schedule, "attempt {attempt}: {d:?} > {schedule:?}");
            assert!(
                d >= schedule * 3 / 4,
                "attempt {attempt}: {d:?} < 3/4 {schedule:?}"
            );
        }
        schedule = (schedule * 2).min(max);
    }
    assert_eq!(backoff(0, initial, max, 1), backoff(1, initial, max, 1));
    assert!(backoff(u32::MAX, initial, max, 7) <= max);
    assert_eq!(backoff(5, Duration::ZERO, max, 7), Duration::ZERO);
    assert!(
        backoff(3, Duration::from_secs(10_000), max, 7) <= max,
        "initial above max"
    );
}

#[test]
fn backoff_is_the_same_for_a_seed_and_spread_across_seeds() {
    let (initial, max) = (Duration::from_secs(30), Duration::from_secs(7200));
    assert_eq!(backoff(3, initial, max, 42), backoff(3, initial, max, 42));
    let distinct: std::collections::HashSet<Duration> =
        (0..100u64).map(|s| backoff(3, initial, max, s)).collect();
    assert!(
        distinct.len() > 90,
        "jitter spreads retries: {} distinct",
        distinct.len()
    );
}

#[test]
fn a_message_past_its_max_age_is_dead_and_the_last_try_is_at_the_deadline() {
    let p = RetryPolicy {
        initial: Duration::from_secs(30),
        max: HOUR,
        max_age: Duration::from_secs(3 * 3600),
    };
    assert_eq!(
        p.after_failure(1, t(0), t(0) + p.max_age, 1),
        AfterFailure::Dead
    );
    assert_eq!(
        p.after_failure(9, t(0), t(0) + p.max_age - Duration::from_secs(60), 1),
        AfterFailure::RetryAt(t(0) + p.max_age),
        "never later than the deadline"
    );
    assert!(p.expired(t(0), t(3 * 3600)) && !p.expired(t(0), t(3 * 3600 - 1)));
    let d = RetryPolicy::default();
    assert_eq!(
        (d.initial, d.max, d.max_age),
        (
            Duration::from_secs(30),
            Duration::from_secs(7200),
            Duration::from_secs(604_800)
        )
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_store_files_are_private() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let store = open(&dir);
    stored(&store, msg("orders", &[1], "<x/>", t(0))).await;
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    drop(store);

    // An existing directory is left as it is; a database file readable by others is tightened.
    let dir2 = TempDir::new().unwrap();
    let loose = dir2.path().join("queue.db");
    std::fs::write(&loose, b"").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = mode(dir2.path());
    let store = SqliteStore::open(&loose, OpenOptions::default()).unwrap();
    stored(&store, msg("orders", &[1], "<x/>", t(0))).await;
    assert_eq!(mode(&loose), 0o600);
    assert_eq!(mode(dir2.path()), before);
}

#[tokio::test]
async fn bodies_rest_exactly_as_given_and_readable_with_sqlite() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir);
    let xml = "<soapenv:Envelope><n>caf\u{e9} &amp; <![CDATA[x]]></n></soapenv:Envelope>";
    let id = stored(&store, msg("orders", &[1], xml, t(0))).await;
    let mut odd = msg("orders", &[2], "", t(0));
    odd.body = Bytes::from_static(b"\x00\xff<a/>\r\n");
    let odd_id = stored(&store, odd).await;

    // What an operator's sqlite3 reads, from another connection.
    let raw = rusqlite::Connection::open(db_path(&dir)).unwrap();
    let (text, len): (String, i64) = raw
        .query_row(
            "SELECT CAST(body AS TEXT), length(body) FROM messages WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(text, xml);
    assert_eq!(len as usize, xml.len());
    let blob: Vec<u8> = raw
        .query_row("SELECT body FROM messages WHERE id = ?1", [odd_id], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(blob, b"\x00\xff<a/>\r\n");
    let c = store
        .claim("orders", "w", LEASE, 4, t(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.body, Bytes::from(xml.to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_admits_share_transactions_and_are_all_durable() {
    let dir = TempDir::new().unwrap();
    let store = Arc::new(open(&dir));
    let before = store.stats();
    const N: u32 = 300;
    let mut tasks = Vec::new();
    for n in 0..N {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            store
                .admit(
                    msg("orders", &[n], "<x/>", t(0)),
                    Some(WINDOW),
                    &Bounds::unbounded(),
                )
                .await
        }));
    }
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Ok(Admission::Stored { .. })));
    }
    let after = store.stats();
    let (writes, transactions) = (
        after.writes - before.writes,
        after.transactions - before.transactions,
    );
    assert_eq!(writes, u64::from(N));
    assert!(
        transactions < u64::from(N) / 2,
        "{N} admits took {transactions} transactions"
    );
    drop(store);
    let reopened = open(&dir);
    assert_eq!(
        reopened.list(&Filter::default()).await.unwrap().len(),
        N as usize
    );
}

#[tokio::test]
async fn the_schema_version_is_recorded_and_a_newer_one_is_refused() {
    let dir = TempDir::new().unwrap();
    drop(open(&dir));
    let raw = rusqlite::Connection::open(db_path(&dir)).unwrap();
    let v: i64 = raw
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, MIGRATIONS.len() as i64);
    let wal: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(wal, "wal");
    drop(open(&dir)); // opening again applies nothing and keeps the version
    raw.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(raw);
    match SqliteStore::open(db_path(&dir), OpenOptions::default()) {
        Err(StoreError::SchemaTooNew { found: 99, .. }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a store of a newer schema"),
    }
}

#[tokio::test]
async fn a_file_that_is_not_a_store_is_refused_with_a_clear_error() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("queue.db");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    let err = SqliteStore::open(&path, OpenOptions::default())
        .err()
        .expect("refused");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("queue.db"), "{err}");
}

#[tokio::test]
async fn claims_find_due_messages_through_an_index() {
    let dir = TempDir::new().unwrap();
    drop(open(&dir));
    let raw = rusqlite::Connection::open(db_path(&dir)).unwrap();
    let plan = |sql: &str| -> String {
        let mut stmt = raw.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    };
    let due = plan(
        "SELECT id FROM messages WHERE state IN ('queued', 'delivering') AND route = 'r' \
         AND next_attempt_ms <= 5 ORDER BY next_attempt_ms, id LIMIT 1",
    );
    assert!(
        due.contains("messages_due") && !due.contains("TEMP B-TREE"),
        "{due}"
    );
    let leases = plan(
        "SELECT count(*) FROM messages WHERE state = 'delivering' AND route = 'r' \
         AND next_attempt_ms > 5",
    );
    assert!(leases.contains("messages_leases"), "{leases}");
}

/// Fill the store's filesystem, or its file's ceiling, and check that admits fail with the
/// disk-full error, nothing is corrupted, and admits work again once there is room.
async fn full_then_recovered(store: &SqliteStore, mut free_space: impl FnMut()) {
    let body = "<x>".to_owned() + &"f".repeat(8 * 1024) + "</x>";
    let mut stored_ids = ids(store, Filter::default()).await;
    let mut full = None;
    for n in 0..2_000u32 {
        match store
            .admit(
                msg("orders", &[n], &body, t(0)),
                Some(WINDOW),
                &Bounds::unbounded(),
            )
            .await
        {
            Ok(Admission::Stored { id }) => stored_ids.push(id),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => {
                full = Some(e);
                break;
            }
        }
    }
    let err = full.expect("the filesystem never filled up");
    assert_eq!(err, StoreError::DiskFull, "{err}");
    assert!(err.to_string().contains("free space"));
    assert!(!err.to_string().contains("fff"), "no body in errors");
    // Still full: still refused, still sound.
    let again = store
        .admit(
            msg("orders", &[9_999], &body, t(0)),
            Some(WINDOW),
            &Bounds::unbounded(),
        )
        .await;
    assert_eq!(again, Err(StoreError::DiskFull));
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    assert_eq!(
        ids(store, Filter::default()).await,
        stored_ids,
        "every Stored message is there"
    );

    free_space();
    let id = match store
        .admit(
            msg("orders", &[10_000], "<x/>", t(0)),
            Some(WINDOW),
            &Bounds::unbounded(),
        )
        .await
    {
        Ok(Admission::Stored { id }) => id,
        other => panic!("not recovered: {other:?}"),
    };
    stored_ids.push(id);
    assert_eq!(ids(store, Filter::default()).await, stored_ids);
    let c = store
        .claim("orders", "w", LEASE, 1, t(1))
        .await
        .unwrap()
        .unwrap();
    assert!(store.delivered(c.id, "w").await.unwrap());
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
}

/// A tmpfs of `size` mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = TempDir::new().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs { dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_filesystem_refuses_admits_then_recovers_when_space_returns() {
    let fs = match Tmpfs::mount("2m") {
        Ok(fs) => fs,
        Err(why) => {
            // Covered by a_file_at_its_ceiling_behaves_like_a_full_disk everywhere; CI runs as
            // root on a machine that can mount, so there it must not skip.
            assert!(
                std::env::var_os("CI").is_none(),
                "cannot mount a small tmpfs under CI ({why})"
            );
            eprintln!("SKIPPED: cannot mount a small tmpfs here ({why})");
            return;
        }
    };
    let path = fs.dir.path().join("queue.db");
    let store = SqliteStore::open(&path, OpenOptions::default()).unwrap();
    stored(&store, msg("orders", &[50_000], "<first/>", t(0))).await;
    // Leave about 200 KiB for the store.
    let filler = fs.dir.path().join("filler");
    let avail = {
        let out = std::process::Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(fs.dir.path())
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse::<usize>()
            .unwrap()
    };
    std::fs::write(&filler, vec![0u8; avail.saturating_sub(200 * 1024)]).unwrap();
    full_then_recovered(&store, || std::fs::remove_file(&filler).unwrap()).await;
    drop(store);
    // And it opens again afterwards.
    let store = SqliteStore::open(&path, OpenOptions::default()).unwrap();
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
}

#[tokio::test]
async fn a_file_at_its_ceiling_behaves_like_a_full_disk() {
    let dir = TempDir::new().unwrap();
    let path = db_path(&dir);
    let ceiling = OpenOptions {
        max_file_bytes: Some(256 * 1024),
        ..OpenOptions::default()
    };
    let store = SqliteStore::open(&path, ceiling).unwrap();
    let body = "<x>".to_owned() + &"f".repeat(8 * 1024) + "</x>";
    let mut kept = Vec::new();
    loop {
        match store
            .admit(
                msg("orders", &[kept.len() as u32], &body, t(0)),
                None,
                &Bounds::unbounded(),
            )
            .await
        {
            Ok(Admission::Stored { id }) => kept.push(id),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => {
                assert_eq!(e, StoreError::DiskFull);
                break;
            }
        }
        assert!(kept.len() < 1000, "the ceiling never hit");
    }
    assert!(!kept.is_empty());
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
    // The operator makes room by dropping the oldest half.
    let half = Filter {
        limit: Some(kept.len() / 2),
        ..Filter::default()
    };
    assert!(store.drop_messages(&half).await.unwrap() > 0);
    let id = match store
        .admit(
            msg("orders", &[5_000], &body, t(0)),
            None,
            &Bounds::unbounded(),
        )
        .await
    {
        Ok(Admission::Stored { id }) => id,
        other => panic!("not recovered: {other:?}"),
    };
    assert!(store.show(id, true).await.unwrap().is_some());
    assert_eq!(store.integrity_check().await.unwrap(), "ok");
}

#[test]
fn errors_say_what_to_do() {
    assert_eq!(
        StoreError::DiskFull.to_string(),
        "the store's filesystem is full: free space; messages are refused with 503 meanwhile"
    );
    assert!(StoreError::Busy.to_string().contains("queue"));
    assert!(
        StoreError::DiskFull.is_environmental()
            && !StoreError::Invalid("x".into()).is_environmental()
    );
    assert_eq!("dead".parse::<State>(), Ok(State::Dead));
    assert!("gone"
        .parse::<State>()
        .unwrap_err()
        .contains("queued, delivering"));
    for s in State::ALL {
        assert_eq!(s.to_string().parse::<State>(), Ok(s));
    }
}
