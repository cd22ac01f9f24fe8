//! The error type of the consumer.

use std::fmt;

/// A boxed error from a handler (or from a dependency), kept as the [`std::error::Error::source`] of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The builder was given an invalid value.
    Config,
    /// The handler returned an error (its error is the [`source`](std::error::Error::source)) or panicked.
    Handler,
    /// The stream (or a shard) does not exist.
    StreamNotFound,
    /// Kinesis refused a call for a reason retrying does not fix (access denied, invalid argument, ...).
    Kinesis,
    /// The checkpoint store failed (reading, writing or flushing).
    Checkpoint,
    /// A KPL aggregate could not be decoded and strict deaggregation is on.
    Deaggregation,
    /// A dead-letter destination refused a record for a reason retrying does not fix (its error is the
    /// [`source`](std::error::Error::source)); the record was not checkpointed.
    DeadLetter,
    /// Kinesis returned something the consumer cannot use (e.g. a sequence number that is not a number).
    InvalidResponse,
}

/// An error that stopped a scan, naming the stream and (where there is one) the shard.
#[derive(Debug)]
#[non_exhaustive]
pub struct Error {
    kind: ErrorKind,
    message: String,
    stream: Option<String>,
    shard: Option<String>,
    source: Option<BoxError>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), stream: None, shard: None, source: None }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub(crate) fn at(mut self, stream: &str, shard: Option<&str>) -> Self {
        self.stream = Some(stream.to_owned());
        self.shard = shard.map(str::to_owned);
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The stream the scan was reading.
    pub fn stream(&self) -> Option<&str> {
        self.stream.as_deref()
    }

    /// The shard where the failure happened, if it happened in one.
    pub fn shard(&self) -> Option<&str> {
        self.shard.as_deref()
    }

    /// Takes the handler's own error out of a [`ErrorKind::Handler`] error (to downcast it, say).
    pub fn into_handler_error(self) -> Option<BoxError> {
        match self.kind {
            ErrorKind::Handler => self.source,
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.stream, &self.shard) {
            (Some(stream), Some(shard)) => write!(f, "stream {stream:?}, shard {shard:?}: ")?,
            (Some(stream), None) => write!(f, "stream {stream:?}: ")?,
            _ => {}
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}
