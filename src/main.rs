//! The `raftkv` binary: see `raftkv --help`.

use std::process::ExitCode;

/// mimalloc instead of glibc malloc: under write load the node allocates
/// per request (HTTP parsing, entries, sled nodes), and glibc's allocator was
/// about a tenth of its CPU time (see README, "Benchmarks").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    raftkv::cli::main().await
}
