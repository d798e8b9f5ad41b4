//! The service's one typed configuration, read from the environment (every variable is also a
//! flag; `clock-service --help` lists them). Nothing else in the crate reads the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Default listen address of the ucanto endpoint.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default listen address of the admin endpoint (`/metrics`, `/livez`, `/readyz`).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default store: one embedded redb file, so a laptop needs no servers.
pub const DEFAULT_STORE: &str = "redb:./data/clock.redb";
/// Largest request body accepted. A clock invocation with its event, a few ancestors and a
/// delegation chain is a few KiB; 1 MiB leaves room for long ancestor chains while keeping a
/// flood of large bodies cheap to refuse.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most blocks one request may carry (each costs a hash check and, if kept, a store write).
pub const DEFAULT_MAX_BLOCKS: usize = 2048;
/// Longest delegation chain accepted: real chains are 1–4 links; 16 bounds validation work.
pub const DEFAULT_MAX_PROOF_DEPTH: usize = 16;
/// Most event blocks one `clock/advance` may read from the store while merging (bounds the work
/// an old or concurrent event can cause on a long history).
pub const DEFAULT_MAX_ADVANCE_READS: usize = 100_000;
/// Most requests in flight before new ones are shed with 503.
pub const DEFAULT_MAX_CONCURRENCY: usize = 1024;
/// Most invocation signatures in one verification batch.
pub const DEFAULT_SIGNATURE_BATCH: usize = 64;
/// Proof signatures remembered across requests (about 4 MiB when full): clients send the same
/// delegation chain with every invocation, and each link costs an Ed25519 verification.
pub const DEFAULT_SIGNATURE_CACHE: usize = proto::validator::BoundedSignatureCache::DEFAULT_ENTRIES;
/// Storacha's upload-service identities: current and legacy DID, both backed by this key. Their
/// `ucan/attest` delegations let did:mailto account chains be accepted.
pub const DEFAULT_AUTHORITIES: &str = "did:web:up.storacha.network=did:key:z6MkqdncRZ1wj8zxCTDUQ8CRT8NQWd63T7mZRvZUX8B7XDFi,did:web:web3.storage=did:key:z6MkqdncRZ1wj8zxCTDUQ8CRT8NQWd63T7mZRvZUX8B7XDFi";

/// How to check that a clock is a provisioned Storacha Space before using it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProvisioningMode {
    /// No check (development).
    Off,
    /// The Space must be in the store's registry (added by the scheduler or `clock-service
    /// provision add`).
    Registry,
    /// Ask the Storacha upload service (`space/info`), with the delegations in
    /// `CLOCK_STORACHA_PROOFS`.
    Storacha,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// A trusted attestation authority: `did:web:…=did:key:…`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    /// The authority's DID (what `ucan/attest` delegations are issued with).
    pub did: String,
    /// The key that signs for it.
    pub key: String,
}

fn parse_authority(s: &str) -> Result<Authority, String> {
    let (did, key) = s
        .split_once('=')
        .ok_or_else(|| format!("expected DID=did:key:…, got {s:?}"))?;
    if !did.starts_with("did:") || !key.starts_with("did:key:") {
        return Err(format!("expected DID=did:key:…, got {s:?}"));
    }
    Ok(Authority {
        did: did.trim().to_string(),
        key: key.trim().to_string(),
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit in {s:?} (use ms, s or m)")),
    }
}

/// The clock service's configuration.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "clock-service",
    version,
    about = "UCAN-authorized Merkle clocks over ucanto (clock/head, clock/advance), one per Storacha Space."
)]
pub struct Config {
    /// Address of the ucanto endpoint (`POST /`).
    #[arg(long, env = "CLOCK_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Address of the admin endpoint (`/metrics`, `/livez`, `/readyz`).
    #[arg(long, env = "CLOCK_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,

    /// The service's Ed25519 key in ucanto's text format (`M…`, like w3clock's PRIVATE_KEY).
    /// With an embedded store and no key, one is generated on first run, printed, and kept in
    /// `clock.key` beside the store file.
    #[arg(long, env = "CLOCK_PRIVATE_KEY", hide_env_values = true)]
    pub private_key: Option<String>,

    /// The service's DID when it is a did:web wrapping the key (invocations must be addressed
    /// to it); default: the key's did:key.
    #[arg(long, env = "CLOCK_DID")]
    pub did: Option<String>,

    /// Where heads and event blocks live: `redb:<path>` (embedded) or `redis://host:port/db`
    /// (optionally `#<key prefix>`).
    #[arg(long, env = "CLOCK_STORE", default_value = DEFAULT_STORE)]
    pub store: String,

