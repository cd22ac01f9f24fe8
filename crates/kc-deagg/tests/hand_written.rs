//! Hand-written aggregates (`tests/data/*.hex`, annotated field by field) and the user records they hold.

mod common;

use common::{read_hex, Plain};

/// One expected user record: (partition key, explicit hash key, data, tags); sub-sequence numbers count from 0.
type Expected<'a> = (&'a str, Option<&'a str>, &'a [u8], &'a [(&'a str, Option<&'a str>)]);

fn check(file: &str, expected: &[Expected<'_>]) {
    let data = read_hex(file);
    let aggregate = kc_deagg::decode(&data)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
        .unwrap_or_else(|| panic!("{file}: not an aggregate"));
    let expected: Vec<Plain> = expected
        .iter()
        .enumerate()
        .map(|(i, &(partition_key, explicit_hash_key, data, tags))| Plain {
            sub_sequence_number: i as u64,
            partition_key: partition_key.to_owned(),
            explicit_hash_key: explicit_hash_key.map(str::to_owned),
            data: data.to_vec(),
            tags: tags.iter().map(|&(k, v)| (k.to_owned(), v.map(str::to_owned))).collect(),
        })
        .collect();
    assert_eq!(aggregate.len(), expected.len(), "{file}");
    assert_eq!(aggregate.is_empty(), expected.is_empty(), "{file}");
    let decoded: Vec<Plain> = aggregate.iter().map(|r| Plain::from(&r)).collect();
    assert_eq!(decoded, expected, "{file}");
}

#[test]
fn hand_written_vectors() {
    let payload: Vec<u8> = (0..128).collect();
    let max = "340282366920938463463374607431768211455";
    let cases: &[(&str, &[Expected<'_>])] = &[
        ("empty.hex", &[]),
        ("one-record.hex", &[("pk", None, b"hi", &[])]),
        (
            "many-records.hex",
            &[
                ("a", None, b"0", &[]),
                ("b", None, b"1", &[]),
                ("a", None, b"", &[]),
                ("b", None, &payload, &[]),
                ("a", None, b"end", &[]),
            ],
        ),
        ("explicit-hash-keys.hex", &[("p", Some(max), b"x", &[]), ("p", Some("0"), b"y", &[]), ("p", None, b"z", &[])]),
        (
            "tags.hex",
            &[
                ("t", None, b"d", &[("env", Some("prod")), ("flag", None)]),
                ("t", None, b"e", &[]),
                ("t", None, b"f", &[("", Some(""))]),
            ],
        ),
        ("unicode.hex", &[("🦀", None, "✓".as_bytes(), &[]), ("ключ", None, &[0x00], &[]), ("cé", None, &[0xFF], &[])]),
        ("non-canonical.hex", &[("k", Some("7"), b"new", &[("", None)]), ("k", None, b"", &[])]),
    ];
    for &(file, expected) in cases {
        check(file, expected);
    }
}

#[test]
fn empty_aggregate_is_twenty_bytes_and_empty() {
    let data = read_hex("empty.hex");
    assert_eq!(data.len(), 20);
    assert!(kc_deagg::is_aggregated(&data));
    let aggregate = kc_deagg::decode(&data).expect("valid").expect("aggregate");
    assert!(aggregate.is_empty());
    assert_eq!(aggregate.iter().next(), None);
    assert_eq!(aggregate.into_iter().next(), None);
}

#[test]
fn tag_accessors() {
    let aggregate = kc_deagg::decode(&read_hex("tags.hex")).expect("valid").expect("aggregate");
    let record = aggregate.iter().next().expect("a record");
    let tags = record.tags();
    assert_eq!(tags.len(), 2);
    assert_eq!((tags[0].key(), tags[0].value()), ("env", Some("prod")));
    assert_eq!((&tags[0].key_bytes()[..], tags[0].value_bytes().map(|v| &v[..])), (&b"env"[..], Some(&b"prod"[..])));
    assert_eq!((tags[1].key(), tags[1].value(), tags[1].value_bytes()), ("flag", None, None));
    let parts = record.into_parts();
    assert_eq!(parts.tags.len(), 2);
}
