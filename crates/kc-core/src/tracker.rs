//! The streams of a consumer of several streams: a fixed list, or a [`StreamTracker`] the consumer asks on the
//! discovery interval.

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::InitialPosition;
use crate::error::{BoxError, Error};
use crate::stream_id::StreamId;

/// A stream a consumer of several streams reads: its name or ARN (see [`StreamId`]) and, if it differs from the builder's
/// [`initial_position`](crate::ConsumerBuilder::initial_position), where its shards with no checkpoint start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrackedStream {
    pub(crate) name: String,
    pub(crate) initial_position: Option<InitialPosition>,
}

impl TrackedStream {
    /// The stream `name` (a name, or an ARN), starting at the builder's initial position.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), initial_position: None }
    }

    /// Where this stream's shards with no checkpoint start (when it is first read, or added while the scan runs).
    #[must_use]
    pub fn initial_position(mut self, position: InitialPosition) -> Self {
        self.initial_position = Some(position);
        self
    }

    /// The stream as given: its name, or its ARN.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<S: Into<String>> From<S> for TrackedStream {
    fn from(name: S) -> Self {
        Self::new(name)
    }
}

/// Tells a consumer which streams to read, asked when the scan starts and then on every
/// [`discovery_interval`](crate::ConsumerBuilder::discovery_interval) (see [`Consumer::builder_tracking`]).
///
/// A stream in an answer that is not read yet starts (at its initial position, or from its checkpoints); a stream
/// read and missing from the answer stops gracefully (the records in hand finished, their checkpoints flushed). An
/// error keeps the streams as they are until the next answer (logged as a warning).
///
/// [`Consumer::builder_tracking`]: crate::Consumer::builder_tracking
#[async_trait]
pub trait StreamTracker: Send + Sync + 'static {
    /// The streams to read now. Each must be a valid stream name or stream ARN ([`StreamId::parse`]) and appear once
    /// (as given: a stream named once by name and once by ARN is read twice, under two keys).
    async fn streams(&self) -> Result<Vec<TrackedStream>, BoxError>;
}

#[async_trait]
impl<T: StreamTracker + ?Sized> StreamTracker for Arc<T> {
    async fn streams(&self) -> Result<Vec<TrackedStream>, BoxError> {
        (**self).streams().await
    }
}

/// The streams of a consumer of several streams.
#[derive(Clone)]
pub(crate) enum Streams {
    /// Given up front, read until the scan stops.
    Fixed(Arc<[TrackedStream]>),
    /// Asked on the discovery interval.
    Tracked(Arc<dyn StreamTracker>),
}

/// Refuses an invalid stream name or ARN, or one given twice.
pub(crate) fn validate(streams: &[TrackedStream]) -> Result<(), Error> {
    let mut names = std::collections::HashSet::with_capacity(streams.len());
    for stream in streams {
        StreamId::parse(&stream.name)?;
        if !names.insert(stream.name.as_str()) {
            return Err(Error::config(format!("stream {:?} is named twice", stream.name)));
        }
    }
    Ok(())
}
