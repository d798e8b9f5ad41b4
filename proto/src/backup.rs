//! The Backup DAG kept in a Space, and the union of concurrent versions of it.
//!
//! # Shape
//!
//! ```text
//! clock event {data: Link<Root>, parents}
//!  └─ Root    {"type": "bluesky-backups", "version": 1, "accounts": {"<did>": Link<Account>}}
//!      └─ Account {"backups": Link<pail shard>}        key: the job's scheduled time
//!          └─ Backup {"repo": Link<commit>, "rev": "<TID>", "blobs": Link<pail shard>,
//!                     "preferences"?: Link, "createdAt": "<datetime>", "pds": "https://…",
//!                     "warnings"?: ["…"]}
//!              └─ blobs: pail, ATProto blob CID (string) → UnixFS root CID
//! ```
//!
//! Every node is DAG-CBOR (sha2-256, CIDv1); the two maps keyed by strings that can grow without
//! bound (backups of an account, blobs of a backup) are [pail] shards, so that JS
//! reads what we write.
//!
//! # Validation
//!
//! Decoding is strict, and so is encoding (nothing invalid is ever written): every node must be
//! canonical DAG-CBOR with exactly the fields above (optional ones absent rather than null or
//! empty), links where links belong (DAG-CBOR for the Account, pail shards and the commit),
//! account keys that are DIDs, a `rev` that is a TID, RFC 3339 `createdAt`, an `http(s)://` PDS
//! URL, and non-empty warnings. Backup keys are timestamps in the one form JavaScript's
//! `Date.prototype.toISOString` writes (`2025-03-12T15:13:59.958Z`, always UTC, always
//! milliseconds; see [`backup_key`]), so that key order is time order. Blob keys are canonical
//! CID strings of CIDv1 raw sha2-256 CIDs (what ATProto blob CIDs are); blob values are raw or
//! DAG-PB (a UnixFS root).
//!
//! # Merging
//!
//! The DAG is a grow-only map *(account, key) → Backup*. When two versions hold different
//! Backups under the same account and key, the one whose Backup CID sorts lowest by its bytes is
//! kept: a scheduled time names one backup, and retries or races that produced two of them are
//! resolved the same way everywhere. [`add_backup`] and [`merge_roots`] both apply that rule, so
//! they are joins of a semilattice: any order of adds and merges over the same backups gives the
//! same Root CID (pail's layout depends only on its keys), merging is commutative, associative and
//! idempotent, and merging a root with one it already contains returns it unchanged.
//!
//! # Blocks
//!
//! Everything reads through a synchronous [`BlockGetter`], like [`crate::pail`] and
//! [`crate::clock`]. Operations return the new root with the blocks it needs that the getter did
//! not already have (intermediate pail shards made and replaced along the way are not returned).

use std::collections::{BTreeMap, HashMap};

use cid::Cid;

use crate::clock::{self, BlockGetter, ClockError, Event, FetchError, StoreError, fetch};
use crate::ipld::{Block, DAG_CBOR, DAG_PB, Ipld, IpldError, RAW, SHA2_256, parse_cid};
use crate::pail::{self, EntriesOptions, PailError, ShardDiff};

/// The Root's `type`.
pub const ROOT_TYPE: &str = "bluesky-backups";
/// The Root's `version`, the only one defined.
pub const ROOT_VERSION: u64 = 1;

/// Longest DID we accept (ATProto's limit).
const MAX_DID_LEN: usize = 2048;
/// Longest PDS URL we accept.
const MAX_URL_LEN: usize = 2048;
/// Longest text shown from a bad value in an error.
const DISPLAY_LEN: usize = 100;

