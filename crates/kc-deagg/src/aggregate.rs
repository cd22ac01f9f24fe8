//! The decoder: parses and checks a whole aggregate once, then hands out its user records as slices of the input.

use std::iter::{Enumerate, FusedIterator};

use bytes::Bytes;

use crate::error::{DecodeError, Detail};
use crate::record::{Tag, UserRecord};
use crate::wire::{self, Reader, Span};

/// The user records of one KPL aggregate, decoded and checked.
///
/// Made by [`decode`](crate::decode), which has already checked the MD5 digest, parsed the whole protobuf, checked
/// every key index and every string: iterating cannot fail. It holds the input [`Bytes`] (one reference count) and
/// the offsets of the table entries and of each user record's fields, in a few `Vec`s whatever the number of
/// records; each [`UserRecord`] it yields is slices of the input.
#[derive(Clone, Debug)]
pub struct Aggregate {
    input: Bytes,
    partition_keys: Vec<Span>,
    explicit_hash_keys: Vec<Span>,
    entries: Vec<Entry>,
    /// The tags of every record, in record order; each [`Entry`] has a range of it.
    tags: Vec<TagSpan>,
}

/// Where one user record's fields are.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Checked: an index of `partition_keys`.
    partition_key_index: u64,
    /// Checked: an index of `explicit_hash_keys`.
    explicit_hash_key_index: Option<u64>,
    data: Span,
    /// The range of [`Aggregate::tags`] that holds this record's tags.
    tags: Span,
}

#[derive(Clone, Copy, Debug)]
struct TagSpan {
    key: Span,
    value: Option<Span>,
}

/// The most records [`Parser`] reserves room for before it has seen them: 4096 (224 KiB).
const MAX_RESERVED_RECORDS: usize = 4096;

// Field numbers of the KPL's messages (proto/kpl_aggregation.proto).
const AGGREGATED_PARTITION_KEY_TABLE: u32 = 1;
const AGGREGATED_EXPLICIT_HASH_KEY_TABLE: u32 = 2;
const AGGREGATED_RECORDS: u32 = 3;
const RECORD_PARTITION_KEY_INDEX: u32 = 1;
const RECORD_EXPLICIT_HASH_KEY_INDEX: u32 = 2;
const RECORD_DATA: u32 = 3;
const RECORD_TAGS: u32 = 4;
const TAG_KEY: u32 = 1;
const TAG_VALUE: u32 = 2;

/// Parses an `AggregatedRecord` one top-level field at a time; [`finish`](Self::finish) checks the indexes and makes
/// the [`Aggregate`].
#[derive(Debug)]
struct Parser<'a> {
    input: &'a [u8],
    reader: Reader<'a>,
    partition_keys: Vec<Span>,
    explicit_hash_keys: Vec<Span>,
    entries: Vec<Entry>,
    tags: Vec<TagSpan>,
}

impl<'a> Parser<'a> {
    /// A parser of the `AggregatedRecord` at `body` of `input`.
    fn new(input: &'a [u8], body: Span) -> Self {
        Self {
            input,
            reader: Reader::new(input, body, "AggregatedRecord"),
            partition_keys: Vec::new(),
            explicit_hash_keys: Vec::new(),
            entries: Vec::new(),
            tags: Vec::new(),
        }
    }

    /// Whether every field was parsed.
    fn is_done(&self) -> bool {
        self.reader.is_empty()
    }

    /// Parses the next top-level field (and all of it: a record's fields, its tags).
    #[inline]
    fn step(&mut self) -> Result<(), DecodeError> {
        let reader = &mut self.reader;
        let offset = reader.pos();
        let (field, wire_type) = reader.read_key()?;
        match (field, wire_type) {
            (AGGREGATED_RECORDS, wire::LEN) => {
                let mut record = reader.read_message(offset, "Record")?;
                if self.entries.capacity() == 0 {
                    // Guess the number of records from the size of the first, to grow the `Vec` once rather than
                    // ten times; the guess is bounded by the input's length and by `MAX_RESERVED_RECORDS`.
                    let record_len = reader.pos().saturating_sub(offset).max(1);
                    let remaining = reader.remaining().saturating_add(record_len);
                    self.entries.reserve((remaining / record_len).min(MAX_RESERVED_RECORDS));
                }
                self.entries.push(parse_record(self.input, &mut record, offset, &mut self.tags)?);
            }
            (AGGREGATED_PARTITION_KEY_TABLE, wire::LEN) => {
                let key = reader.read_len(offset)?;
                check_utf8(self.input, key, "partition key table entry")?;
                self.partition_keys.push(key);
            }
            (AGGREGATED_EXPLICIT_HASH_KEY_TABLE, wire::LEN) => {
                let key = reader.read_len(offset)?;
                check_utf8(self.input, key, "explicit hash key table entry")?;
                self.explicit_hash_keys.push(key);
            }
            (AGGREGATED_PARTITION_KEY_TABLE, _) => {
                return Err(reader.wrong_wire_type(offset, "partition_key_table", wire_type));
            }
            (AGGREGATED_EXPLICIT_HASH_KEY_TABLE, _) => {
                return Err(reader.wrong_wire_type(offset, "explicit_hash_key_table", wire_type));
            }
            (AGGREGATED_RECORDS, _) => return Err(reader.wrong_wire_type(offset, "records", wire_type)),
            _ => reader.skip(wire_type, offset)?,
        }
        Ok(())
    }

