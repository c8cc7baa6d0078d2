//! Every default and allowed range of the configuration, in one table.
//!
//! The section builders take their defaults and limits from here and nowhere else, and a unit
//! test reads the tables of `policies/README.md` and checks that each entry below appears
//! there with the same default and range, so the reference and the code cannot drift apart.
//! Keys are written as the error messages name them (`timeouts.request_head_ms`; route-file
//! keys without a file prefix, e.g. `message.max_depth`).

/// An integer setting: its key, default and inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub key: &'static str,
    pub default: DefaultValue,
    pub min: i64,
    pub max: i64,
    /// `Route` for keys of a route policy file, `Proxy` for `obmguard.toml`.
    pub file: FileKind,
}

/// Which file a key is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    Proxy,
    Route,
}

/// What a setting is when the file leaves it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    Value(i64),
    /// The number of CPUs the process may use.
    Cpus,
    /// The value of another setting (in force for this configuration).
    Of(&'static Setting),
}

impl Setting {
    /// The default, when it is a fixed number.
    pub const fn value(&self) -> i64 {
        match self.default {
            DefaultValue::Value(v) => v,
            DefaultValue::Cpus | DefaultValue::Of(_) => 0,
        }
    }
}

/// A setting that is not a number: its key and default as written in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    pub key: &'static str,
    /// As it would be written in TOML: `"strip"`, `false`.
    pub default: &'static str,
    pub file: FileKind,
}

impl Fixed {
    /// The default of a string setting, without its TOML quotes.
    pub fn text(&self) -> &'static str {
        self.default.trim_matches('"')
    }

    /// The default of a boolean setting.
    pub fn flag(&self) -> bool {
        self.default == "true"
    }
}

const fn int(key: &'static str, default: i64, min: i64, max: i64, file: FileKind) -> Setting {
    Setting {
        key,
        default: DefaultValue::Value(default),
        min,
        max,
        file,
    }
}

use FileKind::{Proxy, Route};

// [server]
pub const THREADS: Setting = Setting {
    key: "server.threads",
    default: DefaultValue::Cpus,
    min: 1,
    max: 1024,
    file: Proxy,
};
pub const POLICIES: Fixed = Fixed {
    key: "server.policies",
    default: "\"policies\"",
    file: Proxy,
};
pub const AUDIT_LOG: Fixed = Fixed {
    key: "server.audit_log",
    default: "\"-\"",
    file: Proxy,
};

// [source.salesforce_refresh]
pub const REFRESH_INTERVAL_MINUTES: Setting = int(
    "source.salesforce_refresh.interval_minutes",
    1440,
    1,
    10_080,
    Proxy,
);

// [timeouts]
pub const TLS_HANDSHAKE_MS: Setting = int("timeouts.tls_handshake_ms", 10_000, 100, 120_000, Proxy);
pub const REQUEST_HEAD_MS: Setting = int("timeouts.request_head_ms", 10_000, 100, 120_000, Proxy);
pub const REQUEST_BODY_MS: Setting = int("timeouts.request_body_ms", 30_000, 100, 300_000, Proxy);
pub const IDLE_KEEPALIVE_MS: Setting = int(
    "timeouts.idle_keepalive_ms",
    60_000,
    1_000,
    3_600_000,
    Proxy,
);
pub const RESPONSE_WRITE_MS: Setting =
    int("timeouts.response_write_ms", 30_000, 100, 300_000, Proxy);
pub const UPSTREAM_CONNECT_MS: Setting =
    int("timeouts.upstream_connect_ms", 5_000, 10, 60_000, Proxy);
pub const DRAIN_MS: Setting = int("timeouts.drain_ms", 60_000, 0, 600_000, Proxy);
pub const MAX_CONNECTION_AGE_MS: Setting = int(
    "timeouts.max_connection_age_ms",
    3_600_000,
    1_000,
    86_400_000,
    Proxy,
);
pub const TLS_TICKET_LIFETIME_MS: Setting = int(
    "timeouts.tls_ticket_lifetime_ms",
    3_600_000,
    1_000,
    86_400_000,
    Proxy,
);
pub const PROXY_HEADER_MS: Setting = int("timeouts.proxy_header_ms", 5_000, 100, 120_000, Proxy);

