//! `[source]` of `obmguard.toml` (default ranges, trusted proxies, what `@salesforce` means
//! and its periodic refresh), and the range lists that a route's own `[source]` uses too.

use std::cell::Cell;
use std::path::Path;
use std::time::Duration;

use super::build::{int, resolve, span, Ctx};
use super::defaults;
use super::diag::FileDiag;
use super::file::{self, S};
use super::ranges::{self, IpSet, SalesforceRanges};
use super::RangesRefresh;

/// `@salesforce` while a configuration is built, and whether any list named it.
pub(super) struct NamedSet {
    ranges: SalesforceRanges,
    used: Cell<bool>,
}

/// The global `[source]` table, built.
pub(super) struct Global {
    pub allow: IpSet,
    pub trusted_proxies: IpSet,
    pub salesforce: Option<NamedSet>,
    /// `builtin`, `file` or `refreshed`.
    pub origin: &'static str,
    pub refresh: Option<RangesRefresh>,
}

impl Global {
    /// What `@salesforce` meant, when some list (global or a route's) used it.
    pub fn used_salesforce(&self) -> Option<SalesforceRanges> {
        self.salesforce
            .as_ref()
            .filter(|s| s.used.get())
            .map(|s| s.ranges.clone())
    }
}

pub(super) fn build_global(
    d: &mut FileDiag,
    ctx: &Ctx,
    base: &Path,
    s: &file::GlobalSourceSection,
    refreshed: Option<&SalesforceRanges>,
) -> Global {
    let refresh = build_refresh(d, ctx, base, s.salesforce_refresh.as_ref());
    let origin = match (refresh.is_some(), refreshed, &s.salesforce_ranges) {
        (true, Some(_), _) => "refreshed",
        (_, _, Some(_)) => "file",
        _ => "builtin",
    };
    let salesforce = match (refresh.is_some(), refreshed) {
        // A set fetched by the periodic refresh replaces the file only while refresh is on.
        (true, Some(r)) => Some(r.clone()),
        _ => load_salesforce_ranges(d, ctx, base, s),
    };
    let salesforce = salesforce.map(|r| NamedSet {
        ranges: r,
        used: Cell::new(false),
    });
    let allow = ip_list(d, "source.allow", &s.allow, salesforce.as_ref());
    let trusted_proxies = ip_list(
        d,
        "source.trusted_proxies",
        &s.trusted_proxies,
        salesforce.as_ref(),
    );
    Global {
        allow,
        trusted_proxies,
        salesforce,
        origin,
        refresh,
    }
}

fn load_salesforce_ranges(
    d: &mut FileDiag,
    ctx: &Ctx,
    base: &Path,
    s: &file::GlobalSourceSection,
) -> Option<SalesforceRanges> {
    let Some(p) = &s.salesforce_ranges else {
        return match ranges::parse_salesforce_doc(ranges::BUILTIN_SALESFORCE_RANGES) {
            Ok(set) => Some(set),
            Err(e) => {
                d.error(
                    None,
                    "source",
                    format!(
                        "the built-in Salesforce ranges are invalid ({e}): set salesforce_ranges"
                    ),
                );
                None
            }
        };
    };
    let path = resolve(base, p.get_ref());
    let parsed = ctx
        .io
        .read_text(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .and_then(|t| {
            ranges::parse_salesforce_doc(&t).map_err(|e| format!("{}: {e}", path.display()))
        });
    match parsed {
        Ok(set) => Some(set),
        Err(e) => {
            d.error(
                span(p),
                "source.salesforce_ranges",
                format!(
                    "{e}; fetch it again with `obmguard import-ranges --fetch --to {}`",
                    path.display()
                ),
            );
            None
        }
    }
}

fn build_refresh(
    d: &mut FileDiag,
    ctx: &Ctx,
    base: &Path,
    r: Option<&S<file::RefreshSection>>,
) -> Option<RangesRefresh> {
    let t = r?.get_ref();
    let minutes = int(d, &defaults::REFRESH_INTERVAL_MINUTES, &t.interval_minutes);
    let url = match &t.url {
        None => url::Url::parse(ranges::SALESFORCE_RANGES_URL).ok()?,
        Some(u) => match url::Url::parse(u.get_ref()) {
            Ok(parsed) if parsed.scheme() == "https" && parsed.host().is_some() => parsed,
            _ => {
                d.error(
                    span(u),
                    "source.salesforce_refresh.url",
                    format!(
                        "not an https:// URL: leave the key out for {}",
                        ranges::SALESFORCE_RANGES_URL
                    ),
                );
                return None;
            }
        },
    };
    let ca_file = match &t.ca_file {
        None => None,
        Some(c) => {
            let path = resolve(base, c.get_ref());
            if let Err(e) = ctx.io.read(&path) {
                d.error(
                    span(c),
                    "source.salesforce_refresh.ca_file",
                    format!(
                        "cannot read {}: {e}; leave the key out to trust the system's roots",
                        path.display()
                    ),
                );
                return None;
            }
            Some(path)
        }
    };
    Some(RangesRefresh {
        interval: Duration::from_secs(minutes as u64 * 60),
        url,
        ca_file,
    })
}

/// A list of CIDRs, bare addresses and `@salesforce`; each bad entry is an error at its own
/// line and index.
pub(super) fn ip_list(
    d: &mut FileDiag,
    key: &str,
    list: &[S<String>],
    salesforce: Option<&NamedSet>,
) -> IpSet {
    let mut nets = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let v = item.get_ref().trim();
        if v == "@salesforce" {
            if let Some(sf) = salesforce {
                sf.used.set(true);
                nets.extend_from_slice(sf.ranges.set.nets());
            }
        } else if v.starts_with('@') {
            d.error(
                span(item),
                &format!("{key}[{i}]"),
                format!("unknown range set \"{v}\": the only named set is @salesforce"),
            );
        } else {
            match ranges::parse_cidr(v) {
                Ok(n) => nets.push(n),
                Err(m) => d.error(span(item), &format!("{key}[{i}]"), m),
            }
        }
    }
    IpSet::new(nets)
}
