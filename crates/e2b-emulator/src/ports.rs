//! Traffic to a port of a sandbox, as E2B's proxy forwards it.
//!
//! A request is for port `P` of sandbox `ID` when its `Host` is `P-ID.<domain>` or when it
//! carries `E2b-Sandbox-Id: ID` and `E2b-Sandbox-Port: P` (the SDK's fixed-URL form); port
//! 49983 is envd, served by [`crate::envd`]. Each sandbox has its own network namespace, so
//! two sandboxes can listen on one port: the request is forwarded over a connection made
//! inside the sandbox's namespace to its loopback. A paused sandbox created with
//! `autoResume` is resumed first; one created with `network.allowPublicTraffic: false`
//! wants its `trafficAccessToken` in `e2b-traffic-access-token`.

use crate::error::HttpError;
use crate::isolation::connect_in_netns;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use crabbox_e2b_wire::control::{parse_port_host, TRAFFIC_ACCESS_TOKEN_HEADER};
use crabbox_e2b_wire::headers;

/// envd's port: traffic for it is envd's, not forwarded.
pub const ENVD_PORT: u16 = 49983;

/// Where a request is going, as the proxy reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A port of a sandbox other than envd's.
    Port { sandbox_id: String, port: u16 },
    /// envd of the sandbox its `Host` names (no `E2b-Sandbox-Id` header).
    EnvdByHost { sandbox_id: String },
    /// Not a sandbox's port: the control plane, or envd by header.
    Other,
}

pub fn target(request: &Request) -> Target {
    let get = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if let Some((port, id)) = get(header::HOST.as_str())
        .as_deref()
        .and_then(parse_port_host)
        .map(|(p, id)| (p, id.to_string()))
    {
        return if port == ENVD_PORT {
            Target::EnvdByHost { sandbox_id: id }
        } else {
            Target::Port {
                sandbox_id: id,
                port,
            }
        };
    }
    if let (Some(id), Some(port)) = (
        get(headers::SANDBOX_ID),
        get(headers::SANDBOX_PORT).and_then(|p| p.parse::<u16>().ok()),
    ) {
        if port != ENVD_PORT {
            return Target::Port {
                sandbox_id: id,
                port,
            };
        }
    }
    Target::Other
}

/// Makes an envd request addressed by `Host` look like one addressed by header.
pub fn tag_envd(request: &mut Request, sandbox_id: &str) {
    if let Ok(value) = HeaderValue::from_str(sandbox_id) {
        request.headers_mut().insert(headers::SANDBOX_ID, value);
    }
}

/// Forwards `request` to `port` inside sandbox `sandbox_id`.
pub async fn forward(state: AppState, sandbox_id: String, port: u16, request: Request) -> Response {
    match try_forward(state, &sandbox_id, port, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn try_forward(
    state: AppState,
    sandbox_id: &str,
    port: u16,
    mut request: Request,
) -> Result<Response, HttpError> {
    let sandbox = state
        .registry
        .for_traffic(sandbox_id)
        .ok_or_else(|| HttpError::sandbox_not_running(sandbox_id))?;
    if let Some(token) = &sandbox.traffic_access_token {
        let presented = request
            .headers()
            .get(TRAFFIC_ACCESS_TOKEN_HEADER)
            .and_then(|v| v.to_str().ok());
        if presented != Some(token.as_str()) {
            return Err(HttpError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "sandbox {sandbox_id} takes no public traffic: send its trafficAccessToken \
                     in the {TRAFFIC_ACCESS_TOKEN_HEADER} header"
                ),
            ));
        }
    }
    let netns = sandbox
        .namespace
        .lock()
        .expect("namespace lock")
        .as_ref()
        .map(|ns| ns.netns())
        .ok_or_else(|| HttpError::sandbox_not_running(sandbox_id))?
        .map_err(|e| HttpError::internal(format!("sandbox {sandbox_id}'s network: {e}")))?;
    let closed = || {
        HttpError::new(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {sandbox_id} is running but port {port} is not open"),
        )
    };
    let stream = tokio::task::spawn_blocking(move || connect_in_netns(netns, port))
        .await
        .map_err(|e| HttpError::internal(format!("connecting to port {port}: {e}")))?
        .map_err(|_| closed())?;
    stream
        .set_nonblocking(true)
        .map_err(|e| HttpError::internal(format!("connecting to port {port}: {e}")))?;
    let stream = tokio::net::TcpStream::from_std(stream)
        .map_err(|e| HttpError::internal(format!("connecting to port {port}: {e}")))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|_| closed())?;
    tokio::spawn(connection);
    for name in [
        headers::SANDBOX_ID,
        headers::SANDBOX_PORT,
        TRAFFIC_ACCESS_TOKEN_HEADER,
    ] {
        request.headers_mut().remove(name);
    }
    let response = sender.send_request(request).await.map_err(|e| {
        HttpError::new(
            StatusCode::BAD_GATEWAY,
            format!("port {port} of sandbox {sandbox_id} broke the exchange: {e}"),
        )
    })?;
    Ok(response.map(Body::new))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(host: &str, extra: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().uri("/x").header("host", host);
        for (k, v) in extra {
            builder = builder.header(*k, *v);
        }
        builder.body(Body::empty()).unwrap()
    }

    #[test]
    fn a_port_host_or_a_port_header_is_a_port_of_that_sandbox() {
        let port = |id: &str, port| Target::Port {
            sandbox_id: id.into(),
            port,
        };
        assert_eq!(
            target(&request("8000-iabc.e2b.app", &[])),
            port("iabc", 8000)
        );
        assert_eq!(
            target(&request(
                "127.0.0.1:5555",
                &[("e2b-sandbox-id", "iabc"), ("e2b-sandbox-port", "3000")]
            )),
            port("iabc", 3000)
        );
        assert_eq!(
            target(&request("49983-iabc.e2b.app", &[])),
            Target::EnvdByHost {
                sandbox_id: "iabc".into()
            }
        );
        assert_eq!(
            target(&request(
                "127.0.0.1:5555",
                &[("e2b-sandbox-id", "iabc"), ("e2b-sandbox-port", "49983")]
            )),
            Target::Other
        );
        assert_eq!(target(&request("127.0.0.1:5555", &[])), Target::Other);
        assert_eq!(target(&request("api.e2b.app", &[])), Target::Other);
    }
}
