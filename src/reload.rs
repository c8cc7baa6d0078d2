//! Live reload: on SIGHUP, or when the configuration file, a policy file or a certificate,
//! key or CA file it names changes, load the whole set exactly as `check` does and swap it in.
//!
//! An invalid set is logged with the same messages `check` prints, counted
//! (`obmguard_policy_reloads_total{outcome="error"}`), and the last good set stays in force.
//! Requests in flight finish on the generation they started with; open TLS connections keep
//! the certificate and trust they were accepted with, new connections get the new ones.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::{self, Config};
use crate::runtime::Runtime;

pub struct Reloader {
    pub rt: Arc<Runtime>,
    pub config_file: PathBuf,
}

/// The files whose change triggers a reload, and the directories to watch for them.
fn watched(c: &Config) -> (HashSet<PathBuf>, HashSet<PathBuf>) {
    let mut files: HashSet<PathBuf> = HashSet::new();
    files.insert(c.file.clone());
    files.insert(c.server.tls_cert.clone());
    files.insert(c.server.tls_key.clone());
    if let Some(ca) = &c.trust.ca_file {
        files.insert(ca.clone());
    }
    for r in c.routes.iter() {
        files.insert(r.file.clone());
    }
    let files: HashSet<PathBuf> = files
        .into_iter()
        .map(|f| f.canonicalize().unwrap_or(f))
        .collect();
    let mut dirs: HashSet<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    let policies = c
        .server
        .policies_dir
        .canonicalize()
        .unwrap_or(c.server.policies_dir.clone());
    dirs.insert(policies);
    (files, dirs)
}

/// The cheap part of [`relevant`], by file name only (no filesystem access).
fn candidate(path: &Path, files: &HashSet<PathBuf>) -> bool {
    let Some(name) = path.file_name() else {
        return false;
    };
    path.extension().is_some_and(|e| e == "toml")
        || files.iter().any(|f| f.file_name() == Some(name))
}

/// Whether a change to `path` concerns the configuration. Called for every event in the
/// watched directories (an audit log written beside the config raises one per message), so the
/// cheap file-name test comes first and only candidates are canonicalised.
fn relevant(path: &Path, files: &HashSet<PathBuf>, policies: &Path) -> bool {
    if !candidate(path, files) {
        return false;
    }
    let Some(name) = path.file_name() else {
        return false;
    };
    let in_policies = path.extension().is_some_and(|e| e == "toml");
    let dir = path
        .parent()
        .map(|d| d.canonicalize().unwrap_or(d.to_path_buf()));
    let p = dir.as_deref().map(|d| d.join(name));
    p.as_deref().is_some_and(|p| files.contains(p))
        || (in_policies && dir.as_deref() == Some(policies))
}

impl Reloader {
    /// [`Reloader::reload`] on a blocking thread: loading reads and canonicalises files, which
    /// must not stall the async runtime.
    pub async fn reload_off_runtime(&self, why: String) -> bool {
        let me = Reloader {
            rt: self.rt.clone(),
            config_file: self.config_file.clone(),
        };
        tokio::task::spawn_blocking(move || me.reload(&why))
            .await
            .unwrap_or(false)
    }

    /// Load, validate and swap. Returns whether the new set is in force.
    pub fn reload(&self, why: &str) -> bool {
        let refreshed = self.rt.refreshed_ranges.load_full();
        match config::load_with_ranges(&self.config_file, refreshed.as_deref()) {
            Ok(c) => {
                let warnings = c.warnings.clone();
                match self.rt.apply(c) {
                    Ok(generation) => {
                        self.rt.metrics.policy_reload("ok");
                        for w in warnings {
                            tracing::warn!("{w}");
                        }
                        tracing::info!(generation, trigger = why, "policy reloaded");
                        true
                    }
                    Err(e) => {
                        self.rt.metrics.policy_reload("error");
                        tracing::error!(trigger = why, error = %e, "reload refused; the last good policy stays in force");
                        false
                    }
                }
            }
            Err(problems) => {
                self.rt.metrics.policy_reload("error");
                for p in &problems.errors {
                    tracing::error!("{p}");
                }
                tracing::error!(
                    trigger = why,
                    errors = problems.errors.len(),
                    "reload refused; the last good policy stays in force"
                );
                false
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::error!("cannot listen for SIGHUP; reload on file change only");
            return;
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            // Reading the files (as a reload does) raises access events: only writes count.
            if let Some(ev) = ev
                .ok()
                .filter(|e| !matches!(e.kind, notify::EventKind::Access(_)))
            {
                for p in ev.paths {
                    let _ = tx.send(p);
                }
            }
        })
        .map_err(|e| tracing::warn!(error = %e, "file watching unavailable; reload with SIGHUP"))
        .ok();
        let mut watching = HashSet::new();
        let mut known_generation = 0;
        let (mut files, mut policies) = (HashSet::new(), PathBuf::new());
        loop {
            // Recompute what to watch only when the policy generation changed.
            let current = self.rt.current();
            if current.number != known_generation {
                known_generation = current.number;
                let dirs;
                // Canonicalising touches the filesystem: off the async runtime.
                let c = current.clone();
                (files, dirs, policies) = tokio::task::spawn_blocking(move || {
                    let (files, dirs) = watched(&c.config);
                    let configured = &c.config.server.policies_dir;
                    let policies = configured.canonicalize().unwrap_or(configured.clone());
                    (files, dirs, policies)
                })
                .await
                .unwrap_or_default();
                if let Some(w) = watcher.as_mut() {
                    for d in dirs.difference(&watching.clone()) {
                        if w.watch(d, RecursiveMode::NonRecursive).is_ok() {
                            watching.insert(d.clone());
                        }
                    }
                }
            }
            let trigger = tokio::select! {
                _ = shutdown.changed() => return,
                _ = hup.recv() => "SIGHUP".to_string(),
                Some(p) = rx.recv() => {
                    if !candidate(&p, &files) {
                        continue;
                    }
                    let (f, pol, path) = (files.clone(), policies.clone(), p.clone());
                    let concerns = tokio::task::spawn_blocking(move || relevant(&path, &f, &pol))
                        .await
                        .unwrap_or(false);
                    if !concerns {
                        continue;
                    }
                    // Editors write in several steps: let them finish, then reload once.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    while rx.try_recv().is_ok() {}
                    format!("change of {}", p.display())
                }
            };
            self.reload_off_runtime(trigger).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_files_and_policies_are_relevant() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let policies = base.join("policies");
        std::fs::create_dir(&policies).unwrap();
        let files: HashSet<PathBuf> = [base.join("obmguard.toml"), base.join("server.pem")].into();
        assert!(relevant(&base.join("obmguard.toml"), &files, &policies));
        assert!(relevant(&base.join("server.pem"), &files, &policies));
        assert!(relevant(
            &policies.join("new-route.toml"),
            &files,
            &policies
        ));
        assert!(!relevant(&base.join("audit.jsonl"), &files, &policies));
        assert!(!relevant(&base.join("other.toml"), &files, &policies));
        assert!(!relevant(&policies.join("notes.txt"), &files, &policies));
    }
}