/// Why a Backup DAG node could not be encoded, decoded or fetched, or an operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The getter does not have a block the operation needs.
    #[error("missing block: {cid}")]
    MissingBlock {
        /// The missing block.
        cid: Cid,
    },
    /// The getter failed while fetching a block.
    #[error("block store failed fetching {cid}: {source}")]
    Store {
        /// The block being fetched.
        cid: Cid,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// The getter returned bytes that are not the block it was asked for.
    #[error("block store returned wrong bytes for {cid}: {source}")]
    BlockMismatch {
        /// The block asked for.
        cid: Cid,
        /// Why the bytes do not match.
        #[source]
        source: Box<IpldError>,
    },
    /// A block is not a valid Root.
    #[error("invalid backup root {cid}: {reason}")]
    InvalidRoot {
        /// The block.
        cid: Cid,
        /// What is wrong with it.
        reason: String,
    },
    /// A block is not a valid Account.
    #[error("invalid account node {cid}: {reason}")]
    InvalidAccount {
        /// The block.
        cid: Cid,
        /// What is wrong with it.
        reason: String,
    },
    /// A block is not a valid Backup.
    #[error("invalid backup {cid}: {reason}")]
    InvalidBackup {
        /// The block.
        cid: Cid,
        /// What is wrong with it.
        reason: String,
    },
    /// A value breaks the format's rules and cannot be encoded.
    #[error("cannot encode {node}: {reason}")]
    InvalidValue {
        /// Which node ("root", "account", "backup").
        node: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An account key is not a DID.
    #[error("invalid account DID {did:?}")]
    InvalidDid {
        /// The key (shortened if long).
        did: String,
    },
    /// A backup key is not a timestamp in `toISOString` form.
    #[error("invalid backup key {key:?}: expected a UTC timestamp like 2025-03-12T15:13:59.958Z")]
    InvalidBackupKey {
        /// The key (shortened if long).
        key: String,
    },
    /// A blobs pail entry does not map an ATProto blob CID to a UnixFS root.
    #[error("invalid blobs entry {key:?}: {reason}")]
    InvalidBlobEntry {
        /// The entry's key (shortened if long).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A clock event's data is not a link to a Root.
    #[error("event {cid} does not hold a backup root: {reason}")]
    InvalidEvent {
        /// The event.
        cid: Cid,
        /// What it holds instead.
        reason: String,
    },
    /// A timestamp cannot be written as a backup key.
    #[error("time {millis} ms is outside the years 0000-9999")]
    TimeOutOfRange {
        /// Milliseconds since the Unix epoch.
        millis: u64,
    },
    /// A pail (backups or blobs) operation failed.
    #[error(transparent)]
    Pail(#[from] PailError),
    /// A clock event could not be read or written.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// A node could not be written as DAG-CBOR.
    #[error("cannot encode node: {0}")]
    Encode(#[source] IpldError),
}

/// The top of the DAG: which accounts have backups in this Space.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Root {
    /// Account DID → its [`Account`] node.
    pub accounts: BTreeMap<String, Cid>,
}

/// One account's node: its backups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Account {
    /// Root of the pail mapping backup key (scheduled time) → [`Backup`] CID.
    pub backups: Cid,
}

/// One backup of one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The signed repository commit block; its MST and records are in the Space too.
    pub repo: Cid,
    /// The commit's revision (a TID).
    pub rev: String,
    /// Root of the pail mapping ATProto blob CID → UnixFS root CID.
    pub blobs: Cid,
    /// The account's preferences, when they were fetched.
    pub preferences: Option<Cid>,
    /// When the backup was made (RFC 3339).
    pub created_at: String,
    /// The PDS it was taken from (`https://…`).
    pub pds: String,
    /// Problems that did not stop the backup (e.g. a commit signed by a rotated-out key). Empty
    /// means none; the field is then left out of the block.
    pub warnings: Vec<String>,
}

impl Root {
    /// The Root as an IPLD value.
    pub fn to_ipld(&self) -> Ipld {
        let accounts = self
            .accounts
            .iter()
            .map(|(did, cid)| (did.clone(), Ipld::Link(*cid)))
            .collect();
        map([
            ("type", Ipld::String(ROOT_TYPE.to_owned())),
            ("version", Ipld::Integer(ROOT_VERSION.into())),
            ("accounts", Ipld::Map(accounts)),
        ])
    }

    /// Validates and encodes the Root.
    pub fn to_block(&self) -> Result<Block, BackupError> {
        for (did, cid) in &self.accounts {
            check_did(did)?;
            check_link(cid, &[DAG_CBOR]).map_err(|r| BackupError::InvalidValue {
                node: "root",
                reason: format!("account {}: {r}", shorten(did)),
            })?;
        }
        Block::encode(&self.to_ipld()).map_err(BackupError::Encode)
    }

    /// Decodes and validates a Root block.
    pub fn from_block(block: &Block) -> Result<Self, BackupError> {
        let invalid = |reason: String| BackupError::InvalidRoot {
            cid: *block.cid(),
            reason,
        };
        let mut m = canonical_map(block).map_err(invalid)?;
        match m.remove("type") {
            Some(Ipld::String(t)) if t == ROOT_TYPE => {}
            Some(Ipld::String(t)) => return Err(invalid(format!("type is {:?}", shorten(&t)))),
            Some(_) => return Err(invalid("\"type\" is not a string".to_owned())),
            None => return Err(invalid("missing \"type\"".to_owned())),
        }
        match m.remove("version") {
            Some(Ipld::Integer(v)) if v == i128::from(ROOT_VERSION) => {}
            Some(Ipld::Integer(v)) => return Err(invalid(format!("unsupported version {v}"))),
            Some(_) => return Err(invalid("\"version\" is not an integer".to_owned())),
            None => return Err(invalid("missing \"version\"".to_owned())),
        }
        let accounts = match m.remove("accounts") {
            Some(Ipld::Map(accounts)) => accounts
                .into_iter()
                .map(|(did, link)| {
                    if !is_did(&did) {
                        return Err(format!("account key {:?} is not a DID", shorten(&did)));
                    }
                    let Ipld::Link(cid) = link else {
                        return Err(format!("account {} is not a link", shorten(&did)));
                    };
                    check_link(&cid, &[DAG_CBOR])
                        .map_err(|r| format!("account {}: {r}", shorten(&did)))?;
                    Ok((did, cid))
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map_err(invalid)?,
            Some(_) => return Err(invalid("\"accounts\" is not a map".to_owned())),
            None => return Err(invalid("missing \"accounts\"".to_owned())),
        };
        no_extra_fields(&m).map_err(invalid)?;
        Ok(Self { accounts })
    }
}

impl Account {
    /// The Account as an IPLD value.
    pub fn to_ipld(&self) -> Ipld {
        map([("backups", Ipld::Link(self.backups))])
    }

    /// Validates and encodes the Account.
    pub fn to_block(&self) -> Result<Block, BackupError> {
        check_link(&self.backups, &[DAG_CBOR]).map_err(|r| BackupError::InvalidValue {
            node: "account",
            reason: format!("backups: {r}"),
        })?;
        Block::encode(&self.to_ipld()).map_err(BackupError::Encode)
    }

    /// Decodes and validates an Account block.
    pub fn from_block(block: &Block) -> Result<Self, BackupError> {
        let invalid = |reason: String| BackupError::InvalidAccount {
            cid: *block.cid(),
            reason,
        };
        let mut m = canonical_map(block).map_err(invalid)?;
        let backups = take_link(&mut m, "backups", &[DAG_CBOR])
            .and_then(|l| l.ok_or_else(|| "missing \"backups\"".to_owned()))
            .map_err(invalid)?;
        no_extra_fields(&m).map_err(invalid)?;
        Ok(Self { backups })
    }
}

impl Backup {
    /// Checks the rules of the module documentation.
    pub fn validate(&self) -> Result<(), BackupError> {
        self.check().map_err(|reason| BackupError::InvalidValue {
            node: "backup",
            reason,
        })
    }

    fn check(&self) -> Result<(), String> {
        check_link(&self.repo, &[DAG_CBOR]).map_err(|r| format!("repo: {r}"))?;
        check_link(&self.blobs, &[DAG_CBOR]).map_err(|r| format!("blobs: {r}"))?;
        if !is_tid(&self.rev) {
            return Err(format!("rev {:?} is not a TID", shorten(&self.rev)));
        }
        if !is_datetime(&self.created_at) {
            return Err(format!(
                "createdAt {:?} is not an RFC 3339 date-time",
                shorten(&self.created_at)
            ));
        }
        if !is_pds_url(&self.pds) {
            return Err(format!(
                "pds {:?} is not an http(s) URL",
                shorten(&self.pds)
            ));
        }
        Ok(())
    }

    /// The Backup as an IPLD value (optional fields left out when absent or empty).
    pub fn to_ipld(&self) -> Ipld {
        let mut m = BTreeMap::new();
        m.insert("repo".to_owned(), Ipld::Link(self.repo));
        m.insert("rev".to_owned(), Ipld::String(self.rev.clone()));
        m.insert("blobs".to_owned(), Ipld::Link(self.blobs));
        if let Some(p) = self.preferences {
            m.insert("preferences".to_owned(), Ipld::Link(p));
        }
        m.insert(
            "createdAt".to_owned(),
            Ipld::String(self.created_at.clone()),
        );
        m.insert("pds".to_owned(), Ipld::String(self.pds.clone()));
        if !self.warnings.is_empty() {
            let w = self.warnings.iter().cloned().map(Ipld::String).collect();
            m.insert("warnings".to_owned(), Ipld::List(w));
        }
        Ipld::Map(m)
    }

    /// Validates and encodes the Backup.
    pub fn to_block(&self) -> Result<Block, BackupError> {
        self.validate()?;
        Block::encode(&self.to_ipld()).map_err(BackupError::Encode)
    }

    /// Decodes and validates a Backup block.
    pub fn from_block(block: &Block) -> Result<Self, BackupError> {
        let invalid = |reason: String| BackupError::InvalidBackup {
            cid: *block.cid(),
            reason,
        };
        let mut m = canonical_map(block).map_err(invalid)?;
        let required = |l: Option<Cid>, name: &str| l.ok_or_else(|| format!("missing {name:?}"));
        let repo = take_link(&mut m, "repo", &[DAG_CBOR])
            .and_then(|l| required(l, "repo"))
            .map_err(invalid)?;
        let blobs = take_link(&mut m, "blobs", &[DAG_CBOR])
            .and_then(|l| required(l, "blobs"))
            .map_err(invalid)?;
        let preferences = take_link(&mut m, "preferences", &[]).map_err(invalid)?;
        let rev = take_string(&mut m, "rev").map_err(invalid)?;
        let created_at = take_string(&mut m, "createdAt").map_err(invalid)?;
        let pds = take_string(&mut m, "pds").map_err(invalid)?;
        let warnings = match m.remove("warnings") {
            None => Vec::new(),
            Some(Ipld::List(items)) if items.is_empty() => {
                return Err(invalid(
                    "\"warnings\" is empty (leave it out instead)".to_owned(),
                ));
            }
            Some(Ipld::List(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, w)| match w {
                    Ipld::String(s) => Ok(s),
                    _ => Err(invalid(format!("warnings[{i}] is not a string"))),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("\"warnings\" is not a list".to_owned())),
        };
        no_extra_fields(&m).map_err(invalid)?;
        let backup = Self {
            repo,
            rev,
            blobs,
            preferences,
            created_at,
            pds,
            warnings,
        };
        backup.check().map_err(invalid)?;
        Ok(backup)
    }
}

/// Which backup of an account [`get_backup`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupRef<'a> {
    /// The one stored under this key.
    Key(&'a str),
    /// The one with the greatest key (the latest scheduled time).
    Latest,
}

/// A backup as listed: its key, its CID and its content.
pub type BackupEntry = (String, Cid, Backup);

/// Fetches and decodes a Root.
pub fn load_root<G: BlockGetter + ?Sized>(getter: &G, cid: &Cid) -> Result<Root, BackupError> {
    Root::from_block(&get(getter, cid)?)
}

/// Fetches and decodes an Account node.
pub fn load_account<G: BlockGetter + ?Sized>(
    getter: &G,
    cid: &Cid,
) -> Result<Account, BackupError> {
    Account::from_block(&get(getter, cid)?)
}

/// Fetches and decodes a Backup.
pub fn load_backup<G: BlockGetter + ?Sized>(getter: &G, cid: &Cid) -> Result<Backup, BackupError> {
    Backup::from_block(&get(getter, cid)?)
}

/// Adds `backup` for `account_did` under `key` (see [`backup_key`]) to the DAG at `root` (or to
/// an empty DAG), and returns the new Root CID with the blocks the getter does not have yet (the
/// Backup block among them).
///
/// If the account already holds a different Backup under `key`, the one whose CID sorts lowest
/// wins (see the module documentation); if that is the existing one, or the same Backup is
/// already there, the Root is returned unchanged with no blocks.
pub fn add_backup<G: BlockGetter + ?Sized>(
    getter: &G,
    root: Option<&Cid>,
    account_did: &str,
    key: &str,
    backup: &Backup,
) -> Result<(Cid, Vec<Block>), BackupError> {
    check_did(account_did)?;
    check_backup_key(key)?;
    let backup_block = backup.to_block()?;
    let mut root_node = match root {
        Some(cid) => load_root(getter, cid)?,
        None => Root::default(),
    };
    let mut overlay = Overlay::new(getter);
    let old_pail = match root_node.accounts.get(account_did) {
        Some(account) => load_account(getter, account)?.backups,
        None => overlay.empty_pail(),
    };
    let new_pail = put_lowest(&mut overlay, &old_pail, key, *backup_block.cid())?;
    if new_pail == old_pail
        && let Some(root) = root
    {
        return Ok((*root, Vec::new()));
    }
    let account_block = Account { backups: new_pail }.to_block()?;
    root_node
        .accounts
        .insert(account_did.to_owned(), *account_block.cid());
    let root_block = root_node.to_block()?;
    let root_cid = *root_block.cid();
    let mut blocks = overlay.into_blocks();
    blocks.extend([backup_block, account_block, root_block]);
    Ok((root_cid, missing(getter, blocks)?))
}

/// The union of several Roots: every account of any of them and, per account, every backup of
/// any of them by key (the lowest Backup CID where they disagree). Returns the merged Root CID and
/// the blocks the getter does not have yet.
///
/// The result depends only on the set of roots, not their order or repetitions; a single root
/// (or a root merged with ones it already contains) comes back unchanged with no blocks. No roots
/// give the empty Root.
pub fn merge_roots<G: BlockGetter + ?Sized>(
    getter: &G,
    roots: &[Cid],
) -> Result<(Cid, Vec<Block>), BackupError> {
    let mut unique = roots.to_vec();
    unique.sort_by_cached_key(Cid::to_bytes);
    unique.dedup();
    if let [only] = unique.as_slice() {
        load_root(getter, only)?;
        return Ok((*only, Vec::new()));
    }
    // Account DID → its distinct Account CIDs across the roots.
    let mut accounts: BTreeMap<String, Vec<Cid>> = BTreeMap::new();
    for cid in &unique {
        for (did, account) in load_root(getter, cid)?.accounts {
            let list = accounts.entry(did).or_default();
            if !list.contains(&account) {
                list.push(account);
            }
        }
    }
    let mut overlay = Overlay::new(getter);
    let mut merged = Root::default();
    let mut account_blocks = Vec::new();
    for (did, versions) in accounts {
        let account = match versions.as_slice() {
            [only] => {
                load_account(getter, only)?;
                *only
            }
            _ => {
                let pails = versions
                    .iter()
                    .map(|cid| Ok(load_account(getter, cid)?.backups))
                    .collect::<Result<Vec<_>, BackupError>>()?;
                let mut pail_root = pails[0];
                for other in &pails[1..] {
                    for entry in pail::entries(getter, other, &EntriesOptions::default())? {
                        let (key, value) = entry?;
                        pail_root = put_lowest(&mut overlay, &pail_root, &key, value)?;
                    }
                }
                let block = Account { backups: pail_root }.to_block()?;
                let cid = *block.cid();
                if !versions.contains(&cid) {
                    account_blocks.push(block);
                }
                cid
            }
        };
        merged.accounts.insert(did, account);
    }
    let root_block = merged.to_block()?;
    let root_cid = *root_block.cid();
    if unique.contains(&root_cid) {
        return Ok((root_cid, Vec::new()));
    }
    let mut blocks = overlay.into_blocks();
    blocks.extend(account_blocks);
    blocks.push(root_block);
    Ok((root_cid, missing(getter, blocks)?))
}

/// The Root held by a clock event (its `data` is a link to the Root).
pub fn event_root(cid: &Cid, event: &Event) -> Result<Cid, BackupError> {
    match &event.data {
        Ipld::Link(root) if root.codec() == DAG_CBOR => Ok(*root),
        Ipld::Link(root) => Err(BackupError::InvalidEvent {
            cid: *cid,
            reason: format!("a link to {root}, which is not DAG-CBOR"),
        }),
        _ => Err(BackupError::InvalidEvent {
            cid: *cid,
            reason: "data is not a link".to_owned(),
        }),
    }
}

/// The clock event block that publishes `root` after the events in `parents` (the clock heads
/// it merges; empty for the first backup of a Space). Parents are sorted by CID bytes.
pub fn root_event(root: &Cid, parents: &[Cid]) -> Result<Block, BackupError> {
    Ok(Event::new(Ipld::Link(*root), parents.to_vec()).to_block()?)
}

/// The current state behind a clock head: no head gives `None`; one event gives its Root; several
/// give their Roots merged ([`merge_roots`]) with the blocks that merge made.
pub fn head_root<G: BlockGetter + ?Sized>(
    getter: &G,
    head: &[Cid],
) -> Result<Option<(Cid, Vec<Block>)>, BackupError> {
    if head.is_empty() {
        return Ok(None);
    }
    let roots = head
        .iter()
        .map(|cid| event_root(cid, &clock::get_event(getter, cid)?))
        .collect::<Result<Vec<_>, _>>()?;
    merge_roots(getter, &roots).map(Some)
}

/// Every backup of `account_did` in the DAG at `root`, in key (time) order. An account without
/// backups gives an empty list.
pub fn list_backups<G: BlockGetter + ?Sized>(
    getter: &G,
    root: &Cid,
    account_did: &str,
) -> Result<Vec<BackupEntry>, BackupError> {
    let Some(pail_root) = account_pail(getter, root, account_did)? else {
        return Ok(Vec::new());
    };
    pail::entries(getter, &pail_root, &EntriesOptions::default())?
        .map(|entry| {
            let (key, cid) = entry?;
            let backup = load_backup(getter, &cid)?;
            Ok((key, cid, backup))
        })
        .collect()
}

/// One backup of `account_did`: by key, or the latest. `None` if there is no such backup.
pub fn get_backup<G: BlockGetter + ?Sized>(
    getter: &G,
    root: &Cid,
    account_did: &str,
    which: BackupRef<'_>,
) -> Result<Option<BackupEntry>, BackupError> {
    let Some(pail_root) = account_pail(getter, root, account_did)? else {
        return Ok(None);
    };
    let found = match which {
        BackupRef::Key(key) => pail::get(getter, &pail_root, key)?.map(|c| (key.to_owned(), c)),
        BackupRef::Latest => {
            let mut last = None;
            for entry in pail::entries(getter, &pail_root, &EntriesOptions::default())? {
                last = Some(entry?);
            }
            last
        }
    };
    found
        .map(|(key, cid)| Ok((key, cid, load_backup(getter, &cid)?)))
        .transpose()
}

/// The accounts with backups in the DAG at `root`.
pub fn accounts<G: BlockGetter + ?Sized>(
    getter: &G,
    root: &Cid,
) -> Result<Vec<String>, BackupError> {
    Ok(load_root(getter, root)?.accounts.into_keys().collect())
}

/// The pail root of an account's backups, if the account is in the DAG.
fn account_pail<G: BlockGetter + ?Sized>(
    getter: &G,
    root: &Cid,
    account_did: &str,
) -> Result<Option<Cid>, BackupError> {
    match load_root(getter, root)?.accounts.get(account_did) {
        Some(cid) => Ok(Some(load_account(getter, cid)?.backups)),
        None => Ok(None),
    }
}

/// The blobs of a backup, `(ATProto blob CID, UnixFS root CID)` in key order, read lazily.
pub fn blobs<'g, G: BlockGetter + ?Sized>(
    getter: &'g G,
    backup: &Backup,
) -> Result<Blobs<'g, G>, BackupError> {
    Ok(Blobs {
        inner: pail::entries(getter, &backup.blobs, &EntriesOptions::default())?,
        done: false,
    })
}

/// The UnixFS root of one blob of a backup, if the backup has it.
pub fn get_blob<G: BlockGetter + ?Sized>(
    getter: &G,
    backup: &Backup,
    blob: &Cid,
) -> Result<Option<Cid>, BackupError> {
    let key = blob.to_string();
    match pail::get(getter, &backup.blobs, &key)? {
        Some(root) => blob_entry(key, root).map(|(_, root)| Some(root)),
        None => Ok(None),
    }
}

/// Iterator over a backup's blobs; see [`blobs`]. The first error ends the iteration.
pub struct Blobs<'g, G: ?Sized> {
    inner: pail::Entries<'g, G>,
    done: bool,
}

impl<G: ?Sized> std::fmt::Debug for Blobs<'_, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("inner", &self.inner)
            .field("done", &self.done)
            .finish()
    }
}

