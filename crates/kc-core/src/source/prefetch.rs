//! Prefetch (polling): a shard's next GetRecords runs in a task of its own while the reader delivers the current
//! batch, so that fetching and handling overlap, also when the handler keeps its thread busy. At most one batch is
//! fetched ahead; the polling source paces the calls as without prefetch (the per-shard floor, the idle backoff).
//! A fetch ahead that is no longer wanted (a stop, an error, a lost lease) is aborted when the [`Fetch`] is dropped:
//! its batch was neither delivered nor checkpointed.

use tokio::task::JoinHandle;

use super::polling::Polling;
use super::{Context, Fetched, Source};
use crate::error::{Error, ErrorKind};
use kc_checkpoint::Checkpoint;

type Ahead = (Polling, Context, Result<Option<Fetched>, Error>);

/// How a reader gets its batches: from its source in turn, or with the next one fetched ahead.
pub(crate) enum Fetch {
    /// One batch at a time, fetched when the reader asks (fan-out, or prefetch off).
    InTurn(Source),
    /// The polling source and its own context while no fetch is running, or the task fetching ahead with them.
    Ahead { idle: Option<Box<(Polling, Context)>>, running: Option<JoinHandle<Ahead>> },
}

impl Fetch {
    /// Fetching for `source`; ahead (with a context of its own, beside the reader's `cx`) if `prefetch` is on and the
    /// source polls.
    pub(crate) fn new(source: Source, cx: &Context, prefetch: bool) -> Self {
        match source {
            Source::Polling(polling) if prefetch => {
                Self::Ahead { idle: Some(Box::new((polling, cx.sibling()))), running: None }
            }
            source => Self::InTurn(source),
        }
    }

    /// The next batch: the one fetched ahead if a fetch is running, else fetched now. `None` when cancelled.
    pub(crate) async fn next(
        &mut self,
        cx: &mut Context,
        last_handled: Option<&Checkpoint>,
    ) -> Result<Option<Fetched>, Error> {
        match self {
            Self::InTurn(source) => source.next(cx, last_handled).await,
            Self::Ahead { idle, running } => {
                if let Some(task) = running.take() {
                    return match task.await {
                        Ok((polling, ahead_cx, fetched)) => {
                            *idle = Some(Box::new((polling, ahead_cx)));
                            fetched
                        }
                        Err(e) => Err(cx.err(Error::new(
                            ErrorKind::Kinesis,
                            if e.is_panic() { "the prefetch task panicked" } else { "the prefetch task was cancelled" },
                        ))),
                    };
                }
                match idle.as_mut() {
                    Some(parts) => {
                        let (polling, ahead_cx) = &mut **parts;
                        polling.next(ahead_cx, None).await
                    }
                    None => Ok(None), // not reached: the source is either idle or running
                }
            }
        }
    }

    /// Starts fetching the next batch in a task of its own (prefetch on, no fetch running); else nothing.
    pub(crate) async fn start_ahead(&mut self) {
        if let Self::Ahead { idle, running } = self {
            if let Some(parts) = idle.take() {
                let (mut polling, mut cx) = *parts;
                *running = Some(tokio::spawn(async move {
                    let fetched = polling.next(&mut cx, None).await;
                    (polling, cx, fetched)
                }));
                // Tokio runs a task spawned from a worker in that worker's next-task slot, which no other worker takes:
                // without a yield, a handler that keeps this thread busy would hold the fetch back until the batch is
                // done. Yielding lets it start (send its call) now; what wakes it later (the call's IO, a timer) comes
                // through the runtime's driver and may run it on any worker.
                tokio::task::yield_now().await;
            }
        }
    }
}

impl Drop for Fetch {
    fn drop(&mut self) {
        if let Self::Ahead { running: Some(task), .. } = self {
            task.abort();
        }
    }
}
