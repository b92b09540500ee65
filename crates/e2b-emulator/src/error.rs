//! Error responses in the three shapes E2B clients read.
//!
//! - [`HttpError`]: the control plane and envd's HTTP routes,
//!   `{"code": <http status>, "message"}` with that status.
//! - [`RpcError`]: envd's unary Connect RPCs, the HTTP status of the Connect code
//!   and `{"code": "not_found", "message"}`.
//! - Stream errors travel in the end-of-stream envelope (see `envd::rpc`).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use crabbox_e2b_wire::control::ApiError;
use crabbox_e2b_wire::{Code, ConnectError};

/// An error of the control plane or of envd's HTTP routes.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// What E2B's proxy answers for a sandbox that is not running; the SDK
    /// recognises "was not found" as "the sandbox is gone".
    pub fn sandbox_not_running(sandbox_id: &str) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {sandbox_id} was not found"),
        )
    }

    /// The same failure as seen by the RPC layer of the file routes.
    pub fn from_rpc(err: &ConnectError) -> Self {
        let status =
            StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, err.message.clone())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = ApiError::new(self.status.as_u16(), self.message);
        let json = serde_json::to_vec(&body).unwrap_or_default();
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response()
    }
}

/// An error of a unary Connect RPC.
#[derive(Debug, Clone)]
pub struct RpcError(pub ConnectError);

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self(ConnectError::new(code, message))
    }
}

impl From<ConnectError> for RpcError {
    fn from(err: ConnectError) -> Self {
        Self(err)
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let json = serde_json::to_vec(&self.0).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, "application/json")], json).into_response()
    }
}
