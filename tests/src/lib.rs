//! Shared helpers for the workspace's end-to-end and interop tests (the tests themselves live in
//! `tests/tests/`).
//!
//! The JS interop tests run the pinned JavaScript implementations in `tests/js` with Node. They
//! do not skip when Node or `tests/js/node_modules` is missing: [`require_node`] fails the test
//! and says to run `scripts/test`, which installs both.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository root (the workspace directory holding `tests/`, `proto/`, `scripts/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives one level below the repository root")
        .to_path_buf()
}

/// `tests/js`: the pinned JS packages and our scripts that drive them.
pub fn js_dir() -> PathBuf {
    repo_root().join("tests").join("js")
}

/// `tests/fixtures/<rel>`: fixtures the JS implementations generated.
pub fn fixture_path(rel: &str) -> PathBuf {
    repo_root().join("tests").join("fixtures").join(rel)
}

const SETUP_HINT: &str = "run `scripts/test` (it installs Node.js and the pinned JS packages with \
                          `npm ci` in tests/js), or install Node.js and run `cd tests/js && npm ci`";

/// Panics (failing the test, never skipping it) unless `node` runs and the pinned packages are
/// installed under `tests/js/node_modules`.
pub fn require_node() {
    let modules = js_dir().join("node_modules");
    for pkg in [
        "@ucanto/core",
        "@ucanto/validator",
        "@ucanto/principal",
        "@ucanto/transport",
        "@storacha/capabilities",
        "@web3-storage/clock",
    ] {
        let manifest = modules.join(pkg).join("package.json");
        assert!(
            manifest.is_file(),
            "the JS interop tests need {} but it is missing: {SETUP_HINT}",
            manifest.display()
        );
    }
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`node --version` failed ({}): {SETUP_HINT}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => {
            panic!("cannot run `node` ({e}): the JS interop tests need Node.js; {SETUP_HINT}")
        }
    }
}

/// The outcome of one Node run.
#[derive(Debug)]
pub struct NodeRun {
    /// The exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl NodeRun {
    /// Each non-empty line of standard output parsed as JSON; panics on a line that is not.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("node printed a non-JSON line ({e}): {l}\n{self:?}"))
            })
            .collect()
    }

    /// Panics with the output unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "node exited with {:?}, expected {code}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `node <script> <args…>` in `tests/js` (after [`require_node`]) with a pinned environment
/// (`TZ=UTC`, `LC_ALL=C`, `LANG=C`, as the fixtures were generated) and returns its output.
/// `script` is relative to `tests/js`; pass absolute paths for files elsewhere.
pub fn run_node<I, S>(script: &str, args: I) -> NodeRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    require_node();
    let out: Output = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(js_dir())
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .env_remove("LANGUAGE")
        .env_remove("NODE_OPTIONS")
        .output()
        .unwrap_or_else(|e| panic!("cannot run node {script}: {e}; {SETUP_HINT}"));
    NodeRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
