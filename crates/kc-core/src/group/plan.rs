//! The decisions of a take cycle, as pure functions of what the lease table holds: which leases are expired,
//! which to take, which to ask for (balancing), which parents to delete, which leases to create.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use kc_checkpoint::lease::Lease;
use tokio::time::{Duration, Instant};

use crate::api::ShardInfo;

/// When this worker last saw each lease's counter change, on its own monotonic clock (the KCL's expiry rule: a lease
/// is expired when its counter stayed the same for the lease duration).
#[derive(Debug, Default)]
pub(crate) struct Expiry {
    seen: HashMap<String, (u64, Instant)>,
}

impl Expiry {
    /// Records the counters of a listing of every lease.
    pub(crate) fn observe(&mut self, leases: &[Lease], now: Instant) {
        let present: HashSet<&str> = leases.iter().map(|l| l.shard_id.as_str()).collect();
        self.seen.retain(|id, _| present.contains(id.as_str()));
        for l in leases {
            match self.seen.get_mut(&l.shard_id) {
                Some((counter, _)) if *counter == l.counter => {}
                Some(entry) => *entry = (l.counter, now),
                None => {
                    self.seen.insert(l.shard_id.clone(), (l.counter, now));
                }
            }
        }
    }

    /// When `lease` expires if its counter stays as seen; `None` when this worker has not seen that counter.
    pub(crate) fn deadline(&self, lease: &Lease, duration: Duration) -> Option<Instant> {
        match self.seen.get(&lease.shard_id) {
            Some((counter, since)) if *counter == lease.counter => Some(*since + duration),
            _ => None,
        }
    }

    /// Whether `lease`'s counter was seen unchanged for `duration`.
    pub(crate) fn expired(&self, lease: &Lease, now: Instant, duration: Duration) -> bool {
        match self.seen.get(&lease.shard_id) {
            Some((counter, since)) if *counter == lease.counter => now.saturating_duration_since(*since) >= duration,
            _ => false,
        }
    }
}

/// What this worker knows of itself for a cycle.
pub(crate) struct Me<'a> {
    pub(crate) id: &'a str,
    /// The leases this worker holds.
    pub(crate) held: &'a HashSet<String>,
    /// Shards read to their end here without being marked finished (last records skipped): not taken again.
    pub(crate) ended_here: &'a HashSet<String>,
    pub(crate) max_leases: Option<usize>,
    /// Workers whose leases' deadlines schedule the next cycle ([`Plan::next_expiry`]): the ones suspected of having
    /// failed (their sentinel lease was not renewed lately).
    pub(crate) watched: &'a HashSet<String>,
    /// What this worker last saw of the group's other streams (a group over several streams): their leases count in
    /// the fair share. Empty with one stream.
    pub(crate) elsewhere: &'a Tally,
}

/// What a take cycle saw of one stream's leases, for the fair share of a group over several streams: each stream's
/// cycle counts the leases of every stream this worker reads (see [`Tallies`](super::tally::Tallies)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Leases readable now (not finished, parents finished).
    pub(crate) readable: usize,
    /// The leases this worker holds or has on their way to it, with the cycle's takes and requests.
    pub(crate) mine: usize,
    /// Free leases this worker's cycle left untaken (it was at its target).
    pub(crate) free: usize,
    /// The leases of each other live worker (a lease asked for counts as its requester's), less the ones this
    /// worker asked for in the cycle.
    pub(crate) others: BTreeMap<String, usize>,
    /// Live workers seen: owners of unexpired leases and requesters.
    pub(crate) workers: BTreeSet<String>,
    /// Workers seen failed: owners of expired leases only. Newer than another stream's tally, this takes them out
    /// of it (its cycle saw them alive before they failed).
    pub(crate) gone: BTreeSet<String>,
    /// When the cycle saw this (`None`: never).
    pub(crate) at: Option<Instant>,
}

impl Tally {
    /// Adds `other`'s figures to these.
    pub(crate) fn add(&mut self, other: &Tally) {
        self.readable += other.readable;
        self.mine += other.mine;
        self.free += other.free;
        for (w, n) in &other.others {
            *self.others.entry(w.clone()).or_default() += n;
        }
        self.workers.extend(other.workers.iter().cloned());
        self.gone.extend(other.gone.iter().cloned());
    }

    /// Takes `worker` out (seen failed since): its leases count as free.
    pub(crate) fn forget(&mut self, worker: &str) {
        self.workers.remove(worker);
        self.free += self.others.remove(worker).unwrap_or(0);
    }
}

