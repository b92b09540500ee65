//! The measurements on one repository with one provider, each repeated for N rounds.

use std::path::{Path, PathBuf};

use super::gen::Repo;
use super::proc::{measure, settle, shell, Crabbox, Emulator};
use crate::Result;

/// Where the baseline's archive lands and how to reach it.
pub enum Upload<'a> {
    /// A local box: the archive is already where the box can read it.
    None,
    /// An E2B sandbox: sent through envd's `POST /files`.
    Envd(&'a Emulator),
}

pub struct Provider<'a> {
    pub name: &'static str,
    pub crabbox: Crabbox,
    pub upload: Upload<'a>,
    /// A local scratch directory (the baseline's archive).
    pub scratch: PathBuf,
}

/// The baseline's phases, one round.
#[derive(Default, Clone, Copy)]
pub struct BaselineSample {
    pub pack_ms: f64,
    pub upload_ms: f64,
    pub extract_ms: f64,
    pub archive_bytes: u64,
}

impl BaselineSample {
    pub fn total_ms(&self) -> f64 {
        self.pack_ms + self.upload_ms + self.extract_ms
    }
}

/// A first sync into a fresh box, one round.
#[derive(Default, Clone, Copy)]
pub struct FullSample {
    /// The engine's sync phase (`syncMs`).
    pub sync_ms: f64,
    /// Everything the run took but creating, running on and releasing the box: the sync phase
    /// plus building the manifest, loading config and starting the process (the baseline's
    /// time likewise includes listing the files).
    pub sync_wall_ms: f64,
    pub wire_bytes: u64,
    /// Peak RSS of the crabbox process itself, KiB.
    pub own_rss_kib: u64,
    /// Peak RSS of crabbox or the largest process it ran (git), KiB.
    pub max_rss_kib: u64,
}

#[derive(Default)]
pub struct Samples {
    pub baseline: Vec<BaselineSample>,
    pub full: Vec<FullSample>,
    /// `syncMs` of a warm sync after a one-file edit.
    pub warm_edit_sync_ms: Vec<f64>,
    pub warm_edit_sent_files: Vec<f64>,
    /// Wall time of the run after a one-file edit minus that of a `--no-sync` run right after
    /// it: what the edit's sync costs the whole run, the local stat pass included (`syncMs`
    /// starts once the box is reached, and the stat pass starts before).
    pub warm_edit_overhead_ms: Vec<f64>,
    /// `syncMs` of a warm sync after the same edit saved by rename (its directory changes,
    /// so git lists it again).
    pub warm_rename_sync_ms: Vec<f64>,
    /// Wall time of `run --id L -- true` and `run --id L --no-sync -- true`, no change.
    pub nochange_wall_ms: Vec<f64>,
    pub nosync_wall_ms: Vec<f64>,
    /// Each pair's difference (the two runs of a pair are adjacent in time, so drift on a busy
    /// machine cancels better than in a difference of medians).
    pub nochange_overhead_ms: Vec<f64>,
    pub nochange_sync_ms: Vec<f64>,
}

pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn progress(p: &Provider, repo: &Repo, what: &str) {
    eprintln!("xtask: bench: {} {} files: {what}", p.name, repo.files);
}

