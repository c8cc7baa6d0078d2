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

/// The copy of Salesforce's ranges shipped with this build.
pub const BUILTIN_SALESFORCE_RANGES: &str =
    include_str!("../../policies/salesforce-ip-ranges.json");

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
    #[serde(default)]
    prefixes: Vec<V4Entry>,
    #[serde(default)]
    ipv6_prefixes: Vec<V6Entry>,
}

#[derive(Deserialize)]
struct V4Entry {
    #[serde(default)]
    ip_prefix: PrefixList,
}

#[derive(Deserialize)]
struct V6Entry {
    #[serde(default)]
    ipv6_prefix: PrefixList,
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

/// Parse Salesforce's `ip-ranges.json`. Every prefix must be a valid, non-trivial CIDR of the
/// family its list claims; otherwise the whole file is refused (a half-read allow-list is
/// worse than none).
pub fn parse_salesforce_ranges(json: &str) -> Result<IpSet, String> {
    let file: RangesFile = serde_json::from_str(json)
        .map_err(|e| format!("not a Salesforce ip-ranges.json document: {e}"))?;
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
    Ok(IpSet::new(nets))
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
    fn builtin_ranges_parse() {
        let set = parse_salesforce_ranges(BUILTIN_SALESFORCE_RANGES).unwrap();
        assert!(set.contains("13.108.1.1".parse().unwrap()));
    }
}
