//! Blobs: payloads too large for a gRPC message (function arguments and results over 2 MiB,
//! 8 KiB for `.spawn`; mount files of 4 MiB or more) travel over plain HTTP instead.
//!
//! The client asks `BlobCreate` for an upload URL, `PUT`s the bytes there and then names the
//! blob id in the message that needed it; a reader asks `BlobGet` for a download URL and `GET`s
//! it. These are S3 presigned-URL semantics, which Ferry serves itself from a second listener on
//! the gRPC server's host: URLs carry an HMAC token over (blob id, verb, expiry) under a key
//! made at start-up, so they cannot be guessed or reused after they expire.
//!
//! The bytes live in Ferry's blob store (`ferry-blobs`: the data dir or a bucket): the object
//! `blobs/<id>.meta` records the length and hashes `BlobCreate` declared, and `blobs/<id>` holds
//! the bytes once an upload matched them (a reader never sees half a blob). Blobs over 1 GiB
//! arrive in parts (`blobs/.<id>.part<n>`, with their MD5 in `….etag`), which the completion
//! request joins, as in S3's multipart uploads. With a bucket, `BlobGet` answers a presigned
//! URL of the bucket itself, so a container on another host fetches the bytes from there.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ferry_blobs::{BlobError, Blobs, Expect};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::Router;
use base64::Engine;
use ferry_proto::api;
use futures::{StreamExt, TryStreamExt};
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};
use tonic::{Request, Response as GrpcResponse, Status};

use crate::service::{ModalService, Rpc};
use crate::status::invalid;

/// Blobs above this size are uploaded in parts: the client never sends more in one PUT
/// (`MULTIPART_UPLOAD_THRESHOLD` in its `blob_utils.py`). It declares a placeholder MD5 for
/// larger mount files, so these are checked part by part (each part's MD5 is its ETag, which
/// the client verifies and lists back), not against the declared hashes.
const MULTIPART_UPLOAD_THRESHOLD: u64 = 1024 * 1024 * 1024;

/// The length of each part of a multipart upload but the last.
const PART_LENGTH: u64 = 128 * 1024 * 1024;

/// The largest blob accepted: 8192 parts, whose URLs still fit in one `BlobCreate` answer.
const MAX_BLOB_LENGTH: u64 = 1024 * 1024 * 1024 * 1024;

/// How long an upload or download URL stays valid.
const URL_LIFETIME: Duration = Duration::from_secs(3600);

/// Uploaded blobs are deleted this long after their upload: long enough to fetch the result of
/// a spawned call days later. Blobs never uploaded go once their upload URL has expired.
const BLOB_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The blob endpoint of one running server.
pub(crate) struct BlobStore {
    blobs: Blobs,
    key: [u8; 32],
    /// `http://host:port` of the blob listener, as clients and containers reach it.
    pub(crate) base_url: String,
    /// Volume blocks, served from the same listener (`volumes.rs`).
    pub(crate) volume_blocks: Arc<dyn ferry_volumes::BlockStore>,
}

/// What `BlobCreate` declared; an upload must match it exactly.
#[derive(Debug, PartialEq)]
struct BlobMeta {
    length: u64,
    md5: [u8; 16],
    /// Absent when the client did not send one.
    sha256: Option<[u8; 32]>,
}

/// The blob endpoints of the servers in this process, by data dir. The service handlers find
/// theirs here because the blob listener is started next to, not inside, the `ModalService`.
static STORES: LazyLock<Mutex<HashMap<PathBuf, Arc<BlobStore>>>> = LazyLock::new(Default::default);

