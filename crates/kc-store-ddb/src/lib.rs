//! DynamoDB checkpoint store for kinesis-consumer.
//!
//! Not implemented yet: this crate is filled by the issue "Checkpoint stores: kc-store-ddb, kc-store-postgres,
//! kc-store-mysql". It deliberately contains no code until then, so that nothing can depend on a fake store.
