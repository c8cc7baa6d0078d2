//! Queued delivery through the real binary: an Ack only after a durable commit, delivery
//! after an outage, a SIGKILL mid-stream, duplicates across a restart, dead letters and
//! replay, a full store (by bound and by a filesystem that runs out of space), the token
//! endpoint down in inject mode, nothing secret at rest, and the operator's commands.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::*;
use obmguard_testkit::messages::{notification_id, Sample, SESSION_ID};
use obmguard_testkit::receiver::{Behaviour, Receiver};
use obmguard_testkit::token_server::{Mode, TokenServer, TokenServerConfig};

/// A queued route `q` on `/q` with fast retries, plus `delivery_extra` in its `[delivery]`.
fn queued_route(upstream: &str, mode: &str, delivery_extra: &str) -> String {
    route("q", "/q", upstream, mode)
        + &format!(
            "\n[delivery]\nmode = \"queued\"\nretry_initial_ms = 100\nretry_max_ms = 1000\n{delivery_extra}"
        )
}

fn with_store(w: &World, s: Setup, store_extra: &str) -> Setup {
    Setup {
        extra: format!(
            "\n[store]\npath = {:?}\nlease_ms = 2000\n{store_extra}",
            w.path("store").display().to_string()
        ),
        ..s
    }
}

/// Message `k`: one notification with its own id, carrying a session id.
pub(crate) fn msg(k: usize) -> Vec<u8> {
    Sample {
        first_notification: k,
        ..Sample::default()
    }
    .body()
}

pub(crate) async fn eventually(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many requests the receiver got carrying notification `k`.
pub(crate) fn deliveries_of(recv: &Receiver, k: usize) -> usize {
    let id = notification_id(k);
    recv.requests()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(&id))
        .count()
}

