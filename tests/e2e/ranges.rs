//! Salesforce's ranges: `import-ranges --fetch` against a real local HTTPS server serving the
//! real published format, its sanity checks and diff, the staleness warning of `check`, the
//! periodic refresh while serving, and the rate-limited log of refused source addresses.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::harness::*;
use obmguard_testkit::file_server::FileServer;
use obmguard_testkit::pki::server_config;

/// Salesforce's file of 2 February 2025, verbatim (21 Hyperforce prefixes).
const SAMPLE: &str = include_str!("../data/ip-ranges.2025-02-02.json");

async fn serve_file(w: &World, body: &str) -> FileServer {
    FileServer::start(
        server_config(&w.pki.server, None).unwrap(),
        body.to_string(),
    )
    .await
    .unwrap()
}

fn import(args: &[&str], extra: &[&Path]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_obmguard"));
    c.arg("import-ranges").args(args);
    for p in extra {
        c.arg(p);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `import-ranges --fetch --url URL --ca-file CA --to TO` plus `more`.
fn fetch(w: &World, srv: &FileServer, to: &Path, more: &[&str]) -> Output {
    let url = srv.url("/ip-ranges.json");
    let ca = w.pki.server_ca.display().to_string();
    let to = to.display().to_string();
    let mut args = vec!["--fetch", "--url", &url, "--ca-file", &ca, "--to", &to];
    args.extend_from_slice(more);
    import(&args, &[])
}

/// A ranges document in Salesforce's format.
fn doc(create: &str, prefixes: &[&str]) -> String {
    serde_json::json!({
        "syncToken": "1",
        "createDate": create,
        "prefixes": [{"region": "test", "provider": "aws", "ip_prefix": prefixes}],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_refuses_an_older_file_than_the_built_in_copy_unless_forced() {
    let w = World::new();
    let srv = serve_file(&w, SAMPLE).await;
    let to = w.path("ranges.json");
    // The sample (createDate 2025-02-02) is older than the built-in copy (2026-05-21).
    let out = fetch(&w, &srv, &to, &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("createDate 2025-02-02-11-34-23 is older than the 2026-05-21-19-19-08"),
        "{t}"
    );
    assert!(
        t.contains("compared with the built-in copy: 0 added, 16 removed"),
        "{t}"
    );
    assert!(t.contains("  - 13.108.0.0/14"), "{t}");
    assert!(t.contains("pass --force"), "{t}");
    assert!(!to.exists(), "nothing written");
    assert_eq!(srv.requests(), 1);

    let out = fetch(&w, &srv, &to, &["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("21 IPv4 and 0 IPv6 prefixes written"));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&to).unwrap()).unwrap();
    assert_eq!(written["prefixes"][0]["source_date"], "2025-02-02");
    assert_eq!(written["prefixes"][0]["region"], "ap-northeast-1");
    assert!(written["_comment"]
        .as_str()
        .unwrap()
        .contains(&srv.url("/")));
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_shows_what_a_newer_file_adds_and_removes_and_writes_it() {
    let w = World::new();
    let to = w.path("ranges.json");
    write(
        &to,
        &doc(
            "2026-01-01-00-00-00",
            &["141.163.208.0/23", "141.163.200.0/23", "10.9.0.0/16"],
        ),
    );
    let newer = doc(
        "2026-06-01-00-00-00",
        &["141.163.208.0/23", "141.163.200.0/23", "145.224.193.0/24"],
    );
    let srv = serve_file(&w, &newer).await;

    let out = fetch(&w, &srv, &to, &["--dry-run"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(t.contains("1 added, 1 removed"), "{t}");
    assert!(t.contains("  + 145.224.193.0/24"), "{t}");
    assert!(t.contains("  - 10.9.0.0/16"), "{t}");
    assert!(
        std::fs::read_to_string(&to)
            .unwrap()
            .contains("10.9.0.0/16"),
        "dry run wrote nothing"
    );

    let out = fetch(&w, &srv, &to, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let now = std::fs::read_to_string(&to).unwrap();
    assert!(now.contains("145.224.193.0/24") && !now.contains("10.9.0.0/16"));
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_refuses_files_that_fail_the_sanity_checks() {
    let w = World::new();
    let to = w.path("ranges.json");
    let current = doc(
        "2026-01-01-00-00-00",
        &[
            "141.163.208.0/23",
            "141.163.200.0/23",
            "141.163.214.0/24",
            "141.163.204.0/23",
        ],
    );
    write(&to, &current);
    let srv = serve_file(&w, "{\"prefixes\": [").await;
    let cases: [(&str, &str, bool); 5] = [
        (
            "{\"prefixes\": [",
            "not a Salesforce ip-ranges.json document",
            false,
        ),
        (
            &doc("2026-06-01-00-00-00", &["0.0.0.0/0"]),
            "admits every address",
            false,
        ),
        (
            &doc(
                "2026-06-01-00-00-00",
                &["12.0.0.0/7", "141.163.208.0/23", "141.163.200.0/23"],
            ),
            "12.0.0.0/7 is shorter than /8",
            true,
        ),
        (
            &doc("2026-06-01-00-00-00", &["141.163.208.0/23"]),
            "fewer than half of the 4 in force",
            true,
        ),
        (
            &doc(
                "2025-06-01-00-00-00",
                &["141.163.208.0/23", "141.163.200.0/23", "141.163.214.0/24"],
            ),
            "is older than the 2026-01-01-00-00-00",
            true,
        ),
    ];
    for (body, why, forceable) in cases {
        srv.set(200, body.to_string());
        let out = fetch(&w, &srv, &to, &[]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{why}: {t}");
        assert!(t.contains(why), "{why}: {t}");
        assert_eq!(
            std::fs::read_to_string(&to).unwrap(),
            current,
            "{why}: file untouched"
        );
        if !forceable {
            let out = fetch(&w, &srv, &to, &["--force"]);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{why} cannot be forced: {}",
                text(&out)
            );
            assert_eq!(std::fs::read_to_string(&to).unwrap(), current);
        }
    }
    // Not a 200, or too big: a download error, nothing written.
    srv.set(503, "busy");
    let t = text(&fetch(&w, &srv, &to, &[]));
    assert!(t.contains("answered HTTP 503"), "{t}");
    srv.set(200, "x".repeat(2 * 1024 * 1024));
    let t = text(&fetch(&w, &srv, &to, &[]));
    assert!(t.contains("more than 1048576 bytes"), "{t}");
    assert_eq!(std::fs::read_to_string(&to).unwrap(), current);
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_trusts_the_system_roots_by_default_and_refuses_our_test_ca() {
    let w = World::new();
    let srv = serve_file(&w, SAMPLE).await;
    let to = w.path("ranges.json");
    let url = srv.url("/ip-ranges.json");
    let out = import(&["--fetch", "--url", &url, "--to"], &[&to]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("cannot fetch"), "{t}");
    assert!(t.to_lowercase().contains("certificate"), "{t}");
    assert!(!to.exists());
    // Plain http is refused before any connection.
    let out = import(
        &["--fetch", "--url", "http://127.0.0.1:9/x.json", "--to"],
        &[&to],
    );
    assert!(text(&out).contains("only https:// is allowed"));
}

fn check_config(w: &World, source: &str) -> PathBuf {
    std::fs::create_dir_all(w.path("policies")).unwrap();
    write(
        &w.path("policies/erp.toml"),
        &route("erp", "/obm", "http://10.0.0.5/", "strip"),
    );
    let cfg = w.path("obmguard.toml");
    write(
        &cfg,
        &format!(
            "[server]\nlisten = [\"127.0.0.1:8443\"]\ntls_cert = {:?}\ntls_key = {:?}\n\n[client_cert]\nca_bundle = {:?}\n\n[source]\n{source}\n",
            w.pki.server.cert.display().to_string(),
            w.pki.server.key.display().to_string(),
            w.pki.client_ca.display().to_string(),
        ),
    );
    cfg
}

fn check(cfg: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_obmguard"))
        .args(["check", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), text(&out))
}

#[test]
fn check_warns_when_the_ranges_in_force_are_older_than_90_days() {
    let w = World::new();
    let old = w.path("old.json");
    write(&old, SAMPLE);
    let cfg = check_config(
        &w,
        &format!(
            "allow = [\"@salesforce\"]\nsalesforce_ranges = {:?}",
            old.display().to_string()
        ),
    );
    let (code, out) = check(&cfg);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("warning:"), "{out}");
    assert!(
        out.contains(
            "source.salesforce_ranges: the Salesforce ranges in force date from 2025-02-02"
        ),
        "{out}"
    );
    assert!(out.contains("import-ranges --fetch"), "{out}");

    let today = time::OffsetDateTime::now_utc().date();
    let fresh = w.path("fresh.json");
    write(
        &fresh,
        &doc(&format!("{today}-00-00-00"), &["141.163.208.0/23"]),
    );
    let cfg = check_config(
        &w,
        &format!(
            "allow = [\"@salesforce\"]\nsalesforce_ranges = {:?}",
            fresh.display().to_string()
        ),
    );
    let (code, out) = check(&cfg);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("Salesforce ranges"), "{out}");

    // Ranges nobody uses are not in force: no warning.
    let cfg = check_config(
        &w,
        &format!(
            "allow = [\"10.0.0.0/8\"]\nsalesforce_ranges = {:?}",
            old.display().to_string()
        ),
    );
    let (code, out) = check(&cfg);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("Salesforce ranges"), "{out}");
}

fn refresh_setup(w: &World, srv: &FileServer) -> Setup {
    let mut s = Setup::new(w).route(
        "erp.toml",
        route("erp", "/obm", "http://127.0.0.1:9/", "strip"),
    );
    s.source = format!(
        "allow = [\"@salesforce\"]\n\n[source.salesforce_refresh]\ninterval_minutes = 60\nurl = {:?}\nca_file = {:?}\n",
        srv.url("/ip-ranges.json"),
        w.pki.server_ca.display().to_string()
    );
    s
}

async fn wait_for(p: &Proxy, series: &str) -> String {
    let start = Instant::now();
    loop {
        let m = p.metrics().await;
        if metric(&m, series) >= 1.0 {
            return m;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{series} never counted:\n{m}\n{}",
            p.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refreshes_the_ranges_and_admits_the_new_ones() {
    let w = World::new();
    // The built-in prefixes plus loopback, dated today: plausible, newer, and it admits us.
    let builtin = obmguard::config::ranges::parse_salesforce_doc(
        obmguard::config::ranges::BUILTIN_SALESFORCE_RANGES,
    )
    .unwrap();
    let mut prefixes: Vec<String> = builtin.set.nets().iter().map(|n| n.to_string()).collect();
    prefixes.push("127.0.0.1/32".into());
    let today = time::OffsetDateTime::now_utc().date();
    let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
    let srv = serve_file(&w, &doc(&format!("{today}-00-00-00"), &refs)).await;
    let p = Proxy::start(&w, &refresh_setup(&w, &srv)).await;
    let m = wait_for(
        &p,
        "obmguard_salesforce_ranges_refreshes_total{outcome=\"ok\"}",
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "obmguard_salesforce_ranges_refreshes_total{outcome=\"error\"}"
        ),
        0.0
    );
    let date = today.midnight().assume_utc().unix_timestamp() as f64;
    assert_eq!(
        metric(
            &m,
            "obmguard_salesforce_ranges_date_seconds{source=\"refreshed\"}"
        ),
        date,
        "{m}"
    );
    // 127.0.0.1 now passes the source check: the request reaches routing (the receiver is down).
    let status = p.status(&w.salesforce(), "/obm", &notification(None)).await;
    assert_eq!(status, 502, "{}", p.logs());
    assert!(
        p.logs_with("Salesforce ranges refreshed")
            .contains("Salesforce ranges refreshed"),
        "{}",
        p.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_refresh_keeps_the_last_good_set_counts_it_and_logs_refused_addresses() {
    let w = World::new();
    // A hijacked file admitting much of the internet: refused by the sanity checks.
    let srv = serve_file(
        &w,
        &doc("2030-01-01-00-00-00", &["2.0.0.0/7", "127.0.0.1/32"]),
    )
    .await;
    let p = Proxy::start(&w, &refresh_setup(&w, &srv)).await;
    let m = wait_for(
        &p,
        "obmguard_salesforce_ranges_refreshes_total{outcome=\"error\"}",
    )
    .await;
    assert_eq!(
        metric(
            &m,
            "obmguard_salesforce_ranges_refreshes_total{outcome=\"ok\"}"
        ),
        0.0
    );
    assert!(
        metric(
            &m,
            "obmguard_salesforce_ranges_date_seconds{source=\"builtin\"}"
        ) > 0.0,
        "{m}"
    );
    let logs = p.logs();
    assert!(logs.contains("2.0.0.0/7 is shorter than /8"), "{logs}");
    assert!(logs.contains("the last good set stays in force"), "{logs}");
    // The built-in set stays in force: loopback is refused before TLS, and the refusal is
    // logged with the address, a bounded number of times per window.
    for _ in 0..15 {
        assert!(p
            .post(&w.salesforce(), "/obm", &notification(None))
            .await
            .is_err());
    }
    let m = p.metrics().await;
    assert!(
        metric(
            &m,
            &format!(
                "obmguard_connections_refused_total{{listener=\"{}\",reason=\"source_ip\"}}",
                p.addr
            )
        ) >= 15.0,
        "{m}"
    );
    let logs = p.logs();
    let logged = logs
        .matches("source address 127.0.0.1 is in no route's ranges")
        .count();
    assert_eq!(logged, 10, "{logs}");
    assert!(logs.contains("import-ranges --fetch"));
}
