//! Dicts and Queues: named ones per environment, their sizes, and a peek at a few entries.
//! Keys and values are pickled bytes; a page shows their length and a readable form only when
//! the pickle is a single plain scalar, else a hex preview. Nothing is unpickled.

use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use ferry_store::ObjectKind;
use minijinja::context;
use serde::Serialize;

use super::{not_found, NavEntry};
use crate::auth::Session;
use crate::render::page;
use crate::AppState;

pub(super) const DICTS_NAV: NavEntry = NavEntry { path: "/dicts", title: "Dicts" };
pub(super) const QUEUES_NAV: NavEntry = NavEntry { path: "/queues", title: "Queues" };
const PEEK: i64 = 20;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/dicts", get(|st, s| list(st, s, ObjectKind::Dict)))
        .route("/queues", get(|st, s| list(st, s, ObjectKind::Queue)))
        .route("/dicts/{id}", get(|st, s, id| one(st, s, id, ObjectKind::Dict)))
        .route("/queues/{id}", get(|st, s, id| one(st, s, id, ObjectKind::Queue)))
}

#[derive(Serialize)]
struct Row {
    id: String,
    name: String,
    environment: String,
    created_at: f64,
    size: i64,
}

async fn size(st: &AppState, kind: ObjectKind, id: &str) -> i64 {
    match kind {
        ObjectKind::Dict => st.store.dict_len(id).await.unwrap_or(0),
        _ => st.store.queue_summary(id, 0).await.map(|s| s.total_items).unwrap_or(0),
    }
}

async fn list(State(st): State<AppState>, session: Session, kind: ObjectKind) -> Response {
    let mut rows = Vec::new();
    for env in st.store.list_environments().await.unwrap_or_default() {
        for o in st.store.list_objects(kind, &env.name, 0.0, 500).await.unwrap_or_default() {
            rows.push(Row {
                size: size(&st, kind, &o.id).await,
                id: o.id,
                name: o.name.unwrap_or_default(),
                environment: env.name.clone(),
                created_at: o.created_at,
            });
        }
    }
    let path = if kind == ObjectKind::Dict { "/dicts" } else { "/queues" };
    page(&st, "objects.html", Some(&session), context! { kind => kind.title(), path => path, objects => rows })
}

#[derive(Serialize)]
struct Entry {
    key: Option<Preview>,
    value: Preview,
}

async fn one(State(st): State<AppState>, session: Session, Path(id): Path<String>, kind: ObjectKind) -> Response {
    let Ok(o) = st.store.object(kind, &id).await else { return not_found(kind.title(), &id) };
    let entries: Vec<Entry> = match kind {
        ObjectKind::Dict => st
            .store
            .dict_page(&id, None, PEEK)
            .await
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| Entry { key: Some(preview(k)), value: preview(v) })
            .collect(),
        _ => st
            .store
            .queue_next_items(&id, b"", "", std::time::Duration::ZERO)
            .await
            .unwrap_or_default()
            .iter()
            .take(PEEK as usize)
            .map(|i| Entry { key: None, value: preview(&i.value) })
            .collect(),
    };
    let summary = if kind == ObjectKind::Queue { st.store.queue_summary(&id, 0).await.ok() } else { None };
    page(
        &st,
        "object.html",
        Some(&session),
        context! {
            kind => kind.title(),
            object => context! { id => o.id, name => o.name, created_at => o.created_at, environment => o.environment_name },
            size => size(&st, kind, &id).await,
            partitions => summary.map(|s| s.num_partitions),
            entries => entries,
            peek => PEEK,
        },
    )
}

/// What a page shows of pickled bytes.
#[derive(Serialize, Debug, PartialEq)]
pub(crate) struct Preview {
    pub len: usize,
    /// A Python-like repr, when the pickle is one plain scalar.
    pub repr: Option<String>,
    /// The first bytes in hex, otherwise.
    pub hex: String,
}

pub(crate) fn preview(b: &[u8]) -> Preview {
    let repr = scalar_pickle(b);
    let hex = if repr.is_some() { String::new() } else { hex_preview(b, 48) };
    Preview { len: b.len(), repr, hex }
}

fn hex_preview(b: &[u8], n: usize) -> String {
    let mut s = hex::encode(&b[..b.len().min(n)]);
    if b.len() > n {
        s.push('…');
    }
    s
}

/// Reads a pickle made of a single str, bytes, int, float, bool or None (protocols 2–5);
/// anything else is None.
fn scalar_pickle(b: &[u8]) -> Option<String> {
    let mut i = 0;
    let take = |i: &mut usize, n: usize| -> Option<&[u8]> {
        let s = b.get(*i..*i + n)?;
        *i += n;
        Some(s)
    };
    if b.first() == Some(&0x80) {
        take(&mut i, 2)?;
    }
    if b.get(i) == Some(&0x95) {
        take(&mut i, 9)?;
    }
    let op = *take(&mut i, 1)?.first()?;
    let value = match op {
        0x8c => {
            let n = take(&mut i, 1)?[0] as usize;
            py_str(std::str::from_utf8(take(&mut i, n)?).ok()?)
        }
        b'X' => {
            let n = u32::from_le_bytes(take(&mut i, 4)?.try_into().ok()?) as usize;
            py_str(std::str::from_utf8(take(&mut i, n)?).ok()?)
        }
        b'C' => {
            let n = take(&mut i, 1)?[0] as usize;
            format!("b{}", py_str(&String::from_utf8_lossy(take(&mut i, n)?)))
        }
        b'K' => take(&mut i, 1)?[0].to_string(),
        b'M' => u16::from_le_bytes(take(&mut i, 2)?.try_into().ok()?).to_string(),
        b'J' => i32::from_le_bytes(take(&mut i, 4)?.try_into().ok()?).to_string(),
        b'G' => f64::from_be_bytes(take(&mut i, 8)?.try_into().ok()?).to_string(),
        0x88 => "True".to_string(),
        0x89 => "False".to_string(),
        b'N' => "None".to_string(),
        _ => return None,
    };
    if b.get(i) == Some(&0x94) {
        i += 1;
    }
    (b.get(i) == Some(&b'.') && i + 1 == b.len()).then_some(value)
}

fn py_str(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_scalars_only() {
        // pickle.dumps("hello", protocol=5)
        assert_eq!(preview(b"\x80\x05\x95\t\x00\x00\x00\x00\x00\x00\x00\x8c\x05hello\x94.").repr.as_deref(), Some("'hello'"));
        // pickle.dumps(42), pickle.dumps(None), pickle.dumps(True)
        assert_eq!(preview(b"\x80\x05K*.").repr.as_deref(), Some("42"));
        assert_eq!(preview(b"\x80\x05N.").repr.as_deref(), Some("None"));
        assert_eq!(preview(b"\x80\x05\x88.").repr.as_deref(), Some("True"));
        // pickle.dumps([1]) is a list: hex only.
        let p = preview(b"\x80\x05\x95\x07\x00\x00\x00\x00\x00\x00\x00]\x94K\x01a.");
        assert_eq!(p.repr, None);
        assert!(p.hex.starts_with("8005"));
        assert_eq!(preview(b"").repr, None);
    }
}
