//! The one error type of the crate: why a KPL aggregate could not be decoded.

use std::fmt;

/// Why a KPL aggregate could not be decoded.
///
/// [`kind`](Self::kind) says which of the checks failed; `Display` says where (byte offsets count from the start of
/// the Kinesis record's data, magic number included), e.g.
/// `KPL aggregate: truncated: the field at byte 813 runs past the end of the AggregatedRecord`.
///
/// Creating one allocates nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("KPL aggregate: {detail}")]
#[non_exhaustive]
pub struct DecodeError {
    detail: Detail,
}

impl DecodeError {
    /// Which check failed.
    pub fn kind(&self) -> DecodeErrorKind {
        self.detail.kind()
    }

    pub(crate) fn new(detail: Detail) -> Self {
        Self { detail }
    }
}

/// Which check a KPL aggregate failed; see [`DecodeError::kind`].
///
/// The decoder checks the magic number, then the length, then the MD5 digest, and only then parses the protobuf, so
/// every kind but [`BadMd5`](Self::BadMd5) and a cut-short [`Truncated`](Self::Truncated) is reported only for bytes
/// the producer really wrote (the digest matched): it means a faulty producer, not a damaged record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The MD5 digest in the last 16 bytes does not match the protobuf bytes, and the protobuf does not look cut
    /// short (see [`Truncated`](Self::Truncated)): the record was damaged or was not written by a KPL.
    BadMd5,
    /// The input ends before what it announces does:
    /// - it has the magic number but is shorter than magic number + MD5 digest (20 bytes);
    /// - the digest does not match *and* the bytes between the magic number and the last 16 bytes end inside a
    ///   protobuf field, the usual sign of a record cut short;
    /// - the digest matches, but a field (a varint, a fixed-size value or a length-delimited field) runs past the
    ///   end of the message that holds it (the `AggregatedRecord`, a `Record` or a `Tag`).
    Truncated,
    /// Bytes that are there but are not a valid `AggregatedRecord`: a varint longer than 64 bits, field number 0 (or
    /// above 2^29 - 1), wire type 6 or 7, a group (wire types 3 and 4, which the KPL never writes), a known field
    /// with the wrong wire type, or a `Record` or `Tag` without one of its `required` fields.
    InvalidProtobuf,
    /// A `Record`'s `partition_key_index` is not an index of the `partition_key_table`.
    PartitionKeyIndexOutOfRange,
    /// A `Record`'s `explicit_hash_key_index` is not an index of the `explicit_hash_key_table`.
    ExplicitHashKeyIndexOutOfRange,
    /// A `string` field (a partition key, an explicit hash key, a tag's key or value) is not valid UTF-8. Every entry
    /// of both key tables is checked, whether a record refers to it or not.
    InvalidUtf8,
}

/// What exactly failed, and where; private so that it can grow without a breaking change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Detail {
    TooShort {
        len: usize,
    },
    /// The digest did not match and the protobuf ends inside the field at `offset`.
    Cut {
        offset: usize,
    },
    PastEnd {
        offset: usize,
        message: &'static str,
    },
    VarintPastEnd {
        offset: usize,
        message: &'static str,
    },
    Md5Mismatch,
    VarintTooLong {
        offset: usize,
    },
    InvalidKey {
        offset: usize,
        key: u64,
    },
    InvalidWireType {
        offset: usize,
        wire_type: u8,
    },
    Group {
        offset: usize,
    },
    WrongWireType {
        offset: usize,
        message: &'static str,
        field: &'static str,
        wire_type: u8,
    },
    MissingField {
        offset: usize,
        message: &'static str,
        field: &'static str,
    },
    PartitionKeyIndex {
        record: usize,
        index: u64,
        table_len: usize,
    },
    ExplicitHashKeyIndex {
        record: usize,
        index: u64,
        table_len: usize,
    },
    InvalidUtf8 {
        offset: usize,
        what: &'static str,
    },
}

impl Detail {
    fn kind(&self) -> DecodeErrorKind {
        match self {
            Self::TooShort { .. } | Self::Cut { .. } | Self::PastEnd { .. } | Self::VarintPastEnd { .. } => {
                DecodeErrorKind::Truncated
            }
            Self::Md5Mismatch => DecodeErrorKind::BadMd5,
            Self::VarintTooLong { .. }
            | Self::InvalidKey { .. }
            | Self::InvalidWireType { .. }
            | Self::Group { .. }
            | Self::WrongWireType { .. }
            | Self::MissingField { .. } => DecodeErrorKind::InvalidProtobuf,
            Self::PartitionKeyIndex { .. } => DecodeErrorKind::PartitionKeyIndexOutOfRange,
            Self::ExplicitHashKeyIndex { .. } => DecodeErrorKind::ExplicitHashKeyIndexOutOfRange,
            Self::InvalidUtf8 { .. } => DecodeErrorKind::InvalidUtf8,
        }
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => {
                write!(f, "truncated: {len} bytes, shorter than the magic number and the MD5 digest (20 bytes)")
            }
            Self::Cut { offset } => write!(
                f,
                "truncated: the protobuf ends inside the field at byte {offset} (and the MD5 digest does not match)"
            ),
            Self::PastEnd { offset, message } => {
                write!(f, "truncated: the field at byte {offset} runs past the end of the {message}")
            }
            Self::VarintPastEnd { offset, message } => {
                write!(f, "truncated: the varint at byte {offset} runs past the end of the {message}")
            }
            Self::Md5Mismatch => f.write_str("MD5 checksum mismatch"),
            Self::VarintTooLong { offset } => {
                write!(f, "invalid protobuf: the varint at byte {offset} is longer than 64 bits")
            }
            Self::InvalidKey { offset, key } => {
                write!(f, "invalid protobuf: invalid field key {key} at byte {offset}")
            }
            Self::InvalidWireType { offset, wire_type } => {
                write!(f, "invalid protobuf: invalid wire type {wire_type} at byte {offset}")
            }
            Self::Group { offset } => write!(f, "invalid protobuf: unsupported group field at byte {offset}"),
            Self::WrongWireType { offset, message, field, wire_type } => {
                write!(f, "invalid protobuf: {message}.{field} at byte {offset} has the wrong wire type ({wire_type})")
            }
            Self::MissingField { offset, message, field } => {
                write!(f, "invalid protobuf: the {message} at byte {offset} has no {field}")
            }
            Self::PartitionKeyIndex { record, index, table_len } => write!(
                f,
                "user record {record}: partition key index {index} is out of range (the table has {table_len} entries)"
            ),
            Self::ExplicitHashKeyIndex { record, index, table_len } => write!(
                f,
                "user record {record}: explicit hash key index {index} is out of range \
                 (the table has {table_len} entries)"
            ),
            Self::InvalidUtf8 { offset, what } => write!(f, "invalid UTF-8 in the {what} at byte {offset}"),
        }
    }
}
