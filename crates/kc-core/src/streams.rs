//! The Stream API: [`Consumer::into_shards`] hands each shard to the caller as a [`ShardStream`] of [`AckBatch`]es, in
//! the shape of rdkafka's `split_partition_queue` and async-nats' `messages()` + `ack()`, beside the handler API of
//! [`scan`](Consumer::scan) and [`scan_batches`](Consumer::scan_batches).
//!
//! ```no_run
//! # async fn run(consumer: kc_core::Consumer) -> Result<(), kc_core::Error> {
//! use futures_util::StreamExt;
//!
//! let mut shards = consumer.into_shards();
//! while let Some(mut shard) = shards.next().await {
//!     tokio::spawn(async move {
//!         while let Some(batch) = shard.next().await {
//!             for record in batch.records() {
//!                 // ... handle the record ...
//!                 # let _ = record;
//!             }
//!             batch.ack(); // checkpointed after this, never before
//!         }
//!         // The stream ended: the shard ended (its children come as streams of their own), the scan stopped, or
//!         // (in a group) its lease went to another worker.
//!     });
//! }
//! shards.join().await // the scan's result
//! # }
//! ```
//!
//! # When to use which
//! - [`scan`](Consumer::scan) / [`scan_batches`](Consumer::scan_batches): the consumer calls your handler; the failure
//!   policy, handler timeouts and per-key parallelism ([`max_in_flight_per_shard`](crate::ConsumerBuilder::max_in_flight_per_shard))
//!   apply. The simplest way, and the one to start with.
//! - [`into_shards`](Consumer::into_shards): you pull batches, shard by shard, and ack them: for code that is already
//!   written as stream pipelines (`StreamExt` combinators, `select!` over several sources), that needs a shard's
//!   batches in a task of its own, or that decides itself when a batch is done. The failure policy, handler timeouts
//!   and `max_in_flight_per_shard` do not apply (you hold the batch; what you do on an error is yours to decide).
//!
//! # Guarantees (the same as `scan_batches`)
//! - A batch is checkpointed when it is acked ([`AckBatch::ack`]), never before; a shard's next batch is handed out
//!   only after the previous one was acked (with [`prefetch`](crate::ConsumerBuilder::prefetch) it is already fetched
//!   meanwhile), so a shard buffers at most two batches (the one in your hands and the one fetched ahead).
//! - A batch dropped without an ack is a failure, like a handler error under the default policy: the scan stops with
//!   an [`ErrorKind::Handler`] error (from [`Shards::join`]) and nothing is checkpointed past
//!   the last acked batch; so is a [`ShardStream`] dropped while its shard is read. Nothing is lost either way.
//! - Parents before children: a child shard's stream comes after its parents' streams ended.
//! - Stop ([`Shards::shutdown_token`], the builder's shutdown token, or dropping [`Shards`]): a batch in your hands is
//!   waited for (ack it, or drop it: then it is not checkpointed), then every stream ends and the final checkpoints
//!   are flushed; [`Shards::join`] returns.
//! - Groups: a shard's stream ends when its lease is lost or released, and a new one comes when a lease is taken.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::consumer::Consumer;
use crate::deliver::{Deliver, Delivered, Progress};
use crate::error::{Error, ErrorKind};
use crate::handler::{Batch, Outcome};
use crate::record::{Origin, Record};
use crate::shard::ShardCx;

/// Every shard of a scan started by [`Consumer::into_shards`], as it starts: a [`Stream`] of [`ShardStream`]s. It ends
/// when the scan ends; [`join`](Self::join) then gives the scan's result. Dropping it stops the scan.
#[derive(Debug)]
pub struct Shards {
    started: mpsc::UnboundedReceiver<ShardStream>,
    scan: Option<JoinHandle<Result<(), Error>>>,
    shutdown: CancellationToken,
}

impl Shards {
    /// The token that stops the scan (the consumer's shutdown token).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits for the scan to end and returns its result: `Ok(())` after a stop, or the error that stopped it. Shards
    /// that start meanwhile are not handed out any more: their readers see the stream dropped and stop (use it after a
    /// stop, or once the stream of shards ended).
    pub async fn join(mut self) -> Result<(), Error> {
        self.started.close();
        while self.started.recv().await.is_some() {}
        let Some(scan) = self.scan.take() else { return Ok(()) };
        match scan.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => Err(Error::new(ErrorKind::Handler, "the scan task panicked")),
            Err(_) => Err(Error::new(ErrorKind::Handler, "the scan task was cancelled")),
        }
    }
}

impl Stream for Shards {
    type Item = ShardStream;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ShardStream>> {
        self.started.poll_recv(cx)
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        if self.scan.is_some() {
            self.shutdown.cancel();
        }
    }
}

/// One shard's batches, in order, as a [`Stream`] of [`AckBatch`]es. It ends when the shard ends, the scan stops, or (in
/// a group) the lease is lost or released.
#[derive(Debug)]
pub struct ShardStream {
    origin: Arc<Origin>,
    batches: mpsc::Receiver<AckBatch>,
}

