//! [`DynamoDbLeaseTable`]: the lease table of consumer groups on a DynamoDB table.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use kc_checkpoint::lease::{creation_millis, from_millis, refused, Lease, LeaseScope, LeaseTable};
use kc_checkpoint::{Checkpoint, Error, ErrorKind};

use crate::{error, sequence_key, FINISHED, SEQUENCE_KEY, SEQUENCE_NUMBER, SHARD_ID, SUB_SEQUENCE_NUMBER};

/// Partition key: the scope and the lease's bucket, `{stream}#{group}#{bucket}` (see
/// [`DynamoDbLeaseTable::partition_key`]); in the first layout, the scope alone (see [`first_layout_key`]).
const SCOPE: &str = "scope";
const GROUP_NAME: &str = "group_name";
const STREAM_NAME: &str = "stream_name";
const OWNER: &str = "lease_owner";
const COUNTER: &str = "lease_counter";
const PARENTS: &str = "parents";
const NEXT_OWNER: &str = "next_owner";
const CREATED_AT: &str = "created_at_ms";
/// On an item of the first layout being moved: the owner it had before [`MOVING`] replaced it.
const MOVED_OWNER: &str = "moved_owner";

/// How many partitions the leases of one scope are spread over. Part of the table's layout: every worker of a group
/// must use the same number (changing it would be a new layout).
pub const LEASE_BUCKETS: u32 = 32;

/// Queries (list) or moves (migration) in flight at once.
const IN_FLIGHT: usize = 8;
/// Rounds of read-then-write before moving one lease of the first layout gives up (transiently) for this listing.
const MOVE_ATTEMPTS: usize = 8;
/// The owner written on an item of the first layout while it is moved: fences off its owner, which sees another
/// owner at its next write.
const MOVING: &str = "#moving-to-bucketed-layout";
/// The sort key of the item that marks a scope's first-layout partition as moved. It has no `lease_counter`, so that
/// workers of an earlier version fail to list the scope with an error naming it, instead of creating the leases
/// again in the old partition.
const MOVED_MARKER: &str =
    "~ this group's leases moved to a newer kinesis-consumer's bucketed layout; upgrade this worker";

/// A [`LeaseTable`] on a DynamoDB table: one item per lease, every write one conditional `UpdateItem` (two for a
/// checkpoint that is not newer than the stored one). See the [crate docs](crate#the-lease-table) for the layout.
///
/// Writes are sent without the SDK's retries: a write whose response was lost may have been applied, and a retry
/// would then be refused by that very write, which would look like a lost lease. Such failures are
/// [`ErrorKind::Transient`]; the caller reads the lease ([`LeaseTable::get`]) to find out. Reads keep the client's
/// retry settings.
#[derive(Debug, Clone)]
pub struct DynamoDbLeaseTable {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoDbLeaseTable {
    /// A lease table on `table` through `client`. Fails with [`ErrorKind::InvalidInput`] for an invalid table name
    /// (DynamoDB's rule: 3 to 255 characters of `A-Z a-z 0-9 _ . -`). Does not touch the table: see
    /// [`create_table_if_missing`](Self::create_table_if_missing).
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Result<Self, Error> {
        crate::validate_table_name(table)?;
        Ok(Self { client, table: table.to_owned() })
    }

