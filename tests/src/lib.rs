//! Shared helpers for the workspace's end-to-end and interop tests (the tests themselves live in
//! `tests/tests/`).
