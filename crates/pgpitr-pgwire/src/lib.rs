//! Replication-protocol client.