    /// The partition key (attribute `scope`) of the lease of `shard_id` in `scope`: `{stream}#{group}#{bucket}`,
    /// with `%`, `/` and `#` written `%25`, `%2F` and `%23` in both names, and the bucket
    /// ([`lease_bucket`]`(shard_id)`) in two digits, e.g. `orders#billing#07`. See the
    /// [crate docs](crate#the-lease-table).
    pub fn partition_key(scope: &LeaseScope, shard_id: &str) -> String {
        bucket_key(scope, lease_bucket(shard_id))
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table (partition key `scope`, sort key `shard_id`, on-demand capacity) unless it exists, and waits
    /// until it is `ACTIVE` (at most two minutes). A table still being deleted is waited for, then created again.
    pub async fn create_table_if_missing(&self) -> Result<(), Error> {
        crate::create_table_if_missing(&self.client, &self.table, SCOPE, SHARD_ID).await
    }

    fn no_retries() -> aws_sdk_dynamodb::config::Builder {
        aws_sdk_dynamodb::config::Builder::new().retry_config(RetryConfig::disabled())
    }

    fn error<E>(&self, what: &str, shard_id: &str, err: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        error::from_sdk(&format!("{what} of the lease of {shard_id} in table {}", self.table), err)
    }

    /// An `UpdateItem` of the lease, conditional on its counter (and owner), that increments the counter, sent
    /// without retries. `set`, `remove` and `condition` extend the expressions; `values` their placeholders.
    #[allow(clippy::too_many_arguments)]
    async fn update(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        what: &str,
        expected: u64,
        owner: Option<&str>,
        set: &str,
        remove: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
        returns: ReturnValue,
    ) -> Result<Option<HashMap<String, AttributeValue>>, Error> {
        let mut update = format!("SET #counter = #counter + :one{set}");
        if !remove.is_empty() {
            update.push_str(" REMOVE ");
            update.push_str(remove);
        }
        let mut cond = "#counter = :expected".to_owned();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(SCOPE, AttributeValue::S(Self::partition_key(scope, shard_id)))
            .key(SHARD_ID, AttributeValue::S(shard_id.to_owned()))
            .expression_attribute_names("#counter", COUNTER)
            .expression_attribute_values(":one", AttributeValue::N("1".to_owned()))
            .expression_attribute_values(":expected", AttributeValue::N(expected.to_string()))
            .return_values(returns);
        if let Some(owner) = owner {
            cond.push_str(" AND #lease_owner = :owner");
            request = request.expression_attribute_values(":owner", AttributeValue::S(owner.to_owned()));
        }
        cond.push_str(condition);
        for name in [OWNER, NEXT_OWNER, SEQUENCE_KEY, SEQUENCE_NUMBER, SUB_SEQUENCE_NUMBER, FINISHED] {
            let placeholder = format!("#{name}");
            if update.contains(&placeholder) || cond.contains(&placeholder) {
                request = request.expression_attribute_names(placeholder, name);
            }
        }
        for (placeholder, value) in values {
            request = request.expression_attribute_values(placeholder, value);
        }
        let sent = request
            .update_expression(update)
            .condition_expression(cond)
            .customize()
            .config_override(Self::no_retries())
            .send()
            .await;
        match sent {
            Ok(out) => Ok(Some(out.attributes.unwrap_or_default())),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(None),
            Err(err) => Err(self.error(what, shard_id, err)),
        }
    }

    /// [`update`](Self::update) for the owner's writes: returns the new counter, `Fenced` if the condition failed.
    #[allow(clippy::too_many_arguments)]
    async fn owner_update(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        what: &str,
        owner: &str,
        counter: u64,
        set: &str,
        remove: &str,
    ) -> Result<u64, Error> {
        let written = self
            .update(scope, shard_id, what, counter, Some(owner), set, remove, "", vec![], ReturnValue::UpdatedNew)
            .await?;
        match written {
            Some(attributes) => self.counter(&attributes, shard_id),
            None => Err(refused(self, scope, shard_id, what, counter).await),
        }
    }

    fn counter(&self, item: &HashMap<String, AttributeValue>, shard_id: &str) -> Result<u64, Error> {
        match item.get(COUNTER) {
            Some(AttributeValue::N(n)) => n.parse().map_err(|e| {
                Error::with_source(ErrorKind::Permanent, self.malformed(shard_id, &format!("{COUNTER} {n:?}")), e)
            }),
            _ => Err(Error::new(ErrorKind::Permanent, self.malformed(shard_id, &format!("no number {COUNTER}")))),
        }
    }

    fn malformed(&self, shard_id: &str, what: &str) -> String {
        format!("malformed lease item for {shard_id} in table {}: {what}", self.table)
    }

    fn decode(&self, item: &HashMap<String, AttributeValue>) -> Result<Lease, Error> {
        let shard_id = match item.get(SHARD_ID) {
            Some(AttributeValue::S(s)) => s.clone(),
            _ => return Err(Error::new(ErrorKind::Permanent, self.malformed("?", &format!("no {SHARD_ID}")))),
        };
        let text = |name: &str| -> Result<Option<String>, Error> {
            match item.get(name) {
                None | Some(AttributeValue::Null(_)) => Ok(None),
                Some(AttributeValue::S(s)) => Ok(Some(s.clone())),
                Some(_) => Err(Error::new(ErrorKind::Permanent, self.malformed(&shard_id, &format!("{name} type")))),
            }
        };
        let checkpoint = if item.contains_key(SEQUENCE_KEY) {
            Some(crate::decode(item).map_err(|m| Error::new(ErrorKind::Permanent, self.malformed(&shard_id, &m)))?)
        } else {
            None
        };
        let parents = match item.get(PARENTS) {
            None => Vec::new(),
            Some(AttributeValue::L(list)) => list
                .iter()
                .map(|v| match v {
                    AttributeValue::S(s) => Ok(s.clone()),
                    _ => Err(Error::new(ErrorKind::Permanent, self.malformed(&shard_id, "a parent is not a string"))),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(Error::new(ErrorKind::Permanent, self.malformed(&shard_id, "parents type"))),
        };
        let counter = self.counter(item, &shard_id)?;
        let (owner, next_owner) = (text(OWNER)?, text(NEXT_OWNER)?);
        let created_at = match item.get(CREATED_AT) {
            None | Some(AttributeValue::Null(_)) => None,
            Some(AttributeValue::N(n)) => Some(from_millis(n.parse().map_err(|e| {
                Error::with_source(ErrorKind::Permanent, self.malformed(&shard_id, &format!("{CREATED_AT} {n:?}")), e)
            })?)),
            Some(_) => return Err(Error::new(ErrorKind::Permanent, self.malformed(&shard_id, "created_at_ms type"))),
        };
        Ok(Lease::new(shard_id, owner, counter, checkpoint, parents)
            .with_next_owner(next_owner)
            .with_created_at(created_at))
    }
}

/// The bucket of the lease of `shard_id`, in `0..LEASE_BUCKETS`: the 64-bit FNV-1a hash of the shard id's UTF-8
/// bytes, mixed by MurmurHash3's 64-bit finalizer (FNV-1a alone leaves ids that differ in their last digit in
/// neighbouring high bits and poorly mixed low bits), modulo [`LEASE_BUCKETS`]. Stable across versions and
/// platforms: it is part of the table's layout.
pub fn lease_bucket(shard_id: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in shard_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    // The remainder is below LEASE_BUCKETS, a u32.
    (hash % u64::from(LEASE_BUCKETS)) as u32
}

/// `name` with `%`, `/` and `#` written `%25`, `%2F` and `%23`.
fn escape(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F").replace('#', "%23")
}

/// The partition key of bucket `bucket` of `scope`: `{stream}#{group}#{bucket:02}`, both names [`escape`]d. Unique
/// for any pair of names (a raw `#` only separates), and never contains a `/`, which every [`first_layout_key`]
/// does: the two layouts never share a partition.
fn bucket_key(scope: &LeaseScope, bucket: u32) -> String {
    format!("{}#{}#{bucket:02}", escape(scope.stream()), escape(scope.group()))
}

/// The partition key of `scope` in the first layout (one partition per scope): the stream name with `%` written
/// `%25` and `/` written `%2F`, then `/`, then the group name (unescaped).
fn first_layout_key(scope: &LeaseScope) -> String {
    let stream = scope.stream().replace('%', "%25").replace('/', "%2F");
    format!("{stream}/{}", scope.group())
}

type Item = HashMap<String, AttributeValue>;

impl DynamoDbLeaseTable {
    fn list_error<E>(&self, scope: &LeaseScope, err: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (group, stream) = (scope.group(), scope.stream());
        error::from_sdk(&format!("listing the leases of group {group} on {stream} in table {}", self.table), err)
    }

    /// Every item of partition `key`: a consistent `Query`, following `LastEvaluatedKey`.
    async fn partition(&self, scope: &LeaseScope, key: String) -> Result<Vec<Item>, Error> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#scope = :scope")
                .expression_attribute_names("#scope", SCOPE)
                .expression_attribute_values(":scope", AttributeValue::S(key.clone()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|err| self.list_error(scope, err))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(items),
            }
        }
    }

    /// Moves the leases of `scope` still in the first layout's partition into the bucketed layout, after marking that
    /// partition as moved (unless it is already). See the [crate docs](crate#moving-from-the-first-layout).
    async fn move_first_layout(&self, scope: &LeaseScope) -> Result<(), Error> {
        let old_key = first_layout_key(scope);
        let items = self.partition(scope, old_key.clone()).await?;
        let is_marker = |item: &Item| item.get(SHARD_ID).and_then(|s| s.as_s().ok()).is_some_and(|s| s == MOVED_MARKER);
        let (markers, old): (Vec<Item>, Vec<Item>) = items.into_iter().partition(is_marker);
        if markers.is_empty() {
            self.mark_moved(scope, &old_key).await?;
        }
        stream::iter(old.into_iter().map(|item| self.move_lease(scope, &old_key, item)))
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<()>()
            .await
    }

    /// Writes the moved marker into the first layout's partition of `scope` (a plain `PutItem`: writing it again
    /// changes nothing).
    async fn mark_moved(&self, scope: &LeaseScope, old_key: &str) -> Result<(), Error> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item(SCOPE, AttributeValue::S(old_key.to_owned()))
            .item(SHARD_ID, AttributeValue::S(MOVED_MARKER.to_owned()))
            .item(GROUP_NAME, AttributeValue::S(scope.group().to_owned()))
            .item(STREAM_NAME, AttributeValue::S(scope.stream().to_owned()))
            .send()
            .await
            .map(drop)
            .map_err(|err| {
                error::from_sdk(
                    &format!(
                        "marking the first-layout leases of group {} on {} as moved in table {}",
                        scope.group(),
                        scope.stream(),
                        self.table
                    ),
                    err,
                )
            })
    }

