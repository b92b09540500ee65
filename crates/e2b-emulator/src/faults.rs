//! Faults a test programs into a running emulator: overload answers, stalls, connections
//! reset before or after the request reached a handler, streams cut short, sandboxes killed
//! under a request.
//!
//! A [`Fault`] matches requests by plane, method and path pattern and fires `count` times
//! (after letting `skip` matching requests through). Tests program them through the admin
//! routes under [`ADMIN_PREFIX`] (loopback only like everything else, behind the API key):
//! `POST` a JSON array of faults to add them, `GET` the ones still armed with how often each
//! fired, `DELETE` to clear them all. In-process tests use [`crate::EmulatorHandle::faults`].
//! Without faults the emulator answers exactly as it does otherwise: matching happens once
//! per request, before routing.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Where the admin routes live. Never an E2B route.
pub const ADMIN_PREFIX: &str = "/_emulator/faults";

/// Which plane a request went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Plane {
    Control,
    Envd,
    #[default]
    Any,
}

/// What happens to a matching request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum FaultAction {
    /// Answers this HTTP status with E2B's error body (`{"code", "message"}`) instead of
    /// handling the request; `retryAfter` (seconds) adds the header.
    Status {
        status: u16,
        #[serde(default)]
        retry_after: Option<u64>,
        #[serde(default)]
        message: Option<String>,
    },
    /// Waits this many milliseconds before handling the request (a client with a shorter
    /// timeout gives up first; the request is handled anyway, as a slow service would), or
    /// until the faults are cleared, whichever comes first: a test holds a request for as
    /// long as it takes something else to happen, then lets it go.
    Stall { ms: u64 },
    /// Closes the connection without an answer, before the request reaches a handler.
    ResetBefore,
    /// Handles the request whole (its effect happens), then closes the connection instead
    /// of answering.
    ResetAfter,
    /// Answers normally but cuts the response body after this many body chunks (a
    /// `process.Process/Start` stream sends one envelope per chunk: the start event first,
    /// then output), leaving it unterminated as a dropped connection does.
    DropStreamAfter { chunks: u32 },
    /// Kills the sandbox the request names (its `E2b-Sandbox-Id`, or the id in a
    /// `/sandboxes/{id}` path), then handles the request: envd answers 502 as E2B's proxy
    /// does for a sandbox that is gone.
    KillSandbox,
}

/// One programmed fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub plane: Plane,
    /// HTTP method (`GET`, `POST`, ...); any when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// The request path (no query); `*` matches any run of characters, `/` included.
    pub path: String,
    /// How many matching requests it fires on; then it is spent.
    #[serde(default = "one")]
    pub count: u32,
    /// Matching requests let through before it starts firing.
    #[serde(default)]
    pub skip: u32,
    /// `"METHOD path"` (the path a pattern as in `path`) of a request on the same plane that
    /// must be seen, after the fault is armed, before it counts any: a fault for a step that
    /// follows another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Text the request's body must contain (a body is read for it when its stated length is
    /// at most [`BODY_MATCHED_AT_MOST`] bytes; any other never matches): a fault for one of
    /// many requests to one route, such as a `MakeDir` of one directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub action: FaultAction,
}

/// The longest request body a fault's [`Fault::body`] is looked for in.
pub const BODY_MATCHED_AT_MOST: usize = 1 << 20;

fn one() -> u32 {
    1
}

impl Fault {
    pub fn new(plane: Plane, method: &str, path: &str, action: FaultAction) -> Self {
        Fault {
            plane,
            method: Some(method.to_string()),
            path: path.to_string(),
            count: 1,
            skip: 0,
            after: None,
            body: None,
            action,
        }
    }

    /// Fires only on requests whose body contains `text` (see [`Fault::body`]).
    pub fn with_body(mut self, text: &str) -> Self {
        self.body = Some(text.to_string());
        self
    }

    /// Counts requests only once one `"METHOD path"` has been seen (see [`Fault::after`]).
    pub fn after(mut self, request: &str) -> Self {
        self.after = Some(request.to_string());
        self
    }

    /// The request opens this fault (see [`Fault::after`]).
    fn opened_by(&self, plane: Plane, method: &str, path: &str) -> bool {
        let Some((m, p)) = self.after.as_deref().and_then(|a| a.split_once(' ')) else {
            return false;
        };
        (self.plane == Plane::Any || self.plane == plane)
            && m.eq_ignore_ascii_case(method)
            && glob_match(p.as_bytes(), path.as_bytes())
    }

    pub fn times(mut self, count: u32) -> Self {
        self.count = count;
        self
    }

    fn matches(&self, plane: Plane, method: &str, path: &str) -> bool {
        (self.plane == Plane::Any || self.plane == plane)
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && glob_match(self.path.as_bytes(), path.as_bytes())
    }

    fn matches_body(&self, body: Option<&[u8]>) -> bool {
        self.body.as_deref().is_none_or(|want| {
            body.is_some_and(|b| b.windows(want.len()).any(|w| w == want.as_bytes()))
        })
    }
}