/// The outcome of a cycle's decisions.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Leases to take: shard id and the counter the take is conditional on.
    pub(crate) take: Vec<(String, u64)>,
    /// Leases to ask their owners for (graceful handoff), with their counters.
    pub(crate) request: Vec<(String, u64)>,
    /// Leases this worker asked for that their owners have not released yet.
    pub(crate) request_pending: bool,
    /// Leases this worker holds that another worker asked for (the owner side of a handoff): their renewal is due
    /// now, so that the handoff starts at once rather than at the next renew interval.
    pub(crate) asked_of_me: Vec<String>,
    /// Finished parents whose children have all started.
    pub(crate) delete: Vec<String>,
    /// Live workers: owners of unexpired leases, requesters, and this worker.
    pub(crate) workers: usize,
    /// The number of leases each worker aims at.
    pub(crate) target: usize,
    /// When the first lease of a watched worker ([`Me::watched`]) expires if it is not renewed meanwhile: a cycle then
    /// takes it (failover about one lease duration after the suspicion). Leases of workers not suspected schedule
    /// nothing: their sentinels are watched instead.
    pub(crate) next_expiry: Option<Instant>,
    /// This stream's figures after the cycle, for the other streams' cycles.
    pub(crate) tally: Tally,
}

/// Decides what to take, ask for and delete. `leases` is the whole table's scope (one stream's leases); with several
/// streams, the target, this worker's count and the others' counts include [`Me::elsewhere`], and leases are asked for
/// only when no stream has free ones left.
///
/// Balancing counts a lease on its way (asked for by a live worker, or released for it) as the requester's, not the
/// owner's, so that requests made in one cycle are not made again in the next, and a worker below the target asks
/// for everything it lacks in one cycle (from the workers above the target, each down to the target at most).
pub(crate) fn plan(leases: &[Lease], expiry: &Expiry, now: Instant, duration: Duration, me: &Me<'_>) -> Plan {
    let finished: HashSet<&str> = leases.iter().filter(|l| l.is_finished()).map(|l| l.shard_id.as_str()).collect();
    let present: HashSet<&str> = leases.iter().map(|l| l.shard_id.as_str()).collect();
    // Readable now: not finished, and every parent finished or gone (deleted after its children started, or never
    // had a lease because it is past the stream's retention).
    let readable: Vec<&Lease> = leases
        .iter()
        .filter(|l| !l.is_finished())
        .filter(|l| l.parents.iter().all(|p| finished.contains(p.as_str()) || !present.contains(p.as_str())))
        .collect();
    let expired = |l: &Lease| expiry.expired(l, now, duration);

    let mut here: BTreeSet<&str> = BTreeSet::new();
    for l in leases.iter().filter(|l| !expired(l)) {
        here.extend(l.next_owner.as_deref());
        here.extend(l.owner.as_deref());
    }
    here.remove(me.id);
    // Owners whose every lease here expired: failed, whatever the other streams' older tallies say.
    let gone: BTreeSet<&str> = leases
        .iter()
        .filter(|l| expired(l))
        .filter_map(|l| l.owner.as_deref())
        .filter(|o| *o != me.id && !here.contains(o))
        .collect();
    let mut elsewhere = me.elsewhere.clone();
    for w in &gone {
        elsewhere.forget(w);
    }
    let elsewhere = &elsewhere;
    let mut workers: HashSet<&str> = HashSet::from([me.id]);
    workers.extend(here.iter().copied());
    workers.extend(elsewhere.workers.iter().map(String::as_str).filter(|w| *w != me.id));
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut incoming = 0usize;
    let mut outgoing = 0usize;
    let mut asked_of_me = Vec::new();
    for l in &readable {
        // Who an unexpired lease is for: its requester when one asked for it, else its owner.
        let bound_for = if expired(l) { None } else { l.next_owner.as_deref().or(l.owner.as_deref()) };
        match bound_for {
            Some(w) if w == me.id => incoming += usize::from(!me.held.contains(&l.shard_id)),
            Some(w) => {
                *counts.entry(w).or_default() += 1;
                if me.held.contains(&l.shard_id) {
                    outgoing += 1;
                    asked_of_me.push(l.shard_id.clone());
                }
            }
            None => {}
        }
    }
    // This stream's counts, then every stream's (the fair share counts all of them).
    let counts_here: BTreeMap<&str, usize> = counts.clone();
    for (w, n) in &elsewhere.others {
        if w != me.id {
            *counts.entry(w.as_str()).or_default() += n;
        }
    }
    let mut target = (readable.len() + elsewhere.readable).div_ceil(workers.len());
    if let Some(max) = me.max_leases {
        target = target.min(max);
    }
    // Held, less what is being handed over, plus what is on its way here (asked for, or released for this worker).
    let mine_here = (me.held.len() + incoming).saturating_sub(outgoing);
    let mut mine = mine_here + elsewhere.mine;

    // Free leases: asked for by this worker and released (taken whatever the target: they are counted in `mine`),
    // then unowned and expired ones up to the target.
    let mut reserved = Vec::new();
    let mut unowned = Vec::new();
    let mut expired_leases = Vec::new();
    for l in &readable {
        if me.held.contains(&l.shard_id) || me.ended_here.contains(&l.shard_id) {
            continue;
        }
        let entry = (l.shard_id.clone(), l.counter);
        match (&l.owner, &l.next_owner) {
            (None, Some(n)) if n == me.id => reserved.push(entry),
            // Owned by this worker's id but not held: a take whose response was lost, or a restart with the same
            // id. Ours to take back at once (worker ids are unique among live workers).
            (Some(o), _) if o == me.id => reserved.push(entry),
            // Released for another worker's request: left to it unless it did not come for a lease duration.
            (None, Some(_)) if !expired(l) => {}
            (None, _) => unowned.push(entry),
            (Some(_), _) if expired(l) => expired_leases.push(entry),
            (Some(_), _) => {}
        }
    }
    // Workers that run the same cycle at the same time try different leases first.
    fastrand::shuffle(&mut unowned);
    fastrand::shuffle(&mut expired_leases);
    let mut free = unowned.into_iter().chain(expired_leases).peekable();
    let mut take = reserved;
    while mine < target {
        let Some(entry) = free.next() else { break };
        take.push(entry);
        mine += 1;
    }
    let left_free = free.count();
    // Free leases of another stream are taken by that stream's cycle: nothing is asked for meanwhile.
    let has_free = left_free > 0 || elsewhere.free > 0;

    let request_pending = readable.iter().any(|l| {
        l.next_owner.as_deref() == Some(me.id) && l.owner.as_deref().is_some_and(|o| o != me.id) && !expired(l)
    });
    let mut request = Vec::new();
    let mut counts_here = counts_here;
    if !has_free {
        // Candidates per worker: its unexpired leases that nobody asked for yet, in random order (workers asking at
        // the same time ask for different leases).
        let mut askable: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
        for l in &readable {
            if let (Some(owner), None) = (l.owner.as_deref(), &l.next_owner) {
                if owner != me.id && !expired(l) {
                    askable.entry(owner).or_default().push(l);
                }
            }
        }
        for candidates in askable.values_mut() {
            fastrand::shuffle(candidates);
        }
        while mine < target {
            // The most loaded live worker, if taking one of its leases leaves it at or above the target; or, when
            // this worker needs more than one lease, a worker at the target that holds at least two more than this
            // one (so that no worker stays idle: 4 leases on 3 workers end 2/1/1, not 2/2/0). Either way the move
            // narrows the gap, so it cannot swing back.
            let needs_several = target - mine > 1;
            let victim = counts
                .iter()
                .filter(|(w, _)| askable.get(*w).is_some_and(|c| !c.is_empty()))
                .filter(|(_, n)| **n > target || (needs_several && **n >= target && **n >= mine + 2))
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(w, _)| *w);
            let Some(victim) = victim else { break };
            let Some(lease) = askable.get_mut(victim).and_then(Vec::pop) else { break };
            request.push((lease.shard_id.clone(), lease.counter));
            if let Some(n) = counts.get_mut(victim) {
                *n -= 1;
            }
            if let Some(n) = counts_here.get_mut(victim) {
                *n = n.saturating_sub(1);
            }
            mine += 1;
        }
    }

    let delete = leases
        .iter()
        .filter(|p| p.is_finished())
        .filter(|p| {
            let mut children = leases.iter().filter(|c| c.parents.contains(&p.shard_id)).peekable();
            children.peek().is_some() && children.all(|c| c.checkpoint.is_some() || c.owner.is_some())
        })
        .map(|p| p.shard_id.clone())
        .collect();

    let next_expiry = readable
        .iter()
        .filter(|l| l.owner.as_deref().is_some_and(|o| o != me.id && me.watched.contains(o)) && !expired(l))
        .filter_map(|l| expiry.deadline(l, duration))
        .min();

    let tally = Tally {
        readable: readable.len(),
        mine: mine - elsewhere.mine,
        free: left_free,
        others: counts_here.into_iter().map(|(w, n)| (w.to_owned(), n)).collect(),
        workers: here.into_iter().map(str::to_owned).collect(),
        gone: gone.into_iter().map(str::to_owned).collect(),
        at: Some(now),
    };
    Plan { take, request, request_pending, asked_of_me, delete, workers: workers.len(), target, next_expiry, tally }
}

