//! Retry policy for idempotent control-plane calls: 429/502/503/504 and broken exchanges (a
//! connection refused, reset or closed before the whole answer arrived, a timeout),
//! honouring `Retry-After` up to a cap and an authoritative `Should-Retry`, as E2B's SDKs do.

use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::StatusCode;

/// How often and how patiently to retry an idempotent call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt when the server gives no `Retry-After`; doubled after.
    pub base_delay: Duration,
    /// The cap of any single delay, `Retry-After` included: a server asking for longer is
    /// retried after this (and, once attempts run out, the error says what it asked for).
    pub max_delay: Duration,
    /// Waits at least this long are reported (what failed, how long, which attempt is next)
    /// rather than spent in silence.
    pub report_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            report_after: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The delay before attempt `attempt + 1` (`attempt` counts from 1).
    pub fn backoff(&self, attempt: u32, headers: Option<&HeaderMap>) -> Duration {
        let server = headers.and_then(retry_after);
        let ours = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        server.unwrap_or(ours).min(self.max_delay)
    }
}

/// The failures worth another try, as the official SDK decides: a `Should-Retry` header is
/// authoritative when present (`true` retries any failure status, anything else none);
/// without it, 429/502/503/504 are retried.
pub fn is_retryable(status: StatusCode, headers: &HeaderMap) -> bool {
    if status.is_success() || status.is_redirection() {
        return false;
    }
    match headers.get("should-retry") {
        Some(v) => v
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("true")),
        None => matches!(status.as_u16(), 429 | 502 | 503 | 504),
    }
}

/// A broken exchange worth another try on an idempotent call: no connection (refused, TLS),
/// a timeout, or a connection that broke while the request or the answer travelled (reset,
/// closed before the answer was complete). Not a request crabbox failed to build, nor a
/// redirect.
pub fn is_retryable_error(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

/// `Retry-After` in seconds (the HTTP-date form is rare for APIs and falls back to backoff).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_wins_over_backoff_but_is_capped() {
        let p = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let mut h = HeaderMap::new();
        assert_eq!(p.backoff(1, Some(&h)), Duration::from_millis(10));
        assert_eq!(p.backoff(3, Some(&h)), Duration::from_millis(40));
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(p.backoff(1, Some(&h)), Duration::from_secs(2));
        h.insert("retry-after", HeaderValue::from_static("600"));
        assert_eq!(p.backoff(1, Some(&h)), Duration::from_secs(5));
    }

    #[test]
    fn overload_statuses_retry_and_should_retry_is_authoritative() {
        let h = HeaderMap::new();
        for s in [429, 502, 503, 504] {
            assert!(is_retryable(StatusCode::from_u16(s).unwrap(), &h), "{s}");
        }
        for s in [400, 401, 404, 409, 500] {
            assert!(!is_retryable(StatusCode::from_u16(s).unwrap(), &h), "{s}");
        }
        let mut no = HeaderMap::new();
        no.insert("should-retry", HeaderValue::from_static("false"));
        assert!(!is_retryable(StatusCode::SERVICE_UNAVAILABLE, &no));
        // As in the SDK (e2b/retry.py `_retry_delay`), a present header is authoritative.
        let mut odd = HeaderMap::new();
        odd.insert("should-retry", HeaderValue::from_static("maybe"));
        assert!(!is_retryable(StatusCode::TOO_MANY_REQUESTS, &odd));
        let mut yes = HeaderMap::new();
        yes.insert("should-retry", HeaderValue::from_static("True"));
        assert!(is_retryable(StatusCode::INTERNAL_SERVER_ERROR, &yes));
        assert!(is_retryable(StatusCode::CONFLICT, &yes));
        assert!(!is_retryable(StatusCode::OK, &yes), "never a success");
        assert!(!is_retryable(StatusCode::TEMPORARY_REDIRECT, &yes));
    }
}