    /// Moves one lease of the first layout (`item`, as last read) into its bucket: fences it (owner [`MOVING`], the
    /// owner kept in `moved_owner`, counter + 1; conditional on the counter read), copies the fenced item to its new
    /// key with the owner it had (`PutItem` if not there yet: a lease already in the new layout wins), then deletes
    /// it (conditional on the fenced counter). A failed condition reads the item again and goes on from there; an
    /// item that is gone was moved by another worker. These writes keep the client's retries: a retried write whose
    /// first attempt was applied fails its condition, and the item is read again.
    async fn move_lease(&self, scope: &LeaseScope, old_key: &str, item: Item) -> Result<(), Error> {
        let mut item = Some(item);
        for _ in 0..MOVE_ATTEMPTS {
            let Some(current) = item.take() else { return Ok(()) };
            let lease = self.decode(&current)?;
            let shard_id = lease.shard_id.clone();
            let fenced = if lease.owner.as_deref() == Some(MOVING) {
                Some(current)
            } else {
                self.fence(old_key, &lease).await?
            };
            if let Some(fenced) = fenced {
                let counter = self.counter(&fenced, &shard_id)?;
                self.copy_moved(scope, &shard_id, fenced).await?;
                if self.delete_moved(old_key, &shard_id, counter).await? {
                    return Ok(());
                }
            }
            item = self.read_first_layout(old_key, &shard_id).await?;
        }
        Err(Error::new(
            ErrorKind::Transient,
            format!(
                "moving the lease of a shard of group {} on {} to the bucketed layout in table {}: it kept changing",
                scope.group(),
                scope.stream(),
                self.table
            ),
        ))
    }