// [limits]
pub const MAX_CONNECTIONS: Setting = int("limits.max_connections", 4096, 1, 1_000_000, Proxy);
pub const MAX_CONNECTIONS_PER_SOURCE: Setting = int(
    "limits.max_connections_per_source",
    512,
    1,
    1_000_000,
    Proxy,
);
pub const MAX_INFLIGHT_PER_ROUTE: Setting =
    int("limits.max_inflight_per_route", 256, 1, 1_000_000, Proxy);
pub const MAX_HEADER_COUNT: Setting = int("limits.max_header_count", 64, 8, 1024, Proxy);
pub const MAX_HEADER_BYTES: Setting = int(
    "limits.max_header_bytes",
    16 * 1024,
    1024,
    1024 * 1024,
    Proxy,
);
pub const UPSTREAM_POOL_SIZE: Setting = int("limits.upstream_pool_size", 128, 0, 100_000, Proxy);
pub const UPSTREAM_IDLE_MS: Setting = int("limits.upstream_idle_ms", 30_000, 100, 3_600_000, Proxy);
pub const MAX_RESPONSE_BYTES: Setting = int(
    "limits.max_response_bytes",
    1024 * 1024,
    1024,
    64 * 1024 * 1024,
    Proxy,
);

// A route policy: top-level keys.
pub const UPSTREAM_TIMEOUT_MS: Setting = int("upstream_timeout_ms", 30_000, 100, 60_000, Route);
pub const MAX_INFLIGHT: Setting = Setting {
    key: "max_inflight",
    default: DefaultValue::Of(&MAX_INFLIGHT_PER_ROUTE),
    min: 1,
    max: 1_000_000,
    file: Route,
};
pub const UPSTREAM_KEEPALIVE: Fixed = Fixed {
    key: "upstream_keepalive",
    default: "false",
    file: Route,
};

// [message]
pub const MAX_BODY_BYTES: Setting = int(
    "message.max_body_bytes",
    1024 * 1024,
    1024,
    64 * 1024 * 1024,
    Route,
);
pub const MAX_DEPTH: Setting = int("message.max_depth", 64, 8, 1024, Route);
pub const MAX_ATTRIBUTES: Setting = int("message.max_attributes", 32, 4, 1024, Route);
pub const SESSION_ID: Fixed = Fixed {
    key: "message.session_id",
    default: "\"strip\"",
    file: Route,
};
/// Most `Notification` elements in one message: Salesforce sends at most 100. Not a setting.
pub const MAX_NOTIFICATIONS: usize = 100;

// [oauth]
pub const TTL_SECONDS: Setting = int("oauth.ttl_seconds", 3600, 60, 86_400, Route);
pub const CONNECT_TIMEOUT_MS: Setting = int("oauth.connect_timeout_ms", 5_000, 10, 60_000, Route);
pub const TIMEOUT_MS: Setting = int("oauth.timeout_ms", 10_000, 10, 60_000, Route);
pub const CLIENT_AUTH: Fixed = Fixed {
    key: "oauth.client_auth",
    default: "\"body\"",
    file: Route,
};
pub const AUDIENCE: Fixed = Fixed {
    key: "oauth.audience",
    default: "\"https://login.salesforce.com\"",
    file: Route,
};
pub const REWRITE_URLS: Fixed = Fixed {
    key: "oauth.rewrite_urls",
    default: "true",
    file: Route,
};
pub const HEADER: Fixed = Fixed {
    key: "oauth.header",
    default: "false",
    file: Route,
};

// [store]
pub const STORE_MAX_MESSAGES: Setting =
    int("store.max_messages", 1_000_000, 1, 1_000_000_000, Proxy);