/// `obmguard queue ARGS --config CONFIG`: exit code, standard output, standard error.
fn queue_out(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_obmguard"))
        .arg("queue")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// As [`queue_out`]: the exit code and the answer (stdout, or the error on stderr).
fn queue_cmd(config: &Path, args: &[&str]) -> (i32, String) {
    let (code, out, err) = queue_out(config, args);
    (code, if code == 0 { out } else { err })
}

fn queue_json(config: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["list", "--format", "json"];
    all.extend_from_slice(args);
    let (code, out, err) = queue_out(config, &all);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// Messages queued so far, read without waiting for the audit writer (to time a kill).
fn queued_so_far(p: &Proxy) -> usize {
    p.audit_lines_now()
        .iter()
        .filter(|l| l["decision"] == "queued")
        .count()
}

fn decisions(p: &Proxy, decision: &str) -> Vec<serde_json::Value> {
    p.audit_lines()
        .into_iter()
        .filter(|l| l["decision"] == decision)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_of_the_receiver_loses_nothing_and_delivers_each_message_once() {
    let w = World::new();
    // Nothing listens on the receiver's port yet.
    let port = free_port();
    let upstream = format!("http://127.0.0.1:{port}/soap");
    let s = with_store(
        &w,
        Setup::new(&w).route("q.toml", queued_route(&upstream, "strip", "")),
        "",
    );
    let p = Proxy::start(&w, &s).await;
    for k in 0..10 {
        let r = p.post(&w.salesforce(), "/q", &msg(k)).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert_eq!(r.ack(), Some(true));
    }
    assert_eq!(decisions(&p, "queued").len(), 10);
    // Attempts fail while the receiver is down, and are retried: at least 15 of them.
    eventually("failed attempts", Duration::from_secs(15), || {
        p.audit_lines()
            .iter()
            .filter(|l| l["decision"] == "retried")
            .count()
            >= 15
    })
    .await;

    let recv = Receiver::start_on(format!("127.0.0.1:{port}").parse().unwrap(), Behaviour::Ack)
        .await
        .unwrap();
    eventually("every message delivered", Duration::from_secs(20), || {
        (0..10).all(|k| deliveries_of(&recv, k) >= 1)
    })
    .await;
    eventually("the store to record them", Duration::from_secs(10), || {
        queue_json(&p.config, &["--state", "delivered"]).len() == 10
    })
    .await;
    for k in 0..10 {
        assert_eq!(deliveries_of(&recv, k), 1, "message {k} delivered once");
    }
    let got = recv.last().unwrap();
    assert!(
        !got.body_str().contains(SESSION_ID),
        "stripped before it was stored"
    );
    // Each delivery's audit record follows its store update.
    eventually("the delivery records", Duration::from_secs(5), || {
        decisions(&p, "delivered").len() == 10
    })
    .await;
    let delivered = decisions(&p, "delivered");
    assert!(delivered
        .iter()
        .all(|l| l["message_id"].is_i64() && l["attempt"].as_u64() >= Some(1)));
    let m = p.metrics().await;
    assert_eq!(
        metric(
            &m,
            "obmguard_deliveries_total{outcome=\"delivered\",route=\"q\"}"
        ),
        10.0
    );
    // Every failed attempt is counted; the log holds at most 10 of them a minute per route.
    let failed = metric(
        &m,
        "obmguard_deliveries_total{outcome=\"upstream_error\",route=\"q\"}",
    );
    let logged = p.logs().matches("receiver unreachable").count();
    assert!(
        (1..=10).contains(&logged) && failed > logged as f64,
        "{logged} warnings logged for {failed} failures"
    );
    assert!(
        metric(
            &m,
            "obmguard_deliveries_total{outcome=\"upstream_error\",route=\"q\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &m,
            "obmguard_requests_total{outcome=\"queued\",route=\"q\"}"
        ),
        10.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_messages_stream_in_loses_no_acked_message() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::SlowAck(Duration::from_millis(150)))
        .await
        .unwrap();
    let s = with_store(
        &w,
        Setup::new(&w).route(
            "q.toml",
            queued_route(&recv.url("/soap"), "strip", "concurrency = 4\n"),
        ),
        "",
    );
    let p = Proxy::start(&w, &s).await;
    let (addr, client) = (p.addr, w.salesforce());
    // Four senders, 25 messages each, while obmguard is killed part way.
    let mut senders = Vec::new();
    for t in 0..4usize {
        let client = client.clone();
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..25usize {
                let k = 1000 + t * 100 + i;
                let r = obmguard_testkit::client::post_once(addr, &client, "/q", &msg(k)).await;
                match r {
                    Ok(r) if r.status == 200 && r.ack() == Some(true) => acked.push(k),
                    Ok(r) => assert_eq!(r.status, 503, "only an Ack or a retryable refusal"),
                    Err(_) => {}
                }
            }
            acked
        }));
    }
    eventually("some acks before the kill", Duration::from_secs(20), || {
        queued_so_far(&p) >= 30
    })
    .await;
    p.signal("KILL");
    let mut acked: Vec<usize> = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    assert!(
        acked.len() >= 30 && acked.len() < 100,
        "the kill landed mid-stream: {}",
        acked.len()
    );

    // Every acked message is in the store, before any restart delivers it.
    let stored: HashSet<String> = queue_json(&p.config, &[])
        .iter()
        .flat_map(|m| m["notification_ids"].as_array().unwrap().clone())
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for k in &acked {
        assert!(
            stored.contains(&notification_id(*k)),
            "acked message {k} is not in the store"
        );
    }
    let p2 = Proxy::start_config(&w, &p.config).await;
    eventually(
        "every acked message delivered after the restart",
        Duration::from_secs(30),
        || acked.iter().all(|k| deliveries_of(&recv, *k) >= 1),
    )
    .await;
    drop(p2);
}

