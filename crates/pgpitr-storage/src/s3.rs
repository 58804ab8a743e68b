//! S3 backend (AWS S3 and S3-compatible servers) on the AWS SDK.
//!
//! The SDK's own retries are disabled: [`crate::RetryingStorage`] decides,
//! with one policy for every backend, and attempts do not multiply.
//! Timeouts (connect 5 s, 60 s per attempt) turn a dead endpoint into a
//! transient error instead of a hang.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier, ServerSideEncryption, StorageClass,
};
use aws_smithy_http_client::tls;
use bytes::{Bytes, BytesMut};
use tokio::task::JoinSet;

use crate::error::{Op, Result, StorageError, one_line};
use crate::key::{validate_key, validate_prefix};
use crate::repo_url::{validate_bucket, validate_endpoint};
use crate::{ListPage, ObjectMeta, ObjectStream, PutOutcome, Storage, Upload, check_page_size, summarize_failures};

/// Smallest part S3 accepts for all but the last part of a multipart upload.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Default multipart part size.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
const MAX_PART_SIZE: usize = 5 * 1024 * 1024 * 1024;
const MAX_PARTS: i32 = 10_000;
/// DeleteObjects takes at most 1000 keys per request.
const DELETE_BATCH: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach a bucket. Credentials come from the standard AWS chain
/// (environment, profile, web identity / IRSA, ECS, IMDS) unless
/// `static_credentials` is set, which is meant for tests and embedding only.
#[derive(Clone)]
pub struct S3Options {
    pub bucket: String,
    /// Key prefix inside the bucket (no leading or trailing `/` needed).
    pub prefix: Option<String>,
    /// Endpoint override, e.g. `http://127.0.0.1:9000`. Without it the SDK
    /// uses `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` or AWS itself.
    pub endpoint: Option<String>,
    /// Region; without it `AWS_REGION`, the profile, then `us-east-1`.
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most
    /// S3-compatible servers need.
    pub path_style: bool,
    /// (access key id, secret key). Never set from the command line.
    pub static_credentials: Option<(String, String)>,
    /// Multipart part size; clamped to 5 MiB..=5 GiB.
    pub part_size: usize,
    /// Parts of one upload sent at the same time (at least 1).
    pub upload_concurrency: usize,
    /// Server-side encryption: `AES256`, `aws:kms` or `aws:kms:<key>`.
    pub sse: Option<String>,
    /// Storage classes of WAL (`wal/`, `timelines/`) and of base backups
    /// (`backups/`); the bucket's default elsewhere.
    pub wal_storage_class: Option<String>,
    pub backup_storage_class: Option<String>,
}

impl S3Options {
    /// Options for `bucket` with defaults: no prefix, no endpoint override,
    /// virtual-hosted addressing, 8 MiB parts, 4 parts in flight.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Options {
            bucket: bucket.into(),
            prefix: None,
            endpoint: None,
            region: None,
            path_style: false,
            static_credentials: None,
            part_size: DEFAULT_PART_SIZE,
            upload_concurrency: 4,
            sse: None,
            wal_storage_class: None,
            backup_storage_class: None,
        }
    }
}

impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("static_credentials", &self.static_credentials.as_ref().map(|_| "<redacted>"))
            .field("part_size", &self.part_size)
            .field("upload_concurrency", &self.upload_concurrency)
            .finish()
    }
}

/// A repository in an S3 bucket, under an optional key prefix.
#[derive(Clone)]
pub struct S3Storage {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    bucket: String,
    /// `""` or `"some/prefix/"`.
    prefix: String,
    /// `s3://bucket/prefix`, plus the endpoint when overridden.
    location: String,
    /// Where the bucket is looked for, for "bucket does not exist" errors.
    endpoint: String,
    part_size: usize,
    concurrency: usize,
    placement: Placement,
}

/// Where S3 keeps each object: its server-side encryption and storage
/// class, sent with every PUT and multipart creation.
#[derive(Debug, Clone, Default)]
struct Placement {
    sse: Option<ServerSideEncryption>,
    sse_kms_key: Option<String>,
    wal_class: Option<StorageClass>,
    backup_class: Option<StorageClass>,
}

impl Placement {
    fn new(opts: &S3Options) -> Placement {
        let (sse, sse_kms_key) = match opts.sse.as_deref() {
            None => (None, None),
            Some("AES256") => (Some(ServerSideEncryption::Aes256), None),
            Some(v) => (Some(ServerSideEncryption::AwsKms), v.strip_prefix("aws:kms:").map(str::to_owned)),
        };
        Placement {
            sse,
            sse_kms_key,
            wal_class: opts.wal_storage_class.as_deref().map(StorageClass::from),
            backup_class: opts.backup_storage_class.as_deref().map(StorageClass::from),
        }
    }

    fn class(&self, key: &str) -> Option<StorageClass> {
        if key.starts_with("wal/") || key.starts_with("timelines/") {
            self.wal_class.clone()
        } else if key.starts_with("backups/") {
            self.backup_class.clone()
        } else {
            None
        }
    }
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage").field("location", &self.shared.location).finish_non_exhaustive()
    }
}

