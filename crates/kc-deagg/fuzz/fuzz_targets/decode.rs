//! Decodes arbitrary bytes and takes every user record: no input may panic, and an input that decodes must give the
//! same user records once re-encoded and decoded again.
//!
//! Each input is decoded three ways: as a Kinesis record's data; as the protobuf of an aggregate whose MD5 digest
//! matches (so that mutations reach the parser instead of stopping at the digest check); and, when it has the
//! magic number, with its protobuf given a matching digest (so that the seed aggregates, mutated, reach the parser).
#![no_main]

use bytes::Bytes;
use kc_deagg::{Aggregator, UserRecord, MAGIC};
use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};

fuzz_target!(|input: &[u8]| {
    check(Bytes::copy_from_slice(input));
    check(with_digest(input));
    if input.len() >= MAGIC.len() + 16 && input.starts_with(&MAGIC) {
        check(with_digest(&input[MAGIC.len()..input.len() - 16]));
    }
});

/// Magic number + `body` + MD5 of `body`.
fn with_digest(body: &[u8]) -> Bytes {
    let mut data = MAGIC.to_vec();
    data.extend_from_slice(body);
    data.extend_from_slice(&Md5::digest(body));
    Bytes::from(data)
}

fn check(data: Bytes) {
    let aggregate = match kc_deagg::decode(&data) {
        Ok(Some(aggregate)) => aggregate,
        Ok(None) => {
            assert!(!data.starts_with(&MAGIC));
            return;
        }
        Err(error) => {
            assert!(data.starts_with(&MAGIC));
            assert!(error.to_string().starts_with("KPL aggregate: "));
            return;
        }
    };
    assert!(kc_deagg::is_aggregated(&data));
    let records: Vec<UserRecord> = aggregate.iter().collect();
    assert_eq!(records.len(), aggregate.len());
    let input = data.as_ptr_range();
    let inside =
        |b: &Bytes| input.start <= b.as_ptr_range().start && b.as_ptr_range().end <= input.end;
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.sub_sequence_number(), i as u64);
        assert!(inside(record.data()) && inside(record.partition_key_bytes()));
        assert_eq!(
            record.partition_key().as_bytes(),
            &record.partition_key_bytes()[..]
        );
        if let Some(ehk) = record.explicit_hash_key_bytes() {
            assert!(inside(ehk));
            assert_eq!(
                record.explicit_hash_key().map(str::as_bytes),
                Some(&ehk[..])
            );
        }
        for tag in record.tags() {
            assert_eq!(tag.key().as_bytes(), &tag.key_bytes()[..]);
            assert_eq!(
                tag.value().map(str::as_bytes),
                tag.value_bytes().map(|v| &v[..])
            );
        }
    }

    let mut aggregator = Aggregator::new();
    for record in &records {
        let tags: Vec<(&str, Option<&str>)> =
            record.tags().iter().map(|t| (t.key(), t.value())).collect();
        let predicted = aggregator.size_bytes_with(
            record.partition_key(),
            record.explicit_hash_key(),
            record.data().len(),
        );
        aggregator.add_with_tags(
            record.partition_key(),
            record.explicit_hash_key(),
            record.data(),
            &tags,
        );
        if tags.is_empty() {
            assert_eq!(aggregator.size_bytes(), predicted);
        }
    }
    let size = aggregator.size_bytes();
    let encoded = aggregator.finish();
    assert_eq!(encoded.len(), size);
    let again: Vec<UserRecord> = kc_deagg::decode(&encoded)
        .expect("re-encoded aggregate decodes")
        .expect("re-encoded aggregate has the magic number")
        .into_iter()
        .collect();
    assert_eq!(again, records);
    let owned: Vec<UserRecord> = aggregate.into_iter().collect();
    assert_eq!(owned, records);
}
