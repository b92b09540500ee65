//! Reading a tree's files each from its directory's descriptor, never through a symlink
//! (a part of [`super`], manifest.rs): the stat pass's system calls.

use std::path::Path;

use crate::error::{Error, Result};

/// Files at least this long are checked for holes.
pub(super) const SPARSE_MIN_BYTES: u64 = 16 << 20;

/// The directories from a tree's root down to the one whose files are being read, each
/// opened from its parent's descriptor without following a symlink: a directory swapped for
/// a symlink (or a file) is never read through, whatever happens to the path meanwhile.
pub(super) struct OpenDirs<'a> {
    root_path: &'a Path,
    root: std::fs::File,
    /// The current directory's components, each with its descriptor; shorter than the
    /// directory's path when a component could not be opened.
    open: Vec<(&'a str, std::fs::File)>,
}

impl<'a> OpenDirs<'a> {
    pub(super) fn new(root_path: &'a Path) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        // The root as the user named it (it may be reached through a symlink).
        let root = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | DIR_LOOKUP)
            .open(root_path)
            .map_err(Error::io("reading", root_path))?;
        Ok(OpenDirs {
            root_path,
            root,
            open: Vec::new(),
        })
    }

    /// Opens `parent` (a clean relative path, "" for the root), reusing the components it
    /// shares with the directory open now: `false` when it is not a directory reachable
    /// without a symlink any more (its files are left out).
    pub(super) fn enter(&mut self, parent: &'a str) -> Result<bool> {
        let mut parts = parent.split('/').filter(|c| !c.is_empty());
        let mut depth = 0;
        let mut next = None;
        for part in parts.by_ref() {
            if self.open.get(depth).is_some_and(|(p, _)| *p == part) {
                depth += 1;
            } else {
                next = Some(part);
                break;
            }
        }
        self.open.truncate(depth);
        for part in next.into_iter().chain(parts) {
            let at = self.open.last().map_or(&self.root, |(_, f)| f);
            match open_dir_at(at, part) {
                Ok(f) => self.open.push((part, f)),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
                    ) =>
                {
                    return Ok(false)
                }
                Err(e) => return Err(Error::io("reading", self.root_path.join(parent))(e)),
            }
        }
        Ok(true)
    }

    /// The directory [`OpenDirs::enter`] last opened whole.
    pub(super) fn current(&self) -> &std::fs::File {
        self.open.last().map_or(&self.root, |(_, f)| f)
    }
}

/// How a directory is opened to look names up in: on Linux for lookups only (`O_PATH`), which
/// asks only for the search permission a lookup needs (an intermediate directory may be
/// `--x`, as stat-ing through it by path allows); elsewhere, for reading.
#[cfg(target_os = "linux")]
pub(super) const DIR_LOOKUP: libc::c_int = libc::O_PATH;
#[cfg(not(target_os = "linux"))]
pub(super) const DIR_LOOKUP: libc::c_int = libc::O_RDONLY;

