//! The one-shot CLI: `backup-worker once | list | export | verify | space`.
//!
//! Everything lives under `--data-dir`: the Space key (`space.key`, generated on first use),
//! the local Space (`space/`), the embedded clock (`clock.redb`) and staging files. With
//! `--clock-url` the clock is a clock service instead, invoked with the Space key.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use clock_service::client::{ClockClient, Invoker};
use indicatif::{ProgressBar, ProgressStyle};
use proto::backup::{self as dag, BackupRef};
use proto::principal::{Ed25519Signer, Verifier};
use proto::ucan::Delegation;
use reqwest::Url;

use crate::backup::{Job, Outcome, Progress, Settings, Worker};
use crate::clock::Clock;
use crate::error::Error;
use crate::identity::{IdentityConfig, IdentityResolver};
use crate::restore::Reader;
use crate::space::{LocalSpace, SpaceStore};
use crate::storacha_space::StorachaSpace;
use crate::xrpc::{XrpcClient, XrpcConfig};

/// Back up Bluesky accounts into a Space (a local directory standing in for a Storacha Space).
#[derive(Debug, Parser)]
#[command(name = "backup-worker", version)]
pub struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Common {
    /// Directory holding the Space key, the local Space and the embedded clock.
    #[arg(long, global = true, env = "BACKUP_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// PLC directory URL.
    #[arg(
        long,
        global = true,
        env = "BACKUP_PLC_URL",
        default_value = "https://plc.directory"
    )]
    plc: Url,
    /// PDS endpoint, overriding the one in the account's DID document.
    #[arg(long, global = true, env = "BACKUP_PDS_URL")]
    pds: Option<Url>,
    /// Clock service URL (default: the embedded clock in the data directory).
    #[arg(long, global = true, env = "BACKUP_CLOCK_URL", requires = "clock_did")]
    clock_url: Option<String>,
    /// The clock service's DID (did:key).
    #[arg(long, global = true, env = "BACKUP_CLOCK_DID")]
    clock_did: Option<String>,
    /// Back up into a Storacha Space instead of the local directory: a file holding the
    /// delegation from the Space to this worker's agent key (`backup-worker agent` prints its
    /// DID), in the text form `storacha delegation create <DID> --base64` prints. The service
    /// is Storacha's, or the one `STORACHA_SERVICE_URL`, `STORACHA_SERVICE_DID`,
    /// `STORACHA_RECEIPTS_URL` and `STORACHA_GATEWAY_URL` name.
    #[arg(long, global = true, env = "BACKUP_STORACHA_PROOF")]
    storacha_proof: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Back up one account now.
    Once {
        /// Handle or DID.
        #[arg(long)]
        account: String,
        /// Backup key (default: now, as 2025-03-12T15:13:59.958Z); the same key twice is the
        /// same backup.
        #[arg(long)]
        key: Option<String>,
        /// App password, to back up preferences too (otherwise they are skipped).
        #[arg(long, env = "BACKUP_APP_PASSWORD", hide_env_values = true)]
        app_password: Option<String>,
        /// Blob downloads in flight.
        #[arg(long, default_value_t = 8)]
        blob_concurrency: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// List the backups in the Space.
    List {
        /// Only this account (handle or DID).
        #[arg(long)]
        account: Option<String>,
    },
    /// Write one backup out as `repo.car` and `blobs/<cid>`.
    Export {
        /// Handle or DID.
        #[arg(long)]
        account: String,
        /// Backup key, or `latest`.
        #[arg(long, default_value = "latest")]
        backup: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-verify a stored backup end to end.
    Verify {
        /// Handle or DID.
        #[arg(long)]
        account: String,
        /// Backup key, or `latest`.
        #[arg(long, default_value = "latest")]
        backup: String,
    },
    /// Print the local Space's DID (generating its key on first use).
    Space,
    /// Print the DID of this worker's agent key, the one a Storacha Space delegates to
    /// (generating it on first use).
    Agent,
}

/// Exit status for an error: 75 (EX_TEMPFAIL) when retrying can help, 1 otherwise.
pub fn exit_code(e: &Error) -> i32 {
    match e.disposition() {
        crate::xrpc::Disposition::Retry => 75,
        crate::xrpc::Disposition::Permanent => 1,
    }
}

/// Runs the CLI.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let c = &cli.common;
    std::fs::create_dir_all(&c.data_dir).map_err(|e| Error::io("create", &c.data_dir, e))?;
    match cli.command {
        Command::Space => {
            println!(
                "{}",
                key_file(&c.data_dir.join("space.key"), "Space")?.did()
            );
            return Ok(());
        }
        Command::Agent => {
            println!(
                "{}",
                key_file(&c.data_dir.join("agent.key"), "agent")?.did()
            );
            return Ok(());
        }
        _ => {}
    }
    // A local setup (PLC or PDS on loopback over http) is allowed plain http and .test handles.
    let insecure = [Some(&c.plc), c.pds.as_ref()]
        .into_iter()
        .flatten()
        .any(is_local);
    let xrpc = XrpcClient::new(XrpcConfig::default()).map_err(|source| Error::Pds {
        call: "client".into(),
        source,
    })?;
    let identity = IdentityResolver::new(
        xrpc.clone(),
        IdentityConfig {
            plc_url: c.plc.clone(),
            handle_resolver: c.pds.clone(),
            allow_insecure: insecure,
        },
    );
    match &c.storacha_proof {
        Some(path) => {
            let agent_key = key_file(&c.data_dir.join("agent.key"), "agent")?;
            let text = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
            let invalid = |e: &dyn std::fmt::Display| {
                Error::InvalidJob(format!("--storacha-proof {}: {e}", path.display()))
            };
            let proofs = vec![Delegation::parse_proof_text(&text).map_err(|e| invalid(&e))?];
            let agent = storacha::Agent::from_proof_text(agent_key.clone(), &text)
                .map_err(|e| invalid(&e))?;
            let space_did = agent.space().to_owned();
            let config = storacha::Config::from_vars(|k| std::env::var(k).ok());
            let client = storacha::Client::new(config, agent).map_err(|e| invalid(&e))?;
            let space = Arc::new(StorachaSpace::new(client));
            let ctx = Context {
                common: c,
                space,
                space_did,
                signer: agent_key,
                proofs,
                xrpc,
                identity,
            };
            run_with(cli.command, ctx).await
        }
        None => {
            let signer = key_file(&c.data_dir.join("space.key"), "Space")?;
            let space = Arc::new(LocalSpace::open(c.data_dir.join("space")).await?);
            let ctx = Context {
                common: c,
                space,
                space_did: signer.did().to_owned(),
                signer,
                proofs: Vec::new(),
                xrpc,
                identity,
            };
            run_with(cli.command, ctx).await
        }
    }
}

