//! [`MemoryProvider`]: the box primitives over boxes held in memory, with a call log, scripted
//! commands and faults injected by construction.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::script::Script;
use super::session::MemSession;
use super::state::{Fault, Injected, MemBox, Node, Op, Process, State};
use crate::claims::ClaimStore;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::events::Reporter;
use crate::provider::{
    BoxRef, BoxSession, Capabilities, CreateFailure, Created, NewBox, Provider, RemoteBox,
};

/// The provider's name and endpoint.
pub const MEMORY: &str = "memory";

/// A provider whose boxes live in memory. Clones share the same boxes, so a test keeps one
/// clone to script, inject faults and inspect while the engine owns another.
///
/// Boxes are `sbx1`, `sbx2`... in creation order; pids are 1, 2... across all boxes; a lease's
/// workdir is `/crabbox/<lease id>`. Commands are not run: [`MemoryProvider::script`] says
/// what a command with a given script text does, and a command without a script fails to
/// start.
#[derive(Clone, Default)]
pub struct MemoryProvider {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryProvider")
            .field("boxes", &self.shared.lock().boxes.len())
            .finish()
    }
}

/// The state every clone and session shares, and a signal that it changed.
pub(super) struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked mid-call must not hide the state from the next assertion.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes whoever waits on [`MemoryProvider::reached`]. Never called with the lock held.
    pub(super) fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Logs a call and plays the fault waiting for it: an error, or no answer ever.
    pub(super) async fn enter(&self, op: Op, detail: &str) -> Result<()> {
        let injected = self.lock().call(op, detail);
        self.bump();
        match injected {
            None => Ok(()),
            Some(Injected::Fail(e)) => Err(e),
            Some(Injected::Hang) => std::future::pending().await,
            Some(Injected::LoseCreateAnswer(_)) => unreachable!("only create loses answers"),
        }
    }

    /// Ends process `pid` with `code` unless a signal ended it first; returns how it ended.
    pub(super) fn end_process(&self, pid: u32, code: i32) -> i32 {
        let code = self
            .lock()
            .processes
            .iter_mut()
            .find(|p| p.record.pid == pid)
            .map_or(code, |p| p.end(code));
        self.bump();
        code
    }
}

impl MemoryProvider {
    pub fn new() -> Self {
        Self::default()
    }

    /// An engine over a clone of this provider, its claims and sync state under `state_dir`.
    pub fn engine(&self, state_dir: &Path) -> Engine {
        Engine::new(
            Box::new(self.clone()),
            ClaimStore::new(state_dir.join("claims")),
            state_dir.to_path_buf(),
        )
    }

    // --- Scripting commands -----------------------------------------------------------------

    /// A command whose script is exactly `text` behaves as `script`. The first registration
    /// that matches a command wins.
    pub fn script(&self, text: &str, script: Script) {
        let text = text.to_string();
        self.script_matching(move |s| s == text, script);
    }

    /// A command whose script satisfies `matches` behaves as `script`.
    pub fn script_matching(
        &self,
        matches: impl Fn(&str) -> bool + Send + Sync + 'static,
        script: Script,
    ) {
        self.shared.lock().scripts.push((Arc::new(matches), script));
    }

    // --- Faults -----------------------------------------------------------------------------

    /// The next call of `op` fails with `error` (for `stop_run`, which cannot fail: does
    /// nothing). Faults of one primitive are used in the order they were added.
    pub fn fail(&self, op: Op, error: Error) {
        self.add_fault(op, Fault::Once(error));
    }

    /// Every call of `op` fails with what `error` makes.
    pub fn fail_always(&self, op: Op, error: impl Fn() -> Error + Send + Sync + 'static) {
        self.add_fault(op, Fault::Every(Arc::new(error)));
    }

    /// The next call of `op` never answers. A hung `create` has made its box first (the
    /// request reached the service); a hung `apply` still ends on its cancel token, as the
    /// contract asks of every provider.
    pub fn hang(&self, op: Op) {
        self.add_fault(op, Fault::Hang);
    }

    /// The next `create` makes its box, then fails with `error` and `maybe_created: true`,
    /// as when the service's answer is lost.
    pub fn lose_create_answer(&self, error: Error) {
        self.add_fault(Op::Create, Fault::LoseCreateAnswer(error));
    }

