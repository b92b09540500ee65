//! Sandbox paths as the emulator sees them on the host.
//!
//! The emulator serves envd's file routes itself, as root, on the host. To behave
//! like a process inside the sandbox it resolves every path in the sandbox's mount
//! layout: `/home`, `/root`, `/tmp`, `/etc/passwd` and `/etc/group` map to the
//! sandbox's host directories, everything else to the read-only host. Symlinks are
//! followed in that layout too, so a link can never reach the host's own `/root`.

use crate::isolation::{SandboxLayout, SandboxUser};
use crabbox_e2b_wire::filesystem::{EntryInfo, FileType};
use crabbox_e2b_wire::{Code, ConnectError};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

const MAX_SYMLINKS: usize = 40;

/// Which part of the mount layout a path lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Home,
    RootHome,
    Tmp,
    /// The generated passwd/group files (read-only).
    SandboxEtc,
    /// The host's file system (read-only).
    Host,
}

/// A sandbox path and where it lives on the host.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Normalized absolute path inside the sandbox.
    pub path: String,
    pub host: PathBuf,
    pub area: Area,
}

/// Errors of file operations, convertible to Connect and HTTP errors.
pub fn fs_error(err: &io::Error, path: &str) -> ConnectError {
    match err.kind() {
        io::ErrorKind::NotFound => {
            ConnectError::new(Code::NotFound, format!("path '{path}' does not exist"))
        }
        io::ErrorKind::PermissionDenied => {
            ConnectError::new(Code::PermissionDenied, format!("permission denied: {path}"))
        }
        io::ErrorKind::AlreadyExists => {
            ConnectError::new(Code::AlreadyExists, format!("path '{path}' already exists"))
        }
        _ if err.raw_os_error() == Some(libc::EROFS) => ConnectError::new(
            Code::PermissionDenied,
            format!("path '{path}' is on a read-only file system"),
        ),
        _ if err.raw_os_error() == Some(libc::ENOSPC) => ConnectError::new(
            Code::ResourceExhausted,
            format!("no space left for '{path}'"),
        ),
        _ if err.raw_os_error() == Some(libc::ENOTDIR) => ConnectError::new(
            Code::InvalidArgument,
            format!("a component of '{path}' is not a directory"),
        ),
        _ if err.raw_os_error() == Some(libc::EISDIR) => ConnectError::new(
            Code::InvalidArgument,
            format!("path '{path}' is a directory"),
        ),
        _ => ConnectError::new(Code::Internal, format!("{path}: {err}")),
    }
}

/// File-system view of one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxFs {
    layout: SandboxLayout,
}

