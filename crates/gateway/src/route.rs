//! Which endpoint a request is for.
//!
//! Two URL forms name the same endpoint label (`<workspace>--<app>-<function>[-dev]`):
//! - host-based, `http://<label>.<suffix>/path`, for an operator-set suffix whose wildcard DNS
//!   points at the gateway, and for `http://<label>.localhost:PORT/path`, which resolves to the
//!   loopback without any DNS set-up;
//! - path-based, `http://HOST:PORT/<label>/path`, which works on any address: the endpoint is
//!   mounted at `root_path` `/<label>`, as behind any path-prefixing proxy, and redirects the
//!   app sends to paths outside it are rewritten to stay under it ([`mount_location`]).

/// How the label was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteStyle {
    Host,
    Path,
}

/// A request's endpoint label and the path inside the endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub label: String,
    pub style: RouteStyle,
    /// The path the app sees (still percent-encoded), starting with `/`.
    pub path: String,
    /// `/<label>` for path-based routes, else empty.
    pub root_path: String,
}

/// A label is one DNS label that names an endpoint: it always has the workspace separator.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.contains("--")
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Finds the endpoint label of a request from its `Host` and path; `host_suffix` is the
/// operator's suffix for host-based URLs.
///
/// ```
/// use ferry_gateway::route::{route, RouteStyle};
/// let r = route(Some("127.0.0.1:8080"), "/ferry--shop-api/items/3", None).unwrap();
/// assert_eq!((r.label.as_str(), r.path.as_str(), r.style), ("ferry--shop-api", "/items/3", RouteStyle::Path));
/// let r = route(Some("ferry--shop-api.apps.example.com"), "/items/3", Some("apps.example.com")).unwrap();
/// assert_eq!((r.label.as_str(), r.path.as_str(), r.style), ("ferry--shop-api", "/items/3", RouteStyle::Host));
/// ```
pub fn route(host: Option<&str>, path: &str, host_suffix: Option<&str>) -> Option<Route> {
    if let Some(host) = host {
        let name = strip_port(host).to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        let suffixes = host_suffix.into_iter().chain(std::iter::once("localhost"));
        for suffix in suffixes {
            let suffix = suffix.trim_matches('.').to_ascii_lowercase();
            if let Some(label) = name.strip_suffix(suffix.as_str()).and_then(|l| l.strip_suffix('.')) {
                if is_label(label) {
                    let path = if path.is_empty() { "/".to_string() } else { path.to_string() };
                    return Some(Route { label: label.to_string(), style: RouteStyle::Host, path, root_path: String::new() });
                }
            }
        }
    }
    let rest = path.strip_prefix('/')?;
    let (label, inner) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if !is_label(label) {
        return None;
    }
    Some(Route { label: label.to_string(), style: RouteStyle::Path, path: inner.to_string(), root_path: format!("/{label}") })
}

/// The `Location` an app behind a path-based route means: an absolute path (or a URL on the
/// gateway's own `host`) outside the endpoint's `root` (`/<label>`) gets the prefix, as a
/// path-prefixing reverse proxy rewrites redirects; anything else stays as it is (`None`).
///
/// ```
/// use ferry_gateway::route::mount_location;
/// let root = "/ferry--shop-api";
/// assert_eq!(mount_location("/result?id=1", root, Some("127.0.0.1:8080")).as_deref(), Some("/ferry--shop-api/result?id=1"));
/// assert_eq!(mount_location("http://127.0.0.1:8080/a", root, Some("127.0.0.1:8080")).as_deref(), Some("http://127.0.0.1:8080/ferry--shop-api/a"));
/// assert_eq!(mount_location("/ferry--shop-api/a", root, None), None);
/// assert_eq!(mount_location("https://example.com/a", root, Some("127.0.0.1:8080")), None);
/// assert_eq!(mount_location("other", root, None), None);
/// ```
pub fn mount_location(location: &str, root: &str, host: Option<&str>) -> Option<String> {
    let inside = |path: &str| {
        path.strip_prefix(root).is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#']))
    };
    if location.starts_with('/') && !location.starts_with("//") {
        return (!inside(location)).then(|| format!("{root}{location}"));
    }
    let (scheme, rest) = location.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if !host.is_some_and(|h| h.eq_ignore_ascii_case(authority)) || inside(path) {
        return None;
    }
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    Some(format!("{scheme}://{authority}{root}{path}"))
}

