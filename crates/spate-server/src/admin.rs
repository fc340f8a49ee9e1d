//! The admin API: the Kubernetes API over the control plane (`kube/`),
//! `/apply` for all-or-nothing multi-document manifests, logs, tail, replay,
//! the dashboard, health and metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use spate_api::Kind;

use spate_eventing::replay::{ReplayError, ReplayFrom, ReplayProgress};

use crate::control::{ApiError, ControlPlane};

#[derive(Clone)]
pub struct Admin {
    pub control: Arc<ControlPlane>,
    pub metrics: PrometheusHandle,
}

pub fn router(state: Admin) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/apply", post(apply))
        .route("/logs/{kind}/{ns}/{name}", get(logs))
        .route("/tail", get(tail))
        .route("/replay/{ns}/{name}", post(replay))
        .with_state(state.clone())
        .merge(crate::kube::router().with_state(state.control))
}

/// The dashboard: one page built into the binary (no CDN), reading this API
/// from the same origin, behind the same guard.
const DASHBOARD: &str = include_str!("../assets/dashboard.html");

async fn dashboard() -> Response {
    use axum::http::header;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Only this page's own inline code and this origin; never framed by another site.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn readyz(State(st): State<Admin>) -> Response {
    if st.control.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(st): State<Admin>) -> String {
    st.metrics.render()
}

#[derive(Deserialize)]
struct ApplyQuery {
    #[serde(rename = "dryRun", default)]
    dry_run: bool,
}

async fn apply(State(st): State<Admin>, Query(q): Query<ApplyQuery>, body: String) -> Result<Response, ApiError> {
    let applied = st.control.apply(&body, q.dry_run).await?;
    Ok(axum::Json(json!({"applied": applied, "dryRun": q.dry_run})).into_response())
}

#[derive(Deserialize)]
struct TailQuery {
    /// `broker/<ns>/<name>`, `channel/<ns>/<name>`, `trigger/<ns>/<name>` (what became of
    /// each event the trigger took), a prefix of one (`broker/<ns>`), or all brokers and channels.
    target: Option<String>,
    /// Only events this CESQL expression matches.
    cesql: Option<String>,
}

/// Server-sent events: every event stored from now on (that matches), as
/// `{"target": …, "event": <structured CloudEvent>}`. A listener that falls
/// behind gets a `dropped` event saying how many it missed.
async fn tail(State(st): State<Admin>, Query(q): Query<TailQuery>) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let filter = match &q.cesql {
        Some(e) => Some(spate_filter::Filter::cesql(e).map_err(|errs| {
            ApiError::BadRequest(format!(
                "cesql: {}",
                errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
            ))
        })?),
        None => None,
    };
    let target = q.target.unwrap_or_default().trim_matches('/').to_string();
    // Trigger outcomes only when asked for by name: "everything" means every stored event.
    let wanted = move |t: &str| {
        (target.is_empty() && !t.starts_with("trigger/")) || t == target || t.starts_with(&format!("{target}/"))
    };
    let rx = st.control.tap();
    let stream = futures_util::stream::unfold(rx, move |mut rx| {
        let (wanted, filter) = (wanted.clone(), filter.clone());
        async move {
            loop {
                match rx.recv().await {
                    Ok(t) if wanted(&t.target) && filter.as_ref().is_none_or(|f| f.matches_guarded(&t.event)) => {
                        let mut headers = axum::http::HeaderMap::new();
                        let body = spate_core::http_codec::encode_structured(&t.event, &mut headers);
                        let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                        let mut data = json!({"target": t.target, "event": event});
                        if let Some(o) = &t.outcome {
                            data["outcome"] = json!(o);
                        }
                        let data = data.to_string();
                        return Some((Ok::<_, std::convert::Infallible>(Event::default().data(data)), rx));
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        return Some((Ok(Event::default().event("dropped").data(n.to_string())), rx));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReplayBody {
    from_offset: Option<u64>,
    /// RFC 3339.
    from_time: Option<String>,
}

fn progress_json(p: &ReplayProgress) -> serde_json::Value {
    json!({"fromOffset": p.from_offset, "total": p.total, "scanned": p.scanned, "matched": p.matched,
        "delivered": p.delivered, "failed": p.failed})
}

/// Redelivers what trigger `ns/name`'s broker log retains, from `fromOffset` or
/// `fromTime`, to that trigger only. Answers a stream of progress lines (NDJSON),
/// the last with `"done": true` or an `"error"`; refusals come first as errors.
async fn replay(
    State(st): State<Admin>,
    Path((ns, name)): Path<(String, String)>,
    axum::Json(body): axum::Json<ReplayBody>,
) -> Result<Response, ApiError> {
    let from = match (body.from_offset, body.from_time.as_deref()) {
        (Some(n), None) => ReplayFrom::Offset(n),
        (None, Some(t)) => {
            let (secs, nanos) = spate_core::rules::parse_rfc3339(t)
                .ok_or_else(|| ApiError::BadRequest(format!("fromTime: '{t}' is not an RFC 3339 time")))?;
            ReplayFrom::TimeMs(secs * 1000 + i64::from(nanos / 1_000_000))
        }
        _ => return Err(ApiError::BadRequest("give exactly one of fromOffset and fromTime".into())),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let eventing = st.control.eventing().clone();
    let task = tokio::spawn(async move { eventing.replay(&ns, &name, from, tx).await });
    let Some(first) = rx.recv().await else {
        return Err(match task.await {
            Ok(Err(e @ ReplayError::NotRunning(_))) => ApiError::NotFound(e.to_string()),
            Ok(Err(e)) => ApiError::BadRequest(e.to_string()),
            _ => ApiError::BadRequest("the replay ended before it started".into()),
        });
    };
    let lines = futures_util::stream::unfold((Some(first), rx, Some(task)), |(pending, mut rx, task)| async move {
        let line = |v: serde_json::Value| Ok::<_, std::convert::Infallible>(format!("{v}\n"));
        if let Some(p) = pending {
            return Some((line(progress_json(&p)), (None, rx, task)));
        }
        if let Some(p) = rx.recv().await {
            return Some((line(progress_json(&p)), (None, rx, task)));
        }
        let end = match task?.await {
            Ok(Ok(p)) => {
                let mut v = progress_json(&p);
                v["done"] = json!(true);
                v
            }
            Ok(Err(e)) => json!({"error": e.to_string()}),
            Err(e) => json!({"error": format!("the replay failed: {e}")}),
        };
        Some((line(end), (None, rx, None)))
    });
    Ok(([(axum::http::header::CONTENT_TYPE, "application/x-ndjson")], axum::body::Body::from_stream(lines))
        .into_response())
}

async fn logs(
    State(st): State<Admin>,
    Path((kind, ns, name)): Path<(String, String, String)>,
) -> Result<String, ApiError> {
    let k = match Kind::from_cli(&kind) {
        Some(k) if k == Kind::Service || k.is_source() && k.name() == "ContainerSource" => k,
        _ => {
            return Err(ApiError::BadRequest(format!(
                "logs are kept for services and containersources, not '{kind}' (use service/NAME or containersource/NAME)"
            )));
        }
    };
    Ok(st.control.logs(k, &ns, &name)?.into_iter().map(|l| l + "\n").collect())
}
