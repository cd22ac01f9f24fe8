//! The consumer's settings as plain data: what the builders collect and validate, and what the runtime modules read.
//! Nothing here does IO or knows the runtime (sources, discovery, readers, groups): every other module may depend
//! on this one, and it depends on none of them.

mod group;

use std::time::{Duration, SystemTime};

use crate::error::Error;
use crate::stream_id::StreamId;

pub use group::Group;
pub(crate) use group::GroupConfig;

/// The longest duration any setting accepts (a year): longer ones are refused by `build()`, so that no deadline the
/// consumer computes from a setting (and a few multiples of it) overflows the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Where a shard with no checkpoint starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitialPosition {
    /// Only records put after the consumer started (the default, as in the Go library).
    #[default]
    Latest,
    /// The oldest record still in the stream.
    TrimHorizon,
    /// The first record at or after this time.
    AtTimestamp(SystemTime),
}

/// The consumer's settings; every default is stated on the builder method that changes it.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) stream: String,
    pub(crate) app: String,
    pub(crate) initial_position: InitialPosition,
    pub(crate) scan_interval: Duration,
    /// The longest wait between two GetRecords of an idle shard.
    pub(crate) max_idle_interval: Duration,
    pub(crate) max_records: i32,
    /// Fetch a shard's next batch while the current one is handled (polling).
    pub(crate) prefetch: bool,
    /// The most handler calls of one shard at once (one per partition key).
    pub(crate) max_in_flight_per_shard: usize,
    pub(crate) discovery_interval: Duration,
    pub(crate) aggregation: bool,
    pub(crate) strict_deaggregation: bool,
    pub(crate) min_poll_interval: Duration,
    pub(crate) call_timeout: Duration,
    /// The most Kinesis calls in flight at once, for the whole consumer.
    pub(crate) max_calls_in_flight: usize,
    pub(crate) store_timeout: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    /// Enhanced fan-out instead of polling (`None`: polling).
    pub(crate) fan_out: Option<FanOutConfig>,
    /// Deregister the fan-out consumer when the scan returns.
    pub(crate) deregister_on_shutdown: bool,
    /// The polling-only settings the builder was given (refused with fan-out rather than ignored).
    pub(crate) polling_options: Vec<&'static str>,
}

impl Config {
    const DEFAULT_APP: &'static str = "kinesis-consumer";
    const DEFAULT_MAX_CALLS_IN_FLIGHT: usize = 64;
    /// The largest `max_calls_in_flight` accepted.
    const MAX_CALLS_IN_FLIGHT: usize = 100_000;

