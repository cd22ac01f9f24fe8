//! What the DynamoDB tests (`ddb.rs`, `leases.rs`) share: counting a client's requests by operation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::BoxError;

/// An interceptor counting the requests of one operation (`"PutItem"`, `"Query"`, ...) a client sends, retries
/// included; clones share the count.
#[derive(Debug, Clone)]
pub struct CountCalls {
    operation: &'static str,
    count: Arc<AtomicUsize>,
}

impl CountCalls {
    /// Counts the requests of `operation`.
    pub fn new(operation: &'static str) -> Self {
        Self { operation, count: Arc::default() }
    }

    /// How many were sent so far.
    pub fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Starts counting again from zero.
    pub fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
    }
}

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "CountCalls"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context.request().headers().get("x-amz-target");
        if target.and_then(|t| t.rsplit_once('.')).is_some_and(|(_, op)| op == self.operation) {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}