impl S3Storage {
    /// HEAD of `key`, with its stored checksums when `checksums` says so.
    async fn head_object(
        &self,
        key: &str,
        checksums: Option<aws_sdk_s3::types::ChecksumMode>,
    ) -> Result<aws_sdk_s3::operation::head_object::HeadObjectOutput> {
        validate_key(key)?;
        let s = &self.shared;
        crate::requests::count(Op::Head);
        s.client
            .head_object()
            .bucket(&s.bucket)
            .key(s.full_key(key))
            .set_checksum_mode(checksums)
            .send()
            .await
            .map_err(|e| s.sdk_error(Op::Head, key, &e))
    }
    /// Builds the client. Does no network I/O apart from what the region
    /// and credential providers need; call [`Storage::check`] to verify the
    /// bucket is reachable.
    pub async fn new(opts: S3Options) -> Result<Self> {
        validate_bucket(&opts.bucket)?;
        let prefix = opts.prefix.as_deref().unwrap_or("").trim_matches('/');
        if !prefix.is_empty() {
            validate_key(prefix).map_err(|e| StorageError::InvalidUrl { message: format!("bad key prefix: {e}") })?;
        }
        if let Some(ep) = &opts.endpoint {
            validate_endpoint(ep)?;
        }

        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let explicit_region = opts.region.clone().map(Region::new);
        // With an endpoint override there is no AWS region to discover from
        // instance metadata; do not spend seconds probing IMDS for one.
        let region = if opts.endpoint.is_some() {
            RegionProviderChain::first_try(explicit_region)
                .or_else(aws_config::environment::EnvironmentVariableRegionProvider::new())
                .or_else(aws_config::profile::region::ProfileFileRegionProvider::new())
                .or_else(Region::from_static("us-east-1"))
        } else {
            RegionProviderChain::first_try(explicit_region)
                .or_default_provider()
                .or_else(Region::from_static("us-east-1"))
        };
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(region)
            // Our RetryPolicy is the only retry loop (see module docs).
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            );
        if let Some(ep) = &opts.endpoint {
            loader = loader.endpoint_url(ep);
        }
        if let Some((access_key, secret_key)) = &opts.static_credentials {
            loader = loader.credentials_provider(Credentials::new(access_key, secret_key, None, None, "pgpitr-static"));
        }
        let sdk = loader.load().await;
        let conf = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(opts.path_style).build();
        let client = Client::from_conf(conf);

        let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".to_owned());
        let env_endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
        let endpoint =
            opts.endpoint.clone().or(env_endpoint).unwrap_or_else(|| format!("the AWS S3 endpoint of region {region}"));
        let mut location =
            if prefix.is_empty() { format!("s3://{}", opts.bucket) } else { format!("s3://{}/{prefix}", opts.bucket) };
        if let Some(ep) = &opts.endpoint {
            location.push_str(&format!(" at {ep}"));
        }
        let placement = Placement::new(&opts);
        Ok(S3Storage {
            shared: Arc::new(Shared {
                client,
                bucket: opts.bucket,
                prefix: if prefix.is_empty() { String::new() } else { format!("{prefix}/") },
                location,
                endpoint,
                part_size: opts.part_size.clamp(MIN_PART_SIZE, MAX_PART_SIZE),
                concurrency: opts.upload_concurrency.max(1),
                placement,
            }),
        })
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.shared.bucket
    }

    /// A listing with delimiter `/`, every page: the objects directly under
    /// `prefix`, and the "directories" below it.
    async fn delimited(&self, prefix: &str, op: Op) -> Result<(Vec<ObjectMeta>, Vec<String>)> {
        validate_prefix(prefix)?;
        let s = &self.shared;
        let (mut objects, mut dirs) = (Vec::new(), Vec::new());
        let mut token: Option<String> = None;
        loop {
            crate::requests::count(op);
            let page = s
                .client
                .list_objects_v2()
                .bucket(&s.bucket)
                .prefix(s.full_key(prefix))
                .delimiter("/")
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| s.sdk_error(op, prefix, &e))?;
            for obj in page.contents() {
                let Some(key) = obj.key().and_then(|k| s.strip(k)) else { continue };
                objects.push(ObjectMeta {
                    key: key.to_owned(),
                    size: size_of(op, key, &s.location, obj.size())?,
                    last_modified: system_time(obj.last_modified()),
                    etag: obj.e_tag().map(str::to_owned),
                });
            }
            for cp in page.common_prefixes() {
                let Some(dir) = cp.prefix().and_then(|p| p.strip_prefix(s.prefix.as_str())) else { continue };
                if dir.strip_suffix('/').is_some_and(|d| validate_key(d).is_ok()) {
                    dirs.push(dir.to_owned());
                }
            }
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(t)) => token = Some(t.to_owned()),
                (Some(true), None) => {
                    return Err(StorageError::permanent(
                        op,
                        prefix,
                        s.location.clone(),
                        "server returned a truncated listing without a continuation token",
                    ));
                }
                _ => break,
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        dirs.sort();
        dirs.dedup();
        Ok((objects, dirs))
    }
}

/// What an SDK error means for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    NotFound,
    BucketMissing,
    NoSuchUpload,
    PreconditionFailed,
    InvalidRange,
    AccessDenied,
    Permanent,
    Transient,
}

/// Classifies a service response by its error code, then its HTTP status.
fn classify(status: Option<u16>, code: Option<&str>) -> Kind {
    if let Some(code) = code {
        let kind = match code {
            "NoSuchKey" | "NotFound" => Some(Kind::NotFound),
            "NoSuchBucket" => Some(Kind::BucketMissing),
            "NoSuchUpload" => Some(Kind::NoSuchUpload),
            "PreconditionFailed" => Some(Kind::PreconditionFailed),
            "InvalidRange" => Some(Kind::InvalidRange),
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "AccountProblem"
            | "AllAccessDisabled"
            | "InvalidToken"
            | "InvalidSecurity"
            | "MissingSecurityHeader" => Some(Kind::AccessDenied),
            // Expired session credentials are refreshed by the provider, so a
            // later attempt can succeed.
            // (KMS, a JSON service, names them with an `Exception` suffix.)
            "ExpiredToken"
            | "ExpiredTokenException"
            | "KMSInternalException"
            | "DependencyTimeoutException"
            | "TokenRefreshRequired"
            | "RequestTimeout"
            | "SlowDown"
            | "InternalError"
            | "ServiceUnavailable"
            | "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "TooManyRequests"
            | "BandwidthLimitExceeded"
            | "OperationAborted"
            | "ConditionalRequestConflict" => Some(Kind::Transient),
            _ => None,
        };
        if let Some(kind) = kind {
            return kind;
        }
    }
    match status {
        Some(404) => Kind::NotFound,
        Some(412) => Kind::PreconditionFailed,
        Some(416) => Kind::InvalidRange,
        Some(401 | 403) => Kind::AccessDenied,
        // Timeout, conflict with a concurrent request, throttling.
        Some(408 | 409 | 429) => Kind::Transient,
        Some(400..=499) => Kind::Permanent,
        Some(_) | None => Kind::Transient,
    }
}

