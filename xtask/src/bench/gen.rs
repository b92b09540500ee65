//! The bench's repository: generated, committed, deterministic from a seed.
//!
//! 98% of the files are text sources (Rust-, TypeScript-, Python- and Go-flavoured code built
//! line by line from a vocabulary, so it compresses about as well as real code and no line is a
//! copy of a pooled one), 2% are binary assets of random bytes (incompressible). The assets hold
//! `ASSET_BYTE_SHARE` of the bytes. File sizes follow a skewed distribution (many small files, a
//! few large ones) scaled so the total is exact.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Result;

/// Share of the files that are binary assets.
pub const ASSET_FILE_SHARE: f64 = 0.02;
/// Share of the bytes held by binary assets (assets are larger than sources on average).
pub const ASSET_BYTE_SHARE: f64 = 0.10;

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub files: usize,
    pub bytes: u64,
    pub seed: u64,
}

/// A generated repository.
pub struct Repo {
    pub root: PathBuf,
    pub files: usize,
    pub bytes: u64,
    pub asset_files: usize,
    pub asset_bytes: u64,
    /// A mid-sized source file, the one a "one-file edit" changes.
    pub edit_target: PathBuf,
}

impl Repo {
    /// A repository made elsewhere (the shard suite), for driving crabbox in it.
    pub fn at(root: &Path) -> Repo {
        Repo {
            root: root.to_path_buf(),
            files: 0,
            bytes: 0,
            asset_files: 0,
            asset_bytes: 0,
            edit_target: root.to_path_buf(),
        }
    }

    /// Changes the same source file as [`Repo::edit`], saved as many editors and formatters
    /// save: a new file written beside it, then renamed over it (its directory changes).
    pub fn edit_by_rename(&self, round: usize) -> Result {
        let target = self.root.join(&self.edit_target);
        let mut text = std::fs::read(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        text.extend_from_slice(format!("// bench edit saved by rename {round}\n").as_bytes());
        let name = target.file_name().unwrap_or_default().to_string_lossy();
        let tmp = target.with_file_name(format!(".{name}.swp"));
        std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &target).map_err(|e| format!("{}: {e}", target.display()))
    }

    /// Changes one source file (a line appended), as an edit between two runs would.
    pub fn edit(&self, round: usize) -> Result {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.root.join(&self.edit_target))
            .map_err(|e| format!("editing {}: {e}", self.edit_target.display()))?;
        writeln!(f, "// bench edit {round}").map_err(|e| e.to_string())
    }
}

/// xorshift64*: small, fast, and the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

/// The text generator: the random source and the current file's own identifiers.
struct Gen {
    rng: Rng,
    locals: Vec<Vec<usize>>,
}

impl Gen {
    fn below(&mut self, n: usize) -> usize {
        self.rng.below(n)
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        self.rng.pick(from)
    }
}

const WORDS: &[&str] = &[
    "account", "active", "address", "allocate", "append", "apply", "archive", "args", "array",
    "async", "attempt", "auth", "backoff", "batch", "begin", "block", "body", "bound", "box",
    "buffer", "build", "bytes", "cache", "call", "cancel", "capacity", "chunk", "claim", "clean",
    "client", "close", "code", "column", "command", "commit", "config", "connect", "context",
    "count", "create", "cursor", "data", "deadline", "decode", "default", "delete", "delta",
    "depth", "digest", "dir", "done", "draft", "emit", "encode", "entry", "env", "error", "event",
    "exit", "expected", "field", "file", "filter", "flag", "flush", "format", "frame", "handle",
    "hash", "header", "height", "index", "inner", "input", "item", "job", "key", "kind", "label",
    "layer", "lease", "length", "limit", "line", "list", "load", "local", "lock", "manifest",
    "map", "match", "message", "meta", "mode", "name", "next", "node", "offset", "open", "option",
    "order", "output", "owner", "page", "parent", "parse", "path", "peer", "pending", "plan",
    "pool", "port", "prefix", "probe", "queue", "range", "reader", "record", "remote", "report",
    "request", "reset", "result", "retry", "root", "route", "row", "rule", "scan", "schema",
    "scope", "send", "session", "size", "slot", "source", "span", "state", "status", "store",
    "stream", "table", "tag", "target", "task", "timeout", "token", "total", "trace", "tree",
    "value", "version", "view", "wait", "width", "worker", "writer",
];
const TYPES: &[&str] = &[
    "u32",
    "u64",
    "usize",
    "i64",
    "bool",
    "String",
    "&str",
    "Vec<u8>",
    "Option<u64>",
    "Path",
    "Duration",
    "Result<()>",
];
const OPS: &[&str] = &["==", "!=", "<", ">", "<=", ">="];

