//! envd's `/files` route: raw downloads and multipart or octet-stream uploads.

use super::{named_user, SandboxExt};
use crate::error::HttpError;
use crate::isolation::{SandboxUser, USER};
use crate::sandbox::Sandbox;
use crate::sandbox_fs::{fs_error, SandboxFs};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Query, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use crabbox_e2b_wire::filesystem::WriteInfo;
use std::collections::HashMap;
use std::io::Read;

fn user_of(query: &HashMap<String, String>) -> Result<SandboxUser, HttpError> {
    match query.get("username").filter(|u| !u.is_empty()) {
        None => Ok(USER),
        Some(name) => named_user(name).map_err(|e| HttpError::unauthorized(e.message)),
    }
}

/// `GET /files?path=&username=`: the file's bytes (a single `Range` is honoured).
pub async fn download(
    axum::Extension(sandbox): SandboxExt,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let user = user_of(&query)?;
    let requested = query
        .get("path")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| HttpError::bad_request("the `path` query parameter is required"))?;
    let absolute = SandboxFs::absolute(requested, user);
    let resolved = sandbox
        .fs
        .resolve(requested, user, true)
        .map_err(|e| HttpError::from_rpc(&e))?;
    sandbox
        .fs
        .check_readable(&resolved, user)
        .map_err(|e| HttpError::from_rpc(&e))?;
    let meta = match tokio::fs::metadata(&resolved.host).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HttpError::not_found(format!(
                "path '{absolute}' does not exist"
            )))
        }
        Err(e) => return Err(HttpError::from_rpc(&fs_error(&e, &absolute))),
    };
    if meta.is_dir() {
        return Err(HttpError::bad_request(format!(
            "path '{absolute}' is a directory"
        )));
    }
    let wants_range = headers.contains_key(header::RANGE);
    if !wants_range {
        // Streamed as E2B does: a large file is never held whole.
        let file = tokio::fs::File::open(&resolved.host)
            .await
            .map_err(|e| HttpError::from_rpc(&fs_error(&e, &absolute)))?;
        let mut response =
            Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 << 10))
                .into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/octet-stream"),
        );
        return Ok(response);
    }
    let bytes = tokio::fs::read(&resolved.host)
        .await
        .map_err(|e| HttpError::from_rpc(&fs_error(&e, &absolute)))?;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, bytes.len()));
    let mut response = match range {
        Some((start, end)) => {
            let mut response = Body::from(bytes[start..=end].to_vec()).into_response();
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(value) = format!("bytes {start}-{end}/{}", bytes.len()).parse() {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            response
        }
        None => Body::from(bytes).into_response(),
    };
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// Parses `bytes=a-b`, `bytes=a-` or `bytes=-n` into an inclusive range.
fn parse_range(value: &str, len: usize) -> Option<(usize, usize)> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') || len == 0 {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let n: usize = suffix.parse().ok()?;
            (len.saturating_sub(n), len - 1)
        }
        (s, "") => (s.parse().ok()?, len - 1),
        (s, e) => (s.parse().ok()?, e.parse::<usize>().ok()?.min(len - 1)),
    };
    (start <= end && start < len).then_some((start, end))
}

/// `POST /files`: multipart (field `file`, filename = target path unless `path`
/// is given) or `application/octet-stream` (optionally gzip) with `path`.
pub async fn upload(
    axum::Extension(sandbox): SandboxExt,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Result<Response, HttpError> {
    let user = user_of(&query)?;
    let path_param = query.get("path").filter(|p| !p.is_empty()).cloned();
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut written = Vec::new();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &())
            .await
            .map_err(|e| HttpError::bad_request(format!("invalid multipart body: {e}")))?;
        // As envd: each part is written as it is read, whole before the next is made (a
        // later part's failure leaves the earlier ones written); `path`, when given, names
        // every part's target (envd refuses a second part to one path).
        let mut any = false;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| HttpError::bad_request(format!("invalid multipart body: {e}")))?
        {
            if field.name() != Some("file") {
                continue;
            }
            any = true;
            let filename = field.file_name().map(str::to_string);
            let target = match (&path_param, filename) {
                (Some(path), _) => path.clone(),
                (None, Some(name)) if !name.is_empty() => name,
                _ => {
                    return Err(HttpError::bad_request(
                        "a `file` part has no filename and no `path` was given",
                    ))
                }
            };
            // A second part to one path is refused (the first stays written).
            let resolved = sandbox
                .fs
                .resolve(&target, user, true)
                .map_err(|e| HttpError::from_rpc(&e))?;
            if written.iter().any(|w: &WriteInfo| w.path == resolved.path) {
                return Err(HttpError::bad_request(format!(
                    "you cannot upload multiple files to the same path '{}' in one upload \
                     request, only the first specified file was uploaded",
                    resolved.path
                )));
            }
            let data = field
                .bytes()
                .await
                .map_err(|e| HttpError::bad_request(format!("reading multipart part: {e}")))?;
            written.push(write_file(&sandbox, user, &target, &data).await?);
        }
        if !any {
            return Err(HttpError::bad_request(
                "no `file` part in the multipart body",
            ));
        }
    } else {
        let path = path_param.ok_or_else(|| {
            HttpError::bad_request(
                "the `path` query parameter is required for octet-stream uploads",
            )
        })?;
        let gzip = request
            .headers()
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        let body = axum::body::to_bytes(request.into_body(), usize::MAX)
            .await
            .map_err(|e| HttpError::bad_request(format!("reading the upload: {e}")))?;
        let data = if gzip {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .map_err(|e| HttpError::bad_request(format!("invalid gzip body: {e}")))?;
            Bytes::from(out)
        } else {
            body
        };
        written.push(write_file(&sandbox, user, &path, &data).await?);
    }
    Ok(Json(written).into_response())
}

async fn write_file(
    sandbox: &Sandbox,
    user: SandboxUser,
    path: &str,
    data: &[u8],
) -> Result<WriteInfo, HttpError> {
    let fs = &sandbox.fs;
    let resolved = fs
        .resolve(path, user, true)
        .map_err(|e| HttpError::from_rpc(&e))?;
    fs.check_writable(&resolved, user)
        .map_err(|e| HttpError::from_rpc(&e))?;
    if resolved.host.is_dir() {
        return Err(HttpError::bad_request(format!(
            "path '{}' is a directory",
            resolved.path
        )));
    }
    fs.create_parents(&resolved, user)
        .map_err(|e| HttpError::from_rpc(&e))?;
    let existed = resolved.host.exists();
    tokio::fs::write(&resolved.host, data)
        .await
        .map_err(|e| HttpError::from_rpc(&fs_error(&e, &resolved.path)))?;
    if !existed {
        fs.give_to(&resolved.host, user);
    }
    let name = resolved
        .path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    Ok(WriteInfo {
        path: resolved.path,
        name,
        entry_type: "file".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges_are_clamped_and_inclusive() {
        assert_eq!(parse_range("bytes=0-3", 10), Some((0, 3)));
        assert_eq!(parse_range("bytes=5-", 10), Some((5, 9)));
        assert_eq!(parse_range("bytes=-2", 10), Some((8, 9)));
        assert_eq!(parse_range("bytes=8-100", 10), Some((8, 9)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
    }
}
