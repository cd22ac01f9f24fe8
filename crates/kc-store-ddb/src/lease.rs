//! [`DynamoDbLeaseTable`]: the lease table of consumer groups on a DynamoDB table.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use kc_checkpoint::lease::{creation_millis, from_millis, refused, Lease, LeaseScope, LeaseTable};
use kc_checkpoint::{Checkpoint, Error, ErrorKind};

use crate::{error, sequence_key, FINISHED, SEQUENCE_KEY, SEQUENCE_NUMBER, SHARD_ID, SUB_SEQUENCE_NUMBER};

/// Partition key: the scope, `{stream}/{group}` with `%` and `/` escaped in the stream name (see [`scope_key`]).
const SCOPE: &str = "scope";
const GROUP_NAME: &str = "group_name";
const STREAM_NAME: &str = "stream_name";
const OWNER: &str = "lease_owner";
const COUNTER: &str = "lease_counter";
const PARENTS: &str = "parents";
const NEXT_OWNER: &str = "next_owner";
const CREATED_AT: &str = "created_at_ms";

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
            .key(SCOPE, AttributeValue::S(scope_key(scope)))
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

/// The partition key of `scope`: the stream name with `%` written `%25` and `/` written `%2F`, then `/`, then the
/// group name. Kinesis stream names contain neither character, so the key of a real stream reads `orders/billing`;
/// the escaping makes the key unique for any pair of names (the first `/` ends the stream name).
fn scope_key(scope: &LeaseScope) -> String {
    let stream = scope.stream().replace('%', "%25").replace('/', "%2F");
    format!("{stream}/{}", scope.group())
}

#[async_trait]
impl LeaseTable for DynamoDbLeaseTable {
    async fn list(&self, scope: &LeaseScope) -> Result<Vec<Lease>, Error> {
        let mut leases = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#scope = :scope")
                .expression_attribute_names("#scope", SCOPE)
                .expression_attribute_values(":scope", AttributeValue::S(scope_key(scope)))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|err| {
                    error::from_sdk(
                        &format!(
                            "listing the leases of group {} on {} in table {}",
                            scope.group(),
                            scope.stream(),
                            self.table
                        ),
                        err,
                    )
                })?;
            for item in out.items() {
                leases.push(self.decode(item)?);
            }
            match out.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => return Ok(leases),
            }
        }
    }

    async fn get(&self, scope: &LeaseScope, shard_id: &str) -> Result<Option<Lease>, Error> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(SCOPE, AttributeValue::S(scope_key(scope)))
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
            .item(SCOPE, AttributeValue::S(scope_key(scope)))
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
            .key(SCOPE, AttributeValue::S(scope_key(scope)))
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
    fn scope_keys_are_unique_and_readable() {
        let cases = [
            (("billing", "orders"), "orders/billing"),
            (("a/b", "c"), "c/a/b"),
            (("b", "c/a"), "c%2Fa/b"),
            (("x", "y%2Fz"), "y%252Fz/x"),
            (("x", "y/z"), "y%2Fz/x"),
            (("", ""), "/"),
        ];
        let mut seen = std::collections::HashSet::new();
        for ((group, stream), want) in cases {
            let key = scope_key(&LeaseScope::new(group, stream));
            assert_eq!(key, want, "{group:?} {stream:?}");
            assert!(seen.insert(key), "{group:?} {stream:?}: key not unique");
        }
    }
}
