//! Operations: metrics after a scripted set of requests, the audit trail (one line per
//! message, no secrets), the migration report, and live reload including certificate rotation.

use std::time::Duration;

use crate::harness::*;
use obmguard_testkit::messages::{Sample, SESSION_ID};
use obmguard_testkit::receiver::{Behaviour, Receiver};

const SECRET_PART: &str = "AQ4AQFakeSessionValue";

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_audit_follow_a_scripted_set_of_requests() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let s = Setup::new(&w)
        .route(
            "audit.toml",
            route("legacy", "/legacy", &recv.url("/l"), "audit"),
        )
        .route(
            "strip.toml",
            route("accounts", "/accounts", &recv.url("/a"), "strip"),
        );
    let p = Proxy::start(&w, &s).await;
    let c = w.salesforce();
    let with = notification(Some(SESSION_ID));
    let other_org = Sample {
        org_id: "00D5e000000XyZw".into(),
        ..Sample::default()
    }
    .body();
    let mut statuses = Vec::new();
    for (path, body) in [
        ("/legacy", &with),
        ("/legacy", &with),
        ("/accounts", &with),
        ("/accounts", &notification(None)),
        ("/accounts", &other_org),
        ("/accounts", &b"<x/>".to_vec()),
    ] {
        statuses.push(p.status(&c, path, body).await);
    }
    recv.set_behaviour(Behaviour::Nack);
    statuses.push(p.status(&c, "/accounts", &with).await);
    assert_eq!(statuses, vec![200, 200, 200, 200, 403, 400, 502]);

    let m = p.metrics().await;
    let v = |series: &str| metric(&m, series);
    assert_eq!(
        v("obmguard_requests_total{outcome=\"acked\",route=\"legacy\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        v("obmguard_requests_total{outcome=\"acked\",route=\"accounts\"}"),
        2.0
    );
    assert_eq!(
        v("obmguard_requests_total{outcome=\"rejected\",route=\"accounts\"}"),
        2.0
    );
    assert_eq!(
        v("obmguard_requests_total{outcome=\"nacked\",route=\"accounts\"}"),
        1.0
    );
    assert_eq!(
        v("obmguard_rejections_total{reason=\"organization\",route=\"accounts\"}"),
        1.0
    );
    assert_eq!(
        v("obmguard_rejections_total{reason=\"bad_xml\",route=\"accounts\"}"),
        1.0
    );
    assert_eq!(
        v("obmguard_session_ids_total{action=\"audited\",route=\"legacy\"}"),
        2.0
    );
    assert_eq!(
        v("obmguard_session_ids_total{action=\"stripped\",route=\"accounts\"}"),
        2.0
    );
    assert_eq!(
        v("obmguard_upstream_duration_seconds_count{route=\"accounts\"}"),
        3.0
    );
    assert_eq!(
        v("obmguard_overhead_duration_seconds_count{route=\"accounts\"}"),
        5.0
    );
    assert_eq!(v("obmguard_policy_generation"), 1.0);
    assert_eq!(v("obmguard_routes_loaded"), 2.0);
    assert!(m.contains("obmguard_build_info{version=\""));
    assert!(
        v("obmguard_certificate_expiry_seconds{kind=\"server\",name=\"localhost\"}")
            > 86_400.0 * 300.0,
        "{m}"
    );
    assert!(m.contains("obmguard_certificate_expiry_seconds{kind=\"ca\""));
    assert!(
        v("obmguard_certificate_expiry_seconds{kind=\"client_last_seen\",name=\"accounts\"}") > 0.0
    );
    assert!(!m.contains(SECRET_PART));

    let lines = p.audit_lines();
    assert_eq!(lines.len(), 7, "one audit line per message");
    let ids: std::collections::HashSet<_> = lines
        .iter()
        .map(|l| l["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 7);
    assert_eq!(lines[0]["route"], "legacy");
    assert_eq!(lines[0]["organization_id"], ORG);
    assert_eq!(lines[0]["session_id"], "value");
    assert_eq!(lines[0]["session_action"], "audited");
    assert_eq!(lines[0]["mode"], "audit");
    assert_eq!(lines[0]["decision"], "acked");
    assert_eq!(lines[0]["upstream_status"], 200);
    assert_eq!(lines[0]["ack"], true);
    assert_eq!(
        lines[0]["client_cert_sha256"],
        w.pki.salesforce.sha256.as_str()
    );
    assert_eq!(lines[0]["sobject_types"][0], "Account");
    assert_eq!(lines[4]["reason"], "organization");
    assert_eq!(lines[6]["decision"], "nacked");
    let raw = p.audit_text();
    assert!(
        !raw.contains(SECRET_PART) && !raw.contains("Acme Ltd"),
        "no session id and no field value in the audit trail"
    );
    assert!(!p.logs().contains(SECRET_PART));

    // The migration report over this very audit file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_obmguard"))
        .args(["report", "--audit"])
        .arg(&p.audit)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(table.contains(ORG) && table.contains("inject"), "{table}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_obmguard"))
        .args(["report", "--format", "json", "--audit"])
        .arg(&p.audit)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pair = json["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["organization_id"] == ORG)
        .unwrap()
        .clone();
    assert_eq!(pair["messages"], 5, "{pair}");
    assert_eq!(pair["with_session_id"], 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_applies_a_valid_edit_and_keeps_the_last_good_set_on_an_invalid_one() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let strip = route("accounts", "/accounts", &recv.url("/a"), "strip");
    let p = Proxy::start(&w, &Setup::new(&w).route("a.toml", strip.clone())).await;
    let with = notification(Some(SESSION_ID));
    assert_eq!(p.status(&w.salesforce(), "/accounts", &with).await, 200);
    assert!(recv.last().unwrap().is_session_id_nil());

    // A valid edit (file change): audit mode now forwards the session id unchanged.
    write(
        &w.path("policies/a.toml"),
        &strip.replace("\"strip\"", "\"audit\""),
    );
    wait_for(&p, "obmguard_policy_generation", 2.0).await;
    assert_eq!(p.status(&w.salesforce(), "/accounts", &with).await, 200);
    assert_eq!(recv.last().unwrap().body, with);

    // An invalid edit: refused, counted, the audit policy stays in force.
    write(
        &w.path("policies/a.toml"),
        &strip.replace("\"strip\"", "\"sometimes\""),
    );
    wait_for(&p, "obmguard_policy_reloads_total{outcome=\"error\"}", 1.0).await;
    assert_eq!(p.status(&w.salesforce(), "/accounts", &with).await, 200);
    assert_eq!(
        recv.last().unwrap().body,
        with,
        "the last good policy is still in force"
    );
    assert!(
        p.logs_with("\"sometimes\" is not a mode")
            .contains("\"sometimes\" is not a mode"),
        "the same message as check"
    );

    // SIGHUP reloads too (after the file is fixed).
    write(&w.path("policies/a.toml"), &strip);
    wait_for(&p, "obmguard_policy_generation", 3.0).await;
    p.signal("HUP");
    wait_for(&p, "obmguard_policy_generation", 4.0).await;
    assert_eq!(p.status(&w.salesforce(), "/accounts", &with).await, 200);
    assert!(recv.last().unwrap().is_session_id_nil());
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_rotation_applies_to_new_connections_while_an_open_one_completes() {
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let p = Proxy::start(
        &w,
        &Setup::new(&w).route("a.toml", route("a", "/a", &recv.url("/a"), "strip")),
    )
    .await;
    let mut old = p.connect(&w.salesforce()).await.unwrap();
    assert_eq!(status_on(&mut old).await, 200);
    assert_eq!(
        old.server_cert_sha256().as_deref(),
        Some(w.pki.server.sha256.as_str())
    );

    // Rotate: the configured server certificate and key files now hold the rotated pair.
    std::fs::copy(&w.pki.server_rotated.key, &w.pki.server.key).unwrap();
    std::fs::copy(&w.pki.server_rotated.cert, &w.pki.server.cert).unwrap();
    wait_for(&p, "obmguard_policy_generation", 2.0).await;

    let mut new = p.connect(&w.salesforce()).await.unwrap();
    assert_eq!(status_on(&mut new).await, 200);
    assert_eq!(
        new.server_cert_sha256().as_deref(),
        Some(w.pki.server_rotated.sha256.as_str())
    );
    // The connection opened before the rotation still works, on its original certificate.
    assert_eq!(status_on(&mut old).await, 200);
    assert_eq!(recv.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_withdraws_the_client_ca_refuses_a_chain_accepted_before() {
    // obmguard remembers chains it has accepted (tls::Accepted); a reload must forget them.
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let trust = w.path("trust.pem");
    std::fs::copy(&w.pki.client_ca, &trust).unwrap();
    let mut s = Setup::new(&w).route("a.toml", route("a", "/a", &recv.url("/a"), "strip"));
    s.client_cert = format!("ca_bundle = {:?}\n", trust.display().to_string());
    let p = Proxy::start(&w, &s).await;
    let body = notification(None);
    // Two new connections with the same chain: the first checks it, the second may use what
    // the first remembered.
    for _ in 0..2 {
        assert_eq!(
            p.post(&w.salesforce(), "/a", &body).await.unwrap().status,
            200
        );
    }
    // The bundle now holds another CA only.
    std::fs::copy(&w.pki.rogue_ca, &trust).unwrap();
    p.signal("HUP");
    wait_for(&p, "obmguard_policy_generation", 2.0).await;
    let refused = p.post(&w.salesforce(), "/a", &body).await;
    assert!(refused.is_err(), "{:?}", refused.map(|r| r.status));
    assert_eq!(
        recv.count(),
        2,
        "nothing reaches the receiver after the reload"
    );
    let m = p.metrics().await;
    assert!(cert_rejections(&m, "unknown_issuer") >= 1.0, "{m}");
}

/// One notification on an open connection; its status.
async fn status_on(c: &mut obmguard_testkit::client::Connection) -> u16 {
    c.post_soap("/a", &notification(None), &[])
        .await
        .unwrap()
        .status
}

/// Wait (bounded) until a metric reaches at least `at_least`.
pub async fn wait_for(p: &Proxy, series: &str, at_least: f64) {
    for _ in 0..200 {
        if metric(&p.metrics().await, series) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "{series} never reached {at_least}:\n{}\n{}",
        p.metrics().await,
        p.logs()
    );
}

/// The binary carries its allocator options (`src/main.rs`): freed blocks of up to 64 KiB stay
/// in the thread's cache. jemalloc prints the options in effect at exit when asked to.
#[test]
fn the_binary_keeps_freed_blocks_of_up_to_64_kib_in_the_thread_cache() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_obmguard"))
        .arg("--version")
        .env("_RJEM_MALLOC_CONF", "stats_print:true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stats = String::from_utf8_lossy(&out.stderr);
    let options: Vec<&str> = stats.lines().filter(|l| l.contains("opt.")).collect();
    assert!(
        options.iter().any(|l| l.trim() == "opt.tcache_max: 65536"),
        "{options:#?}"
    );
}
