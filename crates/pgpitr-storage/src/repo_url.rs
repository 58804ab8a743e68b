//! Repository locations as users write them, and opening them.
//!
//! Accepted forms:
//! - `/abs/path`, `relative/path` (resolved against the current directory),
//!   `file:///abs/path`;
//! - `s3://bucket[/prefix][?endpoint=URL&region=R&path-style=true|false&sse=…&wal-storage-class=…&backup-storage-class=…]`.
//!
//! Credentials are never part of a URL: they come from the standard AWS
//! chain. Error messages never repeat the input wholesale, so a secret
//! pasted by mistake is not echoed into logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Result, StorageError};
use crate::key::validate_key;
use crate::{LocalStorage, RetryPolicy, RetryingStorage, S3Options, S3Storage, Storage};

/// A parsed repository location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoUrl {
    /// A local directory (always absolute).
    Local(PathBuf),
    /// An S3 bucket and optional prefix.
    S3(S3Url),
}

/// The S3 part of a [`RepoUrl`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`.
    pub prefix: Option<String>,
    /// `?endpoint=`: an S3-compatible server such as `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    /// `?region=`.
    pub region: Option<String>,
    /// `?path-style=`; when absent, path-style is used exactly when an
    /// endpoint is overridden (here or by `AWS_ENDPOINT_URL[_S3]`).
    pub path_style: Option<bool>,
    /// `?sse=`: server-side encryption of every object: `AES256` (SSE-S3),
    /// `aws:kms` (SSE-KMS with the bucket's default key) or
    /// `aws:kms:<key ID or ARN>`.
    pub sse: Option<String>,
    /// `?wal-storage-class=` and `?backup-storage-class=`: the S3 storage
    /// class of WAL (and timeline histories) and of base backups.
    pub wal_storage_class: Option<String>,
    pub backup_storage_class: Option<String>,
}

fn invalid<T>(message: impl Into<String>) -> Result<T> {
    Err(StorageError::InvalidUrl { message: message.into() })
}

const NO_CREDENTIALS: &str = "credentials must not be embedded in the repository URL; provide them through the \
                              standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or IRSA)";

impl RepoUrl {
    /// Parses a repository location; see the module docs for the forms.
    pub fn parse(input: &str) -> Result<RepoUrl> {
        if input.is_empty() {
            return invalid("empty repository location");
        }
        if input.contains('\0') {
            return invalid("repository location contains a NUL byte");
        }
        if let Some(i) = input.find("://") {
            let scheme = &input[..i];
            if is_scheme(scheme) {
                return match scheme.to_ascii_lowercase().as_str() {
                    "s3" => parse_s3(&input[i + 3..]).map(RepoUrl::S3),
                    "file" => parse_file(input).map(RepoUrl::Local),
                    _ => invalid(format!(
                        "unsupported scheme {scheme:?}; use s3://bucket/prefix, file:///path or a directory path"
                    )),
                };
            }
        }
        let lower = input.to_ascii_lowercase();
        if lower.starts_with("s3:") || lower.starts_with("file:") {
            return invalid("expected s3://bucket/prefix or file:///path (missing \"//\")");
        }
        let path = Path::new(input);
        if path.is_absolute() {
            return Ok(RepoUrl::Local(path.to_owned()));
        }
        match std::env::current_dir() {
            Ok(cwd) => Ok(RepoUrl::Local(cwd.join(path))),
            Err(e) => invalid(format!("cannot resolve relative path: current directory unavailable: {e}")),
        }
    }
}

impl FromStr for RepoUrl {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self> {
        RepoUrl::parse(s)
    }
}

fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn parse_file(input: &str) -> Result<PathBuf> {
    let url = match url::Url::parse(input) {
        Ok(u) => u,
        Err(e) => return invalid(format!("invalid file URL: {e}")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return invalid("file URL must not contain a user name or password");
    }
    if url.host_str().is_some_and(|h| !h.is_empty() && h != "localhost") {
        return invalid("file URL must not name a host; use file:///absolute/path");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return invalid("file URL must not have a query (?) or fragment (#)");
    }
    match url.to_file_path() {
        Ok(p) => Ok(p),
        Err(()) => invalid("file URL does not name an absolute path; use file:///absolute/path"),
    }
}

fn parse_s3(rest: &str) -> Result<S3Url> {
    let (main, query) = match rest.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (rest, None),
    };
    if main.contains('@') {
        return invalid(NO_CREDENTIALS);
    }
    if rest.contains('#') {
        return invalid("s3 URL must not have a fragment (#)");
    }
    let (bucket, prefix) = match main.split_once('/') {
        Some((b, p)) => (b, p.trim_matches('/')),
        None => (main, ""),
    };
    if bucket.is_empty() {
        return invalid("missing bucket name; expected s3://bucket/prefix");
    }
    validate_bucket(bucket)?;
    let prefix = if prefix.is_empty() {
        None
    } else {
        if let Err(e) = validate_key(prefix) {
            return invalid(format!("bad key prefix: {e}"));
        }
        Some(prefix.to_owned())
    };
    let mut out = S3Url {
        bucket: bucket.to_owned(),
        prefix,
        endpoint: None,
        region: None,
        path_style: None,
        sse: None,
        wal_storage_class: None,
        backup_storage_class: None,
    };
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let dup = || invalid(format!("query parameter {k:?} given twice"));
        match k.as_ref() {
            "endpoint" => {
                if out.endpoint.is_some() {
                    return dup();
                }
                validate_endpoint(&v)?;
                out.endpoint = Some(v.into_owned());
            }
            "region" => {
                if out.region.is_some() {
                    return dup();
                }
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
                    return invalid(format!("invalid region {v:?}; expected e.g. us-east-1"));
                }
                out.region = Some(v.into_owned());
            }
            "path-style" => {
                if out.path_style.is_some() {
                    return dup();
                }
                out.path_style = Some(match v.as_ref() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => return invalid("path-style must be true or false"),
                });
            }
            "sse" => {
                if out.sse.is_some() {
                    return dup();
                }
                let ok = v == "AES256" || v == "aws:kms" || v.strip_prefix("aws:kms:").is_some_and(|k| !k.is_empty());
                if !ok {
                    return invalid(format!("sse must be AES256, aws:kms or aws:kms:<key ID or ARN>, not {v:?}"));
                }
                out.sse = Some(v.into_owned());
            }
            "wal-storage-class" | "backup-storage-class" => {
                let slot =
                    if k == "wal-storage-class" { &mut out.wal_storage_class } else { &mut out.backup_storage_class };
                if slot.is_some() {
                    return dup();
                }
                if v.is_empty() || !v.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    return invalid(format!("{k} must be an S3 storage class such as STANDARD_IA, not {v:?}"));
                }
                *slot = Some(v.into_owned());
            }
            key if looks_like_credential(key) => return invalid(NO_CREDENTIALS),
            key => {
                return invalid(format!(
                    "unknown query parameter {key:?} in s3 URL; expected endpoint, region, path-style, sse, \
                     wal-storage-class or backup-storage-class"
                ));
            }
        }
    }
    Ok(out)
}

