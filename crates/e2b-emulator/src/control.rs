//! The control plane: E2B's REST API for sandboxes, behind `X-API-Key`.

use crate::error::HttpError;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use crabbox_e2b_wire::control::{
    decode_metadata_filter, ConnectSandboxRequest, ForkRequest, NetworkUpdate, NewSandbox,
    SandboxState, SnapshotRequest, TimeoutRequest,
};
use crabbox_e2b_wire::headers;
use serde::de::DeserializeOwned;
use std::collections::HashMap;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/sandboxes", post(create).get(list_v1))
        .route("/v2/sandboxes", post(create).get(list_v2))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route(
            "/sandboxes/{id}/network",
            axum::routing::put(update_network),
        )
        .route("/sandboxes/{id}/refreshes", post(refresh))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/snapshots", post(snapshot))
        .route("/sandboxes/{id}/fork", post(fork))
        .route("/snapshots", get(list_snapshots))
        .route("/templates/{id}", axum::routing::delete(delete_snapshot))
        .route("/templates/aliases/{alias}", get(template_alias))
        .fallback(|| async { HttpError::not_found("no such control-plane route") })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
        .with_state(state)
}

async fn require_api_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(headers::API_KEY)
        .and_then(|v| v.to_str().ok());
    match presented {
        Some(key) if key == state.config.api_key => next.run(request).await,
        Some(_) => HttpError::unauthorized("Invalid API key").into_response(),
        None => HttpError::unauthorized("Missing API key: send it in the X-API-Key header")
            .into_response(),
    }
}

/// Parses a JSON body; an empty body is the type's default.
fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, HttpError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| HttpError::bad_request(format!("invalid request body: {e}")))
}

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Response, HttpError> {
    let request: NewSandbox = parse_body(&body)?;
    let sandbox = state.registry.create(request).await?;
    Ok((StatusCode::CREATED, Json(sandbox.body())).into_response())
}

fn metadata_matches(
    metadata: &std::collections::BTreeMap<String, String>,
    filter: &[(String, String)],
) -> bool {
    filter
        .iter()
        .all(|(k, v)| metadata.get(k).is_some_and(|actual| actual == v))
}

async fn list_v1(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let filter = query
        .get("metadata")
        .map(|m| decode_metadata_filter(m))
        .unwrap_or_default();
    let listed: Vec<_> = state
        .registry
        .all()
        .into_iter()
        .filter(|s| s.is_running() && metadata_matches(&s.metadata, &filter))
        .map(|s| s.listed())
        .collect();
    Json(listed).into_response()
}

async fn list_v2(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    let filter = query
        .get("metadata")
        .map(|m| decode_metadata_filter(m))
        .unwrap_or_default();
    let states: Vec<SandboxState> = match query.get("state").filter(|s| !s.is_empty()) {
        None => vec![SandboxState::Running, SandboxState::Paused],
        Some(text) => text
            .split(',')
            .map(|s| {
                SandboxState::parse(s.trim())
                    .ok_or_else(|| HttpError::bad_request(format!("invalid state '{s}'")))
            })
            .collect::<Result<_, _>>()?,
    };
    let limit = match query.get("limit") {
        None => 100,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=100).contains(&n))
            .ok_or_else(|| HttpError::bad_request(format!("invalid limit '{text}' (1-100)")))?,
    };
    let mut matching: Vec<_> = state
        .registry
        .all()
        .into_iter()
        .filter(|s| states.contains(&s.state()) && metadata_matches(&s.metadata, &filter))
        .filter(|s| query.get("template").is_none_or(|t| &s.template_id == t))
        .collect();
    if query.get("order").map(String::as_str) == Some("desc") {
        matching.reverse();
    }
    let start = match query.get("nextToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(token) => matching
            .iter()
            .position(|s| &s.list_key() == token)
            .ok_or_else(|| HttpError::bad_request("invalid nextToken"))?,
    };
    let page: Vec<_> = matching
        .iter()
        .skip(start)
        .take(limit)
        .map(|s| s.listed())
        .collect();
    let mut response = Json(page).into_response();
    if let Some(next) = matching.get(start + limit) {
        if let Ok(value) = HeaderValue::from_str(&next.list_key()) {
            response.headers_mut().insert(headers::NEXT_TOKEN, value);
        }
    }
    Ok(response)
}