/// The directory `name` in the open directory `dir`, never through a symlink.
pub(super) fn open_dir_at(dir: &std::fs::File, name: &str) -> std::io::Result<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let c_name = std::ffi::CString::new(name)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c_name` is NUL-terminated and `dir` an open descriptor for the duration of
    // the call; a descriptor returned is owned by nothing else.
    unsafe {
        let fd = libc::openat(
            dir.as_raw_fd(),
            c_name.as_ptr(),
            DIR_LOOKUP | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        );
        if fd < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(std::fs::File::from_raw_fd(fd))
        }
    }
}

/// What the manifest reads of a file's metadata.
pub(super) struct Meta {
    /// Type and permission bits (`st_mode`).
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) size: u64,
    /// 512-byte blocks on disk.
    pub(super) blocks: u64,
    pub(super) mtime: (i64, u32),
}

/// lstat of `name` in the open directory `dir`; `c_name` is left holding `name`
/// NUL-terminated (for [`readable_at`]). On Linux by statx(2), asking only for the fields read
/// (measurably cheaper than a whole stat on 20,000 files); fstatat where statx is missing or
/// filtered out (old kernels, seccomp), or did not give every field asked for.
pub(super) fn lstat_at(
    dir: &std::fs::File,
    name: &str,
    c_name: &mut Vec<u8>,
) -> std::io::Result<Meta> {
    use std::os::fd::AsRawFd;
    if name.contains('\0') {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    c_name.clear();
    c_name.extend_from_slice(name.as_bytes());
    c_name.push(0);
    #[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
    if let Some(meta) = statx_at(dir.as_raw_fd(), c_name)? {
        return Ok(meta);
    }
    // SAFETY: a zeroed stat is a valid out-parameter; `c_name` is NUL-terminated (and holds no
    // other NUL) and `dir` an open descriptor for the duration of the call.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstatat(
            dir.as_raw_fd(),
            c_name.as_ptr().cast(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ) == 0
        {
            Ok(Meta {
                mode: st.st_mode,
                uid: st.st_uid,
                size: st.st_size as u64,
                blocks: st.st_blocks as u64,
                mtime: (st.st_mtime, st.st_mtime_nsec as u32),
            })
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// statx(2) of the NUL-terminated `c_name` in `dir`, not following a final symlink: `None`
/// when statx cannot be used (then it is not tried again) or did not give every field.
#[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
pub(super) fn statx_at(dir: std::os::fd::RawFd, c_name: &[u8]) -> std::io::Result<Option<Meta>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static UNUSABLE: AtomicBool = AtomicBool::new(false);
    const WANTED: u32 = libc::STATX_TYPE
        | libc::STATX_MODE
        | libc::STATX_UID
        | libc::STATX_SIZE
        | libc::STATX_BLOCKS
        | libc::STATX_MTIME;
    if UNUSABLE.load(Ordering::Relaxed) {
        return Ok(None);
    }
    // SAFETY: a zeroed statx is a valid out-parameter; `c_name` is NUL-terminated and `dir`
    // an open descriptor for the duration of the call. The system call itself, not glibc's
    // wrapper (2.28 and later): the binary still loads on an older glibc, and falls back.
    let (rc, sx) = unsafe {
        let mut sx: libc::statx = std::mem::zeroed();
        let rc = libc::syscall(
            libc::SYS_statx,
            dir,
            c_name.as_ptr().cast::<libc::c_char>(),
            libc::AT_SYMLINK_NOFOLLOW,
            WANTED,
            &mut sx as *mut libc::statx,
        );
        (rc, sx)
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS | libc::EPERM | libc::EINVAL) => {
                UNUSABLE.store(true, Ordering::Relaxed);
                Ok(None)
            }
            _ => Err(e),
        };
    }
    if sx.stx_mask & WANTED != WANTED {
        return Ok(None);
    }
    Ok(Some(Meta {
        mode: u32::from(sx.stx_mode),
        uid: sx.stx_uid,
        size: sx.stx_size,
        blocks: sx.stx_blocks,
        mtime: (sx.stx_mtime.tv_sec, sx.stx_mtime.tv_nsec),
    }))
}

/// The target of the symlink `c_name` (NUL-terminated, as [`lstat_at`] leaves it) in the
/// open directory `dir`: read from the directory the link was found in, not by its path.
pub(super) fn read_link_at(dir: &std::fs::File, c_name: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    if c_name.last() != Some(&0) {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `c_name` is NUL-terminated, `buf` is writable for its length, and `dir` is
        // an open descriptor for the duration of the call.
        let n = unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                c_name.as_ptr().cast(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        // A target that filled the buffer may have been cut: read again with more room.
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 4, 0);
    }
}

/// A file whose disk blocks hold less than half its length (and that is worth mentioning).
pub(super) fn is_sparse(size: u64, blocks: u64) -> bool {
    size >= SPARSE_MIN_BYTES && blocks.saturating_mul(512) < size / 2
}

/// The calling user may read `c_name` (NUL-terminated, as [`lstat_at`] leaves it) in the
/// open directory `dir` (a cheap check, no file is opened).
pub(super) fn readable_at(dir: &std::fs::File, c_name: &[u8]) -> bool {
    use std::os::fd::AsRawFd;
    if c_name.last() != Some(&0) {
        return false;
    }
    // SAFETY: `c_name` is NUL-terminated and `dir` an open descriptor for the duration of the
    // call.
    unsafe { libc::faccessat(dir.as_raw_fd(), c_name.as_ptr().cast(), libc::R_OK, 0) == 0 }
}
