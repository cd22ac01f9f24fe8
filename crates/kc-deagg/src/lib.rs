//! Decoder (and encoder) for KPL aggregated Kinesis records: bytes in, user records out.
//!
//! The Kinesis Producer Library packs many *user records* into one Kinesis record. This crate unpacks them: fast,
//! without copying a payload, and without panicking or over-allocating on any input. It does no IO and knows nothing
//! of AWS: the consumer hands it a record's data and gets user records back.
//!
//! # The format
//!
//! An aggregated record's data is
//!
//! ```text
//! [F3 89 9A C2]  [AggregatedRecord, protobuf]  [MD5 of the AggregatedRecord bytes, 16 bytes]
//! ```
//!
//! with these proto2 messages (`proto/kpl_aggregation.proto`):
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes data = 3;
//!   repeated Tag tags = 4;
//! }
//! message Tag { required string key = 1; optional string value = 2; }
//! ```
//!
//! Each user record's keys are indexes into the two tables. Every user record has the sequence number of the Kinesis
//! record that carried it; its *sub-sequence number* is its index in `records`, from 0. A record whose data does not
//! start with the magic number is an ordinary record: [`decode`] returns `Ok(None)` and the consumer delivers it as
//! it is.
//!
//! # Decoding
//!
//! [`decode`] checks, in this order:
//! 1. the magic number (none: `Ok(None)`);
//! 2. the length: at least magic number + digest, 20 bytes (fewer: [`Truncated`](DecodeErrorKind::Truncated));
//! 3. the MD5 digest of the protobuf ([`BadMd5`](DecodeErrorKind::BadMd5), or `Truncated` when the protobuf is
//!    visibly cut short, see below);
//! 4. the whole protobuf, every key index against its table, every string as UTF-8.
//!
//! It returns an [`Aggregate`] only when all of that passed, so iterating one cannot fail. An aggregate with no
//! records is a valid, empty `Aggregate`.
//!
//! # Errors
//!
//! [`DecodeError::kind`] says which check failed ([`DecodeErrorKind`]); its `Display` says where, with byte offsets
//! from the start of the record's data, e.g. `KPL aggregate: MD5 checksum mismatch`.
//!
//! *Truncated* means the input ends before what it announces does; *invalid protobuf* means bytes that are there but
//! are not a valid `AggregatedRecord`. Precisely:
//!
//! | kind | when |
//! | --- | --- |
//! | `Truncated` | magic number but fewer than 20 bytes |
//! | `Truncated` | digest mismatch, and the bytes between the magic number and the last 16 bytes end inside a protobuf field (a record cut short: its last 16 bytes are protobuf, not a digest) |
//! | `BadMd5` | any other digest mismatch |
//! | `Truncated` | (digest matched) a varint, fixed-size value or length-delimited field runs past the end of the message that holds it, whatever the length it declares |
//! | `InvalidProtobuf` | (digest matched) a varint longer than 64 bits, field number 0 or above 2^29 - 1, wire type 6 or 7, a group (wire types 3 and 4: the KPL never writes one), a known field with the wrong wire type, a `required` field missing |
//! | `PartitionKeyIndexOutOfRange` | (digest matched) a `partition_key_index` that is not an index of the table |
//! | `ExplicitHashKeyIndexOutOfRange` | (digest matched) an `explicit_hash_key_index` that is not an index of the table |
//! | `InvalidUtf8` | (digest matched) a key table entry (used or not), a tag key or a tag value that is not UTF-8 |
//!
//! Because the digest is checked first, the kinds reported once it matched mean a faulty producer, never a damaged
//! record. Unknown
//! fields are skipped, fields may come in any order, and a scalar field that appears twice takes its last value, as
//! protobuf says.
//!
//! # Zero copy, allocations, panics
//!
//! The [`Bytes`] a [`UserRecord`] hands out ([`data`](UserRecord::data),
//! [`partition_key_bytes`](UserRecord::partition_key_bytes), [`explicit_hash_key_bytes`](UserRecord::explicit_hash_key_bytes),
//! tags) are slices of the `Bytes` given to [`decode`]: they share its buffer and copy nothing. Decoding allocates a
//! handful of `Vec`s per aggregate (offsets of the records and of the table entries), none per user record except
//! for a record that has tags. No length read from the input is used before it is checked against the bytes that
//! are there, so a huge declared length is an error, never a huge allocation. No input makes the decoder panic (it is
//! fuzzed: `fuzz/`).
//!
//! # Implementation
//!
//! The decoder is a hand-rolled protobuf reader (`src/wire.rs`), not the code prost generates: prost's decoder
//! would copy every key into a `String` and every table into a `Vec<String>`, and would not check `required` fields,
//! while this one keeps offsets only, and reads the whole aggregate in one pass after the digest. The types
//! `prost-build` generates from `proto/kpl_aggregation.proto` (`src/kpl_generated.rs`, written by `cargo xtask codegen`
//! with a vendored `protoc` and checked in, so that building the crate compiles neither prost-build nor protoc) are
//! the reference the tests hold the hand-rolled reader and the [`Aggregator`] to.
//!
//! Decoding costs little beyond the MD5 digest it has to compute: `cargo bench -p kc-deagg` prints both. The MD5 is
//! the crate's own ([`md5`], `src/digest.rs`), in safe Rust, written so that each step's round constant is added
//! off the chain of dependent instructions (the `md-5` crate's portable code leaves it on the chain): about 1.3× the
//! `md-5` crate and on a par with OpenSSL's assembly MD5 on x86_64, measured side by side by the same bench. The
//! tests hold it to RFC 1321's test suite and to the `md-5` crate.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use kc_deagg::{Aggregator, DecodeErrorKind};
//!
//! // A producer packs three user records into one Kinesis record...
//! let mut aggregator = Aggregator::new();
//! aggregator.add("user-1", None, b"first");
//! aggregator.add("user-2", Some("170141183460469231731687303715884105728"), b"second");
//! aggregator.add("user-1", None, b"third");
//! let data: Bytes = aggregator.finish();
//!
//! // ...and a consumer unpacks it.
//! let aggregate = kc_deagg::decode(&data)?.expect("starts with the magic number");
//! assert_eq!(aggregate.len(), 3);
//! let records: Vec<_> = aggregate.into_iter().collect();
//! assert_eq!(records[1].sub_sequence_number(), 1);
//! assert_eq!(records[1].partition_key(), "user-2");
//! assert_eq!(records[1].explicit_hash_key(), Some("170141183460469231731687303715884105728"));
//! assert_eq!(records[2].data(), &b"third"[..]);
//!
//! // A record without the magic number is an ordinary record.
//! assert!(kc_deagg::decode(&Bytes::from_static(b"plain"))?.is_none());
//!
//! // A damaged one is an error.
//! let mut damaged = data.to_vec();
//! if let Some(last) = damaged.last_mut() {
//!     *last ^= 1;
//! }
//! let error = kc_deagg::decode(&Bytes::from(damaged)).unwrap_err();
//! assert_eq!(error.kind(), DecodeErrorKind::BadMd5);
//! assert_eq!(error.to_string(), "KPL aggregate: MD5 checksum mismatch");
//! # Ok::<(), kc_deagg::DecodeError>(())
//! ```