/// What every subcommand works with, whichever Space it is.
struct Context<'a, S> {
    common: &'a Common,
    space: Arc<S>,
    space_did: String,
    /// The key invoking the clock service: the Space's own, or the agent's with `proofs`.
    signer: Ed25519Signer,
    proofs: Vec<Delegation>,
    xrpc: XrpcClient,
    identity: IdentityResolver,
}

async fn run_with<S: SpaceStore>(command: Command, ctx: Context<'_, S>) -> Result<(), Error> {
    let Context {
        common: c,
        space,
        space_did,
        signer,
        proofs,
        xrpc,
        identity,
    } = ctx;
    let clock = match (&c.clock_url, &c.clock_did) {
        (Some(url), Some(did)) => {
            let service = Verifier::parse(did)
                .map_err(|e| Error::InvalidJob(format!("--clock-did {did}: {e}")))?;
            Clock::remote(
                ClockClient::new(url.clone(), service),
                Invoker {
                    issuer: signer.clone(),
                    clock: space_did.clone(),
                    proofs,
                },
            )
        }
        _ => Clock::embedded(&c.data_dir.join("clock.redb")).await?,
    };
    let resolve = |account: String| {
        let identity = identity.clone();
        async move {
            if account.starts_with("did:") {
                return Ok(account);
            }
            identity
                .resolve(&account)
                .await
                .map(|i| i.did)
                .map_err(|source| Error::Identity { account, source })
        }
    };

    match command {
        Command::Space | Command::Agent => Ok(()),
        Command::Once {
            account,
            key,
            app_password,
            blob_concurrency,
            quiet,
        } => {
            let mut settings = Settings::new(c.data_dir.join("staging"));
            settings.pds_override = c.pds.clone();
            settings.blob_concurrency = blob_concurrency;
            let key = match key {
                Some(k) => k,
                None => dag::backup_key(now_millis())?,
            };
            let access_token = match app_password {
                Some(password) => {
                    let ident =
                        identity
                            .resolve(&account)
                            .await
                            .map_err(|source| Error::Identity {
                                account: account.clone(),
                                source,
                            })?;
                    let pds = c.pds.clone().unwrap_or(ident.pds);
                    Some(
                        xrpc.create_session(&pds, &ident.did, &password)
                            .await
                            .map_err(|source| Error::Pds {
                                call: "createSession".into(),
                                source,
                            })?,
                    )
                }
                None => {
                    eprintln!("note: no --app-password, so preferences are not backed up");
                    None
                }
            };
            let worker = Worker::new(xrpc.clone(), identity.clone(), space, clock, settings);
            let job = Job {
                account,
                space: space_did.clone(),
                key,
                access_token,
            };
            eprintln!("space {space_did}");
            let progress = Arc::new(Progress::default());
            let bar = (!quiet && std::io::stderr().is_terminal()).then(|| spawn_bar(&progress));
            let started = Instant::now();
            let outcome = worker.run(&job, &progress).await;
            if let Some((bar, task)) = bar {
                task.abort();
                bar.finish_and_clear();
            }
            print_outcome(&outcome?, started.elapsed());
            Ok(())
        }
        Command::List { account } => {
            let did = match account {
                Some(a) => Some(resolve(a).await?),
                None => None,
            };
            let reader = Reader::new(space, clock, space_did);
            let listings = reader.list(did.as_deref()).await?;
            if listings.is_empty() {
                println!("no backups");
            }
            println!(
                "{:<24}  {:<13}  {:>8}  {:>6}  {:>10}  {:>10}  {:<}",
                "time", "rev", "records", "blobs", "new", "total", "account / commit"
            );
            for l in listings {
                println!(
                    "{:<24}  {:<13}  {:>8}  {:>6}  {:>10}  {:>10}  {} {}",
                    l.key,
                    l.rev,
                    l.records,
                    l.blobs,
                    human(l.bytes_new),
                    human(l.bytes_total),
                    l.did,
                    l.commit
                );
                for w in &l.warnings {
                    println!("    warning: {w}");
                }
            }
            Ok(())
        }
        Command::Export {
            account,
            backup,
            out,
        } => {
            let did = resolve(account).await?;
            let reader = Reader::new(space, clock, space_did);
            let e = reader.export(&did, backup_ref(&backup), &out).await?;
            println!(
                "exported backup {} of {did}: repo.car (commit {}, {} blocks, {} records) and {} blobs, {} in {}",
                e.key,
                e.commit,
                e.blocks,
                e.records,
                e.blobs,
                human(e.bytes),
                out.display()
            );
            Ok(())
        }
        Command::Verify { account, backup } => {
            let ident = identity.resolve(&account).await;
            let (did, key) = match ident {
                Ok(i) => (i.did, Some(i.signing_key)),
                Err(e) if account.starts_with("did:") => {
                    eprintln!(
                        "warning: cannot resolve {account} ({e}); the commit signature is not checked"
                    );
                    (account, None)
                }
                Err(source) => return Err(Error::Identity { account, source }),
            };
            let reader = Reader::new(space, clock, space_did);
            let v = reader.verify(&did, backup_ref(&backup), key).await?;
            println!(
                "backup {} of {did} verified: commit {} (signature {}), {} MST nodes, {} records, {} blobs ({})",
                v.key,
                v.commit,
                if v.signature_checked {
                    "valid"
                } else {
                    "not checked"
                },
                v.nodes,
                v.records,
                v.blobs,
                human(v.blob_bytes)
            );
            Ok(())
        }
    }
}

