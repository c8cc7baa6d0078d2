//! obmguard's entry point: parse the command line, set up logging, run the subcommand.

use clap::Parser;

// jemalloc returns memory after bursts of connections (glibc kept the peak: 63 -> 115 MB over
// four waves of 1,000 idle mTLS connections, against 62 -> 68 MB with jemalloc).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (the `_RJEM_MALLOC_CONF` environment variable can
/// still override them). `tcache_max:65536`: each thread keeps freed blocks of up to 64 KiB
/// for reuse, not only up to the default 32 KiB. pingora's HTTP/1 client takes a 64 KiB
/// buffer for every answer's body, and a large notification is read and rewritten in buffers
/// of tens of KiB: without the cache, each is a trip to the arena and back (3,300
/// instructions of a 1 KB request's 137,700, callgrind).
#[cfg(not(target_env = "msvc"))]
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 17] = b"tcache_max:65536\0";

fn main() {
    let cli = obmguard::cli::Cli::parse();
    obmguard::commands::init_logging(cli.log_format);
    let code = obmguard::commands::run(cli.command);
    obmguard::commands::finish_logging();
    std::process::exit(code);
}
