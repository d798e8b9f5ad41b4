//! The clock service: UCAN-authorized `clock/head` and `clock/advance` over ucanto, one Merkle
//! clock per Storacha Space, heads in Redis (or embedded redb).
//!
//! Not built yet: the service arrives with its own issue. This crate exists so the workspace
//! has its final shape.