    pub(crate) fn new(stream: String) -> Self {
        Self {
            stream,
            app: Self::DEFAULT_APP.to_owned(),
            initial_position: InitialPosition::Latest,
            scan_interval: Duration::from_millis(250),
            max_idle_interval: Duration::from_secs(1),
            max_records: 10_000,
            prefetch: true,
            max_in_flight_per_shard: 1,
            discovery_interval: Duration::from_secs(30),
            aggregation: false,
            strict_deaggregation: false,
            min_poll_interval: Duration::from_millis(200),
            call_timeout: Duration::from_secs(10),
            max_calls_in_flight: Self::DEFAULT_MAX_CALLS_IN_FLIGHT,
            store_timeout: Duration::from_secs(30),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            fan_out: None,
            deregister_on_shutdown: false,
            polling_options: Vec::new(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        StreamId::parse(&self.stream)?;
        self.validate_settings()
    }

    /// Everything but the stream (a consumer of several streams has none of its own).
    pub(crate) fn validate_settings(&self) -> Result<(), Error> {
        if self.app.is_empty() {
            return Err(Error::config("the app name (checkpoint namespace) must not be empty"));
        }
        if !(1..=10_000).contains(&self.max_records) {
            return Err(Error::config(format!(
                "max_records must be between 1 and 10000 (the GetRecords limit), got {}",
                self.max_records
            )));
        }
        if !(1..=10_000).contains(&self.max_in_flight_per_shard) {
            return Err(Error::config(format!(
                "max_in_flight_per_shard must be between 1 and 10000, got {}",
                self.max_in_flight_per_shard
            )));
        }
        if !(1..=Self::MAX_CALLS_IN_FLIGHT).contains(&self.max_calls_in_flight) {
            return Err(Error::config(format!(
                "max_calls_in_flight must be between 1 and {}, got {}",
                Self::MAX_CALLS_IN_FLIGHT,
                self.max_calls_in_flight
            )));
        }
        let positive = [
            ("scan_interval", self.scan_interval),
            ("discovery_interval", self.discovery_interval),
            ("call_timeout", self.call_timeout),
            ("store_timeout", self.store_timeout),
            ("retry backoff base", self.backoff_base),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(Error::config(format!("{name} must be greater than zero")));
            }
        }
        let bounded = [
            ("scan_interval", self.scan_interval),
            ("max_idle_interval", self.max_idle_interval),
            ("discovery_interval", self.discovery_interval),
            ("min_poll_interval", self.min_poll_interval),
            ("call_timeout", self.call_timeout),
            ("store_timeout", self.store_timeout),
            ("retry backoff max", self.backoff_max),
        ];
        for (name, value) in bounded {
            at_most_max(name, value)?;
        }
        if self.backoff_max < self.backoff_base {
            return Err(Error::config("retry backoff max must be at least the backoff base"));
        }
        match &self.fan_out {
            Some(_) if !self.polling_options.is_empty() => {
                return Err(Error::config(format!(
                    "{} only apply to polling (GetRecords), not to enhanced fan-out",
                    self.polling_options.join(", ")
                )))
            }
            Some(fan_out) => fan_out.validate()?,
            None if self.deregister_on_shutdown => {
                return Err(Error::config(
                    "deregister_on_shutdown needs enhanced fan-out (ConsumerBuilder::fan_out or fan_out_consumer_arn)",
                ))
            }
            None => {}
        }
        Ok(())
    }
}

/// Refuses a duration longer than [`MAX_DURATION`].
pub(crate) fn at_most_max(name: &str, value: Duration) -> Result<(), Error> {
    if value > MAX_DURATION {
        return Err(Error::config(format!(
            "{name} must be at most {} days (kc_core::MAX_DURATION), got {value:?}",
            MAX_DURATION.as_secs() / 86_400
        )));
    }
    Ok(())
}

/// The fan-out consumer the builder was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum FanOutConfig {
    /// Registered under this name if missing.
    Name(String),
    /// Registered beforehand.
    Arn(String),
}

impl FanOutConfig {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        match self {
            Self::Name(name) => {
                if name.is_empty() {
                    return Err(Error::config("the fan-out consumer name must not be empty"));
                }
                if name.len() > 128 {
                    return Err(Error::config(format!(
                        "the fan-out consumer name is {} characters long, at most 128 allowed",
                        name.len()
                    )));
                }
                if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))) {
                    return Err(Error::config(format!(
                        "invalid fan-out consumer name {name:?}: character {c:?} is not allowed (letters, digits, \
                         '_', '.', '-')"
                    )));
                }
                Ok(())
            }
            Self::Arn(arn) => {
                let ok = arn.len() <= 2048 && arn.starts_with("arn:") && arn.contains(":stream/") && {
                    arn.split_once("/consumer/").is_some_and(|(_, rest)| !rest.is_empty())
                };
                if ok {
                    Ok(())
                } else {
                    Err(Error::config(format!(
                        "{arn:?} is not a stream consumer ARN (arn:aws:kinesis:REGION:ACCOUNT:stream/STREAM/consumer/\
                         NAME:TIMESTAMP)"
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_arns() {
        let ok =
            ["arn:aws:kinesis:us-east-1:123456789012:stream/s/consumer/c:1", "arn:aws:kinesis:r:0:stream/s/consumer/c"];
        for arn in ok {
            assert!(FanOutConfig::Arn(arn.to_owned()).validate().is_ok(), "{arn}");
        }
        let bad = [
            "",
            "c",
            "arn:aws:kinesis:r:0:stream/s",
            "arn:aws:kinesis:r:0:stream/s/consumer/",
            "x:stream/s/consumer/c",
        ];
        for arn in bad {
            assert!(FanOutConfig::Arn(arn.to_owned()).validate().is_err(), "{arn}");
        }
        assert!(FanOutConfig::Arn(format!("arn:aws:kinesis:r:0:stream/s/consumer/{}", "c".repeat(2048)))
            .validate()
            .is_err());
    }
}