#[derive(Clone, Copy)]
enum Lang {
    Rust,
    Ts,
    Py,
    Go,
}

impl Lang {
    fn ext(self) -> &'static str {
        match self {
            Lang::Rust => "rs",
            Lang::Ts => "ts",
            Lang::Py => "py",
            Lang::Go => "go",
        }
    }
}

/// An identifier: mostly one of the file's own names (real files reuse theirs), sometimes a
/// fresh one of one to three words.
fn ident(rng: &mut Gen, out: &mut String, camel: bool) {
    let words: Vec<usize> = if rng.locals.is_empty() || rng.below(5) == 0 {
        (0..1 + rng.below(3))
            .map(|_| rng.below(WORDS.len()))
            .collect()
    } else {
        let i = rng.below(rng.locals.len());
        rng.locals[i].clone()
    };
    for (i, &w) in words.iter().enumerate() {
        let w = WORDS[w];
        if i > 0 && camel {
            let mut c = w.chars();
            if let Some(first) = c.next() {
                out.push(first.to_ascii_uppercase());
                out.push_str(c.as_str());
            }
        } else {
            if i > 0 {
                out.push('_');
            }
            out.push_str(w);
        }
    }
}

fn number(rng: &mut Gen, out: &mut String) {
    let n = match rng.below(8) {
        0..=3 => rng.below(10),
        4..=6 => rng.below(256),
        _ => rng.below(100_000),
    };
    out.push_str(&n.to_string());
}

fn sentence(rng: &mut Gen, out: &mut String) {
    let n = 4 + rng.below(10);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(rng.pick(WORDS));
    }
    out.push('.');
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth * 4 {
        out.push(' ');
    }
}

/// One statement line of a C-like language (Rust, TypeScript, Go).
fn c_statement(rng: &mut Gen, out: &mut String, lang: Lang, depth: usize) {
    let camel = matches!(lang, Lang::Ts | Lang::Go);
    indent(out, depth);
    let (decl, end) = match lang {
        Lang::Rust => ("let ", ";"),
        Lang::Ts => ("const ", ";"),
        Lang::Go => ("", ""),
        Lang::Py => unreachable!(),
    };
    match rng.below(7) {
        0 | 1 => {
            out.push_str(decl);
            ident(rng, out, camel);
            out.push_str(if matches!(lang, Lang::Go) {
                " := "
            } else {
                " = "
            });
            ident(rng, out, camel);
            out.push('.');
            ident(rng, out, camel);
            out.push('(');
            ident(rng, out, camel);
            out.push_str(", ");
            number(rng, out);
            out.push(')');
            out.push_str(end);
        }
        2 => {
            ident(rng, out, camel);
            out.push_str(" += ");
            ident(rng, out, camel);
            out.push_str(".len()");
            out.push_str(end);
        }
        3 => {
            out.push_str("// ");
            sentence(rng, out);
        }
        4 => {
            out.push_str("return ");
            ident(rng, out, camel);
            out.push('(');
            ident(rng, out, camel);
            out.push(')');
            out.push_str(end);
        }
        5 => {
            ident(rng, out, camel);
            out.push('.');
            ident(rng, out, camel);
            out.push_str("(\"");
            sentence(rng, out);
            out.push_str("\")");
            out.push_str(end);
        }
        _ => {
            out.push_str(decl);
            ident(rng, out, camel);
            out.push_str(" = [");
            for i in 0..1 + rng.below(5) {
                if i > 0 {
                    out.push_str(", ");
                }
                number(rng, out);
            }
            out.push(']');
            out.push_str(end);
        }
    }
    out.push('\n');
}

