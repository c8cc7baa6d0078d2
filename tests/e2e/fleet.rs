//! Two obmguard processes sharing one PostgreSQL (a throw-away cluster from the machine's
//! server binaries), with real TLS: a takeover after a SIGKILL, a Salesforce retry landing on
//! the other instance, the database restarted under traffic, and a rolling restart behind a
//! real HAProxy sending PROXY protocol v2, with source admission on the real client address.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::queue::{deliveries_of, eventually, msg};
use obmguard_testkit::client::{post_once, TlsClientConfig};
use obmguard_testkit::postgres::TestPostgres;
use obmguard_testkit::receiver::{Behaviour, Receiver};

/// The fleet's configuration: queued route `q` (and direct route `d`) to `upstream`, the
/// store in PostgreSQL (its URL in a file, as a secret). A delivery's lease is the receiver's
/// timeout (5 s) plus 2 s.
fn fleet_setup(w: &World, db_url: &str, upstream: &str) -> Setup {
    let url_file = w.path("store_url");
    write(&url_file, db_url);
    let q = route("q", "/q", upstream, "strip")
        + "\n[delivery]\nmode = \"queued\"\nretry_initial_ms = 200\nretry_max_ms = 1000\n";
    let mut s = Setup::new(w)
        .route("q.toml", q)
        .route("d.toml", route("d", "/d", upstream, "strip"));
    s.extra = format!(
        "\n[store]\nurl = {{ file = {:?} }}\nlease_ms = 1000\npool_size = 4\n",
        url_file.display().to_string()
    );
    s
}

async fn instance(w: &World, s: &Setup, name: &str) -> Proxy {
    Proxy::try_start_in(w, s, &[], name).await.unwrap()
}

/// Messages queued so far, read without waiting for the audit writer (to time a kill).
fn queued_so_far(p: &Proxy) -> usize {
    p.audit_lines_now()
        .iter()
        .filter(|l| l["decision"] == "queued")
        .count()
}

