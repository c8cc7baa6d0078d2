//! Boots the real `obmguard` binary on ephemeral loopback ports with a configuration written
//! into a temporary directory, certificates generated at test time, and the test kit's real
//! receiver. Logs (stderr) are captured so tests can assert what was, and was not, logged.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use obmguard_testkit::client::{post_once, Connection, Response, TlsClientConfig};
use obmguard_testkit::messages::Sample;
use obmguard_testkit::pki::{Identity, Pki};

pub const ORG: &str = obmguard_testkit::messages::ORG_ID;

pub use obmguard_testkit::ports::free_port;

/// A fresh directory with a PKI in it.
pub struct World {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki")).unwrap();
        World { dir, pki }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A client that trusts our server CA and presents `identity`.
    pub fn client(&self, identity: Option<&Identity>) -> TlsClientConfig {
        let c = TlsClientConfig::new(&self.pki.server_ca);
        match identity {
            Some(i) => c.with_identity(i),
            None => c,
        }
    }

    /// The usual client: Salesforce's CA-signed certificate.
    pub fn salesforce(&self) -> TlsClientConfig {
        self.client(Some(&self.pki.salesforce))
    }
}

/// What to write into obmguard.toml besides the defaults.
pub struct Setup {
    /// More `[server]` keys (e.g. `proxy_protocol_from`).
    pub server: String,
    pub client_cert: String,
    pub source: String,
    pub extra: String,
    pub routes: Vec<(String, String)>,
}

impl Setup {
    /// Trust the test client CA; admit 127.0.0.1.
    pub fn new(w: &World) -> Setup {
        Setup {
            server: String::new(),
            client_cert: format!("ca_bundle = {:?}\n", w.pki.client_ca.display().to_string()),
            source: "allow = [\"127.0.0.1/32\"]\n".into(),
            extra: String::new(),
            routes: Vec::new(),
        }
    }

    pub fn route(mut self, file: &str, toml: impl Into<String>) -> Setup {
        self.routes.push((file.into(), toml.into()));
        self
    }
}

/// A minimal route policy body (append tables with `+`).
pub fn route(name: &str, path: &str, upstream: &str, mode: &str) -> String {
    format!(
        "name = {name:?}\npath = {path:?}\nupstream = {upstream:?}\nupstream_timeout_ms = 5000\n\n[message]\norganization_ids = [{ORG:?}]\nsession_id = {mode:?}\n"
    )
}

pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub audit: PathBuf,
    logs: Arc<Mutex<String>>,
}

impl Proxy {
    /// Write the configuration and start `obmguard serve`, waiting until /readyz says ready.
    pub async fn start(w: &World, s: &Setup) -> Proxy {
        Self::try_start(w, s, &[]).await.unwrap()
    }

    pub async fn try_start(w: &World, s: &Setup, env: &[(&str, &str)]) -> Result<Proxy, String> {
        Self::try_start_in(w, s, env, "").await
    }