/// One function of a C-like language.
fn c_function(rng: &mut Gen, out: &mut String, lang: Lang) {
    let camel = matches!(lang, Lang::Ts | Lang::Go);
    out.push_str("// ");
    sentence(rng, out);
    out.push('\n');
    out.push_str(match lang {
        Lang::Rust => "pub fn ",
        Lang::Ts => "export function ",
        _ => "func ",
    });
    ident(rng, out, camel);
    out.push('(');
    for i in 0..rng.below(4) {
        if i > 0 {
            out.push_str(", ");
        }
        ident(rng, out, camel);
        out.push_str(if matches!(lang, Lang::Go) { " " } else { ": " });
        out.push_str(rng.pick(TYPES));
    }
    out.push_str(") {\n");
    for _ in 0..2 + rng.below(12) {
        if rng.below(5) == 0 {
            indent(out, 1);
            out.push_str("if ");
            ident(rng, out, camel);
            out.push(' ');
            out.push_str(rng.pick(OPS));
            out.push(' ');
            number(rng, out);
            out.push_str(" {\n");
            for _ in 0..1 + rng.below(3) {
                c_statement(rng, out, lang, 2);
            }
            indent(out, 1);
            out.push_str("}\n");
        } else {
            c_statement(rng, out, lang, 1);
        }
    }
    out.push_str("}\n\n");
}

/// One Python function.
fn py_function(rng: &mut Gen, out: &mut String) {
    out.push_str("def ");
    ident(rng, out, false);
    out.push('(');
    for i in 0..rng.below(4) {
        if i > 0 {
            out.push_str(", ");
        }
        ident(rng, out, false);
        if rng.below(3) == 0 {
            out.push('=');
            number(rng, out);
        }
    }
    out.push_str("):\n    \"\"\"");
    sentence(rng, out);
    out.push_str("\"\"\"\n");
    for _ in 0..2 + rng.below(12) {
        let depth = 1 + usize::from(rng.below(4) == 0);
        if depth == 2 {
            indent(out, 1);
            out.push_str("if ");
            ident(rng, out, false);
            out.push(' ');
            out.push_str(rng.pick(OPS));
            out.push(' ');
            number(rng, out);
            out.push_str(":\n");
        }
        indent(out, depth);
        match rng.below(4) {
            0 => {
                out.push_str("# ");
                sentence(rng, out);
            }
            1 => {
                out.push_str("return ");
                ident(rng, out, false);
            }
            _ => {
                ident(rng, out, false);
                out.push_str(" = ");
                ident(rng, out, false);
                out.push('.');
                ident(rng, out, false);
                out.push('(');
                number(rng, out);
                out.push(')');
            }
        }
        out.push('\n');
    }
    out.push('\n');
}

/// A source file of about `size` bytes (exactly `size`, ending in a newline).
fn source(rng: &mut Rng, lang: Lang, size: usize) -> String {
    let locals = (0..12 + rng.below(30))
        .map(|_| {
            (0..1 + rng.below(3))
                .map(|_| rng.below(WORDS.len()))
                .collect()
        })
        .collect();
    let rng = &mut Gen {
        rng: Rng(rng.next() | 1),
        locals,
    };
    let mut out = String::with_capacity(size + 2048);
    out.push_str(match lang {
        Lang::Py => "# SPDX-License-Identifier: MIT\n\n",
        _ => "// SPDX-License-Identifier: MIT\n\n",
    });
    for _ in 0..1 + rng.below(6) {
        match lang {
            Lang::Rust => out.push_str("use crate::"),
            Lang::Ts => out.push_str("import { x } from './"),
            Lang::Py => out.push_str("from ."),
            Lang::Go => out.push_str("import \""),
        }
        ident(rng, &mut out, false);
        out.push_str(match lang {
            Lang::Rust => "::*;\n",
            Lang::Ts => "';\n",
            Lang::Py => " import *\n",
            Lang::Go => "\"\n",
        });
    }
    out.push('\n');
    while out.len() < size {
        match lang {
            Lang::Py => py_function(rng, &mut out),
            _ => c_function(rng, &mut out, lang),
        }
    }
    out.truncate(size.saturating_sub(1));
    out.push('\n');
    out
}

fn random_bytes(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(size);
    out
}

/// `n` sizes summing to `total`: exponential-ish, clipped, scaled; at least `min` each.
fn sizes(rng: &mut Rng, n: usize, total: u64, min: u64) -> Vec<u64> {
    if n == 0 {
        return Vec::new();
    }
    let weights: Vec<f64> = (0..n)
        .map(|_| (-(1.0 - rng.unit()).ln()).clamp(0.05, 8.0))
        .collect();
    let sum: f64 = weights.iter().sum();
    let spare = total.saturating_sub(min * n as u64) as f64;
    let mut out: Vec<u64> = weights
        .iter()
        .map(|w| min + (w / sum * spare) as u64)
        .collect();
    // Rounding leaves a few bytes over; the first file takes them.
    let placed: u64 = out.iter().sum();
    out[0] += total.saturating_sub(placed);
    out
}

