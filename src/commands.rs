//! What each subcommand does. `serve` wires the stages into a pingora server; the others are
//! short operator tools. Exit codes: 0 success, 1 the thing checked is wrong, 2 cannot run.

use std::path::Path;
use std::sync::Arc;

use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::cli::{Command, LogFormat, ServeArgs};
use crate::config::{self, Config};
use crate::lifecycle::{DrainOnSignal, ReadyProbe};
use crate::metrics::Metrics;
use crate::proxy::Listener;
use crate::reload::Reloader;
use crate::runtime::Runtime;

/// Bytes of write buffer under each client connection's TLS stream (see `serve`).
const ANSWER_WRITE_BUFFER: usize = 512;

/// tracing to stderr, text or JSON, filtered by RUST_LOG (default `info`). Lines go through
/// a [`crate::sink::Sink`]: the request path never waits on stderr. Colour only on a terminal.
/// Text lines are written by [`crate::logfmt`] (the default layout, at a fraction of its cost;
/// on a terminal, the default formatter adds its colours).
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    let sink = crate::sink::set_log(crate::sink::Sink::new(
        "log",
        Box::new(std::io::stderr()),
        crate::sink::DEFAULT_CAPACITY,
        crate::sink::LOG_GATHER,
    ));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_timer(crate::logfmt::Clock)
        .with_writer(sink.clone());
    let _ = match format {
        LogFormat::Text if ansi => b.fmt_fields(crate::logfmt::Fields).try_init(),
        LogFormat::Text => b
            .fmt_fields(crate::logfmt::Fields)
            .event_format(crate::logfmt::Plain)
            .try_init(),
        LogFormat::Json => b.json().flatten_event(true).try_init(),
    };
}

/// Write every queued log line (before the process exits).
pub fn finish_logging() {
    if let Some(s) = crate::sink::log() {
        s.flush();
    }
}

/// Run one subcommand; returns the process exit code.
pub fn run(cmd: Command) -> i32 {
    match cmd {
        Command::Serve(args) => serve(args),
        Command::Check { config } => check(&config),
        Command::Token { config, route } => token(&config, &route),
        Command::Report { audit, format, out } => report(&audit, format, out.as_deref()),
        Command::ImportRanges {
            from,
            fetch,
            url,
            ca_file,
            to,
            force,
            dry_run,
        } => crate::ranges_update::import(&crate::ranges_update::ImportArgs {
            from,
            fetch,
            url,
            ca_file,
            to,
            force,
            dry_run,
        }),
        Command::Queue { op } => queue(op),
        Command::Store {
            op: crate::cli::StoreOp::Migrate { config },
        } => store_migrate(&config),
    }
}

/// A runtime for a command that talks to a network service or the store (`None`, after
/// saying why, if one cannot be made).
fn command_runtime(command: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("obmguard {command}: cannot start a runtime: {e}");
            None
        }
    }
}

/// `obmguard store migrate`: the schema of the store `[store]` names, up to date.
fn store_migrate(config: &Path) -> i32 {
    use crate::config::StoreEngine;
    let Some(cfg) = load_or_print(config) else {
        return 2;
    };
    let Some(sc) = &cfg.store else {
        eprintln!(
            "obmguard store migrate: {} has no [store]: nothing to migrate",
            config.display()
        );
        return 2;
    };
    let done = match &sc.engine {
        StoreEngine::Sqlite { path } => {
            crate::store::open(sc).map(|_| format!("the store in {} is up to date", path.display()))
        }
        StoreEngine::Postgres { url, pool_size } => {
            let options = crate::store::PgOptions {
                max_connections: (*pool_size).min(2),
                ..Default::default()
            };
            crate::store::migrate_postgres(url, options).map(|m| {
                if m.from == m.to {
                    format!("PostgreSQL store: schema version {} already", m.to)
                } else {
                    format!("PostgreSQL store: schema version {} -> {}", m.from, m.to)
                }
            })
        }
    };
    match done {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("obmguard store migrate: {e}");
            1
        }
    }
}

