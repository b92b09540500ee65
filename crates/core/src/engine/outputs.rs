//! Bringing a run's results home: `--download remote=local`, `--artifact-glob`,
//! `--require-artifact` and the reports `--junit` names, fetched after the command (also when
//! it failed), file by file, streamed to disk.
//!
//! What the box lists is not trusted: a path with `..`, an absolute or empty component, or a
//! symlink is refused and reported, never written; locally, every file is written under its
//! target directory through real directories only (a symlink on the way is refused) and
//! renamed into place, so nothing lands outside the directory the user named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::boxcmd::{capture, fields};
use crate::command::shell_quote;
use crate::engine::{Download, RunExtras};
use crate::error::{Error, Result};
use crate::events::Reporter;
use crate::provider::BoxSession;
use crate::sync::is_safe_relative;

/// Largest listing accepted from the box.
const LIST_LIMIT: usize = 64 << 20;

/// What came home.
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactReport {
    /// Where `--artifact-glob` and `--junit` files went.
    pub dir: Option<PathBuf>,
    pub files: Vec<FetchedFile>,
    pub bytes: u64,
    /// `--require-artifact` paths that were not on the box.
    pub missing_required: Vec<String>,
    /// Paths the box listed that were not fetched, and why (a symlink, `..`).
    pub refused: Vec<String>,
    /// `--download` sources that were not on the box.
    pub missing_downloads: Vec<String>,
    /// Why fetching stopped, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FetchedFile {
    pub remote: String,
    pub local: PathBuf,
    pub bytes: u64,
}

/// One entry of the box's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    kind: u8,
    /// Permission bits on the box.
    mode: u32,
    path: String,
}

/// The directory a glob's matches can only be under: its components before the first with
/// a glob character (`coverage/**/*.xml` -> `coverage`; `*.xml` -> `.`).
fn glob_root(glob: &str) -> String {
    let mut root = Vec::new();
    for part in glob.split('/') {
        if part.contains(['*', '?', '[', '{']) {
            break;
        }
        root.push(part);
    }
    // A glob without any wildcard names one path: its parent is listed.
    if root.len() == glob.split('/').count() {
        root.pop();
    }
    let root = root.join("/");
    if root.is_empty() {
        ".".into()
    } else {
        root
    }
}

/// A workdir-relative form of a listed path (`./a/b` -> `a/b`).
fn relative(p: &str) -> &str {
    p.strip_prefix("./").unwrap_or(p)
}

