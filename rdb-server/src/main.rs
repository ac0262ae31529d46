use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cfg = rdb_server::ServerConfig::parse();
    rdb_storage::daemon::init_tracing(cfg.log_format);
    match rdb_server::run(cfg, rdb_storage::daemon::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rdb-server: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
