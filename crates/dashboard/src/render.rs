//! Templates (compiled into the binary) and the helpers pages render with.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::{context, Environment, Value};

use crate::auth::Session;
use crate::AppState;

/// Every template, by name. A new page adds its template here.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../templates/base.html")),
    ("signin.html", include_str!("../templates/signin.html")),
    ("apps.html", include_str!("../templates/apps.html")),
    ("app.html", include_str!("../templates/app.html")),
    ("logs.html", include_str!("../templates/logs.html")),
    ("function.html", include_str!("../templates/function.html")),
    ("containers.html", include_str!("../templates/containers.html")),
    ("objects.html", include_str!("../templates/objects.html")),
    ("object.html", include_str!("../templates/object.html")),
    ("secrets.html", include_str!("../templates/secrets.html")),
    ("tokens.html", include_str!("../templates/tokens.html")),
];

pub(crate) fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, source) in TEMPLATES {
        env.add_template(name, source).expect("dashboard templates are valid");
    }
    env.add_filter("ts", |t: Option<f64>| t.map(format_time).unwrap_or_else(|| "—".to_string()));
    env.add_filter("secs", |s: Option<f64>| s.map(format_secs).unwrap_or_else(|| "—".to_string()));
    env.add_filter("bytes", |n: u64| format_bytes(n));
    env
}

/// Renders a page; signed-in pages get the navigation, the session's CSRF token and who is in.
pub(crate) fn page(state: &AppState, name: &str, session: Option<&Session>, ctx: Value) -> Response {
    let common = context! {
        nav => crate::pages::nav(),
        csrf => session.map(|s| s.csrf.clone()),
        signed_in_as => session.map(|s| s.token_id.clone()),
    };
    let result = state.templates.get_template(name).and_then(|t| t.render(context! { ..common, ..ctx }));
    match result {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::warn!("dashboard template {name} failed: {e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("the page could not be rendered: {e}")).into_response()
        }
    }
}

/// A page-level error: a short message in the plain layout.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, message.into()).into_response()
}

/// `YYYY-MM-DD HH:MM:SS` in UTC.
pub(crate) fn format_time(unix: f64) -> String {
    ferry_store::format_utc(unix)
}

pub(crate) fn format_secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.2} s")
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

pub(crate) fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_in_utc() {
        assert_eq!(format_time(0.0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_709_210_096.5), "2024-02-29 12:34:56");
    }

    #[test]
    fn every_template_compiles() {
        let env = environment();
        for (name, _) in TEMPLATES {
            env.get_template(name).unwrap();
        }
    }
}
