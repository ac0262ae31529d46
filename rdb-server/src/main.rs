use clap::Parser;

/// jemalloc instead of glibc's malloc: a store allocates and frees small
/// buffers on every request, on several threads (TiKV uses jemalloc for
/// the same reason).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = rdb_server::ServerArgs::parse();
    if args.print_default_config {
        print!("{}", rdb_server::config::DEFAULT_CONFIG);
        return std::process::ExitCode::SUCCESS;
    }
    let cfg = match args.resolve() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("rdb-server: error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    rdb_daemon::process::init_tracing(cfg.log_format);
    if let Err(e) = rdb_daemon::process::failpoints("rdb-server") {
        eprintln!("rdb-server: error: {e}");
        return std::process::ExitCode::from(2);
    }
    match rdb_server::run(cfg, rdb_daemon::process::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdb-server: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
