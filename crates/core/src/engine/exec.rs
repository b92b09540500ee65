//! The command phase: start the command with the run's environment, stream its events to
//! the sink, and on cancel stop its whole process tree (SIGTERM, a grace period while its
//! output still flows, then SIGKILL).

use std::time::Instant;

use super::run::Acquired;
use super::{Engine, CANCEL_BUDGET, KILL_WAIT};
use crate::engine::RunRequest;
use crate::error::{Error, Result};
use crate::events::OutputSink;
use crate::hint::Hint;
use crate::provider::{BoxSession, ExecEvent, ExecSpec, ExecStream, RunTarget, Signal, RUN_ID_VAR};

/// How the command phase ended.
pub(super) enum Ran {
    Exited(i32),
    Interrupted,
    /// `--timeout` passed: the command's whole process tree was stopped.
    TimedOut,
}

/// The exit code of a run whose `--timeout` passed (as coreutils' `timeout`).
pub const TIMEOUT_EXIT: i32 = 124;

/// A fresh run id: 128 random bits in hex.
pub fn new_run_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

impl Engine {
    /// Runs the command, streaming its output; on cancel stops it and everything it started.
    pub(super) async fn exec_phase(
        &self,
        acquired: &Acquired,
        req: &RunRequest,
        script: String,
        out: &mut dyn OutputSink,
    ) -> Result<Ran> {
        let session = acquired.session.as_ref();
        let run_id = new_run_id();
        let mut env = req.env.clone();
        env.insert(RUN_ID_VAR.to_string(), run_id.clone());
        let spec = ExecSpec {
            script,
            env,
            cwd: acquired.workdir.clone(),
            run_id: run_id.clone(),
        };
        let mut target = RunTarget { run_id, pid: None };
        let mut stream = tokio::select! {
            biased;
            _ = req.cancel.cancelled() => {
                // The start may have reached the box: stop whatever it began.
                let _ = tokio::time::timeout(
                    CANCEL_BUDGET / 2,
                    session.stop_run(&target, self.cancel_grace),
                )
                .await;
                return Ok(Ran::Interrupted);
            }
            s = session.start(&spec) => s?,
        };
        let deadline = req.extras.timeout.map(|t| tokio::time::Instant::now() + t);
        let timed_out = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timed_out);
        loop {
            let event = tokio::select! {
                biased;
                _ = req.cancel.cancelled() => {
                    let _ = tokio::time::timeout(
                        CANCEL_BUDGET / 2,
                        self.stop_command(session, stream.as_mut(), &mut target, out),
                    )
                    .await;
                    return Ok(Ran::Interrupted);
                }
                _ = &mut timed_out => {
                    let _ = tokio::time::timeout(
                        CANCEL_BUDGET / 2,
                        self.stop_command(session, stream.as_mut(), &mut target, out),
                    )
                    .await;
                    return Ok(Ran::TimedOut);
                }
                e = stream.next_event() => match e {
                    Ok(event) => event,
                    Err(e) if matches!(e.root(), Error::Transport(_)) => {
                        return Err(self.lost_command(acquired, req, &target, e).await);
                    }
                    Err(e) => return Err(e),
                },
            };
            let written = match event {
                Some(ExecEvent::Started { pid }) => {
                    target.pid = Some(pid);
                    Ok(())
                }
                Some(ExecEvent::Stdout(b)) => out.stdout(&b),
                Some(ExecEvent::Stderr(b)) => out.stderr(&b),
                Some(ExecEvent::Exited(code)) => return Ok(Ran::Exited(code)),
                None => {
                    let e = Error::Transport(format!(
                        "{} box {}: the command stream closed without the command's end \
                         event; its exit status is unknown",
                        self.name(),
                        acquired.target.remote_id
                    ));
                    return Err(self.lost_command(acquired, req, &target, e).await);
                }
            };
            if let Err(e) = written {
                // Nobody sees the output any more: the command must not run on unseen (on a
                // kept box, nothing else would stop it).
                let _ = tokio::time::timeout(
                    CANCEL_BUDGET / 2,
                    self.stop_command(session, stream.as_mut(), &mut target, out),
                )
                .await;
                return Err(output_error(e));
            }
        }
    }

    /// The command's stream broke while its box still runs: nobody would see the command
    /// any more, so it is stopped (on a kept box nothing else would), and the error says so,
    /// with the rerun to type when the box stays.
    async fn lost_command(
        &self,
        acquired: &Acquired,
        req: &RunRequest,
        target: &RunTarget,
        e: Error,
    ) -> Error {
        let session = acquired.session.as_ref();
        let _ = tokio::time::timeout(
            CANCEL_BUDGET / 2,
            session.stop_run(target, self.cancel_grace),
        )
        .await;
        let box_ref = &acquired.target;
        let lost = Error::Transport(format!(
            "lost the connection to the command on {} box {} (lease {}, {}): {e}; the command \
             was stopped and its exit status is unknown; run it again",
            self.name(),
            box_ref.remote_id,
            box_ref.lease_id,
            box_ref.slug
        ));
        if acquired.created {
            lost
        } else {
            lost.with_hint(Hint::Rerun {
                provider: self.name().to_string(),
                lease_id: box_ref.lease_id.clone(),
                command: req.command.clone(),
            })
        }
    }

    /// Stops the command's own process (SIGTERM, a grace period while output still flows,
    /// then SIGKILL) and, at the same time, every process of the run (which the provider
    /// finds by the run id, since signalling one pid does not reach its children).
    async fn stop_command(
        &self,
        session: &dyn BoxSession,
        stream: &mut dyn ExecStream,
        target: &mut RunTarget,
        out: &mut dyn OutputSink,
    ) {
        // The provider finds the run's processes by its id; the pid is not needed for that.
        let run = target.clone();
        let tree = session.stop_run(&run, self.cancel_grace);
        let own = async {
            let grace = self.cancel_grace;
            if target.pid.is_none() && drain(stream, target, out, Instant::now() + grace).await {
                return;
            }
            if target.pid.is_none() {
                return;
            }
            let _ = session.signal(target, Signal::Term).await;
            if drain(stream, target, out, Instant::now() + grace).await {
                return;
            }
            let _ = session.signal(target, Signal::Kill).await;
            let _ = drain(stream, target, out, Instant::now() + KILL_WAIT).await;
        };
        tokio::join!(own, tree);
    }
}

/// Forwards output until the command ends (`true`), its pid is first reported, or `until`.
/// Output that arrives while stopping is still the user's.
async fn drain(
    stream: &mut dyn ExecStream,
    target: &mut RunTarget,
    out: &mut dyn OutputSink,
    until: Instant,
) -> bool {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next_event()).await {
            Err(_) => return false,
            Ok(Err(_)) | Ok(Ok(None)) | Ok(Ok(Some(ExecEvent::Exited(_)))) => return true,
            Ok(Ok(Some(ExecEvent::Started { pid }))) => {
                target.pid = Some(pid);
                return false;
            }
            Ok(Ok(Some(ExecEvent::Stdout(b)))) => {
                let _ = out.stdout(&b);
            }
            Ok(Ok(Some(ExecEvent::Stderr(b)))) => {
                let _ = out.stderr(&b);
            }
        }
    }
}

fn output_error(e: std::io::Error) -> Error {
    Error::io("writing the command's output to", "<output>")(e)
}
