//! How a consumer names a stream: by its name (a stream of the client's account and region), or by its ARN (any
//! account and region the credentials may read: cross-account streams are named this way).
//!
//! The text is kept exactly as given: it is the stream's label in records, metrics, logs and errors, and its key in
//! checkpoints and leases. A stream named once by name and once by ARN is two streams to the consumer (see
//! [`StreamId`]).

use std::fmt;

use crate::error::Error;

/// The longest stream name Kinesis allows.
const MAX_NAME_LEN: usize = 128;

/// A stream as the consumer was given it: a name (`orders`) or a stream ARN
/// (`arn:aws:kinesis:eu-west-1:123456789012:stream/orders`).
///
/// [`parse`](Self::parse) checks the shape Kinesis requires: a name is 1 to 128 of `a-z A-Z 0-9 _ . -`; an ARN is
/// `arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME` with a partition `aws` or `aws-*` (`aws-cn`, `aws-us-gov`,
/// ...), a region of lower-case letters, digits and `-`, a 12-digit account and a valid name. A stream consumer's ARN
/// (`.../stream/NAME/consumer/...`, for enhanced fan-out) or another service's ARN is refused with a message that
/// says so. A name never contains `:`, so text starting with `arn:` is an ARN and anything else a name.
///
/// The consumer calls Kinesis with `StreamName` for a name and `StreamARN` for an ARN, and keys checkpoints and
/// leases by the text as given. Naming the same stream by its name and by its ARN therefore makes two keys (and, in
/// one consumer, two readers of it): it is not detected; name each stream one way.
///
/// ```
/// use kc_core::StreamId;
///
/// let id = StreamId::parse("arn:aws:kinesis:eu-west-1:123456789012:stream/orders")?;
/// assert_eq!(id.name(), "orders");
/// assert_eq!(id.account(), Some("123456789012"));
/// assert!(StreamId::parse("orders")?.arn().is_none());
/// assert!(StreamId::parse("arn:aws:kinesis:eu-west-1:123456789012:stream/orders/consumer/c:1").is_err());
/// # Ok::<(), kc_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamId {
    text: String,
    /// For an ARN: its region, account and name (ranges of `text`).
    arn: Option<ArnParts>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ArnParts {
    region: (usize, usize),
    account: (usize, usize),
    name: usize,
}

impl StreamId {
    /// Parses a stream name or a stream ARN; an [`ErrorKind::Config`](crate::ErrorKind::Config) error says what is
    /// wrong with anything else.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if !is_arn(text) {
            validate_name(text, "stream name")?;
            return Ok(Self { text: text.to_owned(), arn: None });
        }
        let arn = parse_arn(text)?;
        Ok(Self { text: text.to_owned(), arn: Some(arn) })
    }

    /// The stream as given (its name or its ARN).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The stream's name: as given, or the ARN's last part.
    pub fn name(&self) -> &str {
        match &self.arn {
            Some(parts) => &self.text[parts.name..],
            None => &self.text,
        }
    }

    /// The ARN, if the stream was named by one.
    pub fn arn(&self) -> Option<&str> {
        self.arn.map(|_| self.text.as_str())
    }

    /// The ARN's region, if the stream was named by an ARN.
    pub fn region(&self) -> Option<&str> {
        self.arn.map(|p| &self.text[p.region.0..p.region.1])
    }

    /// The ARN's account, if the stream was named by an ARN.
    pub fn account(&self) -> Option<&str> {
        self.arn.map(|p| &self.text[p.account.0..p.account.1])
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `stream` (a stream as a consumer was given it) is an ARN rather than a name: what the Kinesis calls send
/// it as (`StreamARN` or `StreamName`). Names cannot contain `:`.
pub(crate) fn is_arn(stream: &str) -> bool {
    stream.starts_with("arn:")
}

/// Checks a stream name against the Kinesis rules: 1 to 128 of `a-z A-Z 0-9 _ . -`.
fn validate_name(name: &str, what: &str) -> Result<(), Error> {
    match name_problem(name) {
        None => Ok(()),
        Some(problem) => Err(Error::config(format!("invalid {what} {name:?}: {problem}"))),
    }
}

/// What is wrong with a stream name, if anything.
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it must not be empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Some(format!("it is {} characters long, at most {MAX_NAME_LEN} allowed", name.len()));
    }
    let c = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))?;
    Some(format!("character {c:?} is not allowed (letters, digits, '_', '.', '-')"))
}

