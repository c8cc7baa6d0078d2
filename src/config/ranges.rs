//! Source address sets: CIDR lists from the policy files and Salesforce's published ranges
//! (`@salesforce`), read from Salesforce's `ip-ranges.json` format.
//!
//! The built-in copy lives in `policies/salesforce-ip-ranges.json`, compiled into the binary;
//! `[source] salesforce_ranges` points at a newer download instead, and
//! `obmguard import-ranges` validates a download before a security team commits it.
//! The JSON is parsed defensively: unknown fields are ignored, every prefix is checked.

use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;
use time::{Date, Month};

/// The copy of Salesforce's ranges shipped with this build.
pub const BUILTIN_SALESFORCE_RANGES: &str =
    include_str!("../../policies/salesforce-ip-ranges.json");

/// Where Salesforce publishes its ranges.
pub const SALESFORCE_RANGES_URL: &str = "https://ip-ranges.salesforce.com/ip-ranges.json";

/// A set of address ranges. IPv4-mapped IPv6 peers (`::ffff:a.b.c.d`) match IPv4 ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpSet {
    nets: Vec<IpNet>,
}

impl IpSet {
    pub fn new(mut nets: Vec<IpNet>) -> Self {
        nets.sort();
        nets.dedup();
        IpSet { nets }
    }

    /// Whether `ip` (canonicalised first) is inside any range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// The union of several sets.
    pub fn union<'a>(sets: impl IntoIterator<Item = &'a IpSet>) -> IpSet {
        IpSet::new(
            sets.into_iter()
                .flat_map(|s| s.nets.iter().copied())
                .collect(),
        )
    }
}

/// Parse one CIDR (or bare address) from a policy file, refusing what is almost always a
/// mistake: host bits set (`10.0.0.1/8`) and the whole address space.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    let net = match t.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match t.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip.to_canonical()),
            Err(_) => {
                return Err(format!(
                    "\"{t}\" is not an address range: write a CIDR such as 203.0.113.0/24 or 2001:db8::/32, or @salesforce"
                ))
            }
        },
    };
    if net.prefix_len() == 0 {
        return Err(format!(
            "\"{t}\" admits every address: list the ranges that may call, e.g. @salesforce"
        ));
    }
    if net.trunc() != net {
        return Err(format!(
            "\"{t}\" has host bits set: write {} (or /{} for the single address)",
            net.trunc(),
            net.max_prefix_len()
        ));
    }
    Ok(net)
}

#[derive(Deserialize)]
struct RangesFile {
    #[serde(default, rename = "createDate")]
    create_date: Option<String>,
    #[serde(default)]
    prefixes: Vec<V4Entry>,
    #[serde(default)]
    ipv6_prefixes: Vec<V6Entry>,
}

#[derive(Deserialize)]
struct V4Entry {
    #[serde(default)]
    ip_prefix: PrefixList,
    /// obmguard's extension: `YYYY-MM-DD` of the newest publication listing these prefixes.
    #[serde(default)]
    source_date: Option<String>,
}

#[derive(Deserialize)]
struct V6Entry {
    #[serde(default)]
    ipv6_prefix: PrefixList,
    #[serde(default)]
    source_date: Option<String>,
}

/// Salesforce writes `ip_prefix` as a list; a single string is accepted too.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum PrefixList {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl PrefixList {
    fn iter(&self) -> Box<dyn Iterator<Item = &String> + '_> {
        match self {
            PrefixList::None => Box::new(std::iter::empty()),
            PrefixList::One(s) => Box::new(std::iter::once(s)),
            PrefixList::Many(v) => Box::new(v.iter()),
        }
    }
}

/// Ranges older than this many days make `check` and `serve` warn.
pub const STALE_AFTER_DAYS: i64 = 90;

/// A parsed `ip-ranges.json`: the prefixes and how old they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalesforceRanges {
    pub set: IpSet,
    /// `createDate` as written (`YYYY-MM-DD-hh-mm-ss`), when present.
    pub create_date: Option<String>,
    /// The date the ranges are known to be current as of: the oldest entry's `source_date`,
    /// else the date part of `createDate`.
    pub as_of: Option<Date>,
}

impl SalesforceRanges {
    /// Whole days between `as_of` and `today` (`None` when the file carries no date).
    pub fn age_days(&self, today: Date) -> Option<i64> {
        self.as_of.map(|d| (today - d).whole_days())
    }

