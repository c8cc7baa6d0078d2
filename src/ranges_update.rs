//! Keeping `@salesforce` current: fetch Salesforce's `ip-ranges.json`, check it against the
//! copy in force, show what changes, and write it (`obmguard import-ranges`) or swap it in
//! while serving (`[source.salesforce_refresh]`).
//!
//! Threat model: the download is trusted only as far as its TLS (the system's roots, or a CA
//! file given for tests and TLS-inspecting proxies) and its shape. A truncated, hijacked or
//! botched file must not silently open or close the door, so besides the strict parse
//! ([`crate::config::ranges::parse_salesforce_doc`]: every prefix valid, none admitting
//! everything) a new copy is refused when it looks implausible next to the one in force
//! ([`crate::config::ranges::sanity_problems`]: a prefix wider than /8, fewer than half the
//! prefixes, an older `createDate`); an operator can override that with `--force`, the
//! periodic refresh never does. The answer is bounded in size and time, redirects are not
//! followed and no proxy is taken from the environment.
//!
//! Not done: no signature check (Salesforce publishes none), and the refreshed set lives in
//! memory only: after a restart the configured file (or the built-in copy) is in force until
//! the first refresh, which runs at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;

use crate::config::ranges::{self, SalesforceRanges};
use crate::reload::Reloader;
use crate::runtime::Runtime;