/// An SDK error reduced to a [`Kind`] and a one-line, secret-free message.
#[derive(Debug)]
struct Failure {
    kind: Kind,
    message: String,
}

fn failure<E>(err: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) if err.raw_response().is_some() => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            let code = err.code();
            let kind = if matches!(err, SdkError::ResponseError(_)) {
                // The response could not be parsed: a proxy page, a cut-off body.
                if status.is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429) {
                    classify(status, None)
                } else {
                    Kind::Transient
                }
            } else {
                classify(status, code)
            };
            let mut message = String::new();
            if let Some(s) = status {
                message.push_str(&format!("HTTP {s}"));
            }
            if let Some(c) = code {
                message.push_str(&format!(" {c}"));
            }
            match err.message() {
                Some(m) if !m.is_empty() => message.push_str(&format!(": {m}")),
                // A body the SDK could not read as this service's errors (a
                // proxy's page, an XML error from a JSON service): its gist.
                _ => match err.raw_response().and_then(|r| r.body().bytes()).and_then(body_gist) {
                    Some(gist) => message.push_str(&format!(": {gist}")),
                    None if matches!(err, SdkError::ResponseError(_)) => {
                        message.push_str(&format!(": {}", DisplayErrorContext(err)))
                    }
                    None => {}
                },
            }
            Failure { kind, message: one_line(message.trim_start()) }
        }
        SdkError::ConstructionFailure(_) => {
            Failure { kind: Kind::Permanent, message: one_line(DisplayErrorContext(err)) }
        }
        SdkError::DispatchFailure(d) if d.is_user() => {
            Failure { kind: Kind::Permanent, message: one_line(DisplayErrorContext(err)) }
        }
        // Connection refused/reset, DNS, TLS handshake, timeouts.
        _ => Failure { kind: Kind::Transient, message: one_line(DisplayErrorContext(err)) },
    }
}

/// The code and message of an XML error body, else its start.
fn body_gist(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let tag = |name: &str| {
        let start = text.find(&format!("<{name}>"))? + name.len() + 2;
        let len = text[start..].find(&format!("</{name}>"))?;
        let inner = text[start..start + len].trim();
        Some(inner.trim_start_matches("<![CDATA[").trim_end_matches("]]>").to_string())
    };
    let gist = match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (c, m) => c.or(m).unwrap_or_else(|| text.split_whitespace().collect::<Vec<_>>().join(" ")),
    };
    (!gist.is_empty()).then(|| gist.chars().take(300).collect())
}

/// An AWS SDK error of any service (S3, KMS) in pgpitr's terms: whether a
/// later attempt may succeed, and a one-line message without secrets.
pub fn aws_error<E>(err: &SdkError<E, HttpResponse>) -> (bool, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let f = failure(err);
    (matches!(f.kind, Kind::Transient), f.message)
}

impl Shared {
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn error(&self, op: Op, key: &str, f: Failure) -> StorageError {
        let loc = self.location.clone();
        match f.kind {
            Kind::NotFound => StorageError::not_found(op, key, loc),
            Kind::BucketMissing => StorageError::permanent(
                op,
                key,
                loc,
                format!("bucket {:?} does not exist at {} ({})", self.bucket, self.endpoint, f.message),
            ),
            Kind::AccessDenied => StorageError::permanent(
                op,
                key,
                loc,
                format!("access denied ({}); check credentials and bucket permissions", f.message),
            ),
            Kind::Transient => StorageError::transient(op, key, loc, f.message),
            Kind::NoSuchUpload | Kind::PreconditionFailed | Kind::InvalidRange | Kind::Permanent => {
                StorageError::permanent(op, key, loc, f.message)
            }
        }
    }

    fn sdk_error<E>(&self, op: Op, key: &str, err: &SdkError<E, HttpResponse>) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        self.error(op, key, failure(err))
    }

    async fn collect(&self, op: Op, key: &str, body: ByteStream) -> Result<Bytes> {
        body.collect().await.map(|d| d.into_bytes()).map_err(|e| {
            StorageError::transient(op, key, self.location.clone(), format!("reading body: {}", DisplayErrorContext(e)))
        })
    }

    /// Turns a listed full key back into a repository key; foreign objects
    /// (outside the prefix, or not valid keys) are skipped.
    fn strip<'a>(&self, full: &'a str) -> Option<&'a str> {
        let key = full.strip_prefix(self.prefix.as_str())?;
        validate_key(key).is_ok().then_some(key)
    }
}

fn system_time(t: Option<&aws_sdk_s3::primitives::DateTime>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(*t).ok())
}

fn size_of(op: Op, key: &str, location: &str, n: Option<i64>) -> Result<u64> {
    u64::try_from(n.unwrap_or(0))
        .map_err(|_| StorageError::permanent(op, key, location, format!("server reported a negative size {n:?}")))
}

#[async_trait]
impl Storage for S3Storage {
    fn describe(&self) -> String {
        self.shared.location.clone()
    }

