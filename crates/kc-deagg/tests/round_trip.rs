//! Encode then decode gives back the same user records; decoded records are slices of the input; iteration.

mod common;

use bytes::Bytes;
use common::Plain;
use kc_deagg::{Aggregator, UserRecordParts};
use proptest::prelude::*;

/// A user record to add: (partition key, explicit hash key, data, tags).
type Input = (String, Option<String>, Vec<u8>, Vec<(String, Option<String>)>);

fn encode(inputs: &[Input]) -> Bytes {
    let mut aggregator = Aggregator::new();
    for (pk, ehk, data, tags) in inputs {
        let tags: Vec<(&str, Option<&str>)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        aggregator.add_with_tags(pk, ehk.as_deref(), data, &tags);
    }
    assert_eq!(aggregator.len(), inputs.len());
    let size = aggregator.size_bytes();
    let data = aggregator.finish();
    assert_eq!(data.len(), size);
    data
}

fn expected(inputs: &[Input]) -> Vec<Plain> {
    inputs
        .iter()
        .enumerate()
        .map(|(i, (pk, ehk, data, tags))| Plain {
            sub_sequence_number: i as u64,
            partition_key: pk.clone(),
            explicit_hash_key: ehk.clone(),
            data: data.clone(),
            tags: tags.clone(),
        })
        .collect()
}

fn decoded(data: &Bytes) -> Vec<Plain> {
    let aggregate = kc_deagg::decode(data).expect("valid").expect("aggregate");
    aggregate.iter().map(|r| Plain::from(&r)).collect()
}

/// Keys from a small pool (so that tables are shared) or arbitrary Unicode, the empty string included.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec!["a", "b", "key-1", "ключ", "🦀"]).prop_map(str::to_owned),
        2 => ".{0,40}",
        1 => Just(String::new()),
    ]
}

fn arb_input() -> impl Strategy<Value = Input> {
    (
        arb_key(),
        prop::option::of(prop_oneof!["[0-9]{1,39}", arb_key()]),
        prop_oneof![4 => prop::collection::vec(any::<u8>(), 0..300), 1 => prop::collection::vec(any::<u8>(), 0..5000)],
        prop_oneof![8 => Just(Vec::new()), 1 => prop::collection::vec((arb_key(), prop::option::of(arb_key())), 1..3)],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_then_decode_gives_the_same_user_records(inputs in prop::collection::vec(arb_input(), 0..60)) {
        let data = encode(&inputs);
        prop_assert!(kc_deagg::is_aggregated(&data));
        prop_assert_eq!(decoded(&data), expected(&inputs));
    }

    #[test]
    fn owned_and_borrowed_iteration_agree(inputs in prop::collection::vec(arb_input(), 0..20)) {
        let data = encode(&inputs);
        let aggregate = kc_deagg::decode(&data).expect("valid").expect("aggregate");
        let borrowed: Vec<_> = aggregate.iter().collect();
        let reversed: Vec<_> = aggregate.iter().rev().collect();
        let owned: Vec<_> = aggregate.into_iter().collect();
        prop_assert_eq!(&borrowed, &owned);
        prop_assert_eq!(reversed.into_iter().rev().collect::<Vec<_>>(), owned);
    }
}

#[test]
fn hundreds_of_keys_need_two_byte_indexes() {
    let inputs: Vec<Input> = (0..300)
        .map(|i| (format!("pk-{i}"), (i % 3 == 0).then(|| format!("{}", i * 1_000_003)), vec![i as u8; i % 7], vec![]))
        .collect();
    let data = encode(&inputs);
    assert_eq!(decoded(&data), expected(&inputs));
}

#[test]
fn decoded_fields_point_into_the_input() {
    let mut aggregator = Aggregator::new();
    aggregator.add_with_tags("pk-0", Some("12345"), vec![1; 100], &[("k", Some("v"))]);
    aggregator.add("pk-1", None, b"");
    aggregator.add("pk-0", Some("12345"), vec![2; 1000]);
    let data = aggregator.finish();
    let input = data.as_ptr_range();
    let inside = |bytes: &Bytes| {
        let range = bytes.as_ptr_range();
        input.start <= range.start && range.end <= input.end
    };

    let aggregate = kc_deagg::decode(&data).expect("valid").expect("aggregate");
    for record in &aggregate {
        assert!(inside(record.data()), "data of {}", record.sub_sequence_number());
        assert!(inside(record.partition_key_bytes()), "partition key of {}", record.sub_sequence_number());
        if let Some(ehk) = record.explicit_hash_key_bytes() {
            assert!(inside(ehk), "explicit hash key of {}", record.sub_sequence_number());
        }
        for tag in record.tags() {
            assert!(inside(tag.key_bytes()) && tag.value_bytes().is_none_or(inside), "tag");
        }
    }
    // Records with the same keys share the table entry: the very same bytes.
    let records: Vec<_> = aggregate.into_iter().collect();
    assert_eq!(records[0].partition_key_bytes().as_ptr(), records[2].partition_key_bytes().as_ptr());
    // By value too.
    let UserRecordParts { data: payload, partition_key, .. } = records[2].clone().into_parts();
    assert!(inside(&payload) && inside(&partition_key));
    assert_eq!(payload.len(), 1000);
    assert!(inside(&records[2].clone().into_data()));
    // The golden vectors too.
    let golden = common::read_data("binary-1k.bin");
    let golden_range = golden.as_ptr_range();
    for record in kc_deagg::decode(&golden).expect("valid").expect("aggregate") {
        let range = record.data().as_ptr_range();
        assert!(golden_range.start <= range.start && range.end <= golden_range.end);
    }
}

#[test]
fn user_records_outlive_the_aggregate_and_the_input() {
    let mut aggregator = Aggregator::new();
    aggregator.add("pk", None, b"payload");
    let data = aggregator.finish();
    let record = {
        let aggregate = kc_deagg::decode(&data).expect("valid").expect("aggregate");
        aggregate.into_iter().next().expect("one record")
    };
    drop(data);
    assert_eq!(record.partition_key(), "pk");
    assert_eq!(record.data(), &b"payload"[..]);
}

#[test]
fn iterators_know_their_length() {
    let mut aggregator = Aggregator::new();
    for i in 0..5 {
        aggregator.add("pk", None, [i]);
    }
    let data = aggregator.finish();
    let aggregate = kc_deagg::decode(&data).expect("valid").expect("aggregate");
    let mut iter = aggregate.iter();
    assert_eq!(iter.len(), 5);
    iter.next();
    iter.next_back();
    assert_eq!(iter.len(), 3);
    let mut owned = aggregate.into_iter();
    assert_eq!(owned.len(), 5);
    assert_eq!(owned.next_back().map(|r| r.sub_sequence_number()), Some(4));
    assert_eq!(owned.next().map(|r| r.sub_sequence_number()), Some(0));
    assert_eq!(owned.len(), 3);
    assert_eq!(owned.map(|r| r.into_data()[0]).collect::<Vec<_>>(), [1, 2, 3]);
}