    /// Provisioning check before `clock/advance`.
    #[arg(long, env = "CLOCK_PROVISIONING", value_enum, default_value_t = ProvisioningMode::Off)]
    pub provisioning: ProvisioningMode,

    /// Also require provisioning for `clock/head`.
    #[arg(long, env = "CLOCK_PROVISIONING_HEAD", default_value_t = false)]
    pub provisioning_head: bool,

    /// How long a provisioning answer is cached (e.g. `300s`, `5m`).
    #[arg(long, env = "CLOCK_PROVISIONING_TTL", default_value = "300s", value_parser = parse_duration)]
    pub provisioning_ttl: Duration,

    /// The upload service `CLOCK_PROVISIONING=storacha` asks.
    #[arg(long, env = "CLOCK_STORACHA_URL", default_value = storacha::config::PRODUCTION_SERVICE_URL)]
    pub storacha_url: String,

    /// The upload service's DID (the audience of `space/info`).
    #[arg(long, env = "CLOCK_STORACHA_DID", default_value = storacha::config::PRODUCTION_SERVICE_DID)]
    pub storacha_did: String,

    /// Delegations (text form, as `storacha delegation create --base64` prints),
    /// comma-separated, granting this service's key (`clock-service did` prints it) `space/info`
    /// on the Spaces it serves, for `CLOCK_PROVISIONING=storacha`.
    #[arg(
        long,
        env = "CLOCK_STORACHA_PROOFS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub storacha_proofs: Vec<String>,

    /// Trusted `ucan/attest` authorities, comma-separated `did=did:key:…` pairs.
    #[arg(long, env = "CLOCK_AUTHORITIES", default_value = DEFAULT_AUTHORITIES, value_delimiter = ',', value_parser = parse_authority)]
    pub authorities: Vec<Authority>,

    /// Largest request body in bytes (larger is refused with 413 while reading).
    #[arg(long, env = "CLOCK_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Most blocks in one request.
    #[arg(long, env = "CLOCK_MAX_BLOCKS", default_value_t = DEFAULT_MAX_BLOCKS)]
    pub max_blocks: usize,

    /// Longest delegation chain.
    #[arg(long, env = "CLOCK_MAX_PROOF_DEPTH", default_value_t = DEFAULT_MAX_PROOF_DEPTH)]
    pub max_proof_depth: usize,

    /// Most event blocks one advance may read from the store.
    #[arg(long, env = "CLOCK_MAX_ADVANCE_READS", default_value_t = DEFAULT_MAX_ADVANCE_READS)]
    pub max_advance_reads: usize,

    /// How many verified proof signatures (UCAN CID and signer) to remember across requests, so
    /// a delegation chain sent with every invocation is verified once; 0 turns it off. Only
    /// successful checks of proofs are kept; expiry, revocation and capabilities are checked on
    /// every request.
    #[arg(long, env = "CLOCK_SIGNATURE_CACHE", default_value_t = DEFAULT_SIGNATURE_CACHE)]
    pub signature_cache: usize,

    /// Most invocation signatures verified together in one batch: the signatures of requests
    /// that arrive together share their curve arithmetic (same verdicts, less CPU). 0 or 1
    /// verifies each request's signature on its own, as it arrives.
    #[arg(long, env = "CLOCK_SIGNATURE_BATCH", default_value_t = DEFAULT_SIGNATURE_BATCH)]
    pub signature_batch: usize,

    /// Worker threads serving the ucanto listener, each with its own runtime, store connection
    /// and signature batches; connections are handed to the worker with the fewest open. 0 is
    /// one per CPU this process may use (the cgroup's CPU limit counts).
    #[arg(long, env = "CLOCK_WORKERS", default_value_t = 0)]
    pub workers: usize,

    /// Time limit for one request (e.g. `10s`).
    #[arg(long, env = "CLOCK_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Most requests in flight; more are shed with 503.
    #[arg(long, env = "CLOCK_MAX_CONCURRENCY", default_value_t = DEFAULT_MAX_CONCURRENCY)]
    pub max_concurrency: usize,

    /// How long SIGTERM waits for in-flight requests (keep below the pod's grace period).
    #[arg(long, env = "CLOCK_SHUTDOWN_GRACE", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "CLOCK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's `EnvFilter` syntax (e.g. `info`, `clock_service=debug`); an
    /// invalid filter falls back to `info`.
    #[arg(long, env = "CLOCK_LOG", default_value = "info")]
    pub log: String,

    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Commands besides serving.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Serve the clock (the default).
    Serve,
    /// Manage the registry of provisioned Spaces (for `CLOCK_PROVISIONING=registry`).
    Provision {
        /// The change to make.
        #[command(subcommand)]
        action: ProvisionAction,
    },
    /// Print the service's DID (and create its key in embedded mode).
    Did,
}