/// A fault as the admin route reports it: how often it fired so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArmedFault {
    #[serde(flatten)]
    pub fault: Fault,
    pub fired: u32,
}

struct Armed {
    fault: Fault,
    seen: AtomicU32,
    fired: AtomicU32,
    /// Counting requests ([`Fault::after`] seen, or none to wait for).
    open: std::sync::atomic::AtomicBool,
}

/// The faults armed in one emulator, shared by every request.
#[derive(Clone, Default)]
pub struct Faults {
    armed: Arc<Mutex<Vec<Arc<Armed>>>>,
    /// Counts clears: stalls end at the next one.
    cleared: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Faults {
    /// Arms more faults; the earliest armed wins when several match one request.
    pub fn add(&self, faults: impl IntoIterator<Item = Fault>) {
        let mut armed = self.armed.lock().expect("faults lock");
        armed.extend(faults.into_iter().map(|fault| {
            Arc::new(Armed {
                open: std::sync::atomic::AtomicBool::new(fault.after.is_none()),
                fault,
                seen: AtomicU32::new(0),
                fired: AtomicU32::new(0),
            })
        }));
    }

    /// Disarms every fault, and ends the stalls under way.
    pub fn clear(&self) {
        let mut armed = self.armed.lock().expect("faults lock");
        armed.clear();
        // Counted under the lock: a fault taken is taken between two clears.
        self.cleared.send_modify(|n| *n += 1);
    }

    /// Waits `ms` milliseconds, or less once the faults are cleared after `since` clears (the
    /// count [`Faults::take_counted`] gave with the stall: a clear after its fault was taken,
    /// even before the stall began, ends it at once).
    pub async fn stall(&self, ms: u64, since: u64) {
        let mut cleared = self.cleared.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(ms)) => {}
            _ = cleared.wait_for(|n| *n != since) => {}
        }
    }

    /// Every fault armed since the last clear, spent ones included, with how often it fired.
    pub fn list(&self) -> Vec<ArmedFault> {
        self.armed
            .lock()
            .expect("faults lock")
            .iter()
            .map(|a| ArmedFault {
                fault: a.fault.clone(),
                fired: a.fired.load(Ordering::SeqCst),
            })
            .collect()
    }

    /// The action for a request, if a fault fires on it (counting it as fired).
    pub fn take(&self, plane: Plane, method: &str, path: &str) -> Option<FaultAction> {
        self.take_with_body(plane, method, path, None)
    }

    /// [`Faults::take_with_body`], with how many times the faults had been cleared when it
    /// was taken (for [`Faults::stall`]).
    pub fn take_counted(
        &self,
        plane: Plane,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Option<(FaultAction, u64)> {
        let armed = self.armed.lock().expect("faults lock");
        let clears = *self.cleared.borrow();
        Self::take_from(&armed, plane, method, path, body).map(|a| (a, clears))
    }

    /// Whether a request's body is needed to tell which faults it matches ([`Fault::body`]).
    pub fn wants_body(&self, plane: Plane, method: &str, path: &str) -> bool {
        let armed = self.armed.lock().expect("faults lock");
        armed
            .iter()
            .any(|a| a.fault.body.is_some() && a.fault.matches(plane, method, path))
    }

    /// [`Faults::take`] of a request whose body (when read, see [`Faults::wants_body`]) is
    /// `body`.
    pub fn take_with_body(
        &self,
        plane: Plane,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Option<FaultAction> {
        self.take_counted(plane, method, path, body).map(|(a, _)| a)
    }

    /// The action of the first armed fault `armed` holds that this request fires.
    fn take_from(
        armed: &[Arc<Armed>],
        plane: Plane,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Option<FaultAction> {
        // Opened by this request: counting from the next one.
        let opened: Vec<bool> = armed
            .iter()
            .map(|a| {
                !a.open.load(Ordering::SeqCst)
                    && a.fault.opened_by(plane, method, path)
                    && !a.open.swap(true, Ordering::SeqCst)
            })
            .collect();
        for (a, opened_now) in armed.iter().zip(opened) {
            if opened_now
                || !a.open.load(Ordering::SeqCst)
                || a.fired.load(Ordering::SeqCst) >= a.fault.count
                || !a.fault.matches(plane, method, path)
                || !a.fault.matches_body(body)
            {
                continue;
            }
            if a.seen.fetch_add(1, Ordering::SeqCst) < a.fault.skip {
                continue;
            }
            a.fired.fetch_add(1, Ordering::SeqCst);
            return Some(a.fault.action.clone());
        }
        None
    }
}

/// `*` matches any run of bytes; everything else matches itself.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_paths() {
        assert!(glob_match(b"/sandboxes/*", b"/sandboxes/abc"));
        assert!(glob_match(b"/sandboxes/*", b"/sandboxes/abc/timeout"));
        assert!(glob_match(b"*/connect", b"/v2/sandboxes/x/connect"));
        assert!(glob_match(b"/v2/sandboxes", b"/v2/sandboxes"));
        assert!(!glob_match(b"/v2/sandboxes", b"/v2/sandboxes/x"));
        assert!(!glob_match(b"/sandboxes/*", b"/v2/sandboxes/x"));
        assert!(glob_match(b"*", b""));
    }

    #[test]
    fn a_fault_fires_count_times_after_skip_then_is_spent() {
        let faults = Faults::default();
        let mut f = Fault::new(
            Plane::Control,
            "DELETE",
            "/sandboxes/*",
            FaultAction::ResetBefore,
        )
        .times(2);
        f.skip = 1;
        faults.add([f]);
        let take = || faults.take(Plane::Control, "DELETE", "/sandboxes/a");
        assert_eq!(take(), None, "skipped");
        assert_eq!(take(), Some(FaultAction::ResetBefore));
        assert_eq!(faults.take(Plane::Envd, "DELETE", "/sandboxes/a"), None);
        assert_eq!(faults.take(Plane::Control, "GET", "/sandboxes/a"), None);
        assert_eq!(take(), Some(FaultAction::ResetBefore));
        assert_eq!(take(), None, "spent");
        assert_eq!(faults.list()[0].fired, 2);
    }

    #[tokio::test]
    async fn a_stall_ends_on_a_clear_made_after_its_fault_was_taken_even_before_it_began() {
        let faults = Faults::default();
        faults.add([Fault::new(
            Plane::Control,
            "GET",
            "/x",
            FaultAction::Stall { ms: 600_000 },
        )]);
        let (_, since) = faults
            .take_counted(Plane::Control, "GET", "/x", None)
            .expect("armed");
        faults.clear();
        tokio::time::timeout(
            std::time::Duration::from_secs(30),
            faults.stall(600_000, since),
        )
        .await
        .expect("the clear ended the stall");
    }

    #[test]
    fn a_fault_with_body_text_fires_only_on_requests_whose_body_has_it() {
        let faults = Faults::default();
        let route = "/filesystem.Filesystem/MakeDir";
        faults.add([
            Fault::new(Plane::Envd, "POST", route, FaultAction::ResetBefore).with_body("/p-"),
        ]);
        assert!(faults.wants_body(Plane::Envd, "POST", route));
        assert!(!faults.wants_body(Plane::Envd, "POST", "/files"));
        let take = |body: Option<&[u8]>| faults.take_with_body(Plane::Envd, "POST", route, body);
        assert_eq!(take(Some(br#"{"path":"/home/user/w"}"#)), None);
        assert_eq!(take(None), None, "a body not read never matches");
        assert_eq!(
            take(Some(br#"{"path":"/home/user/.w.crabbox-watch/p-0a1b"}"#)),
            Some(FaultAction::ResetBefore)
        );
        let parsed: Fault = serde_json::from_str(&format!(
            r#"{{"plane":"envd","path":"{route}","body":"/p-","action":"resetBefore"}}"#
        ))
        .unwrap();
        assert_eq!(parsed.body.as_deref(), Some("/p-"));
    }

    #[test]
    fn a_fault_after_another_request_counts_only_once_that_is_seen() {
        let faults = Faults::default();
        let f = Fault::new(Plane::Envd, "GET", "/files", FaultAction::ResetBefore)
            .after("POST /files")
            .times(1);
        faults.add([f]);
        let get = || faults.take(Plane::Envd, "GET", "/files");
        assert_eq!(get(), None, "nothing posted yet");
        assert_eq!(faults.take(Plane::Control, "POST", "/files"), None);
        assert_eq!(get(), None, "a post on another plane does not open it");
        assert_eq!(faults.take(Plane::Envd, "POST", "/files"), None);
        assert_eq!(get(), Some(FaultAction::ResetBefore));
        assert_eq!(get(), None, "spent");
        // A fault that matches its own opener does not fire on it.
        let faults = Faults::default();
        faults.add([
            Fault::new(Plane::Envd, "POST", "/files", FaultAction::ResetAfter).after("POST /files"),
        ]);
        assert_eq!(faults.take(Plane::Envd, "POST", "/files"), None);
        assert_eq!(
            faults.take(Plane::Envd, "POST", "/files"),
            Some(FaultAction::ResetAfter)
        );
        let parsed: Fault = serde_json::from_str(
            r#"{"plane":"envd","method":"GET","path":"/files","after":"POST /files","action":"resetBefore"}"#,
        )
        .unwrap();
        assert_eq!(parsed.after.as_deref(), Some("POST /files"));
    }

    #[test]
    fn faults_parse_from_the_admin_json() {
        let parsed: Vec<Fault> = serde_json::from_str(
            r#"[{"plane":"control","method":"GET","path":"/v2/sandboxes","count":3,
                 "action":{"status":{"status":503,"retryAfter":1}}},
                {"plane":"envd","path":"/process.Process/Start","action":{"dropStreamAfter":{"chunks":2}}},
                {"path":"*","action":"resetBefore"}]"#,
        )
        .unwrap();
        assert_eq!(parsed[0].count, 3);
        assert_eq!(parsed[1].action, FaultAction::DropStreamAfter { chunks: 2 });
        assert_eq!(parsed[2].plane, Plane::Any);
        assert_eq!(parsed[2].count, 1);
    }
}
