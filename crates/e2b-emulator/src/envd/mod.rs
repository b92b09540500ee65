//! envd, the daemon inside each sandbox: its HTTP routes ([`files`]) and its
//! Connect RPC services ([`rpc`]), reached through the `E2b-Sandbox-Id` header.

pub mod files;
pub mod rpc;

use crate::error::HttpError;
use crate::isolation::{SandboxUser, USER};
use crate::sandbox::Sandbox;
use crate::state::AppState;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use crabbox_e2b_wire::{headers, Code, ConnectError};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Whether a path belongs to envd rather than the control plane.
pub fn is_envd_path(path: &str) -> bool {
    matches!(path, "/health" | "/files" | "/envs" | "/metrics" | "/init")
        || path.starts_with("/process.Process/")
        || path.starts_with("/filesystem.Filesystem/")
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/files", get(files::download).post(files::upload))
        .route("/process.Process/{method}", post(rpc::process))
        .route("/filesystem.Filesystem/{method}", post(rpc::filesystem))
        .fallback(|| async { HttpError::not_found("no such envd route") })
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            route_to_sandbox,
        ))
        .with_state(state)
}

async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Finds the sandbox of the request and checks its access token.
async fn route_to_sandbox(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let id = request
        .headers()
        .get(headers::SANDBOX_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some(sandbox) = state.registry.for_traffic(&id) else {
        return HttpError::sandbox_not_running(&id).into_response();
    };
    if request.uri().path() != "/health" && !authorized(&sandbox, &request) {
        return HttpError::unauthorized(
            "missing or invalid access token: send the sandbox's envdAccessToken in X-Access-Token",
        )
        .into_response();
    }
    request.extensions_mut().insert(sandbox);
    next.run(request).await
}

fn authorized(sandbox: &Sandbox, request: &Request) -> bool {
    let token = request
        .headers()
        .get(headers::ACCESS_TOKEN)
        .and_then(|v| v.to_str().ok());
    if token == Some(sandbox.access_token.as_str()) {
        return true;
    }
    if request.uri().path() != "/files" {
        return false;
    }
    let Ok(Query(query)) = Query::<HashMap<String, String>>::try_from_uri(request.uri()) else {
        return false;
    };
    let operation = if request.method() == axum::http::Method::GET {
        "read"
    } else {
        "write"
    };
    signature_is_valid(&query, operation, &sandbox.access_token)
}

/// Checks a `v1_` file URL signature: base64(sha256("path:op:user:token[:exp]")).
pub fn signature_is_valid(query: &HashMap<String, String>, operation: &str, token: &str) -> bool {
    let Some(signature) = query.get("signature") else {
        return false;
    };
    let path = query.get("path").map(String::as_str).unwrap_or("");
    let user = query.get("username").map(String::as_str).unwrap_or("");
    let mut raw = format!("{path}:{operation}:{user}:{token}");
    if let Some(expiration) = query.get("signature_expiration") {
        let Ok(expires) = expiration.parse::<i64>() else {
            return false;
        };
        if expires < time::OffsetDateTime::now_utc().unix_timestamp() {
            return false;
        }
        raw.push(':');
        raw.push_str(expiration);
    }
    let digest = Sha256::digest(raw.as_bytes());
    let expected = format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    );
    *signature == expected
}

/// The user an RPC runs as: `Authorization: Basic base64("<user>:")`, default `user`.
pub fn rpc_user(headers: &axum::http::HeaderMap) -> Result<SandboxUser, ConnectError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(USER);
    };
    let invalid =
        |e: headers::InvalidUserAuth| ConnectError::new(Code::Unauthenticated, e.to_string());
    let value = value
        .to_str()
        .map_err(|_| invalid(headers::InvalidUserAuth))?;
    match headers::decode_user(value).map_err(invalid)? {
        Some(name) => named_user(&name),
        None => Ok(USER),
    }
}

/// A sandbox user by name, or the error envd gives for an unknown one.
pub fn named_user(name: &str) -> Result<SandboxUser, ConnectError> {
    SandboxUser::by_name(name).ok_or_else(|| {
        ConnectError::new(
            Code::Unauthenticated,
            format!("invalid username: '{name}' (the emulator's sandboxes have 'user' and 'root')"),
        )
    })
}

/// Shorthand for handlers: the sandbox the middleware attached.
pub type SandboxExt = axum::Extension<Arc<Sandbox>>;