    /// The fence of [`move_lease`](Self::move_lease): the item as written, `None` if the counter changed.
    async fn fence(&self, old_key: &str, lease: &Lease) -> Result<Option<Item>, Error> {
        let shard_id = lease.shard_id.as_str();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(SCOPE, AttributeValue::S(old_key.to_owned()))
            .key(SHARD_ID, AttributeValue::S(shard_id.to_owned()))
            .condition_expression("#counter = :expected")
            .expression_attribute_names("#counter", COUNTER)
            .expression_attribute_names("#owner", OWNER)
            .expression_attribute_names("#moved", MOVED_OWNER)
            .expression_attribute_values(":expected", AttributeValue::N(lease.counter.to_string()))
            .expression_attribute_values(":one", AttributeValue::N("1".to_owned()))
            .expression_attribute_values(":moving", AttributeValue::S(MOVING.to_owned()))
            .return_values(ReturnValue::AllNew);
        request = match &lease.owner {
            Some(owner) => request
                .update_expression("SET #counter = #counter + :one, #owner = :moving, #moved = :owner")
                .expression_attribute_values(":owner", AttributeValue::S(owner.clone())),
            None => request.update_expression("SET #counter = #counter + :one, #owner = :moving REMOVE #moved"),
        };
        match request.send().await {
            Ok(out) => Ok(Some(out.attributes.unwrap_or_default())),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(None),
            Err(err) => Err(self.error("fencing (to move it)", shard_id, err)),
        }
    }