    // Every PUT and part is sent with payload signing disabled: signing
    // hashes the whole body with SHA-256, a second pass over every byte of
    // WAL and backups. The body is still covered by the SDK's CRC32
    // checksum (verified by the server), by TLS on https endpoints, and by
    // the container's own CRCs, checked on every read.
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        validate_key(key)?;
        let s = &self.shared;
        crate::requests::count(Op::Put);
        let p = &s.placement;
        s.client
            .put_object()
            .bucket(&s.bucket)
            .key(s.full_key(key))
            .set_server_side_encryption(p.sse.clone())
            .set_ssekms_key_id(p.sse_kms_key.clone())
            .set_storage_class(p.class(key))
            .body(ByteStream::from(data))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| s.sdk_error(Op::Put, key, &e))?;
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<PutOutcome> {
        validate_key(key)?;
        let s = &self.shared;
        crate::requests::count(Op::PutIfAbsent);
        let p = &s.placement;
        let res = s
            .client
            .put_object()
            .bucket(&s.bucket)
            .key(s.full_key(key))
            .set_server_side_encryption(p.sse.clone())
            .set_ssekms_key_id(p.sse_kms_key.clone())
            .set_storage_class(p.class(key))
            .if_none_match("*")
            .body(ByteStream::from(data))
            .customize()
            .disable_payload_signing()
            .send()
            .await;
        match res {
            Ok(_) => Ok(PutOutcome::Created),
            Err(e) => {
                let f = failure(&e);
                if f.kind == Kind::PreconditionFailed {
                    Ok(PutOutcome::AlreadyExists)
                } else {
                    Err(s.error(Op::PutIfAbsent, key, f))
                }
            }
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        validate_key(key)?;
        let s = &self.shared;
        crate::requests::count(Op::Get);
        let out = s
            .client
            .get_object()
            .bucket(&s.bucket)
            .key(s.full_key(key))
            .send()
            .await
            .map_err(|e| s.sdk_error(Op::Get, key, &e))?;
        s.collect(Op::Get, key, out.body).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        validate_key(key)?;
        if range.start >= range.end {
            // Nothing to read, but a missing object must still be NotFound.
            self.head(key).await.map_err(|e| match e {
                StorageError::NotFound { key, location, .. } => {
                    StorageError::NotFound { op: Op::GetRange, key, location }
                }
                other => other,
            })?;
            return Ok(Bytes::new());
        }
        let s = &self.shared;
        // Some servers parse range bounds as signed 64-bit numbers; an end
        // beyond that means "to the end of the object" anyway.
        let header = if range.end > i64::MAX as u64 {
            format!("bytes={}-", range.start)
        } else {
            format!("bytes={}-{}", range.start, range.end - 1)
        };
        crate::requests::count(Op::GetRange);
        let res = s.client.get_object().bucket(&s.bucket).key(s.full_key(key)).range(header).send().await;
        let out = match res {
            Ok(out) => out,
            Err(e) => {
                let f = failure(&e);
                // 416: the object exists but starts before `range.start`.
                return if f.kind == Kind::InvalidRange {
                    Ok(Bytes::new())
                } else {
                    Err(s.error(Op::GetRange, key, f))
                };
            }
        };
        let ranged = out.content_range().is_some();
        let body = s.collect(Op::GetRange, key, out.body).await?;
        if ranged {
            return Ok(body);
        }
        // The server ignored the Range header and sent the whole object.
        let len = body.len() as u64;
        let start = range.start.min(len);
        let end = range.end.clamp(start, len);
        Ok(body.slice(usize::try_from(start).unwrap_or(0)..usize::try_from(end).unwrap_or(0)))
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectStream> {
        validate_key(key)?;
        let s = self.shared.clone();
        crate::requests::count(Op::GetStream);
        let out = s
            .client
            .get_object()
            .bucket(&s.bucket)
            .key(s.full_key(key))
            .send()
            .await
            .map_err(|e| s.sdk_error(Op::GetStream, key, &e))?;
        let key = key.to_owned();
        let stream = futures_util::stream::try_unfold((out.body, s, key), |(mut body, s, key)| async move {
            match body.try_next().await {
                Ok(Some(chunk)) => Ok(Some((chunk, (body, s, key)))),
                Ok(None) => Ok(None),
                Err(e) => Err(StorageError::transient(
                    Op::GetStream,
                    key.clone(),
                    s.location.clone(),
                    format!("reading body: {}", DisplayErrorContext(e)),
                )),
            }
        });
        Ok(Box::pin(stream))
    }

    async fn stored_checksum(&self, key: &str) -> Result<(u64, u32)> {
        let s = &self.shared;
        let out = self.head_object(key, Some(aws_sdk_s3::types::ChecksumMode::Enabled)).await?;
        let size = size_of(Op::Head, key, &s.location, out.content_length())?;
        // A multipart object's checksum covers its parts' checksums, not its bytes.
        let composite = out.checksum_type().is_some_and(|t| *t != aws_sdk_s3::types::ChecksumType::FullObject);
        match out.checksum_crc32().filter(|_| !composite).and_then(crc32_of_header) {
            Some(crc) => Ok((size, crc)),
            None => {
                let data = self.get(key).await?;
                Ok((data.len() as u64, crc32fast::hash(&data)))
            }
        }
    }

    fn s3_site(&self) -> Option<crate::S3Site> {
        let s = &self.shared;
        Some(crate::S3Site { endpoint: s.endpoint.clone(), bucket: s.bucket.clone(), prefix: s.prefix.clone() })
    }

    async fn copy_object(&self, from: &crate::S3Site, key: &str) -> Result<Option<String>> {
        validate_key(key)?;
        let s = &self.shared;
        crate::requests::count(Op::CopyObject);
        let p = &s.placement;
        let source = copy_source(&from.bucket, &format!("{}{key}", from.prefix));
        let out = s
            .client
            .copy_object()
            .bucket(&s.bucket)
            .key(s.full_key(key))
            .copy_source(source)
            // The copy's own CRC-32, computed by the server: what verifies
            // it where entity tags are no checksums (SSE-KMS).
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32)
            .set_server_side_encryption(p.sse.clone())
            .set_ssekms_key_id(p.sse_kms_key.clone())
            .set_storage_class(p.class(key))
            .send()
            .await
            .map_err(|e| s.sdk_error(Op::CopyObject, key, &e))?;
        Ok(out.copy_object_result().and_then(|r| r.e_tag()).map(str::to_owned))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let s = &self.shared;
        let out = self.head_object(key, None).await?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: size_of(Op::Head, key, &s.location, out.content_length())?,
            last_modified: system_time(out.last_modified()),
            etag: out.e_tag().map(str::to_owned),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list_page(prefix, after.as_deref(), crate::MAX_PAGE).await?;
            out.extend(page.objects);
            match page.next {
                // A server that ignored StartAfter would repeat itself forever.
                Some(next) if after.as_ref().is_none_or(|a| next > *a) => after = Some(next),
                Some(next) => {
                    return Err(StorageError::permanent(
                        Op::List,
                        prefix,
                        self.shared.location.clone(),
                        format!("the listing did not move past {next:?}: the server ignores StartAfter"),
                    ));
                }
                None => return Ok(out),
            }
        }
    }

    async fn list_page(&self, prefix: &str, start_after: Option<&str>, max: usize) -> Result<ListPage> {
        validate_prefix(prefix)?;
        let s = &self.shared;
        check_page_size(max, prefix, s.location.clone())?;
        crate::requests::count(Op::List);
        let page = s
            .client
            .list_objects_v2()
            .bucket(&s.bucket)
            .prefix(s.full_key(prefix))
            .set_start_after(start_after.map(|k| s.full_key(k)))
            .max_keys(max as i32)
            .send()
            .await
            .map_err(|e| s.sdk_error(Op::List, prefix, &e))?;
        let mut objects = Vec::new();
        for obj in page.contents() {
            let Some(key) = obj.key().and_then(|k| s.strip(k)) else { continue };
            objects.push(ObjectMeta {
                key: key.to_owned(),
                size: size_of(Op::List, key, &s.location, obj.size())?,
                last_modified: system_time(obj.last_modified()),
                etag: obj.e_tag().map(str::to_owned),
            });
        }
        let next = match page.is_truncated() {
            // The page's last key, even one skipped above, is where the next starts.
            Some(true) => {
                match page.contents().last().and_then(|o| o.key()).and_then(|k| k.strip_prefix(s.prefix.as_str())) {
                    Some(last) => Some(last.to_owned()),
                    None => {
                        return Err(StorageError::permanent(
                            Op::List,
                            prefix,
                            s.location.clone(),
                            "server returned a truncated listing page without keys",
                        ));
                    }
                }
            }
            _ => None,
        };
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(ListPage { objects, next })
    }

    async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self.delimited(prefix, Op::ListDirs).await?.1)
    }

    async fn list_shallow(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        Ok(self.delimited(prefix, Op::List).await?.0)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        validate_key(key)?;
        let s = &self.shared;
        crate::requests::count(Op::Delete);
        match s.client.delete_object().bucket(&s.bucket).key(s.full_key(key)).send().await {
            Ok(_) => Ok(()),
            Err(e) => match failure(&e) {
                f if f.kind == Kind::NotFound => Ok(()),
                f => Err(s.error(Op::Delete, key, f)),
            },
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            validate_key(key)?;
        }
        let s = &self.shared;
        let mut failures = Vec::new();
        let mut permanent = false;
        for batch in keys.chunks(DELETE_BATCH) {
            let ids = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(s.full_key(k)).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .and_then(|ids| Delete::builder().set_objects(Some(ids)).quiet(true).build())
                .map_err(|e| StorageError::permanent(Op::DeleteMany, "", s.location.clone(), e))?;
            crate::requests::count(Op::DeleteMany);
            let out = s
                .client
                .delete_objects()
                .bucket(&s.bucket)
                .delete(ids)
                .send()
                .await
                .map_err(|e| s.sdk_error(Op::DeleteMany, "", &e))?;
            for err in out.errors() {
                let kind = classify(None, err.code());
                if kind == Kind::NotFound {
                    continue;
                }
                permanent |= kind != Kind::Transient;
                let key = err.key().map(|k| k.strip_prefix(s.prefix.as_str()).unwrap_or(k)).unwrap_or("?");
                let what = match (err.code(), err.message()) {
                    (Some(c), Some(m)) => format!("{c}: {m}"),
                    (Some(c), None) => c.to_owned(),
                    (None, Some(m)) => m.to_owned(),
                    (None, None) => "unknown error".to_owned(),
                };
                failures.push((key.to_owned(), what));
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        let msg = summarize_failures(keys.len(), &failures);
        Err(if permanent {
            StorageError::permanent(Op::DeleteMany, "", s.location.clone(), msg)
        } else {
            StorageError::transient(Op::DeleteMany, "", s.location.clone(), msg)
        })
    }

    async fn start_upload(&self, key: &str) -> Result<Box<dyn Upload>> {
        validate_key(key)?;
        Ok(Box::new(S3Upload::new(self.shared.clone(), key)))
    }

    async fn check(&self) -> Result<()> {
        let s = &self.shared;
        crate::requests::count(Op::Check);
        match s.client.head_bucket().bucket(&s.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let mut f = failure(&e);
                let status = e.raw_response().map(|r| r.status().as_u16());
                if f.kind == Kind::NotFound {
                    f.kind = Kind::BucketMissing;
                } else if status == Some(301) {
                    f.kind = Kind::Permanent;
                    f.message = format!("{}: the bucket is in another region; set the region", f.message);
                }
                Err(s.error(Op::Check, "", f))
            }
        }
    }
}