    /// Checks every record's key indexes (the tables may come after the records: protobuf allows any order) and
    /// makes the aggregate of `input`, the `Bytes` of the `input` given to [`new`](Self::new).
    fn finish(self, input: &Bytes) -> Result<Aggregate, DecodeError> {
        let pk_count = self.partition_keys.len();
        let ehk_count = self.explicit_hash_keys.len();
        for (record, entry) in self.entries.iter().enumerate() {
            if !index_in(entry.partition_key_index, pk_count) {
                return Err(DecodeError::new(Detail::PartitionKeyIndex {
                    record,
                    index: entry.partition_key_index,
                    table_len: pk_count,
                }));
            }
            if let Some(index) = entry.explicit_hash_key_index {
                if !index_in(index, ehk_count) {
                    return Err(DecodeError::new(Detail::ExplicitHashKeyIndex { record, index, table_len: ehk_count }));
                }
            }
        }
        Ok(Aggregate {
            input: input.clone(),
            partition_keys: self.partition_keys,
            explicit_hash_keys: self.explicit_hash_keys,
            entries: self.entries,
            tags: self.tags,
        })
    }
}

impl Aggregate {
    /// Parses and checks the `AggregatedRecord` at `body` of `input`, whose digest matched.
    pub(crate) fn parse(input: &Bytes, body: Span) -> Result<Self, DecodeError> {
        let mut parser = Parser::new(input, body);
        while !parser.is_done() {
            parser.step()?;
        }
        parser.finish(input)
    }

    /// The number of user records.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the aggregate has no user record (a valid, if useless, aggregate).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The user records, in order (sub-sequence numbers 0, 1, ...). Each costs a reference count per field, no copy
    /// and (unless it has tags) no allocation.
    pub fn iter(&self) -> Iter<'_> {
        Iter { aggregate: self, entries: self.entries.iter().enumerate() }
    }

    #[inline]
    fn slice(&self, span: Span) -> Bytes {
        self.input.slice(span.range())
    }

    #[inline]
    fn user_record(&self, index: usize, entry: &Entry) -> UserRecord {
        // The indexes were checked against the tables in `parse`, and `Aggregate` is immutable; the spans are ranges
        // of `input` by construction of `Reader`.
        let partition_key = self.slice(self.partition_keys[entry.partition_key_index as usize]);
        let explicit_hash_key = entry.explicit_hash_key_index.map(|i| self.slice(self.explicit_hash_keys[i as usize]));
        let tags = if entry.tags.is_empty() {
            Vec::new()
        } else {
            self.tags[entry.tags.range()]
                .iter()
                .map(|tag| Tag::new(self.slice(tag.key), tag.value.map(|v| self.slice(v))))
                .collect()
        };
        UserRecord::new(index as u64, partition_key, explicit_hash_key, self.slice(entry.data), tags)
    }
}

fn index_in(index: u64, table_len: usize) -> bool {
    usize::try_from(index).is_ok_and(|i| i < table_len)
}

#[inline]
fn check_utf8(input: &[u8], span: Span, what: &'static str) -> Result<(), DecodeError> {
    let bytes = input.get(span.range()).unwrap_or_default();
    // Keys are nearly always ASCII, which this checks inline, a word at a time.
    if bytes.is_ascii() || std::str::from_utf8(bytes).is_ok() {
        Ok(())
    } else {
        Err(DecodeError::new(Detail::InvalidUtf8 { offset: span.start, what }))
    }
}

