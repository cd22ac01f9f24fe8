//! The encoder: user records in, one KPL aggregate out.

use std::collections::HashMap;

use bytes::Bytes;

use crate::wire::{self, key, len_field_len, put_len_field, put_varint, varint_len};
use crate::{DIGEST_LEN, MAGIC};

/// Builds a KPL aggregate out of user records, the way the KPL does.
///
/// Partition keys and explicit hash keys go into the aggregate's tables once each, however many records use them.
/// Records are encoded as they are added (the data is copied once, into the aggregate), and
/// [`size_bytes`](Self::size_bytes) is the exact size [`finish`](Self::finish) will return, so that a producer can
/// stay under Kinesis' 1 MiB limit on a record (data and the outer partition key together):
/// [`size_bytes_with`](Self::size_bytes_with) tells the size before a record is added.
///
/// It checks no Kinesis limit itself (a partition key of 1 to 256 characters, an explicit hash key that is a decimal
/// number below 2^128): it writes whatever it is given, which is also what tests need.
///
/// ```
/// let mut aggregator = kc_deagg::Aggregator::new();
/// aggregator.add("user-1", None, b"first");
/// aggregator.add("user-1", Some("42"), b"second");
/// let expected_size = aggregator.size_bytes();
/// let data = aggregator.finish();
/// assert_eq!(data.len(), expected_size);
/// assert!(kc_deagg::is_aggregated(&data));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Aggregator {
    partition_keys: KeyTable,
    explicit_hash_keys: KeyTable,
    /// The `records` fields of the `AggregatedRecord`, encoded.
    records: Vec<u8>,
    len: usize,
}

// Field numbers (proto/kpl_aggregation.proto).
const AGGREGATED_PARTITION_KEY_TABLE: u8 = 1;
const AGGREGATED_EXPLICIT_HASH_KEY_TABLE: u8 = 2;
const AGGREGATED_RECORDS: u8 = 3;
const RECORD_PARTITION_KEY_INDEX: u8 = 1;
const RECORD_EXPLICIT_HASH_KEY_INDEX: u8 = 2;
const RECORD_DATA: u8 = 3;
const RECORD_TAGS: u8 = 4;
const TAG_KEY: u8 = 1;
const TAG_VALUE: u8 = 2;

/// One of the two key tables: each key once, in the order first seen.
#[derive(Clone, Debug, Default)]
struct KeyTable {
    indexes: HashMap<Box<str>, u64>,
    /// The table's fields of the `AggregatedRecord`, encoded.
    encoded: Vec<u8>,
}

impl KeyTable {
    /// The index `key` has or would get, and by how many bytes the table would grow to hold it.
    fn lookup(&self, key: &str) -> (u64, usize) {
        match self.indexes.get(key) {
            Some(&index) => (index, 0),
            None => (self.indexes.len() as u64, len_field_len(key.len())),
        }
    }

    fn index_of(&mut self, field: u8, key: &str) -> u64 {
        if let Some(&index) = self.indexes.get(key) {
            return index;
        }
        let index = self.indexes.len() as u64;
        self.indexes.insert(key.into(), index);
        put_len_field(&mut self.encoded, field, key.as_bytes());
        index
    }
}

/// The encoded length of a `Record`'s fields.
fn record_len(
    partition_key_index: u64,
    explicit_hash_key_index: Option<u64>,
    data_len: usize,
    tags: &[(&str, Option<&str>)],
) -> usize {
    1 + varint_len(partition_key_index)
        + explicit_hash_key_index.map_or(0, |index| 1 + varint_len(index))
        + len_field_len(data_len)
        + tags.iter().map(|&(key, value)| len_field_len(tag_len(key, value))).sum::<usize>()
}