/// `obmguard queue ...`: open the store the configuration names and run one operation.
fn queue(op: crate::cli::QueueOp) -> i32 {
    use crate::cli::{QueueFormat, QueueOp};
    use crate::queue_ops::{self, Change};
    let config = match &op {
        QueueOp::List { sel, .. }
        | QueueOp::Retry { sel }
        | QueueOp::Replay { sel }
        | QueueOp::Drop { sel } => sel.config.clone(),
        QueueOp::Show { config, .. } => config.clone(),
    };
    let Some(cfg) = load_or_print(&config) else {
        return 2;
    };
    let Some(sc) = &cfg.store else {
        eprintln!(
            "obmguard queue: {} has no [store]: there is no queue (add [store] path = \"/var/lib/obmguard\")",
            config.display()
        );
        return 2;
    };
    let store = match crate::store::open(sc) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("obmguard queue: {e}");
            return 2;
        }
    };
    let Some(runtime) = command_runtime("queue") else {
        return 2;
    };
    let store = store.as_ref();
    let result: Result<String, queue_ops::OpError> = runtime.block_on(async {
        match op {
            QueueOp::List { sel, format } => {
                let rows = queue_ops::list(store, &sel.selection()).await?;
                Ok(match format {
                    QueueFormat::Json => json(&rows),
                    QueueFormat::Table => queue_ops::table(&rows),
                })
            }
            QueueOp::Show {
                id, body, format, ..
            } => match queue_ops::show(store, id, body).await? {
                None => Err(queue_ops::OpError::Selection(format!("no message {id}"))),
                Some(d) => {
                    let mut out = match format {
                        QueueFormat::Json => json(&d),
                        QueueFormat::Table => queue_ops::table(std::slice::from_ref(&d.summary)),
                    };
                    if let Some(b) = &d.body {
                        out.push_str(&String::from_utf8_lossy(b));
                        out.push('\n');
                    } else if body {
                        out.push_str("(no body: a delivered message's body is pruned)\n");
                    }
                    Ok(out)
                }
            },
            QueueOp::Retry { sel } => changed(store, Change::Retry, &sel).await,
            QueueOp::Replay { sel } => changed(store, Change::Replay, &sel).await,
            QueueOp::Drop { sel } => changed(store, Change::Drop, &sel).await,
        }
    });
    match result {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("obmguard queue: {e}");
            1
        }
    }
}

async fn changed(
    store: &dyn crate::store::Store,
    change: crate::queue_ops::Change,
    sel: &crate::cli::QueueSelection,
) -> Result<String, crate::queue_ops::OpError> {
    let n = crate::queue_ops::change(store, change, &sel.selection()).await?;
    Ok(format!("{}: {n} message(s)\n", change.as_str()))
}

fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("\"{e}\""));
    s.push('\n');
    s
}

fn report(audit: &Path, format: crate::report::Format, out: Option<&Path>) -> i32 {
    let result = match out {
        None => crate::report::run(audit, format, &mut std::io::stdout().lock()),
        Some(path) => {
            // Written beside the target and renamed, so a browser never shows half a page.
            let tmp = path.with_extension("tmp");
            let written = std::fs::File::create(&tmp)
                .map(std::io::BufWriter::new)
                .map_err(|e| {
                    crate::report::ReportError::Write(std::io::Error::new(
                        e.kind(),
                        format!("cannot create {}: {e}", tmp.display()),
                    ))
                })
                .and_then(|mut f| crate::report::run(audit, format, &mut f))
                .and_then(|()| {
                    std::fs::rename(&tmp, path).map_err(|e| {
                        crate::report::ReportError::Write(std::io::Error::new(
                            e.kind(),
                            format!("cannot write {}: {e}", path.display()),
                        ))
                    })
                });
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            } else {
                println!("{}: written", path.display());
            }
            written
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("obmguard report: {e}");
            2
        }
    }
}

fn load_or_print(path: &Path) -> Option<Config> {
    match config::load(path) {
        Ok(c) => {
            for w in &c.warnings {
                eprintln!("  warning: {w}");
            }
            Some(c)
        }
        Err(p) => {
            eprint!("{p}");
            None
        }
    }
}

fn check(path: &Path) -> i32 {
    match load_or_print(path) {
        Some(c) => {
            println!(
                "{}: OK: {} route(s): {}",
                path.display(),
                c.routes.len(),
                route_summary(&c)
            );
            println!(
                "worst-case memory the limits allow: {} MiB (connections x {} KiB + in-flight messages x body, rewrite and answer)",
                c.worst_case_bytes() / (1024 * 1024),
                config::CONNECTION_BYTES / 1024
            );
            0
        }
        None => 1,
    }
}

fn route_summary(c: &Config) -> String {
    let mut routes: Vec<String> = c
        .routes
        .iter()
        .map(|r| {
            let queued = if r.delivery.queued() { ", queued" } else { "" };
            format!(
                "{} {} -> {} ({}{queued})",
                r.name,
                r.path,
                r.upstream.url,
                r.message.session_id.as_str()
            )
        })
        .collect();
    routes.sort();
    routes.join("; ")
}

/// The upgrade socket hands the listening sockets to whoever connects: its directory must
/// exist and be writable by no one but its owner (a world-writable directory such as /tmp
/// would let a local user bind the path first).
fn check_upgrade_sock(sock: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match sock.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(dir).map_err(|e| {
        format!(
            "its directory {} is not usable ({e}): create it, owned by obmguard's user with mode 0700 (the systemd unit's RuntimeDirectory=obmguard does), or pass another --upgrade-sock",
            dir.display()
        )
    })?;
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "its directory {} is writable by other users, so another user could receive the listening sockets: use a directory only obmguard's user can write, e.g. /run/obmguard",
            dir.display()
        ));
    }
    Ok(())
}

