//! The `raftkv` binary: see `raftkv --help`.

use std::process::ExitCode;
use std::time::Duration;

/// mimalloc instead of glibc malloc: under write load the node allocates
/// per request (HTTP parsing, entries, sled nodes), and glibc's allocator was
/// about a tenth of its CPU time (see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long the exit waits for blocking tasks still running when the
/// command is done. Dropping a runtime waits for them without limit, and a
/// DNS lookup that the resolver never answers (a compose service name seen
/// from the host) kept a finished CLI command alive for its 5 s timeout.
/// Nothing that matters is left by then: the node flushes before `run`
/// returns, and every client command has its answer.
const EXIT_GRACE: Duration = Duration::from_millis(500);

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(raftkv::cli::main());
    runtime.shutdown_timeout(EXIT_GRACE);
    code
}
