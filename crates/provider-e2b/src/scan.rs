//! Reading the synced tree of a sandbox in one pass: [`SCAN_SCRIPT`] lists it with GNU `find`
//! (never following a symlink), and [`parse`] turns its output into the engine's
//! [`RemoteTree`].

use std::collections::{BTreeMap, BTreeSet};

use crabbox_core::sync::{RemoteEntry, RemoteKind, RemoteTree, SyncRecord};
use crabbox_core::{Error, Result};

/// Lists the workdir, its record and the children of every recorded directory; see the
/// script's header for its output.
pub const SCAN_SCRIPT: &str = include_str!("scripts/sync_scan.sh");

/// Largest scan output accepted (a tree of a few hundred thousand files).
pub const SCAN_LIMIT: usize = 256 << 20;

/// NUL-separated fields, and raw runs of bytes.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn field(&mut self) -> Option<&'a [u8]> {
        let end = self.rest.iter().position(|b| *b == 0)?;
        let (f, tail) = self.rest.split_at(end);
        self.rest = &tail[1..];
        Some(f)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (bytes, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(bytes)
    }
}

fn bad(what: &str) -> Error {
    Error::Transport(format!("reading the box's tree: {what}"))
}

/// Parses [`SCAN_SCRIPT`]'s output.
pub fn parse(out: &[u8]) -> Result<RemoteTree> {
    parse_with(out, &Known::default()).map(|(tree, _)| tree)
}

/// What the caller already holds of a box's tree: the record and the listing it last read,
/// each with its SHA-256 (the scan answers `r` / `e` when the box's are the same bytes).
#[derive(Debug, Default, Clone)]
pub struct Known {
    pub record: Option<Part>,
    pub listing: Option<Part>,
    /// What syncs changed since `listing` was read, read afresh ([`apply_patch`]).
    pub patch: Option<Part>,
    /// The watcher that has watched the tree since `listing` (and `record`, or the box's
    /// lack of one) was read: while it saw no change, they are what the box holds.
    pub watch: Option<Watched>,
}

/// A watcher of a box's tree, and what the scan that started it read: while the watcher saw
/// no change, the box holds exactly that listing and record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub id: String,
    /// SHA-256 of the listing.
    pub listing: String,
    /// SHA-256 of the sync record, `None` when the box had none.
    pub record: Option<String>,
    /// SHA-256 of the patch laid over the listing since ([`apply_patch`]), if any.
    pub patch: Option<String>,
    /// When the scan that started it read the tree (seconds since the epoch).
    pub since: u64,
}

impl Watched {
    /// The name of that reading ([`RemoteTree::state`]).
    pub fn state(&self) -> String {
        format!("e2b-watch:{}", self.encode().trim_end().replace(' ', ":"))
    }

    /// `id listing record|- patch|- since`, one line.
    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {} {}\n",
            self.id,
            self.listing,
            self.record.as_deref().unwrap_or("-"),
            self.patch.as_deref().unwrap_or("-"),
            self.since
        )
    }

    pub fn decode(line: &str) -> Option<Self> {
        let mut f = line.split_whitespace();
        let (id, listing, record, patch) = (f.next()?, f.next()?, f.next()?, f.next()?);
        let since = f.next()?.parse().ok()?;
        let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        let maybe = |s: &str| (s != "-").then(|| s.to_string());
        // `<hex>` (an older crabbox's watcher) or `<version>-<hex>`.
        let id_ok = match id.split_once('-') {
            Some((v, h)) => !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && hex(h),
            None => hex(id),
        };
        if !id_ok
            || !hex(listing)
            || f.next().is_some()
            || !(record == "-" || hex(record))
            || !(patch == "-" || hex(patch))
        {
            return None;
        }
        Some(Watched {
            id: id.into(),
            listing: listing.into(),
            record: maybe(record),
            patch: maybe(patch),
            since,
        })
    }
}

/// Bytes and their hex SHA-256.
#[derive(Debug, Clone)]
pub struct Part {
    pub sha256: String,
    pub bytes: Vec<u8>,
}

impl Part {
    pub fn of(bytes: Vec<u8>) -> Self {
        Part {
            sha256: Self::sha256_of(&bytes),
            bytes,
        }
    }