    /// A warning when the ranges are older than [`STALE_AFTER_DAYS`] (or carry no date).
    pub fn staleness(&self, today: Date) -> Option<String> {
        const FIX: &str = "run `obmguard import-ranges --fetch --to /etc/obmguard/salesforce-ip-ranges.json` and point [source] salesforce_ranges at that file (or turn on [source.salesforce_refresh]); Salesforce moves orgs onto Hyperforce ranges, and stale ranges refuse their messages";
        match self.age_days(today) {
            None => Some(format!("the Salesforce ranges carry no createDate or source_date, so their age is unknown: {FIX}")),
            Some(days) if days > STALE_AFTER_DAYS => Some(format!(
                "the Salesforce ranges in force date from {} ({days} days old, more than {STALE_AFTER_DAYS}): {FIX}",
                self.as_of.map(|d| d.to_string()).unwrap_or_default()
            )),
            Some(_) => None,
        }
    }
}

/// `YYYY-MM-DD` at the start of `s` (Salesforce's `createDate` is `YYYY-MM-DD-hh-mm-ss`).
pub fn parse_date_prefix(s: &str) -> Option<Date> {
    let b = s.as_bytes();
    if b.len() < 10
        || b[4] != b'-'
        || b[7] != b'-'
        || (b.len() > 10 && !matches!(b[10], b'-' | b'T' | b' '))
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let month = Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    Date::from_calendar_date(
        i32::try_from(num(0..4)?).ok()?,
        month,
        u8::try_from(num(8..10)?).ok()?,
    )
    .ok()
}

/// Today's date in UTC.
pub fn today_utc() -> Date {
    time::OffsetDateTime::now_utc().date()
}

/// Parse Salesforce's `ip-ranges.json`. Every prefix must be a valid, non-trivial CIDR of the
/// family its list claims; otherwise the whole file is refused (a half-read allow-list is
/// worse than none).
pub fn parse_salesforce_ranges(json: &str) -> Result<IpSet, String> {
    parse_salesforce_doc(json).map(|d| d.set)
}

/// As [`parse_salesforce_ranges`], keeping the dates.
pub fn parse_salesforce_doc(json: &str) -> Result<SalesforceRanges, String> {
    let file: RangesFile = serde_json::from_str(json)
        .map_err(|e| format!("not a Salesforce ip-ranges.json document: {e}"))?;
    let mut dates = Vec::new();
    let mut date_of = |key: String, d: &Option<String>| -> Result<(), String> {
        if let Some(d) = d {
            dates.push(parse_date_prefix(d).ok_or_else(|| {
                format!(
                    "{key}.source_date: \"{}\" is not a date: write YYYY-MM-DD",
                    d.chars().take(40).collect::<String>()
                )
            })?);
        }
        Ok(())
    };
    for (i, e) in file.prefixes.iter().enumerate() {
        date_of(format!("prefixes[{i}]"), &e.source_date)?;
    }
    for (i, e) in file.ipv6_prefixes.iter().enumerate() {
        date_of(format!("ipv6_prefixes[{i}]"), &e.source_date)?;
    }
    let create = file.create_date.as_deref().and_then(parse_date_prefix);
    if file.create_date.is_some() && create.is_none() {
        return Err("createDate is not a date: Salesforce writes YYYY-MM-DD-hh-mm-ss".into());
    }
    let as_of = dates.into_iter().min().or(create);
    let mut nets = Vec::new();
    for (i, e) in file.prefixes.iter().enumerate() {
        for p in e.ip_prefix.iter() {
            let n = parse_cidr(p).map_err(|m| format!("prefixes[{i}]: {m}"))?;
            if !matches!(n, IpNet::V4(_)) {
                return Err(format!("prefixes[{i}]: \"{p}\" is not IPv4"));
            }
            nets.push(n);
        }
    }
    for (i, e) in file.ipv6_prefixes.iter().enumerate() {
        for p in e.ipv6_prefix.iter() {
            let n = parse_cidr(p).map_err(|m| format!("ipv6_prefixes[{i}]: {m}"))?;
            if !matches!(n, IpNet::V6(_)) {
                return Err(format!("ipv6_prefixes[{i}]: \"{p}\" is not IPv6"));
            }
            nets.push(n);
        }
    }
    if nets.is_empty() {
        return Err("the document lists no prefixes".into());
    }
    Ok(SalesforceRanges {
        set: IpSet::new(nets),
        create_date: file.create_date,
        as_of,
    })
}

