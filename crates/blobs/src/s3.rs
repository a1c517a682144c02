//! Objects in an S3-compatible bucket, through `object_store`.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, PutPayload, RetryConfig, WriteMultipart};

use crate::config::S3Config;
use crate::{BlobError, ByteStream, Checker, Expect, ObjectInfo, Result, PART_SIZE};

/// How many parts of one multipart upload are in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

pub(crate) struct S3 {
    store: Arc<AmazonS3>,
    bucket: String,
    endpoint: String,
    timeout: Duration,
}

impl S3 {
    pub(crate) fn open(c: &S3Config) -> Result<S3> {
        let endpoint = c.endpoint.clone().unwrap_or_else(|| format!("https://s3.{}.amazonaws.com", c.region));
        let describe = format!("bucket '{}' at {endpoint}", c.bucket);
        let missing = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"].into_iter().filter(|k| std::env::var_os(k).is_none_or(|v| v.is_empty())).collect::<Vec<_>>();
        if !missing.is_empty() {
            return Err(BlobError::Invalid(format!("{describe} needs credentials: set {} in the environment", missing.join(" and "))));
        }
        let options = ClientOptions::new()
            .with_allow_http(endpoint.starts_with("http://"))
            .with_connect_timeout(c.timeout.min(Duration::from_secs(5)))
            .with_timeout(c.timeout);
        let retry = RetryConfig {
            backoff: BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(2), base: 2.0 },
            max_retries: 3,
            retry_timeout: c.timeout,
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&c.bucket)
            .with_region(&c.region)
            .with_access_key_id(std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default())
            .with_secret_access_key(std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default())
            .with_client_options(options)
            .with_retry(retry);
        if let Ok(token) = std::env::var("AWS_SESSION_TOKEN") {
            if !token.is_empty() {
                builder = builder.with_token(token);
            }
        }
        if let Some(e) = &c.endpoint {
            builder = builder.with_endpoint(e).with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| BlobError::Invalid(format!("{describe}: {e}")))?;
        Ok(S3 { store: Arc::new(store), bucket: c.bucket.clone(), endpoint, timeout: c.timeout })
    }

    pub(crate) fn describe(&self) -> String {
        format!("object store bucket '{}' at {}", self.bucket, self.endpoint)
    }

    fn error(&self, key: &str, e: object_store::Error) -> BlobError {
        match e {
            object_store::Error::NotFound { .. } => BlobError::NotFound(key.to_string()),
            e => BlobError::Unavailable { store: self.describe(), message: strip_secrets(&e.to_string()) },
        }
    }

    /// Runs one request (with its retries) under the deadline.
    async fn timed<T>(&self, key: &str, f: impl std::future::Future<Output = object_store::Result<T>>) -> Result<T> {
        // The client's own timeouts bound each attempt; this bounds the whole, retries included,
        // so a store that accepts connections and never answers cannot hang a caller.
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), f).await {
            Ok(r) => r.map_err(|e| self.error(key, e)),
            Err(_) => Err(BlobError::Timeout { store: self.describe(), secs: self.timeout.as_secs().max(1) }),
        }
    }

    /// One request that must find the bucket: a missing bucket, a wrong key or a dead endpoint
    /// fails the start with a clear message.
    pub(crate) async fn check(&self) -> Result<()> {
        match self.head(".ferry-check").await {
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn put(&self, key: &str, mut body: ByteStream, expect: Expect, max_len: Option<u64>) -> Result<u64> {
        let path = ObjectPath::from(key);
        let mut check = Checker::new(expect, max_len);
        let mut first = BytesMut::new();
        let mut ended = false;
        while first.len() < PART_SIZE {
            match body.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| BlobError::Io(format!("the upload was interrupted: {e}")))?;
                    check.update(&chunk)?;
                    first.extend_from_slice(&chunk);
                }
                None => {
                    ended = true;
                    break;
                }
            }
        }
        if ended {
            let len = check.finish()?;
            let payload = PutPayload::from(first.freeze());
            self.timed(key, self.store.put(&path, payload)).await?;
            return Ok(len);
        }
        // Large: a multipart upload, completed only once every byte arrived and checked.
        let upload = self.timed(key, self.store.put_multipart(&path)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let result: Result<u64> = async {
            writer.put(first.freeze());
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Io(format!("the upload was interrupted: {e}")))?;
                check.update(&chunk)?;
                self.timed(key, writer.wait_for_capacity(PARTS_IN_FLIGHT)).await?;
                writer.put(chunk);
            }
            check.finish()
        }
        .await;
        match result {
            Ok(len) => {
                self.timed(key, writer.finish()).await?;
                Ok(len)
            }
            Err(e) => {
                let _ = tokio::time::timeout(self.timeout, writer.abort()).await;
                Err(e)
            }
        }
    }

    /// The length, and the bytes as ranged reads of [`PART_SIZE`] one after another: each
    /// request is bounded by the deadline, however long the object.
    pub(crate) async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<(u64, ByteStream)> {
        let len = self.head(key).await?.ok_or_else(|| BlobError::NotFound(key.to_string()))?.size;
        let (start, end) = match range {
            Some(r) => (r.start.min(len), r.end.min(len)),
            None => (0, len),
        };
        let this = S3 { store: self.store.clone(), bucket: self.bucket.clone(), endpoint: self.endpoint.clone(), timeout: self.timeout };
        let key = key.to_string();
        let stream = futures::stream::try_unfold((this, start), move |(this, at)| {
            let key = key.clone();
            async move {
                if at >= end {
                    return Ok(None);
                }
                let to = (at + PART_SIZE as u64).min(end);
                let path = ObjectPath::from(key.as_str());
                let bytes: Bytes = this.timed(&key, this.store.get_range(&path, at..to)).await.map_err(BlobError::into_io)?;
                Ok(Some((bytes, (this, to))))
            }
        });
        Ok((len, stream.into_stream().boxed()))
    }

    pub(crate) async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        match self.timed(key, self.store.head(&ObjectPath::from(key))).await {
            Ok(m) => Ok(Some(ObjectInfo { key: key.to_string(), size: m.size, modified: m.last_modified.into() })),
            Err(BlobError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        match self.timed(key, self.store.delete(&ObjectPath::from(key))).await {
            Ok(()) | Err(BlobError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir = prefix.rsplit_once('/').map_or("", |(d, _)| d);
        let listing = self.store.list((!dir.is_empty()).then(|| ObjectPath::from(dir)).as_ref()).try_collect::<Vec<_>>();
        let metas = self.timed(prefix, listing).await?;
        Ok(metas
            .into_iter()
            .map(|m| ObjectInfo { key: m.location.to_string(), size: m.size, modified: m.last_modified.into() })
            .filter(|o| o.key.starts_with(prefix))
            .collect())
    }

    pub(crate) async fn presigned_get(&self, key: &str, ttl: Duration) -> Result<String> {
        let url = self.timed(key, self.store.signed_url(http::Method::GET, &ObjectPath::from(key), ttl)).await?;
        Ok(url.to_string())
    }
}

/// Error texts from the HTTP client may quote a request URL; its query (a signature) goes.
fn strip_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(q) = rest.find("X-Amz-") {
        out.push_str(&rest[..q]);
        out.push_str("X-Amz-…");
        rest = &rest[q..];
        let end = rest.find(|c: char| c.is_whitespace() || c == ')' || c == '"').unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}