fn decisions(p: &Proxy, decision: &str) -> usize {
    p.audit_lines()
        .iter()
        .filter(|l| l["decision"] == decision)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_accepted_by_one_instance_is_delivered_by_the_other_after_a_sigkill() {
    let Some(pg) = TestPostgres::shared().await else {
        return;
    };
    let db = pg.fresh_database().await;
    let w = World::new();
    let recv = Receiver::start(Behaviour::Hang).await.unwrap();
    let s = fleet_setup(&w, &db, &recv.url("/soap"));
    let a = instance(&w, &s, "a").await;
    assert_eq!(a.status(&w.salesforce(), "/q", &msg(1)).await, 200);
    // A is delivering it (the receiver hangs) when B starts: B leaves a live process's lease.
    eventually("A's delivery", Duration::from_secs(10), || {
        recv.count() == 1
    })
    .await;
    let b = instance(&w, &s, "b").await;
    a.signal("KILL");
    recv.set_behaviour(Behaviour::Ack);
    eventually(
        "B's delivery after A's lease expired",
        Duration::from_secs(15),
        || decisions(&b, "delivered") == 1,
    )
    .await;
    assert_eq!(deliveries_of(&recv, 1), 2, "A's attempt (cut off) and B's");
    let line = b
        .audit_lines()
        .into_iter()
        .find(|l| l["decision"] == "delivered")
        .unwrap();
    assert_eq!(line["attempt"], 2, "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_salesforce_retry_landing_on_the_other_instance_is_a_duplicate() {
    let Some(pg) = TestPostgres::shared().await else {
        return;
    };
    let db = pg.fresh_database().await;
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let s = fleet_setup(&w, &db, &recv.url("/soap"));
    let a = instance(&w, &s, "a").await;
    let b = instance(&w, &s, "b").await;
    assert_eq!(a.status(&w.salesforce(), "/q", &msg(2)).await, 200);
    assert_eq!(b.status(&w.salesforce(), "/q", &msg(2)).await, 200);
    assert_eq!(decisions(&a, "queued"), 1);
    assert_eq!(decisions(&b, "duplicate"), 1);
    eventually("the delivery", Duration::from_secs(10), || {
        deliveries_of(&recv, 2) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(deliveries_of(&recv, 2), 1, "delivered once by the fleet");
}

#[tokio::test(flavor = "multi_thread")]
async fn while_postgresql_is_down_queued_routes_answer_503_and_both_instances_recover() {
    let Some(mut pg) = TestPostgres::start().await else {
        return;
    };
    if !pg.can_restart() {
        eprintln!("SKIPPED: OBMGUARD_TEST_POSTGRES_URL names a server this test cannot restart");
        return;
    }
    let db = pg.fresh_database().await;
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let s = fleet_setup(&w, &db, &recv.url("/soap"));
    let a = instance(&w, &s, "a").await;
    let b = instance(&w, &s, "b").await;
    assert_eq!(a.status(&w.salesforce(), "/q", &msg(3)).await, 200);

    pg.stop().await;
    for (p, k) in [(&a, 4), (&b, 5)] {
        let r = p.post(&w.salesforce(), "/q", &msg(k)).await.unwrap();
        assert_eq!(r.status, 503, "{}", r.body_str());
        assert!(r.body_str().contains("soapenv:Server"));
        assert_ne!(r.ack(), Some(true), "never an Ack without the database");
        // A direct route without dedupe does not need the database.
        assert_eq!(p.status(&w.salesforce(), "/d", &msg(k + 100)).await, 200);
    }
    pg.restart().await;
    for (p, k) in [(&a, 4), (&b, 5)] {
        let start = Instant::now();
        loop {
            let r = p.post(&w.salesforce(), "/q", &msg(k)).await.unwrap();
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 503);
            assert!(start.elapsed() < Duration::from_secs(20), "no recovery");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eventually(
        "every accepted message delivered",
        Duration::from_secs(20),
        || [3, 4, 5].iter().all(|k| deliveries_of(&recv, *k) >= 1),
    )
    .await;
    let m = a.metrics().await + &b.metrics().await;
    assert!(
        m.contains("obmguard_store_errors_total{op=\"admit\"} 1"),
        "counted"
    );
}

/// HAProxy (TCP mode) in front of both instances with PROXY protocol v2, checking each
/// instance's `/readyz`; a stats socket to take an instance out before restarting it.
struct Balancer {
    child: Child,
    addr: std::net::SocketAddr,
    socket: std::path::PathBuf,
}

impl Balancer {
    async fn start(w: &World, backends: &[(&str, &Proxy)]) -> Option<Balancer> {
        let bin = crate::proxy_protocol::haproxy_binary()?;
        let port = free_port();
        let socket = w.path("haproxy.sock");
        let mut servers = String::new();
        for (name, p) in backends {
            servers.push_str(&format!(
                "    server {name} {} send-proxy-v2 check port {} inter 100 fall 1 rise 1\n",
                p.addr,
                p.admin.port()
            ));
        }
        let cfg = w.path("haproxy.cfg");
        write(
            &cfg,
            &format!(
                "global\n    maxconn 200\n    stats socket {} level admin\n\ndefaults\n    mode tcp\n    retries 3\n    option redispatch\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\nfrontend salesforce\n    bind 127.0.0.1:{port}\n    default_backend fleet\n\nbackend fleet\n    balance roundrobin\n    option httpchk GET /readyz\n{servers}",
                socket.display()
            ),
        );
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lb = Balancer {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            socket,
        };
        let start = Instant::now();
        while !lb.socket.exists() || lb.command("show info").await.is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "haproxy did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(lb)
    }

    /// One command on the stats socket; its answer.
    async fn command(&self, cmd: &str) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(&self.socket).await?;
        s.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    /// Whether HAProxy sees `server` up (its health check passes).
    async fn is_up(&self, server: &str) -> bool {
        let stat = self.command("show stat").await.unwrap_or_default();
        stat.lines()
            .any(|l| l.starts_with(&format!("fleet,{server},")) && l.contains(",UP,"))
    }

    async fn wait_up(&self, server: &str) {
        let start = Instant::now();
        while !self.is_up(server).await {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{server} never came up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn from(w: &World, ip: &str) -> TlsClientConfig {
    let mut c = w.salesforce();
    c.bind = Some(ip.parse().unwrap());
    c
}

/// Take `name` out of the balancer, SIGTERM it (it drains), and start it again on the same
/// configuration.
async fn roll(w: &World, lb: &Balancer, name: &str, p: Proxy) -> Proxy {
    lb.command(&format!("disable server fleet/{name}"))
        .await
        .unwrap();
    let config = p.config.clone();
    let mut p = p;
    p.signal("TERM");
    assert_eq!(
        p.wait(Duration::from_secs(30)),
        Some(0),
        "{name} drained and stopped"
    );
    let restarted = Proxy::start_config(w, &config).await;
    lb.command(&format!("enable server fleet/{name}"))
        .await
        .unwrap();
    lb.wait_up(name).await;
    restarted
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_behind_haproxy_fails_no_request_and_loses_no_message() {
    let Some(pg) = TestPostgres::shared().await else {
        return;
    };
    let db = pg.fresh_database().await;
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let mut s = fleet_setup(&w, &db, &recv.url("/soap"));
    // The balancer at 127.0.0.1 names the clients; only 127.0.0.2 may call.
    s.server = "proxy_protocol_from = [\"127.0.0.1/32\"]\n".into();
    s.source = "allow = [\"127.0.0.2/32\"]\n".into();
    let a = instance(&w, &s, "a").await;
    let b = instance(&w, &s, "b").await;
    let Some(lb) = Balancer::start(&w, &[("a", &a), ("b", &b)]).await else {
        return;
    };
    lb.wait_up("a").await;
    lb.wait_up("b").await;

    // Source admission applies to the client HAProxy names, not to HAProxy.
    let refused = post_once(lb.addr, &from(&w, "127.0.0.3"), "/q", &msg(9000)).await;
    assert!(
        refused.map(|r| r.status != 200).unwrap_or(true),
        "127.0.0.3 is not admitted"
    );

    // Steady traffic from 127.0.0.2 while A, then B, is drained and restarted.
    let (addr, client) = (lb.addr, from(&w, "127.0.0.2"));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let sender = tokio::spawn(async move {
        let mut results = Vec::new();
        let mut k = 0;
        while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
            let r = post_once(addr, &client, "/q", &msg(k)).await;
            results.push((k, r.map(|r| (r.status, r.ack())).map_err(|e| e.to_string())));
            k += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        results
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let a = roll(&w, &lb, "a", a).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = roll(&w, &lb, "b", b).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = sender.await.unwrap();

    let failed: Vec<_> = results
        .iter()
        .filter(|(_, r)| r.as_ref().ok() != Some(&(200, Some(true))))
        .collect();
    assert!(results.len() >= 20, "{} messages", results.len());
    assert!(
        failed.is_empty(),
        "failed requests during the rolling restart: {failed:?}"
    );
    let acked: HashSet<usize> = results.iter().map(|(k, _)| *k).collect();
    eventually(
        "every acked message delivered",
        Duration::from_secs(20),
        || acked.iter().all(|k| deliveries_of(&recv, *k) >= 1),
    )
    .await;
    let got = recv.last().unwrap();
    assert_eq!(
        got.header("x-forwarded-for"),
        None,
        "queued: delivered later, not relayed"
    );
    // Both instances took traffic, and their audit names the client, not the balancer.
    let clients: HashSet<String> = a
        .audit_lines()
        .into_iter()
        .chain(b.audit_lines())
        .filter(|l| l["decision"] == "queued")
        .map(|l| l["client_ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(clients, HashSet::from(["127.0.0.2".to_string()]));
}

#[tokio::test(flavor = "multi_thread")]
async fn postgresql_and_an_instance_killed_mid_traffic_lose_no_acked_message() {
    let Some(mut pg) = TestPostgres::start().await else {
        return;
    };
    if !pg.can_restart() {
        eprintln!("SKIPPED: OBMGUARD_TEST_POSTGRES_URL names a server this test cannot kill");
        return;
    }
    let db = pg.fresh_database().await;
    let w = World::new();
    // The receiver is down while messages stream in: everything acked waits in PostgreSQL.
    let port = free_port();
    let s = fleet_setup(&w, &db, &format!("http://127.0.0.1:{port}/soap"));
    let a = instance(&w, &s, "a").await;
    let b = instance(&w, &s, "b").await;
    let client = w.salesforce();
    let mut senders = Vec::new();
    for (t, addr) in [(0usize, a.addr), (1, b.addr)] {
        let client = client.clone();
        senders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..60usize {
                let k = 5000 + t * 1000 + i;
                match post_once(addr, &client, "/q", &msg(k)).await {
                    Ok(r) if r.status == 200 && r.ack() == Some(true) => acked.push(k),
                    Ok(r) => assert_eq!(r.status, 503, "an Ack or a retryable refusal only"),
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acked
        }));
    }
    eventually("some acks", Duration::from_secs(20), || {
        queued_so_far(&a) + queued_so_far(&b) >= 20
    })
    .await;
    // kill -9 the database (and its backends) while both instances take messages, then
    // instance A too.
    pg.crash().await;
    a.signal("KILL");
    let mut acked = Vec::new();
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    assert!(
        acked.len() >= 20 && acked.len() < 120,
        "{} acked",
        acked.len()
    );
    pg.restart().await;
    let recv = Receiver::start_on(format!("127.0.0.1:{port}").parse().unwrap(), Behaviour::Ack)
        .await
        .unwrap();
    // B alone delivers everything the fleet acked, A's included.
    eventually(
        "every acked message delivered",
        Duration::from_secs(30),
        || acked.iter().all(|k| deliveries_of(&recv, *k) >= 1),
    )
    .await;
    drop(b);
}
