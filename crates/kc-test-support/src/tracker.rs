//! A stream tracker a test sets by hand.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kc_core::{BoxError, StreamTracker, TrackedStream};

/// A [`StreamTracker`] whose streams a test sets, and changes while the scan runs.
#[derive(Clone, Default)]
pub struct Tracker(Arc<Mutex<Vec<TrackedStream>>>);

impl Tracker {
    /// From now on the tracker names `streams` (names or ARNs).
    pub fn set<S: AsRef<str>>(&self, streams: &[S]) {
        *self.0.lock().expect("lock") = streams.iter().map(|s| TrackedStream::new(s.as_ref())).collect();
    }
}

#[async_trait]
impl StreamTracker for Tracker {
    async fn streams(&self) -> Result<Vec<TrackedStream>, BoxError> {
        Ok(self.0.lock().expect("lock").clone())
    }
}