/// Where a request that names no endpoint belongs when its `Referer` is a page of a
/// path-based endpoint on the same gateway (`host`): the same path and query under that
/// endpoint's prefix. Pages written for an endpoint of their own host name link to `/path`;
/// behind a path-based URL that leaves the endpoint.
///
/// ```
/// use ferry_gateway::route::referred_location;
/// let uri: http::Uri = "/process?x=1".parse().unwrap();
/// let page = "http://127.0.0.1:8080/ferry--shop-api/form";
/// assert_eq!(referred_location(page, Some("127.0.0.1:8080"), &uri).as_deref(), Some("/ferry--shop-api/process?x=1"));
/// assert_eq!(referred_location(page, Some("10.0.0.9:8080"), &uri), None);
/// assert_eq!(referred_location("http://127.0.0.1:8080/plain", Some("127.0.0.1:8080"), &uri), None);
/// ```
pub fn referred_location(referer: &str, host: Option<&str>, uri: &http::Uri) -> Option<String> {
    let host = host?;
    let (scheme, rest) = referer.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if !authority.eq_ignore_ascii_case(host) {
        return None;
    }
    let page = route(Some(authority), path.split(['?', '#']).next().unwrap_or("/"), None)?;
    if page.style != RouteStyle::Path {
        return None;
    }
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    Some(format!("{}{}{query}", page.root_path, uri.path()))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { host })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(host: Option<&str>, path: &str, suffix: Option<&str>, expect: Option<(&str, &str, &str, RouteStyle)>) {
        let got = route(host, path, suffix).map(|r| (r.label, r.path, r.root_path, r.style));
        let expect = expect.map(|(l, p, rp, s)| (l.to_string(), p.to_string(), rp.to_string(), s));
        assert_eq!(got, expect, "host {host:?} path {path:?} suffix {suffix:?}");
    }

    #[test]
    fn path_based() {
        use RouteStyle::Path;
        check(Some("127.0.0.1:9000"), "/ferry--app-f", None, Some(("ferry--app-f", "/", "/ferry--app-f", Path)));
        check(Some("127.0.0.1:9000"), "/ferry--app-f/", None, Some(("ferry--app-f", "/", "/ferry--app-f", Path)));
        check(Some("127.0.0.1:9000"), "/ferry--app-f/a/b%20c", None, Some(("ferry--app-f", "/a/b%20c", "/ferry--app-f", Path)));
        check(None, "/ferry--app-f-dev/x", None, Some(("ferry--app-f-dev", "/x", "/ferry--app-f-dev", Path)));
        check(Some("localhost:1"), "/", None, None);
        check(Some("localhost:1"), "/docs", None, None);
        check(Some("localhost:1"), "/Ferry--App/x", None, None);
        check(Some("localhost:1"), "", None, None);
    }

    #[test]
    fn host_based() {
        use RouteStyle::Host;
        let s = Some("apps.example.com");
        check(Some("ferry--app-f.apps.example.com"), "/x", s, Some(("ferry--app-f", "/x", "", Host)));
        check(Some("FERRY--APP-F.apps.example.com:443"), "/", s, Some(("ferry--app-f", "/", "", Host)));
        check(Some("ferry--app-f.localhost:8080"), "/x?y", None, Some(("ferry--app-f", "/x?y", "", Host)));
        // A host that is not a label falls back to the path.
        check(Some("www.apps.example.com"), "/ferry--a-b/z", s, Some(("ferry--a-b", "/z", "/ferry--a-b", RouteStyle::Path)));
        check(Some("a.b.apps.example.com"), "/", s, None);
        check(Some("[::1]:80"), "/ferry--a-b", None, Some(("ferry--a-b", "/", "/ferry--a-b", RouteStyle::Path)));
    }
}
