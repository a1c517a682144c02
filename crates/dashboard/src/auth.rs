//! Sign-in with a token id and secret, cookie sessions and per-session CSRF tokens.
//!
//! Session ids are random 256-bit values; only their SHA-256 is kept (in memory, so a restart
//! signs everyone out). Every page takes a [`Session`], which redirects to the sign-in page
//! when there is none, and every POST action checks the session's CSRF token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::AppState;

pub(crate) const COOKIE: &str = "ferry_session";
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

struct Entry {
    token_id: String,
    csrf: String,
    expires: Instant,
}

pub(crate) struct Sessions {
    by_digest: Mutex<HashMap<String, Entry>>,
    secure_cookie: bool,
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn digest(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Constant-time string comparison.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    pub(crate) fn new(secure_cookie: bool) -> Self {
        Sessions { by_digest: Mutex::default(), secure_cookie }
    }

    /// Starts a session for a verified token; returns the cookie value.
    fn start(&self, token_id: &str) -> String {
        let sid = random_hex();
        let mut map = self.by_digest.lock().unwrap();
        let now = Instant::now();
        map.retain(|_, e| e.expires > now);
        map.insert(digest(&sid), Entry { token_id: token_id.to_string(), csrf: random_hex(), expires: now + SESSION_TTL });
        sid
    }

    fn find(&self, sid: &str) -> Option<Session> {
        let map = self.by_digest.lock().unwrap();
        let e = map.get(&digest(sid)).filter(|e| e.expires > Instant::now())?;
        Some(Session { token_id: e.token_id.clone(), csrf: e.csrf.clone() })
    }

    fn end(&self, sid: &str) {
        self.by_digest.lock().unwrap().remove(&digest(sid));
    }

    /// Ends every session signed in with a token (after it is revoked).
    pub(crate) fn end_for_token(&self, token_id: &str) {
        self.by_digest.lock().unwrap().retain(|_, e| e.token_id != token_id);
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The signed-in user of a request.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub token_id: String,
    pub csrf: String,
}

impl Session {
    /// Refuses an action whose form does not carry this session's CSRF token.
    pub(crate) fn check_csrf(&self, sent: &str) -> Result<(), Response> {
        if same(sent, &self.csrf) {
            Ok(())
        } else {
            Err((StatusCode::FORBIDDEN, "refused: the form's CSRF token is missing or stale; reload the page and try again")
                .into_response())
        }
    }
}

impl FromRequestParts<AppState> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let to_signin = || {
            let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let next: String = form_urlencode(next);
            Redirect::to(&format!("/signin?next={next}")).into_response()
        };
        let Some(sid) = cookie_value(&parts.headers, COOKIE) else { return Err(to_signin()) };
        let Some(session) = state.sessions.find(sid) else { return Err(to_signin()) };
        // A revoked token ends its sessions at their next request.
        let active = state
            .store
            .list_tokens()
            .await
            .map(|ts| ts.iter().any(|t| t.token_id == session.token_id && t.revoked_at.is_none()))
            .unwrap_or(false);
        if !active {
            state.sessions.end(sid);
            return Err(to_signin());
        }
        Ok(session)
    }
}

fn form_urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Only same-site paths are followed after sign-in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/apps".to_string(),
    }
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

pub(crate) async fn signin_page(State(state): State<AppState>, Query(q): Query<NextQuery>) -> Response {
    crate::render::page(&state, "signin.html", None, minijinja::context! { next => safe_next(q.next.as_deref()), error => "" })
}

#[derive(Deserialize)]
pub(crate) struct SigninForm {
    token_id: String,
    token_secret: String,
    next: Option<String>,
}

pub(crate) async fn signin(State(state): State<AppState>, Form(f): Form<SigninForm>) -> Response {
    let next = safe_next(f.next.as_deref());
    let id = f.token_id.trim();
    match state.store.verify_token(id, f.token_secret.trim()).await {
        Ok(true) => {
            let sid = state.sessions.start(id);
            ([(header::SET_COOKIE, state.sessions.cookie(&sid, SESSION_TTL.as_secs()))], Redirect::to(&next)).into_response()
        }
        Ok(false) => {
            let ctx = minijinja::context! { next => next, error => "That token id and secret do not match an active token." };
            let mut resp = crate::render::page(&state, "signin.html", None, ctx);
            *resp.status_mut() = StatusCode::UNAUTHORIZED;
            resp
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("cannot verify the token right now: {e}")).into_response(),
    }
}

#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub(crate) async fn signout(State(state): State<AppState>, headers: HeaderMap, session: Session, Form(f): Form<CsrfForm>) -> Response {
    if let Err(r) = session.check_csrf(&f.csrf) {
        return r;
    }
    if let Some(sid) = cookie_value(&headers, COOKIE) {
        state.sessions.end(sid);
    }
    ([(header::SET_COOKIE, state.sessions.cookie("", 0))], Redirect::to("/signin")).into_response()
}