impl<G: BlockGetter + ?Sized> Iterator for Blobs<'_, G> {
    type Item = Result<(Cid, Cid), BackupError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self
            .inner
            .next()?
            .map_err(BackupError::from)
            .and_then(|(key, value)| blob_entry(key, value));
        self.done = item.is_err();
        Some(item)
    }
}

/// Checks one blobs pail entry.
fn blob_entry(key: String, value: Cid) -> Result<(Cid, Cid), BackupError> {
    let invalid = |reason: String| BackupError::InvalidBlobEntry {
        key: shorten(&key),
        reason,
    };
    let blob = parse_cid(&key).map_err(|e| invalid(e.to_string()))?;
    check_blob_cid(&blob).map_err(&invalid)?;
    if blob.to_string() != key {
        return Err(invalid(
            "not the canonical (base32) form of the CID".to_owned(),
        ));
    }
    check_link(&value, &[RAW, DAG_PB]).map_err(|r| invalid(format!("value: {r}")))?;
    Ok((blob, value))
}

fn check_blob_cid(blob: &Cid) -> Result<(), String> {
    if blob.version() != cid::Version::V1
        || blob.codec() != RAW
        || blob.hash().code() != SHA2_256
        || blob.hash().size() != 32
    {
        return Err(format!("{blob} is not a CIDv1 raw sha2-256 blob CID"));
    }
    Ok(())
}