/// The shards of `listing` that need a lease, parents before children: those with no lease, except shards with a
/// descendant that has one (a finished parent whose lease was deleted after its children started).
pub(crate) fn to_create<'a>(listing: &'a [ShardInfo], leases: &[Lease]) -> Vec<&'a ShardInfo> {
    let by_id: HashMap<&str, &ShardInfo> = listing.iter().map(|s| (s.shard_id.as_str(), s)).collect();
    let with_lease: HashSet<&str> = leases.iter().map(|l| l.shard_id.as_str()).collect();
    let mut covered: HashSet<&str> = HashSet::new();
    let mut stack: Vec<&str> = leases.iter().flat_map(|l| l.parents.iter().map(String::as_str)).collect();
    while let Some(id) = stack.pop() {
        if covered.insert(id) {
            if let Some(s) = by_id.get(id) {
                stack.extend(s.parents());
            }
        }
    }
    let depth = |s: &ShardInfo| {
        let mut d = 0usize;
        let mut frontier: Vec<&str> = s.parents().collect();
        while !frontier.is_empty() && d < listing.len() {
            d += 1;
            frontier = frontier.iter().filter_map(|p| by_id.get(p)).flat_map(|p| p.parents()).collect();
        }
        d
    };
    let mut out: Vec<&ShardInfo> = listing
        .iter()
        .filter(|s| !with_lease.contains(s.shard_id.as_str()) && !covered.contains(s.shard_id.as_str()))
        .collect();
    out.sort_by_cached_key(|s| (depth(s), s.shard_id.clone()));
    out
}

