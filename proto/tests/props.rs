//! Property tests of the codecs: CAR and DAG-CBOR round trips, and decoders that never panic
//! on arbitrary or corrupted input.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proto::car::{CarLimits, CarReader, CarWriter, decode_car, encode_car, encoded_car_len};
use proto::ipld::{
    DAG_CBOR, Ipld, RAW, cid_identity, cid_sha256, decode_dag_cbor, encode_dag_cbor,
};
use proto::{Block, Cid};

/// A multicodec for generated blocks and links.
fn codec() -> impl Strategy<Value = u64> {
    prop_oneof![Just(RAW), Just(DAG_CBOR)]
}

/// CIDs as they occur: mostly sha2-256 CIDv1s, some identity CIDs, some CIDv0s.
fn arb_cid() -> impl Strategy<Value = Cid> {
    prop_oneof![
        6 => (codec(), vec(any::<u8>(), 0..64)).prop_map(|(c, b)| cid_sha256(c, &b)),
        1 => (codec(), vec(any::<u8>(), 0..=64)).prop_map(|(c, b)| cid_identity(c, &b)),
        1 => vec(any::<u8>(), 0..64).prop_map(|b| {
            Cid::new_v0(*cid_sha256(RAW, &b).hash()).expect("a sha2-256 multihash")
        }),
    ]
}

/// Blocks of random bytes under raw or DAG-CBOR CIDs (the bytes need not be valid DAG-CBOR: a
/// CAR does not look inside its blocks).
fn arb_block() -> impl Strategy<Value = Block> {
    (codec(), vec(any::<u8>(), 0..600)).prop_map(|(c, b)| Block::from_codec(c, b))
}

/// Any IPLD value DAG-CBOR can hold: integers across CBOR's whole range
/// (-2^64 ..= 2^64 - 1), finite floats only, text map keys.
fn arb_ipld() -> impl Strategy<Value = Ipld> {
    let integer = prop_oneof![
        any::<i64>().prop_map(i128::from),
        any::<u64>().prop_map(i128::from),
        (0..=u64::MAX).prop_map(|n| -1 - i128::from(n)),
    ];
    let leaf = prop_oneof![
        Just(Ipld::Null),
        any::<bool>().prop_map(Ipld::Bool),
        integer.prop_map(Ipld::Integer),
        any::<f64>()
            .prop_filter("DAG-CBOR has no NaN or infinities", |f| f.is_finite())
            .prop_map(Ipld::Float),
        ".{0,20}".prop_map(Ipld::String),
        vec(any::<u8>(), 0..40).prop_map(Ipld::Bytes),
        arb_cid().prop_map(Ipld::Link),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Ipld::List),
            btree_map(".{0,12}", inner, 0..6).prop_map(Ipld::Map),
        ]
    })
}

/// A valid CAR, and a corruption of it: a flipped bit, a cut, a spliced-in run of bytes.
#[derive(Clone, Debug)]
enum Damage {
    Flip { at: usize, bit: u8 },
    Cut { at: usize },
    Splice { at: usize, bytes: Vec<u8> },
}

fn arb_damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Damage::Flip { at, bit }),
        any::<usize>().prop_map(|at| Damage::Cut { at }),
        (any::<usize>(), vec(any::<u8>(), 1..12))
            .prop_map(|(at, bytes)| Damage::Splice { at, bytes }),
    ]
}

fn damage(mut bytes: Vec<u8>, damage: &Damage) -> Vec<u8> {
    let len = bytes.len();
    match damage {
        Damage::Flip { at, bit } => bytes[at % len] ^= 1 << bit,
        Damage::Cut { at } => bytes.truncate(at % len),
        Damage::Splice { at, bytes: more } => {
            let at = at % (len + 1);
            bytes.splice(at..at, more.iter().copied());
        }
    }
    bytes
}

fn limits() -> CarLimits {
    CarLimits::default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn car_round_trips(roots in vec(arb_cid(), 0..4), blocks in vec(arb_block(), 0..12)) {
        let bytes = encode_car(&roots, &blocks);
        prop_assert_eq!(bytes.len(), encoded_car_len(&roots, &blocks));

        let (got_roots, got_blocks) = decode_car(&bytes, &limits()).unwrap();
        prop_assert_eq!(&got_roots, &roots);
        prop_assert_eq!(&got_blocks, &blocks);

        let reader = CarReader::new(bytes.as_slice(), &limits()).unwrap();
        prop_assert_eq!(reader.roots(), roots.as_slice());
        let streamed: Vec<Block> = reader.collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(&streamed, &blocks);

        let mut writer = CarWriter::new(Vec::new(), &roots).unwrap();
        for block in &blocks {
            writer.write_block(block).unwrap();
        }
        prop_assert_eq!(writer.finish().unwrap(), bytes);
    }

    #[test]
    fn dag_cbor_round_trips(value in arb_ipld()) {
        let bytes = encode_dag_cbor(&value).unwrap();
        let back: Ipld = decode_dag_cbor(&bytes).unwrap();
        prop_assert_eq!(&back, &value);
        // Canonical: the decoded value writes the same bytes.
        prop_assert_eq!(encode_dag_cbor(&back).unwrap(), bytes);
    }

    #[test]
    fn dag_cbor_maps_are_written_in_canonical_order(
        map in btree_map(".{0,12}", any::<i64>().prop_map(|i| Ipld::Integer(i.into())), 0..12),
    ) {
        let bytes = encode_dag_cbor(&Ipld::Map(map.clone())).unwrap();
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        // Each key appears in the encoding after the one before it.
        let mut from = 0;
        for key in keys {
            let mut needle = encode_dag_cbor(&Ipld::String(key.clone())).unwrap();
            needle.extend(encode_dag_cbor(&map[key]).unwrap());
            let at = bytes[from..]
                .windows(needle.len())
                .position(|w| w == needle.as_slice())
                .map(|p| p + from);
            prop_assert!(at.is_some(), "key {:?} out of order", key);
            from = at.unwrap() + needle.len();
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..2048)) {
        let _ = decode_car(&bytes, &limits());
        if let Ok(reader) = CarReader::new(bytes.as_slice(), &limits()) {
            for item in reader {
                let _ = item;
            }
        }
        let _ = decode_dag_cbor::<Ipld>(&bytes);
    }

    #[test]
    fn damaged_cars_fail_cleanly_or_yield_genuine_blocks(
        roots in vec(arb_cid(), 0..3),
        blocks in vec(arb_block(), 1..6),
        how in arb_damage(),
    ) {
        let bytes = damage(encode_car(&roots, &blocks), &how);
        match decode_car(&bytes, &limits()) {
            Ok((_, got)) => {
                for block in got {
                    let (cid, data) = block.into_parts();
                    prop_assert!(Block::new(cid, data).is_ok());
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn damaged_dag_cbor_never_panics(value in arb_ipld(), how in arb_damage()) {
        let bytes = damage(encode_dag_cbor(&value).unwrap(), &how);
        let _ = decode_dag_cbor::<Ipld>(&bytes);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for open in [0x81u8, 0xa1] {
        // 100k nested one-element lists (or maps, whose keys are then invalid).
        let bytes = vec![open; 100_000];
        assert!(decode_dag_cbor::<Ipld>(&bytes).is_err());
    }
    let mut nested = Ipld::Null;
    for _ in 0..64 {
        nested = Ipld::Map(BTreeMap::from([("a".to_string(), nested)]));
    }
    let bytes = encode_dag_cbor(&nested).unwrap();
    assert_eq!(decode_dag_cbor::<Ipld>(&bytes).unwrap(), nested);
}
