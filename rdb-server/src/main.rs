use clap::Parser;

/// jemalloc instead of glibc's malloc: a store allocates and frees small
/// buffers on every request, on several threads (TiKV uses jemalloc for
/// the same reason).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
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
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if cfg.worker_threads > 0 {
        runtime.worker_threads(cfg.worker_threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rdb-server: error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(cfg))
}

async fn serve(cfg: rdb_server::ServerSettings) -> std::process::ExitCode {
    rdb_daemon::process::init_tracing(cfg.log_format);
    tracing::info!(
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "runtime started"
    );
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
