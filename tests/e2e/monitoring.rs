//! The Grafana dashboard and the alert rules against a real Prometheus (Debian's
//! `prometheus`) scraping a real obmguard that has handled scripted traffic: every PromQL
//! expression of `deploy/grafana/obmguard.json` and `deploy/prometheus-alerts.yml` is
//! evaluated through Prometheus's HTTP API and must parse and return series, so renaming a
//! metric or a label value breaks the build.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;
use obmguard_testkit::file_server::FileServer;
use obmguard_testkit::messages::SESSION_ID;
use obmguard_testkit::pki::server_config;
use obmguard_testkit::receiver::{Behaviour, Receiver};
use obmguard_testkit::token_server::{TokenServer, TokenServerConfig};
use yaml_rust2::YamlLoader;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn have(tool: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is missing: .ci/run installs it (apt-get install -y prometheus)"
        );
        eprintln!("SKIPPED: {tool} is not installed (apt-get install -y prometheus)");
    }
    found
}

struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    async fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        write(
            &config,
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {:?}\nscrape_configs:\n  - job_name: obmguard\n    static_configs:\n      - targets: [\"{target}\"]\n",
                repo("deploy/prometheus-alerts.yml").display().to_string()
            ),
        );
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = Prometheus {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            _dir: dir,
        };
        let start = Instant::now();
        while !matches!(http_get(p.addr, "/-/ready").await, Ok((200, _))) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus never became ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    /// A GET on Prometheus's HTTP API (its answers are chunked: a real HTTP client).
    async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let r = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        Ok((status, r.text().await.map_err(|e| e.to_string())?))
    }

    /// `/api/v1/query`: Ok(number of series) or Err(Prometheus's error).
    async fn query(&self, expr: &str) -> Result<usize, String> {
        let q: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
        let (status, body) = self.get(&format!("/api/v1/query?query={q}")).await?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("HTTP {status}: {}", v["error"]));
        }
        Ok(v["data"]["result"].as_array().map(Vec::len).unwrap_or(0))
    }

    async fn rules_loaded(&self) -> usize {
        let (_, body) = self.get("/api/v1/rules").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["data"]["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .map(|g| g["rules"].as_array().map(Vec::len).unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// Every `expr` of the dashboard (panel targets and template variable queries), with
/// Grafana's variables given the values "All" would.
fn dashboard_exprs() -> Vec<(String, String)> {
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/obmguard.json")).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    let subst = |e: &str| {
        e.replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$route", ".*")
    };
    for p in json["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                subst(t["expr"].as_str().unwrap()),
            ));
        }
    }
    for v in json["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            // label_values(SELECTOR, label): Grafana's, not PromQL; the selector must return
            // series that carry the label.
            let inner = q
                .strip_prefix("label_values(")
                .unwrap()
                .strip_suffix(')')
                .unwrap();
            let (selector, label) = inner.rsplit_once(',').unwrap();
            out.push((
                format!("variable {}", v["name"].as_str().unwrap()),
                subst(&format!(
                    "count by ({}) ({})",
                    label.trim(),
                    selector.trim()
                )),
            ));
        }
    }
    out
}

