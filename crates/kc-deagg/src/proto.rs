//! The types `prost-build` generates from `proto/kpl_aggregation.proto` (`cargo xtask codegen` writes them to
//! `kpl_generated.rs`; an xtask test fails when that file is stale): the reference the tests hold the hand-rolled
//! decoder and the [`Aggregator`](crate::Aggregator) to.
#![allow(missing_docs, unreachable_pub, dead_code, clippy::all)]

include!("kpl_generated.rs");

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use md5::{Digest, Md5};
    use proptest::prelude::*;
    use prost::Message;

    use super::{AggregatedRecord, Record, Tag};
    use crate::{decode, Aggregator, DecodeErrorKind, UserRecord, MAGIC};

    /// A user record as plain values: (sub-sequence number, partition key, explicit hash key, data, tags).
    type Plain = (u64, String, Option<String>, Vec<u8>, Vec<(String, Option<String>)>);

    fn plain(record: &UserRecord) -> Plain {
        (
            record.sub_sequence_number(),
            record.partition_key().to_owned(),
            record.explicit_hash_key().map(str::to_owned),
            record.data().to_vec(),
            record.tags().iter().map(|t| (t.key().to_owned(), t.value().map(str::to_owned))).collect(),
        )
    }

    /// Magic number + `body` + MD5 of `body`.
    fn wrap(body: &[u8]) -> Bytes {
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(body);
        data.extend_from_slice(&Md5::digest(body));
        Bytes::from(data)
    }

    /// The user records prost's decoding of `body` stands for, or the error kind kc-deagg must report for an index
    /// that is out of range (records in order; in a record the partition key first).
    fn resolve(message: &AggregatedRecord) -> Result<Vec<Plain>, DecodeErrorKind> {
        let mut out = Vec::new();
        for (i, r) in message.records.iter().enumerate() {
            let pk = usize::try_from(r.partition_key_index)
                .ok()
                .and_then(|i| message.partition_key_table.get(i))
                .ok_or(DecodeErrorKind::PartitionKeyIndexOutOfRange)?;
            let ehk = match r.explicit_hash_key_index {
                None => None,
                Some(index) => Some(
                    usize::try_from(index)
                        .ok()
                        .and_then(|i| message.explicit_hash_key_table.get(i))
                        .ok_or(DecodeErrorKind::ExplicitHashKeyIndexOutOfRange)?
                        .clone(),
                ),
            };
            let tags = r.tags.iter().map(|t| (t.key.clone(), t.value.clone())).collect();
            out.push((i as u64, pk.clone(), ehk, r.data.to_vec(), tags));
        }
        Ok(out)
    }

    fn kc_deagg_records(data: &Bytes) -> Result<Vec<Plain>, DecodeErrorKind> {
        let aggregate = decode(data).map_err(|e| e.kind())?.expect("has the magic number");
        Ok(aggregate.iter().map(|r| plain(&r)).collect())
    }

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), "[a-z]{1,4}", ".{0,12}"]
    }

    fn arb_tag() -> impl Strategy<Value = Tag> {
        (arb_string(), proptest::option::of(arb_string())).prop_map(|(key, value)| Tag { key, value })
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            prop_oneof![8 => 0..4u64, 1 => any::<u64>()],
            proptest::option::of(prop_oneof![8 => 0..3u64, 1 => any::<u64>()]),
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(arb_tag(), 0..3),
        )
            .prop_map(|(partition_key_index, explicit_hash_key_index, data, tags)| Record {
                partition_key_index,
                explicit_hash_key_index,
                data: data.into(),
                tags,
            })
    }

    fn arb_message() -> impl Strategy<Value = AggregatedRecord> {
        (
            proptest::collection::vec(arb_string(), 0..5),
            proptest::collection::vec(arb_string(), 0..4),
            proptest::collection::vec(arb_record(), 0..10),
        )
            .prop_map(|(partition_key_table, explicit_hash_key_table, records)| AggregatedRecord {
                partition_key_table,
                explicit_hash_key_table,
                records,
            })
    }

    /// A change to a valid body: set a byte, insert one, cut the body short.
    #[derive(Clone, Debug)]
    enum Mutation {
        Set(usize, u8),
        Insert(usize, u8),
        Truncate(usize),
    }

    fn arb_mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            4 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
            2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            1 => any::<usize>().prop_map(Mutation::Truncate),
        ]
    }

    fn mutate(body: &mut Vec<u8>, mutation: &Mutation) {
        match *mutation {
            Mutation::Set(i, b) if !body.is_empty() => {
                let len = body.len();
                body[i % len] = b;
            }
            Mutation::Insert(i, b) => body.insert(i % (body.len() + 1), b),
            Mutation::Truncate(n) => body.truncate(n % (body.len() + 1)),
            Mutation::Set(..) => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// prost reads back what the `Aggregator` wrote.
        #[test]
        fn prost_decodes_what_the_aggregator_encodes(message in arb_message()) {
            let mut aggregator = Aggregator::new();
            let mut expected = Vec::new();
            // Records with valid indexes only: the aggregator takes keys, not indexes.
            for (i, r) in resolve(&message).unwrap_or_default().into_iter().enumerate() {
                let tags: Vec<(&str, Option<&str>)> = r.4.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                aggregator.add_with_tags(&r.1, r.2.as_deref(), &r.3, &tags);
                expected.push((i as u64, r.1, r.2, r.3, r.4));
            }
            let size = aggregator.size_bytes();
            let data = aggregator.finish();
            prop_assert_eq!(data.len(), size);
            prop_assert_eq!(&data[..4], &MAGIC[..]);
            let body = &data[4..data.len() - 16];
            prop_assert_eq!(&data[data.len() - 16..], &Md5::digest(body)[..]);
            let decoded = AggregatedRecord::decode(body).unwrap();
            prop_assert_eq!(resolve(&decoded), Ok(expected));
        }

        /// kc-deagg reads what prost writes, and reports the index errors prost does not check.
        #[test]
        fn kc_deagg_decodes_what_prost_encodes(message in arb_message()) {
            let data = wrap(&message.encode_to_vec());
            prop_assert_eq!(kc_deagg_records(&data), resolve(&message));
        }

        /// On damaged protobuf (with a matching digest, so that the parser sees it), kc-deagg accepts nothing prost
        /// rejects, and where both accept they agree.
        #[test]
        fn kc_deagg_agrees_with_prost_on_damaged_bodies(
            message in arb_message(),
            mutations in proptest::collection::vec(arb_mutation(), 1..4),
        ) {
            let mut body = message.encode_to_vec();
            for mutation in &mutations {
                mutate(&mut body, mutation);
            }
            let ours = kc_deagg_records(&wrap(&body));
            match AggregatedRecord::decode(&body[..]) {
                Err(_) => prop_assert!(ours.is_err(), "prost rejects, kc-deagg accepts: {ours:?}"),
                Ok(theirs) => match (ours, resolve(&theirs)) {
                    (Ok(ours), Ok(theirs)) => prop_assert_eq!(ours, theirs),
                    // prost does not check `required` fields (it reads a missing index as 0) and skips groups;
                    // kc-deagg rejects both.
                    (Err(kind), Err(expected)) => {
                        prop_assert!(kind == expected || kind == DecodeErrorKind::InvalidProtobuf, "{kind:?}");
                    }
                    (Err(kind), Ok(_)) => prop_assert_eq!(kind, DecodeErrorKind::InvalidProtobuf),
                    (Ok(ours), Err(expected)) => prop_assert!(false, "expected {expected:?}, got {ours:?}"),
                },
            }
        }

        /// Arbitrary bytes with a matching digest: no panic, and nothing prost rejects.
        #[test]
        fn kc_deagg_rejects_what_prost_rejects(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let ours = kc_deagg_records(&wrap(&body));
            if AggregatedRecord::decode(&body[..]).is_err() {
                prop_assert!(ours.is_err());
            }
        }
    }
}
