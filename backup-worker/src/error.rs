//! The crate's error: why a backup (or reading one back) failed, and whether trying again can
//! help ([`Error::disposition`]), which is what the queue consumer acts on.

use cid::Cid;
use proto::backup::BackupError;
use proto::car::CarError;
use proto::repo::{CommitError, MissingBlock, MstError};

use crate::identity::IdentityError;
use crate::space::SpaceError;
use crate::xrpc::{Disposition, XrpcError};

/// Why a backup, or reading one back, failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The account could not be resolved (handle, DID document, PDS endpoint, signing key).
    #[error("resolving {account}: {source}")]
    Identity {
        /// The handle or DID given.
        account: String,
        /// The cause.
        #[source]
        source: IdentityError,
    },
    /// A PDS call failed (after the client's own retries).
    #[error("{call}: {source}")]
    Pds {
        /// The call (`getRepo`, `getBlob <cid>`, …).
        call: String,
        /// The cause.
        #[source]
        source: XrpcError,
    },
    /// The repo CAR the PDS sent is malformed or cut short: a block whose bytes do not hash to
    /// its CID, a truncated section, a bad header.
    #[error("repo CAR from {pds}: {source}")]
    RepoCar {
        /// The PDS.
        pds: String,
        /// The cause.
        #[source]
        source: CarError,
    },
    /// The repo CAR's root is not the account's signed commit.
    #[error("repo CAR from {pds}: {reason}")]
    RepoRoot {
        /// The PDS.
        pds: String,
        /// What is wrong.
        reason: String,
    },
    /// The commit block is malformed, for another account, or signed by no key the account
    /// has ever had.
    #[error("commit {cid}: {source}")]
    Commit {
        /// The commit.
        cid: Cid,
        /// The cause.
        #[source]
        source: CommitError,
    },
    /// The account's PLC history (needed to tell a rotated key from a forged signature) could
    /// not be read.
    #[error("reading the PLC audit log of {did}: {source}")]
    PlcLog {
        /// The account.
        did: String,
        /// The cause.
        #[source]
        source: XrpcError,
    },
    /// The MST is malformed.
    #[error("repo structure: {0}")]
    Mst(#[from] MstError),
    /// Blocks the new commit reaches are neither in the download nor in the Space.
    #[error(
        "repo incomplete: {count} block(s) reachable from commit {commit} are neither in the download nor in the Space (first: {first})",
        first = .first.cid
    )]
    IncompleteRepo {
        /// The commit.
        commit: Cid,
        /// How many are missing.
        count: usize,
        /// The first one.
        first: MissingBlock,
    },
    /// A blob's bytes do not hash to its CID.
    #[error("blob {cid} from {pds}: bytes do not hash to its CID")]
    BlobHashMismatch {
        /// The blob.
        cid: Cid,
        /// The PDS.
        pds: String,
    },
    /// A CID listed by `listBlobs` is not a blob CID (CIDv1, raw, sha2-256).
    #[error("listBlobs from {pds} named {cid}, which is not a CIDv1 raw sha2-256 blob CID")]
    InvalidBlobCid {
        /// The CID.
        cid: Cid,
        /// The PDS.
        pds: String,
    },
    /// The preferences could not be stored as a block.
    #[error("preferences: {0}")]
    Preferences(String),
    /// The Backup DAG in the Space is invalid, or could not be read or extended.
    #[error("backup DAG: {0}")]
    Dag(#[from] BackupError),
    /// The Space could not be read or written.
    #[error(transparent)]
    Space(#[from] SpaceError),
    /// The clock could not be read or advanced.
    #[error("clock {space}: {reason}")]
    Clock {
        /// The clock (the Space DID).
        space: String,
        /// What failed.
        reason: String,
        /// Whether trying again can help.
        retry: bool,
    },
    /// The account has no backup matching the request.
    #[error("no backup of {account} {which}")]
    NoSuchBackup {
        /// The account DID.
        account: String,
        /// Which one was asked for.
        which: String,
    },
    /// A stored backup failed re-verification.
    #[error("backup {key} of {account}: {reason}")]
    Verify {
        /// The account DID.
        account: String,
        /// The backup key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A local file or directory could not be used.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A background task panicked or was cancelled.
    #[error("task failed: {0}")]
    Task(String),
    /// The job or its settings are invalid.
    #[error("invalid job: {0}")]
    InvalidJob(String),
}

impl Error {
    /// Whether the work can succeed if tried again later.
    pub fn disposition(&self) -> Disposition {
        match self {
            Self::Identity { source, .. } => source.disposition(),
            Self::Pds { source, .. } | Self::PlcLog { source, .. } => source.disposition(),
            Self::RepoCar { source, .. } => match source {
                // Cut short: the connection dropped or the PDS died mid-stream.
                CarError::Truncated { .. } | CarError::TruncatedHeader { .. } => Disposition::Retry,
                CarError::Io { source, .. } => crate::xrpc::StreamReader::xrpc_error(source)
                    .map_or(Disposition::Retry, XrpcError::disposition),
                _ => Disposition::Permanent,
            },
            // Blocks the Space should hold but does not: a later backup downloads them again.
            Self::IncompleteRepo { .. } => Disposition::Retry,
            Self::Space(SpaceError::Remote { retry, .. }) => {
                if *retry {
                    Disposition::Retry
                } else {
                    Disposition::Permanent
                }
            }
            Self::Space(SpaceError::Io { .. } | SpaceError::Task(_)) => Disposition::Retry,
            Self::Clock { retry: true, .. } | Self::Io { .. } | Self::Task(_) => Disposition::Retry,
            // The Space failed to answer, or does not (yet) show a block a head reaches.
            Self::Dag(BackupError::Store { .. } | BackupError::MissingBlock { .. }) => {
                Disposition::Retry
            }
            _ => Disposition::Permanent,
        }
    }

    /// A short stable name for logs, metrics and the dead-letter reason.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Identity { .. } => "IdentityError",
            Self::Pds { .. } => "PdsError",
            Self::RepoCar { .. } => "InvalidRepoCar",
            Self::RepoRoot { .. } => "InvalidRepoRoot",
            Self::Commit { .. } => "InvalidCommit",
            Self::PlcLog { .. } => "PlcLogUnavailable",
            Self::Mst(_) => "InvalidMst",
            Self::IncompleteRepo { .. } => "IncompleteRepo",
            Self::BlobHashMismatch { .. } => "BlobHashMismatch",
            Self::InvalidBlobCid { .. } => "InvalidBlobCid",
            Self::Preferences(_) => "InvalidPreferences",
            Self::Dag(_) => "InvalidBackupDag",
            Self::Space(_) => "SpaceError",
            Self::Clock { .. } => "ClockError",
            Self::NoSuchBackup { .. } => "NoSuchBackup",
            Self::Verify { .. } => "VerificationFailed",
            Self::Io { .. } => "IoError",
            Self::Task(_) => "TaskFailed",
            Self::InvalidJob(_) => "InvalidJob",
        }
    }

    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}