    /// The next call of `op` first writes a file on a box, behind the engine's back (a
    /// command still running wrote it just then).
    pub fn write_file_when(&self, op: Op, remote_id: &str, path: &str, data: &[u8]) {
        let (remote_id, path, data) = (remote_id.to_string(), path.to_string(), data.to_vec());
        let change = move |boxes: &mut BTreeMap<String, MemBox>| {
            if let Some(b) = boxes.get_mut(&remote_id) {
                b.files.insert(
                    path,
                    Node::File {
                        data,
                        mode: 0o644,
                        mtime: 1,
                    },
                );
            }
        };
        self.add_fault(op, Fault::Tamper(Box::new(change)));
    }

    fn add_fault(&self, op: Op, fault: Fault) {
        self.shared.lock().faults.push((op, fault));
    }

    // --- Looking and tampering ---------------------------------------------------------------

    /// Every primitive call so far, in order: `create <lease>`, `delete_lease_boxes <lease>
    /// settle=<bool>`, `inspect|open|delete <box>`, `find_unclaimed <id> by_tags=<bool>`,
    /// `list`, `exists|make_dir <box> <path>`, `apply <box>`, `start <box>`,
    /// `signal <box> TERM|KILL pid=<pid>`, `stop_run <box>`.
    pub fn calls(&self) -> Vec<String> {
        self.shared.lock().calls.clone()
    }

    /// How many times `op` was called.
    pub fn count(&self, op: Op) -> usize {
        self.shared.lock().ops.iter().filter(|o| **o == op).count()
    }

    /// Forgets the calls so far (to look at one phase of a test alone).
    pub fn clear_calls(&self) {
        let mut st = self.shared.lock();
        st.calls.clear();
        st.ops.clear();
    }

    /// Resolves once `op` has been called (at once if it already was).
    pub async fn reached(&self, op: Op) {
        let mut rx = self.shared.changed.subscribe();
        let _ = rx.wait_for(|_| self.count(op) > 0).await;
    }

    pub fn boxes(&self) -> Vec<MemBox> {
        self.shared.lock().boxes.values().cloned().collect()
    }

    pub fn get_box(&self, remote_id: &str) -> Option<MemBox> {
        self.shared.lock().boxes.get(remote_id).cloned()
    }

    /// Every process started, in order.
    pub fn processes(&self) -> Vec<Process> {
        let st = self.shared.lock();
        st.processes.iter().map(|p| p.record.clone()).collect()
    }

    /// Deletes a box behind the engine's back (it expired).
    pub fn remove_box(&self, remote_id: &str) {
        self.shared.lock().boxes.remove(remote_id);
    }

    /// Removes `path` and everything under it from a box, behind the engine's back.
    pub fn remove_path(&self, remote_id: &str, path: &str) {
        if let Some(b) = self.shared.lock().boxes.get_mut(remote_id) {
            b.remove_path(path);
        }
    }

    /// Writes a file on a box behind the engine's back (a command rewrote it).
    pub fn write_file(&self, remote_id: &str, path: &str, data: &[u8]) {
        if let Some(b) = self.shared.lock().boxes.get_mut(remote_id) {
            b.files.insert(
                path.to_string(),
                Node::File {
                    data: data.to_vec(),
                    mode: 0o644,
                    mtime: 1,
                },
            );
        }
    }

    fn session(&self, remote_id: &str) -> Box<dyn BoxSession> {
        Box::new(MemSession::new(self.shared.clone(), remote_id))
    }

    /// The box `target` names, refused when its tags name another lease.
    fn tagged_box(&self, target: &BoxRef) -> Result<Option<RemoteBox>> {
        let st = self.shared.lock();
        let Some(b) = st.boxes.get(&target.remote_id) else {
            return Ok(None);
        };
        if b.lease_id != target.lease_id {
            return Err(Error::NotOurs(format!(
                "memory box {} is tagged with lease {}, not {}",
                b.remote_id, b.lease_id, target.lease_id
            )));
        }
        Ok(Some(remote(b)))
    }
}

fn remote(b: &MemBox) -> RemoteBox {
    RemoteBox {
        remote_id: b.remote_id.clone(),
        lease_id: Some(b.lease_id.clone()),
        slug: Some(b.slug.clone()),
        state: "running".into(),
        running: true,
        workdir: Some(b.workdir.clone()),
        created_at: None,
        expires_at: None,
        details: Default::default(),
    }
}