/// Bytes waiting to become a part, kept as the caller's chunks so that
/// snapshotting and restoring after a failure costs no copy.
#[derive(Debug, Default, Clone)]
struct Chunks {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Chunks {
    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.chunks.push_back(b);
        }
    }

    /// Removes and returns the first `n` bytes (or all, if fewer).
    fn take(&mut self, n: usize) -> Bytes {
        let n = n.min(self.len);
        self.len -= n;
        if let Some(first) = self.chunks.front_mut()
            && first.len() >= n
        {
            let out = first.split_to(n);
            if first.is_empty() {
                self.chunks.pop_front();
            }
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let Some(mut c) = self.chunks.pop_front() else { break };
            let want = n - out.len();
            if c.len() > want {
                out.extend_from_slice(&c.split_to(want));
                self.chunks.push_front(c);
            } else {
                out.extend_from_slice(&c);
            }
        }
        out.freeze()
    }

    /// All bytes, without consuming them.
    fn concat(&self) -> Bytes {
        if self.chunks.len() == 1
            && let Some(only) = self.chunks.front()
        {
            return only.clone();
        }
        let mut out = BytesMut::with_capacity(self.len);
        for c in &self.chunks {
            out.extend_from_slice(c);
        }
        out.freeze()
    }
}

type PartResult = (i32, Bytes, Result<CompletedPart>);

