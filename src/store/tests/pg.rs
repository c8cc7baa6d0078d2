//! The PostgreSQL engine as a fleet uses it: several instances (each its own `PgStore`, its
//! own pool) on one database, migrations racing at start, and a server that goes away.
//! Each test gets a fresh database on the shared throw-away cluster; the outage test has a
//! cluster of its own. Without PostgreSQL they print `skipped:` and pass (never under CI).

use std::time::Instant;

use obmguard_testkit::postgres::TestPostgres;

use super::*;
use crate::secret::Secret;

/// A fresh, migrated database on the shared cluster.
pub(super) struct Pg {
    url: Secret,
}

impl Pg {
    pub(super) async fn fresh() -> Option<Pg> {
        let server = TestPostgres::shared().await?;
        let pg = Pg::unmigrated(server).await;
        pg.store().await.migrate().await.expect("migrate");
        Some(pg)
    }

    async fn unmigrated(server: &TestPostgres) -> Pg {
        Pg {
            url: Secret::new(server.fresh_database().await),
        }
    }

    /// Another instance: a store with a pool of its own.
    async fn store(&self) -> PgStore {
        PgStore::connect(&self.url, PgOptions::default())
            .await
            .expect("connect to the test database")
    }

    /// A plain client, for what the store does not show.
    async fn raw(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(self.url.expose(), tokio_postgres::NoTls)
                .await
                .expect("connect");
        tokio::spawn(connection);
        client
    }
}