/// A blobs pail holding `entries` (ATProto blob CID → UnixFS root CID): its root and every block
/// the getter does not have yet. A blob listed twice keeps its last root.
pub fn build_blobs<G: BlockGetter + ?Sized>(
    getter: &G,
    entries: impl IntoIterator<Item = (Cid, Cid)>,
) -> Result<(Cid, Vec<Block>), BackupError> {
    update_blobs(getter, None, entries)
}

/// The blobs pail `base` (or an empty one) with `entries` added or replaced: its root and the
/// blocks the getter does not have yet. An incremental backup passes the previous backup's
/// `blobs` and only the new blobs, so the two share every unchanged shard.
pub fn update_blobs<G: BlockGetter + ?Sized>(
    getter: &G,
    base: Option<&Cid>,
    entries: impl IntoIterator<Item = (Cid, Cid)>,
) -> Result<(Cid, Vec<Block>), BackupError> {
    let mut overlay = Overlay::new(getter);
    let mut root = match base {
        Some(cid) => *cid,
        None => overlay.empty_pail(),
    };
    for (blob, unixfs) in entries {
        let key = blob.to_string();
        check_blob_cid(&blob).map_err(|reason| BackupError::InvalidBlobEntry {
            key: key.clone(),
            reason,
        })?;
        check_link(&unixfs, &[RAW, DAG_PB]).map_err(|r| BackupError::InvalidBlobEntry {
            key: key.clone(),
            reason: format!("value: {r}"),
        })?;
        let diff = pail::put(&overlay, &root, &key, unixfs)?;
        root = overlay.apply(diff);
    }
    let blocks = overlay.into_blocks();
    Ok((root, missing(getter, blocks)?))
}

