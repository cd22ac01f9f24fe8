//! What the SQL stores (PostgreSQL, MySQL) share that is not SQL: the check of their table names, the rows of a
//! flush, a stored row read back as a [`Checkpoint`], the error message of a missing table, and the
//! [`CheckpointBudget`] of their lease tables. The statements, the column types, the driver calls and the error codes
//! stay in each store crate.
//!
//! A SQL store writes its table name unquoted into SQL text, as the Go library does, so the name must be a plain
//! identifier: `table` or `qualifier.table` (a schema or a database), each part matching `[A-Za-z_][A-Za-z0-9_]*`
//! and no longer than the backend keeps (63 bytes in PostgreSQL, which truncates longer ones silently). Nothing else
//! (quotes, spaces, comments, non-ASCII letters) gets through [`validate_table_name`], so no name can change a
//! statement.
//!
//! ```
//! use kc_checkpoint::{sql, ErrorKind};
//!
//! assert!(sql::validate_table_name("public.kinesis_consumer", "schema", 63).is_ok());
//! let err = sql::validate_table_name("x; DROP TABLE y", "schema", 63).unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::InvalidInput);
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::{Checkpoint, Error, ErrorKind, SequenceNumber, ShardKey};

/// Checks that `name` is `table` or `{qualifier}.table` (`qualifier` is what the backend calls the first part, e.g.
/// `schema` or `database`, for the message), each part an ASCII identifier of at most `max_part_len` characters.
///
/// Fails with [`ErrorKind::InvalidInput`], saying what is expected.
pub fn validate_table_name(name: &str, qualifier: &str, max_part_len: usize) -> Result<(), Error> {
    let parts: Vec<&str> = name.split('.').collect();
    let valid = parts.len() <= 2 && parts.iter().all(|part| is_identifier(part, max_part_len));
    if valid {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::InvalidInput,
        format!(
            "invalid table name {name:?}: expected `table` or `{qualifier}.table`, each part matching \
             [A-Za-z_][A-Za-z0-9_]* with at most {max_part_len} characters"
        ),
    ))
}

fn is_identifier(part: &str, max_len: usize) -> bool {
    let mut bytes = part.bytes();
    let first_ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_');
    first_ok && part.len() <= max_len && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The value of the `namespace` column: `{app}-{stream}`, as the Go library's stores write it. Ambiguous when names
/// contain `-` (app `a-b` with stream `c` and app `a` with stream `b-c` share `a-b-c`): [`rows`] keeps one row.
pub fn namespace(key: &ShardKey) -> String {
    format!("{}-{}", key.app(), key.stream())
}

/// One row of a checkpoint table as a flush writes it (the Go library's columns plus `sub_sequence_number` and
/// `finished`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The `namespace` column ([`namespace`]).
    pub namespace: String,
    /// The `shard_id` column.
    pub shard: String,
    /// The `sequence_number` column, as decimal text. `"0"` for a shard end: the column is `NOT NULL` in the Go
    /// schema, and an existing row keeps its own position.
    pub sequence: String,
    /// The `sub_sequence_number` column (`None`: the whole record, or a shard end).
    pub sub_sequence: Option<u64>,
    /// The `finished` column: the shard was read to its end.
    pub finished: bool,
}

/// The rows of a flush: one per primary key `(namespace, shard_id)`, sorted by it (so that concurrent flushes lock
/// rows in the same order and cannot deadlock each other). Two keys can share a row (see [`namespace`]): the later
/// checkpoint is kept, as one statement may not update a row twice.
pub fn rows<'a>(batch: impl IntoIterator<Item = (&'a ShardKey, &'a Checkpoint)>) -> Vec<Row> {
    let mut by_pk: BTreeMap<(String, String), &Checkpoint> = BTreeMap::new();
    for (key, checkpoint) in batch {
        let slot = by_pk.entry((namespace(key), key.shard().to_owned())).or_insert(checkpoint);
        if checkpoint > *slot {
            *slot = checkpoint;
        }
    }
    by_pk
        .into_iter()
        .map(|((namespace, shard), checkpoint)| match checkpoint {
            Checkpoint::At { sequence, sub_sequence } => {
                Row { namespace, shard, sequence: sequence.to_string(), sub_sequence: *sub_sequence, finished: false }
            }
            Checkpoint::ShardEnd => {
                Row { namespace, shard, sequence: "0".to_owned(), sub_sequence: None, finished: true }
            }
        })
        .collect()
}

