//! A real SOAP stack as the receiver: Apache Axis 1.4 (Debian's libaxis-java) serving a skeleton
//! that WSDL2Java generated from the Outbound Message WSDL (tests/axis/). It records what Axis
//! deserialised, one JSON line per call, and answers its own Ack.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Build the receiver once per test run (tests/axis/build.sh, about 3 s). `None` where the
/// machine lacks a JDK or libaxis-java, outside CI only (under `CI=true` that fails the test).
fn built() -> Option<&'static PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = root.join("target").join("axis");
            let status = Command::new("sh")
                .arg(root.join("tests/axis/build.sh"))
                .arg(&out)
                .status()
                .expect("sh");
            if status.success() {
                return Some(out);
            }
            assert!(
                std::env::var_os("CI").is_none(),
                "building the Axis receiver failed: install a JDK and libaxis-java (.ci/run does)"
            );
            eprintln!("SKIPPED: no JDK or libaxis-java here (apt-get install -y default-jdk-headless libaxis-java)");
            None
        })
        .as_ref()
}

pub struct Axis {
    child: Child,
    // Axis exits when its stdin closes: held open until drop.
    _stdin: ChildStdin,
    pub port: u16,
    seen: PathBuf,
}

impl Axis {
    /// Start a receiver that writes what it saw into `dir` (`None`: see [`built`]).
    pub fn start(dir: &Path) -> Option<Axis> {
        let out = built()?;
        let seen = dir.join(format!("axis-seen-{}.jsonl", rand_suffix()));
        let mut child = Command::new("sh")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/axis/run.sh"))
            .arg(out)
            .arg("0")
            .env("OBM_AXIS_SEEN", &seen)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("java");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the Axis receiver did not start: {line:?}"));
        Some(Axis {
            child,
            _stdin: stdin,
            port,
            seen,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/axis/services/Notification", self.port)
    }

    /// Every call Axis handled, as it deserialised it.
    pub fn seen(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.seen)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Post a body straight to Axis (no proxy) and return the HTTP status.
    pub async fn post_direct(&self, body: &[u8]) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let head = format!(
            "POST /axis/services/Notification HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: text/xml; charset=UTF-8\r\nSOAPAction: \"\"\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&answer);
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

impl Drop for Axis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
