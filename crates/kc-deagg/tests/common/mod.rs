//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test crate uses some of them

use std::path::PathBuf;

use bytes::Bytes;
use kc_deagg::UserRecord;

/// A user record as plain values, to compare with expectations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plain {
    pub(crate) sub_sequence_number: u64,
    pub(crate) partition_key: String,
    pub(crate) explicit_hash_key: Option<String>,
    pub(crate) data: Vec<u8>,
    pub(crate) tags: Vec<(String, Option<String>)>,
}

impl From<&UserRecord> for Plain {
    fn from(record: &UserRecord) -> Self {
        Self {
            sub_sequence_number: record.sub_sequence_number(),
            partition_key: record.partition_key().to_owned(),
            explicit_hash_key: record.explicit_hash_key().map(str::to_owned),
            data: record.data().to_vec(),
            tags: record.tags().iter().map(|t| (t.key().to_owned(), t.value().map(str::to_owned))).collect(),
        }
    }
}

/// The path of a file under `tests/data/`.
pub(crate) fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// The bytes of a file under `tests/data/`.
pub(crate) fn read_data(name: &str) -> Bytes {
    let path = data_path(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The bytes of a `.hex` file under `tests/data/`: hex digits and white space, `#` to the end of a line is a comment.
pub(crate) fn read_hex(name: &str) -> Bytes {
    let path = data_path(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let digits: Vec<u8> = text
        .lines()
        .flat_map(|line| line.split('#').next().unwrap_or_default().bytes())
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    Bytes::from(hex(&digits).unwrap_or_else(|| panic!("{}: not hex", path.display())))
}

/// Decodes hex digits (an even number of them).
pub(crate) fn hex(digits: &[u8]) -> Option<Vec<u8>> {
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

/// Magic number + `body` + MD5 of `body`: an aggregate whose digest matches, whatever `body` is.
pub(crate) fn wrap(body: &[u8]) -> Bytes {
    use md5::{Digest, Md5};
    let mut data = kc_deagg::MAGIC.to_vec();
    data.extend_from_slice(body);
    data.extend_from_slice(&Md5::digest(body));
    Bytes::from(data)
}