/// Lists `roots` (relative to the workdir, or absolute) without following links, and which
/// of `required` are absent.
async fn list(
    session: &dyn BoxSession,
    workdir: &str,
    roots: &BTreeSet<String>,
    required: &[String],
    cancel: &CancellationToken,
) -> Result<(Vec<Listed>, Vec<String>)> {
    let quote = |v: &mut dyn Iterator<Item = &String>| {
        v.map(|r| shell_quote(r)).collect::<Vec<_>>().join(" ")
    };
    let mut script = String::from("cd -- \"$CBX_WD\" || exit 3\n");
    if !roots.is_empty() {
        script.push_str(&format!(
            "for r in {}; do\n  if [ -e \"$r\" ] || [ -L \"$r\" ]; then \
             find \"$r\" -printf '%y\\0%m\\0%p\\0' 2>/dev/null; fi\ndone\n",
            quote(&mut roots.iter())
        ));
    }
    if !required.is_empty() {
        script.push_str(&format!(
            "for r in {}; do\n  [ -e \"$r\" ] || [ -L \"$r\" ] || printf 'm\\0\\0%s\\0' \"$r\"\ndone\n",
            quote(&mut required.iter())
        ));
    }
    script.push_str("exit 0\n");
    let env = BTreeMap::from([("CBX_WD".to_string(), workdir.to_string())]);
    let out = capture(session, "/", &script, env, LIST_LIMIT, cancel).await?;
    if out.code == 3 {
        return Err(Error::NotFound(format!(
            "the workdir {workdir} is not on the box: nothing to fetch"
        )));
    }
    if out.code != 0 {
        return Err(Error::Transport(format!(
            "listing the run's outputs on the box failed (exit {}): {}",
            out.code,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut listed = Vec::new();
    let mut missing = Vec::new();
    let mut it = fields(&out.stdout);
    while let (Some(kind), Some(mode), Some(path)) = (it.next(), it.next(), it.next()) {
        let path = String::from_utf8_lossy(path).into_owned();
        let mode = std::str::from_utf8(mode)
            .ok()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
            .unwrap_or(0o644);
        match kind {
            b"m" => missing.push(path),
            [k] => listed.push(Listed {
                kind: *k,
                mode,
                path,
            }),
            _ => {}
        }
    }
    Ok((listed, missing))
}

/// One file to fetch: the box's path (as listed) and the local target relative to `base`.
struct Fetch {
    remote: String,
    base: PathBuf,
    rel: String,
    mode: u32,
}

/// Fetches what `extras` names from the box after the command.
pub(super) async fn collect(
    session: &dyn BoxSession,
    workdir: &str,
    lease_id: &str,
    repo_root: Option<&Path>,
    extras: &RunExtras,
    reporter: &dyn Reporter,
    cancel: &CancellationToken,
) -> Result<ArtifactReport> {
    let mut report = ArtifactReport::default();
    let globs: Vec<&String> = extras.artifact_globs.iter().chain(&extras.junit).collect();
    let dir = (!globs.is_empty()).then(|| {
        extras.artifact_dir.clone().unwrap_or_else(|| {
            repo_root
                .map(Path::to_path_buf)
                .unwrap_or_default()
                .join(".crabbox/artifacts")
                .join(lease_id)
        })
    });
    for g in &globs {
        if g.starts_with('/') || !g.split('/').all(|c| c != "..") {
            return Err(Error::Usage(format!(
                "artifact glob {g:?} must be relative to the workdir, without `..`"
            )));
        }
    }
    for d in &extras.downloads {
        if d.remote.split('/').any(|c| c == "..") {
            return Err(Error::Usage(format!(
                "--download {:?}: a remote path may not leave the workdir with `..` (give an \
                 absolute path instead)",
                d.remote
            )));
        }
    }
    let mut roots: BTreeSet<String> = globs.iter().map(|g| glob_root(g)).collect();
    roots.extend(extras.downloads.iter().map(|d| d.remote.clone()));
    let (listed, missing) = list(session, workdir, &roots, &extras.require, cancel).await?;
    report.missing_required = missing;

    let mut fetches = Vec::new();
    if let Some(dir) = &dir {
        let mut set = globset::GlobSetBuilder::new();
        for g in &globs {
            let glob = globset::GlobBuilder::new(g)
                .literal_separator(true)
                .build()
                .map_err(|e| Error::Usage(format!("artifact glob {g:?}: {e}")))?;
            set.add(glob);
        }
        let set = set
            .build()
            .map_err(|e| Error::Usage(format!("artifact globs: {e}")))?;
        let mut seen = BTreeSet::new();
        for e in &listed {
            let rel = relative(&e.path);
            if !set.is_match(rel) || !seen.insert(rel.to_string()) {
                continue;
            }
            match e.kind {
                b'f' if is_safe_relative(rel) => fetches.push(Fetch {
                    remote: rel.to_string(),
                    base: dir.clone(),
                    rel: rel.to_string(),
                    mode: e.mode,
                }),
                b'f' => report
                    .refused
                    .push(format!("{rel} (not a plain relative path)")),
                b'l' => report.refused.push(format!("{rel} (a symlink)")),
                _ => {}
            }
        }
        report.dir = Some(dir.clone());
    }
    for d in &extras.downloads {
        downloads_of(d, &listed, &mut fetches, &mut report);
    }

    let total = fetches.len();
    let mut done_bytes = 0u64;
    for (i, f) in fetches.iter().enumerate() {
        let remote = if f.remote.starts_with('/') {
            f.remote.clone()
        } else {
            format!("{workdir}/{}", f.remote)
        };
        reporter.progress(
            &format!("fetching {} of {total}: {}", i + 1, f.remote),
            done_bytes,
            None,
        );
        let local = target_path(&f.base, &f.rel)?;
        let bytes = fetch_one(session, &remote, &local, f.mode, cancel).await?;
        done_bytes += bytes;
        report.files.push(FetchedFile {
            remote: f.remote.clone(),
            local,
            bytes,
        });
    }
    reporter.finish_progress();
    report.bytes = done_bytes;
    Ok(report)
}

/// The files `d` names in the listing: the file itself, or every file under a directory.
fn downloads_of(
    d: &Download,
    listed: &[Listed],
    fetches: &mut Vec<Fetch>,
    report: &mut ArtifactReport,
) {
    let root = d.remote.trim_end_matches('/');
    let under: Vec<&Listed> = listed
        .iter()
        .filter(|e| e.path == root || e.path.starts_with(&format!("{root}/")))
        .collect();
    let Some(top) = under.iter().find(|e| e.path == root) else {
        report.missing_downloads.push(d.remote.clone());
        return;
    };
    match top.kind {
        b'f' => {
            // A file goes to `local`, or into it when it is a directory.
            let name = Path::new(root)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (base, rel) = if d.local.is_dir() && !name.is_empty() {
                (d.local.clone(), name)
            } else {
                let parent = d.local.parent().map(Path::to_path_buf).unwrap_or_default();
                let file = d
                    .local
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (parent, file)
            };
            fetches.push(Fetch {
                remote: root.to_string(),
                base,
                rel,
                mode: top.mode,
            });
        }
        b'd' => {
            for e in under.iter().filter(|e| e.path != root) {
                let rel = &e.path[root.len() + 1..];
                match e.kind {
                    b'f' if is_safe_relative(rel) => fetches.push(Fetch {
                        remote: e.path.clone(),
                        base: d.local.clone(),
                        rel: rel.to_string(),
                        mode: e.mode,
                    }),
                    b'f' => report
                        .refused
                        .push(format!("{} (not a plain relative path)", e.path)),
                    b'l' => report.refused.push(format!("{} (a symlink)", e.path)),
                    _ => {}
                }
            }
        }
        b'l' => report.refused.push(format!("{root} (a symlink)")),
        _ => report
            .refused
            .push(format!("{root} (not a file or directory)")),
    }
}

/// `base/rel`, with every directory on the way made as a real directory: a symlink (or a
/// file) in the way is refused, so the file cannot land outside `base`.
fn target_path(base: &Path, rel: &str) -> Result<PathBuf> {
    if !is_safe_relative(rel) {
        return Err(Error::Sync(format!(
            "refusing to write {rel:?} under {}: not a plain relative path",
            base.display()
        )));
    }
    std::fs::create_dir_all(if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    })
    .map_err(Error::io("creating", base))?;
    let mut at = base.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        at.push(part);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Sync(format!(
                    "refusing to write {rel} under {}: {} is not a real directory",
                    base.display(),
                    at.display()
                )))
            }
            Err(_) => std::fs::create_dir(&at).map_err(Error::io("creating", &at))?,
        }
    }
    Ok(base.join(rel))
}