/// A change to the registry of provisioned Spaces.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum ProvisionAction {
    /// Add Spaces.
    Add {
        /// Space DIDs (did:key:…).
        #[arg(required = true)]
        spaces: Vec<String>,
    },
    /// Remove Spaces.
    Remove {
        /// Space DIDs.
        #[arg(required = true)]
        spaces: Vec<String>,
    },
    /// List the registry.
    List,
}

impl Config {
    /// Reads the configuration from the process's arguments and environment.
    pub fn from_env() -> Result<Self, clap::Error> {
        Self::try_parse()
    }

    /// Reads the configuration from explicit arguments and an explicit environment (tests).
    pub fn from_args_and_env<I, S>(args: I, env: &[(&str, &str)]) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        // clap reads `env = …` values from the process environment only; map the explicit
        // environment onto flags instead so tests never touch the real one.
        let mut argv: Vec<std::ffi::OsString> = vec!["clock-service".into()];
        for (k, v) in env {
            if let Some(flag) = env_flag(k) {
                argv.push(format!("--{flag}={v}").into());
            }
        }
        argv.extend(args.into_iter().map(Into::into));
        Self::try_parse_from(argv)
    }

    /// How many worker threads serve the ucanto listener: `workers`, or with 0 one per CPU
    /// this process may use.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            n => n,
        }
    }

    /// The redb file's directory when the store is embedded.
    pub fn embedded_dir(&self) -> Option<PathBuf> {
        self.store.strip_prefix("redb:").map(|p| {
            PathBuf::from(p)
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."))
        })
    }
}

fn env_flag(name: &str) -> Option<String> {
    let rest = name.strip_prefix("CLOCK_")?;
    Some(rest.to_ascii_lowercase().replace('_', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_embedded() {
        let c = Config::from_args_and_env(Vec::<String>::new(), &[]).unwrap();
        assert_eq!(c.store, DEFAULT_STORE);
        assert_eq!(c.provisioning, ProvisioningMode::Off);
        assert_eq!(c.authorities.len(), 2);
        assert_eq!(c.authorities[0].did, "did:web:up.storacha.network");
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(c.signature_cache, DEFAULT_SIGNATURE_CACHE);
        assert_eq!(c.signature_batch, DEFAULT_SIGNATURE_BATCH);
        assert_eq!(c.workers, 0);
        assert!(c.worker_threads() >= 1);
        assert_eq!(c.embedded_dir().unwrap(), PathBuf::from("./data"));
    }

    #[test]
    fn environment_overrides() {
        let c = Config::from_args_and_env(
            Vec::<String>::new(),
            &[
                ("CLOCK_STORE", "redis://127.0.0.1:6379/0"),
                ("CLOCK_PROVISIONING", "registry"),
                ("CLOCK_REQUEST_TIMEOUT", "250ms"),
                ("CLOCK_AUTHORITIES", "did:web:a.test=did:key:z6Mkabc"),
                ("CLOCK_SIGNATURE_CACHE", "0"),
                ("CLOCK_SIGNATURE_BATCH", "1"),
                ("CLOCK_WORKERS", "3"),
            ],
        )
        .unwrap();
        assert_eq!(c.worker_threads(), 3);
        assert_eq!(c.signature_cache, 0);
        assert_eq!(c.signature_batch, 1);
        assert_eq!(c.provisioning, ProvisioningMode::Registry);
        assert_eq!(c.request_timeout, Duration::from_millis(250));
        assert_eq!(c.authorities.len(), 1);
        assert!(c.embedded_dir().is_none());
    }

    #[test]
    fn storacha_provisioning_defaults_to_production() {
        let c = Config::from_args_and_env(
            Vec::<String>::new(),
            &[
                ("CLOCK_PROVISIONING", "storacha"),
                ("CLOCK_STORACHA_PROOFS", "mAYIEAA,mAYIEAB"),
            ],
        )
        .unwrap();
        assert_eq!(c.provisioning, ProvisioningMode::Storacha);
        assert_eq!(c.storacha_url, "https://up.storacha.network");
        assert_eq!(c.storacha_did, "did:web:up.storacha.network");
        assert_eq!(c.storacha_proofs.len(), 2);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Config::from_args_and_env(["--request-timeout", "10h"], &[]).is_err());
        assert!(Config::from_args_and_env(["--authorities", "nonsense"], &[]).is_err());
        assert!(Config::from_args_and_env(["--listen", "nowhere"], &[]).is_err());
    }
}
