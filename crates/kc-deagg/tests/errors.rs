//! A negative test for every error kind, and inputs no decoder should panic on.

mod common;

use bytes::Bytes;
use common::{hex, read_data, wrap};
use kc_deagg::DecodeErrorKind::{self, *};

fn kind_of(data: &Bytes) -> Result<Option<usize>, DecodeErrorKind> {
    kc_deagg::decode(data).map(|a| a.map(|a| a.len())).map_err(|e| e.kind())
}

fn from_hex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    hex(&digits).unwrap_or_else(|| panic!("not hex: {text}"))
}

/// Protobuf bodies (hex) given a matching digest, so that the parser sees them, and the error each must be.
#[test]
fn invalid_bodies() {
    let cases: &[(&str, &str, DecodeErrorKind)] = &[
        // Truncated: a field runs past the end of the message that holds it.
        ("table entry longer than the body", "0a 05 61", Truncated),
        ("huge declared length (2^32 - 1)", "0a ff ff ff ff 0f", Truncated),
        ("huge declared length (2^64 - 1)", "1a ff ff ff ff ff ff ff ff ff 01", Truncated),
        ("record longer than the body", "0a 01 61 1a 06 08 00 1a 00", Truncated),
        ("data longer than its record", "0a 01 61 1a 04 08 00 1a 05 00 00 00 00 00", Truncated),
        ("tag longer than its record", "0a 01 61 1a 06 08 00 1a 00 22 03 0a 00", Truncated),
        ("varint cut by the end of the body", "78", Truncated),
        ("varint cut by the end of its record", "0a 01 61 1a 01 08 1a 00", Truncated),
        ("length cut by the end of the body", "0a", Truncated),
        ("key cut by the end of the body", "80", Truncated),
        ("fixed64 cut short", "79 01 02 03", Truncated),
        ("fixed32 cut short", "7d 01 02", Truncated),
        // InvalidProtobuf: bytes that are there but are not an AggregatedRecord.
        ("field number 0", "02 00", InvalidProtobuf),
        ("field number 0 in a record", "0a 01 61 1a 02 00 00", InvalidProtobuf),
        ("field number above 2^29 - 1", "80 80 80 80 10 00", InvalidProtobuf),
        ("wire type 6", "7e", InvalidProtobuf),
        ("wire type 6 on a known field", "0e", InvalidProtobuf),
        ("wire type 7", "7f", InvalidProtobuf),
        ("group (wire type 3)", "7b 7c", InvalidProtobuf),
        ("group in a record", "0a 01 61 1a 06 08 00 1a 00 2b 2c", InvalidProtobuf),
        ("end group (wire type 4)", "7c", InvalidProtobuf),
        ("varint of 11 bytes", "08 80 80 80 80 80 80 80 80 80 80 00", InvalidProtobuf),
        ("varint above 2^64 - 1", "78 ff ff ff ff ff ff ff ff ff 02", InvalidProtobuf),
        ("partition_key_table as a varint", "08 01", InvalidProtobuf),
        ("explicit_hash_key_table as a fixed32", "15 00 00 00 00", InvalidProtobuf),
        ("records as a varint", "18 00", InvalidProtobuf),
        ("partition_key_index as bytes", "0a 01 61 1a 06 0a 00 1a 02 00 00", InvalidProtobuf),
        ("explicit_hash_key_index as bytes", "0a 01 61 1a 06 08 00 12 00 1a 00", InvalidProtobuf),
        ("data as a varint", "0a 01 61 1a 04 08 00 18 00", InvalidProtobuf),
        ("tags as a varint", "0a 01 61 1a 06 08 00 1a 00 20 00", InvalidProtobuf),
        ("tag key as a varint", "0a 01 61 1a 08 08 00 1a 00 22 02 08 00", InvalidProtobuf),
        ("tag value as a fixed64", "0a 01 61 1a 0f 08 00 1a 00 22 09 11 00 00 00 00 00 00 00 00", InvalidProtobuf),
        ("record without partition_key_index", "0a 01 61 1a 02 1a 00", InvalidProtobuf),
        ("record without data", "0a 01 61 1a 02 08 00", InvalidProtobuf),
        ("empty record", "0a 01 61 1a 00", InvalidProtobuf),
        ("tag without key", "0a 01 61 1a 08 08 00 1a 00 22 02 12 00", InvalidProtobuf),
        // Indexes.
        ("partition key index with an empty table", "1a 04 08 00 1a 00", PartitionKeyIndexOutOfRange),
        ("partition key index = table length", "0a 01 61 1a 04 08 01 1a 00", PartitionKeyIndexOutOfRange),
        (
            "partition key index 2^64 - 1",
            "0a 01 61 1a 0d 08 ff ff ff ff ff ff ff ff ff 01 1a 00",
            PartitionKeyIndexOutOfRange,
        ),
        (
            "partition key index out of range in record 1",
            "0a 01 61 1a 04 08 00 1a 00 1a 04 08 07 1a 00",
            PartitionKeyIndexOutOfRange,
        ),
        (
            "explicit hash key index with an empty table",
            "0a 01 61 1a 06 08 00 10 00 1a 00",
            ExplicitHashKeyIndexOutOfRange,
        ),
        (
            "explicit hash key index = table length",
            "0a 01 61 12 01 30 1a 06 08 00 10 01 1a 00",
            ExplicitHashKeyIndexOutOfRange,
        ),
        // UTF-8.
        ("partition key not UTF-8", "0a 01 ff 1a 04 08 00 1a 00", InvalidUtf8),
        ("overlong UTF-8 encoding", "0a 02 c0 80 1a 04 08 00 1a 00", InvalidUtf8),
        ("UTF-16 surrogate", "0a 03 ed a0 80 1a 04 08 00 1a 00", InvalidUtf8),
        ("cut UTF-8 sequence", "0a 02 e2 9c 1a 04 08 00 1a 00", InvalidUtf8),
        ("unused partition key table entry", "0a 01 61 0a 01 ff 1a 04 08 00 1a 00", InvalidUtf8),
        ("explicit hash key not UTF-8", "0a 01 61 12 01 80 1a 04 08 00 1a 00", InvalidUtf8),
        ("tag key not UTF-8", "0a 01 61 1a 09 08 00 1a 00 22 03 0a 01 ff", InvalidUtf8),
        ("tag value not UTF-8", "0a 01 61 1a 0b 08 00 1a 00 22 05 0a 00 12 01 ff", InvalidUtf8),
    ];
    for &(name, body, kind) in cases {
        assert_eq!(kind_of(&wrap(&from_hex(body))), Err(kind), "{name}: {body}");
    }
}

