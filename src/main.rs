//! `cargo run`: Bluesky Backups on embedded defaults, every service in one process.
//!
//! The clock service and the backup worker's CLI exist and run on their own
//! (`cargo run -p clock-service`, `cargo run -p backup-worker -- once --account …`); the
//! scheduler arrives with its own issue. Until it exists this binary says so.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", bluesky_backups_help());
        return ExitCode::SUCCESS;
    }
    if !args.is_empty() {
        eprintln!(
            "unexpected arguments: {}\n\n{}",
            args.join(" "),
            bluesky_backups_help()
        );
        return ExitCode::from(64);
    }
    println!("Bluesky Backups on Storacha — all-in-one mode (embedded stores)\n");
    println!("The protocol core (`proto`: CAR, DAG-CBOR, did:key, dag-ucan 0.9.1, ucanto");
    println!("messages and receipts, Merkle clock, pail) is built and tested.");
    println!("The clock service runs on its own today: `cargo run -p clock-service`");
    println!("(embedded redb in ./data), and so does a one-shot backup:");
    println!("`cargo run -p backup-worker -- once --account <handle>` (a local Space in ./data).");
    println!("The scheduler comes in a later issue; this command will start everything on");
    println!("embedded stores once it exists.\n");
    match proto::principal::Ed25519Signer::generate() {
        Ok(key) => {
            println!("A fresh service identity, for example: {}", key.did());
        }
        Err(e) => {
            eprintln!("cannot generate a key: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn bluesky_backups_help() -> &'static str {
    "usage: bluesky-backups [--help]\n\nRuns every service in one process on embedded stores \
     (services arrive with their issues; see README.md)."
}
