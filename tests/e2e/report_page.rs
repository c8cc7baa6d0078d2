//! The migration page, rendered by a real headless Chromium: `obmguard report --format html`
//! and the admin listener's `/report`, over an audit file this test produced with real
//! traffic through the proxy, plus lines with hostile values. Assertions are on the DOM the
//! browser built (`--dump-dom`), not on the HTML text; a screenshot is kept under `target/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::*;
use obmguard_testkit::messages::{Sample, SESSION_ID};
use obmguard_testkit::receiver::{Behaviour, Receiver};
use scraper::{ElementRef, Html, Selector};

const LEGACY: &str = "04k5e000000Lgcy";
const ACCOUNTS: &str = "04k5e000000Acct";
const STRICT: &str = "04k5e000000Strc";
const SCRIPT_ORG: &str = "<script>document.title='pwned'</script>";
const ATTR_ACTION: &str = "\"'><img src=x onerror=alert(2)>";

/// The chromium binary, or `None` with a note (a failure under CI=true: CI must have it).
pub fn chromium() -> Option<&'static str> {
    let found = Command::new("chromium").arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is missing: .ci/run installs it (apt-get install -y chromium)"
        );
        eprintln!("SKIPPED: chromium is not installed (apt-get install -y chromium)");
        return None;
    }
    Some("chromium")
}

/// Run headless Chromium on `url` with a fresh profile; `extra` selects the output.
fn run_chromium(url: &str, extra: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,1100",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn dom(url: &str) -> Html {
    Html::parse_document(&run_chromium(url, &["--dump-dom"]))
}

fn sel(s: &str) -> Selector {
    Selector::parse(s).unwrap()
}

fn text(e: ElementRef) -> String {
    e.text().collect::<String>().trim().to_string()
}

fn cell(row: ElementRef, class: &str) -> String {
    text(row.select(&sel(&format!("td.{class}"))).next().unwrap())
}

/// The row of the actions table whose action cell reads `action`.
fn row<'a>(page: &'a Html, action: &str) -> ElementRef<'a> {
    page.select(&sel("#actions tbody tr"))
        .find(|r| cell(*r, "action") == action)
        .unwrap_or_else(|| panic!("no row for {action}:\n{}", page.html()))
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Real traffic through the proxy, then history and hostile lines appended to its audit file.
async fn produce_audit(w: &World) -> (Proxy, Receiver, String) {
    let recv = Receiver::start(Behaviour::Ack).await.unwrap();
    let s = Setup::new(w)
        .route(
            "legacy.toml",
            route("legacy", "/legacy", &recv.url("/l"), "audit"),
        )
        .route(
            "accounts.toml",
            route("accounts", "/accounts", &recv.url("/a"), "strip"),
        )
        .route(
            "strict.toml",
            route("strict", "/strict", &recv.url("/s"), "reject"),
        );
    let p = Proxy::start(w, &s).await;
    let c = w.salesforce();
    let msg = |action: &str, sid: bool| {
        Sample {
            action_id: action.into(),
            session_id: sid.then(|| SESSION_ID.to_string()),
            ..Sample::default()
        }
        .body()
    };
    let mut statuses = Vec::new();
    for (path, body) in [
        ("/legacy", msg(LEGACY, true)),
        ("/legacy", msg(LEGACY, true)),
        ("/legacy", msg(LEGACY, true)),
        ("/accounts", msg(ACCOUNTS, true)),
        ("/accounts", msg(ACCOUNTS, true)),
        ("/accounts", msg(ACCOUNTS, false)),
        ("/strict", msg(STRICT, true)),
    ] {
        statuses.push(p.status(&c, path, &body).await);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 403]);
    let lines = p.audit_lines();
    assert_eq!(lines.len(), 7);
    let today = lines[0]["time"].as_str().unwrap()[..10].to_string();

    // Eight days ago the legacy action sent five: the number is falling.
    let date =
        obmguard::config::ranges::parse_date_prefix(&today).unwrap() - time::Duration::days(8);
    let mut extra = String::new();
    for i in 0..5 {
        let mut l = lines[0].clone();
        l["time"] = format!("{date}T0{i}:00:00.000Z").into();
        extra.push_str(&format!("{l}\n"));
    }
    // Values chosen by a hostile sender, and one a megabyte long.
    let mut l = lines[5].clone();
    l["organization_id"] = SCRIPT_ORG.into();
    l["time"] = "<b>not a time</b>".into();
    extra.push_str(&format!("{l}\n"));
    let mut l = lines[5].clone();
    l["action_id"] = ATTR_ACTION.into();
    l["route"] = "R".repeat(1_000_000).into();
    l["mode"] = "</td></tr></table><h1>injected</h1>".into();
    extra.push_str(&format!("{l}\n"));
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&p.audit)
        .unwrap()
        .write_all(extra.as_bytes())
        .unwrap();
    (p, recv, today)
}

fn page_day_minus_8(today: &str) -> String {
    (obmguard::config::ranges::parse_date_prefix(today).unwrap() - time::Duration::days(8))
        .to_string()
}

