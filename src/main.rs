//! obmguard's entry point: parse the command line, set up logging, run the subcommand.

use clap::Parser;

fn main() {
    let cli = obmguard::cli::Cli::parse();
    obmguard::commands::init_logging(cli.log_format);
    std::process::exit(obmguard::commands::run(cli.command));
}