pub const STORE_MAX_BYTES: Setting = int(
    "store.max_bytes",
    4 * 1024 * 1024 * 1024,
    1024 * 1024,
    1024 * 1024 * 1024 * 1024,
    Proxy,
);
pub const LEASE_MS: Setting = int("store.lease_ms", 30_000, 1_000, 3_600_000, Proxy);
pub const POOL_SIZE: Setting = int("store.pool_size", 16, 1, 1_000, Proxy);

// A route's [delivery]
pub const DELIVERY_MODE: Fixed = Fixed {
    key: "delivery.mode",
    default: "\"direct\"",
    file: Route,
};
pub const CONCURRENCY: Setting = int("delivery.concurrency", 4, 1, 1_000, Route);
pub const MAX_AGE_SECONDS: Setting =
    int("delivery.max_age_seconds", 604_800, 1, 90 * 86_400, Route);
pub const DEDUPE_WINDOW_SECONDS: Setting = int(
    "delivery.dedupe_window_seconds",
    172_800,
    1,
    90 * 86_400,
    Route,
);
pub const RETRY_INITIAL_MS: Setting =
    int("delivery.retry_initial_ms", 30_000, 100, 86_400_000, Route);
pub const RETRY_MAX_MS: Setting = int("delivery.retry_max_ms", 7_200_000, 1_000, 86_400_000, Route);
pub const ROUTE_MAX_MESSAGES: Setting = Setting {
    key: "delivery.max_messages",
    default: DefaultValue::Of(&STORE_MAX_MESSAGES),
    min: 1,
    max: 1_000_000_000,
    file: Route,
};
pub const ROUTE_MAX_BYTES: Setting = Setting {
    key: "delivery.max_bytes",
    default: DefaultValue::Of(&STORE_MAX_BYTES),
    min: 1024 * 1024,
    max: 1024 * 1024 * 1024 * 1024,
    file: Route,
};

/// Every integer setting, for the documentation test.
pub const SETTINGS: &[Setting] = &[
    THREADS,
    REFRESH_INTERVAL_MINUTES,
    TLS_HANDSHAKE_MS,
    REQUEST_HEAD_MS,
    REQUEST_BODY_MS,
    IDLE_KEEPALIVE_MS,
    RESPONSE_WRITE_MS,
    UPSTREAM_CONNECT_MS,
    DRAIN_MS,
    MAX_CONNECTION_AGE_MS,
    TLS_TICKET_LIFETIME_MS,
    PROXY_HEADER_MS,
    MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_SOURCE,
    MAX_INFLIGHT_PER_ROUTE,
    MAX_HEADER_COUNT,
    MAX_HEADER_BYTES,
    UPSTREAM_POOL_SIZE,
    UPSTREAM_IDLE_MS,
    MAX_RESPONSE_BYTES,
    UPSTREAM_TIMEOUT_MS,
    MAX_INFLIGHT,
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_ATTRIBUTES,
    TTL_SECONDS,
    CONNECT_TIMEOUT_MS,
    TIMEOUT_MS,
    STORE_MAX_MESSAGES,
    STORE_MAX_BYTES,
    LEASE_MS,
    POOL_SIZE,
    CONCURRENCY,
    MAX_AGE_SECONDS,
    DEDUPE_WINDOW_SECONDS,
    RETRY_INITIAL_MS,
    RETRY_MAX_MS,
    ROUTE_MAX_MESSAGES,
    ROUTE_MAX_BYTES,
];