/// The encoded length of a `Tag`'s fields.
fn tag_len(key: &str, value: Option<&str>) -> usize {
    len_field_len(key.len()) + value.map_or(0, |value| len_field_len(value.len()))
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a user record.
    pub fn add(&mut self, partition_key: &str, explicit_hash_key: Option<&str>, data: impl AsRef<[u8]>) {
        self.add_with_tags(partition_key, explicit_hash_key, data, &[]);
    }

    /// Adds a user record with tags, each a key and an optional value (the KPL itself never writes tags).
    pub fn add_with_tags(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: impl AsRef<[u8]>,
        tags: &[(&str, Option<&str>)],
    ) {
        let data = data.as_ref();
        let pk_index = self.partition_keys.index_of(AGGREGATED_PARTITION_KEY_TABLE, partition_key);
        let ehk_index =
            explicit_hash_key.map(|ehk| self.explicit_hash_keys.index_of(AGGREGATED_EXPLICIT_HASH_KEY_TABLE, ehk));

        let buf = &mut self.records;
        buf.push(key(AGGREGATED_RECORDS, wire::LEN));
        put_varint(buf, record_len(pk_index, ehk_index, data.len(), tags) as u64);
        buf.push(key(RECORD_PARTITION_KEY_INDEX, wire::VARINT));
        put_varint(buf, pk_index);
        if let Some(ehk_index) = ehk_index {
            buf.push(key(RECORD_EXPLICIT_HASH_KEY_INDEX, wire::VARINT));
            put_varint(buf, ehk_index);
        }
        put_len_field(buf, RECORD_DATA, data);
        for &(tag_key, value) in tags {
            buf.push(key(RECORD_TAGS, wire::LEN));
            put_varint(buf, tag_len(tag_key, value) as u64);
            put_len_field(buf, TAG_KEY, tag_key.as_bytes());
            if let Some(value) = value {
                put_len_field(buf, TAG_VALUE, value.as_bytes());
            }
        }
        self.len += 1;
    }

    /// The number of user records added.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no user record was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The size of the aggregate [`finish`](Self::finish) would return now, in bytes: magic number, protobuf and MD5
    /// digest (20 bytes when empty).
    pub fn size_bytes(&self) -> usize {
        MAGIC.len()
            + self.partition_keys.encoded.len()
            + self.explicit_hash_keys.encoded.len()
            + self.records.len()
            + DIGEST_LEN
    }

    /// What [`size_bytes`](Self::size_bytes) would be after adding a user record with these keys and `data_len`
    /// bytes of data (and no tags), without adding it.
    pub fn size_bytes_with(&self, partition_key: &str, explicit_hash_key: Option<&str>, data_len: usize) -> usize {
        let (pk_index, pk_growth) = self.partition_keys.lookup(partition_key);
        let (ehk_index, ehk_growth) = match explicit_hash_key {
            Some(ehk) => {
                let (index, growth) = self.explicit_hash_keys.lookup(ehk);
                (Some(index), growth)
            }
            None => (None, 0),
        };
        self.size_bytes() + pk_growth + ehk_growth + len_field_len(record_len(pk_index, ehk_index, data_len, &[]))
    }

    /// The aggregate: magic number, `AggregatedRecord` (key tables, then records, in the order added), MD5 digest of
    /// the `AggregatedRecord`.
    pub fn finish(self) -> Bytes {
        let mut out = Vec::with_capacity(self.size_bytes());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.partition_keys.encoded);
        out.extend_from_slice(&self.explicit_hash_keys.encoded);
        out.extend_from_slice(&self.records);
        let digest = crate::md5(&out[MAGIC.len()..]);
        out.extend_from_slice(&digest);
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_aggregate_is_magic_and_the_digest_of_nothing() {
        let aggregator = Aggregator::new();
        assert_eq!(aggregator.size_bytes(), 20);
        let data = aggregator.finish();
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        let expected = [
            0xF3, 0x89, 0x9A, 0xC2, 0xD4, 0x1D, 0x8C, 0xD9, 0x8F, 0x00, 0xB2, 0x04, 0xE9, 0x80, 0x09, 0x98, 0xEC, 0xF8,
            0x42, 0x7E,
        ];
        assert_eq!(&data[..], &expected[..]);
    }

    #[test]
    fn keys_are_deduplicated_in_the_tables() {
        let mut aggregator = Aggregator::new();
        aggregator.add("a", Some("1"), b"x");
        aggregator.add("b", None, b"y");
        aggregator.add("a", Some("1"), b"z");
        assert_eq!(aggregator.len(), 3);
        // "a", "b": two table fields of 3 bytes each; "1": one of 3 bytes.
        assert_eq!(aggregator.partition_keys.encoded, [0x0A, 0x01, b'a', 0x0A, 0x01, b'b']);
        assert_eq!(aggregator.explicit_hash_keys.encoded, [0x12, 0x01, b'1']);
    }

    #[test]
    fn size_bytes_with_predicts_size_bytes() {
        // (partition key, explicit hash key, data length): new keys, known keys, 1- to 3-byte varint lengths.
        let cases: &[(&str, Option<&str>, usize)] = &[
            ("a", None, 0),
            ("a", None, 127),
            ("b", Some("0"), 128),
            ("b", Some("0"), 16_384),
            ("a", Some("1"), 5),
            (&"k".repeat(200), Some("340282366920938463463374607431768211455"), 1_000),
        ];
        let mut aggregator = Aggregator::new();
        for &(pk, ehk, data_len) in cases {
            let predicted = aggregator.size_bytes_with(pk, ehk, data_len);
            aggregator.add(pk, ehk, vec![7; data_len]);
            assert_eq!(aggregator.size_bytes(), predicted, "{pk:?} {ehk:?} {data_len}");
        }
        let size = aggregator.size_bytes();
        assert_eq!(aggregator.finish().len(), size);
    }
}