/// The running blob listener; dropping it stops the listener and forgets the endpoint.
pub(crate) struct BlobServer {
    data_dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BlobServer {
    fn drop(&mut self) {
        self.task.abort();
        STORES.lock().unwrap().remove(&self.data_dir);
    }
}

/// Binds a free port on `ip` (the gRPC listener's address) and serves blob uploads and
/// downloads there. URLs name the host of `public_url`, so they reach this machine the way the
/// gRPC server is reached.
///
/// The client refuses to upload to a host that is neither `localhost` nor a private or
/// loopback IP address (`use_md5` in `blob_utils.py` raises "Unknown S3 host"), so a
/// `public_url` with a DNS name other than `localhost` cannot carry blobs. The blob listener
/// speaks plain HTTP, also when the gRPC server uses TLS.
pub(crate) async fn spawn_blob_server(
    data_dir: &Path,
    blobs: Blobs,
    volume_blocks: Arc<dyn ferry_volumes::BlockStore>,
    ip: IpAddr,
    public_url: &str,
) -> anyhow::Result<BlobServer> {
    if let Some(dir) = blobs.local_path("blobs") {
        std::fs::create_dir_all(&dir).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        remove_partial_uploads(&dir);
    }
    let listener = crate::bind(SocketAddr::new(ip, 0)).await?;
    let port = listener.local_addr()?.port();
    let mut key = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut key[..]);
    let store = Arc::new(BlobStore { blobs, key, base_url: base_url(public_url, ip, port), volume_blocks });
    tracing::info!(url = %store.base_url, "serving blobs");
    STORES.lock().unwrap().insert(data_dir.to_path_buf(), store.clone());
    let sweep = store.blobs.clone();
    let router = Router::new()
        .route("/blobs/{id}", put(put_blob).get(get_blob))
        .route("/blobs/{id}/parts/{n}", put(put_part))
        .route("/blobs/{id}/complete", post(complete_multipart))
        .route("/volumes/blocks/{hash}", put(crate::volumes::put_block).get(crate::volumes::get_block))
        .with_state(store);
    let task = tokio::spawn(async move {
        let serve = async {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!("blob server stopped: {e}");
            }
        };
        tokio::join!(serve, sweep_expired(sweep));
    });
    Ok(BlobServer { data_dir: data_dir.to_path_buf(), task })
}

/// The base URL blob transfers use for this data dir's server, once it is serving.
pub(crate) fn base_url_of(data_dir: &Path) -> Option<String> {
    STORES.lock().unwrap().get(data_dir).map(|s| s.base_url.clone())
}