    /// As [`Proxy::try_start`], with its configuration, policies and audit file in the
    /// World's subdirectory `sub` (`""`: the World's own directory), so that several
    /// instances share one PKI.
    pub async fn try_start_in(
        w: &World,
        s: &Setup,
        env: &[(&str, &str)],
        sub: &str,
    ) -> Result<Proxy, String> {
        let port = free_port();
        let admin_port = free_port();
        let at = |rel: &str| w.path(sub).join(rel);
        let policies = at("policies");
        std::fs::create_dir_all(&policies).unwrap();
        for (f, body) in &s.routes {
            std::fs::write(policies.join(f), body).unwrap();
        }
        let audit = at("audit.jsonl");
        let config = at("obmguard.toml");
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\ntls_cert = {:?}\ntls_key = {:?}\nadmin_listen = \"127.0.0.1:{admin_port}\"\npolicies = \"policies\"\naudit_log = {:?}\nthreads = 2\n{}\n[client_cert]\n{}\n[source]\n{}\n{}",
            w.pki.server.cert.display().to_string(),
            w.pki.server.key.display().to_string(),
            audit.display().to_string(),
            s.server,
            s.client_cert,
            s.source,
            s.extra
        );
        std::fs::write(&config, text).unwrap();
        Self::spawn(&config, port, admin_port, audit, env, &[]).await
    }

    /// Start on a configuration already written (ports and audit file read back from it).
    pub async fn start_config(w: &World, config: &Path) -> Proxy {
        Self::start_config_with(w, config, &[]).await
    }

    /// As [`Proxy::start_config`], with extra `serve` arguments (e.g. `--upgrade`).
    pub async fn start_config_with(_w: &World, config: &Path, args: &[&str]) -> Proxy {
        let text = std::fs::read_to_string(config).unwrap();
        let port_of = |key: &str| -> u16 {
            let line = text.lines().find(|l| l.starts_with(key)).unwrap();
            line.rsplit(':')
                .next()
                .unwrap()
                .trim_end_matches(['"', ']'])
                .parse()
                .unwrap()
        };
        let (port, admin) = (port_of("listen"), port_of("admin_listen"));
        let audit = config.parent().unwrap().join("audit.jsonl");
        Self::spawn(config, port, admin, audit, &[], args)
            .await
            .unwrap()
    }

    async fn spawn(
        config: &Path,
        port: u16,
        admin_port: u16,
        audit: PathBuf,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Proxy, String> {
        let config = config.to_path_buf();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_obmguard"));
        cmd.args(["serve", "--config"])
            .arg(&config)
            .arg("--upgrade-sock")
            .arg(config.parent().unwrap().join("upgrade.sock"))
            .args(args);
        cmd.env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let l = logs.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let mut p = Proxy {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
            config,
            audit,
            logs,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                // Every line it wrote is read once the pipe closes.
                let _ = reader.join();
                return Err(format!("obmguard exited with {status}:\n{}", p.logs()));
            }
            if let Ok((200, _)) = p.get("/readyz").await {
                return Ok(p);
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(format!("obmguard did not become ready:\n{}", p.logs()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The log once it has settled: obmguard writes its log lines from a thread that gathers
    /// them for a few milliseconds, and they reach us through a pipe and a reader thread, so
    /// the lines of an event arrive a moment after it. Unchanged for 100 ms, or after 5 s.
    pub fn logs(&self) -> String {
        let start = Instant::now();
        let mut last = self.logs_now();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.logs_now();
            if now == last || start.elapsed() > Duration::from_secs(5) {
                return now;
            }
            last = now;
        }
    }

    /// The log as read so far.
    pub fn logs_now(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// The logs once they contain `needle` (lines arrive through a pipe and a reader thread,
    /// a moment after the event), or as they are after 5 s.
    pub fn logs_with(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let logs = self.logs_now();
            if logs.contains(needle) || start.elapsed() > Duration::from_secs(5) {
                return logs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        Command::new("sh")
            .args(["-c", &format!("kill -{sig} {}", self.pid())])
            .status()
            .unwrap();
    }

    /// Wait for the process to exit and return its exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Plain-HTTP GET on the admin listener.
    pub async fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.admin, path).await
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.unwrap().1
    }

    /// POST and return only the status (the connection must succeed).
    pub async fn status(&self, client: &TlsClientConfig, path: &str, body: &[u8]) -> u16 {
        self.post(client, path, body).await.unwrap().status
    }

    /// POST a notification body with the given client configuration.
    pub async fn post(
        &self,
        client: &TlsClientConfig,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<Response> {
        post_once(self.addr, client, path, body).await
    }

    pub async fn connect(&self, client: &TlsClientConfig) -> std::io::Result<Connection> {
        Connection::connect(self.addr, client).await
    }

    /// The audit file once obmguard's writer thread has caught up: it writes within
    /// milliseconds of an answer, so the file is taken when it ends with a whole line and has
    /// not changed for 100 ms (or as it is after 5 s).
    pub fn audit_text(&self) -> String {
        let read = || std::fs::read_to_string(&self.audit).unwrap_or_default();
        let start = Instant::now();
        let mut last = read();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = read();
            let whole = now.is_empty() || now.ends_with('\n');
            if (now == last && whole) || start.elapsed() > Duration::from_secs(5) {
                return now;
            }
            last = now;
        }
    }

    /// The audit lines written so far, without waiting (for polls that wait themselves).
    pub fn audit_lines_now(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        self.audit_text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use obmguard_testkit::client::admin_get as http_get;

/// The value of one metric series from the text exposition (`name{labels}` as printed).
/// `obmguard_client_cert_rejections_total` for one kind of refusal.
pub fn cert_rejections(metrics: &str, kind: &str) -> f64 {
    metric(
        metrics,
        &format!("obmguard_client_cert_rejections_total{{kind=\"{kind}\"}}"),
    )
}

pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// A default notification, with or without a session id.
pub fn notification(session: Option<&str>) -> Vec<u8> {
    Sample {
        session_id: session.map(str::to_string),
        ..Sample::default()
    }
    .body()
}

pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}
