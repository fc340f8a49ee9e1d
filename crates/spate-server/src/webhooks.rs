//! GitHubSource and GitLabSource receive endpoints on the data plane:
//! `POST /sources/github/<ns>/<name>` and `POST /sources/gitlab/<ns>/<name>`.
//! The statuses a sender sees are decided here, from [`WebhookError`].

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::json;
use spate_sources::{Provider, Received, Sources, WebhookError};

struct Rejection(WebhookError);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            WebhookError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            WebhookError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebhookError::Undelivered(_) => StatusCode::BAD_GATEWAY,
            WebhookError::NotFound(_) => StatusCode::NOT_FOUND,
        };
        (status, axum::Json(json!({"error": self.0.to_string()}))).into_response()
    }
}

async fn receive(
    State(sources): State<Arc<Sources>>,
    Path((provider, ns, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let provider = match provider.as_str() {
        "github" => Provider::GitHub,
        "gitlab" => Provider::GitLab,
        other => {
            return Rejection(WebhookError::NotFound(format!("source kind '{other}' (github or gitlab)")))
                .into_response();
        }
    };
    match sources.receive(provider, &ns, &name, &headers, body).await {
        Ok(Received::Emitted { id, ty }) => {
            (StatusCode::ACCEPTED, axum::Json(json!({"emitted": {"id": id, "type": ty}}))).into_response()
        }
        Ok(Received::Ignored { event }) => {
            (StatusCode::OK, axum::Json(json!({"ignored": event, "reason": "not in spec.eventTypes"}))).into_response()
        }
        Ok(Received::Duplicate { id }) => (
            StatusCode::OK,
            axum::Json(json!({"duplicate": id, "reason": "this delivery id was already emitted; not emitted again"})),
        )
            .into_response(),
        Err(e) => Rejection(e).into_response(),
    }
}

/// GitHub sends webhook payloads of up to 25 MB; larger ones it does not send at all.
pub const MAX_WEBHOOK_BODY: usize = 25 * 1024 * 1024;

/// Webhook bodies may be as large as GitHub's (25 MB) or `max_body`, whichever is larger.
pub fn router(sources: Arc<Sources>, max_body: usize) -> Router {
    Router::new()
        .route("/sources/{provider}/{ns}/{name}", post(receive))
        .layer(DefaultBodyLimit::max(max_body.max(MAX_WEBHOOK_BODY)))
        .with_state(sources)
}