/// `http://<host of public_url>:<port>`; the listener's own address when there is no public URL.
fn base_url(public_url: &str, ip: IpAddr, port: u16) -> String {
    let authority = public_url.split_once("://").map_or(public_url, |(_, rest)| rest);
    let authority = authority.split(['/', '?']).next().unwrap_or("");
    let host = if let Some(end) = authority.strip_prefix('[').and_then(|a| a.find(']')) {
        &authority[..end + 2]
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    if host.is_empty() {
        let ip = match ip {
            IpAddr::V4(a) if a.is_unspecified() => "127.0.0.1".to_string(),
            IpAddr::V6(a) if a.is_unspecified() => "[::1]".to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
            IpAddr::V4(a) => a.to_string(),
        };
        format!("http://{ip}:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

/// Deletes expired blobs now and every hour.
async fn sweep_expired(blobs: Blobs) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match remove_expired(&blobs, SystemTime::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("deleted {n} expired blobs"),
            Err(e) => tracing::warn!("cannot sweep expired blobs: {e}"),
        }
    }
}

/// Removes blobs uploaded more than [`BLOB_RETENTION`] before `now`, and records of blobs whose
/// upload URL expired unused; returns how many blobs went.
async fn remove_expired(blobs: &Blobs, now: SystemTime) -> Result<usize, BlobError> {
    let objects = blobs.list("blobs/").await?;
    let age = |t: SystemTime| now.duration_since(t).ok();
    let by_key: HashMap<&str, &ferry_blobs::ObjectInfo> = objects.iter().map(|o| (o.key.as_str(), o)).collect();
    let mut removed = 0;
    for o in &objects {
        let Some(id) = o.key.strip_prefix("blobs/").and_then(|n| n.strip_suffix(".meta")).filter(|id| valid_id(id)) else { continue };
        let bytes = bytes_key(id);
        let expired = match by_key.get(bytes.as_str()) {
            Some(b) => age(b.modified).is_some_and(|a| a > BLOB_RETENTION),
            None => age(o.modified).is_some_and(|created| created > URL_LIFETIME),
        };
        if expired {
            let parts = format!("blobs/.{id}.part");
            for part in objects.iter().filter(|p| p.key.starts_with(&parts)) {
                let _ = blobs.delete(&part.key).await;
            }
            blobs.delete(&bytes).await?;
            blobs.delete(&o.key).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Uploads cut short by a previous run leave temporary files behind.
fn remove_partial_uploads(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

pub(crate) fn store_of(s: &ModalService) -> Result<Arc<BlobStore>, Status> {
    STORES
        .lock()
        .unwrap()
        .get(s.store.data_dir())
        .cloned()
        .ok_or_else(|| Status::unavailable("Ferry's blob endpoint is not running"))
}

/// Blob ids are ours (`bl-` and letters or digits), so they are safe as file names.
fn valid_id(id: &str) -> bool {
    id.len() > 3 && id.len() < 64 && id.starts_with("bl-") && id[3..].bytes().all(|b| b.is_ascii_alphanumeric())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn bytes_key(id: &str) -> String {
    format!("blobs/{id}")
}

fn meta_key(id: &str) -> String {
    format!("blobs/{id}.meta")
}

/// Part `n` (from 1) of a multipart upload, and the object recording its MD5 (its ETag).
fn part_key(id: &str, n: u64) -> String {
    format!("blobs/.{id}.part{n}")
}

fn part_etag_key(id: &str, n: u64) -> String {
    format!("blobs/.{id}.part{n}.etag")
}

/// The gRPC status for a blob store failure: an unreachable or slow object store is
/// UNAVAILABLE or DEADLINE_EXCEEDED, naming it.
pub(crate) fn blob_status(what: &str, e: BlobError) -> Status {
    match e {
        BlobError::NotFound(_) => Status::not_found(format!("{what}: not found")),
        BlobError::Timeout { .. } => Status::deadline_exceeded(format!("{what}: {e}")),
        BlobError::Unavailable { .. } => Status::unavailable(format!("{what}: {e}")),
        BlobError::DiskFull(_) => Status::resource_exhausted(format!("{what}: {e}")),
        BlobError::Invalid(_) => Status::invalid_argument(format!("{what}: {e}")),
        BlobError::Io(_) => Status::internal(format!("{what}: {e}")),
    }
}

impl BlobStore {

    fn mac(&self, id: &str, verb: &str, expires: u64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(format!("{id}\n{verb}\n{expires}").as_bytes());
        mac
    }

    /// A URL that allows `verb` (`GET`, `PUT`) on blob `id` until it expires.
    fn url(&self, id: &str, verb: &str) -> String {
        self.signed(id, verb, "")
    }

    /// The URL for uploading part `n` (from 1) of a multipart upload.
    fn part_url(&self, id: &str, n: u64) -> String {
        self.signed(id, &format!("PUT part {n}"), &format!("/parts/{n}"))
    }

    /// The URL that joins the parts of a multipart upload.
    fn completion_url(&self, id: &str) -> String {
        self.signed(id, "POST complete", "/complete")
    }

    fn signed(&self, id: &str, verb: &str, subpath: &str) -> String {
        format!("{}/blobs/{id}{subpath}?token={}", self.base_url, self.token(id, verb))
    }

    /// The `token=` value that allows `verb` on `id` until it expires.
    pub(crate) fn token(&self, id: &str, verb: &str) -> String {
        let expires = unix_now() + URL_LIFETIME.as_secs();
        let sig = hex::encode(self.mac(id, verb, expires).finalize().into_bytes());
        format!("{expires}.{sig}")
    }

    /// Checks a URL's `token=<expiry>.<hex HMAC>` query parameter for `verb` on `id`.
    pub(crate) fn check_token(&self, id: &str, verb: &str, uri: &Uri) -> Result<(), HttpError> {
        let denied = |why: &str| HttpError(StatusCode::FORBIDDEN, format!("blob URL refused: {why}"));
        let token = uri
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .ok_or_else(|| denied("it has no token"))?;
        let (expires, sig) = token.split_once('.').ok_or_else(|| denied("malformed token"))?;
        let expires: u64 = expires.parse().map_err(|_| denied("malformed token"))?;
        let sig = hex::decode(sig).map_err(|_| denied("malformed token"))?;
        self.mac(id, verb, expires).verify_slice(&sig).map_err(|_| denied("invalid token"))?;
        if expires < unix_now() {
            return Err(denied("the URL has expired; ask for a new one"));
        }
        Ok(())
    }

    async fn read_meta(&self, id: &str) -> Result<Option<BlobMeta>, BlobError> {
        match self.blobs.read_all(&meta_key(id)).await {
            Ok(text) => Ok(BlobMeta::parse(&String::from_utf8_lossy(&text))),
            Err(BlobError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn write_meta(&self, id: &str, meta: &BlobMeta) -> Result<(), BlobError> {
        self.blobs.put_bytes(&meta_key(id), meta.to_text().into()).await.map(|_| ())
    }
}

impl BlobMeta {
    /// One line: `<length> <md5 hex> <sha256 hex or ->`.
    fn to_text(&self) -> String {
        let sha = self.sha256.map_or("-".to_string(), hex::encode);
        format!("{} {} {sha}\n", self.length, hex::encode(self.md5))
    }

    fn parse(text: &str) -> Option<BlobMeta> {
        let mut parts = text.split_whitespace();
        let length = parts.next()?.parse().ok()?;
        let md5 = hex::decode(parts.next()?).ok()?.try_into().ok()?;
        let sha256 = match parts.next()? {
            "-" => None,
            h => Some(hex::decode(h).ok()?.try_into().ok()?),
        };
        Some(BlobMeta { length, md5, sha256 })
    }

    fn is_multipart(&self) -> bool {
        self.length > MULTIPART_UPLOAD_THRESHOLD
    }

    fn parts(&self) -> u64 {
        self.length.div_ceil(PART_LENGTH)
    }

    /// The length of part `n` (from 1): all are [`PART_LENGTH`] but the last.
    fn part_length(&self, n: u64) -> u64 {
        PART_LENGTH.min(self.length - (n - 1) * PART_LENGTH)
    }
}

pub(crate) async fn create(s: &ModalService, r: Request<api::BlobCreateRequest>) -> Rpc<api::BlobCreateResponse> {
    let req = r.into_inner();
    let blobs = store_of(s)?;
    if req.content_length < 0 {
        return Err(invalid("content_length may not be negative"));
    }
    if req.content_length as u64 > MAX_BLOB_LENGTH {
        return Err(invalid("Ferry stores blobs of at most 1 TiB"));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let md5: [u8; 16] = b64
        .decode(&req.content_md5)
        .ok()
        .and_then(|d| d.try_into().ok())
        .ok_or_else(|| invalid("content_md5 must be the base64 MD5 of the content"))?;
    let sha256 = if req.content_sha256_base64.is_empty() {
        None
    } else {
        Some(
            b64.decode(&req.content_sha256_base64)
                .ok()
                .and_then(|d| d.try_into().ok())
                .ok_or_else(|| invalid("content_sha256_base64 must be the base64 SHA-256 of the content"))?,
        )
    };
    let id = ferry_store::new_id("bl");
    let meta = BlobMeta { length: req.content_length as u64, md5, sha256 };
    blobs.write_meta(&id, &meta).await.map_err(|e| blob_status(&format!("cannot record blob {id}"), e))?;
    use api::blob_create_response::UploadTypesOneof;
    let upload = if meta.is_multipart() {
        UploadTypesOneof::Multiparts(api::MultiPartUploadList {
            items: vec![api::MultiPartUpload {
                part_length: PART_LENGTH as i64,
                upload_urls: (1..=meta.parts()).map(|n| blobs.part_url(&id, n)).collect(),
                completion_url: blobs.completion_url(&id),
            }],
        })
    } else {
        UploadTypesOneof::UploadUrls(api::UploadUrlList { items: vec![blobs.url(&id, "PUT")] })
    };
    Ok(GrpcResponse::new(api::BlobCreateResponse {
        blob_ids: vec![id],
        upload_types_oneof: Some(upload),
        ..Default::default()
    }))
}

pub(crate) async fn get(s: &ModalService, r: Request<api::BlobGetRequest>) -> Rpc<api::BlobGetResponse> {
    let from_container = matches!(crate::service::principal(&r), ferry_store::Principal::Task { .. });
    let req = r.into_inner();
    let blobs = store_of(s)?;
    if !valid_id(&req.blob_id) {
        return Err(invalid(format!("'{}' is not a blob id", req.blob_id)));
    }
    match blobs.read_meta(&req.blob_id).await {
        Ok(Some(_)) => {}
        Ok(None) => return Err(Status::not_found(format!("blob {} not found", req.blob_id))),
        Err(e) => return Err(blob_status(&format!("cannot read blob {}", req.blob_id), e)),
    }
    // A bucket signs a URL of its own for clients; containers, whose network namespace reaches
    // only what Ferry serves into it, and the data dir's blobs go through Ferry's blob endpoint.
    if from_container {
        return Ok(GrpcResponse::new(api::BlobGetResponse { download_url: blobs.url(&req.blob_id, "GET") }));
    }
    let download_url = match blobs.blobs.presigned_get(&bytes_key(&req.blob_id), URL_LIFETIME).await {
        Ok(Some(url)) => url,
        Ok(None) => blobs.url(&req.blob_id, "GET"),
        Err(e) => return Err(blob_status(&format!("cannot sign a URL for blob {}", req.blob_id), e)),
    };
    Ok(GrpcResponse::new(api::BlobGetResponse { download_url }))
}

/// The uploaded bytes of blob `id`, for RPCs that name a blob in place of inline data.
pub(crate) async fn read(s: &ModalService, id: &str) -> Result<Vec<u8>, Status> {
    let blobs = store_of(s)?;
    if !valid_id(id) {
        return Err(invalid(format!("'{id}' is not a blob id")));
    }
    match blobs.blobs.read_all(&bytes_key(id)).await {
        Ok(bytes) => Ok(bytes.to_vec()),
        Err(BlobError::NotFound(_)) => Err(Status::not_found(format!("blob {id} not found or not uploaded yet"))),
        Err(e) => Err(blob_status(&format!("cannot read blob {id}"), e)),
    }
}

/// The uploaded bytes of blob `id` as a stream, for RPCs that store them elsewhere.
pub(crate) async fn stream(s: &ModalService, id: &str) -> Result<ferry_blobs::ByteStream, Status> {
    let blobs = store_of(s)?;
    if !valid_id(id) {
        return Err(invalid(format!("'{id}' is not a blob id")));
    }
    match blobs.blobs.get(&bytes_key(id)).await {
        Ok((_, body)) => Ok(body),
        Err(BlobError::NotFound(_)) => Err(Status::not_found(format!("blob {id} not found or not uploaded yet"))),
        Err(e) => Err(blob_status(&format!("cannot read blob {id}"), e)),
    }
}

/// Copies an open host file into a new blob (for RPCs that answer large contents by blob id).
pub(crate) async fn put_file(s: &ModalService, file: std::fs::File) -> Result<String, Status> {
    let blobs = store_of(s)?;
    let id = ferry_store::new_id("bl");
    let (length, (md5, sha256)) = blobs
        .blobs
        .put_from_writer(&bytes_key(&id), move |out| {
            use std::io::Read;
            let (mut md5, mut sha) = (Md5::new(), Sha256::new());
            let (mut file, mut buf) = (file, vec![0u8; 1 << 20]);
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                md5.update(&buf[..n]);
                sha.update(&buf[..n]);
                out.write_all(&buf[..n])?;
            }
            Ok((md5.finalize().into(), sha.finalize().into()))
        })
        .await
        .map_err(|e| blob_status(&format!("cannot write blob {id}"), e))?;
    let meta = BlobMeta { length, md5, sha256: Some(sha256) };
    blobs.write_meta(&id, &meta).await.map_err(|e| blob_status(&format!("cannot record blob {id}"), e))?;
    Ok(id)
}

/// An HTTP error with a message the client shows ("Put to url ... failed with status 400: ...").
pub(crate) struct HttpError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn store_error(what: &str, e: BlobError) -> HttpError {
    let code = match &e {
        BlobError::NotFound(_) => StatusCode::NOT_FOUND,
        BlobError::Invalid(_) => StatusCode::BAD_REQUEST,
        BlobError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        BlobError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        BlobError::DiskFull(_) => StatusCode::INSUFFICIENT_STORAGE,
        BlobError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if code.is_server_error() {
        tracing::error!("{what}: {e}");
    }
    HttpError(code, format!("{what}: {e}"))
}

/// The declared length and hashes of blob `id`, for a request bearing a valid token for `verb`.
async fn authorize(blobs: &BlobStore, id: &str, verb: &str, uri: &Uri) -> Result<BlobMeta, HttpError> {
    if !valid_id(id) {
        return Err(HttpError(StatusCode::NOT_FOUND, format!("no blob {id}")));
    }
    blobs.check_token(id, verb, uri)?;
    blobs
        .read_meta(id)
        .await
        .map_err(|e| store_error("cannot read blob metadata", e))?
        .ok_or_else(|| HttpError(StatusCode::NOT_FOUND, format!("no blob {id}")))
}

fn bad_request(message: String) -> HttpError {
    HttpError(StatusCode::BAD_REQUEST, message)
}

fn etag_response(etag: &str, body: String) -> Response {
    ([(header::ETAG, format!("\"{etag}\""))], body).into_response()
}

/// `PUT /blobs/<id>?token=…`: stores the body if it is exactly what `BlobCreate` declared, and
/// answers its MD5 as the `ETag`, which the client compares with its own.
async fn put_blob(State(blobs): State<Arc<BlobStore>>, UrlPath(id): UrlPath<String>, uri: Uri, body: Body) -> Result<Response, HttpError> {
    let meta = authorize(&blobs, &id, "PUT", &uri).await?;
    if meta.is_multipart() {
        return Err(bad_request(format!("blob {id} is over 1 GiB and must be uploaded in parts")));
    }
    let md5 = receive(&blobs, body, &bytes_key(&id), meta.length, meta.sha256, Some(meta.md5)).await?;
    if md5 != meta.md5 {
        let _ = blobs.blobs.delete(&bytes_key(&id)).await;
        return Err(bad_request(format!(
            "The MD5 of the upload ({}) does not match the content_md5 declared for blob {id} ({})",
            hex::encode(md5),
            hex::encode(meta.md5)
        )));
    }
    Ok(etag_response(&hex::encode(md5), String::new()))
}

/// `PUT /blobs/<id>/parts/<n>?token=…`: stores part `n` of a multipart upload; its `ETag` is
/// the part's MD5, which the completion request lists back.
async fn put_part(
    State(blobs): State<Arc<BlobStore>>,
    UrlPath((id, n)): UrlPath<(String, u64)>,
    uri: Uri,
    body: Body,
) -> Result<Response, HttpError> {
    let meta = authorize(&blobs, &id, &format!("PUT part {n}"), &uri).await?;
    if !meta.is_multipart() || n == 0 || n > meta.parts() {
        return Err(HttpError(StatusCode::NOT_FOUND, format!("blob {id} has no part {n}")));
    }
    let length = meta.part_length(n);
    let md5 = receive(&blobs, body, &part_key(&id, n), length, None, None).await?;
    let etag = hex::encode(md5);
    blobs.blobs.put_bytes(&part_etag_key(&id, n), etag.clone().into()).await.map_err(|e| store_error("cannot record the part", e))?;
    Ok(etag_response(&etag, String::new()))
}

/// Streams `body` into the object `key` while hashing it; stores it only if it is `length`
/// bytes (and hashes to `sha256` when given). Returns its MD5. A refused upload is told why:
/// its length first, then its MD5 (`md5`, when declared), then its SHA-256.
async fn receive(
    blobs: &BlobStore,
    body: Body,
    key: &str,
    length: u64,
    sha256: Option<[u8; 32]>,
    md5_declared: Option<[u8; 16]>,
) -> Result<[u8; 16], HttpError> {
    let md5 = Arc::new(Mutex::new((Md5::new(), 0u64)));
    let hasher = md5.clone();
    let stream = body
        .into_data_stream()
        .map(move |c| {
            let c = c.map_err(|e| std::io::Error::other(format!("upload interrupted: {e}")))?;
            let mut h = hasher.lock().unwrap();
            h.0.update(&c);
            h.1 += c.len() as u64;
            Ok(c)
        })
        .boxed();
    let expect = sha256.map_or(Expect::Nothing, Expect::Sha256);
    let received = match blobs.blobs.put_checked(key, stream, expect, Some(length)).await {
        Ok(n) => n,
        Err(BlobError::Invalid(m)) if m.contains("longer than") => {
            return Err(bad_request(format!("the upload was declared as {length} bytes; it is longer")))
        }
        Err(BlobError::Invalid(_)) => {
            let (hasher, received) = std::mem::take(&mut *md5.lock().unwrap());
            let actual: [u8; 16] = hasher.finalize().into();
            return Err(bad_request(if received != length {
                format!("the upload was declared as {length} bytes; received {received}")
            } else if md5_declared.is_some_and(|m| m != actual) {
                format!("The MD5 of the upload ({}) does not match the content_md5 declared for {key}", hex::encode(actual))
            } else {
                format!("The SHA-256 of the upload does not match the one declared for {key}")
            }));
        }
        Err(BlobError::Io(m)) if m.contains("interrupted") => return Err(bad_request(m)),
        Err(e) => return Err(store_error("cannot store the upload", e)),
    };
    if received != length {
        let _ = blobs.blobs.delete(key).await;
        return Err(bad_request(format!("the upload was declared as {length} bytes; received {received}")));
    }
    let md5: [u8; 16] = std::mem::take(&mut *md5.lock().unwrap()).0.finalize().into();
    Ok(md5)
}

/// `POST /blobs/<id>/complete?token=…`: joins the uploaded parts in order. The body is S3's
/// `<CompleteMultipartUpload>` listing each part's number and `ETag`; the answer must contain
/// the multipart `ETag`, the MD5 of the parts' MD5s followed by `-<number of parts>`.
async fn complete_multipart(
    State(blobs): State<Arc<BlobStore>>,
    UrlPath(id): UrlPath<String>,
    uri: Uri,
    body: String,
) -> Result<Response, HttpError> {
    let meta = authorize(&blobs, &id, "POST complete", &uri).await?;
    if !meta.is_multipart() {
        return Err(bad_request(format!("blob {id} is not a multipart upload")));
    }
    let etags = parse_completion(&body)
        .ok_or_else(|| bad_request("the body is not a <CompleteMultipartUpload> document".to_string()))?;
    let listed: Vec<u64> = etags.iter().map(|(n, _)| *n).collect();
    if listed != (1..=meta.parts()).collect::<Vec<_>>() {
        return Err(bad_request(format!("blob {id} has {} parts; the completion must list each once, in order", meta.parts())));
    }
    let etags: Vec<String> = etags.into_iter().map(|(_, etag)| etag).collect();
    let etag = join_parts(&blobs, &id, &meta, &etags).await?;
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<CompleteMultipartUploadResult><ETag>&quot;{etag}&quot;</ETag></CompleteMultipartUploadResult>"
    );
    Ok(etag_response(&etag, body))
}

/// `(part number, ETag without quotes)` for each `<Part>` of a completion request.
fn parse_completion(xml: &str) -> Option<Vec<(u64, String)>> {
    let inner = |text: &str, tag: &str| -> Option<String> {
        let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
        let end = start + text[start..].find(&format!("</{tag}>"))?;
        Some(text[start..end].trim().replace("&quot;", "\"").trim_matches('"').to_string())
    };
    if !xml.contains("<CompleteMultipartUpload") {
        return None;
    }
    xml.split("<Part>")
        .skip(1)
        .map(|part| Some((inner(part, "PartNumber")?.parse().ok()?, inner(part, "ETag")?)))
        .collect()
}

/// Concatenates the parts of blob `id` that carry the listed ETags (each part's MD5, checked
/// when it was uploaded) into its bytes object, streamed; returns the multipart ETag.
async fn join_parts(blobs: &BlobStore, id: &str, meta: &BlobMeta, etags: &[String]) -> Result<String, HttpError> {
    let mut part_md5s = Vec::with_capacity(16 * etags.len());
    for (n, etag) in (1..).zip(etags) {
        let md5 = hex::decode(etag)
            .ok()
            .filter(|d| d.len() == 16 && etag.bytes().all(|b| !b.is_ascii_uppercase()))
            .ok_or_else(|| bad_request(format!("part {n}'s ETag '{etag}' is not an MD5 in lowercase hex")))?;
        let recorded = match blobs.blobs.read_all(&part_etag_key(id, n)).await {
            Ok(r) => r,
            Err(BlobError::NotFound(_)) => return Err(bad_request(format!("part {n} of blob {id} was not uploaded"))),
            Err(e) => return Err(store_error("cannot read a part", e)),
        };
        if recorded.as_ref() != etag.as_bytes() {
            return Err(bad_request(format!("part {n} of blob {id} with ETag {etag} was not uploaded")));
        }
        part_md5s.extend_from_slice(&md5);
    }
    let parts: Vec<String> = (1..=etags.len() as u64).map(|n| part_key(id, n)).collect();
    let store = blobs.blobs.clone();
    let joined = futures::stream::iter(parts)
        .then(move |key| {
            let store = store.clone();
            async move { store.get(&key).await.map(|(_, body)| body).map_err(BlobError::into_io) }
        })
        .try_flatten()
        .boxed();
    let length = blobs.blobs.put(&bytes_key(id), joined).await.map_err(|e| store_error("cannot join parts", e))?;
    if length != meta.length {
        let _ = blobs.blobs.delete(&bytes_key(id)).await;
        return Err(bad_request(format!("the parts of blob {id} hold {length} bytes, not the declared {}", meta.length)));
    }
    for n in 1..=etags.len() as u64 {
        let _ = blobs.blobs.delete(&part_key(id, n)).await;
        let _ = blobs.blobs.delete(&part_etag_key(id, n)).await;
    }
    Ok(format!("{}-{}", hex::encode(Md5::digest(&part_md5s)), etags.len()))
}

/// `GET /blobs/<id>?token=…`: streams the uploaded bytes.
async fn get_blob(State(blobs): State<Arc<BlobStore>>, UrlPath(id): UrlPath<String>, uri: Uri) -> Result<Response, HttpError> {
    if !valid_id(&id) {
        return Err(HttpError(StatusCode::NOT_FOUND, format!("no blob {id}")));
    }
    blobs.check_token(&id, "GET", &uri)?;
    let (length, body) = match blobs.blobs.get(&bytes_key(&id)).await {
        Ok(found) => found,
        Err(BlobError::NotFound(_)) => return Err(HttpError(StatusCode::NOT_FOUND, format!("blob {id} not found or not uploaded yet"))),
        Err(e) => return Err(store_error("cannot read blob", e)),
    };
    Ok((
        [(header::CONTENT_LENGTH, length.to_string()), (header::CONTENT_TYPE, "application/octet-stream".to_string())],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_keeps_the_public_host() {
        let v4: IpAddr = "0.0.0.0".parse().unwrap();
        let check = |public: &str, want: &str| assert_eq!(base_url(public, v4, 7000), want, "{public}");
        check("http://127.0.0.1:50051", "http://127.0.0.1:7000");
        check("https://10.1.2.3:443/", "http://10.1.2.3:7000");
        check("http://localhost", "http://localhost:7000");
        check("http://[::1]:50051", "http://[::1]:7000");
        check("", "http://127.0.0.1:7000");
    }

    #[test]
    fn meta_round_trips() {
        for sha256 in [None, Some([7u8; 32])] {
            let meta = BlobMeta { length: 5 << 20, md5: [1; 16], sha256 };
            assert_eq!(BlobMeta::parse(&meta.to_text()), Some(meta));
        }
        assert_eq!(BlobMeta::parse("12 zz -"), None);
    }

    #[test]
    fn parts_cover_the_blob() {
        let meta = BlobMeta { length: 2 * PART_LENGTH + 1, md5: [0; 16], sha256: None };
        assert!(meta.is_multipart() == (meta.length > MULTIPART_UPLOAD_THRESHOLD));
        assert_eq!(meta.parts(), 3);
        assert_eq!((1..=3).map(|n| meta.part_length(n)).collect::<Vec<_>>(), [PART_LENGTH, PART_LENGTH, 1]);
    }

    #[test]
    fn completion_lists_parts_and_etags() {
        // As the client writes it, and as S3 documents it (quotes escaped).
        let client = "<CompleteMultipartUpload>\n<Part>\n<PartNumber>1</PartNumber>\n<ETag>\"ab\"</ETag>\n</Part>\n\
                      <Part>\n<PartNumber>2</PartNumber>\n<ETag>\"cd\"</ETag>\n</Part>\n</CompleteMultipartUpload>";
        assert_eq!(parse_completion(client), Some(vec![(1, "ab".into()), (2, "cd".into())]));
        let escaped = "<CompleteMultipartUpload><Part><ETag>&quot;ef&quot;</ETag><PartNumber>7</PartNumber></Part></CompleteMultipartUpload>";
        assert_eq!(parse_completion(escaped), Some(vec![(7, "ef".into())]));
        assert_eq!(parse_completion("<Part><PartNumber>x</PartNumber><ETag>a</ETag></Part>"), None);
        assert_eq!(parse_completion("<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part></CompleteMultipartUpload>"), None);
    }

    #[tokio::test]
    async fn expired_blobs_are_removed() {
        let dir = std::env::temp_dir().join(ferry_store::new_id("ferry-blobs-test"));
        let blobs = Blobs::local(&dir);
        for id in ["bl-uploaded", "bl-pending"] {
            blobs.put_bytes(&meta_key(id), "1 00000000000000000000000000000000 -\n".into()).await.unwrap();
        }
        blobs.put_bytes(&bytes_key("bl-uploaded"), "x".into()).await.unwrap();
        let now = SystemTime::now();
        assert_eq!(remove_expired(&blobs, now).await.unwrap(), 0);
        assert_eq!(remove_expired(&blobs, now + URL_LIFETIME + Duration::from_secs(60)).await.unwrap(), 1);
        assert!(dir.join("blobs/bl-uploaded.meta").exists() && !dir.join("blobs/bl-pending.meta").exists());
        assert_eq!(remove_expired(&blobs, now + BLOB_RETENTION + Duration::from_secs(60)).await.unwrap(), 1);
        assert_eq!(std::fs::read_dir(dir.join("blobs")).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_bind_id_verb_and_expiry() {
        let blobs = BlobStore {
            blobs: Blobs::local(Path::new("/nonexistent")),
            key: [3; 32],
            base_url: "http://h:1".into(),
            volume_blocks: Arc::new(ferry_volumes::BlobBlockStore::local(Path::new("/nonexistent"))),
        };
        let url: Uri = blobs.url("bl-a", "PUT").parse().unwrap();
        assert!(blobs.check_token("bl-a", "PUT", &url).is_ok());
        assert!(blobs.check_token("bl-a", "GET", &url).is_err());
        assert!(blobs.check_token("bl-b", "PUT", &url).is_err());
        let later = url.to_string().replacen("?token=1", "?token=2", 1).parse().unwrap();
        assert!(blobs.check_token("bl-a", "PUT", &later).is_err());
        let expired = format!("/blobs/bl-a?token=5.{}", hex::encode(blobs.mac("bl-a", "PUT", 5).finalize().into_bytes()));
        let err = blobs.check_token("bl-a", "PUT", &expired.parse().unwrap()).unwrap_err();
        assert!(err.0 == StatusCode::FORBIDDEN && err.1.contains("expired"));
    }
}