use bytes::Bytes;
mod aggregate;
mod aggregator;
mod digest;
mod error;
#[cfg(test)]
mod proto;
mod record;
mod wire;

pub use aggregate::{Aggregate, IntoIter, Iter};
pub use aggregator::Aggregator;
pub use digest::md5;
pub use error::{DecodeError, DecodeErrorKind};
pub use record::{Tag, UserRecord, UserRecordParts};

use error::Detail;
use wire::{Reader, Span};

/// The first four bytes of a KPL aggregated record's data.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// The length of the MD5 digest that ends an aggregated record's data.
const DIGEST_LEN: usize = 16;

/// Whether `data` has the magic number of a KPL aggregate and is long enough for one (magic number and MD5 digest,
/// 20 bytes), the test the KPL's own deaggregators make. It does not check the digest: [`decode`] does.
///
/// A record that starts with the magic number but is shorter than 20 bytes is not aggregated by this test, but
/// [`decode`] reports it as [`Truncated`](DecodeErrorKind::Truncated).
pub fn is_aggregated(data: &[u8]) -> bool {
    data.len() >= MAGIC.len() + DIGEST_LEN && data.starts_with(&MAGIC)
}

/// Decodes a Kinesis record's data as a KPL aggregate.
///
/// `Ok(None)` when `data` is not an aggregate (it does not start with [`MAGIC`]): the caller delivers it as an
/// ordinary record. `Ok(Some(aggregate))` only after the MD5 digest matched, the whole protobuf parsed and every key
/// index and string was checked. The user records of the aggregate are slices of `data`. See the
/// [crate docs](crate#errors) for what each error kind means.
pub fn decode(data: &Bytes) -> Result<Option<Aggregate>, DecodeError> {
    let Some(rest) = data.strip_prefix(&MAGIC) else {
        return Ok(None);
    };
    let Some(body_len) = rest.len().checked_sub(DIGEST_LEN) else {
        return Err(DecodeError::new(Detail::TooShort { len: data.len() }));
    };
    let (body, digest) = rest.split_at(body_len);
    let body_span = Span { start: MAGIC.len(), end: MAGIC.len() + body_len };

    if md5(body) != digest {
        let reader = Reader::new(data, body_span, "AggregatedRecord");
        return Err(DecodeError::new(match reader.find_cut_field() {
            Some(offset) => Detail::Cut { offset },
            None => Detail::Md5Mismatch,
        }));
    }
    Aggregate::parse(data, body_span).map(Some)
}
