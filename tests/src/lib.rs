//! Shared helpers for the workspace's end-to-end and interop tests (the tests themselves live in
//! `tests/tests/`).
//!
//! The JS interop tests run the pinned JavaScript implementations in `tests/js` with Node. They
//! do not skip when Node or `tests/js/node_modules` is missing: [`require_node`] fails the test
//! and says to run `scripts/test`, which installs both.
//!
//! [`pds`] runs the real reference PDS (pinned in `tests/pds`) for the backup-worker tests, and
//! fails the same way when it is not installed.

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

/// Stops a server the tests started: closes its standard input (the harnesses' servers exit
/// gracefully on that), waits up to `timeout`, then kills it.
pub(crate) fn stop_gracefully(mut child: std::process::Child, timeout: std::time::Duration) {
    drop(child.stdin.take());
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

pub mod storacha;

pub mod pds {
    //! A real Bluesky PDS (`@atproto/pds`, pinned in `tests/pds`) and an in-memory PLC directory,
    //! in one Node process on loopback, for tests that must talk to the reference implementation.
    //!
    //! [`Pds::start`] picks free loopback ports and a fresh temp data dir, starts
    //! `tests/pds/server.cjs` and waits for its ready line; dropping the [`Pds`] stops it and
    //! removes the data. [`Pds::shared`] starts one per test binary on first use; it stops when the
    //! test process exits (the server exits when its standard input closes, so even a killed test
    //! run leaves nothing behind). A PDS that cannot start fails the test with the reason (never a
    //! skip): usually `tests/pds/node_modules` is missing, which `scripts/test` installs.
    //!
    //! Accounts ([`Pds::create_account`]) get unique `.test` handles; [`Account`] writes records,
    //! uploads blobs and sets preferences with the account's session token.

    use std::fs::File;
    use std::io::{BufRead, BufReader, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    /// How long a start may take before the test fails (cold starts take 1–3 s).
    pub const START_TIMEOUT: Duration = Duration::from_secs(60);
    /// How long a stop waits for a graceful shutdown before killing.
    const STOP_TIMEOUT: Duration = Duration::from_secs(5);

    const PDS_SETUP_HINT: &str = "run `scripts/test` (it installs the pinned PDS with `npm ci` in \
                                  tests/pds, building better-sqlite3), or `tests/pds/install.sh`";

    /// `tests/pds`: the pinned PDS and `server.cjs`.
    pub fn pds_dir() -> PathBuf {
        super::repo_root().join("tests").join("pds")
    }

    /// How to run the PDS.
    #[derive(Clone, Debug, Default)]
    pub struct PdsOptions {
        /// Turn the PDS's rate limiter on with this global per-IP limit: `(points, window_ms)`.
        pub rate_limit: Option<(u32, u64)>,
        /// PDS request logs (pino) into the server log.
        pub log_requests: bool,
    }

    /// A running PDS + PLC.
    #[derive(Debug)]
    pub struct Pds {
        child: Option<Child>,
        data_dir: PathBuf,
        /// The PDS's base URL, `http://127.0.0.1:PORT`.
        pub url: String,
        /// What DID documents name as the PDS endpoint: `http://localhost:PORT`.
        pub public_url: String,
        /// The PLC directory's base URL.
        pub plc_url: String,
        /// The PDS's admin password (`admin` user, basic auth).
        pub admin_password: String,
        /// The PDS's service DID.
        pub service_did: String,
        /// The `@atproto/pds` version running.
        pub version: String,
        /// The server's log file (stdout and stderr; removed with the data).
        pub log_path: PathBuf,
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"))
    }

    fn tail(path: &Path, lines: usize) -> String {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    impl Pds {
        /// Starts a PDS with default options (rate limits off). Panics with the reason if it
        /// cannot.
        pub fn start() -> Self {
            Self::start_with(&PdsOptions::default())
        }

        /// Starts a PDS. Retries twice with new ports if the first ports were taken meanwhile.
        pub fn start_with(options: &PdsOptions) -> Self {
            let mut last = String::new();
            for _ in 0..3 {
                match Self::try_start(options) {
                    Ok(pds) => return pds,
                    Err(e) if e.contains("EADDRINUSE") => last = e,
                    Err(e) => panic!("{e}"),
                }
            }
            panic!("{last}")
        }

        /// The PDS of this test binary, started on first use and stopped when the process
        /// exits.
        pub fn shared() -> &'static Pds {
            static SHARED: OnceLock<Pds> = OnceLock::new();
            SHARED.get_or_init(Pds::start)
        }

        fn try_start(options: &PdsOptions) -> Result<Self, String> {
            let dir = pds_dir();
            let manifest = dir.join("node_modules/@atproto/pds/package.json");
            if !manifest.is_file() {
                return Err(format!(
                    "the real-PDS tests need {} but it is missing: {PDS_SETUP_HINT}",
                    manifest.display()
                ));
            }
            let (plc_port, pds_port) = (free_port(), free_port());
            let data_dir = tempfile::Builder::new()
                .prefix("bluesky-backups-pds.")
                .tempdir()
                .map_err(|e| format!("cannot make a temp dir for the PDS: {e}"))?
                .keep();
            // Inside the data dir, so that the server removes it with the data on exit.
            let log_path = data_dir.join("server.log");
            let log = File::create(&log_path)
                .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
            let mut cmd = Command::new("node");
            cmd.arg("server.cjs")
                .current_dir(&dir)
                .env("PDS_LOCAL_PLC_PORT", plc_port.to_string())
                .env("PDS_LOCAL_PDS_PORT", pds_port.to_string())
                .env("PDS_LOCAL_DATA_DIR", &data_dir)
                .env("PDS_LOCAL_EXIT_ON_STDIN_EOF", "1")
                .env("PDS_LOCAL_REMOVE_DATA_ON_EXIT", "1")
                .env_remove("NODE_OPTIONS")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(
                    log.try_clone()
                        .map_err(|e| format!("cannot share the log file: {e}"))?,
                );
            if let Some((points, ms)) = options.rate_limit {
                cmd.env("PDS_LOCAL_RATE_LIMIT", format!("{points}/{ms}"));
            }
            if options.log_requests {
                cmd.env("LOG_ENABLED", "true");
            }
            let mut child = cmd.spawn().map_err(|e| {
                let _ = std::fs::remove_dir_all(&data_dir);
                format!("cannot run `node` for the real PDS ({e}): install Node.js 20 and {PDS_SETUP_HINT}")
            })?;

            // Forward stdout into the log, and the ready line to us.
            let stdout = child.stdout.take().expect("piped");
            let (tx, rx) = mpsc::channel::<String>();
            std::thread::spawn(move || {
                let mut log = log;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(json) = line.strip_prefix("pds-local-ready ") {
                        let _ = tx.send(json.to_string());
                    }
                    let _ = writeln!(log, "{line}");
                }
            });

            let started = Instant::now();
            let ready = loop {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(json) => break json,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {}
                }
                if let Ok(Some(status)) = child.try_wait() {
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = std::fs::remove_dir_all(&data_dir);
                    return Err(format!(
                        "the real PDS exited during start-up ({status}); last lines of {}:\n{}",
                        log_path.display(),
                        tail(&log_path, 30)
                    ));
                }
                if started.elapsed() > START_TIMEOUT {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = std::fs::remove_dir_all(&data_dir);
                    return Err(format!(
                        "the real PDS was not ready after {START_TIMEOUT:?}; last lines of {}:\n{}",
                        log_path.display(),
                        tail(&log_path, 30)
                    ));
                }
            };
            let state: Value = serde_json::from_str(&ready)
                .map_err(|e| format!("bad ready line from the PDS ({e}): {ready}"))?;
            let field = |name: &str| state[name].as_str().unwrap_or_default().to_string();
            Ok(Self {
                child: Some(child),
                data_dir,
                url: field("pdsUrl"),
                public_url: field("pdsPublicUrl"),
                plc_url: field("plcUrl"),
                admin_password: field("adminPassword"),
                service_did: field("pdsServiceDid"),
                version: field("pdsVersion"),
                log_path,
            })
        }

        /// The PDS's port.
        pub fn port(&self) -> u16 {
            self.url
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("the PDS URL ends in its port")
        }

        /// The last `lines` lines of the server's log (for failure messages).
        pub fn log_tail(&self, lines: usize) -> String {
            tail(&self.log_path, lines)
        }

        /// Creates an account with a unique handle `<prefix><n>.test` (prefix: letters and
        /// digits, at most 8 kept) and logs it in.
        pub async fn create_account(&self, prefix: &str) -> Account {
            static NEXT: AtomicU32 = AtomicU32::new(1);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let mut name: String = prefix
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .map(|c| c.to_ascii_lowercase())
                .take(8)
                .collect();
            if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
                name.insert(0, 'u');
            }
            let handle = format!("{name}{n}.test");
            let password = format!("{name}-{n}-password");
            let http = reqwest::Client::new();
            let out = xrpc_post(
                &http,
                &self.url,
                "com.atproto.server.createAccount",
                None,
                &json!({"email": format!("{name}{n}@example.com"), "handle": handle, "password": password}),
            )
            .await;
            Account {
                did: out["did"]
                    .as_str()
                    .expect("createAccount returns a did")
                    .to_string(),
                handle,
                password,
                access_jwt: out["accessJwt"]
                    .as_str()
                    .expect("createAccount returns an accessJwt")
                    .to_string(),
                pds_url: self.url.clone(),
                http,
            }
        }
    }

    impl Drop for Pds {
        fn drop(&mut self) {
            if let Some(child) = self.child.take() {
                // Closing stdin asks for a graceful shutdown (which also removes the data).
                super::stop_gracefully(child, STOP_TIMEOUT);
            }
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }

    /// POSTs JSON to an XRPC procedure; panics with the answer unless it succeeds.
    async fn xrpc_post(
        http: &reqwest::Client,
        base: &str,
        nsid: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Value {
        let mut req = http.post(format!("{base}/xrpc/{nsid}")).json(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{nsid}: cannot reach the PDS at {base}: {e}"));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "{nsid} failed: HTTP {status}: {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{nsid}: not JSON ({e}): {text}"))
        }
    }

    /// A record written by [`Account`].
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct RecordRef {
        /// `at://<did>/<collection>/<rkey>`.
        pub uri: String,
        /// The record's CID.
        pub cid: String,
        /// `<collection>/<rkey>`: its MST key.
        pub key: String,
    }

    /// An account on a [`Pds`], logged in (legacy session token, for test set-up).
    #[derive(Debug)]
    pub struct Account {
        /// The DID.
        pub did: String,
        /// The handle (`….test`).
        pub handle: String,
        /// The password.
        pub password: String,
        /// The session's access token (a bearer token for the PDS).
        pub access_jwt: String,
        pds_url: String,
        http: reqwest::Client,
    }

    impl Account {
        async fn post(&self, nsid: &str, body: &Value) -> Value {
            xrpc_post(
                &self.http,
                &self.pds_url,
                nsid,
                Some(&self.access_jwt),
                body,
            )
            .await
        }

        fn record_ref(out: &Value) -> RecordRef {
            let uri = out["uri"].as_str().expect("uri").to_string();
            let mut parts = uri.rsplitn(3, '/');
            let rkey = parts.next().expect("rkey");
            let collection = parts.next().expect("collection");
            RecordRef {
                key: format!("{collection}/{rkey}"),
                cid: out["cid"].as_str().expect("cid").to_string(),
                uri,
            }
        }

        /// `com.atproto.repo.createRecord`.
        pub async fn create_record(&self, collection: &str, record: Value) -> RecordRef {
            let out = self
                .post(
                    "com.atproto.repo.createRecord",
                    &json!({"repo": self.did, "collection": collection, "record": record}),
                )
                .await;
            Self::record_ref(&out)
        }

        /// `com.atproto.repo.putRecord` (create or replace at `rkey`).
        pub async fn put_record(&self, collection: &str, rkey: &str, record: Value) -> RecordRef {
            let out = self
                .post(
                    "com.atproto.repo.putRecord",
                    &json!({"repo": self.did, "collection": collection, "rkey": rkey, "record": record}),
                )
                .await;
            Self::record_ref(&out)
        }

        /// `com.atproto.repo.deleteRecord`.
        pub async fn delete_record(&self, collection: &str, rkey: &str) {
            self.post(
                "com.atproto.repo.deleteRecord",
                &json!({"repo": self.did, "collection": collection, "rkey": rkey}),
            )
            .await;
        }

        /// Creates many records in one commit per 200 (`com.atproto.repo.applyWrites`), at the
        /// given record keys; returns their MST keys (`<collection>/<rkey>`).
        pub async fn create_records(
            &self,
            collection: &str,
            records: Vec<(String, Value)>,
        ) -> Vec<String> {
            let mut keys = Vec::with_capacity(records.len());
            let mut records = records.into_iter().peekable();
            while records.peek().is_some() {
                let writes: Vec<Value> = records
                    .by_ref()
                    .take(200)
                    .map(|(rkey, value)| {
                        keys.push(format!("{collection}/{rkey}"));
                        json!({"$type": "com.atproto.repo.applyWrites#create", "collection": collection, "rkey": rkey, "value": value})
                    })
                    .collect();
                self.post(
                    "com.atproto.repo.applyWrites",
                    &json!({"repo": self.did, "writes": writes}),
                )
                .await;
            }
            keys
        }

        /// An `app.bsky.feed.post` with `text`.
        pub async fn post_text(&self, text: &str) -> RecordRef {
            self.create_record(
                "app.bsky.feed.post",
                json!({"$type": "app.bsky.feed.post", "text": text, "createdAt": "2026-01-01T00:00:00.000Z"}),
            )
            .await
        }

        /// `com.atproto.repo.uploadBlob`: the blob ref (`{"$type": "blob", "ref": {"$link":
        /// …}, "mimeType", "size"}`). The PDS sniffs image types: send real images as
        /// `image/*`, anything else as `application/octet-stream`. A blob no record refers to
        /// is temporary: it is not listed and is eventually deleted.
        pub async fn upload_blob(&self, bytes: Vec<u8>, mime: &str) -> Value {
            let url = format!("{}/xrpc/com.atproto.repo.uploadBlob", self.pds_url);
            let resp = self
                .http
                .post(&url)
                .bearer_auth(&self.access_jwt)
                .header("content-type", mime)
                .body(bytes)
                .send()
                .await
                .unwrap_or_else(|e| panic!("uploadBlob: cannot reach the PDS: {e}"));
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            assert!(
                status.is_success(),
                "uploadBlob failed: HTTP {status}: {text}"
            );
            let out: Value = serde_json::from_str(&text).expect("uploadBlob answers JSON");
            out["blob"].clone()
        }

        /// Uploads `bytes` and keeps them with a `com.example.file` record (a custom
        /// collection, so any size the PDS accepts): (the blob's CID, the record).
        pub async fn add_file(&self, bytes: Vec<u8>) -> (String, RecordRef) {
            let blob = self.upload_blob(bytes, "application/octet-stream").await;
            let cid = blob["ref"]["$link"].as_str().expect("blob ref").to_string();
            let record = self
                .create_record(
                    "com.example.file",
                    json!({"$type": "com.example.file", "file": blob, "createdAt": "2026-01-01T00:00:00.000Z"}),
                )
                .await;
            (cid, record)
        }

        /// `app.bsky.actor.putPreferences`.
        pub async fn put_preferences(&self, preferences: Value) {
            self.post(
                "app.bsky.actor.putPreferences",
                &json!({"preferences": preferences}),
            )
            .await;
        }
    }
}