/// `to_create` (parents before children) cut into rounds in which no shard is a parent of another: the leases of a
/// round can be created in any order and at once, when those of the rounds before it exist.
pub(crate) fn creation_rounds<'a>(to_create: &[&'a ShardInfo]) -> Vec<Vec<&'a ShardInfo>> {
    let mut rounds: Vec<Vec<&ShardInfo>> = Vec::new();
    let mut in_round: HashSet<&str> = HashSet::new();
    for &shard in to_create {
        if rounds.is_empty() || shard.parents().any(|p| in_round.contains(p)) {
            rounds.push(Vec::new());
            in_round.clear();
        }
        in_round.insert(shard.shard_id.as_str());
        if let Some(round) = rounds.last_mut() {
            round.push(shard);
        }
    }
    rounds
}

#[cfg(test)]
mod tests {
    use super::*;
    use kc_checkpoint::{Checkpoint, SequenceNumber};

    const D: Duration = Duration::from_secs(10);

    fn lease(id: &str, owner: Option<&str>, counter: u64) -> Lease {
        Lease::new(id, owner.map(str::to_owned), counter, None, Vec::new())
    }

    fn ids(v: &[(String, u64)]) -> Vec<&str> {
        let mut out: Vec<&str> = v.iter().map(|(id, _)| id.as_str()).collect();
        out.sort_unstable();
        out
    }

    /// `plan` for worker `me`, which watches every other owner's deadlines.
    fn run(leases: &[Lease], expiry: &Expiry, now: Instant, me: &str, held: &[&str]) -> Plan {
        let held: HashSet<String> = held.iter().map(|s| (*s).to_owned()).collect();
        let none = HashSet::new();
        let all: HashSet<String> = leases.iter().filter_map(|l| l.owner.clone()).collect();
        plan(
            leases,
            expiry,
            now,
            D,
            &Me {
                id: me,
                held: &held,
                ended_here: &none,
                max_leases: None,
                watched: &all,
                elsewhere: &Tally::default(),
            },
        )
    }

    #[test]
    fn expiry_is_judged_on_this_workers_clock() {
        let t0 = Instant::now();
        let mut e = Expiry::default();
        let l = lease("a", Some("w1"), 3);
        e.observe(std::slice::from_ref(&l), t0);
        assert!(!e.expired(&l, t0 + D - Duration::from_millis(1), D), "first seen: not expired yet");
        assert!(e.expired(&l, t0 + D, D));
        let renewed = lease("a", Some("w1"), 4);
        e.observe(std::slice::from_ref(&renewed), t0 + D);
        assert!(!e.expired(&renewed, t0 + D + D / 2, D), "a new counter restarts the clock");
        assert!(!e.expired(&l, t0 + D * 5, D), "a counter other than the one seen is not judged");
    }

