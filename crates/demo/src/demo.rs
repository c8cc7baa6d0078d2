//! The demo: a guided tour that needs nothing but this binary and loopback.
//!
//! It makes a throw-away PKI in a temporary directory, starts the test kit's sample legacy
//! receiver (a real HTTP SOAP server) and token endpoint, writes a two-route configuration,
//! starts the real proxy as a child process (this same executable, hidden subcommand
//! `run-proxy`, which is `obmguard serve` from the obmguard library), then sends notifications
//! the way Salesforce does and checks both what Salesforce got and what the receiver saw. It
//! exits 0 only when every scenario behaved as expected; `--keep-running` then leaves
//! everything up for curl.
//!
//! It never prints a session id or token in full, and it is not an exhaustive test (the
//! end-to-end tests are). Every key made here is a test key, deleted on exit.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use obmguard::metrics;
use obmguard_testkit::client::{post_once, Response, TlsClientConfig};
use obmguard_testkit::messages::{find_element, Sample, ORG_ID, SESSION_ID};
use obmguard_testkit::pki::{Identity, Pki, PkiError, SALESFORCE_CN};
use obmguard_testkit::receiver::{Behaviour, Received, Receiver};
use obmguard_testkit::token_server::{TokenServer, TokenServerConfig};

const ACCOUNTS: &str = "/obm/accounts";
const LEGACY: &str = "/obm/legacy";
/// Where the token server says the org lives; differs from the samples' URLs so the rewrite shows.
const INSTANCE_URL: &str = "https://demo.my.salesforce.com";
/// A valid id of an organization the policy does not list.
const OTHER_ORG: &str = "00D000000000001EAA";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the demo could not run at all (as opposed to a scenario misbehaving).
#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("cannot create the throw-away PKI: {0}")]
    Pki(#[from] PkiError),
    #[error("cannot {what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("the proxy did not become ready ({why}); its log:\n{log}")]
    NotReady { why: String, log: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// Which client certificate the sender presents.
#[derive(Clone, Copy)]
enum Client {
    Salesforce,
    OtherSubject,
    RogueCa,
    NoCertificate,
}

enum Expect {
    /// 200 + Ack true; the receiver got the message with this in place of the session id.
    Ack(Seen),
    /// This status and a fault containing this text; nothing forwarded.
    Refused(u16, &'static str),
    /// The TLS handshake fails; nothing forwarded.
    Handshake,
}

enum Seen {
    Nil,
    Token,
}

use Client::*;
use Expect::*;
use Seen::*;

/// (name, route, client certificate, OrganizationId, carries a session id, expectation).
type Scenario = (
    &'static str,
    &'static str,
    Client,
    &'static str,
    bool,
    Expect,
);

#[rustfmt::skip]
const SCENARIOS: &[Scenario] = &[
    ("Salesforce, with a session id", ACCOUNTS, Salesforce, ORG_ID, true, Ack(Nil)),
    ("Salesforce, without a session id", ACCOUNTS, Salesforce, ORG_ID, false, Ack(Nil)),
    ("unknown organization", ACCOUNTS, Salesforce, OTHER_ORG, false, Refused(403, "may not use this route")),
    ("trusted CA, wrong subject", ACCOUNTS, OtherSubject, ORG_ID, false, Refused(403, "common name")),
    ("no client certificate", ACCOUNTS, NoCertificate, ORG_ID, false, Handshake),
    ("certificate from a rogue CA", ACCOUNTS, RogueCa, ORG_ID, false, Handshake),
    ("inject route, with a session id", LEGACY, Salesforce, ORG_ID, true, Ack(Token)),
];

/// The proxy child process; killed on every exit path.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
    audit: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything the demo runs. Fields drop in order: the proxy before the directory it reads.
struct Demo {
    proxy: Proxy,
    receiver: Receiver,
    tokens: TokenServer,
    pki: Pki,
    dir: tempfile::TempDir,
}

/// Run the demo; returns the process exit code (0 all scenarios as expected, 1 some did not,
/// 2 the demo could not run).
pub(crate) fn run(keep_running: bool) -> i32 {
    let Some(rt) = crate::runtime("demo") else {
        return 2;
    };
    match rt.block_on(demo(keep_running)) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("obmguard-demo: {e}");
            2
        }
    }
}

async fn demo(keep_running: bool) -> Result<bool, DemoError> {
    let mut d = Demo::start().await?;
    println!("obmguard demo: a legacy receiver behind obmguard, all on loopback");
    println!("  proxy     https://localhost:{}  {ACCOUNTS} strips session ids, {LEGACY} injects an OAuth token", d.proxy.addr.port());
    println!(
        "  receiver  {}  the sample legacy receiver (answers Ack)",
        d.receiver.url("/")
    );
    println!(
        "  tokens    {}  a Salesforce-like token endpoint",
        d.tokens.url()
    );
    println!("  policy    client certificate CN {SALESFORCE_CN} from the demo CA, organization {ORG_ID}\n");

    let mut rows = vec![(
        "  scenario".to_string(),
        "Salesforce got".to_string(),
        "receiver saw".to_string(),
    )];
    let mut failed = 0;
    for s in SCENARIOS {
        let (ok, got, saw) = d.play(s).await;
        if ok {
            rows.push((format!("✔ {}", s.0), got, saw));
        } else {
            failed += 1;
            let expected = format!("expected {}; got {got}", describe(&s.5));
            rows.push((format!("✘ {}", s.0), expected, saw));
        }
    }
    print_table(&rows);
    d.print_metrics().await;

    if failed == 0 {
        println!("\nAll {} scenarios behaved as expected.", SCENARIOS.len());
    } else {
        println!(
            "\n{failed} of {} scenarios did not behave as expected. The proxy's log:",
            SCENARIOS.len()
        );
        println!("{}", read_or_empty(&d.proxy.log));
    }
    if keep_running {
        d.keep_running().await?;
    }
    Ok(failed == 0)
}

impl Demo {
    async fn start() -> Result<Demo, DemoError> {
        let dir = tempfile::tempdir().map_err(io_err("create a temporary directory"))?;
        let pki = Pki::generate(&dir.path().join("pki"))?;
        let receiver = Receiver::start(Behaviour::Ack)
            .await
            .map_err(io_err("start the sample receiver"))?;
        let secret: String = (0..32)
            .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
            .collect();
        let tokens = TokenServer::start(TokenServerConfig {
            instance_url: INSTANCE_URL.to_string(),
            ..TokenServerConfig::client_credentials("demo-client", &secret)
        })
        .await
        .map_err(io_err("start the token endpoint"))?;
        // The temporary directory is private to this user (mode 0700).
        let secret_file = dir.path().join("client-secret");
        write(&secret_file, &secret)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = write_config(
            dir.path(),
            (addr, admin),
            &pki,
            &receiver,
            &tokens,
            &secret_file,
        )?;
        let proxy = spawn_proxy(dir.path(), &config, addr, admin)?;
        let mut d = Demo {
            proxy,
            receiver,
            tokens,
            pki,
            dir,
        };
        d.wait_ready().await?;
        Ok(d)
    }

    async fn wait_ready(&mut self) -> Result<(), DemoError> {
        let start = Instant::now();
        loop {
            let why = match self.proxy.child.try_wait() {
                Ok(Some(status)) => Some(format!("it exited with {status}")),
                _ if start.elapsed() > READY_TIMEOUT => {
                    Some(format!("not ready after {} s", READY_TIMEOUT.as_secs()))
                }
                _ => None,
            };
            if let Some(why) = why {
                let log = read_or_empty(&self.proxy.log);
                return Err(DemoError::NotReady { why, log });
            }
            if let Ok((200, _)) =
                obmguard_testkit::client::admin_get(self.proxy.admin, "/readyz").await
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Send one scenario's notification; (as expected, what Salesforce got, what the receiver saw).
    async fn play(&self, s: &Scenario) -> (bool, String, String) {
        let (_, route, client, org, session_id, expect) = s;
        let identity: Option<&Identity> = match client {
            Salesforce => Some(&self.pki.salesforce),
            OtherSubject => Some(&self.pki.other),
            RogueCa => Some(&self.pki.rogue),
            NoCertificate => None,
        };
        let mut cfg = TlsClientConfig::new(&self.pki.server_ca);
        cfg.timeout = Duration::from_secs(10);
        if let Some(id) = identity {
            cfg = cfg.with_identity(id);
        }
        let body = sample(org, *session_id).body();
        let before = self.receiver.count();
        let answer = post_once(self.proxy.addr, &cfg, route, &body).await;
        let new: Vec<Received> = self.receiver.requests().into_iter().skip(before).collect();
        let token = self.tokens.last_issued_token();
        let forwarded_ok = |seen: &Seen| match new.as_slice() {
            [m] => {
                !m.body_str().contains(SESSION_ID)
                    && match seen {
                        Nil => m.is_session_id_nil(),
                        Token => {
                            token.is_some() && m.session_id_value() == token && urls_rewritten(m)
                        }
                    }
            }
            _ => false,
        };
        let ok = match (expect, &answer) {
            (Ack(seen), Ok(r)) => r.status == 200 && r.ack() == Some(true) && forwarded_ok(seen),
            (Refused(status, why), Ok(r)) => {
                r.status == *status
                    && r.fault_string().is_some_and(|f| f.contains(why))
                    && new.is_empty()
            }
            (Handshake, Err(_)) => new.is_empty(),
            _ => false,
        };
        let got = match &answer {
            Ok(r) => describe_answer(r),
            Err(e) => {
                let e = e.to_string();
                let why = e.trim_start_matches("received fatal alert: ");
                format!("TLS handshake refused ({why})")
            }
        };
        let saw = match new.last() {
            None => "nothing (not forwarded)".to_string(),
            Some(m) => describe_seen(m, *session_id, token.as_deref(), new.len()),
        };
        (ok, got, saw)
    }

    async fn print_metrics(&self) {
        let families = [
            (metrics::REQUESTS_TOTAL, "requests"),
            (metrics::REJECTIONS_TOTAL, "rejections"),
            (metrics::SESSION_IDS_TOTAL, "session ids"),
            (
                metrics::CLIENT_CERT_REJECTIONS_TOTAL,
                "client certs refused",
            ),
            (
                metrics::TLS_HANDSHAKE_FAILURES_TOTAL,
                "TLS handshakes failed",
            ),
        ];
        println!("\nKey metrics (http://{}/metrics):", self.proxy.admin);
        let text = match obmguard_testkit::client::admin_get(self.proxy.admin, "/metrics").await {
            Ok((200, text)) => text,
            other => {
                println!("  unavailable: {other:?}");
                return;
            }
        };
        let mut rows = Vec::new();
        // Grouped in the order of `families`, whatever order the exposition uses.
        for (family, label) in families {
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let Some((series, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let (name, labels) = series.split_once('{').unwrap_or((series, ""));
                if name == family && value.parse::<f64>().is_ok_and(|v| v != 0.0) {
                    let labels = labels
                        .trim_end_matches('}')
                        .replace('"', "")
                        .replace(',', " ");
                    rows.push((format!("  {label}"), labels, value.to_string()));
                }
            }
        }
        print_table(&rows);
        let records = read_or_empty(&self.proxy.audit).lines().count();
        println!("  audit log: {records} records, one per message that reached a route");
    }

    async fn keep_running(&mut self) -> Result<(), DemoError> {
        let dir = self.dir.path();
        let with = dir.join("notification-with-session-id.xml");
        let without = dir.join("notification-without-session-id.xml");
        std::fs::write(&with, sample(ORG_ID, true).body())
            .map_err(io_err("write a sample body"))?;
        std::fs::write(&without, sample(ORG_ID, false).body())
            .map_err(io_err("write a sample body"))?;
        let ca = self.pki.server_ca.display();
        let (cert, key) = (
            self.pki.salesforce.cert.display(),
            self.pki.salesforce.key.display(),
        );
        let base = format!("https://localhost:{}", self.proxy.addr.port());
        let post = |client: String, file: &Path, route: &str| {
            format!("  curl --cacert {ca}{client} -H 'Content-Type: text/xml' --data-binary @{} {base}{route}", file.display())
        };
        let sf = format!(" --cert {cert} --key {key}");
        println!(
            "\nEverything stays up; files are in {}. Try:",
            dir.display()
        );
        println!("{}", post(sf.clone(), &with, ACCOUNTS));
        println!("{}", post(sf, &with, LEGACY));
        println!(
            "  # refused: no client certificate\n{}",
            post(String::new(), &without, ACCOUNTS)
        );
        println!("  curl http://{}/metrics", self.proxy.admin);
        println!("The receiver logs each message it gets. Ctrl-C stops everything and deletes the files.");
        self.receiver.set_logging(true);
        tokio::select! {
            _ = crate::stop_signal() => {}
            status = proxy_exit(&mut self.proxy.child) => {
                println!("The proxy exited ({status}); its log:\n{}", read_or_empty(&self.proxy.log));
            }
        }
        Ok(())
    }
}

fn write_config(
    dir: &Path,
    (addr, admin): (SocketAddr, SocketAddr),
    pki: &Pki,
    receiver: &Receiver,
    tokens: &TokenServer,
    secret: &Path,
) -> Result<PathBuf, DemoError> {
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let config = dir.join("obmguard.toml");
    write(
        &config,
        &format!(
            "[server]\nlisten = [\"{addr}\"]\ntls_cert = {}\ntls_key = {}\n\
         admin_listen = \"{admin}\"\npolicies = \"policies\"\naudit_log = {}\nthreads = 2\n\n\
         [client_cert]\nca_bundle = {}\n\n[source]\nallow = [\"127.0.0.1/32\"]\n",
            q(&pki.server.cert),
            q(&pki.server.key),
            q(&dir.join("audit.jsonl")),
            q(&pki.client_ca),
        ),
    )?;
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).map_err(io_err("create the policies directory"))?;
    let route = |name: &str, path: &str, mode: &str| {
        format!(
            "name = \"{name}\"\npath = \"{path}\"\nupstream = \"{}\"\nupstream_timeout_ms = 5000\n\n\
             [identity]\nsubject_cn = [\"{SALESFORCE_CN}\"]\n\n\
             [message]\norganization_ids = [\"{ORG_ID}\"]\nsession_id = \"{mode}\"\n",
            receiver.url(&format!("/soap/{name}")),
        )
    };
    write(
        &policies.join("accounts.toml"),
        &route("accounts", ACCOUNTS, "strip"),
    )?;
    let oauth = format!(
        "\n[oauth]\nflow = \"client_credentials\"\ntoken_url = \"{}\"\n\
         client_id = {{ value = \"demo-client\" }}\nclient_secret = {{ file = {} }}\nrewrite_urls = true\n",
        tokens.url(),
        q(secret),
    );
    write(
        &policies.join("legacy.toml"),
        &(route("legacy", LEGACY, "inject") + &oauth),
    )?;
    Ok(config)
}

fn spawn_proxy(
    dir: &Path,
    config: &Path,
    addr: SocketAddr,
    admin: SocketAddr,
) -> Result<Proxy, DemoError> {
    // This executable: its hidden `run-proxy` is `obmguard serve` (see crate::cli).
    let exe = std::env::current_exe().map_err(io_err("find the obmguard-demo executable"))?;
    let log = dir.join("proxy.log");
    let stderr = std::fs::File::create(&log).map_err(io_err("create the proxy's log file"))?;
    let child = Command::new(exe)
        .arg(crate::cli::RUN_PROXY)
        .arg("--config")
        .arg(config)
        .arg("--upgrade-sock")
        .arg(dir.join("upgrade.sock"))
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(io_err("start the proxy"))?;
    Ok(Proxy {
        child,
        addr,
        admin,
        log,
        audit: dir.join("audit.jsonl"),
    })
}

fn sample(org: &str, session_id: bool) -> Sample {
    Sample {
        org_id: org.to_string(),
        session_id: session_id.then(|| SESSION_ID.to_string()),
        ..Sample::default()
    }
}

/// Both endpoint URLs now point at the token's instance_url.
fn urls_rewritten(m: &Received) -> bool {
    let body = m.body_str();
    ["EnterpriseUrl", "PartnerUrl"].iter().all(|name| {
        find_element(&body, name)
            .and_then(|e| e.text)
            .is_some_and(|url| url.starts_with(&format!("{INSTANCE_URL}/services/Soap/")))
    })
}

fn describe(expect: &Expect) -> String {
    match expect {
        Ack(Nil) => "200 Ack, receiver sees SessionId nil".into(),
        Ack(Token) => "200 Ack, receiver sees the OAuth token".into(),
        Refused(status, why) => format!("{status} fault \"…{why}…\", nothing forwarded"),
        Handshake => "TLS handshake refused, nothing forwarded".into(),
    }
}

fn describe_answer(r: &Response) -> String {
    match (r.ack(), r.fault_string()) {
        (Some(true), _) => format!("{} Ack", r.status),
        (Some(false), _) => format!("{} Ack false", r.status),
        (None, Some(fault)) => {
            let fault = fault.trim_start_matches("obmguard: ");
            format!("{} fault \"{fault}\"", r.status)
        }
        (None, None) => format!("HTTP {} without an Ack", r.status),
    }
}

fn describe_seen(m: &Received, sent_session_id: bool, token: Option<&str>, count: usize) -> String {
    let many = if count > 1 {
        format!("{count} messages, the last: ")
    } else {
        String::new()
    };
    let what = match m.session_id_value() {
        Some(v) if Some(v.as_str()) == token => {
            let url = find_element(&m.body_str(), "EnterpriseUrl")
                .and_then(|e| e.text)
                .and_then(|u| u.split("/services/").next().map(str::to_string))
                .unwrap_or_else(|| "none".into());
            format!("SessionId = OAuth token {}, URLs on {url}", redact(&v))
        }
        Some(v) => format!("SessionId = {}", redact(&v)),
        None if sent_session_id && m.is_session_id_nil() => {
            format!("SessionId nil (stripped from {})", redact(SESSION_ID))
        }
        None => format!("SessionId {}", m.session_id_summary()),
    };
    format!("{many}{what}")
}

/// First 6 characters, an ellipsis and the length: enough to recognise, not to use.
fn redact(value: &str) -> String {
    let head: String = value.chars().take(6).collect();
    format!("{head}…({} chars)", value.chars().count())
}

/// Print rows as three left-aligned columns.
fn print_table(rows: &[(String, String, String)]) {
    let w1 = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let w2 = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    for (a, b, c) in rows {
        println!("{a:<w1$}  {b:<w2$}  {c}");
    }
}

fn free_port() -> Result<u16, DemoError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("find a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(io_err("find a free port"))?
        .port())
}

fn write(path: &Path, text: &str) -> Result<(), DemoError> {
    std::fs::write(path, text).map_err(io_err(format!("write {}", path.display())))
}

fn read_or_empty(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Resolves when the child exits, with its status.
async fn proxy_exit(child: &mut Child) -> String {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Err(e) => return e.to_string(),
            Ok(None) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn redact_keeps_six_characters_and_the_length() {
        let shown = redact(SESSION_ID);
        assert_eq!(shown, format!("00D5e0…({} chars)", SESSION_ID.len()));
        assert!(!shown.contains("FakeSession"));
    }

    #[test]
    fn other_org_is_a_valid_id_outside_the_policy() {
        let other = obmguard::sfid::SfId::parse(OTHER_ORG).unwrap();
        assert_ne!(other, obmguard::sfid::SfId::parse(ORG_ID).unwrap());
    }

    #[tokio::test]
    async fn the_receiver_sees_the_token_and_rewritten_urls() {
        let receiver = Receiver::start(Behaviour::Ack).await.unwrap();
        let body = Sample {
            session_id: Some("00D5e000000AbCd!tok".into()),
            instance: "demo.my.salesforce.com".into(),
            ..Sample::default()
        }
        .body();
        let mut tcp = tokio::net::TcpStream::connect(receiver.addr())
            .await
            .unwrap();
        let head = format!(
            "POST / HTTP/1.1\r\nHost: r\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&body).await.unwrap();
        tcp.read_to_end(&mut Vec::new()).await.unwrap();
        let m = receiver.last().unwrap();
        assert!(urls_rewritten(&m));
        let seen = describe_seen(&m, true, Some("00D5e000000AbCd!tok"), 1);
        assert_eq!(
            seen,
            "SessionId = OAuth token 00D5e0…(19 chars), URLs on https://demo.my.salesforce.com"
        );
    }
}