    /// Writes the fenced first-layout item `fenced` under its bucketed key, with its owner from before the fence,
    /// unless a lease of that shard is there already.
    async fn copy_moved(&self, scope: &LeaseScope, shard_id: &str, mut fenced: Item) -> Result<(), Error> {
        fenced.insert(SCOPE.to_owned(), AttributeValue::S(Self::partition_key(scope, shard_id)));
        match fenced.remove(MOVED_OWNER) {
            Some(owner) => fenced.insert(OWNER.to_owned(), owner),
            None => fenced.remove(OWNER),
        };
        let sent = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(fenced))
            .condition_expression("attribute_not_exists(#shard)")
            .expression_attribute_names("#shard", SHARD_ID)
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(()),
            Err(err) => Err(self.error("copying (to move it)", shard_id, err)),
        }
    }

    /// Deletes a moved first-layout item if its counter is still `counter`; whether it did.
    async fn delete_moved(&self, old_key: &str, shard_id: &str, counter: u64) -> Result<bool, Error> {
        let sent = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(SCOPE, AttributeValue::S(old_key.to_owned()))
            .key(SHARD_ID, AttributeValue::S(shard_id.to_owned()))
            .condition_expression("#counter = :expected")
            .expression_attribute_names("#counter", COUNTER)
            .expression_attribute_values(":expected", AttributeValue::N(counter.to_string()))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(false),
            Err(err) => Err(self.error("deleting (moved)", shard_id, err)),
        }
    }

    async fn read_first_layout(&self, old_key: &str, shard_id: &str) -> Result<Option<Item>, Error> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(SCOPE, AttributeValue::S(old_key.to_owned()))
            .key(SHARD_ID, AttributeValue::S(shard_id.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| self.error("reading (to move it)", shard_id, err))?;
        Ok(out.item)
    }
}

#[async_trait]
impl LeaseTable for DynamoDbLeaseTable {
    /// Moves what is left in the first layout's partition of `scope` (see
    /// [moving from the first layout](crate#moving-from-the-first-layout)), then queries the [`LEASE_BUCKETS`]
    /// partitions of `scope`, 8 at a time, and merges them in shard-id order.
    async fn list(&self, scope: &LeaseScope) -> Result<Vec<Lease>, Error> {
        self.move_first_layout(scope).await?;
        let buckets: Vec<Vec<Item>> =
            stream::iter((0..LEASE_BUCKETS).map(|b| self.partition(scope, bucket_key(scope, b))))
                .buffer_unordered(IN_FLIGHT)
                .try_collect()
                .await?;
        let mut leases = buckets.iter().flatten().map(|item| self.decode(item)).collect::<Result<Vec<_>, _>>()?;
        leases.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        Ok(leases)
    }

    async fn get(&self, scope: &LeaseScope, shard_id: &str) -> Result<Option<Lease>, Error> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(SCOPE, AttributeValue::S(Self::partition_key(scope, shard_id)))
            .key(SHARD_ID, AttributeValue::S(shard_id.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| self.error("reading", shard_id, err))?;
        out.item().map(|item| self.decode(item)).transpose()
    }

