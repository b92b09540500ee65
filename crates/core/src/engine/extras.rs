//! What a run does around its command: the lease handle file, a local script put on the box,
//! captured output, detached starts, and fetching artifacts and reports afterwards.

use std::path::PathBuf;

use super::exec::Ran;
use super::run::Acquired;
use super::Engine;
use crate::command::shell_quote;
use crate::engine::junit::JunitSummary;
use crate::engine::outputs::{self, ArtifactReport};
use crate::engine::RunRequest;
use crate::error::{Error, Result};
use crate::events::{OutputSink, Reporter};
use crate::hint::Hint;

/// `--lease-output`: how to find the box again.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct LeaseHandle<'a> {
    lease_id: &'a str,
    slug: &'a str,
    provider: &'a str,
    /// The provider's id (the E2B sandbox id).
    remote_id: &'a str,
    workdir: &'a str,
    created: bool,
}

/// Writes the command's output to files as it passes to the front end's sink.
struct Tee<'a> {
    inner: &'a mut dyn OutputSink,
    stdout: Option<std::fs::File>,
    stderr: Option<std::fs::File>,
}

impl OutputSink for Tee<'_> {
    fn stdout(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if let Some(f) = &mut self.stdout {
            std::io::Write::write_all(f, chunk)?;
        }
        self.inner.stdout(chunk)
    }
    fn stderr(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        if let Some(f) = &mut self.stderr {
            std::io::Write::write_all(f, chunk)?;
        }
        self.inner.stderr(chunk)
    }
}

fn create(path: &Option<PathBuf>) -> Result<Option<std::fs::File>> {
    path.as_ref()
        .map(|p| std::fs::File::create(p).map_err(Error::io("creating capture file", p)))
        .transpose()
}

impl Engine {
    pub(super) fn write_lease_output(&self, acquired: &Acquired, req: &RunRequest) -> Result<()> {
        let Some(path) = &req.extras.lease_output else {
            return Ok(());
        };
        let handle = LeaseHandle {
            lease_id: &acquired.target.lease_id,
            slug: &acquired.target.slug,
            provider: self.name(),
            remote_id: &acquired.target.remote_id,
            workdir: &acquired.workdir,
            created: acquired.created,
        };
        let mut body = serde_json::to_vec_pretty(&handle).expect("serializable");
        body.push(b'\n');
        crate::paths::write_atomic(path, &body)
    }

    /// Puts `--script`'s file on the box; the command line that runs it, and where it is.
    async fn put_script(
        &self,
        acquired: &Acquired,
        req: &RunRequest,
    ) -> Result<Option<(String, String)>> {
        let Some(script) = &req.extras.script else {
            return Ok(None);
        };
        let name: String = script
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let dir = super::detach::runs_dir(&acquired.workdir);
        let path = format!("{dir}/scripts/{}-{name}", &super::exec::new_run_id()[..12]);
        acquired
            .session
            .write_file(&path, &script.body)
            .await
            .map_err(|e| match e {
                Error::Usage(m) => Error::Usage(format!("--script: {m}")),
                e => e,
            })?;
        let args: Vec<String> = script.args.iter().map(|a| shell_quote(a)).collect();
        let quoted = shell_quote(&path);
        // The file's own interpreter when it names one, else bash.
        let line = if script.body.starts_with(b"#!") {
            format!("chmod +x {quoted} && exec {quoted} {}", args.join(" "))
        } else {
            format!("exec bash {quoted} {}", args.join(" "))
        };
        Ok(Some((line.trim_end().to_string(), path)))
    }

    /// The command (or script) with its output streamed to `out` and captured as asked.
    pub(super) async fn exec_attached(
        &self,
        acquired: &Acquired,
        req: &RunRequest,
        out: &mut dyn OutputSink,
        reporter: &dyn Reporter,
    ) -> Result<Ran> {
        let x = &req.extras;
        let mut tee = Tee {
            inner: out,
            stdout: create(&x.capture_stdout)?,
            stderr: create(&x.capture_stderr)?,
        };
        let script = self.put_script(acquired, req).await?;
        let line = match &script {
            Some((line, _)) => line.clone(),
            None => req.command.script(),
        };
        let ran = self.exec_phase(acquired, req, line, &mut tee).await;
        drop(tee);
        if let Some((_, path)) = &script {
            // Best effort: the file is beside the workdir, out of the tree.
            let _ = super::boxcmd::capture(
                acquired.session.as_ref(),
                "/",
                &format!("rm -f -- {}", shell_quote(path)),
                Default::default(),
                1024,
                &tokio_util::sync::CancellationToken::new(),
            )
            .await;
        }
        if x.capture_on_fail && matches!(ran, Ok(Ran::Exited(0))) {
            for p in [&x.capture_stdout, &x.capture_stderr].into_iter().flatten() {
                let _ = std::fs::remove_file(p);
            }
        } else {
            for p in [&x.capture_stdout, &x.capture_stderr].into_iter().flatten() {
                reporter.status(&format!("captured output in {}", p.display()));
            }
        }
        ran
    }

