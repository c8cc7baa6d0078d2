//! Line sinks: the audit trail and the log leave the request path as bytes in a bounded
//! buffer, and one writer thread per sink writes whatever has gathered in one `write`.
//!
//! A request appends its line under a short lock and goes on; it never waits for the disk
//! and makes no system call for it, unless the writer sleeps with nothing to do and must be
//! woken. After each write the writer waits its gathering time (2 ms for the audit trail,
//! [`AUDIT_GATHER`]; 10 ms for the log, [`LOG_GATHER`]) before the next, so lines arriving
//! meanwhile cost neither a wake-up nor a `write` of their own: ten thousand audit records a
//! second cost about five hundred `write`s, and so do two thousand (one wake-up per line at
//! that rate was a tenth of a request's CPU). A line after a quiet spell is written as soon as
//! the writer runs, a moment after its answer; one during traffic, at most the gathering time
//! later.
//!
//! What can be lost, and how it shows:
//! - a line that does not fit (more than [`Sink::capacity`] bytes are waiting: the disk is
//!   stalled or full) is dropped and counted ([`Sink::dropped`]; `obmguard_audit_records_dropped_total`
//!   and `obmguard_log_lines_dropped_total`);
//! - a failed `write` loses the lines it carried: counted ([`Sink::failed`]) and reported on
//!   stderr, at most once per [`REPORT_EVERY`] (obmguard does not retry a write whose
//!   outcome it cannot know: a retry could write a line twice);
//! - a crash (SIGKILL, an abort, power loss) loses the lines appended but not yet written:
//!   at most its gathering time of traffic plus a write in progress. A clean stop (SIGTERM, SIGQUIT
//!   after the drain, the end of a command) writes everything first ([`Sink::flush`]).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// After a write, how long the audit trail's writer lets records gather before it writes
/// again: at most this much traffic is lost to a crash (README, audit section).
pub const AUDIT_GATHER: Duration = Duration::from_millis(2);
/// The same for the log: its lines explain, they do not record, so they may wait longer and
/// wake their writer less often.
pub const LOG_GATHER: Duration = Duration::from_millis(10);
/// How often a failing sink reports on stderr.
const REPORT_EVERY: Duration = Duration::from_secs(60);
/// Bytes that may wait for the writer before lines are dropped (about 30,000 audit lines).
pub const DEFAULT_CAPACITY: usize = 16 * 1024 * 1024;

/// A buffered line sink with its own writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Sink {
    inner: Arc<Inner>,
}

struct Inner {
    name: &'static str,
    capacity: usize,
    gather: Duration,
    state: Mutex<State>,
    wake: Condvar,
    /// Held while bytes are written, so [`Sink::flush`] returns only after every line
    /// appended before it is in the file, whoever wrote it.
    out: Mutex<Box<dyn Write + Send>>,
    dropped: AtomicU64,
    failed: AtomicU64,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// The writer sleeps until told: an append must wake it.
    idle: bool,
    closed: bool,
}

impl Sink {
    /// A sink writing to `out` from a thread named `obmguard-<name>`, which waits `gather`
    /// after each write.
    pub fn new(
        name: &'static str,
        out: Box<dyn Write + Send>,
        capacity: usize,
        gather: Duration,
    ) -> Sink {
        let inner = Arc::new(Inner {
            name,
            capacity,
            gather,
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            out: Mutex::new(out),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        });
        let writer = inner.clone();
        // Without its thread the sink still works: `flush` writes from the caller.
        let _ = std::thread::Builder::new()
            .name(format!("obmguard-{name}"))
            .spawn(move || writer.run());
        Sink { inner }
    }

    /// Queue `line` (a whole line, newline included) for writing. `false`: it was dropped
    /// (the sink is full or closed) and counted.
    pub fn push(&self, line: &[u8]) -> bool {
        let wake = {
            let mut st = self.inner.state();
            if st.closed || st.pending.len() + line.len() > self.inner.capacity {
                drop(st);
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            st.pending.extend_from_slice(line);
            std::mem::replace(&mut st.idle, false)
        };
        if wake {
            self.inner.wake.notify_one();
        }
        true
    }

    /// Write every line queued so far before returning (at a clean stop).
    pub fn flush(&self) {
        let mut out = self.inner.out();
        let lines = std::mem::take(&mut self.inner.state().pending);
        let _ = self.inner.write_to(&mut out, &lines);
    }

    /// Flush, then refuse further lines and let the writer thread end.
    pub fn close(&self) {
        self.inner.state().closed = true;
        self.inner.wake.notify_one();
        self.flush();
    }

    /// Lines dropped because the sink was full or closed.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Lines lost in writes that failed.
    pub fn failed(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }

    /// The most bytes that may wait for the writer.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self) {
        let mut batch = Vec::new();
        let mut last_report: Option<Instant> = None;
        loop {
            {
                let mut st = self.state();
                while st.pending.is_empty() && !st.closed {
                    st.idle = true;
                    st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                if st.pending.is_empty() {
                    return;
                }
            }
            // The output first, then the lines (the order `flush` takes them in too): a batch
            // taken is written before anyone can take a later one.
            let mut out = self.out();
            {
                let mut st = self.state();
                st.idle = false;
                // Swap, so the next lines go into the buffer this batch came from last time.
                std::mem::swap(&mut batch, &mut st.pending);
            }
            if let Err(e) = self.write_to(&mut out, &batch) {
                if last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
                    last_report = Some(Instant::now());
                    // Not through tracing: the log may be this very sink.
                    eprintln!(
                        "obmguard: cannot write the {}: {e}; lines are being lost (counted in the metrics); check free space and permissions",
                        self.name
                    );
                }
            }
            drop(out);
            batch.clear();
            // Not idle while it sleeps: lines appended meanwhile wait for it, unannounced.
            std::thread::sleep(self.gather);
        }
    }