    pub fn sha256_of(bytes: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    }
}

/// The parts of a scan the box sent whole (not confirmed by hash): worth keeping for the
/// next scan.
#[derive(Debug, Default)]
pub struct Fresh<'a> {
    pub record: Option<&'a [u8]>,
    pub listing: Option<&'a [u8]>,
    /// The scan's watcher (`w<id>`), watching since before it read the tree, and what it read.
    pub watch: Option<Watched>,
}

/// Parses [`SCAN_SCRIPT`]'s output, given what the caller told it it already holds.
pub fn parse_with<'a>(out: &'a [u8], known: &'a Known) -> Result<(RemoteTree, Fresh<'a>)> {
    let mut c = Cursor { rest: out };
    let mut fresh = Fresh::default();
    match c.field() {
        Some(b"N") => return Ok((RemoteTree::default(), fresh)),
        Some(b"W") => {}
        _ => return Err(bad("the scan printed no header")),
    }
    let mut tree = RemoteTree {
        exists: true,
        scanned: BTreeSet::from([String::new()]),
        ..RemoteTree::default()
    };
    let mut watch = None;
    if c.rest.starts_with(b"w") {
        let id = c.field().ok_or_else(|| bad("a truncated watcher id"))?;
        watch = Some(String::from_utf8_lossy(&id[1..]).into_owned());
    }
    let mut rest = c.rest;
    if let Some(len) = c.field().and_then(|f| f.strip_prefix(b"R")) {
        let len: usize = std::str::from_utf8(len)
            .ok()
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| bad("a bad record length"))?;
        let record = c.take(len).ok_or_else(|| bad("a short record"))?;
        tree.record = Some(SyncRecord::decode(record));
        fresh.record = Some(record);
        rest = c.rest;
    } else if rest.starts_with(b"r\0") {
        let record = known
            .record
            .as_ref()
            .ok_or_else(|| bad("it confirmed a record it was never shown"))?;
        tree.record = Some(SyncRecord::decode(&record.bytes));
        rest = &rest[2..];
    }
    let record_sha = match (fresh.record, &tree.record) {
        (Some(sent), _) => Some(Part::sha256_of(sent)),
        (None, Some(_)) => known.record.as_ref().map(|r| r.sha256.clone()),
        (None, None) => None,
    };
    let (listing, listing_sha) = if rest == b"e\0" {
        let kept = known
            .listing
            .as_ref()
            .ok_or_else(|| bad("it confirmed a listing it was never shown"))?;
        (&kept.bytes[..], kept.sha256.clone())
    } else {
        fresh.listing = Some(rest);
        // Hashed only when a watcher will vouch for it.
        let sha = if watch.is_some() {
            Part::sha256_of(rest)
        } else {
            String::new()
        };
        (rest, sha)
    };
    fresh.watch = watch.map(|id| Watched {
        id,
        listing: listing_sha,
        record: record_sha,
        patch: None,
        since: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    tree.state = fresh.watch.as_ref().map(Watched::state);
    let mut c = Cursor { rest: listing };
    if c.field() != Some(b"E") {
        return Err(bad("the scan ended before its entries"));
    }
    let mut hashes = BTreeMap::new();
    while let Some(kind) = c.field() {
        if kind == b"H" {
            while let Some(line) = c.field() {
                let Some(split) = line.windows(2).position(|w| w == b"  ") else {
                    continue;
                };
                let (hash, path) = (&line[..split], &line[split + 2..]);
                if let (Ok(h), Some(p)) = (std::str::from_utf8(hash), relative(path)) {
                    hashes.insert(p, h.to_string());
                }
            }
            break;
        }
        if let Some((path, entry)) = read_entry(&mut c, kind)? {
            tree.entries.insert(path, entry);
        }
    }
    // Every recorded directory that is a directory was listed (a symlink in its place not).
    if let Some(record) = &tree.record {
        for d in &record.dirs {
            if tree
                .entries
                .get(d)
                .is_some_and(|e| e.kind == RemoteKind::Dir)
            {
                tree.scanned.insert(d.clone());
            }
        }
    }
    for (path, hash) in hashes {
        if let Some(e) = tree.entries.get_mut(&path) {
            e.sha256 = Some(hash);
        }
    }
    Ok((tree, fresh))
}

/// The five fields of a listing entry after its type (`%y`): its workdir-relative path and
/// what it is; `None` for the workdir itself or a name that is not UTF-8 (no synced path has
/// one; it stays unknown).
fn read_entry(c: &mut Cursor<'_>, kind: &[u8]) -> Result<Option<(String, RemoteEntry)>> {
    let (Some(mode), Some(size), Some(mtime), Some(path), Some(link)) =
        (c.field(), c.field(), c.field(), c.field(), c.field())
    else {
        return Err(bad("a truncated entry"));
    };
    let Some(path) = relative(path).filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let kind = match kind {
        b"f" => RemoteKind::File,
        b"d" => RemoteKind::Dir,
        b"l" => RemoteKind::Symlink,
        _ => RemoteKind::Other,
    };
    let number = |f: &[u8], radix: u32| {
        std::str::from_utf8(f)
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim(), radix).ok())
    };
    let mtime_ns = std::str::from_utf8(mtime)
        .ok()
        .and_then(parse_find_time)
        .unwrap_or(0);
    Ok(Some((
        path,
        RemoteEntry {
            kind,
            mode: number(mode, 8).unwrap_or(0) as u32,
            size: number(size, 10).unwrap_or(0),
            mtime_ns,
            link_target: (kind == RemoteKind::Symlink)
                .then(|| String::from_utf8_lossy(link).into_owned()),
            sha256: None,
        },
    )))
}

