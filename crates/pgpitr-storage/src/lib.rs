//! Repository object storage.
