//! The command line of `obmguard-demo`: `demo` (the default), `sample-receiver`, and the hidden
//! `run-proxy` the demo starts its proxy with.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use obmguard::cli::{LogFormat, ServeArgs};

/// The hidden subcommand that runs the proxy: `obmguard serve`, from the obmguard library.
pub const RUN_PROXY: &str = "run-proxy";

#[derive(Debug, Parser)]
#[command(
    name = "obmguard-demo",
    version,
    about = "obmguard's demonstration and sample legacy receiver (not the proxy: that is `obmguard`)",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// What to run; `demo` when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The arguments of `demo`, which runs when no subcommand is given.
    #[command(flatten)]
    pub demo: DemoArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Leave everything running and print curl lines to try.
    #[arg(long)]
    pub keep_running: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a self-contained demonstration on loopback: throw-away PKI, a sample legacy
    /// receiver, a token endpoint, the proxy, and notifications sent the way Salesforce does.
    Demo(DemoArgs),
    /// Run the sample legacy receiver (answers Ack, logs the SessionId it received).
    SampleReceiver {
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
    },
    /// The proxy the demo starts as its child process: `obmguard serve`, built into this binary
    /// so the demo needs no other executable. Not for deployments: run `obmguard serve`.
    #[command(name = RUN_PROXY, hide = true)]
    RunProxy(ServeArgs),
}

impl Cli {
    /// The subcommand to run, `demo` when none was given.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Demo(self.demo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("obmguard-demo").chain(args.iter().copied()))
            .unwrap()
            .into_command()
    }

    #[test]
    fn no_subcommand_runs_the_demo() {
        assert!(matches!(
            parse(&[]),
            Command::Demo(DemoArgs {
                keep_running: false
            })
        ));
        assert!(matches!(
            parse(&["--keep-running"]),
            Command::Demo(DemoArgs { keep_running: true })
        ));
        assert!(matches!(
            parse(&["demo", "--keep-running"]),
            Command::Demo(DemoArgs { keep_running: true })
        ));
    }

    #[test]
    fn run_proxy_takes_the_arguments_of_obmguard_serve() {
        let Command::RunProxy(args) = parse(&[RUN_PROXY, "--config", "x.toml"]) else {
            panic!("not run-proxy");
        };
        assert_eq!(args.config, std::path::Path::new("x.toml"));
        assert!(!args.upgrade);
    }

    #[test]
    fn run_proxy_is_hidden_from_help() {
        use clap::CommandFactory;
        let help = <Cli as CommandFactory>::command().render_help().to_string();
        assert!(help.contains("sample-receiver"), "{help}");
        assert!(!help.contains(RUN_PROXY), "{help}");
    }
}