/// The backup key for a time in milliseconds since the Unix epoch, exactly as JavaScript's
/// `new Date(millis).toISOString()` writes it (`2025-03-12T15:13:59.958Z`).
pub fn backup_key(millis: u64) -> Result<String, BackupError> {
    // Days-to-civil conversion (Howard Hinnant's algorithm), for dates from 1970 on.
    let secs = millis / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    if year > 9999 {
        return Err(BackupError::TimeOutOfRange { millis });
    }
    Ok(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        millis % 1000
    ))
}

/// Whether `key` is a backup key: a UTC timestamp in `toISOString` form,
/// `YYYY-MM-DDTHH:MM:SS.sssZ`, with valid fields.
pub fn is_backup_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24 && b[19] == b'.' && b[23] == b'Z' && digits(&b[20..23]) && is_date_time(&b[..19])
}

fn check_backup_key(key: &str) -> Result<(), BackupError> {
    if is_backup_key(key) {
        Ok(())
    } else {
        Err(BackupError::InvalidBackupKey { key: shorten(key) })
    }
}

/// Puts `key → value` into the pail at `root` unless it already holds a value under `key` whose
/// CID sorts no higher; returns the new root.
fn put_lowest<G: BlockGetter + ?Sized>(
    overlay: &mut Overlay<'_, G>,
    root: &Cid,
    key: &str,
    value: Cid,
) -> Result<Cid, BackupError> {
    check_backup_key(key)?;
    if let Some(existing) = pail::get(&*overlay, root, key)?
        && existing.to_bytes() <= value.to_bytes()
    {
        return Ok(*root);
    }
    let diff = pail::put(&*overlay, root, key, value)?;
    Ok(overlay.apply(diff))
}

/// Blocks made during an operation, over the getter's: pail shards replaced by later puts are
/// dropped, so what remains is what the final root needs and the getter lacks.
struct Overlay<'a, G: ?Sized> {
    base: &'a G,
    blocks: HashMap<Cid, Block>,
    /// Insertion order, so the returned blocks come children first.
    order: Vec<Cid>,
}

impl<'a, G: BlockGetter + ?Sized> Overlay<'a, G> {
    fn new(base: &'a G) -> Self {
        Self {
            base,
            blocks: HashMap::new(),
            order: Vec::new(),
        }
    }

    fn insert(&mut self, block: Block) {
        let cid = *block.cid();
        if self.blocks.insert(cid, block).is_none() {
            self.order.push(cid);
        }
    }

    /// The empty pail root, added to the overlay.
    fn empty_pail(&mut self) -> Cid {
        let block = pail::empty().into_block();
        let cid = *block.cid();
        self.insert(block);
        cid
    }

    /// Records a pail diff; returns the new root.
    fn apply(&mut self, diff: ShardDiff) -> Cid {
        for removed in &diff.removals {
            self.blocks.remove(removed.cid());
        }
        for added in diff.additions {
            self.insert(added.into_block());
        }
        diff.root
    }

    fn into_blocks(mut self) -> Vec<Block> {
        self.order
            .into_iter()
            .filter_map(|cid| self.blocks.remove(&cid))
            .collect()
    }
}

impl<G: BlockGetter + ?Sized> BlockGetter for Overlay<'_, G> {
    fn get_block(&self, cid: &Cid) -> Result<Option<Block>, StoreError> {
        match self.blocks.get(cid) {
            Some(block) => Ok(Some(block.clone())),
            None => self.base.get_block(cid),
        }
    }
}

/// The blocks the getter does not have.
fn missing<G: BlockGetter + ?Sized>(
    getter: &G,
    blocks: Vec<Block>,
) -> Result<Vec<Block>, BackupError> {
    let mut out = Vec::with_capacity(blocks.len());
    for block in blocks {
        let cid = *block.cid();
        match getter.get_block(&cid) {
            Ok(Some(_)) => {}
            Ok(None) => out.push(block),
            Err(source) => return Err(BackupError::Store { cid, source }),
        }
    }
    Ok(out)
}

/// Fetches a block, mapping failures into [`BackupError`].
fn get<G: BlockGetter + ?Sized>(getter: &G, cid: &Cid) -> Result<Block, BackupError> {
    fetch(getter, cid).map_err(|e| match e {
        FetchError::Missing => BackupError::MissingBlock { cid: *cid },
        FetchError::Store(source) => BackupError::Store { cid: *cid, source },
        FetchError::Mismatch(source) => BackupError::BlockMismatch {
            cid: *cid,
            source: Box::new(source),
        },
    })
}

fn map<const N: usize>(fields: [(&str, Ipld); N]) -> Ipld {
    Ipld::Map(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// Decodes a DAG-CBOR map, requiring the block to be the canonical encoding of its value (so a
/// value has exactly one CID).
fn canonical_map(block: &Block) -> Result<BTreeMap<String, Ipld>, String> {
    if block.cid().codec() != DAG_CBOR {
        return Err(format!("codec 0x{:x} is not DAG-CBOR", block.cid().codec()));
    }
    let value: Ipld = block.decode().map_err(|e| e.to_string())?;
    let again = crate::ipld::encode_dag_cbor(&value).map_err(|e| e.to_string())?;
    if again != block.bytes().as_ref() {
        return Err("not canonical DAG-CBOR".to_owned());
    }
    match value {
        Ipld::Map(m) => Ok(m),
        _ => Err("not a map".to_owned()),
    }
}

fn no_extra_fields(m: &BTreeMap<String, Ipld>) -> Result<(), String> {
    match m.keys().next() {
        Some(extra) => Err(format!("unexpected field {:?}", shorten(extra))),
        None => Ok(()),
    }
}

/// Removes an optional link field; `codecs` empty means any codec.
fn take_link(
    m: &mut BTreeMap<String, Ipld>,
    name: &str,
    codecs: &[u64],
) -> Result<Option<Cid>, String> {
    match m.remove(name) {
        None => Ok(None),
        Some(Ipld::Link(cid)) => {
            check_link(&cid, codecs).map_err(|r| format!("{name:?}: {r}"))?;
            Ok(Some(cid))
        }
        Some(_) => Err(format!("{name:?} is not a link")),
    }
}

fn take_string(m: &mut BTreeMap<String, Ipld>, name: &str) -> Result<String, String> {
    match m.remove(name) {
        Some(Ipld::String(s)) => Ok(s),
        Some(_) => Err(format!("{name:?} is not a string")),
        None => Err(format!("missing {name:?}")),
    }
}

/// A link must be CIDv1 and, when `codecs` is not empty, use one of them.
fn check_link(cid: &Cid, codecs: &[u64]) -> Result<(), String> {
    if cid.version() != cid::Version::V1 {
        return Err(format!("{cid} is not a CIDv1"));
    }
    if !codecs.is_empty() && !codecs.contains(&cid.codec()) {
        return Err(format!("{cid} has codec 0x{:x}", cid.codec()));
    }
    Ok(())
}

fn check_did(did: &str) -> Result<(), BackupError> {
    if is_did(did) {
        Ok(())
    } else {
        Err(BackupError::InvalidDid { did: shorten(did) })
    }
}

/// ATProto DID syntax: `did:<method>:<id>`, method lowercase letters and digits, id of
/// `[A-Za-z0-9._:%-]` not ending in `:`, at most 2048 characters.
fn is_did(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("did:") else {
        return false;
    };
    let Some((method, id)) = rest.split_once(':') else {
        return false;
    };
    s.len() <= MAX_DID_LEN
        && !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !id.is_empty()
        && !id.ends_with(':')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:%-".contains(&b))
}

/// ATProto TID syntax: 13 characters of base32-sortable, the first one at most `j`.
fn is_tid(s: &str) -> bool {
    const ALPHABET: &[u8] = b"234567abcdefghijklmnopqrstuvwxyz";
    let b = s.as_bytes();
    b.len() == 13 && b.iter().all(|c| ALPHABET.contains(c)) && b"234567abcdefghij".contains(&b[0])
}

fn digits(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_digit)
}

fn num(b: &[u8]) -> u32 {
    b.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0'))
}

/// `YYYY-MM-DDTHH:MM:SS` with valid ranges (leap seconds allowed, as RFC 3339 does).
fn is_date_time(b: &[u8]) -> bool {
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return false;
    }
    let fields = [
        &b[0..4],
        &b[5..7],
        &b[8..10],
        &b[11..13],
        &b[14..16],
        &b[17..19],
    ];
    if !fields.iter().all(|f| digits(f)) {
        return false;
    }
    let [year, month, day, hour, minute, second] = fields.map(num);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=days_in_month).contains(&day) && hour < 24 && minute < 60 && second <= 60
}

/// RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS`, optional fraction, then `Z` or `±HH:MM`.
fn is_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 || !is_date_time(&b[..19]) {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    match rest {
        b"Z" => true,
        [sign, h1, h2, b':', m1, m2] if *sign == b'+' || *sign == b'-' => {
            digits(&[*h1, *h2, *m1, *m2]) && num(&[*h1, *h2]) < 24 && num(&[*m1, *m2]) < 60
        }
        _ => false,
    }
}

/// `http://` or `https://` followed by a host, printable ASCII without spaces.
fn is_pds_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && s.len() <= MAX_URL_LEN
        && s.bytes().all(|b| b.is_ascii_graphic())
}

fn shorten(s: &str) -> String {
    if s.len() <= DISPLAY_LEN {
        return s.to_owned();
    }
    let mut end = DISPLAY_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipld::cid_sha256;

    type Store = HashMap<Cid, Block>;

    fn put_all(store: &mut Store, blocks: Vec<Block>) {
        for b in blocks {
            store.insert(*b.cid(), b);
        }
    }

    const ALICE: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
    const BOB: &str = "did:web:bob.example.com";

    fn key(n: u64) -> String {
        backup_key(1_741_792_439_958 + n * 3_600_000).unwrap()
    }

    /// A valid TID distinct per `n`.
    fn tid(n: u64) -> String {
        let alphabet = b"234567abcdefghijklmnopqrstuvwxyz";
        let mut s = String::from("3lkaaaaaaa");
        for i in (0..3).rev() {
            s.push(alphabet[((n >> (5 * i)) & 31) as usize] as char);
        }
        s
    }

    fn commit(n: u64) -> Cid {
        cid_sha256(DAG_CBOR, format!("commit {n}").as_bytes())
    }

    fn blob(n: u64) -> Cid {
        cid_sha256(RAW, format!("blob {n}").as_bytes())
    }

    /// A backup with `n_blobs` blobs; its blobs pail is stored.
    fn backup(store: &mut Store, n: u64, n_blobs: u64) -> Backup {
        let (blobs, blocks) =
            build_blobs(&*store, (0..n_blobs).map(|i| (blob(i), blob(i)))).unwrap();
        put_all(store, blocks);
        Backup {
            repo: commit(n),
            rev: tid(n),
            blobs,
            preferences: None,
            created_at: key(n),
            pds: "https://pds.example.com".to_owned(),
            warnings: Vec::new(),
        }
    }

    fn add(store: &mut Store, root: Option<Cid>, did: &str, k: &str, b: &Backup) -> Cid {
        let (root, blocks) = add_backup(&*store, root.as_ref(), did, k, b).unwrap();
        put_all(store, blocks);
        // Everything the root needs is now in the store.
        reachable(store, &root);
        root
    }

    /// Walks the whole DAG (roots, accounts, backup pails, backups, blob pails) from `root`.
    fn reachable(store: &Store, root: &Cid) -> usize {
        let mut n = 0;
        for did in accounts(store, root).unwrap() {
            for (_, _, b) in list_backups(store, root, &did).unwrap() {
                n += 1;
                for entry in blobs(store, &b).unwrap() {
                    entry.unwrap();
                }
            }
        }
        n
    }

    #[test]
    fn backup_keys_are_to_iso_string() {
        assert_eq!(backup_key(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            backup_key(1_741_792_439_958).unwrap(),
            "2025-03-12T15:13:59.958Z"
        );
        assert_eq!(
            backup_key(951_782_400_000).unwrap(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            backup_key(253_402_300_799_999).unwrap(),
            "9999-12-31T23:59:59.999Z"
        );
        assert!(backup_key(253_402_300_800_000).is_err());
        assert!(is_backup_key("2025-03-12T15:13:59.958Z"));
        for bad in [
            "2025-03-12T15:13:59Z",
            "2025-03-12T15:13:59.958+00:00",
            "2025-02-29T15:13:59.958Z",
            "2025-03-12 15:13:59.958Z",
            "2025-13-12T15:13:59.958Z",
        ] {
            assert!(!is_backup_key(bad), "{bad}");
        }
        assert!(is_datetime("2025-03-12T15:13:59+01:00"));
        assert!(is_datetime("2025-03-12T15:13:59.123456Z"));
        assert!(!is_datetime("2025-03-12T15:13:59"));
    }

    #[test]
    fn nodes_round_trip_and_reject_extras() {
        let mut store = Store::new();
        let mut b = backup(&mut store, 1, 2);
        b.preferences = Some(cid_sha256(DAG_CBOR, b"prefs"));
        b.warnings = vec!["commit signed by a rotated key".to_owned()];
        let block = b.to_block().unwrap();
        assert_eq!(Backup::from_block(&block).unwrap(), b);

        // Field names on the wire.
        let Ipld::Map(m) = block.decode::<Ipld>().unwrap() else {
            panic!()
        };
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "blobs",
                "createdAt",
                "pds",
                "preferences",
                "repo",
                "rev",
                "warnings"
            ]
        );

        let mut extra = m.clone();
        extra.insert("x".to_owned(), Ipld::Null);
        let bad = Block::encode(&Ipld::Map(extra)).unwrap();
        assert!(matches!(
            Backup::from_block(&bad),
            Err(BackupError::InvalidBackup { .. })
        ));

        let mut empty_warnings = m.clone();
        empty_warnings.insert("warnings".to_owned(), Ipld::List(vec![]));
        let bad = Block::encode(&Ipld::Map(empty_warnings)).unwrap();
        assert!(matches!(
            Backup::from_block(&bad),
            Err(BackupError::InvalidBackup { .. })
        ));

        let mut bad_rev = b.clone();
        bad_rev.rev = "not-a-tid".to_owned();
        assert!(matches!(
            bad_rev.to_block(),
            Err(BackupError::InvalidValue { .. })
        ));
        let mut bad_pds = b.clone();
        bad_pds.pds = "ftp://x".to_owned();
        assert!(matches!(
            bad_pds.to_block(),
            Err(BackupError::InvalidValue { .. })
        ));

        let root = Root {
            accounts: [(ALICE.to_owned(), *block.cid())].into(),
        };
        let rb = root.to_block().unwrap();
        assert_eq!(Root::from_block(&rb).unwrap(), root);
        // Root as JS would write it, checked by hand: {"type", "version", "accounts"}.
        let Ipld::Map(m) = rb.decode::<Ipld>().unwrap() else {
            panic!()
        };
        assert_eq!(m["type"], Ipld::String("bluesky-backups".to_owned()));
        assert_eq!(m["version"], Ipld::Integer(1));

        let wrong_version = map([
            ("type", Ipld::String(ROOT_TYPE.to_owned())),
            ("version", Ipld::Integer(2)),
            ("accounts", Ipld::Map(BTreeMap::new())),
        ]);
        let bad = Block::encode(&wrong_version).unwrap();
        assert!(matches!(
            Root::from_block(&bad),
            Err(BackupError::InvalidRoot { .. })
        ));
        let not_did = Root {
            accounts: [("alice".to_owned(), *block.cid())].into(),
        };
        assert!(matches!(
            not_did.to_block(),
            Err(BackupError::InvalidDid { .. })
        ));

        let account = Account {
            backups: *pail::empty().cid(),
        };
        let ab = account.to_block().unwrap();
        assert_eq!(Account::from_block(&ab).unwrap(), account);
    }

    #[test]
    fn non_canonical_cbor_is_rejected() {
        // {"backups": link} with the map length written in a longer form than needed.
        let account = Account {
            backups: *pail::empty().cid(),
        };
        let good = account.to_block().unwrap();
        let mut bytes = good.bytes().to_vec();
        assert_eq!(bytes[0], 0xa1);
        bytes.splice(0..1, [0xb8, 0x01]);
        let bad = Block::from_codec(DAG_CBOR, bytes);
        assert!(matches!(
            Account::from_block(&bad),
            Err(BackupError::InvalidAccount { .. })
        ));
    }

    #[test]
    fn add_list_get() {
        let mut store = Store::new();
        let b1 = backup(&mut store, 1, 3);
        let b2 = backup(&mut store, 2, 5);
        let r1 = add(&mut store, None, ALICE, &key(1), &b1);
        let r2 = add(&mut store, Some(r1), ALICE, &key(2), &b2);
        let r3 = add(&mut store, Some(r2), BOB, &key(1), &b1);

        let listed = list_backups(&store, &r3, ALICE).unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].0.as_str(), &listed[0].2), (key(1).as_str(), &b1));
        assert_eq!((listed[1].0.as_str(), &listed[1].2), (key(2).as_str(), &b2));
        assert_eq!(list_backups(&store, &r3, BOB).unwrap().len(), 1);
        assert!(
            list_backups(&store, &r3, "did:plc:nobody")
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            accounts(&store, &r3).unwrap(),
            vec![ALICE.to_owned(), BOB.to_owned()]
        );

        let latest = get_backup(&store, &r3, ALICE, BackupRef::Latest)
            .unwrap()
            .unwrap();
        assert_eq!(latest.2, b2);
        let first = get_backup(&store, &r3, ALICE, BackupRef::Key(&key(1)))
            .unwrap()
            .unwrap();
        assert_eq!(first.2, b1);
        assert!(
            get_backup(&store, &r3, ALICE, BackupRef::Key(&key(9)))
                .unwrap()
                .is_none()
        );
        assert!(
            get_backup(&store, &r3, BOB, BackupRef::Key(&key(2)))
                .unwrap()
                .is_none()
        );

        let listed_blobs: Vec<(Cid, Cid)> =
            blobs(&store, &b2).unwrap().map(Result::unwrap).collect();
        assert_eq!(listed_blobs.len(), 5);
        let mut want: Vec<(Cid, Cid)> = (0..5).map(|i| (blob(i), blob(i))).collect();
        want.sort_by_key(|(b, _)| b.to_string());
        assert_eq!(listed_blobs, want);
        assert_eq!(get_blob(&store, &b2, &blob(4)).unwrap(), Some(blob(4)));
        assert_eq!(get_blob(&store, &b1, &blob(4)).unwrap(), None);

        // Adding the same backup again changes nothing.
        let (again, blocks) = add_backup(&store, Some(&r3), ALICE, &key(2), &b2).unwrap();
        assert_eq!((again, blocks.len()), (r3, 0));

        // Bad keys and DIDs are named errors.
        assert!(matches!(
            add_backup(&store, Some(&r3), ALICE, "yesterday", &b2),
            Err(BackupError::InvalidBackupKey { .. })
        ));
        assert!(matches!(
            add_backup(&store, Some(&r3), "alice", &key(3), &b2),
            Err(BackupError::InvalidDid { .. })
        ));
    }

    #[test]
    fn add_returns_exactly_the_missing_blocks() {
        let mut store = Store::new();
        let b1 = backup(&mut store, 1, 1);
        let (r1, blocks) = add_backup(&store, None, ALICE, &key(1), &b1).unwrap();
        // Backup, pail shard, account, root: nothing intermediate (the empty pail was replaced).
        assert_eq!(blocks.len(), 4);
        assert!(!blocks.iter().any(|b| b.cid() == pail::empty().cid()));
        assert_eq!(blocks.last().unwrap().cid(), &r1);
        put_all(&mut store, blocks);
        let before = store.len();
        let b2 = backup(&mut store, 2, 1);
        let blob_blocks = store.len() - before;
        let (_, blocks) = add_backup(&store, Some(&r1), ALICE, &key(2), &b2).unwrap();
        assert!(blocks.iter().all(|b| !store.contains_key(b.cid())));
        assert_eq!(blob_blocks, 0, "the same blobs give the same pail");
    }

    #[test]
    fn a_key_keeps_the_lowest_backup_cid() {
        let mut store = Store::new();
        let b1 = backup(&mut store, 1, 1);
        let mut b1_retry = b1.clone();
        b1_retry.created_at = "2025-03-12T15:20:00.000Z".to_owned();
        let (c1, c2) = (
            *b1.to_block().unwrap().cid(),
            *b1_retry.to_block().unwrap().cid(),
        );
        let (low, high) = if c1.to_bytes() < c2.to_bytes() {
            (&b1, &b1_retry)
        } else {
            (&b1_retry, &b1)
        };

        let r_low = add(&mut store, None, ALICE, &key(1), low);
        let r_high_then_low = {
            let r = add(&mut store, None, ALICE, &key(1), high);
            add(&mut store, Some(r), ALICE, &key(1), low)
        };
        assert_eq!(r_low, r_high_then_low);
        let (r, blocks) = add_backup(&store, Some(&r_low), ALICE, &key(1), high).unwrap();
        assert_eq!((r, blocks.len()), (r_low, 0));
        assert_eq!(
            get_backup(&store, &r, ALICE, BackupRef::Latest)
                .unwrap()
                .unwrap()
                .2,
            *low
        );
    }

    #[test]
    fn merge_is_a_union_commutative_and_idempotent() {
        let mut store = Store::new();
        let bs: Vec<Backup> = (0..6).map(|n| backup(&mut store, n, n)).collect();
        let base = add(&mut store, None, ALICE, &key(0), &bs[0]);
        // Fork: a adds Alice 1, 2 and Bob 3; b adds Alice 4 and Bob 5.
        let a = add(&mut store, Some(base), ALICE, &key(1), &bs[1]);
        let a = add(&mut store, Some(a), ALICE, &key(2), &bs[2]);
        let a = add(&mut store, Some(a), BOB, &key(3), &bs[3]);
        let b = add(&mut store, Some(base), ALICE, &key(4), &bs[4]);
        let b = add(&mut store, Some(b), BOB, &key(5), &bs[5]);

        let (ab, blocks) = merge_roots(&store, &[a, b]).unwrap();
        put_all(&mut store, blocks);
        let (ba, blocks) = merge_roots(&store, &[b, a, b]).unwrap();
        assert_eq!(ab, ba);
        assert!(
            blocks.is_empty(),
            "everything was already stored by the first merge"
        );
        assert_eq!(reachable(&store, &ab), 6);

        // The same as adding everything in one sequence, in any order.
        let mut seq = None;
        for (did, n) in [
            (BOB, 5),
            (ALICE, 2),
            (ALICE, 0),
            (BOB, 3),
            (ALICE, 4),
            (ALICE, 1),
        ] {
            seq = Some(add(&mut store, seq, did, &key(n), &bs[n as usize]));
        }
        assert_eq!(seq, Some(ab));

        // Idempotence and absorption.
        assert_eq!(merge_roots(&store, &[ab]).unwrap(), (ab, vec![]));
        assert_eq!(merge_roots(&store, &[ab, a]).unwrap(), (ab, vec![]));
        assert_eq!(merge_roots(&store, &[base, ab, b]).unwrap(), (ab, vec![]));
        // Associativity.
        let (a_base, blocks) = merge_roots(&store, &[a, base]).unwrap();
        put_all(&mut store, blocks);
        let (left, blocks) = merge_roots(&store, &[a_base, b]).unwrap();
        put_all(&mut store, blocks);
        assert_eq!(left, ab);

        // No roots: the empty Root.
        let (empty, blocks) = merge_roots(&store, &[]).unwrap();
        assert_eq!(Root::from_block(&blocks[0]).unwrap(), Root::default());
        assert_eq!(blocks[0].cid(), &empty);
    }

    #[test]
    fn merge_resolves_same_key_conflicts_by_lowest_cid() {
        let mut store = Store::new();
        let b = backup(&mut store, 1, 1);
        let mut other = b.clone();
        other.rev = "3lkaaaaaaaaab".to_owned();
        let x = add(&mut store, None, ALICE, &key(1), &b);
        let y = add(&mut store, None, ALICE, &key(1), &other);
        let (xy, blocks) = merge_roots(&store, &[x, y]).unwrap();
        assert!(blocks.is_empty(), "the winner's root already exists");
        assert_eq!(merge_roots(&store, &[y, x]).unwrap().0, xy);
        let kept = get_backup(&store, &xy, ALICE, BackupRef::Key(&key(1)))
            .unwrap()
            .unwrap();
        let lowest = [b.to_block().unwrap(), other.to_block().unwrap()]
            .into_iter()
            .min_by_key(|bl| bl.cid().to_bytes())
            .unwrap();
        assert_eq!(kept.1, *lowest.cid());
    }

    #[test]
    fn heads_and_events() {
        let mut store = Store::new();
        assert!(head_root(&store, &[]).unwrap().is_none());
        let b1 = backup(&mut store, 1, 1);
        let b2 = backup(&mut store, 2, 1);
        let r1 = add(&mut store, None, ALICE, &key(1), &b1);
        let e1 = root_event(&r1, &[]).unwrap();
        let r2 = add(&mut store, None, BOB, &key(2), &b2);
        let e2 = root_event(&r2, &[]).unwrap();
        let (c1, c2) = (*e1.cid(), *e2.cid());
        put_all(&mut store, vec![e1, e2]);
        assert_eq!(head_root(&store, &[c1]).unwrap(), Some((r1, vec![])));
        let (merged, blocks) = head_root(&store, &[c1, c2]).unwrap().unwrap();
        put_all(&mut store, blocks);
        assert_eq!(
            accounts(&store, &merged).unwrap(),
            vec![ALICE.to_owned(), BOB.to_owned()]
        );
        let e3 = root_event(&merged, &[c2, c1]).unwrap();
        let event = Event::from_block(&e3).unwrap();
        assert_eq!(event_root(e3.cid(), &event).unwrap(), merged);
        let mut sorted = vec![c1, c2];
        sorted.sort_by_key(Cid::to_bytes);
        assert_eq!(event.parents, sorted);

        let not_root = Event::new(Ipld::String("x".to_owned()), vec![])
            .to_block()
            .unwrap();
        let cid = *not_root.cid();
        put_all(&mut store, vec![not_root]);
        assert!(matches!(
            head_root(&store, &[cid]),
            Err(BackupError::InvalidEvent { .. })
        ));
    }

    #[test]
    fn blobs_pail_updates_share_shards() {
        let store = Store::new();
        let (full, full_blocks) =
            build_blobs(&store, (0..40).map(|i| (blob(i), blob(i + 100)))).unwrap();
        let mut store: Store = full_blocks.iter().map(|b| (*b.cid(), b.clone())).collect();
        let (first, blocks) =
            build_blobs(&store, (0..30).map(|i| (blob(i), blob(i + 100)))).unwrap();
        put_all(&mut store, blocks);
        let (second, new_blocks) = update_blobs(
            &store,
            Some(&first),
            (30..40).rev().map(|i| (blob(i), blob(i + 100))),
        )
        .unwrap();
        assert_eq!(second, full, "same entries, same pail, whatever the order");
        assert!(
            new_blocks.is_empty(),
            "every shard of the full pail is already stored"
        );

        // An empty pail is the empty shard.
        let (empty, blocks) = build_blobs(&Store::new(), []).unwrap();
        assert_eq!(&empty, pail::empty().cid());
        assert_eq!(blocks.len(), 1);

        // Only ATProto blob CIDs are keys.
        let err = build_blobs(&Store::new(), [(commit(1), blob(1))]).unwrap_err();
        assert!(matches!(err, BackupError::InvalidBlobEntry { .. }));
    }

    #[test]
    fn missing_blocks_are_named() {
        let mut store = Store::new();
        let b1 = backup(&mut store, 1, 1);
        let r1 = add(&mut store, None, ALICE, &key(1), &b1);
        let account = load_root(&store, &r1).unwrap().accounts[ALICE];
        store.remove(&account);
        assert!(matches!(
            list_backups(&store, &r1, ALICE),
            Err(BackupError::MissingBlock { cid }) if cid == account
        ));
    }
}
