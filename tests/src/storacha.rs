//! Storacha's real upload service (`@storacha/upload-api` with its own in-memory test context,
//! pinned in `tests/storacha`) on loopback, for tests of our Storacha client.
//!
//! [`LocalStoracha::start`] runs `tests/storacha/server.mjs` on a free loopback port and waits
//! for its ready line; dropping it stops the service. [`LocalStoracha::shared`] starts one per
//! test binary on first use; it stops when the test process exits (the server exits when its
//! standard input closes). Each start is an empty service with a fresh random key behind the
//! DID `did:web:test.up.storacha.network`. A service that cannot start fails the test with the
//! reason (never a skip): usually `tests/storacha/node_modules` is missing, which `scripts/test`
//! installs.
//!
//! Besides the ucanto endpoint, the service has test routes this module wraps: provisioning a
//! Space through the real `provider/add` ([`LocalStoracha::provision`]), injected PUT failures
//! ([`LocalStoracha::fail_puts`]), receipts in production's other form (`/receipt-conclude/`) or
//! never (`/receipt-never/`), whole blobs (`/blob/<cid>`) and single blocks (`/ipfs/<cid>`).
//! [`list_space`] asks the real `@storacha/client` what a Space holds.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a start may take before the test fails (a warm start takes about half a second).
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

const SETUP_HINT: &str = "run `scripts/test` (it installs the pinned Storacha service with `npm ci` \
                          in tests/storacha), or `cd tests/storacha && npm ci`";

/// `tests/storacha`: the pinned packages, `server.mjs` and `list.mjs`.
pub fn storacha_dir() -> PathBuf {
    super::repo_root().join("tests").join("storacha")
}

/// A running local upload service.
#[derive(Debug)]
pub struct LocalStoracha {
    child: Option<Child>,
    dir: PathBuf,
    /// Base URL, `http://127.0.0.1:PORT` (the ucanto endpoint is `POST <url>/`).
    pub url: String,
    /// The service DID invocations must be addressed to (`did:web:test.up.storacha.network`).
    pub did: String,
    /// The random `did:key` behind the service DID (signs its receipts).
    pub key: String,
    /// The server's log (stdout and stderr), removed on drop.
    pub log_path: PathBuf,
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl LocalStoracha {
    /// Starts a service. Panics with the reason if it cannot.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The service of this test binary, started on first use and stopped when the process
    /// exits.
    pub fn shared() -> &'static LocalStoracha {
        static SHARED: OnceLock<LocalStoracha> = OnceLock::new();
        SHARED.get_or_init(LocalStoracha::start)
    }

