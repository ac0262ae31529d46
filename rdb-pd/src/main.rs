use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = rdb_pd::PdArgs::parse();
    if args.print_default_config {
        print!("{}", rdb_pd::config::DEFAULT_CONFIG);
        return std::process::ExitCode::SUCCESS;
    }
    let cfg = match args.resolve() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("rdb-pd: error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    rdb_daemon::process::init_tracing(cfg.log_format);
    if let Err(e) = rdb_daemon::process::failpoints("rdb-pd") {
        eprintln!("rdb-pd: error: {e}");
        return std::process::ExitCode::from(2);
    }
    match rdb_pd::run(cfg, rdb_daemon::process::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdb-pd: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
