//! `rdb-cli`: the FlareDB command line.
//!
//! Layout: `cli` (flags and subcommands), `output` (text and JSON output,
//! failures and exit codes), `cmd` (one function per command, grouped:
//! `keys`, `range`, `cas`, `cluster`, `pd`). This file connects and dispatches.

mod cli;
mod cmd;
mod output;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rdb_client::{Client, ClientConfig};

use cli::{Cli, Command, PdCommand};
use output::{Failure, Out, EXIT_OTHER, EXIT_UNREACHABLE};

async fn run(cli: Cli) -> Result<(), Failure> {
    let out = Out {
        json: cli.json,
        hex: cli.hex,
    };
    let endpoints: Vec<String> = cli
        .pd
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let tls = match (&cli.ca, &cli.tls_cert) {
        (Some(ca), _) => Some(
            rdb_client::ClientTls::from_pem_files(
                ca,
                cli.tls_cert.as_deref(),
                cli.tls_key.as_deref(),
            )
            .map_err(|e| Failure(2, format!("TLS: {e}")))?,
        ),
        (None, Some(_)) => {
            return Err(Failure(
                2,
                "--cert needs --ca (the CA that signs the servers' certificates)".into(),
            ))
        }
        (None, None) => None,
    };
    if let Command::Pd(c) = cli.command {
        let pd = cmd::pd::Pd {
            endpoints,
            tls,
            timeout: Duration::from_secs(cli.timeout),
        };
        return match c {
            PdCommand::Members => cmd::pd::members(&pd, &out).await,
            PdCommand::AddMember { name, address } => {
                cmd::pd::add_member(&pd, &out, name, address).await
            }
            PdCommand::RemoveMember { name } => cmd::pd::remove_member(&pd, &out, name).await,
        };
    }
    let config = ClientConfig {
        retry_deadline: Duration::from_secs(cli.timeout),
        connect_timeout: Duration::from_secs(cli.timeout.clamp(1, 3)),
        tls,
        ..Default::default()
    };
    let client = Client::connect_with(endpoints, config)
        .await
        .map_err(|e| match e {
            e if e.is_unavailable() => Failure(
                EXIT_UNREACHABLE,
                format!("cannot reach PD at {}: {e}", cli.pd),
            ),
            e => Failure::from(e),
        })?;
    match cli.command {
        Command::Get { key, stale } => cmd::keys::get(&client, &out, key, stale).await?,
        Command::Put { key, value } => cmd::keys::put(&client, &out, key, value).await?,
        Command::Delete { key } => cmd::keys::delete(&client, &out, key).await?,
        Command::BatchGet { keys } => cmd::keys::batch_get(&client, &out, keys).await?,
        Command::BatchPut { pairs } => cmd::keys::batch_put(&client, &out, pairs).await?,
        Command::BatchDelete { keys } => cmd::keys::batch_delete(&client, &out, keys).await?,
        Command::DeleteRange { start, end } => {
            cmd::range::delete_range(&client, &out, start, end).await?
        }
        Command::Scan {
            start,
            end,
            limit,
            reverse,
            keys_only,
        } => cmd::range::scan(&client, &out, start, end, limit, reverse, keys_only).await?,
        Command::Cas(a) => cmd::cas::cas(&client, &out, a).await?,
        Command::Tso { count } => cmd::cluster::tso(&client, &out, count).await?,
        Command::Stores => cmd::cluster::stores(&client, &out).await?,
        Command::Regions => cmd::cluster::regions(&client, &out).await?,
        Command::Operators => cmd::cluster::operators(&client, &out).await?,
        Command::Split { key } => cmd::cluster::split(&client, &out, key).await?,
        Command::Check { region, wait_secs } => {
            cmd::cluster::check(&client, &out, region, wait_secs).await?
        }
        Command::Operator(op) => cmd::cluster::operator(&client, &out, op).await?,
        Command::Pd(_) => unreachable!("handled before connecting"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rdb-cli: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_OTHER);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            eprintln!("rdb-cli: {msg}");
            ExitCode::from(code)
        }
    }
}