/// A stored row read back: `finished` is a shard end, else the sequence number (`None`: no checkpoint yet, as in a
/// new lease) and the sub-sequence number in the column's type `S`. A value that is not one (not a decimal number, a
/// negative sub-sequence number) is a [`ErrorKind::Permanent`] error naming `table`.
pub fn stored_checkpoint<S>(
    table: &str,
    finished: bool,
    sequence: Option<String>,
    sub_sequence: Option<S>,
) -> Result<Option<Checkpoint>, Error>
where
    u64: TryFrom<S>,
    <u64 as TryFrom<S>>::Error: std::error::Error + Send + Sync + 'static,
{
    if finished {
        return Ok(Some(Checkpoint::ShardEnd));
    }
    let Some(sequence) = sequence else { return Ok(None) };
    let sequence = SequenceNumber::parse(sequence).map_err(|e| {
        Error::with_source(ErrorKind::Permanent, format!("invalid sequence number stored in {table}"), e)
    })?;
    let sub_sequence = sub_sequence
        .map(u64::try_from)
        .transpose()
        .map_err(|e| Error::with_source(ErrorKind::Permanent, format!("negative sub-sequence in {table}"), e))?;
    Ok(Some(Checkpoint::At { sequence, sub_sequence }))
}

/// The message of an error that says checkpoint table `table` is missing or has the Go library's old schema, while
/// doing `what`; `store` is the store's type, whose `create_table_if_missing` creates it.
pub fn missing_checkpoint_table(what: &str, table: &str, store: &str) -> String {
    format!(
        "{what}: checkpoint table {table} is missing or lacks the columns sub_sequence_number and finished \
         (create it with {store}::create_table_if_missing, or see the crate docs for the DDL and the ALTER TABLE \
         statements)"
    )
}

/// The message of an error that says lease table `table` is missing or lacks columns, while doing `what`;
/// `lease_table` is the lease table's type, whose `create_table_if_missing` creates it.
pub fn missing_lease_table(what: &str, table: &str, lease_table: &str) -> String {
    format!(
        "{what}: lease table {table} is missing or lacks columns (create it with \
         {lease_table}::create_table_if_missing, or see the crate docs for the DDL)"
    )
}

/// The connections a SQL lease table's `connect` gives to checkpoint writes: 4 (its pool has
/// `DEFAULT_CHECKPOINT_CONNECTIONS + DEFAULT_OWNERSHIP_RESERVE` = 6 connections).
pub const DEFAULT_CHECKPOINT_CONNECTIONS: u32 = 4;

/// The connections of its pool a SQL lease table keeps from checkpoint writes, for the writes that keep leases owned
/// (renew, take, release, handoff request, create, delete) and the reads (list, get): 2, fewer on a pool too small to
/// keep them ([`default_ownership_reserve`]).
pub const DEFAULT_OWNERSHIP_RESERVE: u32 = 2;

/// The reserve of a pool of `max_connections` when the user did not choose one: [`DEFAULT_OWNERSHIP_RESERVE`], but
/// always leaving one connection to checkpoints: 1 on a pool of 2, 0 on a pool of 1 (checkpoints and renewals then
/// share its one connection, first come first served).
pub fn default_ownership_reserve(max_connections: u32) -> u32 {
    DEFAULT_OWNERSHIP_RESERVE.min(max_connections.saturating_sub(1))
}