/// Buffers up to one part, sends full parts in the background (at most
/// `concurrency` at once) and commits with CompleteMultipartUpload. An
/// object smaller than one part is sent with a single PUT instead.
///
/// A part that fails keeps its number and bytes and is sent again on the
/// next `put_part` / `try_complete` call, after its error has been
/// returned once (so the retry wrapper's backoff applies).
struct S3Upload {
    s: Arc<Shared>,
    key: String,
    full_key: String,
    buffer: Chunks,
    total: u64,
    upload_id: Option<String>,
    next_part: i32,
    done_parts: BTreeMap<i32, CompletedPart>,
    in_flight: JoinSet<PartResult>,
    failed_parts: Vec<(i32, Bytes)>,
    /// A transient part failure not reported yet.
    pending: Option<StorageError>,
    /// A permanent failure: the upload cannot succeed any more.
    fatal: Option<StorageError>,
    complete_attempts: u32,
    completed: Option<u64>,
    aborted: bool,
}

impl S3Upload {
    fn new(s: Arc<Shared>, key: &str) -> Self {
        S3Upload {
            full_key: s.full_key(key),
            s,
            key: key.to_owned(),
            buffer: Chunks::default(),
            total: 0,
            upload_id: None,
            next_part: 1,
            done_parts: BTreeMap::new(),
            in_flight: JoinSet::new(),
            failed_parts: Vec::new(),
            pending: None,
            fatal: None,
            complete_attempts: 0,
            completed: None,
            aborted: false,
        }
    }

    fn err(&self, op: Op, message: &str) -> StorageError {
        StorageError::permanent(op, self.key.clone(), self.s.location.clone(), message)
    }

    fn record(&mut self, res: std::result::Result<PartResult, tokio::task::JoinError>) {
        match res {
            Ok((n, _, Ok(part))) => {
                self.done_parts.insert(n, part);
            }
            Ok((n, body, Err(e))) => {
                self.failed_parts.push((n, body));
                if e.is_transient() {
                    self.pending = Some(e);
                } else {
                    self.fatal = Some(e);
                }
            }
            Err(e) => self.fatal = Some(self.err(Op::PutPart, &format!("part upload task failed: {e}"))),
        }
    }

    fn reap_finished(&mut self) {
        while let Some(res) = self.in_flight.try_join_next() {
            self.record(res);
        }
    }

    /// Returns the first error to report before doing anything else.
    fn take_error(&mut self) -> Option<StorageError> {
        if let Some(e) = &self.fatal {
            return Some(e.clone());
        }
        self.pending.take()
    }

    /// Waits until fewer than `concurrency` parts are in flight, recording
    /// the results of those that finish.
    async fn wait_for_slot(&mut self) {
        while self.in_flight.len() >= self.s.concurrency {
            if let Some(res) = self.in_flight.join_next().await {
                self.record(res);
            }
        }
    }

    /// Starts sending one part; call after [`S3Upload::wait_for_slot`].
    fn spawn_part(&mut self, number: i32, body: Bytes) {
        let (s, key, full_key) = (self.s.clone(), self.key.clone(), self.full_key.clone());
        let upload_id = self.upload_id.clone().unwrap_or_default();
        self.in_flight.spawn(async move {
            crate::requests::count(Op::PutPart);
            let res = s
                .client
                .upload_part()
                .bucket(&s.bucket)
                .key(&full_key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(body.clone()))
                .customize()
                .disable_payload_signing()
                .send()
                .await;
            let part = match res {
                Ok(out) => match out.e_tag() {
                    Some(etag) => Ok(CompletedPart::builder().part_number(number).e_tag(etag).build()),
                    None => Err(StorageError::permanent(
                        Op::PutPart,
                        key,
                        s.location.clone(),
                        format!("server returned no ETag for part {number}"),
                    )),
                },
                Err(e) => Err(s.sdk_error(Op::PutPart, &key, &e)),
            };
            (number, body, part)
        });
    }

    /// Cuts a part of up to `len` bytes off the buffer and starts sending it.
    async fn send_from_buffer(&mut self, len: usize) {
        self.wait_for_slot().await;
        // Nothing is taken before the wait, so no bytes are lost if the
        // caller drops this future while it waits.
        let body = self.buffer.take(len);
        let number = self.next_part;
        self.next_part += 1;
        self.spawn_part(number, body);
    }