/// Streams one file from the box into `local` (through a temporary file beside it, renamed
/// over it: a symlink at `local` is replaced, never followed).
async fn fetch_one(
    session: &dyn BoxSession,
    remote: &str,
    local: &Path,
    mode: u32,
    cancel: &CancellationToken,
) -> Result<u64> {
    let parent = local
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".crabbox-fetch-")
        .tempfile_in(parent)
        .map_err(Error::io("creating a file in", parent))?;
    let (file, tmp_path) = tmp.into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let bytes = super::run::cancellable(cancel, session.read_file(remote, &mut file)).await?;
    tokio::io::AsyncWriteExt::flush(&mut file)
        .await
        .map_err(Error::io("writing", local))?;
    drop(file);
    // The box's permission bits, without set-id bits or write for others.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        &tmp_path,
        std::fs::Permissions::from_mode((mode & 0o755) | 0o600),
    )
    .map_err(Error::io("setting the mode of", local))?;
    tmp_path
        .persist(local)
        .map_err(|e| Error::io("writing", local)(e.error))?;
    Ok(bytes)
}

/// One line for the user about what came home.
pub fn summary(r: &ArtifactReport) -> Option<String> {
    if let Some(e) = &r.error {
        return Some(format!("artifacts: {e}"));
    }
    if r.files.is_empty()
        && r.refused.is_empty()
        && r.missing_downloads.is_empty()
        && r.missing_required.is_empty()
    {
        return r
            .dir
            .as_ref()
            .map(|_| "artifacts: no file on the box matched".to_string());
    }
    let mut s = format!(
        "artifacts: fetched {} file{} ({})",
        r.files.len(),
        if r.files.len() == 1 { "" } else { "s" },
        super::sync::human_bytes(r.bytes)
    );
    if let Some(dir) = &r.dir {
        s.push_str(&format!(" into {}", dir.display()));
    }
    if !r.refused.is_empty() {
        s.push_str(&format!("; refused {}", r.refused.join(", ")));
    }
    if !r.missing_downloads.is_empty() {
        s.push_str(&format!(
            "; not on the box: {}",
            r.missing_downloads.join(", ")
        ));
    }
    if !r.missing_required.is_empty() {
        s.push_str(&format!(
            "; required but missing: {}",
            r.missing_required.join(", ")
        ));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_globs_root_is_its_literal_directory() {
        assert_eq!(glob_root("coverage/**"), "coverage");
        assert_eq!(glob_root("reports/*.xml"), "reports");
        assert_eq!(glob_root("*.xml"), ".");
        assert_eq!(glob_root("a/b/c.txt"), "a/b");
        assert_eq!(glob_root("x.txt"), ".");
        assert_eq!(glob_root("a/{b,c}/d"), "a");
    }

    #[test]
    fn a_target_never_goes_through_a_symlink_or_up() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("out");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(&base).unwrap();
        std::os::unix::fs::symlink(&outside, base.join("link")).unwrap();
        assert!(target_path(&base, "link/x").is_err());
        assert!(target_path(&base, "../x").is_err());
        assert!(target_path(&base, "/etc/x").is_err());
        assert!(target_path(&base, "a//b").is_err());
        let ok = target_path(&base, "a/b/c.txt").unwrap();
        assert_eq!(ok, base.join("a/b/c.txt"));
        assert!(base.join("a/b").is_dir());
    }

    #[test]
    fn a_download_of_a_directory_takes_its_files_and_refuses_links() {
        let listed = [
            ("d", "out"),
            ("f", "out/a.txt"),
            ("d", "out/sub"),
            ("f", "out/sub/b.txt"),
            ("l", "out/evil"),
            ("f", "outer.txt"),
        ]
        .map(|(k, p)| Listed {
            kind: k.as_bytes()[0],
            mode: 0o644,
            path: p.into(),
        });
        let d = Download {
            remote: "out".into(),
            local: PathBuf::from("/tmp/here"),
        };
        let mut fetches = Vec::new();
        let mut report = ArtifactReport::default();
        downloads_of(&d, &listed, &mut fetches, &mut report);
        let rels: Vec<_> = fetches.iter().map(|f| f.rel.as_str()).collect();
        assert_eq!(rels, ["a.txt", "sub/b.txt"]);
        assert_eq!(report.refused, ["out/evil (a symlink)"]);
        let missing = Download {
            remote: "nope".into(),
            local: PathBuf::from("x"),
        };
        downloads_of(&missing, &listed, &mut fetches, &mut report);
        assert_eq!(report.missing_downloads, ["nope"]);
    }
}