    #[test]
    fn takes_free_leases_up_to_the_target_and_no_finished_ones() {
        let t0 = Instant::now();
        let mut leases: Vec<Lease> = (0..8).map(|i| lease(&format!("s{i}"), None, 0)).collect();
        leases[7].checkpoint = Some(Checkpoint::ShardEnd);
        let mut e = Expiry::default();
        e.observe(&leases, t0);
        let p = run(&leases, &e, t0, "w1", &[]);
        assert_eq!((p.workers, p.target, p.take.len()), (1, 7, 7), "alone: every unfinished lease");
        assert!(!ids(&p.take).contains(&"s7"));

        // Two others own three each: 7 readable / 3 workers = 3.
        for (i, l) in leases.iter_mut().enumerate().take(6) {
            l.owner = Some(if i < 3 { "w2" } else { "w3" }.to_owned());
        }
        e.observe(&leases, t0);
        let p = run(&leases, &e, t0, "w1", &[]);
        assert_eq!((p.workers, p.target), (3, 3));
        assert_eq!(ids(&p.take), ["s6"], "the only free one");
        // Taking the free one leaves w1 at 1 against 3 and 3: in the same cycle it asks one of them for one more
        // (3/2/2, balanced to +/-1), not two (the one asked would drop below w1).
        assert_eq!(p.request.len(), 1, "{:?}", p.request);
        assert!(ids(&p.request)[0] < "s6");
    }

    #[test]
    fn expired_leases_are_taken_and_their_owner_is_not_a_live_worker() {
        let t0 = Instant::now();
        let leases: Vec<Lease> =
            (0..4).map(|i| lease(&format!("s{i}"), Some(if i < 2 { "w2" } else { "w3" }), 5)).collect();
        let mut e = Expiry::default();
        e.observe(&leases, t0);
        let p = run(&leases, &e, t0 + D / 2, "w1", &[]);
        assert!(p.take.is_empty());
        let mut renewed = leases.clone();
        renewed[2].counter = 6;
        renewed[3].counter = 6;
        e.observe(&renewed, t0 + D / 2);
        let p = run(&renewed, &e, t0 + D, "w1", &[]);
        assert_eq!(p.workers, 2, "w2 stopped renewing: not live");
        assert_eq!(ids(&p.take), ["s0", "s1"], "its leases are taken, up to the target of 2");
        assert_eq!(p.take.iter().find(|(id, _)| id == "s0").map(|t| t.1), Some(5), "conditional on its counter");
    }

    #[test]
    fn the_next_cycle_comes_when_the_first_lease_of_another_worker_would_expire() {
        let t0 = Instant::now();
        let mut leases = vec![lease("a", Some("w2"), 1), lease("b", Some("w2"), 1), lease("mine", Some("w1"), 1)];
        let mut e = Expiry::default();
        e.observe(&leases, t0);
        leases[1].counter = 2; // b renewed, seen later
        e.observe(&leases, t0 + D / 2);
        let p = run(&leases, &e, t0 + D / 2, "w1", &["mine"]);
        assert_eq!(p.next_expiry, Some(t0 + D), "a, unchanged since t0; not this worker's own lease");
        let p = run(&leases, &e, t0 + D, "w1", &["mine"]);
        assert_eq!(ids(&p.take), ["a"], "taken at that deadline");
        assert_eq!(p.next_expiry, Some(t0 + D / 2 + D), "then b's, if it is not renewed meanwhile");
        let free = [lease("f", None, 0)];
        e.observe(&free, t0);
        assert_eq!(run(&free, &e, t0, "w1", &[]).next_expiry, None, "free leases have no deadline");
        // Only the watched workers' leases schedule a cycle.
        e.observe(&leases, t0 + D / 2);
        let (held, none, watched) = (HashSet::from(["mine".to_owned()]), HashSet::new(), HashSet::new());
        let me = Me {
            id: "w1",
            held: &held,
            ended_here: &none,
            max_leases: None,
            watched: &watched,
            elsewhere: &Tally::default(),
        };
        assert_eq!(plan(&leases, &e, t0 + D / 2, D, &me).next_expiry, None, "w2 not suspected");
    }