    /// Starts the command detached; its run id.
    pub(super) async fn detach(
        &self,
        acquired: &Acquired,
        req: &RunRequest,
        reporter: &dyn Reporter,
    ) -> Result<String> {
        let script = self.put_script(acquired, req).await?;
        let (line, text) = match &script {
            Some((line, _)) => (
                line.clone(),
                format!(
                    "--script {}",
                    req.extras
                        .script
                        .as_ref()
                        .map(|s| s.name.as_str())
                        .unwrap_or("")
                ),
            ),
            None => (req.command.script(), req.command.argv.join(" ")),
        };
        let run = self.start_detached(acquired, req, line, text).await?;
        reporter.status(&format!(
            "started run {} on {} box {} (lease {}, {}); its output is kept on the box",
            run.run_id,
            self.name(),
            run.remote_id,
            run.lease_id,
            run.slug
        ));
        reporter.hint(&Hint::DetachedRun {
            provider: self.name().to_string(),
            run_id: run.run_id.clone(),
        });
        Ok(run.run_id)
    }

    /// Fetches the run's artifacts and reports; a failure is reported in the report, so the
    /// box is still released by its keep policy.
    pub(super) async fn fetch_outputs(
        &self,
        acquired: &Acquired,
        req: &RunRequest,
        reporter: &dyn Reporter,
    ) -> (ArtifactReport, Option<JunitSummary>) {
        let x = &req.extras;
        let fetched = outputs::collect(
            acquired.session.as_ref(),
            &acquired.workdir,
            &acquired.target.lease_id,
            req.repo_root.as_deref(),
            x,
            reporter,
            &req.cancel,
        )
        .await;
        let report = match fetched {
            Ok(r) => r,
            Err(e) => ArtifactReport {
                error: Some(format!("fetching the run's outputs failed: {e}")),
                ..ArtifactReport::default()
            },
        };
        if let Some(line) = outputs::summary(&report) {
            reporter.status(&line);
        }
        for m in &report.missing_required {
            reporter.status(&format!(
                "error: required artifact {m} is not on {} box {} under {} (--require-artifact)",
                self.name(),
                acquired.target.remote_id,
                acquired.workdir
            ));
        }
        let junit = (!x.junit.is_empty()).then(|| {
            let mut set = globset::GlobSetBuilder::new();
            for g in &x.junit {
                if let Ok(g) = globset::GlobBuilder::new(g).literal_separator(true).build() {
                    set.add(g);
                }
            }
            let set = set.build().unwrap_or_else(|_| globset::GlobSet::empty());
            let files: Vec<PathBuf> = report
                .files
                .iter()
                .filter(|f| set.is_match(&f.remote))
                .map(|f| f.local.clone())
                .collect();
            let summary = JunitSummary::read(&files);
            reporter.status(&summary.render());
            summary
        });
        (report, junit)
    }
}

impl Engine {
    /// `crabbox download`: fetches `d` from the box of lease `id`.
    pub async fn download(
        &self,
        id: &str,
        d: crate::engine::Download,
        reporter: &dyn Reporter,
    ) -> Result<ArtifactReport> {
        let located = self.locate(id).await?;
        let session = self
            .provider
            .open(&located.target, self.provider.ttl(self.ttl))
            .await?;
        let workdir = self.provider.workdir(&located.target.lease_id)?;
        let remote = d.remote.clone();
        let extras = crate::engine::RunExtras {
            downloads: vec![d],
            ..Default::default()
        };
        let report = outputs::collect(
            session.as_ref(),
            &workdir,
            &located.target.lease_id,
            None,
            &extras,
            reporter,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await?;
        if !report.missing_downloads.is_empty() {
            return Err(Error::NotFound(format!(
                "{remote} is not on {} box {} (lease {}) under {workdir}",
                self.name(),
                located.target.remote_id,
                located.target.lease_id
            )));
        }
        if let Some(line) = outputs::summary(&report) {
            reporter.status(&line);
        }
        Ok(report)
    }
}