fn backup_ref(which: &str) -> BackupRef<'_> {
    if which == "latest" {
        BackupRef::Latest
    } else {
        BackupRef::Key(which)
    }
}

fn is_local(url: &Url) -> bool {
    url.scheme() == "http"
        && matches!(
            url.host_str(),
            Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
        )
}

/// Loads a key (the local Space's, or the agent's), generating it (mode 0600) on first use.
fn key_file(path: &Path, what: &str) -> Result<Ed25519Signer, Error> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ed25519Signer::parse(text.trim())
            .map_err(|e| Error::InvalidJob(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let signer = Ed25519Signer::generate()
                .map_err(|e| Error::InvalidJob(format!("generating a key: {e}")))?;
            write_private(path, &signer.format())?;
            eprintln!(
                "generated the {what} key in {}: {}",
                path.display(),
                signer.did()
            );
            Ok(signer)
        }
        Err(e) => Err(Error::io("read", path, e)),
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io("create", path, e))?;
    f.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("write", path, e))
}

fn spawn_bar(progress: &Arc<Progress>) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    use std::sync::atomic::Ordering::Relaxed;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    let p = progress.clone();
    let b = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            b.set_message(format!(
                "repo blocks {} · blobs {}/{} · {} downloaded · {} blocks stored",
                p.repo_blocks.load(Relaxed),
                p.blobs_done.load(Relaxed),
                p.blobs_total.load(Relaxed),
                human(p.bytes.load(Relaxed)),
                p.blocks_stored.load(Relaxed),
            ));
            b.tick();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (bar, task)
}

