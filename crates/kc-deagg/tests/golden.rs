//! The shared test vectors (`tests/data/vectors.json` and its `.bin` files), made by an independent implementation
//! of the KPL aggregation format (awslabs' Python `aws_kinesis_agg`; see `tests/data/README.md`).

mod common;

use common::{hex, read_data, Plain};
use kc_deagg::DecodeErrorKind;
use serde_json::Value;

fn vectors() -> serde_json::Map<String, Value> {
    let json = read_data("vectors.json");
    match serde_json::from_slice(&json).expect("vectors.json is JSON") {
        Value::Object(map) => map,
        other => panic!("vectors.json is not an object: {other}"),
    }
}

fn string(value: &Value, field: &str) -> Option<String> {
    match &value[field] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("{field}: {other}"),
    }
}

fn expected_records(vector: &Value) -> Vec<Plain> {
    vector["user_records"]
        .as_array()
        .expect("user_records")
        .iter()
        .map(|r| Plain {
            sub_sequence_number: r["sub_sequence_number"].as_u64().expect("sub_sequence_number"),
            partition_key: string(r, "partition_key").expect("partition_key"),
            explicit_hash_key: string(r, "explicit_hash_key"),
            data: hex(string(r, "data_hex").expect("data_hex").as_bytes()).expect("data_hex is hex"),
            tags: Vec::new(),
        })
        .collect()
}

#[test]
fn every_valid_vector_decodes_to_its_user_records() {
    let mut checked = 0;
    for (name, vector) in vectors() {
        if vector.get("error").is_some() {
            continue;
        }
        let file = string(&vector, "file").expect("file");
        let data = read_data(&file);
        assert!(kc_deagg::is_aggregated(&data), "{name}");
        let aggregate = kc_deagg::decode(&data)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: not an aggregate"));
        let expected = expected_records(&vector);
        assert!(!expected.is_empty(), "{name}");
        assert_eq!(aggregate.len(), expected.len(), "{name}");
        let by_ref: Vec<Plain> = aggregate.iter().map(|r| Plain::from(&r)).collect();
        assert_eq!(by_ref, expected, "{name}");
        let by_value: Vec<Plain> = aggregate.into_iter().map(|r| Plain::from(&r)).collect();
        assert_eq!(by_value, expected, "{name}");
        checked += 1;
    }
    assert_eq!(checked, 6, "valid vectors in vectors.json");
}

#[test]
fn every_corrupt_vector_is_the_expected_error() {
    // vectors.json says what is wrong in words; these are the kinds that words map to.
    let cases = [
        ("bad-md5", DecodeErrorKind::BadMd5),
        ("truncated", DecodeErrorKind::Truncated),
        ("bad-key-index", DecodeErrorKind::PartitionKeyIndexOutOfRange),
    ];
    let vectors = vectors();
    let corrupt: Vec<&String> = vectors.iter().filter(|(_, v)| v.get("error").is_some()).map(|(k, _)| k).collect();
    assert_eq!(corrupt.len(), cases.len(), "corrupt vectors in vectors.json: {corrupt:?}");
    for (name, kind) in cases {
        let vector = &vectors[name];
        let data = read_data(&string(vector, "file").expect("file"));
        assert!(kc_deagg::is_aggregated(&data), "{name}");
        let error = kc_deagg::decode(&data).expect_err(name);
        assert_eq!(error.kind(), kind, "{name}: {error} (vectors.json: {})", vector["error"]);
    }
}

#[test]
fn corrupt_vectors_say_what_failed() {
    let cases = [
        ("bad-md5.bin", "KPL aggregate: MD5 checksum mismatch"),
        (
            "truncated.bin",
            "KPL aggregate: truncated: the protobuf ends inside the field at byte 811 (and the MD5 digest does not \
             match)",
        ),
        (
            "bad-key-index.bin",
            "KPL aggregate: user record 0: partition key index 5 is out of range (the table has 0 entries)",
        ),
    ];
    for (file, message) in cases {
        let error = kc_deagg::decode(&read_data(file)).expect_err(file);
        assert_eq!(error.to_string(), message, "{file}");
    }
}