/// Largest answer read (the published file is about 10 KiB).
pub const MAX_BYTES: usize = 1024 * 1024;
/// Connecting and reading the whole answer.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read the CA file {path}: {detail}; give a PEM file of CA certificates")]
    CaFile { path: PathBuf, detail: String },
    #[error("cannot load the system's root certificates: {0}; install ca-certificates or pass --ca-file")]
    Roots(String),
    #[error("cannot set up the HTTPS client: {0}")]
    Client(String),
    #[error("{url}: only https:// is allowed")]
    NotHttps { url: String },
    #[error("cannot fetch {url}: {detail}; check the machine's network and DNS (or download the file elsewhere and use --from)")]
    Transport { url: String, detail: String },
    #[error("{url} answered HTTP {status}, expected 200")]
    Status { url: String, status: u16 },
    #[error("{url} sent more than {MAX_BYTES} bytes: not the ranges file")]
    TooLarge { url: String },
    #[error("{url} sent a body that is not UTF-8")]
    NotUtf8 { url: String },
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn client(ca_file: Option<&Path>) -> Result<reqwest::Client, FetchError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = std::fs::File::open(path)
                .and_then(|f| {
                    rustls_pemfile::certs(&mut std::io::BufReader::new(f))
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(|e| FetchError::CaFile {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })?;
            let (ok, _) = roots.add_parsable_certificates(certs);
            if ok == 0 {
                return Err(FetchError::CaFile {
                    path: path.to_owned(),
                    detail: "no certificate in it".into(),
                });
            }
        }
        None => {
            let certs = rustls_native_certs::load_native_certs()
                .map_err(|e| FetchError::Roots(e.to_string()))?;
            let (ok, _) = roots.add_parsable_certificates(certs);
            if ok == 0 {
                return Err(FetchError::Roots("none found".into()));
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| FetchError::Client(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .timeout(TIMEOUT)
        .build()
        .map_err(|e| FetchError::Client(chain(&e)))
}

/// Download `url` (https only) and return its body, at most [`MAX_BYTES`].
pub async fn fetch(url: &url::Url, ca_file: Option<&Path>) -> Result<String, FetchError> {
    let shown = url.to_string();
    if url.scheme() != "https" {
        return Err(FetchError::NotHttps { url: shown });
    }
    let client = client(ca_file)?;
    let transport = |e: reqwest::Error| FetchError::Transport {
        url: shown.clone(),
        detail: chain(&e.without_url()),
    };
    let mut response = client.get(url.clone()).send().await.map_err(transport)?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(FetchError::Status {
            url: shown,
            status: response.status().as_u16(),
        });
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BYTES as u64)
    {
        return Err(FetchError::TooLarge { url: shown });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_BYTES {
            return Err(FetchError::TooLarge { url: shown });
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| FetchError::NotUtf8 { url: shown })
}

/// A new copy, checked against the one in force.
pub struct Candidate {
    pub text: String,
    pub doc: SalesforceRanges,
    /// Sanity problems ([`ranges::sanity_problems`]); the copy is refused unless forced.
    pub problems: Vec<String>,
    pub added: Vec<ipnet::IpNet>,
    pub removed: Vec<ipnet::IpNet>,
}

/// Parse `text` and compare it with `current`. `Err` when it is not a valid ranges file at
/// all (never overridable).
pub fn examine(text: String, current: Option<&SalesforceRanges>) -> Result<Candidate, String> {
    let doc = ranges::parse_salesforce_doc(&text)?;
    let problems = ranges::sanity_problems(&doc, current);
    let empty = ranges::IpSet::default();
    let (added, removed) = ranges::diff(current.map(|c| &c.set).unwrap_or(&empty), &doc.set);
    Ok(Candidate {
        text,
        doc,
        problems,
        added,
        removed,
    })
}

/// The document to write: Salesforce's, with a `_comment` saying where and when it came from
/// and, on each entry that lacks one, a `source_date` taken from its `createDate`.
pub fn annotate(text: &str, origin: &str) -> Result<String, String> {
    let mut doc: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let date = doc
        .get("createDate")
        .and_then(|d| d.as_str())
        .and_then(ranges::parse_date_prefix)
        .map(|d| d.to_string());
    if let Some(obj) = doc.as_object_mut() {
        obj.insert(
            "_comment".into(),
            serde_json::Value::String(format!(
                "Imported by obmguard import-ranges from {origin} on {}; published at {}. source_date on each entry: the createDate of the publication it was taken from.",
                crate::audit::timestamp(std::time::SystemTime::now()),
                ranges::SALESFORCE_RANGES_URL
            )),
        );
        for list in ["prefixes", "ipv6_prefixes"] {
            let Some(entries) = obj.get_mut(list).and_then(|l| l.as_array_mut()) else {
                continue;
            };
            for e in entries.iter_mut().filter_map(|e| e.as_object_mut()) {
                if let (false, Some(d)) = (e.contains_key("source_date"), &date) {
                    e.insert("source_date".into(), serde_json::Value::String(d.clone()));
                }
            }
        }
    }
    serde_json::to_string_pretty(&doc)
        .map(|s| s + "\n")
        .map_err(|e| e.to_string())
}

/// What `import-ranges` was asked to do.
pub struct ImportArgs {
    pub from: Option<PathBuf>,
    pub fetch: bool,
    pub url: url::Url,
    pub ca_file: Option<PathBuf>,
    pub to: PathBuf,
    pub force: bool,
    pub dry_run: bool,
}

/// `obmguard import-ranges`: 0 written (or would be, with `--dry-run`), 1 refused, 2 cannot run.
pub fn import(a: &ImportArgs) -> i32 {
    const ME: &str = "obmguard import-ranges";
    let (text, origin) = match (&a.from, a.fetch) {
        (Some(from), false) => match std::fs::read_to_string(from) {
            Ok(t) => (t, from.display().to_string()),
            Err(e) => {
                eprintln!("{ME}: cannot read {}: {e}", from.display());
                return 2;
            }
        },
        (None, true) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("{ME}: {e}");
                    return 2;
                }
            };
            match rt.block_on(fetch(&a.url, a.ca_file.as_deref())) {
                Ok(t) => (t, a.url.to_string()),
                Err(e) => {
                    eprintln!("{ME}: {e}; nothing written");
                    return 2;
                }
            }
        }
        _ => {
            eprintln!("{ME}: give either --from FILE (a downloaded ip-ranges.json) or --fetch");
            return 2;
        }
    };
    // What @salesforce means now for whoever reads `--to`: that file, or the built-in copy.
    let (current, current_name) = match std::fs::read_to_string(&a.to) {
        Ok(t) => match ranges::parse_salesforce_doc(&t) {
            Ok(d) => (Some(d), a.to.display().to_string()),
            Err(e) => {
                eprintln!(
                    "{ME}: note: the existing {} is not a valid ranges file ({e}); comparing with the built-in copy",
                    a.to.display()
                );
                (
                    ranges::parse_salesforce_doc(ranges::BUILTIN_SALESFORCE_RANGES).ok(),
                    "the built-in copy".into(),
                )
            }
        },
        Err(_) => (
            ranges::parse_salesforce_doc(ranges::BUILTIN_SALESFORCE_RANGES).ok(),
            "the built-in copy".to_string(),
        ),
    };
    let c = match examine(text, current.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{ME}: {origin}: {e}; nothing written");
            return 1;
        }
    };
    println!(
        "{origin}: createDate {}, {} prefixes; compared with {current_name}: {} added, {} removed",
        c.doc.create_date.as_deref().unwrap_or("(none)"),
        c.doc.set.nets().len(),
        c.added.len(),
        c.removed.len()
    );
    for n in &c.added {
        println!("  + {n}");
    }
    for n in &c.removed {
        println!("  - {n}");
    }
    if !c.problems.is_empty() {
        for p in &c.problems {
            eprintln!("{ME}: suspicious: {p}");
        }
        if !a.force {
            eprintln!(
                "{ME}: refused; nothing written. Check the file, and pass --force to write it anyway"
            );
            return 1;
        }
        eprintln!("{ME}: --force: writing it anyway");
    }
    if a.dry_run {
        println!("--dry-run: {} not written", a.to.display());
        return 0;
    }
    let out = match annotate(&c.text, &origin) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{ME}: {e}");
            return 1;
        }
    };
    // Write beside the target and rename, so a reader never sees half a file.
    let tmp = a.to.with_extension("json.tmp");
    if let Err(e) = std::fs::write(&tmp, out).and_then(|()| std::fs::rename(&tmp, &a.to)) {
        let _ = std::fs::remove_file(&tmp);
        eprintln!("{ME}: cannot write {}: {e}", a.to.display());
        return 2;
    }
    let v4 = c
        .doc
        .set
        .nets()
        .iter()
        .filter(|n| matches!(n, ipnet::IpNet::V4(_)))
        .count();
    let v6 = c.doc.set.nets().len() - v4;
    println!(
        "{}: {v4} IPv4 and {v6} IPv6 prefixes written",
        a.to.display()
    );
    0
}