    #[test]
    fn balance_asks_for_all_it_lacks_at_once_from_workers_above_the_target() {
        let t0 = Instant::now();
        // w2 holds 5, w3 holds 3: a joining w1 aims at 3; only w2 is above the target, by 2.
        let leases: Vec<Lease> =
            (0..8).map(|i| lease(&format!("s{i}"), Some(if i < 5 { "w2" } else { "w3" }), 1)).collect();
        let mut e = Expiry::default();
        e.observe(&leases, t0);
        let p = run(&leases, &e, t0, "w1", &[]);
        assert_eq!((p.workers, p.target), (3, 3));
        assert_eq!(p.request.len(), 2, "both of w2's extra leases in one cycle, none of w3's: {:?}", p.request);
        for (id, counter) in &p.request {
            assert!(leases.iter().any(|l| l.shard_id == *id && l.owner.as_deref() == Some("w2")), "{id}");
            assert_eq!(*counter, 1);
        }

        // While they are pending, they count as w1's: no other request, and w2 is not asked again.
        let mut asked = leases.clone();
        for (id, _) in &p.request {
            let l = asked.iter_mut().find(|l| l.shard_id == *id).expect("requested lease");
            l.next_owner = Some("w1".to_owned());
            l.counter = 2;
        }
        e.observe(&asked, t0);
        let again = run(&asked, &e, t0, "w1", &[]);
        assert!(again.request_pending);
        assert!(again.request.is_empty(), "{:?}", again.request);
        // The owner sees which of its leases were asked for.
        let mut owner_view = run(&asked, &e, t0, "w2", &["s0", "s1", "s2", "s3", "s4"]).asked_of_me;
        owner_view.sort_unstable();
        let mut want: Vec<String> = p.request.iter().map(|(id, _)| id.clone()).collect();
        want.sort_unstable();
        assert_eq!(owner_view, want);
        assert!(run(&asked, &e, t0, "w2", &["s0", "s1", "s2", "s3", "s4"]).request.is_empty(), "w2 does not ask back");

        // Released for w1: w1 takes them; another worker leaves them alone.
        let id = p.request[0].0.clone();
        let i = asked.iter().position(|l| l.shard_id == id).expect("requested lease");
        asked[i].owner = None;
        asked[i].counter = 3;
        e.observe(&asked, t0);
        assert_eq!(ids(&run(&asked, &e, t0, "w1", &[]).take), [id.as_str()]);
        assert!(run(&asked, &e, t0, "w4", &[]).take.is_empty(), "reserved for the requester");
        let late = run(&asked, &e, t0 + D, "w4", &[]);
        assert!(ids(&late.take).contains(&id.as_str()), "unless it did not come");

        // 3/3/2: nobody is above the target, nothing moves.
        let spread: Vec<Lease> = (0..8).map(|i| lease(&format!("s{i}"), Some(["w1", "w2", "w3"][i % 3]), 1)).collect();
        e.observe(&spread, t0);
        let held = ["s2", "s5"];
        let p = run(&spread, &e, t0, "w3", &held);
        assert_eq!((p.target, p.take.len(), p.request.len()), (3, 0, 0));

        // 4 leases, w2 and w3 hold 2 each, w1 none: the target is 2 and nobody is above it, but w1 needs two, so it
        // asks one of them (2/1/1, not an idle worker); at 1 it needs only one and asks nobody at the target.
        let four: Vec<Lease> = (0..4).map(|i| lease(&format!("s{i}"), Some(["w2", "w3"][i % 2]), 1)).collect();
        e.observe(&four, t0);
        let p = run(&four, &e, t0, "w1", &[]);
        assert_eq!((p.workers, p.target), (3, 2));
        assert_eq!(p.request.len(), 1, "an idle worker asks a worker at the target, once: {:?}", p.request);
        let mut after: Vec<Lease> = four.clone();
        after[0].owner = Some("w1".to_owned());
        e.observe(&after, t0);
        let p = run(&after, &e, t0, "w1", &["s0"]);
        assert!(p.request.is_empty(), "w1 holds 1 of a target of 2: the others stay at the target");
        let p = run(&after, &e, t0, "w2", &["s2"]);
        assert!(p.request.is_empty(), "w2 (1) does not ask w3 (2) back");
    }

    #[test]
    fn a_worker_joining_one_that_holds_everything_asks_for_its_whole_share_in_one_cycle() {
        let t0 = Instant::now();
        // 64 leases on w1; 7 workers join, each asking in the same cycle: each sees w1 and itself only (the others'
        // requests are not listed yet), so each asks for half. Their requests collide on the table (conditional on
        // the counter): simulate the table applying them in turn, each on what it saw.
        let leases: Vec<Lease> = (0..64).map(|i| lease(&format!("s{i:02}"), Some("w1"), 1)).collect();
        let mut e = Expiry::default();
        e.observe(&leases, t0);
        let p = run(&leases, &e, t0, "w2", &[]);
        assert_eq!((p.workers, p.target, p.request.len()), (2, 32, 32));
        let distinct: HashSet<&str> = p.request.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(distinct.len(), 32);

        // A later cycle, with all 8 workers visible (each holding one, w1 the rest): each asks for 7 more.
        let mut table = leases.clone();
        for (w, l) in table.iter_mut().enumerate().skip(1).take(7) {
            l.owner = Some(format!("w{}", w + 1));
        }
        e.observe(&table, t0);
        let p = run(&table, &e, t0, "w5", &["s04"]);
        assert_eq!((p.workers, p.target, p.request.len()), (8, 8, 7));
        assert!(p
            .request
            .iter()
            .all(|(id, _)| table.iter().any(|l| l.shard_id == *id && l.owner.as_deref() == Some("w1"))));
    }

