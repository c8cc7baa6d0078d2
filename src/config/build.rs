//! File config -> runtime config: reads `obmguard.toml` and the policies directory through
//! [`Inputs`], then hands each section to its own builder (server.rs, trust.rs, source.rs,
//! timeouts.rs, limits.rs, route.rs, oauth.rs). Every check records a problem and carries on,
//! so one run lists everything that needs fixing.
//!
//! Sections that later work adds (`[store]`, `[delivery]`) get a file of their own beside
//! these and one call in [`load`], after `limits`: they read their table, report problems
//! through the same [`FileDiag`], and take defaults from [`super::defaults`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::defaults::{DefaultValue, Setting};
use super::diag::{FileDiag, Problem, Problems};
use super::file::{self, S};
use super::inputs::Inputs;
use super::ranges::{self, IpSet, SalesforceRanges};
use super::route::BuiltRoute;
use super::{limits, route, server, source, store, timeouts, trust};
use super::{Config, Route, Routes, Source};

/// What every section builder may need besides its table.
pub(super) struct Ctx<'a> {
    /// Files and environment variables.
    pub io: &'a dyn Inputs,
    /// Unix seconds, for certificate expiry warnings.
    pub now: i64,
}

pub(super) fn load(
    io: &dyn Inputs,
    path: &Path,
    refreshed: Option<&SalesforceRanges>,
) -> Result<Config, Problems> {
    let ctx = Ctx {
        io,
        now: crate::certs::unix_now(),
    };
    let mut problems = Problems::default();
    let text = match io.read_text(path) {
        Ok(t) => t,
        Err(e) => {
            FileDiag::new(path, "", &mut problems).error(
                None,
                "",
                format!("cannot read the configuration file: {e}; pass --config with the path of obmguard.toml"),
            );
            return Err(problems);
        }
    };
    let parsed: file::ProxyFile = match toml::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            FileDiag::new(path, &text, &mut problems).error(e.span(), "", toml_message(&e));
            return Err(problems);
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut d = FileDiag::new(path, &text, &mut problems);

    let server = server::build(&mut d, &ctx, &base, &parsed.server);
    let trust = trust::build(&mut d, &ctx, &base, parsed.client_cert.as_ref());
    let global = source::build_global(&mut d, &ctx, &base, &parsed.source, refreshed);
    let timeouts = timeouts::build(&mut d, &parsed.timeouts);
    let limits = limits::build(&mut d, &parsed.limits);
    let store = store::build(&mut d, &ctx, &base, parsed.store.as_ref());
    let default_inflight = count(
        &mut d,
        &super::defaults::MAX_INFLIGHT_PER_ROUTE,
        &parsed.limits.max_inflight_per_route,
    );

    let mut routes = Vec::new();
    if let Some(dir) = server.as_ref().map(|s| s.policies_dir.clone()) {
        let rctx = route::RouteCtx {
            salesforce: global.salesforce.as_ref(),
            global_allow: &global.allow,
            default_inflight,
            has_store: parsed.store.is_some(),
        };
        routes = load_routes(&mut problems, &ctx, &dir, &rctx, path);
    }

    let routes = index_routes(&mut problems, routes);
    let salesforce = global.used_salesforce();
    if let Some(stale) = salesforce
        .as_ref()
        .and_then(|s| s.staleness(ranges::today_utc()))
    {
        let key = if parsed.source.salesforce_ranges.is_some() {
            "source.salesforce_ranges"
        } else {
            "source"
        };
        let at = parsed.source.salesforce_ranges.as_ref().map(span);
        FileDiag::new(path, &text, &mut problems).warn(at, key, stale);
    }
    let (Some(server), Some(trust)) = (server, trust) else {
        return Err(problems);
    };
    if !problems.errors.is_empty() {
        return Err(problems);
    }
    let admitted = IpSet::union(
        routes
            .iter()
            .map(|r| &r.source)
            .chain(std::iter::once(&global.trusted_proxies)),
    );
    Ok(Config {
        file: path.to_path_buf(),
        server,
        trust,
        source: Source {
            admitted,
            trusted_proxies: global.trusted_proxies,
            salesforce,
            salesforce_origin: global.origin,
            refresh: global.refresh,
        },
        timeouts,
        limits,
        routes,
        store,
        warnings: problems.warnings,
    })
}