/// The parts of a stream ARN, `arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME`.
fn parse_arn(text: &str) -> Result<ArnParts, Error> {
    const SHAPE: &str = "arn:PARTITION:kinesis:REGION:ACCOUNT:stream/NAME";
    let invalid = |why: String| Error::config(format!("invalid stream ARN {text:?}: {why} (expected {SHAPE})"));
    let mut fields = text.splitn(6, ':');
    let mut offset = 0;
    let mut next = || {
        let field = fields.next()?;
        let range = (offset, offset + field.len());
        offset += field.len() + 1;
        Some((field, range))
    };
    let (Some(_arn), Some((partition, _)), Some((service, _)), Some((region, region_at)), Some((account, account_at))) =
        (next(), next(), next(), next(), next())
    else {
        return Err(invalid("too few parts".to_owned()));
    };
    let Some((resource, resource_at)) = next() else {
        return Err(invalid("too few parts".to_owned()));
    };
    let lower = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let partition_ok =
        partition == "aws" || partition.strip_prefix("aws-").is_some_and(|rest| lower(rest) && !rest.ends_with('-'));
    if !partition_ok {
        return Err(invalid(format!("partition {partition:?} is not aws or aws-*")));
    }
    if service != "kinesis" {
        return Err(invalid(format!("it names the service {service:?}, not kinesis")));
    }
    if !lower(region) {
        return Err(invalid(format!("region {region:?} is not like us-east-1")));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(format!("account {account:?} is not 12 digits")));
    }
    let Some(name) = resource.strip_prefix("stream/") else {
        let kind = resource.split_once('/').map_or(resource, |(kind, _)| kind);
        return Err(invalid(format!("it names a {kind:?}, not a stream")));
    };
    if let Some((stream, _)) = name.split_once("/consumer/") {
        return Err(Error::config(format!(
            "{text:?} is the ARN of a stream consumer (enhanced fan-out) of the stream {stream:?}, not of a stream: \
             name the stream (ConsumerBuilder::fan_out_consumer_arn takes a consumer ARN)"
        )));
    }
    if let Some(problem) = name_problem(name) {
        return Err(invalid(format!("stream name {name:?}: {problem}")));
    }
    Ok(ArnParts { region: region_at, account: account_at, name: resource_at.0 + "stream/".len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_arns() {
        // (text, name, arn's region and account; or the error's words)
        let good = [
            ("my-stream_1.x", "my-stream_1.x", None),
            ("arn:aws:kinesis:us-east-1:123456789012:stream/orders", "orders", Some(("us-east-1", "123456789012"))),
            ("arn:aws-cn:kinesis:cn-north-1:123456789012:stream/s.1", "s.1", Some(("cn-north-1", "123456789012"))),
            (
                "arn:aws-us-gov:kinesis:us-gov-west-1:000000000000:stream/a-b_c",
                "a-b_c",
                Some(("us-gov-west-1", "000000000000")),
            ),
            (
                "arn:aws-iso-b:kinesis:us-isob-east-1:123456789012:stream/x",
                "x",
                Some(("us-isob-east-1", "123456789012")),
            ),
        ];
        for (text, name, arn) in good {
            let id = StreamId::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(id.as_str(), text);
            assert_eq!(id.to_string(), text);
            assert_eq!(id.name(), name, "{text}");
            assert_eq!(id.arn().is_some(), arn.is_some(), "{text}");
            assert_eq!(id.region().zip(id.account()), arn, "{text}");
            assert_eq!(is_arn(text), arn.is_some(), "{text}");
        }
        let long = "a".repeat(128);
        assert!(StreamId::parse(&long).is_ok());
        assert!(StreamId::parse(&format!("arn:aws:kinesis:us-east-1:123456789012:stream/{long}")).is_ok());

        let bad = [
            ("", "must not be empty"),
            ("a b", "character ' '"),
            ("x;drop", "character ';'"),
            ("é", "not allowed"),
            ("a:b", "character ':'"),
            ("arn:aws:kinesis:us-east-1:123456789012", "too few parts"),
            ("arn:", "too few parts"),
            ("arn:aws:sqs:us-east-1:123456789012:stream/s", "the service \"sqs\""),
            ("arn:aws:kinesis:us-east-1:123456789012:stream/s/consumer/c:1", "ARN of a stream consumer"),
            ("arn:azure:kinesis:us-east-1:123456789012:stream/s", "partition \"azure\""),
            ("arn:aws-:kinesis:us-east-1:123456789012:stream/s", "partition \"aws-\""),
            ("arn::kinesis:us-east-1:123456789012:stream/s", "partition \"\""),
            ("arn:aws:kinesis::123456789012:stream/s", "region \"\""),
            ("arn:aws:kinesis:US-EAST-1:123456789012:stream/s", "region \"US-EAST-1\""),
            ("arn:aws:kinesis:us-east-1:1234:stream/s", "account \"1234\""),
            ("arn:aws:kinesis:us-east-1:12345678901a:stream/s", "not 12 digits"),
            ("arn:aws:kinesis:us-east-1:123456789012:table/s", "names a \"table\""),
            ("arn:aws:kinesis:us-east-1:123456789012:stream/", "must not be empty"),
            ("arn:aws:kinesis:us-east-1:123456789012:stream/a:b", "character ':'"),
            ("arn:aws:kinesis:us-east-1:123456789012:stream/a/b", "character '/'"),
        ];
        for (text, want) in bad {
            match StreamId::parse(text) {
                Ok(id) => panic!("{text:?}: accepted as {id:?}"),
                Err(e) => {
                    assert_eq!(e.kind(), crate::ErrorKind::Config, "{text:?}");
                    assert!(e.to_string().contains(want), "{text:?}: {e}");
                }
            }
        }
        assert!(StreamId::parse(&"a".repeat(129)).is_err());
        let too_long = format!("arn:aws:kinesis:us-east-1:123456789012:stream/{}", "a".repeat(129));
        assert!(StreamId::parse(&too_long).expect_err("too long").to_string().contains("at most 128"));
    }
}
