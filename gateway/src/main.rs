//! The `switchboard-gateway` binary: parse config, set up logs, run until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use switchboard_gateway::{telemetry, Config, Gateway};

/// sysexits' EX_CONFIG-ish "usage" code: bad configuration, nothing was started.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("switchboard-gateway: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if config.check_config {
        println!("{config:#?}");
        return ExitCode::SUCCESS;
    }
    telemetry::init(config.log_format, &config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("switchboard-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let gateway = Gateway::bind(config).await?;
    // One line on stdout with the bound addresses, for scripts and tests using port 0.
    let admin = gateway
        .admin_addr()
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    println!(
        "switchboard-gateway listening client={} backend={} node={} admin={admin}",
        gateway.client_addr(),
        gateway.backend_addr(),
        gateway.node_id()
    );
    gateway.run(shutdown_signal()).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
