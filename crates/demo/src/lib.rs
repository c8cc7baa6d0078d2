//! `obmguard-demo`: see obmguard work without deploying it, and the sample legacy receiver
//! docker-compose.yml puts behind it.
//!
//! - `obmguard-demo` (or `obmguard-demo demo`): [`demo`], a guided tour on loopback;
//! - `obmguard-demo sample-receiver`: [`sample_receiver`], a receiver that answers Ack and logs;
//! - `obmguard-demo run-proxy` (hidden): `obmguard serve` from the obmguard library, the proxy
//!   the demo starts as its child process, so the demo needs no other executable.
//!
//! A crate of its own so that the `obmguard` binary carries none of this, nor the test kit it is
//! built from. It is a library with a thin binary so that the end-to-end tests can check the
//! commands docker-compose.yml runs against [`cli::Cli`].
#![forbid(unsafe_code)]

pub mod cli;
mod demo;
mod sample_receiver;

use clap::Parser;

use cli::{Cli, Command};

/// The whole program: parse the command line, set up logging, run; returns the exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    obmguard::commands::init_logging(cli.log_format);
    let code = match cli.into_command() {
        Command::Demo(args) => demo::run(args.keep_running),
        Command::SampleReceiver { listen } => sample_receiver::run(listen),
        Command::RunProxy(args) => obmguard::commands::serve(args),
    };
    obmguard::commands::finish_logging();
    code
}

fn runtime(command: &str) -> Option<tokio::runtime::Runtime> {
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    built
        .map_err(|e| eprintln!("obmguard-demo {command}: cannot start the async runtime: {e}"))
        .ok()
}

/// Resolves on Ctrl-C, or SIGTERM on Unix.
async fn stop_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}