/// How many of a lease table's pool connections its checkpoint writes may hold at once, so that a busy group's
/// checkpoints cannot starve the renewals of its leases (issue 12, defect 8).
///
/// A group worker writes a checkpoint to every lease it holds after each batch, and renews each lease every third of
/// a lease duration; when all of them share one small pool, a burst of checkpoints (or a few checkpoints waiting on a
/// slow or locked row) takes every connection, renewals queue behind them, and leases expire although their worker
/// is alive. A SQL lease table therefore runs each checkpoint statement inside [`run`](Self::run), which admits at
/// most `max_connections - ownership_reserve` at once: the reserve is always left to the other calls.
///
/// A checkpoint that finds no free slot waits for one at most `wait` (the pool's acquire timeout: a checkpoint
/// waited as long for a connection before), then fails with [`ErrorKind::Transient`], as a pool timeout does.
///
/// ```
/// use std::time::Duration;
/// use kc_checkpoint::sql::CheckpointBudget;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), kc_checkpoint::Error> {
/// // A pool of 6 connections, 2 of them kept for renewals: checkpoints get 4.
/// let budget = CheckpointBudget::new(6, 2, Duration::from_secs(5))?;
/// assert_eq!(budget.connections(), 4);
/// let written = budget.run(async { "the checkpoint statement" }).await?;
/// assert_eq!(written, "the checkpoint statement");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct CheckpointBudget {
    slots: Arc<Semaphore>,
    connections: u32,
    wait: Duration,
}

