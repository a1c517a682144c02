//! Image URLs in requests: `http(s)` images are fetched only from hosts the operator allows
//! (`--allow-image-host`) and become data URLs before the request is validated; every other
//! remote URL is left as it is and answered with a 400 by `chat::check_image`.

use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use super::AppState;
use crate::error::{ApiError, ApiResult};

/// Largest image fetched (OpenAI's limit per image).
const MAX_FETCH_BYTES: usize = 20 * 1024 * 1024;

/// The host of an `http(s)` URL, lower-cased, without port or user info.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// Replaces every allowed `http(s)` image URL in a chat or Responses body with a data URL of
/// the fetched image. URLs of other hosts stay (validation refuses them with a clear message).
pub async fn inline_remote_images(state: &AppState, body: &mut Value) -> ApiResult<()> {
    if state.image_hosts.is_empty() || !state.engine.info.has_vision {
        return Ok(());
    }
    let mut slots: Vec<&mut Value> = Vec::new();
    collect(body, &mut slots);
    for slot in slots {
        let Some(url) = slot.as_str().map(str::to_string) else { continue };
        let Some(host) = url_host(&url) else { continue };
        if !state.image_hosts.iter().any(|h| h == &host) {
            continue;
        }
        *slot = Value::String(fetch(&url).await?);
    }
    Ok(())
}

/// The URL strings of image parts: chat `image_url.url` (or a bare `image_url` string) and
/// Responses `input_image.image_url`.
fn collect<'a>(v: &'a mut Value, out: &mut Vec<&'a mut Value>) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(|x| collect(x, out)),
        Value::Object(o) => {
            let kind = o.get("type").and_then(|t| t.as_str()).map(str::to_string);
            match kind.as_deref() {
                Some("image_url") => match o.get_mut("image_url") {
                    Some(Value::Object(u)) => {
                        if let Some(url) = u.get_mut("url") {
                            out.push(url);
                        }
                    }
                    Some(s @ Value::String(_)) => out.push(s),
                    _ => {}
                },
                Some("input_image") => {
                    if let Some(s @ Value::String(_)) = o.get_mut("image_url") {
                        out.push(s);
                    }
                }
                _ => o.values_mut().for_each(|x| collect(x, out)),
            }
        }
        _ => {}
    }
}

async fn fetch(url: &str) -> ApiResult<String> {
    let fail = |msg: String| ApiError::bad_request(msg).param("image_url").code("invalid_image_url");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| ApiError::internal(format!("HTTP client: {e}")))?;
    let resp = client.get(url).send().await.map_err(|e| fail(format!("Fetching the image {url} failed: {e}.")))?;
    if !resp.status().is_success() {
        return Err(fail(format!("Fetching the image {url} failed: HTTP {}.", resp.status())));
    }
    if resp.content_length().is_some_and(|n| n as usize > MAX_FETCH_BYTES) {
        return Err(fail(format!("The image at {url} is larger than {MAX_FETCH_BYTES} bytes.")).code("image_too_large"));
    }
    let mut resp = resp;
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(format!("Fetching the image {url} failed: {e}.")))? {
        bytes.extend_from_slice(&chunk);
        if bytes.len() > MAX_FETCH_BYTES {
            return Err(fail(format!("The image at {url} is larger than {MAX_FETCH_BYTES} bytes.")).code("image_too_large"));
        }
    }
    let mime = sniff(&bytes).ok_or_else(|| {
        fail(format!("The data at {url} is not a PNG, JPEG, GIF or WebP image.")).code("invalid_image_format")
    })?;
    Ok(format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(&bytes)))
}

fn sniff(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if b.starts_with(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if b.starts_with(b"GIF87a") || b.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if b.starts_with(b"RIFF") && b.get(8..12) == Some(b"WEBP") {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::{sniff, url_host};

    #[test]
    fn hosts_are_parsed_without_port_or_user() {
        assert_eq!(url_host("https://Example.com/a.png").as_deref(), Some("example.com"));
        assert_eq!(url_host("http://127.0.0.1:8080/x?y").as_deref(), Some("127.0.0.1"));
        assert_eq!(url_host("http://user:pw@img.host:1/p").as_deref(), Some("img.host"));
        assert_eq!(url_host("http://[::1]:80/p").as_deref(), Some("::1"));
        assert_eq!(url_host("ftp://x/y"), None);
        assert_eq!(url_host("https:///nohost"), None);
    }

    #[test]
    fn images_are_recognised_by_their_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"<html>"), None);
    }
}