fn assert_page(page: &Html, today: &str) {
    // Hostile values are text, never markup: no script ran, no element was injected.
    assert_eq!(page.select(&sel("script")).count(), 0);
    assert_eq!(page.select(&sel("img")).count(), 0);
    assert_eq!(page.select(&sel("h1")).count(), 1);
    assert_eq!(
        text(page.select(&sel("title")).next().unwrap()),
        "obmguard: session id migration"
    );
    let rows: Vec<_> = page.select(&sel("#actions tbody tr")).collect();
    assert_eq!(rows.len(), 5, "{}", page.html());
    let hostile = page
        .select(&sel("#actions td.org"))
        .find(|c| text(*c) == SCRIPT_ORG);
    assert!(hostile.is_some(), "the script tag shows as text");
    let attr = row(page, ATTR_ACTION);
    let routes = cell(attr, "routes");
    assert_eq!(
        routes.chars().count(),
        65,
        "a megabyte value is cut for display"
    );
    assert!(routes.starts_with("RRRR") && routes.ends_with('…'));
    assert_eq!(cell(attr, "modes"), "</td></tr></table><h1>injected</h1>");

    // The actions that still send a session id come first and are marked.
    let first_two: Vec<String> = rows[..2].iter().map(|r| cell(*r, "action")).collect();
    assert_eq!(first_two, [LEGACY, STRICT]);
    let legacy = row(page, LEGACY);
    assert_eq!(legacy.value().attr("class"), Some("depends"));
    assert_eq!(cell(legacy, "messages"), "8");
    assert_eq!(cell(legacy, "with-session-id"), "8");
    assert_eq!(cell(legacy, "modes"), "audit");
    assert_eq!(cell(legacy, "trend"), "falling (5 → 3)");
    assert!(
        cell(legacy, "verdict")
            .starts_with("still sends a session id: switch this route to inject"),
        "{}",
        cell(legacy, "verdict")
    );
    assert!(cell(legacy, "last-seen").starts_with(today));
    let strict = row(page, STRICT);
    assert_eq!(strict.value().attr("class"), Some("depends"));
    assert_eq!(cell(strict, "with-session-id"), "1");
    assert_eq!(
        cell(strict, "verdict"),
        format!("messages refused: untick 'Send Session ID' on the outbound message {STRICT}")
    );
    let accounts = row(page, ACCOUNTS);
    assert_eq!(accounts.value().attr("class"), Some("clear"));
    assert_eq!(cell(accounts, "messages"), "3");
    assert_eq!(cell(accounts, "with-session-id"), "2");
    assert_eq!(cell(accounts, "routes"), "accounts");
    assert!(cell(accounts, "verdict").starts_with(&format!("no session id seen since {today}")));
    assert!(cell(accounts, "verdict").ends_with("nothing to do"));

    assert_eq!(
        text(page.select(&sel("#actions-sending")).next().unwrap()),
        "2 of 5"
    );
    assert_eq!(
        text(page.select(&sel("#trend")).next().unwrap()),
        "rising (5 → 6)"
    );
    // The day's figures: 7 messages through the proxy and the hostile line that kept a valid
    // time (the other has none), 6 with a session id, 3 of them stripped or refused.
    let day = |d: &str| -> Vec<String> {
        page.select(&sel("#daily tbody tr"))
            .map(|r| r.select(&sel("td")).map(text).collect::<Vec<_>>())
            .find(|cells| cells[0] == d)
            .unwrap_or_else(|| panic!("no day {d}"))
    };
    assert_eq!(day(today), [today, "8", "6", "3"]);
    assert_eq!(
        day(&page_day_minus_8(today)),
        [page_day_minus_8(today).as_str(), "5", "5", "0"]
    );
    assert_eq!(page.select(&sel("#daily tbody tr")).count(), 9);
    // The chart draws two bars a day with the same figures in their titles.
    let chart = page.select(&sel("svg#daily-chart")).next().unwrap();
    assert_eq!(chart.select(&sel("rect")).count(), 18);
    let titles: Vec<String> = chart.select(&sel("rect title")).map(text).collect();
    assert!(
        titles.contains(&format!("{today}: 6 still carried a session id")),
        "{titles:?}"
    );
    assert!(
        titles.contains(&format!("{today}: 3 refused or stripped")),
        "{titles:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn migration_page_renders_rows_figures_and_verdicts_and_escapes_hostile_values() {
    let Some(_) = chromium() else { return };
    let w = World::new();
    let (p, _recv, today) = produce_audit(&w).await;

    // The file written by `obmguard report --format html --out`.
    let out_file = target_dir().join("migration-report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_obmguard"))
        .args(["report", "--format", "html", "--audit"])
        .arg(&p.audit)
        .arg("--out")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(&out_file).unwrap();
    assert!(
        !html.contains("http://")
            || html.matches("http://").count()
                == html.matches("http://www.w3.org/2000/svg").count(),
        "no external resource"
    );
    let url = format!("file://{}", out_file.display());
    assert_page(&dom(&url), &today);

    // A screenshot for a person to look at.
    let shot = target_dir().join("migration-report.png");
    let _ = std::fs::remove_file(&shot);
    run_chromium(&url, &[&format!("--screenshot={}", shot.display())]);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );

    // The same page, live from the admin listener.
    let live = dom(&format!("http://{}/report", p.admin));
    assert_page(&live, &today);
}

#[tokio::test(flavor = "multi_thread")]
async fn report_page_says_when_there_is_nothing_to_show_or_no_audit_file() {
    let w = World::new();
    let s = Setup::new(&w).route("a.toml", route("a", "/a", "http://127.0.0.1:9/", "strip"));
    let p = Proxy::start(&w, &s).await;
    let (status, body) = p.get("/report").await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("No message in the audit file yet."), "{body}");
    assert!(body.contains("0 of 0"), "{body}");
    std::fs::remove_file(&p.audit).unwrap();
    let (status, body) = p.get("/report").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot open audit file"), "{body}");
}