/// Every alert rule's `expr`.
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("deploy/prometheus-alerts.yml")).unwrap();
    let doc = YamlLoader::load_from_str(&text).unwrap().remove(0);
    let mut out = Vec::new();
    for g in doc["groups"].as_vec().unwrap() {
        for r in g["rules"].as_vec().unwrap() {
            out.push((
                r["alert"].as_str().unwrap().to_string(),
                r["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

/// The series selectors in an expression (`obmguard_...{...}` and `up{...}`).
fn selectors(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let word_start = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let name_len = if word_start && expr[i..].starts_with("obmguard_") {
            expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len() - i)
        } else if word_start && expr[i..].starts_with("up{") {
            2
        } else {
            i += 1;
            continue;
        };
        let mut end = i + name_len;
        if expr[end..].starts_with('{') {
            end += expr[end..].find('}').unwrap() + 1;
        }
        out.push(expr[i..end].to_string());
        i = end;
    }
    out
}

#[test]
fn selectors_are_found_in_expressions() {
    assert_eq!(
        selectors("sum(rate(obmguard_a_total{x=\"1\"}[5m])) / up{job=\"o\"} and obmguard_b"),
        ["obmguard_a_total{x=\"1\"}", "up{job=\"o\"}", "obmguard_b"]
    );
    assert!(selectors("upstream(setup)").is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_and_alert_expressions_return_series_from_a_real_prometheus() {
    if !have("prometheus") {
        return;
    }
    let w = World::new();
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let tokens = TokenServer::start(TokenServerConfig::client_credentials("cid", "csecret"))
        .await
        .unwrap();
    let secret = w.path("client_secret");
    write(&secret, "csecret");
    // The refresh serves the built-in copy again: every ranges series exists.
    let ranges = FileServer::start(
        server_config(&w.pki.server, None).unwrap(),
        obmguard::config::ranges::BUILTIN_SALESFORCE_RANGES,
    )
    .await
    .unwrap();
    let mut s = Setup::new(&w)
        .route("legacy.toml", route("legacy", "/legacy", &recv.url("/l"), "audit"))
        .route("accounts.toml", route("accounts", "/accounts", &recv.url("/a"), "strip"))
        .route(
            "inject.toml",
            route("inject", "/inject", &recv.url("/i"), "inject")
                + &format!(
                    "\n[oauth]\nflow = \"client_credentials\"\ntoken_url = \"{}\"\nclient_id = {{ value = \"cid\" }}\nclient_secret = {{ file = {:?} }}\n",
                    tokens.url(),
                    secret.display().to_string()
                ),
        )
        .route(
            "queued.toml",
            route("queued", "/queued", &recv.url("/q"), "strip")
                + "\n[delivery]\nmode = \"queued\"\n",
        );
    s.extra = format!(
        "\n[store]\npath = {:?}\n",
        w.path("store").display().to_string()
    );
    s.source = format!(
        "allow = [\"127.0.0.1/32\", \"@salesforce\"]\n\n[source.salesforce_refresh]\nurl = {:?}\nca_file = {:?}\n",
        ranges.url("/ip-ranges.json"),
        w.pki.server_ca.display().to_string()
    );
    let p = Proxy::start(&w, &s).await;

    // Scripted traffic: acked, stripped, audited, injected, refused, a failed handshake, a
    // refused client certificate and a source address outside the ranges.
    let c = w.salesforce();
    for (path, sid) in [
        ("/legacy", true),
        ("/accounts", true),
        ("/accounts", false),
        ("/inject", false),
        ("/queued", true),
    ] {
        let body = notification(sid.then_some(SESSION_ID));
        assert_eq!(p.status(&c, path, &body).await, 200, "{}", p.logs());
    }
    assert_eq!(p.status(&c, "/accounts", b"<x/>").await, 400);
    assert!(p
        .post(&w.client(None), "/accounts", &notification(None))
        .await
        .is_err());
    assert!(p
        .post(
            &w.client(Some(&w.pki.rogue)),
            "/accounts",
            &notification(None)
        )
        .await
        .is_err());
    let mut outsider = w.salesforce();
    outsider.bind = Some("127.0.0.2".parse().unwrap());
    assert!(p
        .post(&outsider, "/accounts", &notification(None))
        .await
        .is_err());
    let m = p.metrics().await;
    assert!(
        metric(
            &m,
            "obmguard_salesforce_ranges_refreshes_total{outcome=\"ok\"}"
        ) + metric(
            &m,
            "obmguard_salesforce_ranges_refreshes_total{outcome=\"unchanged\"}"
        ) >= 1.0,
        "{m}"
    );

    let prom = Prometheus::start(p.admin).await;
    let mut exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let alerts = alert_exprs();
    assert!(alerts.len() >= 9);
    // Alert expressions return series only while firing: each must parse, and each series it
    // selects must exist.
    let mut checks: Vec<(String, String, bool)> =
        exprs.drain(..).map(|(what, e)| (what, e, true)).collect();
    for (name, e) in &alerts {
        checks.push((name.clone(), e.clone(), false));
        for sel in selectors(e) {
            checks.push((format!("{name}: {sel}"), sel, true));
        }
    }

    // Rates need two scrapes after the traffic: poll until every expression has series.
    let start = Instant::now();
    let mut failures;
    loop {
        failures = Vec::new();
        for (what, e, needs_series) in &checks {
            match prom.query(e).await {
                Err(err) => failures.push(format!("{what}: `{e}` does not parse: {err}")),
                Ok(0) if *needs_series => failures.push(format!("{what}: `{e}` returns no series")),
                Ok(_) => {}
            }
        }
        if failures.is_empty() || start.elapsed() > Duration::from_secs(40) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        prom.rules_loaded().await,
        alerts.len(),
        "Prometheus loaded every alert rule"
    );
    // And one that must not: a misspelt metric is caught.
    assert_eq!(prom.query("obmguard_requests_totl").await, Ok(0));
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    if !have("promtool") {
        return;
    }
    let check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo("deploy/prometheus-alerts.yml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new("promtool")
        .args(["test", "rules"])
        .arg(repo("deploy/prometheus-alerts.test.yml"))
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    // Every alert has a unit test.
    let tests = std::fs::read_to_string(repo("deploy/prometheus-alerts.test.yml")).unwrap();
    for (name, _) in alert_exprs() {
        assert!(
            tests.contains(&format!("alertname: {name}")),
            "{name} has no unit test"
        );
    }
}
