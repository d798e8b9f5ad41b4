//! `clock-service`: tracing, configuration, build, serve, drain. Everything else is in the
//! library.

use std::process::ExitCode;

use clap::Parser as _;
use clock_service::config::{Command, LogFormat, ProvisionAction};
use clock_service::server::{self, App};
use clock_service::store::{AnyStore, ClockStore};
use clock_service::{Config, Error};

/// mimalloc rather than glibc's malloc: every request allocates and frees on whichever runtime
/// thread runs it, and glibc's arena locks showed up as futex waits in profiles (see
/// BENCHMARKS.md, clock-service).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for a configuration error (sysexits `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

fn init_tracing(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: escape codes in a log file or a pod's log stream garble it.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    init_tracing(&config.log, config.log_format);
    // The control runtime: signals, accepting, admin, commands. Requests are served by the
    // worker threads' own runtimes (`clock_service::workers`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ (Error::Config(_) | Error::Key { .. })) => {
            tracing::error!("{e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), Error> {
    match config.command.clone().unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Did => {
            let (signer, created) = server::load_signer(&config)?;
            announce_key(&signer, created.as_deref());
            println!("{}", signer.did());
            Ok(())
        }
        Command::Provision { action } => {
            let store = AnyStore::open(&config.store).await?;
            match action {
                ProvisionAction::Add { spaces } => {
                    for s in spaces {
                        store.set_provisioned(&s, true).await?;
                        println!("added {s}");
                    }
                }
                ProvisionAction::Remove { spaces } => {
                    for s in spaces {
                        store.set_provisioned(&s, false).await?;
                        println!("removed {s}");
                    }
                }
                ProvisionAction::List => {
                    for s in store.provisioned().await? {
                        println!("{s}");
                    }
                }
            }
            Ok(())
        }
    }
}

fn announce_key(signer: &proto::principal::Ed25519Signer, created: Option<&std::path::Path>) {
    if let Some(path) = created {
        eprintln!(
            "Generated the service key (kept in {}, owner-only). Its DID is {}.\n\
             To run replicas or move to Redis, set CLOCK_PRIVATE_KEY to:\n{}",
            path.display(),
            signer.did(),
            signer.format()
        );
    }
}

async fn serve(config: Config) -> Result<(), Error> {
    let (signer, created) = server::load_signer(&config)?;
    announce_key(&signer, created.as_deref());
    if config.provisioning == clock_service::config::ProvisioningMode::Off {
        tracing::warn!("provisioning check is off: any DID can use this clock service");
    }
    let app = App::build(&config, signer).await?;
    let listener = server::bind(config.listen, "listen on").await?;
    let admin = server::bind(config.admin_listen, "listen (admin) on").await?;
    // Signal handlers first: from the "ready" line on, SIGTERM drains.
    let shutdown = server::shutdown_signal();
    // The bound addresses, not the configured ones: with port 0 (tests, sidecars) the kernel
    // picks the port and this line is the only place it is told.
    let bound = |l: &tokio::net::TcpListener, configured: std::net::SocketAddr| {
        l.local_addr().unwrap_or(configured)
    };
    tracing::info!(
        did = app.did(),
        store = app.store().kind(),
        listen = %bound(&listener, config.listen),
        admin = %bound(&admin, config.admin_listen),
        "clock service ready"
    );
    app.serve(listener, admin, shutdown).await
}
