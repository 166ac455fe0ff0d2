//! The `switchboard-gateway` binary: load config, set up logs, run until SIGTERM/SIGINT.

use std::{
    io::{self, Write},
    process::ExitCode,
};

use switchboard_gateway::{
    config::{self, LoadError, Startup},
    telemetry, Config, Gateway,
};

/// sysexits' EX_CONFIG-ish "usage" code: bad configuration, nothing was started.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let env = |name: &std::ffi::OsStr| std::env::var_os(name);
    let read = |path: &std::path::Path| std::fs::read_to_string(path);
    let loaded = match config::load(std::env::args_os(), &env, &read) {
        Ok(Startup::PrintDefaultConfig(text)) => return print(&text),
        Ok(Startup::Loaded(loaded)) => loaded,
        Err(LoadError::Cli(e)) => {
            // Help, version and command-line mistakes as clap prints them, with its exit
            // codes; a closed stdout (`--help | head -1`) is not an error.
            if let Err(io) = e.print() {
                if io.kind() != io::ErrorKind::BrokenPipe {
                    complain(&format!("cannot print: {io}"));
                }
            }
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
        Err(e) => {
            complain(&e.to_string());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = loaded.config.validate() {
        complain(&e.to_string());
        return ExitCode::from(EXIT_CONFIG);
    }
    if loaded.config.check_config {
        return print(&loaded.effective_toml());
    }
    let config = loaded.config;
    telemetry::init(config.log_format, &config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            complain(&format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            complain(&format!("{e:#}"));
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

/// Prints `text` on stdout and exits 0. `println!` would panic when the reader has gone
/// (`--check-config | head -5`); a reader that stopped early got what it wanted, so a broken
/// pipe is success.
fn print(text: &str) -> ExitCode {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            complain(&format!("cannot print: {e}"));
            ExitCode::FAILURE
        }
    }
}

/// One line on stderr; never panics, even when stderr is closed.
fn complain(message: &str) {
    let _ = writeln!(io::stderr().lock(), "switchboard-gateway: {message}");
}
