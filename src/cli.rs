//! The command line: `serve`, `check`, `token`, `report`, `import-ranges` (and `demo`).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "obmguard",
    version,
    about = "A verifying reverse proxy for Salesforce Outbound Messages"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve {
        #[arg(long, default_value = "obmguard.toml")]
        config: PathBuf,
        /// Take over the listening sockets of a running obmguard (pingora graceful upgrade;
        /// send SIGQUIT to the old process after starting this one).
        #[arg(long)]
        upgrade: bool,
        /// Unix socket used to hand listening sockets over during an upgrade. Its directory
        /// must exist and must not be writable by other users (whoever binds the socket first
        /// receives the listening sockets).
        #[arg(long, default_value = "/run/obmguard/upgrade.sock")]
        upgrade_sock: String,
    },
    /// Validate the configuration exactly as `serve` would, open every file it names, and
    /// exit non-zero on any error.
    Check {
        #[arg(long, default_value = "obmguard.toml")]
        config: PathBuf,
    },
    /// Fetch one OAuth token for a route and print instance_url, issued_at and its length.
    Token {
        #[arg(long, default_value = "obmguard.toml")]
        config: PathBuf,
        #[arg(long)]
        route: String,
    },
    /// Summarise an audit file: which orgs and actions still send session ids (table, json,
    /// or html: the migration page, also served live by the admin listener at /report).
    Report {
        #[arg(long)]
        audit: PathBuf,
        /// table, json or html.
        #[arg(long, default_value = "table")]
        format: crate::report::Format,
        /// Write the report to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a self-contained demonstration on loopback: throw-away PKI, a sample legacy
    /// receiver, a token endpoint, the proxy, and notifications sent the way Salesforce does.
    Demo {
        /// Leave everything running and print curl lines to try.
        #[arg(long)]
        keep_running: bool,
    },
    /// Run the sample legacy receiver (answers Ack, logs the SessionId it received).
    SampleReceiver {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
    },
    /// Fetch (or read) Salesforce's ip-ranges.json, check it against the copy in force, show
    /// what it adds and removes, and write it where @salesforce reads it.
    ImportRanges {
        /// A downloaded https://ip-ranges.salesforce.com/ip-ranges.json.
        #[arg(long, conflicts_with = "fetch", required_unless_present = "fetch")]
        from: Option<PathBuf>,
        /// Download it (system roots, 30 s timeout, at most 1 MiB).
        #[arg(long)]
        fetch: bool,
        /// Where --fetch downloads from.
        #[arg(long, default_value = crate::config::ranges::SALESFORCE_RANGES_URL, requires = "fetch")]
        url: url::Url,
        /// Trust the CA certificates in this PEM file instead of the system's roots.
        #[arg(long, requires = "fetch")]
        ca_file: Option<PathBuf>,
        /// Where to write it (e.g. /etc/obmguard/salesforce-ip-ranges.json); also the copy
        /// compared with (the built-in copy when the file does not exist yet).
        #[arg(long)]
        to: PathBuf,
        /// Write it even when it looks wrong (prefix wider than /8, fewer than half the
        /// prefixes, older createDate).
        #[arg(long)]
        force: bool,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}