/// Why a new copy of the ranges looks wrong next to the one in force. Each can be overridden
/// (`import-ranges --force`); an empty list means the new copy looks sane.
pub fn sanity_problems(new: &SalesforceRanges, current: Option<&SalesforceRanges>) -> Vec<String> {
    let mut out = Vec::new();
    for n in new.set.nets() {
        let shortest = if matches!(n, IpNet::V4(_)) { 8 } else { 16 };
        if n.prefix_len() < shortest {
            out.push(format!(
                "{n} is shorter than /{shortest}: no Salesforce range is that wide"
            ));
        }
    }
    if let Some(cur) = current {
        let (now, before) = (new.set.nets().len(), cur.set.nets().len());
        if now * 2 < before {
            out.push(format!(
                "it lists {now} prefixes, fewer than half of the {before} in force"
            ));
        }
        if let (Some(a), Some(b)) = (&new.create_date, &cur.create_date) {
            // Both are fixed-width YYYY-MM-DD-hh-mm-ss: they compare as strings.
            if parse_date_prefix(a).is_some() && parse_date_prefix(b).is_some() && a < b {
                out.push(format!(
                    "its createDate {a} is older than the {b} of the copy in force"
                ));
            }
        }
    }
    out
}

/// Prefixes in `new` and not in `old`, and in `old` and not in `new`.
pub fn diff(old: &IpSet, new: &IpSet) -> (Vec<IpNet>, Vec<IpNet>) {
    let added = new
        .nets()
        .iter()
        .filter(|n| !old.nets().contains(n))
        .copied()
        .collect();
    let removed = old
        .nets()
        .iter()
        .filter(|n| !new.nets().contains(n))
        .copied()
        .collect();
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_ipv6_peer_matches_ipv4_range() {
        let set = IpSet::new(vec![parse_cidr("203.0.113.0/24").unwrap()]);
        assert!(set.contains("::ffff:203.0.113.9".parse().unwrap()));
        assert!(set.contains("203.0.113.9".parse().unwrap()));
        assert!(!set.contains("203.0.114.9".parse().unwrap()));
    }

    #[test]
    fn refuses_host_bits_and_the_whole_space() {
        assert!(parse_cidr("10.0.0.1/8").unwrap_err().contains("10.0.0.0/8"));
        assert!(parse_cidr("0.0.0.0/0")
            .unwrap_err()
            .contains("every address"));
        assert!(parse_cidr("::/0").unwrap_err().contains("every address"));
        assert!(parse_cidr("banana").is_err());
        assert_eq!(parse_cidr("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
    }

    #[test]
    fn parses_salesforce_format_with_unknown_fields_and_both_families() {
        let json = r#"{"syncToken":"1","createDate":"2026-01-01-00-00-00","extra":{"x":1},
            "prefixes":[{"region":"us","provider":"aws","ip_prefix":["13.108.0.0/14","96.43.144.0/20"],"more":true}],
            "ipv6_prefixes":[{"region":"us","ipv6_prefix":["2001:db8::/32"]}]}"#;
        let set = parse_salesforce_ranges(json).unwrap();
        assert!(set.contains("13.109.1.1".parse().unwrap()));
        assert!(set.contains("2001:db8::1".parse().unwrap()));
        assert!(!set.contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn refuses_a_ranges_file_with_one_bad_prefix() {
        let json = r#"{"prefixes":[{"ip_prefix":["13.108.0.0/14","0.0.0.0/0"]}]}"#;
        assert!(parse_salesforce_ranges(json)
            .unwrap_err()
            .contains("prefixes[0]"));
        let json = r#"{"prefixes":[{"ip_prefix":["2001:db8::/32"]}]}"#;
        assert!(parse_salesforce_ranges(json)
            .unwrap_err()
            .contains("not IPv4"));
    }

    #[test]
    fn builtin_ranges_hold_first_party_and_hyperforce_with_dates() {
        let doc = parse_salesforce_doc(BUILTIN_SALESFORCE_RANGES).unwrap();
        // First-party data centre, Hyperforce on AWS (2025 and 2026 additions), and on GCP.
        for ip in [
            "13.108.1.1",
            "141.163.208.9",
            "145.224.193.7",
            "155.226.187.1",
            "129.77.12.5",
        ] {
            assert!(doc.set.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(!doc.set.contains("8.8.8.8".parse().unwrap()));
        assert_eq!(doc.set.nets().len(), 37);
        assert_eq!(doc.as_of, parse_date_prefix("2026-05-21"));
        assert_eq!(doc.create_date.as_deref(), Some("2026-05-21-19-19-08"));
    }

    fn day(s: &str) -> Date {
        parse_date_prefix(s).unwrap()
    }

    #[test]
    fn staleness_counts_from_the_oldest_source_date() {
        let json = r#"{"createDate":"2026-11-01-00-00-00","prefixes":[
            {"ip_prefix":["13.108.0.0/14"],"source_date":"2026-01-10"},
            {"ip_prefix":["96.43.144.0/20"],"source_date":"2026-10-01"}]}"#;
        let doc = parse_salesforce_doc(json).unwrap();
        assert_eq!(doc.as_of, Some(day("2026-01-10")));
        assert_eq!(doc.age_days(day("2026-04-10")), Some(90));
        assert_eq!(doc.staleness(day("2026-04-10")), None);
        let w = doc.staleness(day("2026-04-11")).unwrap();
        assert!(w.contains("2026-01-10 (91 days old"), "{w}");
        assert!(w.contains("import-ranges --fetch"), "{w}");
    }

    #[test]
    fn a_downloaded_file_is_dated_by_its_create_date() {
        let json = r#"{"createDate":"2025-02-02-11-34-23","prefixes":[{"ip_prefix":["141.163.208.0/23"]}]}"#;
        let doc = parse_salesforce_doc(json).unwrap();
        assert_eq!(doc.as_of, Some(day("2025-02-02")));
        let undated =
            parse_salesforce_doc(r#"{"prefixes":[{"ip_prefix":["141.163.208.0/23"]}]}"#).unwrap();
        assert!(undated
            .staleness(day("2025-02-02"))
            .unwrap()
            .contains("age is unknown"));
        assert!(parse_salesforce_doc(
            r#"{"createDate":"yesterday","prefixes":[{"ip_prefix":["141.163.208.0/23"]}]}"#
        )
        .is_err());
        assert!(parse_salesforce_doc(
            r#"{"prefixes":[{"ip_prefix":["141.163.208.0/23"],"source_date":"2025-13-01"}]}"#
        )
        .unwrap_err()
        .contains("prefixes[0].source_date"));
    }

    #[test]
    fn sanity_checks_name_what_looks_wrong() {
        let cur = parse_salesforce_doc(
            r#"{"createDate":"2026-05-21-19-19-08","prefixes":[{"ip_prefix":
            ["13.108.0.0/14","66.231.80.0/20","68.232.192.0/20","96.43.144.0/20"]}]}"#,
        )
        .unwrap();
        let fine = parse_salesforce_doc(
            r#"{"createDate":"2026-06-01-00-00-00","prefixes":[{"ip_prefix":
            ["13.108.0.0/14","66.231.80.0/20","68.232.192.0/20","141.163.208.0/23"]}]}"#,
        )
        .unwrap();
        assert!(sanity_problems(&fine, Some(&cur)).is_empty());
        let wide = parse_salesforce_doc(
            r#"{"createDate":"2026-06-01-00-00-00","prefixes":[{"ip_prefix":
            ["12.0.0.0/7","66.231.80.0/20","68.232.192.0/20"]}]}"#,
        )
        .unwrap();
        assert!(sanity_problems(&wide, Some(&cur))[0].contains("12.0.0.0/7 is shorter than /8"));
        let few = parse_salesforce_doc(
            r#"{"createDate":"2026-06-01-00-00-00","prefixes":[{"ip_prefix":["13.108.0.0/14"]}]}"#,
        )
        .unwrap();
        assert!(sanity_problems(&few, Some(&cur))[0].contains("fewer than half of the 4"));
        let older = parse_salesforce_doc(
            r#"{"createDate":"2025-02-02-11-34-23","prefixes":[{"ip_prefix":
            ["13.108.0.0/14","66.231.80.0/20","68.232.192.0/20"]}]}"#,
        )
        .unwrap();
        assert!(
            sanity_problems(&older, Some(&cur))[0].contains("older than the 2026-05-21-19-19-08")
        );
        let (added, removed) = diff(&cur.set, &fine.set);
        assert_eq!(added, vec![parse_cidr("141.163.208.0/23").unwrap()]);
        assert_eq!(removed, vec![parse_cidr("96.43.144.0/20").unwrap()]);
    }
}
