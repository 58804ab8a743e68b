//! Integration tests of pgpitr-storage against real backends: a temp
//! directory and a real S3 server (s3s-fs, started by pgpitr-testkit).
//! One file per capability.

mod common;
mod conformance;
mod errors;
mod faults;
mod placement;
mod proxy;
mod repo_url;
mod s3_upload;