impl ShardStream {
    /// The shard's id.
    pub fn shard_id(&self) -> &str {
        self.origin.shard_id()
    }

    /// The shard's stream, as the consumer was given it (name or ARN; see [`Record::stream`]).
    pub fn stream(&self) -> &str {
        self.origin.stream()
    }

    /// The ARN of the shard's stream (see [`Record::stream_arn`]).
    pub fn stream_arn(&self) -> &str {
        self.origin.stream_arn()
    }
}

impl Stream for ShardStream {
    type Item = AckBatch;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<AckBatch>> {
        self.batches.poll_recv(cx)
    }
}

/// A batch of one shard's records (never empty, in order), to [`ack`](Self::ack) when it is handled. It dereferences to
/// its [`Batch`] (`records()`, `shard_id()`, `millis_behind_latest()`).
#[derive(Debug)]
pub struct AckBatch {
    batch: Batch,
    ack: oneshot::Sender<Outcome>,
}

impl AckBatch {
    /// The batch is handled: it is checkpointed (after its last record) and the shard's next batch comes.
    pub fn ack(self) {
        self.ack_with(Outcome::Checkpoint);
    }

    /// The batch is handled, with `outcome`: [`Outcome::SkipCheckpoint`] moves on without a checkpoint (the batch
    /// is delivered again after a restart unless a later batch is checkpointed).
    pub fn ack_with(self, outcome: Outcome) {
        // The reader stopped waiting only if it stopped: the ack has nothing left to do then.
        let _ = self.ack.send(outcome);
    }
}

impl std::ops::Deref for AckBatch {
    type Target = Batch;

    fn deref(&self) -> &Batch {
        &self.batch
    }
}

impl Consumer {
    /// Starts the scan (in a task of its own) and hands out each shard as it starts: see [the module docs](crate::streams)
    /// for the guarantees and when to use this rather than [`scan`](Self::scan). Must be called within a Tokio runtime.
    pub fn into_shards(self) -> Shards {
        let (tx, started) = mpsc::unbounded_channel();
        let shutdown = self.shutdown.clone();
        let deliver = Arc::new(Channels { started: tx, open: Mutex::default() });
        let scan = tokio::spawn(async move { self.scan_with(deliver).await });
        Shards { started, scan: Some(scan), shutdown }
    }
}

/// Delivery to the caller's streams: each shard's batches through a channel of one, each waited for its ack.
struct Channels {
    started: mpsc::UnboundedSender<ShardStream>,
    /// The sending side of every shard stream handed out and not ended, by shard reader (a shard read again, a
    /// lease taken back, has a reader and a stream of its own).
    open: Mutex<HashMap<u64, mpsc::Sender<AckBatch>>>,
}

impl Channels {
    fn open(&self) -> MutexGuard<'_, HashMap<u64, mpsc::Sender<AckBatch>>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn dropped(what: &str, shard: &ShardCx<'_>) -> Error {
    Error::new(ErrorKind::Handler, format!("{what} of shard {} was dropped while the shard was read", shard.id))
}

impl Deliver for Channels {
    fn shard_started(&self, reader: u64, origin: &Arc<Origin>) {
        let (tx, batches) = mpsc::channel(1);
        self.open().insert(reader, tx);
        // Nobody takes streams any more (`Shards` dropped or joined): the first batch finds the stream dropped.
        let _ = self.started.send(ShardStream { origin: Arc::clone(origin), batches });
    }

    fn shard_ended(&self, reader: u64) {
        self.open().remove(&reader);
    }

    async fn deliver(
        &self,
        shard: &ShardCx<'_>,
        records: Vec<Record>,
        millis_behind_latest: Option<i64>,
        progress: &mut Progress,
    ) -> Result<Delivered, Error> {
        let Some(position) = records.last().map(Record::checkpoint) else {
            return Ok(Delivered::All);
        };
        let Some(tx) = self.open().get(&shard.reader).cloned() else {
            return Err(dropped("the stream", shard)); // not reached: the reader's stream is open while it reads
        };
        let (ack, acked) = oneshot::channel();
        let batch = AckBatch { batch: Batch { shard_id: Arc::clone(shard.id), records, millis_behind_latest }, ack };
        tokio::select! {
            biased;
            sent = tx.send(batch) => match sent {
                Ok(()) => {}
                // Streams dropped after a stop are the caller's way of stopping.
                Err(_) if shard.cancel.is_cancelled() => return Ok(Delivered::Cancelled),
                Err(_) => return Err(dropped("the stream", shard)),
            },
            // Not taken yet: nothing was handed out, nothing to wait for.
            _ = shard.cancel.cancelled() => return Ok(Delivered::Cancelled),
        }
        // In the caller's hands: waited for, also through a stop (the batch in hand is finished).
        match acked.await {
            Ok(outcome) => {
                progress.handled(position, outcome);
                Ok(Delivered::All)
            }
            Err(_) if shard.cancel.is_cancelled() => Ok(Delivered::Cancelled),
            Err(_) => Err(dropped("a batch (not acked)", shard)),
        }
    }
}