async fn detail(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let sandbox = state
        .registry
        .get(&id)
        .ok_or_else(|| HttpError::not_found(format!("sandbox {id} not found")))?;
    Ok(Json(sandbox.detail()).into_response())
}

async fn kill(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    if state.registry.kill(&id).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(HttpError::not_found(format!("sandbox {id} not found")))
    }
}

async fn set_timeout(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, HttpError> {
    let request: TimeoutRequest = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("invalid request body: {e}")))?;
    state.registry.set_timeout(&id, request.timeout)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PUT /sandboxes/{id}/network`: replaces the egress rules (204).
async fn update_network(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, HttpError> {
    let update: NetworkUpdate = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("invalid request body: {e}")))?;
    let sandbox = state
        .registry
        .get(&id)
        .ok_or_else(|| HttpError::not_found(format!("sandbox {id} not found")))?;
    let mut egress = sandbox.egress.lock().expect("egress lock");
    crate::network::apply_update(&mut egress, update)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(serde::Deserialize, Default)]
struct RefreshRequest {
    #[serde(default)]
    duration: Option<u64>,
}

async fn refresh(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, HttpError> {
    let request: RefreshRequest = parse_body(&body)?;
    state
        .registry
        .connect(&id, Some(request.duration.unwrap_or(60)))?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    state.registry.pause(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn connect(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let request: ConnectSandboxRequest = parse_body(&body)?;
    let (sandbox, resumed) = state.registry.connect(&id, request.timeout)?;
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(sandbox.body())).into_response())
}

/// Whether a template exists, as the SDKs ask (`Template.exists`): 200 with its id, or 404.
async fn template_alias(
    State(state): State<AppState>,
    Path(alias): Path<String>,
) -> Result<Response, HttpError> {
    if !state.config.templates.contains(&alias) {
        return Err(HttpError::not_found(format!(
            "template '{alias}' not found"
        )));
    }
    Ok(Json(serde_json::json!({"templateID": alias, "public": true})).into_response())
}

/// Legacy v1 resume: only for paused sandboxes.
async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let request: ConnectSandboxRequest = parse_body(&body)?;
    match state.registry.get(&id) {
        Some(s) if s.is_running() => {
            return Err(HttpError::conflict(format!(
                "sandbox {id} is already running"
            )))
        }
        None => {
            return Err(HttpError::not_found(format!(
                "paused sandbox {id} not found"
            )))
        }
        Some(_) => {}
    }
    let (sandbox, _) = state.registry.connect(&id, request.timeout)?;
    Ok((StatusCode::CREATED, Json(sandbox.body())).into_response())
}

async fn snapshot(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let request: SnapshotRequest = parse_body(&body)?;
    let info = state
        .registry
        .snapshot(&id, request.name.filter(|n| !n.is_empty()))
        .await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn fork(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, HttpError> {
    let request: ForkRequest = parse_body(&body)?;
    let results = state
        .registry
        .fork(&id, request.timeout, request.count)
        .await?;
    Ok((StatusCode::CREATED, Json(results)).into_response())
}

/// `GET /snapshots?sandboxID=&name=&limit=&nextToken=`: pages of snapshots, the next
/// page's token in `X-Next-Token`.
async fn list_snapshots(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, HttpError> {
    let all = state.registry.snapshots.list(
        query.get("sandboxID").map(String::as_str),
        query.get("name").map(String::as_str),
    );
    let limit = match query.get("limit") {
        None => 100,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=100).contains(&n))
            .ok_or_else(|| HttpError::bad_request(format!("invalid limit '{text}' (1-100)")))?,
    };
    let start = match query.get("nextToken").filter(|t| !t.is_empty()) {
        None => 0,
        Some(token) => all
            .iter()
            .position(|s| &s.snapshot_id == token)
            .ok_or_else(|| HttpError::bad_request("invalid nextToken"))?,
    };
    let page: Vec<_> = all.iter().skip(start).take(limit).cloned().collect();
    let mut response = Json(page).into_response();
    if let Some(next) = all.get(start + limit) {
        if let Ok(value) = HeaderValue::from_str(&next.snapshot_id) {
            response.headers_mut().insert(headers::NEXT_TOKEN, value);
        }
    }
    Ok(response)
}

/// Snapshots are templates: `DELETE /templates/{id}` deletes one.
async fn delete_snapshot(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    if state.registry.snapshots.delete(&id).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(HttpError::not_found(format!("template {id} not found")))
    }
}