impl CheckpointBudget {
    /// The budget of a pool of `max_connections` keeping `ownership_reserve` of them from checkpoint writes, which
    /// wait at most `wait` for a slot.
    ///
    /// Fails with [`ErrorKind::InvalidInput`] unless the reserve leaves at least one connection to checkpoints.
    pub fn new(max_connections: u32, ownership_reserve: u32, wait: Duration) -> Result<Self, Error> {
        if ownership_reserve >= max_connections {
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "ownership reserve {ownership_reserve} leaves no connection of the pool's {max_connections} to \
                     checkpoint writes: it must be less than the pool's max_connections"
                ),
            ));
        }
        let connections = max_connections - ownership_reserve;
        // Capped at `Semaphore::MAX_PERMITS` (`usize::MAX >> 3`), far above any real pool.
        let permits = usize::try_from(connections).unwrap_or(Semaphore::MAX_PERMITS).min(Semaphore::MAX_PERMITS);
        Ok(Self { slots: Arc::new(Semaphore::new(permits)), connections, wait })
    }

    /// How many checkpoint writes may hold a connection at once.
    pub fn connections(&self) -> u32 {
        self.connections
    }

    /// Runs `write` (one checkpoint statement) once a slot is free, holding the slot until it is done.
    ///
    /// Fails with [`ErrorKind::Transient`] when no slot was free within the budget's wait; `write` did not run.
    pub async fn run<F: Future>(&self, write: F) -> Result<F::Output, Error> {
        let slot = match tokio::time::timeout(self.wait, self.slots.acquire()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_closed)) => unreachable!("a checkpoint budget's semaphore is never closed"),
            Err(_elapsed) => {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!(
                        "no checkpoint connection free within {:?} (checkpoint writes may hold {} of the pool's \
                         connections at once)",
                        self.wait, self.connections
                    ),
                ))
            }
        };
        let output = write.await;
        drop(slot);
        Ok(output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        // The limits of PostgreSQL (63) and of MySQL (64).
        for max in [63, 64] {
            let long = "a".repeat(max);
            let too_long = "a".repeat(max + 1);
            let long_qualified = format!("{long}.{long}");
            let cases: &[(&str, bool)] = &[
                ("kinesis_consumer", true),
                ("Kinesis_Consumer2", true),
                ("_t", true),
                ("public.kinesis_consumer", true),
                ("test.kinesis_consumer", true),
                (&long, true),
                (&long_qualified, true),
                ("", false),
                (".", false),
                ("a.", false),
                (".a", false),
                ("a.b.c", false),
                ("1table", false),
                ("x; DROP TABLE y", false),
                ("x;DROP TABLE y--", false),
                ("kinesis consumer", false),
                (" kinesis_consumer", false),
                ("kinesis_consumer ", false),
                ("\"quoted\"", false),
                ("it's", false),
                ("`back`", false),
                ("a-b", false),
                ("tåble", false),
                ("таблица", false),
                ("t\0", false),
                ("t\n", false),
                ("a/**/b", false),
                (&too_long, false),
            ];
            for &(name, ok) in cases {
                match (ok, validate_table_name(name, "schema", max)) {
                    (true, Ok(())) => {}
                    (false, Err(e)) => {
                        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{name:?}");
                        assert!(e.to_string().contains("`schema.table`"), "{e}");
                        assert!(e.to_string().contains(&format!("at most {max} characters")), "{e}");
                    }
                    (want, got) => panic!("{name:?} (at most {max}): want valid={want}, got {got:?}"),
                }
            }
        }
    }

    fn at(s: &str, sub: Option<u64>) -> Checkpoint {
        Checkpoint::At { sequence: SequenceNumber::parse(s).expect("valid"), sub_sequence: sub }
    }

    #[test]
    fn rows_are_sorted_and_deduplicated() {
        let (k2, k1a, k1b, k0) = (
            ShardKey::new("b", "s", "2"),
            ShardKey::new("a", "b-c", "1"),
            // Same row as the one above (app `a`, stream `b-c` vs app `a-b`, stream `c`): the later checkpoint wins.
            ShardKey::new("a-b", "c", "1"),
            ShardKey::new("a", "b-c", "0"),
        );
        let (c2, c1a, c1b) = (at("10", Some(u64::MAX)), at("9", None), at("10", None));
        let rows = rows([(&k2, &c2), (&k1a, &c1a), (&k1b, &c1b), (&k0, &Checkpoint::ShardEnd)]);
        let got: Vec<_> =
            rows.iter().map(|r| (&*r.namespace, &*r.shard, &*r.sequence, r.sub_sequence, r.finished)).collect();
        assert_eq!(
            got,
            [
                ("a-b-c", "0", "0", None, true),
                ("a-b-c", "1", "10", None, false),
                ("b-s", "2", "10", Some(u64::MAX), false)
            ]
        );
        assert_eq!(namespace(&ShardKey::new("app", "stream", "shard")), "app-stream");
    }

    #[test]
    fn stored_rows_read_back() {
        let read = |finished, sequence: Option<&str>, sub: Option<i64>| {
            stored_checkpoint("t", finished, sequence.map(str::to_owned), sub).map_err(|e| e.kind())
        };
        assert_eq!(read(true, Some("1"), Some(-1)), Ok(Some(Checkpoint::ShardEnd)));
        assert_eq!(read(false, None, None), Ok(None));
        assert_eq!(read(false, Some("12"), Some(3)), Ok(Some(at("12", Some(3)))));
        assert_eq!(read(false, Some("12"), None), Ok(Some(at("12", None))));
        assert_eq!(read(false, Some("x"), None), Err(ErrorKind::Permanent));
        assert_eq!(read(false, Some("12"), Some(-1)), Err(ErrorKind::Permanent));
        let unsigned = stored_checkpoint("t", false, Some("5".to_owned()), Some(u64::MAX)).expect("valid");
        assert_eq!(unsigned, Some(at("5", Some(u64::MAX))));
        let message = missing_checkpoint_table("reading", "app.t", "SomeStore");
        assert!(message.starts_with("reading: checkpoint table app.t is missing"), "{message}");
        assert!(message.contains("SomeStore::create_table_if_missing"), "{message}");
        assert!(missing_lease_table("x", "l", "SomeLeases").contains("lease table l is missing"));
    }

    #[test]
    fn checkpoint_budgets() {
        // (the pool's max_connections, the reserve asked for or None for the default, the checkpoint connections or
        // None when the reserve is refused).
        let cases: &[(u32, Option<u32>, Option<u32>)] = &[
            // `connect`'s pool: 4 for checkpoints, 2 kept.
            (DEFAULT_CHECKPOINT_CONNECTIONS + DEFAULT_OWNERSHIP_RESERVE, None, Some(DEFAULT_CHECKPOINT_CONNECTIONS)),
            // A user's pool: 2 kept, fewer when it is too small to keep them and still write checkpoints.
            (10, None, Some(8)),
            (3, None, Some(1)),
            (2, None, Some(1)),
            (1, None, Some(1)),
            // Chosen reserves: anything that leaves a connection to checkpoints.
            (10, Some(0), Some(10)),
            (10, Some(9), Some(1)),
            (6, Some(5), Some(1)),
            (2, Some(1), Some(1)),
            (1, Some(0), Some(1)),
            (10, Some(10), None),
            (10, Some(11), None),
            (2, Some(2), None),
            (1, Some(1), None),
            (0, Some(0), None),
            (0, None, None),
            (u32::MAX, None, Some(u32::MAX - 2)),
        ];
        for &(pool, reserve, want) in cases {
            let reserve = reserve.unwrap_or_else(|| default_ownership_reserve(pool));
            match (CheckpointBudget::new(pool, reserve, Duration::from_secs(1)), want) {
                (Ok(budget), Some(want)) => assert_eq!(budget.connections(), want, "pool {pool}, reserve {reserve}"),
                (Err(e), None) => {
                    assert_eq!(e.kind(), ErrorKind::InvalidInput, "pool {pool}, reserve {reserve}");
                    let message = e.to_string();
                    assert!(message.contains(&format!("ownership reserve {reserve}")), "{message}");
                    assert!(message.contains("max_connections"), "{message}");
                }
                (got, want) => panic!("pool {pool}, reserve {reserve}: want {want:?}, got {got:?}"),
            }
        }
        assert_eq!(default_ownership_reserve(6), DEFAULT_OWNERSHIP_RESERVE);
        assert_eq!((default_ownership_reserve(2), default_ownership_reserve(1)), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn checkpoint_writes_wait_for_a_slot() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use tokio::sync::oneshot;

        let wait = Duration::from_secs(5);
        let budget = CheckpointBudget::new(6, 4, wait).expect("2 checkpoint connections");
        let running = Arc::new(AtomicU32::new(0));
        // Three writes that run until they are told to finish: two hold the slots, the third waits.
        let mut finish = Vec::new();
        let mut writes = Vec::new();
        for n in 0..3 {
            let (tx, rx) = oneshot::channel::<()>();
            finish.push(tx);
            let (budget, running) = (budget.clone(), Arc::clone(&running));
            writes.push(tokio::spawn(async move {
                budget
                    .run(async move {
                        running.fetch_add(1, Ordering::SeqCst);
                        rx.await.ok();
                        running.fetch_sub(1, Ordering::SeqCst);
                        n
                    })
                    .await
            }));
        }
        tokio::time::sleep(wait / 2).await;
        assert_eq!(running.load(Ordering::SeqCst), 2, "two slots, two writes running");
        // The first write finishes: the waiting one takes its slot.
        finish.remove(0).send(()).expect("first write running");
        assert_eq!(writes.remove(0).await.expect("task").expect("ran"), 0);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(running.load(Ordering::SeqCst), 2, "the third write runs in the freed slot");

        // Both slots held: a fourth write gives up after the wait, without running, as a pool timeout would.
        let ran = Arc::new(AtomicU32::new(0));
        let started = tokio::time::Instant::now();
        let fourth = budget.run({
            let ran = Arc::clone(&ran);
            async move { ran.fetch_add(1, Ordering::SeqCst) }
        });
        let err = fourth.await.expect_err("no slot within the wait");
        assert_eq!((err.kind(), started.elapsed(), ran.load(Ordering::SeqCst)), (ErrorKind::Transient, wait, 0));
        assert!(err.to_string().contains("may hold 2 of the pool's connections"), "{err}");

        for tx in finish {
            tx.send(()).expect("write running");
        }
        let mut done = Vec::new();
        for write in writes {
            done.push(write.await.expect("task").expect("ran"));
        }
        assert_eq!(done, [1, 2]);
        assert_eq!(budget.slots.available_permits(), 2, "every slot is back");
    }
}
