//! Test harness: real Postgres clusters and a real S3 server.
