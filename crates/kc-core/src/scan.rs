//! The single consumer's scan of a whole stream: the supervisor that lists the shards, starts a task per shard whose
//! parents are finished, re-lists on the discovery interval and as soon as shards end (unless their children are
//! known: reported by GetRecords or in the last listing), stops every task on the first error, and flushes the store.
//! At most one relist is in flight, beside the supervision of the tasks; requests made meanwhile are folded into one
//! more relist after it (issue 13: shards ending together make a few listings, not one each).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{warn, Instrument};

use crate::deliver::Deliver;
use crate::discovery::{self, Listing, Shards};
use crate::error::{Error, ErrorKind};
use crate::reader::{ShardReader, Shared};
use crate::shard::ShardExit;

type ShardResult = (String, Result<ShardExit, Error>);

/// A listing in flight.
type Relist = Pin<Box<dyn Future<Output = Result<Listing, Error>> + Send>>;

/// Reads every shard of the stream with `deliver` until `stop` is cancelled or an error (see
/// [`Consumer::scan`](crate::Consumer::scan)).
pub(crate) async fn run<D: Deliver>(shared: Shared, deliver: Arc<D>, stop: CancellationToken) -> Result<(), Error> {
    let span = tracing::info_span!("scan", stream = %shared.cfg.stream, app = %shared.cfg.app);
    async move {
        let Some(shared) = shared.prepare(&stop, None).await? else {
            return Ok(()); // cancelled while waiting for the fan-out consumer
        };
        let mut supervisor =
            Supervisor { shared: &shared, deliver, stop: &stop, tasks: JoinSet::new(), shards: Shards::default() };
        let result = supervisor.run().await;
        stop.cancel();
        let mut first_error = result.err();
        while let Some(joined) = supervisor.tasks.join_next().await {
            if let Err(e) = flatten(joined) {
                if first_error.is_none() {
                    first_error = Some(e);
                } else {
                    warn!(error = %e, "another shard failed while stopping");
                }
            }
        }
        let flushed = shared.flush().await;
        let deregistered = shared.deregister().await;
        match first_error {
            Some(e) => {
                if let Err(flush_error) = flushed {
                    warn!(error = %flush_error, "flushing checkpoints after an error failed");
                }
                if let Err(deregister_error) = deregistered {
                    warn!(error = %deregister_error, "deregistering the fan-out consumer after an error failed");
                }
                Err(e)
            }
            None => flushed.and(deregistered),
        }
    }
    .instrument(span)
    .await
}

struct Supervisor<'a, D> {
    shared: &'a Shared,
    deliver: Arc<D>,
    /// Cancelled by the user's token, or by us on the first error.
    stop: &'a CancellationToken,
    tasks: JoinSet<ShardResult>,
    shards: Shards,
}

impl<D: Deliver> Supervisor<'_, D> {
    /// Discovery and supervision until cancelled or an error.
    async fn run(&mut self) -> Result<(), Error> {
        match discovery::list(&*self.shared.api, &self.shared.cfg, self.stop, true).await? {
            Listing::Shards(listing) => self.shards.update(listing),
            Listing::Unavailable | Listing::Cancelled => return Ok(()),
        }
        self.spawn_ready();
        let mut discovery = discovery::ticker(self.shared.cfg.discovery_interval);
        // The relist in flight, if any, and whether another one was asked for since it started.
        let mut relisting: Option<Relist> = None;
        let mut wanted = false;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = discovery.tick() => wanted = true,
                Some(joined) = self.tasks.join_next() => {
                    let mut relist = self.exited(joined)?;
                    while let Some(joined) = self.tasks.try_join_next() {
                        relist |= self.exited(joined)?;
                    }
                    // Find the children now rather than at the next discovery tick, unless they are known.
                    wanted |= relist;
                }
                listed = async {
                    match relisting.as_mut() {
                        Some(listing) => listing.await,
                        None => std::future::pending().await,
                    }
                }, if relisting.is_some() => {
                    relisting = None;
                    match listed? {
                        Listing::Shards(listing) => self.shards.update(listing),
                        Listing::Unavailable => {}
                        Listing::Cancelled => return Ok(()),
                    }
                }
            }
            if wanted && relisting.is_none() {
                wanted = false;
                relisting = Some(self.relist());
            }
            self.spawn_ready();
        }
    }

    /// A listing of the shards (after the first), run beside the supervision.
    fn relist(&self) -> Relist {
        let (api, cfg, stop) = (Arc::clone(&self.shared.api), Arc::clone(&self.shared.cfg), self.stop.clone());
        Box::pin(async move { discovery::list(&*api, &cfg, &stop, false).await })
    }

    /// A shard task ended: whether the shard ended and a listing is needed to find its children, or its error.
    fn exited(&mut self, joined: Result<ShardResult, JoinError>) -> Result<bool, Error> {
        let (shard_id, exit) = match joined {
            Ok((shard_id, Ok(exit))) => (shard_id, exit),
            other => return flatten(other).map(|()| false),
        };
        self.shards.exited(&shard_id, &exit);
        match exit {
            // Kinesalite reports no ChildShards, nor does a shard found ended in the store or gone from the stream:
            // list the shards, unless the known ones already name it as a parent (Kinesis creates a split's two
            // children at once, so one known child means all are).
            ShardExit::Ended { children } if children.is_empty() => Ok(!self.shards.children_known(&shard_id)),
            ShardExit::Ended { children } => {
                self.shards.add_children(children);
                Ok(false)
            }
            ShardExit::Skipped | ShardExit::Stopped => Ok(false),
        }
    }

    fn spawn_ready(&mut self) {
        // Stopping: a shard whose task returned because of the stop looks ready again; it is not started again.
        if self.stop.is_cancelled() {
            return;
        }
        for (shard_id, hint) in self.shards.take_ready() {
            let (shared, deliver, stop) = (self.shared.clone(), Arc::clone(&self.deliver), self.stop.clone());
            self.tasks.spawn(async move {
                let result = ShardReader::new(&shared, &*deliver, &stop, &shard_id).run(hint).await;
                (shard_id, result)
            });
        }
    }
}

/// A shard task's result, with a panic turned into an error.
fn flatten(joined: Result<ShardResult, JoinError>) -> Result<(), Error> {
    match joined {
        Ok((_, Ok(_))) => Ok(()),
        Ok((_, Err(e))) => Err(e),
        Err(e) if e.is_panic() => Err(Error::new(ErrorKind::Handler, "a shard task panicked (in the handler?)")),
        Err(_) => Ok(()),
    }
}