impl Provider<'_> {
    fn box_paths(&self, round: usize) -> (String, String) {
        match self.upload {
            Upload::None => (
                self.scratch.join("base.tgz").display().to_string(),
                self.scratch
                    .join(format!("base-{round}"))
                    .display()
                    .to_string(),
            ),
            Upload::Envd(_) => (
                "/home/user/bench-base.tgz".to_string(),
                format!("/home/user/bench-base-{round}"),
            ),
        }
    }

    /// A shell script where the box's files are, without a sync: its time (on E2B the command's
    /// `commandMs`, as a baseline tool would also start it through envd; on a local box, a plain
    /// `sh -c`) and its output.
    fn on_box(&self, lease: &str, script: &str) -> Result<(f64, Vec<u8>)> {
        match self.upload {
            Upload::Envd(_) => {
                let t =
                    self.crabbox
                        .timed(&["--id", lease, "--no-sync", "--shell", "--", script])?;
                Ok((t.ms("commandMs"), t.run.stdout))
            }
            Upload::None => {
                let m = shell(&self.scratch, script)?;
                Ok((m.wall_ms, m.stdout))
            }
        }
    }

    /// The baseline: `git ls-files | tar | gzip -6` into a file, upload it, `tar -xzf` it on the
    /// box into a new directory.
    fn baseline_round(
        &self,
        repo: &Repo,
        lease: &str,
        envd: Option<(&str, &str)>,
        round: usize,
    ) -> Result<BaselineSample> {
        let local_archive = self.scratch.join("base.tgz");
        settle();
        let pack = shell(
            &repo.root,
            &format!(
                "git ls-files -z | tar --null -T - -cf - | gzip -6 > '{}'",
                local_archive.display()
            ),
        )?;
        let archive_bytes = std::fs::metadata(&local_archive)
            .map_err(|e| e.to_string())?
            .len();
        let (archive, dir) = self.box_paths(round);
        let upload_ms = match (&self.upload, envd) {
            (Upload::Envd(emulator), Some((sandbox, token))) => {
                let cmd = emulator.upload_command(sandbox, token, &local_archive, &archive);
                measure(cmd)?.ok("uploading the baseline archive")?.wall_ms
            }
            _ => 0.0,
        };
        let (extract_ms, _) = self.on_box(
            lease,
            &format!("mkdir -p '{dir}' && tar -xzf '{archive}' -C '{dir}'"),
        )?;
        if round == 0 {
            let (_, count) = self.on_box(lease, &format!("find '{dir}' -type f | wc -l"))?;
            let n: usize = String::from_utf8_lossy(&count).trim().parse().unwrap_or(0);
            if n != repo.files {
                return Err(format!(
                    "the baseline extracted {n} files on the box, not {}",
                    repo.files
                ));
            }
        }
        self.on_box(lease, &format!("rm -rf '{dir}' '{archive}'"))?;
        Ok(BaselineSample {
            pack_ms: pack.wall_ms,
            upload_ms,
            extract_ms,
            archive_bytes,
        })
    }

    /// A first sync into a fresh box: `crabbox run -- true`, box created and released.
    fn full_round(&self, repo: &Repo) -> Result<FullSample> {
        settle();
        let t = self.crabbox.timed(&["--", "true"])?;
        let sent = t.sync("sentFiles") as usize;
        if sent != repo.files {
            return Err(format!(
                "a sync into a fresh box sent {sent} files, not {}",
                repo.files
            ));
        }
        let box_ms = t.ms("acquireMs") + t.ms("commandMs") + t.ms("releaseMs");
        Ok(FullSample {
            sync_ms: t.ms("syncMs"),
            sync_wall_ms: t.run.wall_ms - box_ms,
            wire_bytes: t.sync("wireBytes") as u64,
            own_rss_kib: t.run.own_rss_kib,
            max_rss_kib: t.run.max_rss_kib,
        })
    }

    pub fn measure(&self, repo: &Repo, rounds: usize) -> Result<Samples> {
        let mut s = Samples::default();
        std::fs::create_dir_all(&self.scratch).map_err(|e| e.to_string())?;

        // Baseline and full sync, interleaved so drift on the machine hits both alike.
        let base_lease = self.crabbox.warmup()?;
        let envd = match &self.upload {
            Upload::Envd(emulator) => {
                let status = self.crabbox.status(&base_lease)?;
                let sandbox = status["remoteId"]
                    .as_str()
                    .ok_or("crabbox status --json names no remoteId")?
                    .to_string();
                let token = emulator.envd_token(&sandbox)?;
                Some((sandbox, token))
            }
            Upload::None => None,
        };
        let envd_ref = envd.as_ref().map(|(a, b)| (a.as_str(), b.as_str()));
        for round in 0..rounds {
            let b = self.baseline_round(repo, &base_lease, envd_ref, round)?;
            progress(
                self,
                repo,
                &format!(
                    "round {}/{rounds}: baseline {:.0} ms (pack {:.0}, upload {:.0}, extract {:.0})",
                    round + 1,
                    b.total_ms(),
                    b.pack_ms,
                    b.upload_ms,
                    b.extract_ms
                ),
            );
            s.baseline.push(b);
            let f = self.full_round(repo)?;
            progress(
                self,
                repo,
                &format!(
                    "round {}/{rounds}: full sync {:.0} ms (syncMs {:.0}), peak RSS {:.1} MB",
                    round + 1,
                    f.sync_wall_ms,
                    f.sync_ms,
                    f.own_rss_kib as f64 * 1024.0 / 1e6
                ),
            );
            s.full.push(f);
        }
        self.crabbox.stop(&base_lease)?;

        // Warm syncs on one lease: after a one-file edit, then with no change. The first sync
        // into the box is whole, and the first warm run after it reads the box whole once (it
        // starts the box's watcher); neither is counted.
        let lease = self.crabbox.warmup()?;
        self.crabbox.timed(&["--id", &lease, "--", "true"])?;
        self.crabbox.timed(&["--id", &lease, "--", "true"])?;
        for round in 0..rounds {
            let without = || {
                self.crabbox
                    .timed(&["--id", &lease, "--no-sync", "--", "true"])
            };
            // The `--no-sync` run of the pair before the edit's run or after it, alternately,
            // so neither always runs on a box still busy with the other.
            let before = if round % 2 == 0 {
                Some(without()?)
            } else {
                None
            };
            repo.edit(round)?;
            settle();
            let t = self.crabbox.timed(&["--id", &lease, "--", "true"])?;
            let without = match before {
                Some(b) => b,
                None => without()?,
            };
            progress(
                self,
                repo,
                &format!(
                    "round {}/{rounds}: warm sync after an edit {:.0} ms, {} files sent \
                     (the run {:.0} ms over --no-sync)",
                    round + 1,
                    t.ms("syncMs"),
                    t.sync("sentFiles"),
                    t.run.wall_ms - without.run.wall_ms
                ),
            );
            s.warm_edit_sync_ms.push(t.ms("syncMs"));
            s.warm_edit_sent_files.push(t.sync("sentFiles"));
            s.warm_edit_overhead_ms
                .push(t.run.wall_ms - without.run.wall_ms);
        }
        // The first unchanged run may still settle something; it is not counted.
        self.crabbox.timed(&["--id", &lease, "--", "true"])?;
        // Pairs are cheap and the difference is small against the noise: twice the rounds.
        for round in 0..(2 * rounds + 1).max(5) {
            let with = || self.crabbox.timed(&["--id", &lease, "--", "true"]);
            let without = || {
                self.crabbox
                    .timed(&["--id", &lease, "--no-sync", "--", "true"])
            };
            // Alternating which goes first, so neither always runs on a warmer cache.
            let (a, b) = if round % 2 == 0 {
                let a = with()?;
                (a, without()?)
            } else {
                let b = without()?;
                (with()?, b)
            };
            s.nochange_wall_ms.push(a.run.wall_ms);
            s.nochange_sync_ms.push(a.ms("syncMs"));
            s.nosync_wall_ms.push(b.run.wall_ms);
            s.nochange_overhead_ms.push(a.run.wall_ms - b.run.wall_ms);
        }
        progress(
            self,
            repo,
            &format!(
                "no change: {:.0} ms with sync, {:.0} ms with --no-sync, {:.0} ms apart (medians of {} pairs)",
                median(&s.nochange_wall_ms),
                median(&s.nosync_wall_ms),
                median(&s.nochange_overhead_ms),
                s.nochange_overhead_ms.len()
            ),
        );
        // The same edit saved by rename, as many editors and formatters save (after the
        // unchanged runs: those measure a tree whose last change has settled).
        for round in 0..rounds {
            repo.edit_by_rename(round)?;
            settle();
            let t = self.crabbox.timed(&["--id", &lease, "--", "true"])?;
            progress(
                self,
                repo,
                &format!(
                    "round {}/{rounds}: warm sync after an edit saved by rename {:.0} ms, {} \
                     files sent",
                    round + 1,
                    t.ms("syncMs"),
                    t.sync("sentFiles"),
                ),
            );
            s.warm_rename_sync_ms.push(t.ms("syncMs"));
        }
        self.crabbox.stop(&lease)?;
        Ok(s)
    }

    /// One first sync of `repo` into a fresh box, for its peak memory.
    pub fn peak_rss(&self, repo: &Repo) -> Result<FullSample> {
        let f = self.full_round(repo)?;
        progress(
            self,
            repo,
            &format!(
                "full sync {:.0} ms, peak RSS {:.1} MB (largest process with git's: {:.1} MB)",
                f.sync_wall_ms,
                f.own_rss_kib as f64 * 1024.0 / 1e6,
                f.max_rss_kib as f64 * 1024.0 / 1e6
            ),
        );
        Ok(f)
    }
}

/// A crabbox pointed at `repo` with its own state under `home`.
pub fn crabbox_for(bin: &Path, repo: &Repo, home: &Path, env: Vec<(String, String)>) -> Crabbox {
    Crabbox {
        bin: bin.to_path_buf(),
        repo: repo.root.clone(),
        home: home.to_path_buf(),
        env,
    }
}