#[tokio::test(flavor = "multi_thread")]
async fn salesforce_retries_are_dropped_as_duplicates_also_after_a_restart() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let s = with_store(
        &w,
        Setup::new(&w).route("q.toml", queued_route(&recv.url("/soap"), "strip", "")),
        "",
    );
    let mut p = Proxy::start(&w, &s).await;
    assert_eq!(p.status(&w.salesforce(), "/q", &msg(7)).await, 200);
    assert_eq!(p.status(&w.salesforce(), "/q", &msg(7)).await, 200);
    assert_eq!(decisions(&p, "duplicate").len(), 1);
    eventually("the delivery", Duration::from_secs(10), || {
        deliveries_of(&recv, 7) == 1
    })
    .await;
    p.signal("TERM");
    assert_eq!(p.wait(Duration::from_secs(20)), Some(0));
    let p = Proxy::start_config(&w, &p.config).await;
    assert_eq!(p.status(&w.salesforce(), "/q", &msg(7)).await, 200);
    assert_eq!(decisions(&p, "duplicate").len(), 2);
    // A message with one new notification beside the old one is delivered.
    let both = Sample {
        first_notification: 7,
        notifications: 2,
        ..Sample::default()
    }
    .body();
    assert_eq!(p.status(&w.salesforce(), "/q", &both).await, 200);
    eventually(
        "the partial overlap delivered",
        Duration::from_secs(10),
        || deliveries_of(&recv, 8) == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        deliveries_of(&recv, 7),
        2,
        "once alone, once beside a new notification"
    );
    let m = p.metrics().await;
    assert_eq!(metric(&m, "obmguard_duplicates_total{route=\"q\"}"), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_past_its_maximum_age_is_a_dead_letter_until_replayed() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Status(500)).await.unwrap();
    let s = with_store(
        &w,
        Setup::new(&w).route(
            "q.toml",
            queued_route(&recv.url("/soap"), "strip", "max_age_seconds = 1\n"),
        ),
        "",
    );
    let p = Proxy::start(&w, &s).await;
    assert_eq!(p.status(&w.salesforce(), "/q", &msg(42)).await, 200);
    let mut dead = Vec::new();
    eventually("a dead letter", Duration::from_secs(15), || {
        dead = queue_json(&p.config, &["--route", "q", "--state", "dead"]);
        dead.len() == 1
    })
    .await;
    let d = &dead[0];
    assert_eq!(d["route"], "q");
    assert_eq!(d["state"], "dead");
    assert_eq!(d["notification_ids"][0], notification_id(42));
    assert!(d["attempts"].as_u64().unwrap() >= 2, "{d}");
    assert!(d["accepted_at"].as_str().unwrap().ends_with('Z'));
    eventually("the dead letter's record", Duration::from_secs(5), || {
        decisions(&p, "dead_lettered").len() == 1
    })
    .await;
    let m = p.metrics().await;
    assert_eq!(metric(&m, "obmguard_dead_letters_total{route=\"q\"}"), 1.0);

    recv.set_behaviour(Behaviour::Ack);
    let before = recv.count();
    let (code, out) = queue_cmd(&p.config, &["replay", "--route", "q", "--state", "dead"]);
    assert_eq!((code, out.trim()), (0, "replay: 1 message(s)"));
    eventually(
        "the replayed message delivered",
        Duration::from_secs(10),
        || queue_json(&p.config, &["--state", "delivered"]).len() == 1,
    )
    .await;
    assert_eq!(recv.count(), before + 1);
    // replay takes dead letters only, and drop wants a selection.
    let (code, out) = queue_cmd(&p.config, &["replay", "--state", "queued"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("use retry"), "{out}");
    let (code, out) = queue_cmd(&p.config, &["drop"]);
    assert_eq!(code, 1, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_store_answers_503_and_acks_nothing_it_did_not_store() {
    let w = World::new();
    let upstream = format!("http://127.0.0.1:{}/soap", free_port());
    let s = with_store(
        &w,
        Setup::new(&w).route("q.toml", queued_route(&upstream, "strip", "")),
        "max_messages = 2\n",
    );
    let p = Proxy::start(&w, &s).await;
    assert_eq!(p.status(&w.salesforce(), "/q", &msg(1)).await, 200);
    assert_eq!(p.status(&w.salesforce(), "/q", &msg(2)).await, 200);
    let r = p.post(&w.salesforce(), "/q", &msg(3)).await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.body_str().contains("soapenv:Server"));
    assert!(r.fault_string().unwrap().contains("store is full"));
    let stored = queue_json(&p.config, &[]);
    assert_eq!(stored.len(), 2);
    // The requests' records (deliveries retrying meanwhile write records of their own).
    let requests: Vec<_> = p
        .audit_lines()
        .into_iter()
        .filter(|l| l["attempt"].is_null())
        .collect();
    let last = requests.last().unwrap();
    assert_eq!(
        (last["decision"].as_str(), last["reason"].as_str()),
        (Some("rejected"), Some("store_full"))
    );
}

/// A small tmpfs on a temporary directory, unmounted on drop; `None` (printed) where this
/// machine cannot mount one, which CI (root) always can.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to mount a tmpfs"
            );
            eprintln!("SKIPPED: cannot mount a small tmpfs here (not root?)");
            return None;
        }
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_whose_disk_fills_up_answers_503_and_stays_sound() {
    let Some(fs) = Tmpfs::mount("1m") else { return };
    let w = World::new();
    let upstream = format!("http://127.0.0.1:{}/soap", free_port());
    let mut s = Setup::new(&w).route("q.toml", queued_route(&upstream, "strip", ""));
    s.extra = format!(
        "\n[store]\npath = {:?}\n",
        fs.0.path().join("store").display().to_string()
    );
    let p = Proxy::start(&w, &s).await;
    // Big messages (many notifications) until the filesystem is full.
    let (mut acked, mut refused) = (Vec::new(), 0);
    for k in 0..200 {
        let body = Sample {
            first_notification: k * 100,
            notifications: 100,
            ..Sample::default()
        }
        .body();
        let r = p.post(&w.salesforce(), "/q", &body).await.unwrap();
        match r.status {
            200 => acked.push(k),
            503 => {
                assert!(r.body_str().contains("soapenv:Server"));
                assert_ne!(r.ack(), Some(true));
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {}", r.body_str()),
        }
    }
    assert!(
        refused == 3 && !acked.is_empty(),
        "acked {}, refused {refused}",
        acked.len()
    );
    assert!(p
        .logs_with("store's filesystem is full")
        .contains("store's filesystem is full"));
    // Everything acked is there and readable; the database is intact.
    let stored = queue_json(&p.config, &[]);
    assert_eq!(stored.len(), acked.len());
    let db = fs.0.path().join("store").join("obmguard.sqlite3");
    let check = Command::new("sqlite3")
        .arg(&db)
        .arg("PRAGMA integrity_check;")
        .output();
    if let Ok(out) = check {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }
    drop(p);
}

#[tokio::test(flavor = "multi_thread")]
async fn queued_inject_waits_for_the_token_endpoint_and_keeps_no_secret_at_rest() {
    const CLIENT_ID: &str = "3MVG9-consumer-key";
    const SECRET: &str = "client-secret-s3cr3t-value-9f8e7d";
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let mut cfg = TokenServerConfig::client_credentials(CLIENT_ID, SECRET);
    cfg.instance_url = "https://acme-instance.example.com".into();
    let tokens = TokenServer::start(cfg).await.unwrap();
    tokens.set_mode(Mode::Status500);
    let secret_file = w.path("client_secret");
    write(&secret_file, SECRET);
    let policy = queued_route(&recv.url("/soap"), "inject", "")
        + &format!(
            "\n[oauth]\nflow = \"client_credentials\"\ntoken_url = \"{}\"\nclient_id = {{ value = \"{CLIENT_ID}\" }}\nclient_secret = {{ file = {:?} }}\ntimeout_ms = 1000\n",
            tokens.url(),
            secret_file.display().to_string()
        );
    let admin_token = "admin-token-0123456789abcdef";
    write(&w.path("admin_token"), admin_token);
    let s = with_store(
        &w,
        Setup::new(&w).route("q.toml", policy),
        &format!(
            "admin_token = {{ file = {:?} }}\n",
            w.path("admin_token").display().to_string()
        ),
    );
    let p = Proxy::start(&w, &s).await;
    for k in 0..3 {
        let r = p.post(&w.salesforce(), "/q", &msg(k)).await.unwrap();
        assert_eq!(
            r.status,
            200,
            "accepted while the token endpoint is down: {}",
            r.body_str()
        );
    }
    eventually("token failures", Duration::from_secs(10), || {
        p.audit_lines()
            .iter()
            .any(|l| l["decision"] == "retried" && l["reason"] == "token_unavailable")
    })
    .await;
    assert_eq!(recv.count(), 0, "nothing is sent without a token");

    tokens.set_mode(Mode::Ok);
    eventually(
        "delivery with a fresh token",
        Duration::from_secs(15),
        || (0..3).all(|k| deliveries_of(&recv, k) == 1),
    )
    .await;
    let token = tokens.last_issued_token().unwrap();
    let got = recv.last().unwrap();
    assert_eq!(got.session_id_value().as_deref(), Some(token.as_str()));
    assert!(got
        .body_str()
        .contains("https://acme-instance.example.com/services/Soap/c/"));

    // Nothing secret at rest: not the session id, not the token, not the client secret.
    let mut files = 0;
    for entry in std::fs::read_dir(w.path("store")).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        for secret in [SESSION_ID, token.as_str(), SECRET] {
            assert!(
                !bytes
                    .windows(secret.len())
                    .any(|win| win == secret.as_bytes()),
                "{} holds a secret",
                path.display()
            );
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    assert!(files >= 1);

    // The admin listener: reading is open, changing needs the token.
    let (code, body) = p.get("/queue?route=q&state=delivered").await.unwrap();
    assert_eq!(code, 200);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(rows.len(), 3);
    let id = rows[0]["id"].as_i64().unwrap();
    let (code, _) = p.get(&format!("/queue/{id}")).await.unwrap();
    assert_eq!(code, 200);
    let (code, _) = p.get(&format!("/queue/{id}?body=true")).await.unwrap();
    assert_eq!(code, 401, "a body needs the admin token");
    let admin = obmguard_testkit::client::admin_request;
    let (code, _) = admin(p.admin, "POST", "/queue/drop?state=delivered", None)
        .await
        .unwrap();
    assert_eq!(code, 401);
    let (code, _) = admin(
        p.admin,
        "POST",
        "/queue/drop?state=delivered",
        Some("wrong-token-0123456789"),
    )
    .await
    .unwrap();
    assert_eq!(code, 401);
    let (code, body) = admin(
        p.admin,
        "POST",
        "/queue/drop?state=delivered",
        Some(admin_token),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"messages\": 3"), "{body}");
    assert!(!p.logs().contains(admin_token));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_admin_token_the_queue_cannot_be_changed_over_http() {
    let w = World::new();
    let upstream = format!("http://127.0.0.1:{}/soap", free_port());
    let s = with_store(
        &w,
        Setup::new(&w).route("q.toml", queued_route(&upstream, "strip", "")),
        "",
    );
    let p = Proxy::start(&w, &s).await;
    assert_eq!(p.status(&w.salesforce(), "/q", &msg(5)).await, 200);
    let admin = obmguard_testkit::client::admin_request;
    let (code, body) = admin(
        p.admin,
        "POST",
        "/queue/drop?route=q",
        Some("anything-0123456789"),
    )
    .await
    .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("admin_token"));
    assert_eq!(queue_json(&p.config, &[]).len(), 1, "nothing was dropped");
    // The CLI can, beside the running server.
    let (code, out) = queue_cmd(&p.config, &["drop", "--route", "q"]);
    assert_eq!((code, out.trim()), (0, "drop: 1 message(s)"));
    assert!(queue_json(&p.config, &[]).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_moved_back_to_direct_still_delivers_what_it_queued() {
    let w = World::new();
    let port = free_port();
    let upstream = format!("http://127.0.0.1:{port}/soap");
    let s = with_store(
        &w,
        Setup::new(&w).route("q.toml", queued_route(&upstream, "strip", "")),
        "",
    );
    let p = Proxy::start(&w, &s).await;
    for k in 0..3 {
        assert_eq!(p.status(&w.salesforce(), "/q", &msg(k)).await, 200);
    }
    // The route goes back to direct: new messages get the receiver's verdict (down: 502).
    write(
        &w.path("policies/q.toml"),
        &route("q", "/q", &upstream, "strip"),
    );
    crate::ops::wait_for(&p, "obmguard_policy_generation", 2.0).await;
    let r = p.post(&w.salesforce(), "/q", &msg(10)).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.body_str());
    // What it queued is still delivered once the receiver is back.
    let recv = Receiver::start_on(format!("127.0.0.1:{port}").parse().unwrap(), Behaviour::Ack)
        .await
        .unwrap();
    eventually(
        "the queued messages delivered",
        Duration::from_secs(15),
        || (0..3).all(|k| deliveries_of(&recv, k) == 1),
    )
    .await;
    assert_eq!(
        deliveries_of(&recv, 10),
        0,
        "the direct message was answered 502, not queued"
    );
}
