//! The crate's error type: what can stop the service from starting or running.

use crate::store::StoreError;

/// Why the service could not start or keep running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// The service key could not be read, created or parsed.
    #[error("service key {path}: {reason}")]
    Key {
        /// Where the key is (or was to be) kept, or `CLOCK_PRIVATE_KEY`.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound or failed.
    #[error("{what} {addr}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A worker thread could not be started.
    #[error("worker thread {worker}: {source}")]
    Worker {
        /// The worker's index.
        worker: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