fn print_outcome(outcome: &Outcome, elapsed: Duration) {
    match outcome {
        Outcome::Unchanged {
            did,
            latest,
            commit,
            pds_requests,
        } => println!(
            "unchanged: {did} is still at commit {commit} (backup {latest}); nothing recorded ({pds_requests} PDS requests, {:.0} ms)",
            elapsed.as_secs_f64() * 1000.0
        ),
        Outcome::AlreadyDone { did, key, backup } => {
            println!("already done: backup {key} of {did} is {backup}");
        }
        Outcome::Stored(s) => {
            println!(
                "backed up {} at {} (rev {}, commit {}) in {:.2} s",
                s.did,
                s.key,
                s.rev,
                s.commit,
                elapsed.as_secs_f64()
            );
            println!(
                "  repo: {} blocks, {} downloaded{}; {} records walked, {} subtrees already in the Space",
                s.repo_blocks,
                human(s.repo_bytes),
                s.since
                    .as_ref()
                    .map(|r| format!(" since rev {r}"))
                    .unwrap_or_default(),
                s.records_walked,
                s.subtrees_pruned
            );
            println!(
                "  blobs: {} in the account, {} downloaded ({})",
                s.blobs,
                s.blobs_downloaded,
                human(s.blob_bytes)
            );
            println!(
                "  preferences: {}",
                if s.preferences { "stored" } else { "skipped" }
            );
            println!(
                "  stored: {} new blocks ({}) in {} shard(s); backup {}, clock event {}",
                s.blocks_stored,
                human(s.bytes_stored),
                s.shards.len(),
                s.backup,
                s.event
            );
            println!("  PDS requests: {}", s.pds_requests);
            for w in &s.warnings {
                println!("  warning: {w}");
            }
        }
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
