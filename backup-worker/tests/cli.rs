//! The `backup-worker` binary against the REAL reference PDS (`tests::pds`): `space`, `once`
//! (first, unchanged, with preferences), `list`, `export`, `verify`, and the exit status of a
//! failure.

#[path = "support/common.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;
use tests::pds::Pds;

fn run(data: &Path, pds: &Pds, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_backup-worker"))
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .args(["--plc", &pds.plc_url, "--pds", &pds.url])
        .env_remove("BACKUP_APP_PASSWORD")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(out: Output) -> String {
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_list_export_verify() {
    let pds = Pds::shared();
    let account = pds.create_account("cli").await;
    for i in 0..12 {
        account.post_text(&format!("cli post {i}")).await;
    }
    let (blob, _) = account.add_file(vec![42u8; 1_300_000]).await;
    account
        .put_preferences(json!([{"$type": "app.bsky.actor.defs#savedFeedsPrefV2", "items": []}]))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // The Space key is generated once, kept private, and names the Space.
    let space = run(&data, pds, &["space"]);
    assert!(space.status.success(), "{}", text(&space));
    let did = String::from_utf8(space.stdout).unwrap().trim().to_owned();
    assert!(did.starts_with("did:key:z6Mk"), "{did}");
    assert!(String::from_utf8_lossy(&space.stderr).contains("generated the Space key"));
    let again = run(&data, pds, &["space"]);
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), did);
    assert!(again.stderr.is_empty(), "the key is generated once");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("space.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // A first backup by handle, with preferences through an app password.
    let first = ok(run(
        &data,
        pds,
        &[
            "once",
            "--account",
            &account.handle,
            "--key",
            "2026-11-05T10:00:00.000Z",
            "--app-password",
            &account.password,
        ],
    ));
    assert!(
        first.contains(&format!("backed up {}", account.did)),
        "{first}"
    );
    assert!(first.contains("preferences: stored"), "{first}");
    assert!(
        first.contains("blobs: 1 in the account, 1 downloaded"),
        "{first}"
    );

    // Unchanged: nothing recorded.
    let again = ok(run(&data, pds, &["once", "--account", &account.did]));
    assert!(again.contains("unchanged"), "{again}");
    assert!(again.contains("note: no --app-password"), "{again}");

    account.post_text("one more").await;
    let second = ok(run(
        &data,
        pds,
        &[
            "once",
            "--account",
            &account.did,
            "--key",
            "2026-11-05T11:00:00.000Z",
        ],
    ));
    assert!(second.contains("since rev"), "{second}");
    assert!(
        second.contains("1 in the account, 0 downloaded"),
        "{second}"
    );

    let list = ok(run(&data, pds, &["list", "--account", &account.handle]));
    let rows: Vec<&str> = list
        .lines()
        .filter(|l| l.starts_with("2026-11-05T"))
        .collect();
    assert_eq!(rows.len(), 2, "{list}");
    assert!(
        rows[0].contains(" 13 ") || rows[0].contains(" 14 "),
        "{list}"
    );

    let out = dir.path().join("export");
    let export = ok(run(
        &data,
        pds,
        &[
            "export",
            "--account",
            &account.did,
            "--backup",
            "2026-11-05T10:00:00.000Z",
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert!(export.contains("1 blobs"), "{export}");
    assert_eq!(
        std::fs::read(out.join("blobs").join(&blob)).unwrap(),
        vec![42u8; 1_300_000]
    );
    assert!(out.join("repo.car").exists());
    assert!(out.join("preferences.json").exists());

    let verify = ok(run(&data, pds, &["verify", "--account", &account.did]));
    assert!(verify.contains("signature valid"), "{verify}");
    assert!(verify.contains("verified"), "{verify}");

    // No such backup, and an account the PDS does not know: named errors, non-zero exits.
    let missing = run(
        &data,
        pds,
        &[
            "export",
            "--account",
            &account.did,
            "--backup",
            "2020-01-01T00:00:00.000Z",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(
        text(&missing).contains("NoSuchBackup"),
        "{}",
        text(&missing)
    );
    let unknown = run(
        &data,
        pds,
        &["once", "--account", "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"],
    );
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("IdentityError"),
        "{}",
        text(&unknown)
    );
}

/// The same commands against a real Storacha Space (Storacha's own upload service, run locally):
/// the Space delegates to the worker's agent key the way the Storacha CLI does, and the worker
/// finds the service through the `STORACHA_*` variables the Storacha CLI also reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_list_export_into_a_storacha_space() {
    use tests::storacha::{LocalStoracha, list_space};

    let pds = Pds::shared();
    let service = LocalStoracha::shared();
    let account = pds.create_account("clistor").await;
    for i in 0..8 {
        account.post_text(&format!("cli to storacha {i}")).await;
    }
    let (blob, _) = account.add_file(vec![7u8; 1_100_000]).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let agent = run(&data, pds, &["agent"]);
    assert!(agent.status.success(), "{}", text(&agent));
    let agent_did = String::from_utf8(agent.stdout).unwrap().trim().to_owned();
    assert!(agent_did.starts_with("did:key:"), "{agent_did}");

    // Space → the user's CLI agent → our agent, printed in the CLI's text form.
    let (space, proof) =
        common::cli_delegation(&agent_did, &common::WORKER_ABILITIES, common::in_an_hour());
    let proof_path = dir.path().join("proof.txt");
    std::fs::write(&proof_path, &proof).unwrap();
    service.provision(space.did()).await;

    let storacha = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_backup-worker"))
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .args(["--plc", &pds.plc_url, "--pds", &pds.url])
            .arg("--storacha-proof")
            .arg(&proof_path)
            .env("STORACHA_SERVICE_URL", &service.url)
            .env("STORACHA_SERVICE_DID", &service.did)
            .env("STORACHA_RECEIPTS_URL", service.receipts_url())
            .env("STORACHA_GATEWAY_URL", &service.url)
            .output()
            .unwrap()
    };
    let once = ok(storacha(&[
        "once",
        "--account",
        &account.did,
        "--key",
        "2026-11-06T00:00:00.000Z",
    ]));
    assert!(once.contains(&format!("space {}", space.did())), "{once}");
    assert!(
        once.contains("blobs: 1 in the account, 1 downloaded"),
        "{once}"
    );
    let backup = once
        .lines()
        .find_map(|l| l.split("; backup ").nth(1))
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no backup CID in {once}"))
        .to_owned();

    // The real JS client sees our upload.
    let agent_key = std::fs::read_to_string(data.join("agent.key")).unwrap();
    let listing = list_space(service, agent_key.trim(), &proof);
    assert_eq!(listing.space, space.did());
    assert!(
        listing.uploads.iter().any(|(root, _)| *root == backup),
        "{listing:?}"
    );

    let list = ok(storacha(&["list"]));
    assert!(list.contains("2026-11-06T00:00:00.000Z"), "{list}");
    let out = dir.path().join("export");
    ok(storacha(&[
        "export",
        "--account",
        &account.did,
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(
        std::fs::read(out.join("blobs").join(&blob)).unwrap(),
        vec![7u8; 1_100_000]
    );
    let verify = ok(storacha(&["verify", "--account", &account.did]));
    assert!(verify.contains("signature valid"), "{verify}");
}