    fn try_start() -> Result<Self, String> {
        let dir = storacha_dir();
        let manifest = dir.join("node_modules/@storacha/upload-api/package.json");
        if !manifest.is_file() {
            return Err(format!(
                "the Storacha tests need {} but it is missing: {SETUP_HINT}",
                manifest.display()
            ));
        }
        let log_dir = tempfile::Builder::new()
            .prefix("bluesky-backups-storacha.")
            .tempdir()
            .map_err(|e| format!("cannot make a temp dir for the service log: {e}"))?
            .keep();
        let log_path = log_dir.join("server.log");
        let log = File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("PORT", "0")
            .env("STORACHA_LOCAL_EXIT_ON_STDIN_EOF", "1")
            .env("STORACHA_LOCAL_REMOVE_ON_EXIT", &log_dir)
            .env_remove("RECEIPT_FORM")
            .env_remove("NODE_OPTIONS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(
                log.try_clone()
                    .map_err(|e| format!("cannot share the log file: {e}"))?,
            )
            .spawn()
            .map_err(|e| {
                let _ = std::fs::remove_dir_all(&log_dir);
                format!("cannot run `node` for the Storacha service ({e}): install Node.js 20 and {SETUP_HINT}")
            })?;

        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut log = log;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("{\"url\"") {
                    let _ = tx.send(line.clone());
                }
                let _ = writeln!(log, "{line}");
            }
        });

        let started = Instant::now();
        let ready = loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                break line;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                let log = tail(&log_path, 30);
                let _ = std::fs::remove_dir_all(&log_dir);
                return Err(format!(
                    "the Storacha service exited during start-up ({status}); its log:\n{log}"
                ));
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                let log = tail(&log_path, 30);
                let _ = std::fs::remove_dir_all(&log_dir);
                return Err(format!(
                    "the Storacha service was not ready after {START_TIMEOUT:?}; its log:\n{log}"
                ));
            }
        };
        let state: Value = serde_json::from_str(&ready)
            .map_err(|e| format!("bad ready line from the Storacha service ({e}): {ready}"))?;
        let field = |name: &str| state[name].as_str().unwrap_or_default().to_string();
        Ok(Self {
            child: Some(child),
            dir: log_dir,
            url: field("url"),
            did: field("did"),
            key: field("key"),
            log_path,
        })
    }

    /// The receipts endpoint in the form the JS client polls (`<url>/receipt/`).
    pub fn receipts_url(&self) -> String {
        format!("{}/receipt/", self.url)
    }

    /// A receipts endpoint serving production's other form: the receipt attached to a
    /// `ucan/conclude` invocation.
    pub fn conclude_receipts_url(&self) -> String {
        format!("{}/receipt-conclude/", self.url)
    }

    /// A receipts endpoint that never has the receipt (always 404).
    pub fn missing_receipts_url(&self) -> String {
        format!("{}/receipt-never/", self.url)
    }

    /// The last `lines` lines of the server's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// Provisions `space` (a `did:key`) for a did:mailto account through the real `provider/add`
    /// handler. Not idempotent: a second call for the same Space fails.
    pub async fn provision(&self, space: &str) {
        let out = self
            .post(
                "/test/provision",
                &json!({"space": space, "email": "backup-tests@example.com"}),
            )
            .await;
        assert!(
            out.get("ok").is_some(),
            "provisioning {space} failed: {out}"
        );
    }

    /// Makes the next `count` PUTs of the blob whose multihash is `digest` (base58btc, `z…`)
    /// answer HTTP `status` at the storage node.
    pub async fn fail_puts(&self, digest: &str, status: u16, count: u32) {
        self.post(
            "/test/fail-put",
            &json!({"digest": digest, "status": status, "count": count}),
        )
        .await;
    }

    async fn post(&self, path: &str, body: &Value) -> Value {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: cannot reach the Storacha service: {e}"));
        let text = resp.text().await.unwrap_or_default();
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}"))
    }

    /// `GET <url><path>`: `Some(body)` on 200, `None` on 404; panics otherwise.
    pub async fn get(&self, path: &str) -> Option<Vec<u8>> {
        let resp = reqwest::get(format!("{}{path}", self.url))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: cannot reach the Storacha service: {e}"));
        match resp.status().as_u16() {
            200 => Some(resp.bytes().await.expect("body").to_vec()),
            404 => None,
            s => panic!("GET {path}: HTTP {s}"),
        }
    }
}

impl Drop for LocalStoracha {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            crate::stop_gracefully(child, STOP_TIMEOUT);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the real `@storacha/client` lists in a Space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpaceListing {
    /// The Space's DID.
    pub space: String,
    /// `upload/list`: (root CID, shard CIDs) per upload.
    pub uploads: Vec<(String, Vec<String>)>,
    /// `space/blob/list`: (base58btc multihash, size) per blob.
    pub blobs: Vec<(String, u64)>,
}

/// Runs `tests/storacha/list.mjs`: the real `@storacha/client`, acting as the agent whose key is
/// `agent_key` (ucanto text form) with `proof` (a delegation in the CLI's text form granting
/// `upload/list` and `space/blob/list` on the Space), lists the Space's uploads and blobs.
pub fn list_space(service: &LocalStoracha, agent_key: &str, proof: &str) -> SpaceListing {
    let out = Command::new("node")
        .arg("list.mjs")
        .arg(&service.url)
        .arg(agent_key)
        .arg(proof)
        .current_dir(storacha_dir())
        .env_remove("NODE_OPTIONS")
        .output()
        .unwrap_or_else(|e| panic!("cannot run node list.mjs: {e}; {SETUP_HINT}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "list.mjs failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("list.mjs printed no JSON:\n{stdout}"));
    let v: Value = serde_json::from_str(line).expect("list.mjs prints JSON");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    SpaceListing {
        space: v["space"].as_str().unwrap_or_default().to_string(),
        uploads: v["uploads"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| {
                (
                    u["root"].as_str().unwrap_or_default().to_string(),
                    strings(&u["shards"]),
                )
            })
            .collect(),
        blobs: v["blobs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|b| {
                (
                    b["digest"].as_str().unwrap_or_default().to_string(),
                    b["size"].as_u64().unwrap_or_default(),
                )
            })
            .collect(),
    }
}