/// The patch segment a watcher answered an `r-` request with (after its four header fields:
/// `C<n>`, n paths, `E<m>`, m entries; see `sync_watch.py`), checked whole.
pub fn watcher_segment(state: &[u8]) -> Option<Vec<u8>> {
    let mut c = Cursor { rest: state };
    for _ in 0..4 {
        c.field()?;
    }
    segment_of(c.rest)
}

/// `segment` when it is one whole patch segment (`C<n>`, n paths, `E<m>`, m entries).
pub fn segment_of(segment: &[u8]) -> Option<Vec<u8>> {
    let mut scratch = RemoteTree::default();
    let mut one = Cursor { rest: segment };
    read_segment(&mut one, &mut scratch).ok()?;
    one.rest.is_empty().then(|| segment.to_vec())
}

/// The paths a patch segment names as changed, and the entries it gives for those there now.
pub fn segment_changes(segment: &[u8]) -> Option<(Vec<String>, RemoteTree)> {
    let mut c = Cursor { rest: segment };
    let n: usize = std::str::from_utf8(c.field()?.strip_prefix(b"C")?)
        .ok()?
        .parse()
        .ok()?;
    let mut changed = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        changed.push(String::from_utf8(c.field()?.to_vec()).ok()?);
    }
    let mut now = RemoteTree::default();
    let mut whole = Cursor { rest: segment };
    read_segment(&mut whole, &mut now).ok()?;
    whole.rest.is_empty().then_some((changed, now))
}

/// A segment that changes nothing.
pub fn is_empty_segment(segment: &[u8]) -> bool {
    segment == b"C0\0E0\0"
}

/// Lays a patch over a tree read from a kept listing: what changed on the box since, read
/// afresh (a watcher answers what it saw change, with those paths' entries now, and forgets
/// it, so any later change is its again). Segments, each `C<n>\0` and n workdir-relative paths
/// (their old entries dropped), then `E<m>\0` and m listing entries (as the scan prints them; a
/// path without one is gone), applied in order.
pub fn apply_patch(tree: &mut RemoteTree, patch: &[u8]) -> Result<()> {
    let mut c = Cursor { rest: patch };
    while !c.rest.is_empty() {
        read_segment(&mut c, tree)?;
    }
    Ok(())
}