    async fn create(&self, scope: &LeaseScope, shard_id: &str, parents: &[String]) -> Result<bool, Error> {
        let sent = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(SCOPE, AttributeValue::S(Self::partition_key(scope, shard_id)))
            .item(SHARD_ID, AttributeValue::S(shard_id.to_owned()))
            .item(GROUP_NAME, AttributeValue::S(scope.group().to_owned()))
            .item(STREAM_NAME, AttributeValue::S(scope.stream().to_owned()))
            .item(COUNTER, AttributeValue::N("0".to_owned()))
            .item(CREATED_AT, AttributeValue::N(creation_millis().to_string()))
            .item(PARENTS, AttributeValue::L(parents.iter().map(|p| AttributeValue::S(p.clone())).collect()))
            .condition_expression("attribute_not_exists(#shard)")
            .expression_attribute_names("#shard", SHARD_ID)
            .customize()
            .config_override(Self::no_retries())
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_conditional_check_failed_exception()) => Ok(false),
            Err(err) => Err(self.error("creating", shard_id, err)),
        }
    }

    async fn take(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        expected_counter: u64,
        new_owner: &str,
    ) -> Result<Lease, Error> {
        let values = vec![(":new_owner", AttributeValue::S(new_owner.to_owned()))];
        let set = ", #lease_owner = :new_owner";
        let remove = "#next_owner";
        match self
            .update(scope, shard_id, "take", expected_counter, None, set, remove, "", values, ReturnValue::AllNew)
            .await?
        {
            Some(item) => self.decode(&item),
            None => Err(refused(self, scope, shard_id, "take", expected_counter).await),
        }
    }

    async fn request(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        expected_counter: u64,
        requester: &str,
    ) -> Result<Lease, Error> {
        let what = "handoff request";
        let values = vec![(":requester", AttributeValue::S(requester.to_owned()))];
        let set = ", #next_owner = :requester";
        match self
            .update(scope, shard_id, what, expected_counter, None, set, "", "", values, ReturnValue::AllNew)
            .await?
        {
            Some(item) => self.decode(&item),
            None => Err(refused(self, scope, shard_id, what, expected_counter).await),
        }
    }

    async fn renew(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        self.owner_update(scope, shard_id, "renewal", owner, counter, "", "").await
    }

    /// First an update that writes the checkpoint if it is newer than the stored one; if its condition fails, an
    /// update that only increments the counter if the stored checkpoint is at or after the new one. Both are
    /// conditional on the counter and owner, so whichever succeeds is fenced; if neither does, the lease changed.
    async fn checkpoint(
        &self,
        scope: &LeaseScope,
        shard_id: &str,
        owner: &str,
        counter: u64,
        checkpoint: &Checkpoint,
    ) -> Result<u64, Error> {
        let what = "checkpoint";
        let key = AttributeValue::S(sequence_key(checkpoint));
        let (set, remove, mut values) = match checkpoint {
            Checkpoint::ShardEnd => (
                // The last position stays in `sequence_number`, as in the checkpoint store.
                ", #sequence_key = :key, #finished = :true".to_owned(),
                "",
                vec![(":true", AttributeValue::Bool(true))],
            ),
            Checkpoint::At { sequence, sub_sequence } => {
                let mut set = ", #sequence_key = :key, #finished = :false, #sequence_number = :seq".to_owned();
                let mut values = vec![
                    (":false", AttributeValue::Bool(false)),
                    (":seq", AttributeValue::S(sequence.as_str().to_owned())),
                ];
                let remove = match sub_sequence {
                    Some(sub) => {
                        set.push_str(", #sub_sequence_number = :sub");
                        values.push((":sub", AttributeValue::N(sub.to_string())));
                        ""
                    }
                    None => "#sub_sequence_number",
                };
                (set, remove, values)
            }
        };
        values.push((":key", key.clone()));
        let newer = " AND (attribute_not_exists(#sequence_key) OR #sequence_key < :key)";
        let written = self
            .update(scope, shard_id, what, counter, Some(owner), &set, remove, newer, values, ReturnValue::UpdatedNew)
            .await?;
        if let Some(attributes) = written {
            return self.counter(&attributes, shard_id);
        }
        let not_newer = " AND #sequence_key >= :key";
        let values = vec![(":key", key)];
        let bumped = self
            .update(scope, shard_id, what, counter, Some(owner), "", "", not_newer, values, ReturnValue::UpdatedNew)
            .await?;
        match bumped {
            Some(attributes) => self.counter(&attributes, shard_id),
            None => Err(refused(self, scope, shard_id, what, counter).await),
        }
    }

    async fn release(&self, scope: &LeaseScope, shard_id: &str, owner: &str, counter: u64) -> Result<u64, Error> {
        self.owner_update(scope, shard_id, "release", owner, counter, "", "#lease_owner").await
    }

    async fn delete(&self, scope: &LeaseScope, shard_id: &str) -> Result<(), Error> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(SCOPE, AttributeValue::S(Self::partition_key(scope, shard_id)))
            .key(SHARD_ID, AttributeValue::S(shard_id.to_owned()))
            .send()
            .await
            .map(drop)
            .map_err(|err| self.error("deleting", shard_id, err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_unique_readable_and_apart_from_the_first_layout() {
        let cases = [
            (("billing", "orders"), "orders#billing#", "orders/billing"),
            (("a/b", "c"), "c#a%2Fb#", "c/a/b"),
            (("b", "c/a"), "c%2Fa#b#", "c%2Fa/b"),
            (("x", "y%2Fz"), "y%252Fz#x#", "y%252Fz/x"),
            (("x", "y/z"), "y%2Fz#x#", "y%2Fz/x"),
            (("a#01", "s"), "s#a%2301#", "s/a#01"),
            (("a", "s#01"), "s%2301#a#", "s#01/a"),
            (("billing", "#changes"), "%23changes#billing#", "#changes/billing"),
            (("", ""), "##", "/"),
        ];
        let mut seen = std::collections::HashSet::new();
        for ((group, stream), prefix, first) in cases {
            let scope = LeaseScope::new(group, stream);
            assert_eq!(first_layout_key(&scope), first, "{group:?} {stream:?}");
            for bucket in 0..LEASE_BUCKETS {
                let key = bucket_key(&scope, bucket);
                assert_eq!(key, format!("{prefix}{bucket:02}"), "{group:?} {stream:?}");
                assert!(!key.contains('/'), "{key}: every first-layout key has a '/'");
                assert!(seen.insert(key), "{group:?} {stream:?}: key not unique");
            }
            assert!(seen.insert(first.to_owned()), "{group:?} {stream:?}: first-layout key not unique");
        }
        let scope = LeaseScope::new("billing", "orders");
        let key = DynamoDbLeaseTable::partition_key(&scope, "shardId-000000000000");
        assert_eq!(key, bucket_key(&scope, lease_bucket("shardId-000000000000")));
    }

    /// The hash is part of the layout: these values must never change (computed independently, in Python, from the
    /// definition in `lease_bucket`'s docs).
    #[test]
    fn buckets_are_stable() {
        let cases = [
            ("", 6),
            ("shardId-000000000000", 15),
            ("shardId-000000000001", 28),
            ("shardId-000000000002", 27),
            ("shardId-000000004095", 25),
            ("orders", 25),
        ];
        for (shard, want) in cases {
            assert_eq!(lease_bucket(shard), want, "{shard:?}");
        }
    }

    /// 4,096 shard ids as Kinesis numbers them (and 4,096 children after them) fill every bucket evenly: within 25 %
    /// of the mean (a uniform random choice of bucket gives about 128 +/- 11).
    #[test]
    fn shard_ids_spread_evenly() {
        for range in [0..4096, 4096..8192] {
            let n = range.len();
            let mut counts = vec![0usize; LEASE_BUCKETS as usize];
            for i in range {
                counts[lease_bucket(&format!("shardId-{i:012}")) as usize] += 1;
            }
            let mean = n / LEASE_BUCKETS as usize;
            let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
            eprintln!("{n} ids: {min:?}..{max:?} per bucket (mean {mean})");
            assert!(counts.iter().all(|&c| c * 4 > mean * 3 && c * 4 < mean * 5), "{counts:?}");
        }
    }
}
