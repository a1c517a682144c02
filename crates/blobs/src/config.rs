//! `--storage`: where Ferry keeps bytes.

use std::time::Duration;

/// Where objects live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StorageConfig {
    /// Files under the data dir (the default).
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3(S3Config),
}

/// `s3://BUCKET?endpoint=URL&region=REGION&timeout=SECS`. Credentials come from the standard
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) environment, never
/// from the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// `http://host:port` of an S3-compatible server; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub region: String,
    /// The longest one request may take (and the budget for its retries).
    pub timeout: Duration,
}

impl std::str::FromStr for StorageConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.is_empty() || s == "local" || s == "data-dir" {
            return Ok(StorageConfig::Local);
        }
        let rest = s.strip_prefix("s3://").ok_or_else(|| {
            format!("storage '{s}' is neither `local` nor `s3://BUCKET?endpoint=URL&region=REGION`")
        })?;
        let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
        let bucket = bucket.trim_end_matches('/');
        if bucket.contains('@') || bucket.contains(':') {
            return Err("the storage URL must not carry credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into());
        }
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
        if bucket.len() < 3 || bucket.len() > 63 || !bucket.chars().all(valid) {
            return Err(format!("'{bucket}' is not a bucket name (3-63 lowercase letters, digits, '-' or '.')"));
        }
        let mut config = S3Config { bucket: bucket.to_string(), endpoint: None, region: "us-east-1".into(), timeout: Duration::from_secs(30) };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "endpoint" => {
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        return Err(format!("endpoint '{v}' must start with http:// or https://"));
                    }
                    if v.split_once("://").is_some_and(|(_, rest)| rest.split('/').next().unwrap_or("").contains('@')) {
                        return Err("the endpoint must not carry credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into());
                    }
                    config.endpoint = Some(v.trim_end_matches('/').to_string());
                }
                "region" => config.region = v,
                "timeout" => {
                    let secs: f64 = v.trim_end_matches('s').parse().map_err(|_| format!("timeout '{v}' is not a number of seconds"))?;
                    if !(0.1..=3600.0).contains(&secs) {
                        return Err(format!("timeout {v} is out of range (0.1 to 3600 seconds)"));
                    }
                    config.timeout = Duration::from_secs_f64(secs);
                }
                other => return Err(format!("unknown storage setting '{other}' (known: endpoint, region, timeout)")),
            }
        }
        Ok(StorageConfig::S3(config))
    }
}

impl std::fmt::Display for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageConfig::Local => f.write_str("local"),
            StorageConfig::S3(c) => match &c.endpoint {
                Some(e) => write!(f, "s3://{}?endpoint={e}&region={}", c.bucket, c.region),
                None => write!(f, "s3://{}?region={}", c.bucket, c.region),
            },
        }
    }
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_storage_urls() {
        assert_eq!("local".parse::<StorageConfig>(), Ok(StorageConfig::Local));
        let StorageConfig::S3(c) = "s3://ferry-data?endpoint=http%3A%2F%2F127.0.0.1:8333&region=eu-1&timeout=5".parse().unwrap() else { panic!() };
        assert_eq!(c.bucket, "ferry-data");
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert_eq!(c.region, "eu-1");
        assert_eq!(c.timeout, Duration::from_secs(5));
        let StorageConfig::S3(c) = "s3://b12".parse().unwrap() else { panic!() };
        assert_eq!((c.endpoint, c.region.as_str()), (None, "us-east-1"));
        for bad in ["s3://key:secret@bucket", "s3://B", "gs://x", "s3://bucket?endpoint=ftp://x", "s3://bucket?colour=red", "s3://bkt?endpoint=http://k:s@h:1"] {
            assert!(bad.parse::<StorageConfig>().is_err(), "{bad}");
        }
    }
}
