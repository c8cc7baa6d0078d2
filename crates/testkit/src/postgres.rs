//! A throw-away PostgreSQL for tests: a cluster of its own, made with the server's binaries in
//! a temporary directory, listening on a free loopback port and its own unix socket directory,
//! with `fsync` on (tests measure durability), and password (SCRAM) authentication over TCP so
//! that URLs carry a password like real ones.
//!
//! ```text
//! TestPostgres::start()   own cluster: stop(), restart(), freeze() for outage tests
//! TestPostgres::shared()  one cluster per test binary; fresh_database() isolates each test
//! OBMGUARD_TEST_POSTGRES_URL=postgres://...   use that server instead (no restart, no freeze)
//! ```
//!
//! The binaries are found under `/usr/lib/postgresql/*/bin` (newest first), then in
//! `pg_config --bindir`, then on `PATH`. They refuse to run as root: as root, the cluster runs
//! as the `postgres` user (or `nobody`), which owns its directory. Without binaries and without
//! the variable, `start` and `shared` print a `skipped:` line and return `None`, except under
//! CI (`CI` set), where they panic: CI must not pass by skipping.
//!
//! The server is watched by a small shell loop that stops it when the test process is gone, so
//! a killed test binary leaves no server behind.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::sync::OnceCell;

/// The variable naming an existing server to test against (a superuser's URL).
pub const URL_VAR: &str = "OBMGUARD_TEST_POSTGRES_URL";

/// The superuser's password of a cluster started here.
const PASSWORD: &str = "obmguard-test-Pw-6f1d";

/// How long a start or restart may take.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A PostgreSQL server for tests.
pub struct TestPostgres {
    kind: Kind,
    /// The superuser's URL, to the `postgres` database.
    admin_url: String,
}

enum Kind {
    Local(Local),
    External,
}

struct Local {
    dir: TempDir,
    bin: PathBuf,
    port: u16,
    user: Option<(u32, u32)>,
    /// More server settings (`-c name=value`, ...).
    args: Vec<String>,
    child: Option<Child>,
}

static SHARED: OnceCell<Option<TestPostgres>> = OnceCell::const_new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

impl TestPostgres {
    /// A server of its own (a new cluster), or the one `OBMGUARD_TEST_POSTGRES_URL` names.
    /// `None` (after printing why) when there is neither, outside CI.
    pub async fn start() -> Option<TestPostgres> {
        if let Ok(url) = std::env::var(URL_VAR) {
            return Some(TestPostgres {
                kind: Kind::External,
                admin_url: url,
            });
        }
        let Some(bin) = find_binaries() else {
            skip_or_fail(
                "no initdb and postgres under /usr/lib/postgresql, pg_config --bindir or PATH",
            );
            return None;
        };
        Some(TestPostgres::start_local(bin, None).await)
    }

    /// A cluster of its own that also accepts TLS with this certificate chain and key (PEM
    /// files), always from the binaries (the variable is not used: its server's TLS is not
    /// ours to set).
    pub async fn start_tls(cert: &Path, key: &Path) -> Option<TestPostgres> {
        let Some(bin) = find_binaries() else {
            skip_or_fail(
                "no initdb and postgres under /usr/lib/postgresql, pg_config --bindir or PATH",
            );
            return None;
        };
        Some(TestPostgres::start_local(bin, Some((cert, key))).await)
    }

