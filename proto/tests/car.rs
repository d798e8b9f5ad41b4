//! CARs written by JS (ucanto, through `@ipld/car`) decode, and re-encode byte for byte.
//!
//! The fixtures under `tests/fixtures/golden/` are the clock requests and responses of the
//! interop vectors: a `clock/head` and a `clock/advance` invocation, and their responses.

use bytes::Bytes;
use proto::car::{
    CarError, CarLimits, CarReader, CarWriter, decode_car, decode_car_bytes, encode_car,
    encoded_car_len, encoded_header_len,
};
use proto::ipld::{DAG_CBOR, Ipld, decode_dag_cbor, parse_cid};
use proto::{Block, Cid};

/// A golden CAR: its name, its bytes, its root, and its blocks' CIDs in file order.
struct Golden {
    name: &'static str,
    bytes: &'static [u8],
    root: &'static str,
    blocks: &'static [&'static str],
}

const GOLDEN: &[Golden] = &[
    Golden {
        name: "head.car",
        bytes: include_bytes!("fixtures/golden/head.car"),
        root: "bafyreibg4v532j7zotwp35rszfx6vx43bajz23risdgzi5jtrezk7newxu",
        blocks: &[
            "bafyreiajmkiudhdfjibbubbnw3t4t4ozg3zb6d2rdm54ah4v7hrxt2jvca",
            "bafyreibg4v532j7zotwp35rszfx6vx43bajz23risdgzi5jtrezk7newxu",
        ],
    },
    Golden {
        name: "head-empty.resp.car",
        bytes: include_bytes!("fixtures/golden/head-empty.resp.car"),
        root: "bafyreictdxyd3fkxgszcl6zhyhg266bblhpmnlm6tcojzde346ayktgopm",
        blocks: &[
            "bafyreiajmkiudhdfjibbubbnw3t4t4ozg3zb6d2rdm54ah4v7hrxt2jvca",
            "bafyreidz27ocbk6wkx7vfebhyhpn5z3wjohayeokzlxmjragfcw62zxwsq",
            "bafyreictdxyd3fkxgszcl6zhyhg266bblhpmnlm6tcojzde346ayktgopm",
        ],
    },
    Golden {
        name: "advance.car",
        bytes: include_bytes!("fixtures/golden/advance.car"),
        root: "bafyreie7bgcx3hjr4npn4e2dj5d57tkovpydu5u2win6j7dafzjvekzs54",
        blocks: &[
            "bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq",
            "bafyreigxw6h5rimxjfxak754pzbpoz2iuybu7pabwf4n453ktsvn3sjshi",
            "bafyreie7bgcx3hjr4npn4e2dj5d57tkovpydu5u2win6j7dafzjvekzs54",
        ],
    },
    Golden {
        name: "advance.resp.car",
        bytes: include_bytes!("fixtures/golden/advance.resp.car"),
        root: "bafyreidfaqz3tu5yi77lcfzzyevhc46kygwdspvozil7vztp5p2rtdgjma",
        blocks: &[
            "bafyreidzctn3gmlkpkfhjhxwhirod4plx2ctthsa4o5kimzz3in2bzu5yq",
            "bafyreigxw6h5rimxjfxak754pzbpoz2iuybu7pabwf4n453ktsvn3sjshi",
            "bafyreigcfp6ioumraxrle2xfv3z55yqjxvwhempqsgw6mwqugpcniayije",
            "bafyreidfaqz3tu5yi77lcfzzyevhc46kygwdspvozil7vztp5p2rtdgjma",
        ],
    },
    Golden {
        name: "head-after.resp.car",
        bytes: include_bytes!("fixtures/golden/head-after.resp.car"),
        root: "bafyreihg2v75gw46uorclogozypxvyas4ss37wzxgrkujb44peqnexocci",
        blocks: &[
            "bafyreiajmkiudhdfjibbubbnw3t4t4ozg3zb6d2rdm54ah4v7hrxt2jvca",
            "bafyreig3mkpsr2gv7s65cwsrtf6lveeldww56zfkxkpqgln62lm36377ma",
            "bafyreihg2v75gw46uorclogozypxvyas4ss37wzxgrkujb44peqnexocci",
        ],
    },
];

fn cid(s: &str) -> Cid {
    parse_cid(s).unwrap()
}

fn limits() -> CarLimits {
    CarLimits::default()
}

#[test]
fn golden_cars_decode_with_their_roots_and_blocks() {
    for g in GOLDEN {
        let (roots, blocks) = decode_car(g.bytes, &limits()).unwrap();
        assert_eq!(roots, vec![cid(g.root)], "{}", g.name);
        let cids: Vec<Cid> = blocks.iter().map(|b| *b.cid()).collect();
        let expected: Vec<Cid> = g.blocks.iter().map(|s| cid(s)).collect();
        assert_eq!(cids, expected, "{}", g.name);
        // ucanto writes the root block last.
        assert_eq!(blocks.last().unwrap().cid(), &roots[0], "{}", g.name);
        for block in &blocks {
            assert_eq!(block.cid().codec(), DAG_CBOR, "{}", g.name);
            decode_dag_cbor::<Ipld>(block.bytes())
                .unwrap_or_else(|e| panic!("{}: {}: {e}", g.name, block.cid()));
        }
    }
}

