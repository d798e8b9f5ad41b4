//! `backup-worker`: see [`backup_worker::cli`].

use clap::Parser;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = backup_worker::cli::Cli::parse();
    if let Err(e) = backup_worker::cli::run(cli).await {
        eprintln!("error: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            eprintln!("  caused by: {s}");
            source = s.source();
        }
        eprintln!("({}; {:?})", e.name(), e.disposition());
        std::process::exit(backup_worker::cli::exit_code(&e));
    }
}