pub fn git(dir: &Path, args: &[&str]) -> Result {
    let status = Command::new("git")
        .args([
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@crabbox.invalid",
            "-c",
            "gc.auto=0",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("running git: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("git {args:?} failed ({status})"))
    }
}

/// Writes the tree under `root` (which must not exist) and commits it.
pub fn generate(root: &Path, spec: Spec) -> Result<Repo> {
    let mut rng = Rng::new(spec.seed);
    let asset_files = ((spec.files as f64 * ASSET_FILE_SHARE).round() as usize).min(spec.files);
    let text_files = spec.files - asset_files;
    let asset_bytes = if asset_files == 0 {
        0
    } else {
        (spec.bytes as f64 * ASSET_BYTE_SHARE) as u64
    };
    let text_sizes = sizes(&mut rng, text_files, spec.bytes - asset_bytes, 64);
    let asset_sizes = sizes(&mut rng, asset_files, asset_bytes, 256);
    std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let write = |rel: &Path, body: &[u8]| -> Result {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))
    };
    const TOPS: &[&str] = &["src", "lib", "packages", "services", "tools", "tests"];
    const LANGS: &[Lang] = &[
        Lang::Rust,
        Lang::Rust,
        Lang::Ts,
        Lang::Ts,
        Lang::Py,
        Lang::Go,
    ];
    let mut edit_target = None;
    let mut edit_mid = false;
    for (i, size) in text_sizes.iter().enumerate() {
        // About 40 files to a directory, two levels under a top directory.
        let leaf = i / 40;
        let lang = LANGS[leaf % LANGS.len()];
        let rel = PathBuf::from(format!(
            "{}/{}_{}/{}_{}/{}_{i}.{}",
            TOPS[leaf % TOPS.len()],
            WORDS[(leaf / 7) % WORDS.len()],
            leaf / 7,
            WORDS[(leaf * 13) % WORDS.len()],
            leaf,
            WORDS[(i * 31) % WORDS.len()],
            lang.ext()
        ));
        write(&rel, source(&mut rng, lang, *size as usize).as_bytes())?;
        // The first Rust source from the middle of the tree on (or the first at all).
        if matches!(lang, Lang::Rust)
            && (edit_target.is_none() || (i >= text_files / 2 && !edit_mid))
        {
            edit_mid = i >= text_files / 2;
            edit_target = Some(rel);
        }
    }
    for (i, size) in asset_sizes.iter().enumerate() {
        let rel = PathBuf::from(format!(
            "assets/{}/{}_{i}.bin",
            WORDS[(i / 40) % WORDS.len()],
            WORDS[(i * 17) % WORDS.len()]
        ));
        write(&rel, &random_bytes(&mut rng, *size as usize))?;
    }
    git(root, &["init", "-q"])?;
    git(root, &["add", "-A"])?;
    git(root, &["commit", "-q", "-m", "bench tree"])?;
    Ok(Repo {
        root: root.to_path_buf(),
        files: spec.files,
        bytes: spec.bytes,
        asset_files,
        asset_bytes,
        edit_target: edit_target.ok_or("the generated tree has no Rust source to edit")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_sum_exactly() {
        let mut rng = Rng::new(7);
        let s = sizes(&mut rng, 1000, 10_000_000, 64);
        assert_eq!(s.iter().sum::<u64>(), 10_000_000);
        assert!(s.iter().all(|&x| x >= 64));
    }

    #[test]
    fn sources_have_the_asked_size_and_are_deterministic() {
        for lang in [Lang::Rust, Lang::Ts, Lang::Py, Lang::Go] {
            let a = source(&mut Rng::new(1), lang, 5000);
            let b = source(&mut Rng::new(1), lang, 5000);
            assert_eq!(a.len(), 5000);
            assert_eq!(a, b);
            assert!(a.ends_with('\n'));
        }
    }

    #[test]
    fn a_small_tree_is_generated_and_committed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        let repo = generate(
            &root,
            Spec {
                files: 200,
                bytes: 1_000_000,
                seed: 3,
            },
        )
        .unwrap();
        assert_eq!(repo.asset_files, 4);
        let out = Command::new("git")
            .args(["ls-files"])
            .current_dir(&root)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 200);
        let mut total = 0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            total += std::fs::metadata(root.join(line)).unwrap().len();
        }
        assert_eq!(total, 1_000_000);
    }
}