/// Every `*.toml` file directly inside the policies directory, in name order, one route each.
fn load_routes(
    problems: &mut Problems,
    ctx: &Ctx,
    dir: &Path,
    rctx: &route::RouteCtx,
    config_file: &Path,
) -> Vec<BuiltRoute> {
    let entries = match ctx.io.list_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            FileDiag::new(config_file, "", problems).error(
                None,
                "server.policies",
                format!("cannot list {}: {e}", dir.display()),
            );
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && ctx.io.is_file(p))
        .collect();
    files.sort();
    if files.is_empty() {
        FileDiag::new(config_file, "", problems).error(
            None,
            "server.policies",
            format!(
                "{} holds no *.toml route policy: add one (see policies/README.md)",
                dir.display()
            ),
        );
    }
    let mut routes = Vec::new();
    for f in files {
        let text = match ctx.io.read_text(&f) {
            Ok(t) => t,
            Err(e) => {
                FileDiag::new(&f, "", problems).error(None, "", format!("cannot read: {e}"));
                continue;
            }
        };
        let mut d = FileDiag::new(&f, &text, problems);
        match toml::from_str::<file::RouteFile>(&text) {
            Ok(rf) => {
                if let Some(r) = route::build(&mut d, ctx, &f, &rf, rctx) {
                    routes.push(r);
                }
            }
            Err(e) => d.error(e.span(), "", toml_message(&e)),
        }
    }
    routes
}

/// Route names and paths are unique across the directory: a second use is an error at its
/// own line, naming the file and line of the first.
fn index_routes(problems: &mut Problems, routes: Vec<BuiltRoute>) -> Routes {
    let mut by_path: HashMap<String, Arc<Route>> = HashMap::new();
    let mut first_name: HashMap<String, String> = HashMap::new();
    let mut first_path: HashMap<String, String> = HashMap::new();
    for b in routes {
        let r = b.route;
        let here = |line: usize| format!("{}:{line}", r.file.display());
        if let Some(prev) = first_name.get(&r.name) {
            problems.errors.push(Problem {
                file: r.file.clone(),
                line: b.name_line,
                key: "name".into(),
                message: format!(
                    "route name \"{}\" is already used by {prev}: give each route its own name",
                    r.name
                ),
            });
            continue;
        }
        if let Some(prev) = first_path.get(&r.path) {
            problems.errors.push(Problem {
                file: r.file.clone(),
                line: b.path_line,
                key: "path".into(),
                message: format!(
                    "path {} is already routed by {prev}: one path, one route",
                    r.path
                ),
            });
            continue;
        }
        first_name.insert(r.name.clone(), here(b.name_line));
        first_path.insert(r.path.clone(), here(b.path_line));
        by_path.insert(r.path.clone(), Arc::new(r));
    }
    Routes { by_path }
}

/// toml's own Display quotes the offending line, which may hold a secret: use only the message.
pub(super) fn toml_message(e: &toml::de::Error) -> String {
    let m = e.message().trim().to_string();
    if m.starts_with("unknown field") {
        format!("{m}; remove or correct the key (see policies/README.md for every key)")
    } else {
        m
    }
}

/// What to do when a file the example configuration names does not exist yet: the dev PKI
/// script makes the certificates under `certs/` and the dummy secret under `secrets/`.
/// Empty unless one of `paths` is missing and `certs/make-dev-pki.sh` sits where it would.
pub(super) fn dev_pki_hint(io: &dyn Inputs, paths: &[&Path]) -> String {
    for p in paths.iter().filter(|p| !io.is_file(p) && !io.is_dir(p)) {
        let dir = p.parent().unwrap_or(Path::new(""));
        let root = dir.parent().unwrap_or(Path::new(""));
        let named = dir
            .file_name()
            .is_some_and(|n| n == "certs" || n == "secrets");
        let script = root.join("certs").join("make-dev-pki.sh");
        if named && io.is_file(&script) {
            return format!(
                "; to try obmguard, run {} first: it makes the development certificates and a dummy secret (for production, see certs/README.md)",
                script.display()
            );
        }
    }
    String::new()
}

/// A path from a file, relative to that file's directory unless absolute.
pub(super) fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

pub(super) fn span<T>(s: &S<T>) -> std::ops::Range<usize> {
    s.span()
}

/// An integer setting with a fixed default, checked against its range from the table.
pub(super) fn int(d: &mut FileDiag, s: &Setting, v: &Option<S<i64>>) -> i64 {
    debug_assert!(matches!(s.default, DefaultValue::Value(_)), "{}", s.key);
    int_or(d, s, v, s.value())
}

/// An integer setting whose default is known only now (`Cpus`, `Of`).
pub(super) fn int_or(d: &mut FileDiag, s: &Setting, v: &Option<S<i64>>, default: i64) -> i64 {
    match v {
        None => default,
        Some(x) if (s.min..=s.max).contains(x.get_ref()) => *x.get_ref(),
        Some(x) => {
            d.error(
                span(x),
                s.key,
                format!(
                    "{} is out of range: use a value from {} to {}",
                    x.get_ref(),
                    s.min,
                    s.max
                ),
            );
            default
        }
    }
}

/// As [`int`], for a count or size.
pub(super) fn count(d: &mut FileDiag, s: &Setting, v: &Option<S<i64>>) -> usize {
    int(d, s, v) as usize
}

/// As [`int`], for a `*_ms` setting.
pub(super) fn millis(d: &mut FileDiag, s: &Setting, v: &Option<S<i64>>) -> Duration {
    Duration::from_millis(int(d, s, v) as u64)
}