    /// Sends the parts that failed before, each once; parts failing during
    /// this call wait for the next one (after its error has been reported).
    async fn resubmit_failed(&mut self) {
        for _ in 0..self.failed_parts.len() {
            self.wait_for_slot().await;
            if self.failed_parts.is_empty() {
                break;
            }
            let (number, body) = self.failed_parts.remove(0);
            self.spawn_part(number, body);
        }
    }

    async fn create_multipart(&mut self) -> Result<()> {
        let s = &self.s;
        crate::requests::count(Op::StartUpload);
        let out = s
            .client
            .create_multipart_upload()
            .bucket(&s.bucket)
            .key(&self.full_key)
            .set_server_side_encryption(s.placement.sse.clone())
            .set_ssekms_key_id(s.placement.sse_kms_key.clone())
            .set_storage_class(s.placement.class(&self.key))
            .send()
            .await
            .map_err(|e| s.sdk_error(Op::PutPart, &self.key, &e))?;
        match out.upload_id() {
            Some(id) => {
                self.upload_id = Some(id.to_owned());
                Ok(())
            }
            None => Err(self.err(Op::PutPart, "server returned no upload id")),
        }
    }

    async fn complete_multipart(&mut self) -> Result<()> {
        let s = self.s.clone();
        let parts: Vec<CompletedPart> = self.done_parts.values().cloned().collect();
        self.complete_attempts += 1;
        crate::requests::count(Op::CompleteUpload);
        let res = s
            .client
            .complete_multipart_upload()
            .bucket(&s.bucket)
            .key(&self.full_key)
            .upload_id(self.upload_id.clone().unwrap_or_default())
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await;
        let Err(e) = res else {
            tracing::debug!(key = %self.full_key, parts = self.done_parts.len(), bytes = self.total, "multipart upload completed");
            return Ok(());
        };
        let f = failure(&e);
        // An earlier attempt may have completed the upload even though its
        // response was lost; then the upload id is gone and the object has
        // our size.
        if f.kind == Kind::NoSuchUpload && self.complete_attempts > 1 {
            crate::requests::count(Op::Head);
            let head = s.client.head_object().bucket(&s.bucket).key(&self.full_key).send().await;
            if let Ok(h) = head
                && h.content_length().and_then(|n| u64::try_from(n).ok()) == Some(self.total)
            {
                return Ok(());
            }
        }
        Err(s.error(Op::CompleteUpload, &self.key, f))
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn put_part(&mut self, data: Bytes) -> Result<()> {
        if self.completed.is_some() || self.aborted {
            return Err(self.err(Op::PutPart, "upload already finished"));
        }
        self.reap_finished();
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        if data.is_empty() {
            return Ok(());
        }
        self.resubmit_failed().await;

        let part_size = self.s.part_size;
        let new_parts = (self.buffer.len + data.len()) / part_size;
        if new_parts > 0 {
            if i64::from(self.next_part) + new_parts as i64 - 1 > i64::from(MAX_PARTS) {
                return Err(self.err(
                    Op::PutPart,
                    &format!("object exceeds {MAX_PARTS} parts of {part_size} bytes; use a larger part size"),
                ));
            }
            if self.upload_id.is_none() {
                self.create_multipart().await?;
            }
        }
        // From here on `data` is accepted; failures of the parts cut from it
        // are reported by a later call and those parts are sent again.
        self.total += data.len() as u64;
        self.buffer.push(data);
        while self.buffer.len >= part_size {
            self.send_from_buffer(part_size).await;
        }
        Ok(())
    }

    async fn try_complete(&mut self) -> Result<u64> {
        if let Some(n) = self.completed {
            return Ok(n);
        }
        if self.aborted {
            return Err(self.err(Op::CompleteUpload, "upload was aborted"));
        }
        if let Some(e) = &self.fatal {
            return Err(e.clone());
        }
        if self.upload_id.is_none() {
            // Smaller than one part: a single PUT, which is atomic anyway.
            let s = &self.s;
            crate::requests::count(Op::Put);
            s.client
                .put_object()
                .bucket(&s.bucket)
                .key(&self.full_key)
                .set_server_side_encryption(s.placement.sse.clone())
                .set_ssekms_key_id(s.placement.sse_kms_key.clone())
                .set_storage_class(s.placement.class(&self.key))
                .body(ByteStream::from(self.buffer.concat()))
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| s.sdk_error(Op::CompleteUpload, &self.key, &e))?;
            self.buffer = Chunks::default();
            self.completed = Some(self.total);
            return Ok(self.total);
        }
        self.reap_finished();
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        self.resubmit_failed().await;
        if self.buffer.len > 0 {
            self.send_from_buffer(self.buffer.len).await;
        }
        while let Some(res) = self.in_flight.join_next().await {
            self.record(res);
        }
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        self.complete_multipart().await?;
        self.completed = Some(self.total);
        Ok(self.total)
    }

    async fn try_abort(&mut self) -> Result<()> {
        if self.completed.is_some() {
            return Err(self.err(Op::AbortUpload, "upload already completed"));
        }
        self.aborted = true;
        self.buffer = Chunks::default();
        self.failed_parts.clear();
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        let Some(id) = self.upload_id.clone() else { return Ok(()) };
        let s = &self.s;
        crate::requests::count(Op::AbortUpload);
        match s.client.abort_multipart_upload().bucket(&s.bucket).key(&self.full_key).upload_id(id).send().await {
            Ok(_) => {}
            Err(e) => match failure(&e) {
                f if matches!(f.kind, Kind::NoSuchUpload | Kind::NotFound) => {}
                f => return Err(s.error(Op::AbortUpload, &self.key, f)),
            },
        }
        // Only now is there nothing left for Drop to clean up.
        self.upload_id = None;
        Ok(())
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if self.completed.is_some() {
            return;
        }
        // Set until AbortMultipartUpload succeeded (also after a failed abort).
        let Some(id) = self.upload_id.take() else { return };
        // Dropping the JoinSet cancels part uploads; the incomplete upload is
        // invisible but billed, so abort it in the background. Parts still in
        // transit can outlive an abort; a bucket lifecycle rule
        // (AbortIncompleteMultipartUpload) is the backstop.
        let (s, full_key) = (self.s.clone(), self.full_key.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    crate::requests::count(Op::AbortUpload);
                    let res =
                        s.client.abort_multipart_upload().bucket(&s.bucket).key(&full_key).upload_id(id).send().await;
                    if let Err(e) = res {
                        tracing::warn!(key = %full_key, error = %DisplayErrorContext(e), "cannot abort dropped upload");
                    }
                });
            }
            Err(_) => tracing::warn!(key = %full_key, "upload dropped outside a runtime; not aborted"),
        }
    }
}