fn split(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

fn join(components: &[String]) -> String {
    format!("/{}", components.join("/"))
}

impl SandboxFs {
    pub fn new(layout: SandboxLayout) -> Self {
        Self { layout }
    }

    /// Makes `path` absolute: relative and `~` paths start at the user's home.
    pub fn absolute(path: &str, user: SandboxUser) -> String {
        if path == "~" {
            user.home.to_string()
        } else if let Some(rest) = path.strip_prefix("~/") {
            format!("{}/{rest}", user.home)
        } else if path.starts_with('/') {
            path.to_string()
        } else {
            format!("{}/{path}", user.home)
        }
    }

    fn map(&self, components: &[String]) -> (PathBuf, Area) {
        let first = components.first().map(String::as_str);
        let tail = |skip: usize| components[skip..].iter().collect::<PathBuf>();
        match first {
            Some("home") => (self.layout.home().join(tail(1)), Area::Home),
            Some("root") => (self.layout.root_home().join(tail(1)), Area::RootHome),
            Some("tmp") => (self.layout.tmp().join(tail(1)), Area::Tmp),
            Some("etc") if components.len() == 2 && components[1] == "passwd" => {
                (self.layout.passwd(), Area::SandboxEtc)
            }
            Some("etc") if components.len() == 2 && components[1] == "group" => {
                (self.layout.group(), Area::SandboxEtc)
            }
            _ => (PathBuf::from("/").join(tail(0)), Area::Host),
        }
    }

    /// Resolves `path` (absolute, relative or `~`) in the sandbox layout,
    /// following symlinks in every component, and the last one if `follow_last`.
    pub fn resolve(
        &self,
        path: &str,
        user: SandboxUser,
        follow_last: bool,
    ) -> Result<Resolved, ConnectError> {
        let absolute = Self::absolute(path, user);
        let mut pending: Vec<String> = split(&absolute);
        pending.reverse();
        let mut current: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(component) = pending.pop() {
            if component == ".." {
                current.pop();
                continue;
            }
            current.push(component);
            let is_last = pending.is_empty();
            if is_last && !follow_last {
                break;
            }
            let (host, _) = self.map(&current);
            let Ok(meta) = fs::symlink_metadata(&host) else {
                continue;
            };
            if !meta.file_type().is_symlink() {
                continue;
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(ConnectError::new(
                    Code::InvalidArgument,
                    format!("too many levels of symbolic links in '{absolute}'"),
                ));
            }
            let target = fs::read_link(&host).map_err(|e| fs_error(&e, &absolute))?;
            let target = target.to_string_lossy().into_owned();
            current.pop();
            if target.starts_with('/') {
                current.clear();
            }
            let mut target_components = split(&target);
            target_components.reverse();
            pending.extend(target_components);
        }
        let (host, area) = self.map(&current);
        Ok(Resolved {
            path: join(&current),
            host,
            area,
        })
    }

    /// Fails unless `user` may create, change or delete `resolved`.
    pub fn check_writable(
        &self,
        resolved: &Resolved,
        user: SandboxUser,
    ) -> Result<(), ConnectError> {
        let allowed = match resolved.area {
            Area::Tmp => true,
            Area::Home => {
                user.is_root()
                    || resolved.path == user.home
                    || resolved.path.starts_with(&format!("{}/", user.home))
            }
            Area::RootHome => user.is_root(),
            Area::SandboxEtc | Area::Host => false,
        };
        if allowed
            && resolved.path != "/home"
            && resolved.path != "/tmp"
            && resolved.path != "/root"
        {
            Ok(())
        } else if matches!(resolved.area, Area::Host | Area::SandboxEtc) {
            Err(ConnectError::new(
                Code::PermissionDenied,
                format!(
                    "path '{}' is on a read-only file system (the emulator only lets sandboxes \
                     write under /home, /root and /tmp)",
                    resolved.path
                ),
            ))
        } else {
            Err(ConnectError::new(
                Code::PermissionDenied,
                format!(
                    "permission denied: user '{}' cannot write '{}'",
                    user.name, resolved.path
                ),
            ))
        }
    }

    /// Fails unless `user` may read `resolved`.
    pub fn check_readable(
        &self,
        resolved: &Resolved,
        user: SandboxUser,
    ) -> Result<(), ConnectError> {
        if resolved.area == Area::RootHome && !user.is_root() {
            return Err(ConnectError::new(
                Code::PermissionDenied,
                format!(
                    "permission denied: user '{}' cannot read '{}'",
                    user.name, resolved.path
                ),
            ));
        }
        Ok(())
    }

    /// Creates the missing parent directories of `resolved`, owned by `user`.
    pub fn create_parents(
        &self,
        resolved: &Resolved,
        user: SandboxUser,
    ) -> Result<(), ConnectError> {
        let mut missing = Vec::new();
        let mut dir = resolved.host.parent().map(PathBuf::from);
        while let Some(d) = dir {
            if d.exists() {
                break;
            }
            missing.push(d.clone());
            dir = d.parent().map(PathBuf::from);
        }
        for d in missing.into_iter().rev() {
            match fs::create_dir(&d) {
                Ok(()) => self.give_to(&d, user),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(fs_error(&e, &resolved.path)),
            }
        }
        Ok(())
    }

    /// Makes `user` the owner of a host path the emulator created.
    pub fn give_to(&self, host: &std::path::Path, user: SandboxUser) {
        let _ = std::os::unix::fs::lchown(host, Some(user.uid), Some(user.gid));
    }

    /// envd's description of the entry at `resolved` (not following a final symlink).
    pub fn entry_info(
        &self,
        resolved: &Resolved,
        user: SandboxUser,
    ) -> Result<EntryInfo, ConnectError> {
        let meta =
            fs::symlink_metadata(&resolved.host).map_err(|e| fs_error(&e, &resolved.path))?;
        let name = resolved
            .path
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .unwrap_or("/")
            .to_string();
        let mut info = EntryInfo {
            name,
            path: resolved.path.clone(),
            ..Default::default()
        };
        let mut shown = meta.clone();
        if meta.file_type().is_symlink() {
            info.is_symlink = true;
            let target = self.resolve(&resolved.path, user, true)?;
            info.symlink_target = Some(target.path.clone());
            match fs::metadata(&target.host) {
                Ok(target_meta) => shown = target_meta,
                Err(_) => info.file_type = FileType::Symlink,
            }
        }
        if info.file_type == FileType::Unspecified {
            info.file_type = if shown.is_dir() {
                FileType::Directory
            } else {
                FileType::File
            };
        }
        info.size = shown.len() as i64;
        info.mode = shown.permissions().mode() & 0o777;
        info.permissions = permissions_string(&shown);
        info.owner = SandboxUser::name_of_uid(shown.uid());
        info.group = SandboxUser::name_of_gid(shown.gid());
        info.modified_time = Some(rfc3339_from_unix(shown.mtime(), shown.mtime_nsec()));
        Ok(info)
    }
}

fn permissions_string(meta: &fs::Metadata) -> String {
    let mode = meta.permissions().mode();
    let mut out = String::with_capacity(10);
    out.push(if meta.is_dir() {
        'd'
    } else if meta.file_type().is_symlink() {
        'L'
    } else {
        '-'
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 0o7;
        out.push(if bits & 4 != 0 { 'r' } else { '-' });
        out.push(if bits & 2 != 0 { 'w' } else { '-' });
        out.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    out
}

/// RFC 3339 (UTC) from a Unix timestamp.
pub fn rfc3339_from_unix(secs: i64, nanos: i64) -> String {
    let when = time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        + time::Duration::nanoseconds(nanos);
    when.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::{ROOT, USER};

    fn fs_in(dir: &std::path::Path) -> SandboxFs {
        let layout = SandboxLayout::new(dir.to_path_buf());
        std::fs::create_dir_all(layout.home().join("user")).unwrap();
        std::fs::create_dir_all(layout.root_home()).unwrap();
        std::fs::create_dir_all(layout.tmp()).unwrap();
        SandboxFs::new(layout)
    }

    #[test]
    fn relative_and_tilde_paths_start_at_the_users_home() {
        assert_eq!(SandboxFs::absolute("a/b", USER), "/home/user/a/b");
        assert_eq!(SandboxFs::absolute("~/x", ROOT), "/root/x");
        assert_eq!(SandboxFs::absolute("~", USER), "/home/user");
        assert_eq!(SandboxFs::absolute("/etc", USER), "/etc");
    }

    #[test]
    fn sandbox_dirs_map_into_the_sandbox_and_the_rest_to_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let sfs = fs_in(dir.path());
        let home = sfs.resolve("/home/user/../user/./f", USER, true).unwrap();
        assert_eq!(home.path, "/home/user/f");
        assert_eq!(home.host, dir.path().join("home/user/f"));
        assert_eq!(home.area, Area::Home);
        let host = sfs.resolve("/usr/bin", USER, true).unwrap();
        assert_eq!(host.host, PathBuf::from("/usr/bin"));
        assert_eq!(host.area, Area::Host);
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_sandbox() {
        let dir = tempfile::tempdir().unwrap();
        let sfs = fs_in(dir.path());
        std::os::unix::fs::symlink("/root", dir.path().join("home/user/link")).unwrap();
        let resolved = sfs.resolve("/home/user/link/secret", ROOT, true).unwrap();
        assert_eq!(resolved.path, "/root/secret");
        assert_eq!(resolved.host, dir.path().join("root/secret"));
        assert!(sfs.check_readable(&resolved, USER).is_err());
    }

    #[test]
    fn user_cannot_write_outside_home_and_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let sfs = fs_in(dir.path());
        for (path, ok) in [
            ("/home/user/a", true),
            ("/tmp/a", true),
            ("/root/a", false),
            ("/etc/hosts", false),
            ("/home/other/a", false),
        ] {
            let resolved = sfs.resolve(path, USER, false).unwrap();
            assert_eq!(sfs.check_writable(&resolved, USER).is_ok(), ok, "{path}");
        }
        let resolved = sfs.resolve("/root/a", ROOT, false).unwrap();
        assert!(sfs.check_writable(&resolved, ROOT).is_ok());
    }
}