/// One patch segment, laid over `tree`.
fn read_segment(c: &mut Cursor<'_>, tree: &mut RemoteTree) -> Result<()> {
    let count = |f: Option<&[u8]>, letter: u8| -> Result<usize> {
        f.and_then(|f| f.strip_prefix(&[letter]))
            .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
            .ok_or_else(|| bad("a damaged patch of the kept listing"))
    };
    for _ in 0..count(c.field(), b'C')? {
        let path = c.field().ok_or_else(|| bad("a truncated patch"))?;
        if let Ok(p) = std::str::from_utf8(path) {
            tree.entries.remove(p);
        }
    }
    for _ in 0..count(c.field(), b'E')? {
        let kind = c.field().ok_or_else(|| bad("a truncated patch"))?;
        if let Some((path, entry)) = read_entry(c, kind)? {
            tree.entries.insert(path, entry);
        }
    }
    Ok(())
}

/// find's `%T@`, `1700000000.1234567890`, in nanoseconds.
/// GNU find's `%T@`: whole seconds rounded down, then the fraction to add to them, so a
/// time before the epoch reads `-2.5` for a second and a half before it (as `stat` says:
/// seconds -2, nanoseconds 500000000). Unlike a pax time, the sign is the seconds' alone.
fn parse_find_time(v: &str) -> Option<i128> {
    let (secs, frac) = v.trim().split_once('.').unwrap_or((v.trim(), ""));
    let digits_only = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if !digits_only(secs.strip_prefix('-').unwrap_or(secs)) || !digits_only(frac) {
        return None;
    }
    let secs: i128 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: i128 = format!("{digits:0<9}").parse().ok()?;
    // Out of range (no filesystem keeps such a time): none, rather than an overflow.
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// `./a/b` -> `a/b`, `.` -> ``.
fn relative(path: &[u8]) -> Option<String> {
    let p = std::str::from_utf8(path).ok()?;
    if p == "." {
        return Some(String::new());
    }
    Some(p.strip_prefix("./").unwrap_or(p).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn scan_dir(wd: &std::path::Path, record: &std::path::Path, checksum: bool) -> RemoteTree {
        let out = Command::new("/bin/bash")
            .args(["-c", SCAN_SCRIPT])
            .env("CBX_WORKDIR", wd)
            .env("CBX_RECORD", record)
            .env("CBX_CHECKSUM", if checksum { "1" } else { "" })
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse(&out.stdout).unwrap()
    }

    #[test]
    fn scan_script_is_valid_bash() {
        crate::assert_valid_bash(SCAN_SCRIPT);
    }

    #[test]
    fn the_scan_reads_kinds_modes_links_and_the_record_without_following_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let wd = dir.path().join("wd");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(wd.join("src/deep")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "x").unwrap();
        std::fs::write(wd.join("a.txt"), "hello").unwrap();
        std::fs::set_permissions(wd.join("a.txt"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(wd.join("src/deep/f"), "1").unwrap();
        std::os::unix::fs::symlink("a.txt", wd.join("link")).unwrap();
        std::os::unix::fs::symlink(&outside, wd.join("evil")).unwrap();
        std::fs::write(wd.join("-dash"), "").unwrap();
        let record_file = dir.path().join("record");
        let record = SyncRecord {
            paths: ["a.txt", "src/deep/f", "evil/secret"]
                .map(String::from)
                .into(),
            dirs: ["src", "src/deep", "evil", "gone"].map(String::from).into(),
        };
        std::fs::write(&record_file, record.encode()).unwrap();

        let tree = scan_dir(&wd, &record_file, true);
        assert!(tree.exists);
        assert_eq!(tree.record.as_ref(), Some(&record));
        let scanned: Vec<_> = tree.scanned.iter().map(String::as_str).collect();
        assert_eq!(
            scanned,
            ["", "src", "src/deep"],
            "a symlinked dir is not listed"
        );
        let a = &tree.entries["a.txt"];
        assert_eq!((a.kind, a.mode, a.size), (RemoteKind::File, 0o755, 5));
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(wd.join("a.txt")).unwrap();
        assert_eq!(
            a.mtime_ns,
            i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            "mtimes are read to the nanosecond"
        );
        assert_eq!(
            a.sha256.as_deref(),
            Some("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        assert_eq!(tree.entries["src/deep/f"].kind, RemoteKind::File);
        assert_eq!(tree.entries["src"].kind, RemoteKind::Dir);
        let link = &tree.entries["link"];
        assert_eq!(
            (link.kind, link.link_target.as_deref()),
            (RemoteKind::Symlink, Some("a.txt"))
        );
        assert_eq!(tree.entries["evil"].kind, RemoteKind::Symlink);
        assert!(tree.entries.contains_key("-dash"));
        assert!(!tree.entries.keys().any(|k| k.contains("secret")));
    }

    fn scan_known(wd: &std::path::Path, record: &std::path::Path, known: &Known) -> Vec<u8> {
        let sha = |p: &Option<Part>| p.as_ref().map(|p| p.sha256.clone()).unwrap_or_default();
        let out = Command::new("/bin/bash")
            .args(["-c", SCAN_SCRIPT])
            .env("CBX_WORKDIR", wd)
            .env("CBX_RECORD", record)
            .env("CBX_KNOWN_RECORD", sha(&known.record))
            .env("CBX_KNOWN_LIST", sha(&known.listing))
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    }

    #[test]
    fn what_the_caller_holds_is_confirmed_by_hash_and_any_change_is_sent_whole() {
        let dir = tempfile::tempdir().unwrap();
        let wd = dir.path().join("wd");
        // Enough directories that the listing is made in two halves side by side.
        for i in 0..300 {
            std::fs::create_dir_all(wd.join(format!("d{i}"))).unwrap();
            std::fs::write(wd.join(format!("d{i}/f")), "x").unwrap();
        }
        let record_file = dir.path().join("record");
        let record = SyncRecord {
            paths: (0..300).map(|i| format!("d{i}/f")).collect(),
            dirs: (0..300).map(|i| format!("d{i}")).collect(),
        };
        std::fs::write(&record_file, record.encode()).unwrap();

        let nothing = Known::default();
        let first = scan_known(&wd, &record_file, &nothing);
        let (tree, fresh) = parse_with(&first, &nothing).unwrap();
        assert_eq!(tree.entries.len(), 600, "every dir and file is listed once");
        let known = Known {
            record: fresh.record.map(|r| Part::of(r.to_vec())),
            listing: fresh.listing.map(|l| Part::of(l.to_vec())),
            patch: None,
            watch: None,
        };
        assert_eq!(known.record.as_ref().unwrap().bytes, record.encode());

        let again = scan_known(&wd, &record_file, &known);
        assert_eq!(
            again, b"W\0r\0e\0",
            "an unchanged tree is confirmed in a few bytes"
        );
        let (cached, fresh) = parse_with(&again, &known).unwrap();
        assert_eq!(cached, tree, "the confirmed parts read as the tree itself");
        assert!(fresh.record.is_none() && fresh.listing.is_none());

        std::fs::write(wd.join("d150/f"), "changed").unwrap();
        let changed = scan_known(&wd, &record_file, &known);
        let (now, fresh) = parse_with(&changed, &known).unwrap();
        assert!(fresh.listing.is_some() && fresh.record.is_none());
        assert_eq!(
            now.entries["d150/f"].size, 7,
            "a change on the box is read, not assumed"
        );
        assert_eq!(now.record, tree.record);

        assert!(
            parse_with(b"W\0r\0e\0", &Known::default()).is_err(),
            "a confirmation of something never shown is refused"
        );
    }

    #[test]
    fn the_scan_removes_stale_staging_left_by_a_killed_sync_and_keeps_fresh_ones() {
        let dir = tempfile::tempdir().unwrap();
        let wd = dir.path().join("wd");
        std::fs::create_dir_all(&wd).unwrap();
        let stale = dir.path().join(".wd.crabbox-stage-0ld");
        let fresh = dir.path().join(".wd.crabbox-stage-new");
        let other = dir.path().join(".other.crabbox-stage-0ld");
        for d in [&stale, &fresh, &other] {
            std::fs::create_dir_all(d.join("x")).unwrap();
        }
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for d in [&stale, &other] {
            std::fs::File::open(d)
                .unwrap()
                .set_modified(hour_ago)
                .unwrap();
        }
        let out = Command::new("/bin/bash")
            .args(["-c", SCAN_SCRIPT])
            .env("CBX_WORKDIR", &wd)
            .env("CBX_RECORD", dir.path().join("r"))
            .env("CBX_STALE_MINUTES", "30")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !stale.exists(),
            "a stale staging directory of this workdir is removed"
        );
        assert!(
            fresh.exists(),
            "a sync in progress keeps its staging directory"
        );
        assert!(
            other.exists(),
            "another workdir's staging is not this scan's to remove"
        );
    }

    #[test]
    fn a_missing_workdir_or_record_is_said_so() {
        let dir = tempfile::tempdir().unwrap();
        let tree = scan_dir(&dir.path().join("nope"), &dir.path().join("r"), false);
        assert!(!tree.exists);
        std::fs::write(dir.path().join("f"), "x").unwrap();
        let tree = scan_dir(dir.path(), &dir.path().join("r"), false);
        assert!(tree.exists && tree.record.is_none());
        assert_eq!(tree.entries["f"].sha256, None);
        assert!(parse(b"garbage").is_err());
    }

    /// A time before the epoch reads as the local side reads it (`stat`: seconds rounded
    /// down plus nanoseconds), so such a file is not resent on every warm sync.
    #[test]
    fn an_mtime_before_the_epoch_reads_like_the_local_metadata() {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(parse_find_time("-2.5000000000"), Some(-1_500_000_000));
        assert_eq!(parse_find_time("-1.25"), Some(-750_000_000));
        assert_eq!(parse_find_time("+5"), None);
        let dir = tempfile::tempdir().unwrap();
        let wd = dir.path().join("wd");
        std::fs::create_dir_all(&wd).unwrap();
        std::fs::write(wd.join("old"), "x").unwrap();
        let when = std::time::UNIX_EPOCH - std::time::Duration::from_millis(1500);
        std::fs::File::options()
            .write(true)
            .open(wd.join("old"))
            .unwrap()
            .set_modified(when)
            .unwrap();
        let meta = std::fs::metadata(wd.join("old")).unwrap();
        let local = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        assert_eq!(local, -1_500_000_000);
        let tree = scan_dir(&wd, &dir.path().join("r"), false);
        assert_eq!(tree.entries["old"].mtime_ns, local);
    }

    #[test]
    fn an_mtime_out_of_range_is_unknown_not_an_overflow() {
        // The multiplication overflowed, a panic in debug builds, on a box's say-so.
        let huge = "9".repeat(35);
        let out = format!("W\0E\0f\0644\01\0{huge}.5\0./a\0\0");
        let tree = parse(out.as_bytes()).unwrap();
        assert_eq!(tree.entries["a"].mtime_ns, 0);
        assert_eq!(parse_find_time(&huge), None);
        assert_eq!(
            parse_find_time("1700000000.25"),
            Some(1_700_000_000_250_000_000)
        );
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use proptest::prelude::*;

    /// A field of a scan: numbers (huge ones too), paths, the letters the format uses.
    fn field() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::sample::select(vec![
                "W", "N", "E", "H", "f", "d", "l", "x", ".", "./a", "./a/b"
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
            "[0-9]{1,45}(\\.[0-9]{0,12})?".prop_map(String::into_bytes),
            "-[0-9]{1,40}\\.[0-9]{1,3}".prop_map(String::into_bytes),
            "R[0-9]{1,3}".prop_map(String::into_bytes),
            "[0-9a-f]{4}  \\./[a-z./]{0,6}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..8),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_output_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn output_shaped_like_a_scan_never_panics(
            head in prop::sample::select(vec!["W", "N", "X"]),
            record in proptest::option::of(prop::collection::vec(any::<u8>(), 0..40)),
            record_len_off in -2i64..3,
            fields in prop::collection::vec(field(), 0..30),
        ) {
            let mut out = Vec::new();
            out.extend_from_slice(head.as_bytes());
            out.push(0);
            if let Some(r) = &record {
                let len = (r.len() as i64 + record_len_off).max(0);
                out.extend_from_slice(format!("R{len}").as_bytes());
                out.push(0);
                out.extend_from_slice(r);
            }
            out.extend_from_slice(b"E\0");
            for f in &fields {
                out.extend_from_slice(f);
                out.push(0);
            }
            if let Ok(tree) = parse(&out) {
                for dir in &tree.scanned {
                    prop_assert!(
                        dir.is_empty()
                            || tree.record.as_ref().is_some_and(|r| r.dirs.contains(dir)),
                        "{:?} was scanned but not recorded", dir
                    );
                }
            }
        }
    }
}
