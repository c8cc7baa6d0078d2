//! The command line: `serve`, `check`, `token`, `report`, `import-ranges`, `queue`, `store`. The demo and the
//! sample receiver are another binary (`obmguard-demo`), which runs the proxy through
//! [`ServeArgs`] and [`crate::commands::serve`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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

/// The arguments of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "obmguard.toml")]
    pub config: PathBuf,
    /// Take over the listening sockets of a running obmguard (pingora graceful upgrade;
    /// send SIGQUIT to the old process after starting this one).
    #[arg(long)]
    pub upgrade: bool,
    /// Unix socket used to hand listening sockets over during an upgrade. Its directory
    /// must exist and must not be writable by other users (whoever binds the socket first
    /// receives the listening sockets).
    #[arg(long, default_value = "/run/obmguard/upgrade.sock")]
    pub upgrade_sock: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
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
    /// Look at and operate the queued messages (queued routes, `[store]`); works while
    /// `serve` runs on the same store.
    Queue {
        #[command(subcommand)]
        op: QueueOp,
    },
    /// The store itself.
    Store {
        #[command(subcommand)]
        op: StoreOp,
    },
}

/// `obmguard store ...`.
#[derive(Debug, Subcommand)]
pub enum StoreOp {
    /// Bring the store's schema up to date (also done by `serve` at start; safe while other
    /// instances start or run).
    Migrate {
        #[arg(long, default_value = "obmguard.toml")]
        config: PathBuf,
    },
}

/// `obmguard queue ...`.
#[derive(Debug, Subcommand)]
pub enum QueueOp {
    /// List messages (no bodies), oldest first.
    List {
        #[command(flatten)]
        sel: QueueSelection,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: QueueFormat,
    },
    /// One message's metadata; its body only with --body.
    Show {
        #[arg(long, default_value = "obmguard.toml")]
        config: PathBuf,
        #[arg(long)]
        id: i64,
        /// Print the body as stored (the bytes that will be forwarded; no secret is stored).
        #[arg(long)]
        body: bool,
        /// table or json.
        #[arg(long, default_value = "table")]
        format: QueueFormat,
    },
    /// Make queued (or dead) messages due now.
    Retry {
        #[command(flatten)]
        sel: QueueSelection,
    },
    /// Put dead letters back in the queue with a fresh maximum age.
    Replay {
        #[command(flatten)]
        sel: QueueSelection,
    },
    /// Delete messages (a selection is required).
    Drop {
        #[command(flatten)]
        sel: QueueSelection,
    },
}

/// Which messages a `queue` command applies to.
#[derive(Debug, Clone, Args)]
pub struct QueueSelection {
    #[arg(long, default_value = "obmguard.toml")]
    pub config: PathBuf,
    #[arg(long)]
    pub route: Option<String>,
    /// queued, delivering, delivered or dead.
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long)]
    pub id: Option<i64>,
    /// Messages carrying this Notification Id (as sent).
    #[arg(long)]
    pub notification_id: Option<String>,
    /// Accepted longer ago than this: 90s, 15m, 2h, 7d.
    #[arg(long)]
    pub older_than: Option<String>,
    /// At most this many, oldest first.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl QueueSelection {
    pub fn selection(&self) -> crate::queue_ops::Selection {
        crate::queue_ops::Selection {
            id: self.id,
            route: self.route.clone(),
            state: self.state.clone(),
            notification_id: self.notification_id.clone(),
            older_than: self.older_than.clone(),
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueFormat {
    Table,
    Json,
}