/// Parses one `Record`; `offset` is where its field key was, in the `AggregatedRecord`.
#[inline]
fn parse_record(
    input: &[u8],
    record: &mut Reader<'_>,
    offset: usize,
    tags: &mut Vec<TagSpan>,
) -> Result<Entry, DecodeError> {
    let mut partition_key_index = None;
    let mut explicit_hash_key_index = None;
    let mut data = None;
    let tags_start = tags.len();
    // Fast path: the fields in the order the KPL writes them, each once; the loop below takes whatever follows.
    if record.eat(wire::key(RECORD_PARTITION_KEY_INDEX as u8, wire::VARINT)) {
        partition_key_index = Some(record.read_varint()?);
        if record.eat(wire::key(RECORD_EXPLICIT_HASH_KEY_INDEX as u8, wire::VARINT)) {
            explicit_hash_key_index = Some(record.read_varint()?);
        }
        let data_offset = record.pos();
        if record.eat(wire::key(RECORD_DATA as u8, wire::LEN)) {
            data = Some(record.read_len(data_offset)?);
        }
    }
    // proto2: a scalar field that appears more than once takes its last value.
    while !record.is_empty() {
        let field_offset = record.pos();
        let (field, wire_type) = record.read_key()?;
        match (field, wire_type) {
            (RECORD_PARTITION_KEY_INDEX, wire::VARINT) => partition_key_index = Some(record.read_varint()?),
            (RECORD_DATA, wire::LEN) => data = Some(record.read_len(field_offset)?),
            (RECORD_EXPLICIT_HASH_KEY_INDEX, wire::VARINT) => explicit_hash_key_index = Some(record.read_varint()?),
            (RECORD_TAGS, wire::LEN) => {
                let mut tag = record.read_message(field_offset, "Tag")?;
                tags.push(parse_tag(input, &mut tag, field_offset)?);
            }
            (RECORD_PARTITION_KEY_INDEX, _) => {
                return Err(record.wrong_wire_type(field_offset, "partition_key_index", wire_type));
            }
            (RECORD_EXPLICIT_HASH_KEY_INDEX, _) => {
                return Err(record.wrong_wire_type(field_offset, "explicit_hash_key_index", wire_type));
            }
            (RECORD_DATA, _) => return Err(record.wrong_wire_type(field_offset, "data", wire_type)),
            (RECORD_TAGS, _) => return Err(record.wrong_wire_type(field_offset, "tags", wire_type)),
            _ => record.skip(wire_type, field_offset)?,
        }
    }
    let missing = |field| DecodeError::new(Detail::MissingField { offset, message: record.message(), field });
    Ok(Entry {
        partition_key_index: partition_key_index.ok_or_else(|| missing("partition_key_index"))?,
        explicit_hash_key_index,
        data: data.ok_or_else(|| missing("data"))?,
        tags: Span { start: tags_start, end: tags.len() },
    })
}

/// Parses one `Tag`; `offset` is where its field key was, in the `Record`.
fn parse_tag(input: &[u8], tag: &mut Reader<'_>, offset: usize) -> Result<TagSpan, DecodeError> {
    let mut key = None;
    let mut value = None;
    while !tag.is_empty() {
        let field_offset = tag.pos();
        let (field, wire_type) = tag.read_key()?;
        match (field, wire_type) {
            (TAG_KEY, wire::LEN) => key = Some(tag.read_len(field_offset)?),
            (TAG_VALUE, wire::LEN) => value = Some(tag.read_len(field_offset)?),
            (TAG_KEY, _) => return Err(tag.wrong_wire_type(field_offset, "key", wire_type)),
            (TAG_VALUE, _) => return Err(tag.wrong_wire_type(field_offset, "value", wire_type)),
            _ => tag.skip(wire_type, field_offset)?,
        }
    }
    let Some(key) = key else {
        return Err(DecodeError::new(Detail::MissingField { offset, message: tag.message(), field: "key" }));
    };
    check_utf8(input, key, "tag key")?;
    if let Some(value) = value {
        check_utf8(input, value, "tag value")?;
    }
    Ok(TagSpan { key, value })
}

impl<'a> IntoIterator for &'a Aggregate {
    type Item = UserRecord;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl IntoIterator for Aggregate {
    type Item = UserRecord;
    type IntoIter = IntoIter;

    fn into_iter(self) -> IntoIter {
        IntoIter { next: 0, end: self.entries.len(), aggregate: self }
    }
}

/// The user records of an [`Aggregate`], by reference; see [`Aggregate::iter`].
#[derive(Clone, Debug)]
pub struct Iter<'a> {
    aggregate: &'a Aggregate,
    entries: Enumerate<std::slice::Iter<'a, Entry>>,
}

impl Iterator for Iter<'_> {
    type Item = UserRecord;

    #[inline]
    fn next(&mut self) -> Option<UserRecord> {
        let (index, entry) = self.entries.next()?;
        Some(self.aggregate.user_record(index, entry))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<UserRecord> {
        let (index, entry) = self.entries.next_back()?;
        Some(self.aggregate.user_record(index, entry))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl FusedIterator for Iter<'_> {}

/// The user records of an [`Aggregate`], by value; see [`Aggregate::into_iter`](IntoIterator::into_iter).
#[derive(Clone, Debug)]
pub struct IntoIter {
    aggregate: Aggregate,
    /// The index of the next record from the front.
    next: usize,
    /// One past the index of the next record from the back.
    end: usize,
}

impl Iterator for IntoIter {
    type Item = UserRecord;

    #[inline]
    fn next(&mut self) -> Option<UserRecord> {
        if self.next >= self.end {
            return None;
        }
        let index = self.next;
        let entry = self.aggregate.entries.get(index)?;
        self.next += 1;
        Some(self.aggregate.user_record(index, entry))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = self.end.saturating_sub(self.next);
        (len, Some(len))
    }
}

impl DoubleEndedIterator for IntoIter {
    fn next_back(&mut self) -> Option<UserRecord> {
        if self.next >= self.end {
            return None;
        }
        let index = self.end - 1;
        let entry = self.aggregate.entries.get(index)?;
        self.end = index;
        Some(self.aggregate.user_record(index, entry))
    }
}

impl ExactSizeIterator for IntoIter {}

impl FusedIterator for IntoIter {}
