//! The `raftkv` binary: see `raftkv --help`.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    raftkv::cli::main().await
}
