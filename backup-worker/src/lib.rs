//! The backup worker: one job = one verified, incremental backup of a Bluesky account into a
//! Storacha Space; also a one-shot CLI.
//!
//! Not built yet: the worker arrives with its own issue. This crate exists so the workspace
//! has its final shape.