/// Every other defaulted setting, for the documentation test.
pub const FIXED: &[Fixed] = &[
    POLICIES,
    AUDIT_LOG,
    UPSTREAM_KEEPALIVE,
    SESSION_ID,
    CLIENT_AUTH,
    AUDIENCE,
    REWRITE_URLS,
    HEADER,
    DELIVERY_MODE,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A row of a README table: (default cell, allowed cell).
    type Row = (String, String);

    /// Every `| `key` | ... |` row of policies/README.md, keyed by (file, dotted key). The
    /// section comes from the `### [name]` heading (or a line opening with `` `[name]` ``)
    /// above the table; `## obmguard.toml` and `## Route policies` say which file.
    fn readme_rows() -> HashMap<(FileKind, String), Row> {
        let text = include_str!("../../policies/README.md");
        let mut rows = HashMap::new();
        let mut file = None;
        let mut section = String::new();
        let mut columns: Option<(usize, usize)> = None;
        for line in text.lines() {
            if let Some(h) = line.strip_prefix("## ") {
                file = match h.trim() {
                    "obmguard.toml" => Some(FileKind::Proxy),
                    "Route policies" => Some(FileKind::Route),
                    _ => None,
                };
                section.clear();
                continue;
            }
            let opener = line
                .strip_prefix("### ")
                .or_else(|| line.starts_with("`[").then_some(line));
            if let Some(h) = opener {
                section = match h.find('[').zip(h.find(']')) {
                    Some((a, b)) if a < b => h[a + 1..b].to_string(),
                    _ => String::new(),
                };
                columns = None;
                continue;
            }
            let Some(file) = file else { continue };
            if !line.starts_with('|') {
                columns = None;
                continue;
            }
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            if cells.first() == Some(&"Key") {
                let find = |name: &str| cells.iter().position(|c| *c == name);
                columns = find("Default").zip(find("Allowed"));
                continue;
            }
            let (Some((dflt, allowed)), Some(key)) = (columns, cells.first()) else {
                continue;
            };
            let Some(key) = key.strip_prefix('`').and_then(|k| k.strip_suffix('`')) else {
                continue;
            };
            let full = if section.is_empty() {
                key.to_string()
            } else {
                format!("{section}.{key}")
            };
            let cell = |i: usize| cells.get(i).map(|c| c.to_string()).unwrap_or_default();
            let prev = rows.insert((file, full.clone()), (cell(dflt), cell(allowed)));
            assert!(prev.is_none(), "{full} is documented twice");
        }
        rows
    }

    #[test]
    fn every_default_and_range_is_documented_as_in_the_code() {
        let rows = readme_rows();
        for s in SETTINGS {
            let Some((dflt, allowed)) = rows.get(&(s.file, s.key.to_string())) else {
                panic!("{} is not in a table of policies/README.md", s.key);
            };
            match s.default {
                DefaultValue::Value(v) => assert_eq!(dflt, &v.to_string(), "default of {}", s.key),
                DefaultValue::Cpus => assert_eq!(dflt, "number of CPUs", "default of {}", s.key),
                DefaultValue::Of(other) => {
                    let name = other.key.rsplit_once('.').map_or(other.key, |(_, n)| n);
                    assert!(
                        dflt.contains(name) && dflt.contains(&format!("({})", other.value())),
                        "default of {}: {dflt:?} should name {} ({})",
                        s.key,
                        other.key,
                        other.value()
                    );
                }
            }
            let range = format!("{}-{}", s.min, s.max);
            assert!(
                allowed == &range || allowed.starts_with(&format!("{range};")),
                "range of {}: README says {allowed:?}, the code {range}",
                s.key
            );
        }
        for f in FIXED {
            let Some((dflt, _)) = rows.get(&(f.file, f.key.to_string())) else {
                panic!("{} is not in a table of policies/README.md", f.key);
            };
            assert!(
                dflt.starts_with(&format!("`{}`", f.default)),
                "default of {}: README says {dflt:?}, the code {}",
                f.key,
                f.default
            );
        }
    }

    #[test]
    fn the_readme_parser_finds_the_tables() {
        let rows = readme_rows();
        assert!(rows.contains_key(&(FileKind::Proxy, "timeouts.drain_ms".into())));
        assert!(rows.contains_key(&(FileKind::Route, "source.allow".into())));
        assert!(rows.contains_key(&(FileKind::Proxy, "source.allow".into())));
        assert!(rows.contains_key(&(FileKind::Route, "max_inflight".into())));
        assert!(rows.len() > 50, "{}", rows.len());
    }
}