#[async_trait]
impl Engine for Pg {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(self.store().await)
    }

    /// The held totals the bounds read agree with the messages themselves.
    async fn check(&self) {
        let raw = self.raw().await;
        let rows = raw
            .query(
                "SELECT coalesce(h.route, m.route), coalesce(h.messages, 0), \
                     coalesce(m.messages, 0), coalesce(h.bytes, 0), coalesce(m.bytes, 0) \
                 FROM held h FULL JOIN (SELECT route, count(*) AS messages, \
                     sum(body_bytes)::bigint AS bytes FROM messages \
                     WHERE state <> 'delivered' GROUP BY route) m ON m.route = h.route",
                &[],
            )
            .await
            .unwrap();
        for r in rows {
            let route: String = r.get(0);
            assert_eq!(
                (r.get::<_, i64>(1), r.get::<_, i64>(3)),
                (r.get::<_, i64>(2), r.get::<_, i64>(4)),
                "held totals of {route}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_claim_the_same_message_and_share_the_route_concurrency() {
    let Some(pg) = Pg::fresh().await else { return };
    let (a, b) = (Arc::new(pg.store().await), Arc::new(pg.store().await));
    for n in 0..12u32 {
        stored(a.as_ref(), msg("orders", &[n], "<x/>", t(0))).await;
    }
    const CONCURRENCY: usize = 3;
    // Every claim at once, from both instances: three leases out, no message twice.
    let mut tasks = Vec::new();
    for w in 0..10u32 {
        let store = if w % 2 == 0 {
            Arc::clone(&a)
        } else {
            Arc::clone(&b)
        };
        tasks.push(tokio::spawn(async move {
            store
                .claim("orders", &format!("w{w}"), LEASE, CONCURRENCY, t(1))
                .await
                .unwrap()
                .map(|c| c.id)
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.extend(task.await.unwrap());
    }
    assert_eq!(out.len(), CONCURRENCY, "{out:?}");
    // Deliver in waves: every message exactly once, never more than three out.
    let mut delivered: Vec<i64> = Vec::new();
    let mut now = 2;
    loop {
        for id in out.drain(..) {
            assert!(a.delivered(id, "any").await.unwrap());
            delivered.push(id);
        }
        let mut tasks = Vec::new();
        for w in 0..6u32 {
            let store = if w % 2 == 0 {
                Arc::clone(&a)
            } else {
                Arc::clone(&b)
            };
            tasks.push(tokio::spawn(async move {
                store
                    .claim("orders", &format!("v{w}"), LEASE, CONCURRENCY, t(now))
                    .await
                    .unwrap()
                    .map(|c| c.id)
            }));
        }
        for task in tasks {
            out.extend(task.await.unwrap());
        }
        assert!(out.len() <= CONCURRENCY, "{out:?}");
        if out.is_empty() {
            break;
        }
        now += 1;
    }
    delivered.sort_unstable();
    let all = ids(a.as_ref(), Filter::default()).await;
    assert_eq!(delivered, all, "each message delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_expired_on_one_instance_is_taken_over_by_another() {
    let Some(pg) = Pg::fresh().await else { return };
    let (a, b) = (pg.store().await, pg.store().await);
    let id = stored(&a, msg("orders", &[1], "<x/>", t(0))).await;
    let first = a
        .claim("orders", "a-w1", LEASE, 1, t(0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, id);
    assert!(
        b.claim("orders", "b-w1", LEASE, 1, t(29))
            .await
            .unwrap()
            .is_none(),
        "the lease holds on the other instance, and counts against its concurrency"
    );
    let taken = b
        .claim("orders", "b-w1", LEASE, 1, t(30))
        .await
        .unwrap()
        .expect("the lease expired");
    assert_eq!((taken.id, taken.attempts), (id, 2));
    assert!(!a.retry_later(id, "a-w1", t(90), "late").await.unwrap());
    assert!(b.retry_later(id, "b-w1", t(90), "503").await.unwrap());
    let shown = a.show(id, false).await.unwrap().unwrap().summary;
    assert_eq!(
        (shown.state, shown.last_error.as_deref()),
        (State::Queued, Some("503"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_admitted_on_one_instance_is_a_duplicate_on_another() {
    let Some(pg) = Pg::fresh().await else { return };
    let (a, b) = (pg.store().await, pg.store().await);
    stored(&a, msg("orders", &[1, 2], "<x/>", t(0))).await;
    assert_eq!(
        admit(&b, msg("orders", &[2, 1], "<x/>", t(60))).await,
        Admission::Duplicate
    );
    b.record_acked("direct", ORG, &[nid(7)], t(0))
        .await
        .unwrap();
    assert!(a
        .seen_all("direct", ORG, &[nid(7)], WINDOW, t(1))
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounds_hold_exactly_when_instances_admit_at_once() {
    let Some(pg) = Pg::fresh().await else { return };
    let stores = [Arc::new(pg.store().await), Arc::new(pg.store().await)];
    let bounds = Bounds {
        max_messages: 7,
        max_bytes: u64::MAX,
        per_route_max_messages: Some(5),
        per_route_max_bytes: None,
    };
    let mut tasks = Vec::new();
    for n in 0..40u32 {
        let store = Arc::clone(&stores[(n % 2) as usize]);
        let route = if n < 20 { "orders" } else { "invoices" };
        tasks.push(tokio::spawn(async move {
            store
                .admit(msg(route, &[n], "<x/>", t(0)), Some(WINDOW), &bounds)
                .await
                .unwrap()
        }));
    }
    let mut stored_count = 0;
    for task in tasks {
        match task.await.unwrap() {
            Admission::Stored { .. } => stored_count += 1,
            Admission::Full(_) => {}
            Admission::Duplicate => panic!("no duplicate here"),
        }
    }
    assert_eq!(stored_count, 7);
    let depth = stores[0].depth().await.unwrap();
    assert!(depth.iter().all(|d| d.messages <= 5), "{depth:?}");
    pg.check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_migrating_at_once_apply_the_schema_once() {
    let Some(server) = TestPostgres::shared().await else {
        return;
    };
    let pg = Pg::unmigrated(server).await;
    let (a, b) = (pg.store().await, pg.store().await);
    // Before any migration: the store says what to do.
    let err = a.list(&Filter::default()).await.unwrap_err();
    assert!(err.to_string().contains("obmguard store migrate"), "{err}");
    assert!(err.is_environmental());
    assert!(matches!(
        a.check_schema().await,
        Err(StoreError::SchemaTooOld { found: 0, .. })
    ));

    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let supported = super::super::postgres::MIGRATIONS.len() as i64;
    let mut froms = [ra.from, rb.from];
    froms.sort_unstable();
    assert_eq!(
        froms,
        [0, supported],
        "one applied, the other found it done"
    );
    assert_eq!((ra.to, rb.to), (supported, supported));
    let raw = pg.raw().await;
    let versions: Vec<i32> = raw
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, (1..=supported as i32).collect::<Vec<_>>());
    a.check_schema().await.unwrap();
    stored(&b, msg("orders", &[1], "<x/>", t(0))).await;

    // A schema from a newer obmguard is refused, and left as it is.
    raw.execute("INSERT INTO schema_migrations (version) VALUES (99)", &[])
        .await
        .unwrap();
    match a.migrate().await {
        Err(e @ StoreError::SchemaTooNew { found: 99, .. }) => {
            assert!(e.to_string().contains("newer"), "{e}");
            assert!(!e.to_string().contains(pg.url.expose()), "{e}");
        }
        other => panic!("a newer schema was not refused: {other:?}"),
    }
    assert!(matches!(
        b.check_schema().await,
        Err(StoreError::SchemaTooNew { found: 99, .. })
    ));
}

/// The password of a test URL.
fn password_of(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .password()
        .expect("the test URL has a password")
        .to_owned()
}

fn assert_secret_free(e: &StoreError, password: &str) {
    let (shown, debug) = (e.to_string(), format!("{e:?}"));
    assert!(
        !shown.contains(password) && !debug.contains(password),
        "the password leaked: {shown} / {debug}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_appears_in_errors_or_debug_output() {
    let Some(server) = TestPostgres::shared().await else {
        return;
    };
    let pg = Pg::unmigrated(server).await;
    let password = password_of(pg.url.expose());
    let store = pg.store().await;
    let debug = format!("{store:?}");
    assert!(!debug.contains(&password), "{debug}");
    assert!(debug.contains("127.0.0.1"), "{debug}");
    assert!(!store.server().contains(&password));

    // A wrong password: refused, named without it.
    let wrong = "Wr0ng-hunter2-pass";
    let mut url = url::Url::parse(pg.url.expose()).unwrap();
    url.set_password(Some(wrong)).unwrap();
    let err = PgStore::connect(&Secret::new(url.as_str()), PgOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_environmental(), "{err:?}");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    assert_secret_free(&err, wrong);

    // Nobody listening on that port: refused, named without the password.
    let port = obmguard_testkit::ports::free_port();
    url.set_port(Some(port)).unwrap();
    let err = PgStore::connect(&Secret::new(url.as_str()), PgOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert_secret_free(&err, wrong);

    // The server has no TLS: require refuses to go on in plain text; disable connects.
    let mut url = url::Url::parse(pg.url.expose()).unwrap();
    url.set_query(Some("sslmode=require"));
    let err = PgStore::connect(&Secret::new(url.as_str()), PgOptions::default())
        .await
        .unwrap_err();
    assert!(err.is_environmental(), "{err:?}");
    assert_secret_free(&err, &password);
    url.set_query(Some("sslmode=disable"));
    PgStore::connect(&Secret::new(url.as_str()), PgOptions::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_fails_fast_while_the_server_is_down_or_hung_and_recovers_by_itself() {
    let Some(mut server) = TestPostgres::start().await else {
        return;
    };
    if !server.can_restart() {
        obmguard_testkit::postgres::say(
            "skipped: the server named by OBMGUARD_TEST_POSTGRES_URL cannot be restarted",
        );
        return;
    }
    let url = Secret::new(server.fresh_database().await);
    let password = password_of(url.expose());
    let options = PgOptions {
        max_connections: 4,
        connect_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_secs(2),
    };
    let store = PgStore::connect(&url, options).await.unwrap();
    store.migrate().await.unwrap();
    let before = stored(&store, msg("orders", &[1], "<x/>", t(0))).await;

    // Down: an environmental error, at once, without the password.
    server.stop().await;
    let started = Instant::now();
    let err = store
        .admit(
            msg("orders", &[2], "<x/>", t(1)),
            Some(WINDOW),
            &Bounds::unbounded(),
        )
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert_secret_free(&err, &password);
    let err = store
        .claim("orders", "w", LEASE, 1, t(1))
        .await
        .unwrap_err();
    assert!(err.is_environmental(), "{err:?}");

    // Back: the same store works again, and nothing committed was lost.
    server.restart().await;
    let after = stored(&store, msg("orders", &[2], "<x/>", t(2))).await;
    assert_eq!(ids(&store, Filter::default()).await, vec![before, after]);

    // Hung (every server process stopped, connections open): an error within the deadline,
    // not a hang.
    server.freeze();
    let started = Instant::now();
    let err = store.depth().await.unwrap_err();
    let took = started.elapsed();
    server.thaw();
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err:?}");
    assert_secret_free(&err, &password);
    // Thawed: it answers again.
    let c = store
        .claim("orders", "w", LEASE, 4, t(3))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.id, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_is_honoured_over_rustls() {
    let dir = TempDir::new().unwrap();
    let pki = obmguard_testkit::pki::Pki::generate(dir.path()).unwrap();
    let Some(server) = TestPostgres::start_tls(&pki.server.cert, &pki.server.key).await else {
        return;
    };
    let base = url::Url::parse(&server.fresh_database().await).unwrap();
    let with = |host: &str, query: String| {
        let mut u = base.clone();
        u.set_host(Some(host)).unwrap();
        u.set_query(Some(&query));
        Secret::new(u.as_str())
    };
    let ca = pki.server_ca.display().to_string();
    let rogue = pki.rogue_ca.display().to_string();
    let connect = |url: Secret| async move { PgStore::connect(&url, PgOptions::default()).await };
    let tls_connections = || async {
        let (client, connection) = tokio_postgres::connect(base.as_str(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.application_name = 'obmguard' AND s.ssl",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };

    // verify-full: the chain and the name (the certificate names localhost).
    let full = connect(with(
        "localhost",
        format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .expect("verify-full with the right CA and name");
    assert!(
        tls_connections().await >= 1,
        "the store's connection uses TLS"
    );
    drop(full);
    // The right address under another name: refused by verify-full, accepted by verify-ca.
    let elsewhere = |mode: &str| {
        with(
            "db.invalid",
            format!("sslmode={mode}&sslrootcert={ca}&hostaddr=127.0.0.1"),
        )
    };
    let err = connect(elsewhere("verify-full")).await.unwrap_err();
    assert!(err.is_environmental(), "{err:?}");
    assert!(
        err.to_string().contains("certificate not valid for name"),
        "{err}"
    );
    connect(elsewhere("verify-ca"))
        .await
        .expect("verify-ca does not compare the name");
    // Another CA: refused by verify-ca and verify-full alike.
    for mode in ["verify-ca", "verify-full"] {
        let err = connect(with(
            "localhost",
            format!("sslmode={mode}&sslrootcert={rogue}"),
        ))
        .await
        .unwrap_err();
        assert!(err.is_environmental(), "{mode}: {err:?}");
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{mode}: {err}"
        );
    }
    // require and prefer without a root: TLS, the certificate not verified (as libpq).
    for mode in ["require", "prefer"] {
        connect(with("127.0.0.1", format!("sslmode={mode}")))
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
    }
    // An unreadable root file is a configuration error, said before connecting.
    let err = connect(with(
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem".into(),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("sslrootcert"), "{err}");
}
