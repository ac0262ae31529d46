use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cfg = rdb_pd::PdConfig::parse();
    rdb_storage::daemon::init_tracing(cfg.log_format);
    match rdb_pd::run(cfg, rdb_storage::daemon::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdb-pd: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