/// The same bodies with one byte less or more than needed would be different cases: check the valid neighbours of
/// a few, so that the table above tests what it says.
#[test]
fn valid_neighbours_of_invalid_bodies() {
    let cases: &[(&str, usize)] = &[
        ("0a 01 61", 0),
        ("0a 01 61 1a 04 08 00 1a 00", 1),
        ("0a 01 61 12 01 30 1a 06 08 00 10 00 1a 00", 1),
        ("0a 01 61 1a 08 08 00 1a 00 22 02 0a 00", 1),
        ("0a 01 61 1a 0a 08 00 1a 00 22 04 0a 00 12 00", 1),
        ("78 ff ff ff ff ff ff ff ff ff 01", 0),
        ("0a 01 61 1a 04 08 00 1a 00 1a 04 08 00 1a 00", 2),
    ];
    for &(body, len) in cases {
        assert_eq!(kind_of(&wrap(&from_hex(body))), Ok(Some(len)), "{body}");
    }
}

#[test]
fn not_aggregated() {
    // No magic number: not an aggregate, whatever follows.
    for data in [&b""[..], b"\xF3", b"\xF3\x89\x9A", b"\xF3\x89\x9A\xC3", b"plain record", &[0; 64]] {
        let data = Bytes::copy_from_slice(data);
        assert!(!kc_deagg::is_aggregated(&data), "{data:?}");
        assert_eq!(kind_of(&data), Ok(None), "{data:?}");
    }
}

#[test]
fn too_short() {
    // The magic number and fewer than 16 more bytes: too short for the digest.
    for extra in 0..16 {
        let mut data = kc_deagg::MAGIC.to_vec();
        data.resize(4 + extra, 0);
        let data = Bytes::from(data);
        assert!(!kc_deagg::is_aggregated(&data), "{extra}");
        assert_eq!(kind_of(&data), Err(Truncated), "{extra}");
    }
    let error = kc_deagg::decode(&Bytes::from_static(&kc_deagg::MAGIC)).expect_err("too short");
    assert_eq!(
        error.to_string(),
        "KPL aggregate: truncated: 4 bytes, shorter than the magic number and the MD5 digest (20 bytes)"
    );
}