    /// One server shared by every test of this test binary (started on first use). Give each
    /// test its own database with [`TestPostgres::fresh_database`]; never stop this one.
    pub async fn shared() -> Option<&'static TestPostgres> {
        SHARED
            .get_or_init(|| async { TestPostgres::start().await })
            .await
            .as_ref()
    }

    /// The superuser's URL to the `postgres` database (with the password).
    pub fn url(&self) -> &str {
        &self.admin_url
    }

    /// The URL of `database` on this server, as the superuser.
    pub fn url_for(&self, database: &str) -> String {
        let mut url = url::Url::parse(&self.admin_url).expect("the admin URL parses");
        url.set_path(&format!("/{database}"));
        url.to_string()
    }

    /// A new empty database (a unique name) and its URL.
    pub async fn fresh_database(&self) -> String {
        let name = format!(
            "obmguard_test_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let (client, connection) = tokio_postgres::connect(&self.admin_url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}"));
        let task = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        drop(client);
        let _ = task.await;
        self.url_for(&name)
    }

    /// Whether [`stop`](Self::stop), [`restart`](Self::restart) and
    /// [`freeze`](Self::freeze) work (not on a server named by the variable).
    pub fn can_restart(&self) -> bool {
        matches!(self.kind, Kind::Local(_))
    }

    /// Stop the server (fast shutdown: clients are disconnected). Waits until it is gone.
    pub async fn stop(&mut self) {
        let Kind::Local(local) = &mut self.kind else {
            panic!("cannot stop a server named by {URL_VAR}");
        };
        local.stop().await;
    }

    /// Start the server again on the same port and data, and wait until it accepts
    /// connections.
    pub async fn restart(&mut self) {
        let admin_url = self.admin_url.clone();
        let Kind::Local(local) = &mut self.kind else {
            panic!("cannot restart a server named by {URL_VAR}");
        };
        local.stop().await;
        local.spawn();
        local.wait_ready(&admin_url).await;
    }

    /// Kill the server and every backend process with `SIGKILL`, as a crash of the machine's
    /// database would: no shutdown checkpoint. [`restart`](Self::restart) then recovers it
    /// from its WAL. Waits until the processes are gone.
    pub async fn crash(&mut self) {
        self.signal_all("-KILL");
        let Kind::Local(local) = &mut self.kind else {
            unreachable!("signal_all refuses a server named by the variable");
        };
        if let Some(mut child) = local.child.take() {
            let started = Instant::now();
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if started.elapsed() > Duration::from_secs(20) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Stop (`SIGSTOP`) the server and every backend process: it keeps its connections open
    /// and answers nothing, like a hung machine. [`thaw`](Self::thaw) resumes it.
    pub fn freeze(&self) {
        self.signal_all("-STOP");
    }

    /// Resume a frozen server.
    pub fn thaw(&self) {
        self.signal_all("-CONT");
    }

    fn signal_all(&self, sig: &str) {
        let Kind::Local(local) = &self.kind else {
            panic!("cannot freeze a server named by {URL_VAR}");
        };
        let Some(postmaster) = local.postmaster_pid() else {
            panic!("the test PostgreSQL is not running");
        };
        let mut pids = vec![postmaster];
        pids.extend(children_of(postmaster));
        for pid in pids {
            signal(sig, pid.to_string());
        }
    }

    async fn start_local(bin: PathBuf, tls: Option<(&Path, &Path)>) -> TestPostgres {
        let user = if is_root() {
            Some(
                unprivileged_user()
                    .expect("running as root, and neither `postgres` nor `nobody` exists"),
            )
        } else {
            None
        };
        let dir = TempDir::new().expect("a temporary directory");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("give the cluster's directory to its user");
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).expect("write the password file");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown pw");
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null());
        as_user(&mut initdb, user);
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&pwfile);
        let mut args = Vec::new();
        if let Some((cert, key)) = tls {
            // The server reads them as its own user, and wants the key private.
            for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
                let to = data.join(name);
                std::fs::copy(from, &to).expect("copy the server's TLS files");
                std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                    .expect("chmod");
                if let Some((uid, gid)) = user {
                    std::os::unix::fs::chown(&to, Some(uid), Some(gid)).expect("chown");
                }
            }
            args.extend(["-c", "ssl=on", "-c", "ssl_cert_file=server.crt"].map(String::from));
            args.extend(["-c", "ssl_key_file=server.key"].map(String::from));
        }
        let mut local = Local {
            dir,
            bin,
            port: crate::ports::free_port(),
            user,
            args,
            child: None,
        };
        for _ in 0..5 {
            let admin_url = format!(
                "postgres://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
                local.port
            );
            local.spawn();
            if local.wait_ready_or_exit(&admin_url).await {
                return TestPostgres {
                    kind: Kind::Local(local),
                    admin_url,
                };
            }
            // The port was taken meanwhile: try another.
            local.stop().await;
            local.port = crate::ports::free_port();
        }
        panic!("the test PostgreSQL never started:\n{}", local.log());
    }
}

