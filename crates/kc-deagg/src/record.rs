//! What the decoder hands out: user records, their tags, and their parts by value.

use bytes::Bytes;

/// One user record of a KPL aggregate.
///
/// Every field is a [`Bytes`] slice of the Kinesis record's data the aggregate came in: no copy. Its strings were
/// checked as UTF-8 when the aggregate was decoded, so the `&str` accessors cannot fail (each one runs the standard
/// library's UTF-8 check again, which for the short keys Kinesis allows costs a few nanoseconds; this crate has no
/// `unsafe` code to skip it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    sub_sequence_number: u64,
    partition_key: Bytes,
    explicit_hash_key: Option<Bytes>,
    data: Bytes,
    tags: Vec<Tag>,
}

/// The fields of a [`UserRecord`], by value; see [`UserRecord::into_parts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecordParts {
    /// The index of the user record in its aggregate (the sequence number is the Kinesis record's).
    pub sub_sequence_number: u64,
    /// The user record's partition key, valid UTF-8.
    pub partition_key: Bytes,
    /// The user record's explicit hash key, valid UTF-8 (the KPL writes a decimal 128-bit number), if it has one.
    pub explicit_hash_key: Option<Bytes>,
    /// The payload.
    pub data: Bytes,
    /// The user record's tags, almost always none (the KPL writes none, and an empty `Vec` does not allocate).
    pub tags: Vec<Tag>,
}

/// A tag of a user record: a key and an optional value, both valid UTF-8.
///
/// The KPL format has room for tags but the KPL itself writes none; the decoder keeps any it finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    key: Bytes,
    value: Option<Bytes>,
}

/// The `&str` of bytes the decoder checked as UTF-8.
fn checked_str(bytes: &Bytes) -> &str {
    // The fallback is unreachable: the decoder checked every `Bytes` this is called with.
    std::str::from_utf8(bytes).unwrap_or_default()
}

impl UserRecord {
    pub(crate) fn new(
        sub_sequence_number: u64,
        partition_key: Bytes,
        explicit_hash_key: Option<Bytes>,
        data: Bytes,
        tags: Vec<Tag>,
    ) -> Self {
        Self { sub_sequence_number, partition_key, explicit_hash_key, data, tags }
    }

    /// The index of this user record in its aggregate, from 0. Every user record of an aggregate has the sequence
    /// number of the Kinesis record that carried it.
    pub fn sub_sequence_number(&self) -> u64 {
        self.sub_sequence_number
    }

    /// The user record's partition key.
    pub fn partition_key(&self) -> &str {
        checked_str(&self.partition_key)
    }

    /// The user record's partition key as bytes (valid UTF-8), a slice of the input.
    pub fn partition_key_bytes(&self) -> &Bytes {
        &self.partition_key
    }

    /// The user record's explicit hash key, if it has one.
    pub fn explicit_hash_key(&self) -> Option<&str> {
        self.explicit_hash_key.as_ref().map(checked_str)
    }

    /// The user record's explicit hash key as bytes (valid UTF-8), a slice of the input, if it has one.
    pub fn explicit_hash_key_bytes(&self) -> Option<&Bytes> {
        self.explicit_hash_key.as_ref()
    }

    /// The payload, a slice of the input.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The payload, by value.
    pub fn into_data(self) -> Bytes {
        self.data
    }

    /// The user record's tags (almost always none).
    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }

    /// Every field, by value.
    pub fn into_parts(self) -> UserRecordParts {
        UserRecordParts {
            sub_sequence_number: self.sub_sequence_number,
            partition_key: self.partition_key,
            explicit_hash_key: self.explicit_hash_key,
            data: self.data,
            tags: self.tags,
        }
    }
}

impl Tag {
    pub(crate) fn new(key: Bytes, value: Option<Bytes>) -> Self {
        Self { key, value }
    }

    /// The tag's key.
    pub fn key(&self) -> &str {
        checked_str(&self.key)
    }

    /// The tag's key as bytes (valid UTF-8), a slice of the input.
    pub fn key_bytes(&self) -> &Bytes {
        &self.key
    }

    /// The tag's value, if it has one.
    pub fn value(&self) -> Option<&str> {
        self.value.as_ref().map(checked_str)
    }

    /// The tag's value as bytes (valid UTF-8), a slice of the input, if it has one.
    pub fn value_bytes(&self) -> Option<&Bytes> {
        self.value.as_ref()
    }
}