#[test]
fn golden_cars_re_encode_byte_for_byte() {
    for g in GOLDEN {
        let (roots, blocks) = decode_car(g.bytes, &limits()).unwrap();
        assert_eq!(encode_car(&roots, &blocks), g.bytes, "{}", g.name);
        assert_eq!(
            encoded_car_len(&roots, &blocks),
            g.bytes.len(),
            "{}",
            g.name
        );

        let mut writer = CarWriter::new(Vec::new(), &roots).unwrap();
        for block in &blocks {
            writer.write_block(block).unwrap();
        }
        assert_eq!(writer.bytes_written(), g.bytes.len() as u64, "{}", g.name);
        assert_eq!(writer.finish().unwrap(), g.bytes, "{}", g.name);
    }
}

#[test]
fn golden_headers_are_what_js_writes() {
    for g in GOLDEN {
        let root = cid(g.root);
        // varint(58) then {"roots": [tag 42 ...], "version": 1}.
        assert_eq!(encoded_header_len(&[root]), 59, "{}", g.name);
        assert_eq!(g.bytes[0], 0x3a);
        assert_eq!(&g.bytes[1..8], b"\xa2\x65roots", "{}", g.name);
        // One link: array of 1, tag 42, byte string of 37: the 0x00 prefix and the CID.
        assert_eq!(&g.bytes[8..14], b"\x81\xd8\x2a\x58\x25\x00", "{}", g.name);
        assert_eq!(&g.bytes[14..50], root.to_bytes(), "{}", g.name);
        assert_eq!(&g.bytes[50..59], b"\x67version\x01", "{}", g.name);
    }
}

#[test]
fn all_decoding_paths_agree_on_golden_cars() {
    for g in GOLDEN {
        let expected = decode_car(g.bytes, &limits()).unwrap();

        let shared = Bytes::from_static(g.bytes);
        let zero_copy = decode_car_bytes(shared, &limits()).unwrap();
        assert_eq!(zero_copy, expected, "{}", g.name);

        let mut reader = CarReader::new(std::io::BufReader::new(g.bytes), &limits()).unwrap();
        assert_eq!(reader.roots(), expected.0, "{}", g.name);
        let streamed: Vec<Block> = reader.by_ref().collect::<Result<_, _>>().unwrap();
        assert_eq!(streamed, expected.1, "{}", g.name);
        assert_eq!(reader.offset(), g.bytes.len() as u64, "{}", g.name);
    }
}

#[test]
fn golden_cars_respect_a_block_count_limit() {
    for g in GOLDEN {
        let n = g.blocks.len();
        assert!(decode_car(g.bytes, &limits().with_max_blocks(n)).is_ok());
        let err = decode_car(g.bytes, &limits().with_max_blocks(n - 1)).unwrap_err();
        assert!(
            matches!(err, CarError::TooManyBlocks { index, max, .. } if index == n - 1 && max == n - 1),
            "{}: {err}",
            g.name
        );
    }
}

#[test]
fn a_corrupted_golden_block_is_named() {
    let g = &GOLDEN[0];
    let mut bytes = g.bytes.to_vec();
    *bytes.last_mut().unwrap() ^= 0x01;
    let err = decode_car(&bytes, &limits()).unwrap_err();
    let CarError::HashMismatch {
        index, cid: bad, ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*index, 1);
    assert_eq!(*bad, cid(g.root));
    assert!(err.to_string().contains(g.root), "{err}");
}

#[test]
fn every_prefix_of_a_golden_car_is_an_error_or_a_shorter_car() {
    for g in GOLDEN {
        let (roots, blocks) = decode_car(g.bytes, &limits()).unwrap();
        for cut in 0..g.bytes.len() {
            match decode_car(&g.bytes[..cut], &limits()) {
                // Only at a section boundary, with the blocks before it.
                Ok((r, b)) => {
                    assert_eq!(r, roots, "{} cut at {cut}", g.name);
                    assert_eq!(encoded_car_len(&r, &b), cut, "{} cut at {cut}", g.name);
                    assert_eq!(b, blocks[..b.len()], "{} cut at {cut}", g.name);
                }
                Err(CarError::TruncatedHeader { offset } | CarError::Truncated { offset, .. }) => {
                    assert_eq!(offset, cut as u64, "{}", g.name);
                }
                Err(e) => panic!("{} cut at {cut}: {e}", g.name),
            }
        }
    }
}