/// An `x-amz-checksum-crc32` value: 4 bytes, big-endian, in base64.
fn crc32_of_header(b64: &str) -> Option<u32> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let text = b64.as_bytes();
    if text.len() != 8 || &text[6..] != b"==" {
        return None;
    }
    let mut bits = 0u64;
    for &c in &text[..6] {
        bits = (bits << 6) | ALPHABET.iter().position(|&a| a == c)? as u64;
    }
    // 36 bits: the 32 of the value, then 4 zero bits.
    (bits & 0xf == 0).then_some((bits >> 4) as u32)
}

/// CopyObject's `x-amz-copy-source`: `bucket/key`, URL-encoded.
fn copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + key.len() + 1);
    for b in bucket.bytes().chain(std::iter::once(b'/')).chain(key.bytes()) {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_error_body_is_reduced_to_its_gist() {
        let xml = b"<?xml version=\"1.0\"?>\n<ErrorResponse><Errors><Error>\n  <Code>AccessDenied</Code>\n  \
                    <Message><![CDATA[User: u is not authorized]]></Message></Error></Errors></ErrorResponse>";
        assert_eq!(body_gist(xml).unwrap(), "AccessDenied: User: u is not authorized");
        assert_eq!(
            body_gist(b"<html>\n <body>Bad   gateway</body></html>").unwrap(),
            "<html> <body>Bad gateway</body></html>"
        );
        assert_eq!(body_gist(&[b'x'; 1000]).unwrap().len(), 300);
        assert_eq!(body_gist(b" \n "), None);
    }

    #[test]
    fn crc32_headers_decode() {
        // The CRC-32 of "123456789" is cbf43926.
        assert_eq!(crc32_of_header("y/Q5Jg=="), Some(0xcbf4_3926));
        assert_eq!(crc32_of_header("AAAAAA=="), Some(0));
        assert_eq!(crc32_of_header("y/Q5Jg==-2"), None);
        assert_eq!(crc32_of_header("y/Q5Jh=="), None, "stray low bits");
        assert_eq!(crc32_of_header("y/Q5J!=="), None);
    }

    #[test]
    fn copy_sources_are_encoded() {
        assert_eq!(copy_source("b", "p/wal/0000000100000000000000A1"), "b/p/wal/0000000100000000000000A1");
        assert_eq!(copy_source("b", "a b/ü+%"), "b/a%20b/%C3%BC%2B%25");
    }

    #[test]
    fn classification() {
        assert_eq!(classify(Some(404), Some("NoSuchKey")), Kind::NotFound);
        assert_eq!(classify(Some(404), None), Kind::NotFound);
        assert_eq!(classify(Some(404), Some("NoSuchBucket")), Kind::BucketMissing);
        assert_eq!(classify(Some(403), None), Kind::AccessDenied);
        assert_eq!(classify(Some(403), Some("SignatureDoesNotMatch")), Kind::AccessDenied);
        assert_eq!(classify(Some(403), Some("InvalidAccessKeyId")), Kind::AccessDenied);
        assert_eq!(classify(Some(400), Some("ExpiredToken")), Kind::Transient);
        assert_eq!(classify(Some(400), Some("ExpiredTokenException")), Kind::Transient);
        assert_eq!(classify(Some(400), Some("AccessDeniedException")), Kind::Permanent);
        assert_eq!(classify(Some(503), Some("SlowDown")), Kind::Transient);
        assert_eq!(classify(Some(500), None), Kind::Transient);
        assert_eq!(classify(Some(429), None), Kind::Transient);
        assert_eq!(classify(Some(400), Some("InvalidArgument")), Kind::Permanent);
        assert_eq!(classify(Some(412), None), Kind::PreconditionFailed);
        assert_eq!(classify(Some(416), Some("InvalidRange")), Kind::InvalidRange);
        assert_eq!(classify(Some(409), Some("ConditionalRequestConflict")), Kind::Transient);
        assert_eq!(classify(None, Some("InternalError")), Kind::Transient);
        assert_eq!(classify(None, Some("AccessDenied")), Kind::AccessDenied);
    }

    #[test]
    fn chunks_take_splits_and_joins() {
        let mut c = Chunks::default();
        c.push(Bytes::from_static(b"hello"));
        c.push(Bytes::new());
        c.push(Bytes::from_static(b" world"));
        assert_eq!(c.len, 11);
        let snapshot = c.clone();
        assert_eq!(&c.take(3)[..], b"hel");
        assert_eq!(&c.take(4)[..], b"lo w");
        assert_eq!(c.len, 4);
        assert_eq!(&c.concat()[..], b"orld");
        assert_eq!(&c.take(100)[..], b"orld");
        assert_eq!(c.len, 0);
        assert!(c.take(1).is_empty());
        // Taking from a clone leaves the snapshot intact.
        assert_eq!(&snapshot.concat()[..], b"hello world");
    }
}