    #[test]
    fn max_leases_caps_the_target() {
        let t0 = Instant::now();
        let leases: Vec<Lease> = (0..8).map(|i| lease(&format!("s{i}"), None, 0)).collect();
        let mut e = Expiry::default();
        e.observe(&leases, t0);
        let held = HashSet::new();
        let none = HashSet::new();
        let p = plan(
            &leases,
            &e,
            t0,
            D,
            &Me {
                id: "w1",
                held: &held,
                ended_here: &none,
                max_leases: Some(2),
                watched: &none,
                elsewhere: &Tally::default(),
            },
        );
        assert_eq!((p.target, p.take.len()), (2, 2));
    }

    #[test]
    fn children_wait_for_parents_and_parents_are_deleted_after_children_started() {
        let t0 = Instant::now();
        let seq = Checkpoint::at(SequenceNumber::parse("7").expect("valid"));
        let mut p = lease("p", Some("w2"), 1);
        p.checkpoint = Some(seq.clone());
        let mut a = lease("a", None, 0);
        a.parents = vec!["p".to_owned()];
        let mut b = a.clone();
        b.shard_id = "b".to_owned();
        let mut m = lease("m", None, 0);
        m.parents = vec!["a".to_owned(), "b".to_owned()];
        let mut orphan = lease("o", None, 0);
        orphan.parents = vec!["past-retention".to_owned()];
        let mut leases = vec![p, a, b, m, orphan];
        let mut e = Expiry::default();
        e.observe(&leases, t0);
        let plan_now = |leases: &[Lease], e: &Expiry| run(leases, e, t0, "w1", &[]);
        assert_eq!(ids(&plan_now(&leases, &e).take), ["o"], "children wait; a parent with no lease is gone");

        leases[0].checkpoint = Some(Checkpoint::ShardEnd);
        leases[0].owner = None;
        let plan1 = plan_now(&leases, &e);
        assert_eq!(ids(&plan1.take), ["a", "b", "o"], "the split's children, not yet the merge's");
        assert!(plan1.delete.is_empty(), "children not started yet");
        leases[1].owner = Some("w1".to_owned());
        assert_eq!(ids(&plan_now(&leases, &e).take), ["a", "b", "o"], "owned by w1's id but not held: taken back");
        assert!(plan_now(&leases, &e).delete.is_empty(), "b not started");
        leases[2].checkpoint = Some(seq);
        assert_eq!(plan_now(&leases, &e).delete, ["p"]);
        leases.remove(0);
        assert_eq!(ids(&run(&leases, &e, t0, "w1", &["a"]).take), ["b", "o"], "a deleted parent counts as finished");
    }

    #[test]
    fn leases_are_created_parents_first_and_not_for_deleted_parents() {
        let info = |id: &str, parents: &[&str]| ShardInfo {
            shard_id: id.to_owned(),
            parent_shard_id: parents.first().map(|p| (*p).to_owned()),
            adjacent_parent_shard_id: parents.get(1).map(|p| (*p).to_owned()),
            closed: false,
        };
        let listing =
            vec![info("z-child", &["a-parent"]), info("a-parent", &["root"]), info("root", &[]), info("q", &[])];
        let created: Vec<&str> = to_create(&listing, &[]).iter().map(|s| s.shard_id.as_str()).collect();
        assert_eq!(created, ["q", "root", "a-parent", "z-child"]);

        let mut child = lease("z-child", None, 0);
        child.parents = vec!["a-parent".to_owned()];
        let created: Vec<&str> = to_create(&listing, &[child]).iter().map(|s| s.shard_id.as_str()).collect();
        assert_eq!(created, ["q"], "ancestors of a shard with a lease were finished and deleted");

        let listing = vec![
            info("a", &[]),
            info("b", &[]),
            info("c", &["a"]),
            info("d", &["a"]),
            info("e", &["b"]),
            info("f", &["c", "e"]),
            info("g", &[]),
        ];
        let created = to_create(&listing, &[]);
        let rounds: Vec<Vec<&str>> =
            creation_rounds(&created).iter().map(|r| r.iter().map(|s| s.shard_id.as_str()).collect()).collect();
        assert_eq!(rounds, [vec!["a", "b", "g"], vec!["c", "d", "e"], vec!["f"]], "no parent in its child's round");
        assert!(creation_rounds(&[]).is_empty());
    }