/// `serve`'s periodic refresh: fetch, check against the set in force, and on success make it
/// what `@salesforce` means through an ordinary reload. A failure keeps the last good set and
/// counts `obmguard_salesforce_ranges_refreshes_total{outcome="error"}`.
pub struct RangesRefresher {
    pub rt: Arc<Runtime>,
    pub config_file: PathBuf,
}

impl RangesRefresher {
    /// One refresh; returns the outcome label.
    pub async fn refresh_once(&self) -> &'static str {
        let current = self.rt.current();
        let Some(settings) = current.config.source.refresh.clone() else {
            return "off";
        };
        let outcome = match fetch(&settings.url, settings.ca_file.as_deref()).await {
            Err(e) => {
                tracing::warn!(error = %e, "Salesforce ranges refresh failed; the last good set stays in force");
                "error"
            }
            Ok(text) => match examine(text, current.config.source.salesforce.as_ref()) {
                Err(e) => {
                    tracing::warn!(url = %settings.url, error = %e, "Salesforce ranges refresh refused: not a valid ranges file; the last good set stays in force");
                    "error"
                }
                Ok(c) if !c.problems.is_empty() => {
                    tracing::warn!(url = %settings.url, problems = %c.problems.join("; "), "Salesforce ranges refresh refused: the new copy looks wrong; the last good set stays in force (import it by hand with `obmguard import-ranges --fetch --force` if it is right)");
                    "error"
                }
                Ok(c)
                    if c.added.is_empty()
                        && c.removed.is_empty()
                        && current.config.source.salesforce_origin == "refreshed" =>
                {
                    tracing::debug!("Salesforce ranges unchanged");
                    self.rt.refreshed_ranges.store(Some(Arc::new(c.doc)));
                    "unchanged"
                }
                Ok(c) => {
                    let (added, removed) = (c.added.len(), c.removed.len());
                    let previous = self.rt.refreshed_ranges.swap(Some(Arc::new(c.doc)));
                    let reloader = Reloader {
                        rt: self.rt.clone(),
                        config_file: self.config_file.clone(),
                    };
                    if reloader
                        .reload_off_runtime("Salesforce ranges refreshed".to_owned())
                        .await
                    {
                        tracing::info!(added, removed, "Salesforce ranges refreshed");
                        "ok"
                    } else {
                        self.rt.refreshed_ranges.store(previous);
                        "error"
                    }
                }
            },
        };
        self.rt.metrics.ranges_refresh(outcome);
        outcome
    }
}

#[async_trait]
impl BackgroundService for RangesRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let interval = match self.rt.current().config.source.refresh.as_ref() {
                Some(r) => {
                    self.rt.metrics.init_ranges_refresh();
                    self.refresh_once().await;
                    r.interval
                }
                // Off: look again later, in case a reload turns it on.
                None => Duration::from_secs(60),
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotate_adds_a_comment_and_dates_each_entry() {
        let text = r#"{"syncToken":"1","createDate":"2025-02-02-11-34-23","prefixes":[{"region":"x","ip_prefix":["141.163.208.0/23"]},{"ip_prefix":["141.163.200.0/23"],"source_date":"2025-01-01"}],"ipv6_prefixes":[{"ipv6_prefix":["2001:db8::/32"]}]}"#;
        let out: serde_json::Value =
            serde_json::from_str(&annotate(text, "test").unwrap()).unwrap();
        assert!(out["_comment"].as_str().unwrap().contains("from test"));
        assert_eq!(out["prefixes"][0]["source_date"], "2025-02-02");
        assert_eq!(out["prefixes"][0]["region"], "x");
        assert_eq!(out["prefixes"][1]["source_date"], "2025-01-01");
        assert_eq!(out["ipv6_prefixes"][0]["source_date"], "2025-02-02");
        // Still what the loader reads.
        let doc = ranges::parse_salesforce_doc(&annotate(text, "t").unwrap()).unwrap();
        assert_eq!(doc.set.nets().len(), 3);
    }

    #[tokio::test]
    async fn fetch_refuses_plain_http() {
        let url = url::Url::parse("http://127.0.0.1:1/ip-ranges.json").unwrap();
        assert!(matches!(
            fetch(&url, None).await,
            Err(FetchError::NotHttps { .. })
        ));
    }
}