impl Local {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Start the server under a watchdog shell that stops it when this process is gone.
    fn spawn(&mut self) {
        let socket = self.dir.path().join("socket");
        let _ = std::fs::create_dir(&socket);
        if let Some((uid, gid)) = self.user {
            let _ = std::os::unix::fs::chown(&socket, Some(uid), Some(gid));
        }
        let script = r#"
            "$PG_BIN/postgres" -D "$PG_DATA" -p "$PG_PORT" -k "$PG_SOCKET" \
                -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on \
                -c max_connections=200 -c shared_buffers=16MB -c logging_collector=off \
                "$@" >>"$PG_LOG" 2>&1 &
            pg=$!
            trap 'kill -INT $pg 2>/dev/null; wait $pg; exit 0' TERM INT
            while [ -d "/proc/$PG_WATCH" ] && kill -0 $pg 2>/dev/null; do sleep 0.2; done
            kill -INT $pg 2>/dev/null
            wait $pg
            # The test process is gone (a static cluster, or a killed test): clean up after it.
            [ -d "/proc/$PG_WATCH" ] || rm -rf "$PG_DIR"
        "#;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg("sh")
            .args(&self.args)
            .env("PG_BIN", &self.bin)
            .env("PG_DATA", self.data())
            .env("PG_PORT", self.port.to_string())
            .env("PG_SOCKET", &socket)
            .env("PG_LOG", self.dir.path().join("log"))
            .env("PG_WATCH", std::process::id().to_string())
            .env("PG_DIR", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut cmd, self.user);
        self.child = Some(cmd.spawn().expect("start postgres"));
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Fast shutdown, and wait for the watchdog to end.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = self.postmaster_pid() {
            signal("-CONT", pid.to_string());
            for p in children_of(pid) {
                signal("-CONT", p.to_string());
            }
            signal("-INT", pid.to_string());
        }
        signal("-TERM", child.id().to_string());
        let started = Instant::now();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The postmaster removes its pid file last: then the port and data are free.
        let started = Instant::now();
        while self.data().join("postmaster.pid").exists()
            && started.elapsed() < Duration::from_secs(20)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&mut self, url: &str) {
        assert!(
            self.wait_ready_or_exit(url).await,
            "the test PostgreSQL did not come back:\n{}",
            self.log()
        );
    }

    /// Connect until it works (true), the server exited, or the time is up (false).
    async fn wait_ready_or_exit(&mut self, url: &str) -> bool {
        let started = Instant::now();
        while started.elapsed() < READY_WITHIN {
            if let Ok((client, connection)) =
                tokio_postgres::connect(url, tokio_postgres::NoTls).await
            {
                let task = tokio::spawn(connection);
                let ok = client.simple_query("SELECT 1").await.is_ok();
                drop(client);
                let _ = task.await;
                if ok {
                    return true;
                }
            }
            if let Some(child) = &mut self.child {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = self.postmaster_pid() {
            for p in std::iter::once(pid).chain(children_of(pid)) {
                signal("-CONT", p.to_string());
            }
            // Immediate shutdown: the directory is deleted next, nothing to keep.
            signal("-QUIT", pid.to_string());
        }
        signal("-TERM", child.id().to_string());
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn skip_or_fail(why: &str) {
    let line = format!("skipped: no PostgreSQL ({why}): install postgresql or set {URL_VAR}");
    assert!(std::env::var_os("CI").is_none(), "under CI: {line}");
    say(&line);
}

/// The directory holding both `initdb` and `postgres`.
fn find_binaries() -> Option<PathBuf> {
    let usable = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| usable(d))
        .collect();
    versions.sort();
    if let Some((_, d)) = versions.pop() {
        return Some(d);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&d) {
            return Some(d);
        }
    }
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).find(|d| usable(d)))
}

fn is_root() -> bool {
    // The owner of /proc/self is this process's effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// (uid, gid) of `postgres`, else `nobody`, from /etc/passwd.
fn unprivileged_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let find = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
    };
    find("postgres").or_else(|| find("nobody"))
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", "/tmp");
    }
}

/// Direct children of `pid` (a postmaster's backends), from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Send `sig` (as `kill` spells it) to `pid`; a process already gone is fine.
fn signal(sig: &str, pid: impl ToString) {
    let _ = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A line on the real stderr: the test harness captures `eprintln!` of passing tests, and a
/// skip must be seen.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}