#[test]
fn bad_md5() {
    let valid = read_data("many-records.bin");
    // A flipped bit in the digest, and in a payload byte (byte 0x30 is in "payload-2").
    for index in [valid.len() - 1, valid.len() - 16, 0x30] {
        let mut data = valid.to_vec();
        data[index] ^= 0x01;
        let error = kc_deagg::decode(&Bytes::from(data)).expect_err("damaged");
        assert_eq!(error.kind(), BadMd5, "byte {index}: {error}");
        assert_eq!(error.to_string(), "KPL aggregate: MD5 checksum mismatch");
    }
}

#[test]
fn every_cut_of_an_aggregate_is_an_error() {
    // Cut after any number of bytes, an aggregate never decodes, and the decoder tells a cut that ends inside a
    // field (Truncated) from one that ends between two (BadMd5: nothing shows that it was cut).
    let valid = read_data("many-records.bin");
    let mut truncated = 0;
    for len in 4..valid.len() {
        let data = valid.slice(..len);
        match kind_of(&data) {
            Err(Truncated) => truncated += 1,
            Err(BadMd5) => {}
            other => panic!("cut to {len} bytes: {other:?}"),
        }
    }
    // The records of many-records.bin are 16 bytes from "payload-10" on: most cuts land inside one.
    assert!(truncated > (valid.len() - 4) * 3 / 4, "{truncated}");
}

#[test]
fn single_bit_flips_never_panic_nor_decode() {
    let valid = read_data("binary-1k.bin");
    for index in (0..valid.len()).step_by(7) {
        for bit in [0x01, 0x80] {
            let mut data = valid.to_vec();
            data[index] ^= bit;
            match kind_of(&Bytes::from(data)) {
                // A flip in the magic number makes an ordinary record.
                Ok(None) => assert!(index < 4),
                Ok(Some(_)) => panic!("byte {index} bit {bit:#x}: decoded"),
                Err(_) => {}
            }
        }
    }
}

#[test]
fn errors_are_displayed_with_what_failed() {
    let cases: &[(&str, &str)] = &[
        ("0a 05 61", "KPL aggregate: truncated: the field at byte 4 runs past the end of the AggregatedRecord"),
        ("0a 01 61 1a 01 08 1a 00", "KPL aggregate: truncated: the varint at byte 10 runs past the end of the Record"),
        ("78 80", "KPL aggregate: truncated: the varint at byte 5 runs past the end of the AggregatedRecord"),
        ("7e", "KPL aggregate: invalid protobuf: invalid wire type 6 at byte 4"),
        ("7b 7c", "KPL aggregate: invalid protobuf: unsupported group field at byte 4"),
        ("02 00", "KPL aggregate: invalid protobuf: invalid field key 2 at byte 4"),
        (
            "78 ff ff ff ff ff ff ff ff ff 02",
            "KPL aggregate: invalid protobuf: the varint at byte 5 is longer than 64 bits",
        ),
        ("18 00", "KPL aggregate: invalid protobuf: AggregatedRecord.records at byte 4 has the wrong wire type (0)"),
        ("0a 01 61 1a 02 1a 00", "KPL aggregate: invalid protobuf: the Record at byte 7 has no partition_key_index"),
        ("0a 01 61 1a 08 08 00 1a 00 22 02 12 00", "KPL aggregate: invalid protobuf: the Tag at byte 13 has no key"),
        (
            "0a 01 61 1a 06 08 00 10 03 1a 00",
            "KPL aggregate: user record 0: explicit hash key index 3 is out of range (the table has 0 entries)",
        ),
        ("0a 01 ff", "KPL aggregate: invalid UTF-8 in the partition key table entry at byte 6"),
    ];
    for &(body, message) in cases {
        let error = kc_deagg::decode(&wrap(&from_hex(body))).expect_err(body);
        assert_eq!(error.to_string(), message, "{body}");
    }
}

#[test]
fn decode_error_is_a_std_error_and_send_sync() {
    fn assert_error<E: std::error::Error + Send + Sync + 'static>(_: &E) {}
    let error = kc_deagg::decode(&read_data("bad-md5.bin")).expect_err("bad digest");
    assert_error(&error);
    assert!(std::error::Error::source(&error).is_none());
}