#[async_trait]
impl Provider for MemoryProvider {
    fn name(&self) -> &'static str {
        MEMORY
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            remote_kill: true,
            warm_reuse: true,
            reclaim: true,
            ..Capabilities::default()
        }
    }

    fn endpoint(&self) -> String {
        MEMORY.to_string()
    }

    fn workdir(&self, lease_id: &str) -> Result<String> {
        Ok(format!("/crabbox/{lease_id}"))
    }

    async fn create(
        &self,
        new: &NewBox<'_>,
        _reporter: &dyn Reporter,
    ) -> std::result::Result<Created, CreateFailure> {
        // Logged, faulted and made under one lock: whoever sees the call sees the box.
        let (injected, remote_id) = {
            let mut st = self.shared.lock();
            let injected = st.call(Op::Create, new.lease_id);
            if let Some(Injected::Fail(e)) = injected {
                drop(st);
                self.shared.bump();
                return Err(e.into());
            }
            st.boxes_made += 1;
            let remote_id = format!("sbx{}", st.boxes_made);
            st.boxes.insert(
                remote_id.clone(),
                MemBox {
                    remote_id: remote_id.clone(),
                    lease_id: new.lease_id.to_string(),
                    slug: new.slug.to_string(),
                    keep: new.keep,
                    workdir: new.workdir.to_string(),
                    dirs: Default::default(),
                    files: Default::default(),
                    applied: Vec::new(),
                    records: BTreeMap::new(),
                },
            );
            (injected, remote_id)
        };
        self.shared.bump();
        match injected {
            None => Ok(Created {
                session: self.session(&remote_id),
                remote_id,
                labels: BTreeMap::new(),
            }),
            Some(Injected::Hang) => std::future::pending().await,
            Some(Injected::LoseCreateAnswer(error)) => Err(CreateFailure {
                error,
                maybe_created: true,
                in_flight: false,
            }),
            Some(Injected::Fail(_)) => unreachable!("returned above"),
        }
    }

    async fn delete_lease_boxes(&self, lease_id: &str, settle: bool) -> Result<Vec<String>> {
        self.shared
            .enter(Op::DeleteLeaseBoxes, &format!("{lease_id} settle={settle}"))
            .await?;
        let mut st = self.shared.lock();
        let ids: Vec<String> = st
            .boxes
            .values()
            .filter(|b| b.lease_id == lease_id)
            .map(|b| b.remote_id.clone())
            .collect();
        for id in &ids {
            st.boxes.remove(id);
        }
        Ok(ids)
    }

    async fn inspect(&self, target: &BoxRef) -> Result<Option<RemoteBox>> {
        self.shared.enter(Op::Inspect, &target.remote_id).await?;
        self.tagged_box(target)
    }

    async fn find_unclaimed(&self, id: &str, by_tags: bool) -> Result<Option<RemoteBox>> {
        self.shared
            .enter(Op::FindUnclaimed, &format!("{id} by_tags={by_tags}"))
            .await?;
        let st = self.shared.lock();
        let found: Vec<&MemBox> = st
            .boxes
            .values()
            .filter(|b| b.remote_id == id || (by_tags && (b.lease_id == id || b.slug == id)))
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(remote(one))),
            _ => Err(Error::Usage(format!("{id:?} names several memory boxes"))),
        }
    }

    async fn open(&self, target: &BoxRef, _ttl: Duration) -> Result<Box<dyn BoxSession>> {
        self.shared.enter(Op::Open, &target.remote_id).await?;
        match self.tagged_box(target)? {
            Some(_) => Ok(self.session(&target.remote_id)),
            None => Err(Error::NotFound(format!(
                "memory box {} of lease {} is gone",
                target.remote_id, target.lease_id
            ))),
        }
    }

    async fn delete(&self, target: &BoxRef) -> Result<bool> {
        self.shared.enter(Op::Delete, &target.remote_id).await?;
        if self.tagged_box(target)?.is_none() {
            return Ok(false);
        }
        self.shared.lock().boxes.remove(&target.remote_id);
        Ok(true)
    }

    async fn list(&self) -> Result<Vec<RemoteBox>> {
        self.shared.enter(Op::List, "").await?;
        Ok(self.shared.lock().boxes.values().map(remote).collect())
    }
}
