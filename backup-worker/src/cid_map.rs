//! A map keyed by CID that costs a third of a `HashMap<Cid, _>` for the CIDs a backup deals in.
//!
//! A `Cid` is 96 bytes (its multihash reserves 64 bytes of digest). Every block of an ATProto
//! repo, every blob and every node of our own DAGs is a CIDv1 with a 32-byte sha2-256 digest,
//! so those are keyed by the digest alone (with the codec kept beside the value, to give the CID
//! back); anything else goes to a second, ordinary map. A backup of 100k records indexes about
//! 130k blocks at once, which is what keeps its memory flat.
//!
//! Keyed by digest, two CIDs that differ only in codec name the same entry: the same bytes.

use std::collections::HashMap;

use cid::Cid;
use proto::ipld::SHA2_256;

/// The sha2-256 digest of a CIDv1 sha2-256 CID.
pub fn sha256_digest(cid: &Cid) -> Option<[u8; 32]> {
    if cid.version() == cid::Version::V1 && cid.hash().code() == SHA2_256 {
        cid.hash().digest().try_into().ok()
    } else {
        None
    }
}

/// The CIDv1 of `codec` with a sha2-256 `digest`.
pub fn sha256_cid(codec: u64, digest: &[u8; 32]) -> Cid {
    let mh = cid::multihash::Multihash::<64>::wrap(SHA2_256, digest)
        .expect("a 32-byte digest fits a 64-byte multihash");
    Cid::new_v1(codec, mh)
}

/// A map from CID to `V`; see the module documentation.
#[derive(Clone, Debug)]
pub struct CidMap<V> {
    sha: HashMap<[u8; 32], (u64, V)>,
    other: HashMap<Cid, V>,
}

impl<V> Default for CidMap<V> {
    fn default() -> Self {
        Self {
            sha: HashMap::new(),
            other: HashMap::new(),
        }
    }
}

impl<V> CidMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.sha.len() + self.other.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `cid` (or a CID with its digest) is in the map.
    pub fn contains_key(&self, cid: &Cid) -> bool {
        self.get(cid).is_some()
    }

    /// The value for `cid`.
    pub fn get(&self, cid: &Cid) -> Option<&V> {
        match sha256_digest(cid) {
            Some(d) => self.sha.get(&d).map(|(_, v)| v),
            None => self.other.get(cid),
        }
    }

    /// Inserts unless present; returns whether it was inserted.
    pub fn insert_if_absent(&mut self, cid: Cid, value: V) -> bool {
        match sha256_digest(&cid) {
            Some(d) => match self.sha.entry(d) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert((cid.codec(), value));
                    true
                }
            },
            None => match self.other.entry(cid) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(value);
                    true
                }
            },
        }
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&Cid, &V) -> bool) {
        self.sha
            .retain(|d, (codec, v)| keep(&sha256_cid(*codec, d), v));
        self.other.retain(|cid, v| keep(cid, v));
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (Cid, &V)> + '_ {
        self.sha
            .iter()
            .map(|(d, (codec, v))| (sha256_cid(*codec, d), v))
            .chain(self.other.iter().map(|(c, v)| (*c, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ipld::{DAG_CBOR, RAW, cid_identity, cid_sha256};

    #[test]
    fn keys_by_digest_and_gives_cids_back() {
        let mut m = CidMap::new();
        let a = cid_sha256(DAG_CBOR, b"a");
        let odd = cid_identity(RAW, b"tiny");
        assert!(m.insert_if_absent(a, 1));
        assert!(!m.insert_if_absent(a, 2), "present: kept");
        assert!(m.insert_if_absent(odd, 3));
        assert_eq!(m.get(&a), Some(&1));
        assert_eq!(m.get(&odd), Some(&3));
        // The same bytes under another codec are the same entry.
        assert!(m.contains_key(&cid_sha256(RAW, b"a")));
        assert!(!m.contains_key(&cid_sha256(RAW, b"b")));
        let mut keys: Vec<Cid> = m.iter().map(|(c, _)| c).collect();
        keys.sort();
        let mut want = vec![a, odd];
        want.sort();
        assert_eq!(keys, want);
        m.retain(|c, _| *c != a);
        assert_eq!(m.len(), 1);
        assert!(!m.contains_key(&a));
        assert_eq!(sha256_cid(DAG_CBOR, &sha256_digest(&a).unwrap()), a);
    }
}