fn looks_like_credential(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["key", "secret", "token", "password", "credential"].iter().any(|w| k.contains(w))
}

/// Checks an S3 bucket name against the AWS naming rules.
pub(crate) fn validate_bucket(bucket: &str) -> Result<()> {
    let bad = |why: &str| invalid(format!("invalid bucket name {bucket:?}: {why}"));
    if bucket.len() < 3 || bucket.len() > 63 {
        return bad("must be 3 to 63 characters long");
    }
    if !bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-') {
        return bad("only lowercase letters, digits, '.' and '-' are allowed");
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(bucket.chars().next()) || !edge_ok(bucket.chars().last()) {
        return bad("must start and end with a letter or digit");
    }
    if bucket.contains("..") {
        return bad("must not contain \"..\"");
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return bad("must not look like an IP address");
    }
    Ok(())
}

/// Checks an endpoint override: an http(s) URL with a host and no
/// credentials, query or fragment. Never echoes the value.
pub(crate) fn validate_endpoint(endpoint: &str) -> Result<()> {
    let url = match url::Url::parse(endpoint) {
        Ok(u) => u,
        Err(e) => return invalid(format!("endpoint is not a valid URL: {e}")),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return invalid(NO_CREDENTIALS);
    }
    if !matches!(url.scheme(), "http" | "https") {
        return invalid("endpoint must start with http:// or https://");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return invalid("endpoint has no host");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return invalid("endpoint must not have a query or fragment");
    }
    Ok(())
}

fn env_endpoint() -> bool {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"].iter().any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

impl S3Url {
    /// Backend options for this location (credentials from the AWS chain).
    pub fn options(&self) -> S3Options {
        let path_style = self.path_style.unwrap_or(self.endpoint.is_some() || env_endpoint());
        S3Options {
            prefix: self.prefix.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style,
            sse: self.sse.clone(),
            wal_storage_class: self.wal_storage_class.clone(),
            backup_storage_class: self.backup_storage_class.clone(),
            ..S3Options::new(self.bucket.clone())
        }
    }
}

/// Escapes what would change meaning inside a query value.
fn query_value(v: &str) -> String {
    v.replace('%', "%25").replace('&', "%26").replace('+', "%2B").replace('#', "%23").replace(' ', "%20")
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        if let Some(p) = &self.prefix {
            write!(f, "/{p}")?;
        }
        let mut params = Vec::new();
        if let Some(e) = &self.endpoint {
            params.push(format!("endpoint={}", query_value(e)));
        }
        if let Some(r) = &self.region {
            params.push(format!("region={r}"));
        }
        if let Some(p) = self.path_style {
            params.push(format!("path-style={p}"));
        }
        if let Some(v) = &self.sse {
            params.push(format!("sse={}", query_value(v)));
        }
        if let Some(c) = &self.wal_storage_class {
            params.push(format!("wal-storage-class={c}"));
        }
        if let Some(c) = &self.backup_storage_class {
            params.push(format!("backup-storage-class={c}"));
        }
        if !params.is_empty() {
            write!(f, "?{}", params.join("&"))?;
        }
        Ok(())
    }
}

impl fmt::Display for RepoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoUrl::Local(p) => write!(f, "{}", p.display()),
            RepoUrl::S3(s) => s.fmt(f),
        }
    }
}

/// The storage at `url` behind retries. Commands open it through
/// `pgpitr_repo::connect`, which adds the write check where they write.
pub async fn connect(url: &RepoUrl, policy: RetryPolicy) -> Result<Arc<dyn Storage>> {
    Ok(match url {
        RepoUrl::Local(path) => Arc::new(RetryingStorage::new(LocalStorage::new(path), policy)),
        RepoUrl::S3(s3) => Arc::new(RetryingStorage::new(S3Storage::new(s3.options()).await?, policy)),
    })
}