    /// `plan` for `me` holding `held`, with `elsewhere` the other streams' tally.
    fn run_with(leases: &[Lease], e: &Expiry, now: Instant, held: &[&str], elsewhere: &Tally) -> Plan {
        let held: HashSet<String> = held.iter().map(|s| (*s).to_owned()).collect();
        let none = HashSet::new();
        let all: HashSet<String> = leases.iter().filter_map(|l| l.owner.clone()).collect();
        let me = Me { id: "w1", held: &held, ended_here: &none, max_leases: None, watched: &all, elsewhere };
        plan(leases, e, now, D, &me)
    }

    fn elsewhere(readable: usize, mine: usize, free: usize, others: &[(&str, usize)]) -> Tally {
        Tally {
            readable,
            mine,
            free,
            others: others.iter().map(|(w, n)| ((*w).to_owned(), *n)).collect(),
            workers: others.iter().map(|(w, _)| (*w).to_owned()).collect(),
            ..Tally::default()
        }
    }

    #[test]
    fn a_worker_whose_leases_here_expired_is_gone_whatever_the_other_streams_saw() {
        let t0 = Instant::now();
        let mut e = Expiry::default();
        // w2 held 1 lease here and 3 elsewhere (as the other stream last saw it); it stopped renewing.
        let here = vec![lease("s0", Some("w2"), 1), lease("s1", Some("w1"), 1)];
        e.observe(&here, t0);
        let p = run_with(&here, &e, t0 + D, &["s1"], &elsewhere(4, 1, 0, &[("w2", 3)]));
        assert_eq!(p.workers, 1, "w2 is not live");
        assert_eq!((p.target, ids(&p.take)), (6, vec!["s0"]), "its expired lease is taken");
        assert!(p.tally.gone.contains("w2"));
        assert!(p.request.is_empty(), "its leases elsewhere are free there, not asked for");
    }

    #[test]
    fn the_fair_share_counts_the_leases_of_the_other_streams() {
        let t0 = Instant::now();
        let mut e = Expiry::default();
        // This stream: one lease, held by w2. Elsewhere: w2 holds 5 more, w3 lives, w1 none: 6 / 3 = 2 each.
        let here = vec![lease("s0", Some("w2"), 1)];
        e.observe(&here, t0);
        let p = run_with(&here, &e, t0, &[], &elsewhere(5, 0, 0, &[("w2", 5), ("w3", 0)]));
        assert_eq!((p.workers, p.target), (3, 2), "every stream's workers and leases");
        assert_eq!(ids(&p.request), ["s0"], "w2 holds 6 of 6: its lone lease here is asked for");
        assert_eq!(p.tally.mine, 1, "the request counts as this worker's");
        assert_eq!(p.tally.others.get("w2"), Some(&0), "and no longer as w2's");
        assert_eq!(p.tally.readable, 1);
        assert!(p.tally.workers.contains("w2") && !p.tally.workers.contains("w1"));

        // The same stream read alone: a lone lease held by its only other reader is left where it is.
        let p = run_with(&here, &e, t0, &[], &Tally::default());
        assert_eq!((p.workers, p.target), (2, 1));
        assert!(p.request.is_empty());
        assert!(p.take.is_empty());
    }

    #[test]
    fn a_worker_at_its_share_elsewhere_leaves_free_leases_and_asks_for_nothing_while_any_are_free() {
        let t0 = Instant::now();
        let mut e = Expiry::default();
        let free: Vec<Lease> = (0..3).map(|i| lease(&format!("f{i}"), None, 0)).collect();
        e.observe(&free, t0);
        // w1 holds 3 elsewhere, w2 none: 6 / 2 = 3, w1 is at its share.
        let p = run_with(&free, &e, t0, &[], &elsewhere(3, 3, 0, &[("w2", 0)]));
        assert_eq!(p.target, 3);
        assert!(p.take.is_empty(), "{:?}", p.take);
        assert_eq!(p.tally.free, 3, "left for another worker: told to the other streams' cycles");

        // Below its share here, with every lease of this stream held by w2 but free ones in another stream: those are
        // taken by that stream's cycle; nothing is asked for meanwhile.
        let held: Vec<Lease> = (0..4).map(|i| lease(&format!("h{i}"), Some("w2"), 1)).collect();
        e.observe(&held, t0);
        let p = run_with(&held, &e, t0, &[], &elsewhere(2, 0, 2, &[]));
        assert_eq!(p.target, 3);
        assert!(p.request.is_empty(), "free leases elsewhere first: {:?}", p.request);
        let p = run_with(&held, &e, t0, &[], &elsewhere(2, 2, 0, &[]));
        assert_eq!(p.request.len(), 1, "at 2 of 3, w2 at 4 of 3, nothing free: one request, {:?}", p.request);
    }
}
