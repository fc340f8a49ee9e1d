//! A built-in event display (Knative's `event-display` sample, without a
//! container): `POST /_spate/display/<label>` prints the event to standard
//! output and answers 202. Handy as a subscriber while trying things out.

use std::io::Write;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{Ingress, read_body};

pub async fn handler(State(st): State<Ingress>, Path(label): Path<String>, headers: HeaderMap, body: Body) -> Response {
    let body = match read_body(&headers, body, st.max_event_size).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let decoded = match spate_core::http_codec::decode(&headers, body) {
        Ok(d) => d,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let mut out = String::new();
    for ev in &decoded.events {
        out.push_str(&format!(
            "☁️  [{label}] cloudevent\n  specversion: {}\n  type: {}\n  source: {}\n  id: {}\n",
            ev.specversion.as_str(),
            ev.ty,
            ev.source,
            ev.id
        ));
        for (k, v) in [("time", &ev.time), ("subject", &ev.subject), ("datacontenttype", &ev.datacontenttype)] {
            if let Some(v) = v {
                out.push_str(&format!("  {k}: {v}\n"));
            }
        }
        if !ev.extensions.is_empty() {
            out.push_str("  extensions:\n");
            for (k, v) in &ev.extensions {
                out.push_str(&format!("    {k}: {}\n", v.to_canonical()));
            }
        }
        if let Some(d) = &ev.data {
            out.push_str(&format!("  data: {}\n", String::from_utf8_lossy(d)));
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    StatusCode::ACCEPTED.into_response()
}