/// `serve`: run the proxy until SIGTERM (drain) or SIGINT; returns the process exit code.
/// Blocks the calling thread (pingora runs its own runtimes), so call it from a process of its
/// own, as `obmguard serve` and the demo's proxy child do.
pub fn serve(args: ServeArgs) -> i32 {
    let ServeArgs {
        config,
        upgrade,
        upgrade_sock,
    } = args;
    let path = config.as_path();
    let Some(cfg) = load_or_print(path) else {
        return 2;
    };
    if let Err(e) = check_upgrade_sock(Path::new(&upgrade_sock)) {
        eprintln!("obmguard: --upgrade-sock {upgrade_sock}: {e}");
        return 2;
    }
    if !upgrade {
        // pingora panics on a port it cannot bind: find out first and say so plainly.
        let admin = cfg.server.admin_listen.into_iter();
        for addr in cfg.server.listen.iter().copied().chain(admin) {
            if let Err(e) = std::net::TcpListener::bind(addr) {
                eprintln!("obmguard: cannot listen on {addr}: {e}");
                return 2;
            }
        }
    }
    let metrics = match Metrics::new() {
        Ok(m) => Arc::new(m),
        Err(e) => {
            eprintln!("obmguard: {e}");
            return 2;
        }
    };
    let listen = cfg.server.listen.clone();
    let admin_addr = cfg.server.admin_listen;
    let threads = cfg.server.threads;
    let drain_secs = cfg.timeouts.drain.as_secs_f64().ceil() as u64;
    let summary = route_summary(&cfg);
    let worst_mib = cfg.worst_case_bytes() / (1024 * 1024);
    let nroutes = cfg.routes.len();
    let rt = match Runtime::new(cfg, metrics) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("obmguard: {e}");
            return 2;
        }
    };

    let conf = ServerConf {
        threads,
        // Used by the graceful upgrade only; SIGTERM drains before pingora sees it.
        grace_period_seconds: Some(drain_secs),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock,
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    for addr in &listen {
        let name = addr.to_string();
        let filter = Arc::new(crate::accept::SourceFilter::new(
            name.clone(),
            rt.admitted.clone(),
            rt.metrics.clone(),
        ));
        let mut svc = Service::new(
            format!("obmguard {name}"),
            Listener::new(rt.clone(), name.clone(), filter.clone()),
        );
        // pingora puts a 64 KiB read buffer under every accepted socket by default; in front of
        // rustls, which reads whole records into its own buffer, it only costs memory (most of
        // an idle connection's footprint), so reads go straight to the socket. The write
        // buffer gathers an answer's TLS records (head and body) into one send; 512 bytes
        // hold the canonical Ack's (about 470), and every connection keeps it while idle
        // (pingora's default, 1,460, was 1 MB more per thousand idle connections). A larger
        // answer (a fault) goes out in two sends.
        let l4 = L4BufferSettings::new(0, ANSWER_WRITE_BUFFER);
        svc.add_listener(ListenerConfig::tcp(name.clone()).l4_buffer(l4));
        svc.set_connection_filter(filter);
        server.add_service(svc);
    }
    let mut ports: Vec<u16> = listen.iter().map(|a| a.port()).collect();
    if let Some(a) = admin_addr {
        let mut svc = Service::new(
            "obmguard admin".to_string(),
            crate::admin::Admin::new(rt.clone()),
        );
        svc.add_tcp(&a.to_string());
        server.add_service(svc);
        ports.push(a.port());
    }
    server.add_service(background_service(
        "ready probe",
        ReadyProbe {
            rt: rt.clone(),
            ports,
        },
    ));
    server.add_service(background_service(
        "reload",
        Reloader {
            rt: rt.clone(),
            config_file: path.to_path_buf(),
        },
    ));
    server.add_service(background_service(
        "deliveries",
        crate::delivery::Deliveries { rt: rt.clone() },
    ));
    server.add_service(background_service(
        "salesforce ranges refresh",
        crate::ranges_update::RangesRefresher {
            rt: rt.clone(),
            config_file: path.to_path_buf(),
        },
    ));

    let addrs: Vec<String> = listen.iter().map(|a| a.to_string()).collect();
    tracing::info!(
        listen = %addrs.join(", "),
        admin = %admin_addr.map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
        routes = nroutes,
        worst_case_memory_mib = worst_mib,
        "obmguard serving: {summary}"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainOnSignal { rt: rt.clone() }),
    });
    tracing::info!("obmguard stopped");
    rt.audit.flush();
    0
}

fn token(path: &Path, route: &str) -> i32 {
    let Some(cfg) = load_or_print(path) else {
        return 2;
    };
    let Some(r) = cfg.routes.by_name(route) else {
        eprintln!("obmguard token: no route named {route}");
        return 2;
    };
    let Some(oauth) = &r.oauth else {
        eprintln!("obmguard token: route {route} has no [oauth] table");
        return 2;
    };
    let Some(runtime) = command_runtime("token") else {
        return 2;
    };
    let broker = crate::token::TokenBroker::new(Arc::new(|_, _| {}));
    let source = broker.source(&oauth.settings);
    match runtime.block_on(source.fetch_once()) {
        Ok(t) => {
            println!("instance_url: {}", t.instance_url);
            println!(
                "issued_at: {}",
                t.issued_at_ms
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "-".into())
            );
            println!("token length: {}", t.access_token.len());
            0
        }
        Err(e) => {
            eprintln!("obmguard token: {e}");
            1
        }
    }
}
