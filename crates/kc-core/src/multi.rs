//! A consumer of several streams: one supervisor over one [`scan::run`] per stream, each with its own settings (the
//! stream's name and initial position), shard discovery and child cancellation token, all sharing the consumer's
//! Kinesis API (and so its `max_calls_in_flight`), checkpoint store, lifecycle hooks and deliverer. Streams given up
//! front run until the scan stops; a [`StreamTracker`] is asked on the discovery interval, a stream it adds starts
//! and one it drops is stopped through its token (records in hand finished, checkpoints flushed). The first error of
//! any stream stops all of them, except that a tracked stream found missing (deleted) is only dropped, with a
//! warning, and started again (as a new stream, see [`generation`](crate::generation)) if a later answer still
//! names it and it exists. In a consumer group each stream is read by a group worker ([`crate::group`]) instead of
//! a scan, the streams' take cycles sharing one fair share ([`Tallies`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::task::{JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::config::{Config, GroupConfig};
use crate::deliver::Deliver;
use crate::error::{BoxError, Error, ErrorKind};
use crate::group::tally::Tallies;
use crate::reader::Shared;
use crate::scan;
use crate::tracker::{validate, Streams, TrackedStream};

type StreamResult = (String, Result<(), Error>);

/// A question to the tracker in flight.
type Asking = Pin<Box<dyn Future<Output = Result<Vec<TrackedStream>, BoxError>> + Send>>;

/// Reads every stream of `streams` with `deliver` until `stop` is cancelled or an error. `base` is what every stream
/// shares (its `cfg` the consumer's settings, without a stream).
pub(crate) async fn run<D: Deliver>(
    base: Shared,
    streams: &Streams,
    group: Option<Arc<GroupConfig>>,
    deliver: Arc<D>,
    stop: CancellationToken,
) -> Result<(), Error> {
    let span = tracing::info_span!("streams", app = %base.cfg.app);
    let mut supervisor = Supervisor {
        base,
        group,
        tallies: Arc::default(),
        deliver,
        stop: &stop,
        tasks: JoinSet::new(),
        running: HashMap::new(),
    };
    let result = supervisor.run(streams).instrument(span.clone()).await;
    stop.cancel();
    let mut first_error = result.err();
    let tracked = matches!(streams, Streams::Tracked(_));
    while let Some(joined) = supervisor.tasks.join_next().await {
        if let Err(e) = supervisor.exited(joined, tracked) {
            if first_error.is_none() {
                first_error = Some(e);
            } else {
                span.in_scope(|| warn!(error = %e, "another stream failed while stopping"));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

struct Supervisor<'a, D> {
    base: Shared,
    /// A group's worker: each stream is read by a worker of the group (its leases a scope of the one lease table),
    /// the fair share counting every stream ([`Tallies`]).
    group: Option<Arc<GroupConfig>>,
    tallies: Arc<Tallies>,
    deliver: Arc<D>,
    stop: &'a CancellationToken,
    tasks: JoinSet<StreamResult>,
    /// The streams whose scan runs, and the token that stops each; a stream dropped by the tracker stays here
    /// (its token cancelled) until its scan returned.
    running: HashMap<String, CancellationToken>,
}

impl<D: Deliver> Supervisor<'_, D> {
    async fn run(&mut self, streams: &Streams) -> Result<(), Error> {
        let tracker = match streams {
            Streams::Fixed(fixed) => {
                self.update(fixed.to_vec())?;
                None
            }
            Streams::Tracked(tracker) => Some(Arc::clone(tracker)),
        };
        // The first tick comes at once: the tracker's first answer starts the scan.
        let mut ticker = tokio::time::interval(self.base.cfg.discovery_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The tracker's answer awaited, beside the supervision of the streams (a slow tracker delays no error).
        let mut asking: Option<Asking> = None;
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = ticker.tick(), if tracker.is_some() && asking.is_none() => {
                    if let Some(tracker) = &tracker {
                        let tracker = Arc::clone(tracker);
                        asking = Some(Box::pin(async move { tracker.streams().await }));
                    }
                }
                answer = async {
                    match asking.as_mut() {
                        Some(asking) => asking.await,
                        None => std::future::pending().await,
                    }
                }, if asking.is_some() => {
                    asking = None;
                    match answer {
                        Ok(streams) => self.update(streams)?,
                        Err(e) => warn!(error = %e, "the stream tracker failed; the streams stay as they are"),
                    }
                }
                Some(joined) = self.tasks.join_next() => self.exited(joined, tracker.is_some())?,
            }
        }
    }

    /// Starts the streams of `wanted` not running, stops the running ones not in it.
    fn update(&mut self, wanted: Vec<TrackedStream>) -> Result<(), Error> {
        validate(&wanted)?;
        let names: HashSet<&str> = wanted.iter().map(TrackedStream::name).collect();
        for (name, token) in &self.running {
            if !names.contains(name.as_str()) && !token.is_cancelled() {
                info!(stream = %name, "stream removed: stopping it");
                token.cancel();
            }
        }
        for stream in wanted {
            // One still stopping after it was removed starts again at an answer after it stopped.
            if !self.running.contains_key(&stream.name) {
                self.spawn(stream);
            }
        }
        Ok(())
    }

    fn spawn(&mut self, stream: TrackedStream) {
        let mut cfg = Config::clone(&self.base.cfg);
        cfg.stream.clone_from(&stream.name);
        if let Some(position) = stream.initial_position {
            cfg.initial_position = position;
        }
        let shared = Shared {
            cfg: Arc::new(cfg),
            stream_key: Arc::from(stream.name.as_str()),
            closed_shards: Arc::default(),
            ..self.base.clone()
        };
        let token = self.stop.child_token();
        self.running.insert(stream.name.clone(), token.clone());
        let deliver = Arc::clone(&self.deliver);
        info!(stream = %stream.name, "stream added");
        match &self.group {
            Some(group) => {
                let (group, tallies) = (Arc::clone(group), Arc::clone(&self.tallies));
                self.tasks.spawn(async move {
                    let result = crate::group::run(shared, &group, deliver, token, tallies).await;
                    (stream.name, result)
                });
            }
            None => {
                self.tasks.spawn(async move { (stream.name, scan::run(shared, deliver, token).await) });
            }
        }
    }

    /// A stream's scan returned: stopped (removed, or the whole scan stops), or failed (a panic is an error; a
    /// tracked stream found deleted is only dropped).
    fn exited(&mut self, joined: Result<StreamResult, JoinError>, tracked: bool) -> Result<(), Error> {
        match joined {
            Ok((name, result)) => {
                self.running.remove(&name);
                match result {
                    Ok(()) => Ok(()),
                    Err(e) if tracked && e.kind() == ErrorKind::StreamNotFound => {
                        warn!(stream = %name, error = %e, "a tracked stream is gone; dropped until the tracker names it again and it exists");
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) if e.is_panic() => Err(Error::new(ErrorKind::Handler, "a stream task panicked")),
            Err(_) => Ok(()),
        }
    }
}
