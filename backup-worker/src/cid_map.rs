//! A map keyed by CID that costs a third of a `HashMap<Cid, _>` for the CIDs a backup deals in.
//!
//! A `Cid` is 96 bytes (its multihash reserves 64 bytes of digest). Every block of an ATProto
//! repo, every blob and every node of our own DAGs is a CIDv1 with a 32-byte sha2-256 digest,
//! so those are keyed by the digest alone (with the codec kept beside the value, to give the CID
//! back); anything else goes to a second, ordinary map. A backup of 100k records indexes about
//! 130k blocks at once, which is what keeps its memory flat.
//!
//! Keyed by digest, two CIDs that differ only in codec name the same entry: the same bytes.
//!
//! The digests live in a [`DigestIndex`]: a sorted vector searched by bisection, with a small
//! hash map in front for recent inserts that is merged in from time to time. It costs the
//! entries themselves (no hash-table slack, no doubling on growth), about half of a hash map's
//! peak.

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

/// A compact map from 32-byte digests to small values; see the module documentation.
#[derive(Clone, Debug)]
pub struct DigestIndex<V> {
    /// Sorted by key, keys unique.
    sorted: Vec<([u8; 32], V)>,
    /// Inserted since the last merge; disjoint from `sorted`.
    recent: HashMap<[u8; 32], V>,
}

impl<V> Default for DigestIndex<V> {
    fn default() -> Self {
        Self {
            sorted: Vec::new(),
            recent: HashMap::new(),
        }
    }
}

impl<V: Copy> DigestIndex<V> {
    /// Entries.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.recent.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn find(&self, key: &[u8; 32]) -> Result<usize, usize> {
        self.sorted.binary_search_by(|(k, _)| k.cmp(key))
    }

    /// The value under `key`.
    pub fn get(&self, key: &[u8; 32]) -> Option<V> {
        if let Some(v) = self.recent.get(key) {
            return Some(*v);
        }
        self.find(key).ok().map(|i| self.sorted[i].1)
    }

    /// The value under `key`, to change in place.
    pub fn get_mut(&mut self, key: &[u8; 32]) -> Option<&mut V> {
        if self.recent.contains_key(key) {
            return self.recent.get_mut(key);
        }
        match self.find(key) {
            Ok(i) => Some(&mut self.sorted[i].1),
            Err(_) => None,
        }
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &[u8; 32]) -> bool {
        self.get(key).is_some()
    }

    /// Inserts unless present; returns whether it was inserted.
    pub fn insert_if_absent(&mut self, key: [u8; 32], value: V) -> bool {
        if self.contains_key(&key) {
            return false;
        }
        self.recent.insert(key, value);
        if self.recent.len() >= (self.sorted.len() / 16).max(1024) {
            self.merge();
        }
        true
    }

    /// Moves `recent` into `sorted`: sorts the few new entries, then merges from the back, in
    /// place, into room made at the end (so the vector grows once, by exactly what is added).
    fn merge(&mut self) {
        let mut add: Vec<([u8; 32], V)> = self.recent.drain().collect();
        add.sort_unstable_by_key(|e| e.0);
        let old = self.sorted.len();
        self.sorted.reserve_exact(add.len());
        self.sorted.extend_from_slice(&add);
        let (mut i, mut j, mut k) = (old, add.len(), self.sorted.len());
        while j > 0 {
            k -= 1;
            if i > 0 && self.sorted[i - 1].0 > add[j - 1].0 {
                self.sorted[k] = self.sorted[i - 1];
                i -= 1;
            } else {
                self.sorted[k] = add[j - 1];
                j -= 1;
            }
        }
        self.recent.shrink_to(1024);
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8; 32], &mut V) -> bool) {
        self.sorted.retain_mut(|(k, v)| keep(k, v));
        self.recent.retain(|k, v| keep(k, v));
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8; 32], &V)> + '_ {
        self.sorted
            .iter()
            .map(|(k, v)| (k, v))
            .chain(self.recent.iter())
    }
}

/// A map from CID to `V`; see the module documentation.
#[derive(Clone, Debug)]
pub struct CidMap<V> {
    sha: DigestIndex<(u64, V)>,
    other: HashMap<Cid, V>,
}

impl<V> Default for CidMap<V> {
    fn default() -> Self {
        Self {
            sha: DigestIndex::default(),
            other: HashMap::new(),
        }
    }
}

impl<V: Copy> CidMap<V> {
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
    pub fn get(&self, cid: &Cid) -> Option<V> {
        match sha256_digest(cid) {
            Some(d) => self.sha.get(&d).map(|(_, v)| v),
            None => self.other.get(cid).copied(),
        }
    }

    /// Inserts unless present; returns whether it was inserted.
    pub fn insert_if_absent(&mut self, cid: Cid, value: V) -> bool {
        match sha256_digest(&cid) {
            Some(d) => self.sha.insert_if_absent(d, (cid.codec(), value)),
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
        assert_eq!(m.get(&a), Some(1));
        assert_eq!(m.get(&odd), Some(3));
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

    #[test]
    fn digest_index_matches_a_hash_map_through_merges() {
        let mut ours = DigestIndex::default();
        let key = |i: u32| {
            let mut k = [0u8; 32];
            // Spread keys so that merges interleave old and new ones.
            k[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
            k[4..8].copy_from_slice(&i.to_be_bytes());
            k
        };
        for i in 0..15_000u32 {
            assert!(ours.insert_if_absent(key(i), i), "insert {i}");
        }
        for i in 0..5_000u32 {
            assert!(!ours.insert_if_absent(key(i), i + 1), "re-insert {i}");
        }
        assert_eq!(ours.len(), 15_000);
        assert!(ours.sorted.len() > 10_000, "merged into the sorted part");
        assert!(
            ours.sorted.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, unique"
        );
        for i in 0..15_000u32 {
            assert_eq!(ours.get(&key(i)), Some(i), "the first value stays");
        }
        assert_eq!(ours.get(&[0xff; 32]), None);
        *ours.get_mut(&key(7)).unwrap() = 70;
        assert_eq!(ours.get(&key(7)), Some(70));
        ours.retain(|_, v| *v % 2 == 0);
        assert_eq!(ours.len(), 7_501);
        assert_eq!(ours.iter().count(), 7_501);
        assert_eq!(ours.get(&key(7)), Some(70));
        assert_eq!(ours.get(&key(9)), None);
    }
}
