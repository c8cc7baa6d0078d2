//! Start and stop: readiness once the listeners are bound, and a graceful drain on SIGTERM.
//!
//! pingora's own graceful shutdown stops the listeners, sleeps a fixed grace period and then
//! drops whatever is still running. On SIGTERM obmguard instead stops taking connections and
//! keep-alive, waits until every in-flight message has its real answer or `timeouts.drain_ms`
//! passes, and only then stops. A message cut off by the drain deadline gets no answer, so
//! Salesforce retries it: never a false Ack. SIGINT stops at once.
//!
//! SIGQUIT is pingora's graceful upgrade: a new `obmguard serve --upgrade` already waits on
//! the upgrade socket; the sockets are handed over at once, both processes accept for pingora's
//! 5 s close timeout, then the old one stops listening, answers what it has in flight (its
//! keep-alive ends with each answer) and exits after the grace period (`timeouts.drain_ms`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};

use crate::runtime::Runtime;

/// Replaces pingora's signal watch so a shutdown waits for in-flight messages.
pub struct DrainOnSignal {
    pub rt: Arc<Runtime>,
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot install signal handlers; SIGTERM will not drain");
            std::future::pending::<()>().await;
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = term.recv() => {
                self.drain().await;
                // Drained already: nothing is left for pingora's grace period to wait for.
                ShutdownSignal::FastShutdown
            }
            _ = quit.recv() => {
                tracing::info!("graceful upgrade: handing the listening sockets to the new process");
                ShutdownSignal::GracefulUpgrade
            }
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

impl DrainOnSignal {
    async fn drain(&self) {
        let deadline = self.rt.current().config.timeouts.drain;
        self.rt.start_draining();
        notify_systemd(&[sd_notify::NotifyState::Stopping]);
        let start = Instant::now();
        tracing::info!(
            in_flight = self.rt.inflight(),
            deadline_ms = deadline.as_millis() as u64,
            "draining: no new connections; waiting for messages in flight"
        );
        loop {
            if self.rt.inflight() == 0 {
                // A request whose head was being read may still claim a slot: look twice.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if self.rt.inflight() == 0 {
                    break;
                }
            }
            if start.elapsed() >= deadline {
                tracing::warn!(in_flight = self.rt.inflight(), "drain deadline reached; the remaining messages get no answer and Salesforce will retry them");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(took_ms = start.elapsed().as_millis() as u64, "drained");
    }
}

/// Marks the runtime ready once every listen port is in LISTEN state. It reads
/// /proc/net/tcp{,6} rather than connecting, so the probe leaves no trace in the metrics.
pub struct ReadyProbe {
    pub rt: Arc<Runtime>,
    pub ports: Vec<u16>,
}

fn listening_ports() -> Vec<u16> {
    let mut ports = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 3 && cols[3] == "0A" {
                if let Some(port) = cols[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.push(port);
                }
            }
        }
    }
    ports
}

/// Tell systemd (`Type=notify`) about readiness or stopping; only when it asked, by setting
/// `NOTIFY_SOCKET`. A failure is logged, never fatal.
pub fn notify_systemd(state: &[sd_notify::NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET is set)");
    }
}

#[async_trait]
impl BackgroundService for ReadyProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let up = listening_ports();
            if self.ports.iter().all(|p| up.contains(p)) {
                self.rt.set_ready();
                tracing::info!("ready: listeners bound, policies loaded");
                notify_systemd(&[sd_notify::NotifyState::Ready]);
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