    fn out(&self) -> MutexGuard<'_, Box<dyn Write + Send>> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write_to(&self, out: &mut Box<dyn Write + Send>, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return out.flush();
        }
        let r = out.write_all(bytes).and_then(|()| out.flush());
        if r.is_err() {
            let lines = bytes.iter().filter(|&&b| b == b'\n').count();
            self.failed.fetch_add(lines as u64, Ordering::Relaxed);
        }
        r
    }
}

/// The log's sink, once [`set_log`] has installed it.
static LOG: std::sync::OnceLock<Sink> = std::sync::OnceLock::new();

/// Install the process's log sink (the first call wins) and return it.
pub fn set_log(sink: Sink) -> &'static Sink {
    LOG.get_or_init(|| sink)
}

/// The process's log sink, if one is installed.
pub fn log() -> Option<&'static Sink> {
    LOG.get()
}

/// The sink as a `std::io::Write` (for `tracing_subscriber`): each `write` call is one event,
/// queued whole.
impl Write for &Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Sink {
    type Writer = &'a Sink;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file the test can read back, shared with the sink.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>, Arc<AtomicU64>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A sink writing to `out`, as the audit trail's is set up.
    fn sink_to(out: &Shared) -> Sink {
        Sink::new(
            "test",
            Box::new(out.clone()),
            DEFAULT_CAPACITY,
            AUDIT_GATHER,
        )
    }

    fn wait_for(what: impl Fn() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !what() {
            assert!(Instant::now() < until, "timed out");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn lines_arrive_whole_in_order_and_in_few_writes() {
        let out = Shared::default();
        let sink = sink_to(&out);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        assert!(sink.push(format!("t{t} line {i}\n").as_bytes()));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        sink.flush();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000);
        for t in 0..4 {
            let own: Vec<usize> = lines
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("t{t} line ")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(own, (0..5_000).collect::<Vec<_>>(), "thread {t}'s lines");
        }
        let writes = out.1.load(Ordering::Relaxed);
        assert!(writes < 20_000 / 4, "{writes} writes for 20,000 lines");
        assert_eq!(sink.dropped(), 0);
    }

    #[test]
    fn a_single_line_is_written_without_a_flush() {
        let out = Shared::default();
        let sink = sink_to(&out);
        sink.push(b"one\n");
        wait_for(|| out.0.lock().unwrap().as_slice() == b"one\n");
    }

    #[test]
    fn a_trickle_of_lines_shares_writes() {
        // One line every 100 µs, as at 10,000 requests a second from a single client: the
        // writer must not write (nor be woken) once per line.
        let out = Shared::default();
        let sink = sink_to(&out);
        for i in 0..40 {
            sink.push(format!("line {i}\n").as_bytes());
            std::thread::sleep(Duration::from_micros(100));
        }
        wait_for(|| out.0.lock().unwrap().ends_with(b"line 39\n"));
        let writes = out.1.load(Ordering::Relaxed);
        assert!(writes <= 20, "{writes} writes for 40 lines");
    }

    /// A writer that blocks until released, like a stalled disk.
    struct Stalled(Arc<(Mutex<bool>, Condvar)>, Shared);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut go = lock.lock().unwrap();
            while !*go {
                go = cv.wait(go).unwrap();
            }
            self.1.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_disk_drops_and_counts_never_blocks() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let out = Shared::default();
        let sink = Sink::new(
            "test",
            Box::new(Stalled(gate.clone(), out.clone())),
            64,
            AUDIT_GATHER,
        );
        assert!(sink.push(b"first line, taken by the writer\n"));
        // The writer holds the first line and waits on the disk; the buffer fills.
        wait_for(|| sink.inner.state().pending.is_empty());
        let kept = (0..10)
            .filter(|i| sink.push(format!("line {i:02}\n").as_bytes()))
            .count();
        assert_eq!(kept, 8, "64 bytes hold 8 lines of 8");
        assert_eq!(sink.dropped(), 2);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        sink.close();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 9, "{text}");
        assert!(!sink.push(b"after close\n"));
        assert_eq!(sink.dropped(), 3);
    }

    struct Failing;

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk full"))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failed_writes_are_counted() {
        let sink = Sink::new("test", Box::new(Failing), DEFAULT_CAPACITY, AUDIT_GATHER);
        sink.push(b"lost\n");
        wait_for(|| sink.failed() == 1);
        sink.push(b"two\nlines\n");
        sink.flush();
        assert_eq!(sink.failed(), 3, "lines, not writes");
    }
}
