//! Where on the sandbox crabbox works, and for how long: the user, the workdir and the TTL,
//! checked before any network call exactly as the reference does.

use std::time::Duration;

/// The template's default user when `e2b.user` is empty.
pub const DEFAULT_USER: &str = "user";

/// Broad directories a workdir must never be: syncing replaces files under it.
const FORBIDDEN_WORKDIRS: &[&str] = &[
    "/", "/bin", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root", "/sbin",
    "/sys", "/tmp", "/usr", "/var",
];

/// The checked user and absolute workdir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The login name envd runs commands as.
    pub user: String,
    /// Absolute, cleaned.
    pub workdir: String,
}

impl Placement {
    pub fn new(user: &str, workdir: &str) -> Result<Self, String> {
        let user = check_user(user)?;
        let workdir = resolve_workdir(&user, workdir)?;
        Ok(Self { user, workdir })
    }
}

/// `e2b.user` must be a login name; empty means the template default (`user`).
pub fn check_user(user: &str) -> Result<String, String> {
    let user = user.trim();
    if user.is_empty() {
        return Ok(DEFAULT_USER.to_string());
    }
    // ':' would corrupt the `Basic base64("<user>:")` credentials envd reads the user from.
    if user == "."
        || user == ".."
        || user.contains(['/', '\\', '\0', ':'])
        || user.chars().any(char::is_control)
    {
        return Err(format!(
            "invalid e2b.user {user:?}: it must be a login name (no '/', '\\', ':', NUL, '.' or '..')"
        ));
    }
    Ok(user.to_string())
}

/// The user's home on E2B templates.
pub fn home_of(user: &str) -> String {
    match user {
        "" => format!("/home/{DEFAULT_USER}"),
        "root" => "/root".to_string(),
        u => format!("/home/{u}"),
    }
}

/// Resolves `workdir` for `user`: relative paths live under the user's home, absolute ones
/// are cleaned; empty and broad system roots are refused.
pub fn resolve_workdir(user: &str, workdir: &str) -> Result<String, String> {
    let raw = workdir.trim();
    if raw.is_empty() {
        return Err("e2b.workdir is empty: set it to a directory such as `crabbox`".into());
    }
    if raw.contains('\0') || raw.chars().any(char::is_control) {
        return Err(format!(
            "invalid e2b.workdir {raw:?}: control characters are not allowed"
        ));
    }
    // `~` and `~/x` mean the user's home, as a shell would read them.
    let raw = match raw.strip_prefix('~') {
        Some("") => ".",
        Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/'),
        _ => raw,
    };
    let joined = if raw.starts_with('/') {
        raw.to_string()
    } else {
        format!("{}/{raw}", home_of(user))
    };
    let cleaned = clean_path(&joined);
    if cleaned == home_of(user) {
        return Err(format!(
            "refusing e2b.workdir {workdir:?}: it is {user}'s home directory, which holds the \
             shell's own files and cannot be swapped in whole; use a directory inside it, such \
             as `crabbox` ({cleaned}/crabbox)"
        ));
    }
    if FORBIDDEN_WORKDIRS.contains(&cleaned.as_str()) {
        return Err(format!(
            "refusing e2b.workdir {raw:?} (resolves to {cleaned}): syncing there could clobber \
             the system; use a project directory such as `crabbox` or /home/user/project"
        ));
    }
    Ok(cleaned)
}

/// Lexical cleaning of an absolute path, like Go's `path.Clean`.
pub fn clean_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The sandbox lifetime: zero means 5 minutes; never above `max` (`e2b.maxTtl`).
pub fn clamp_ttl(ttl: Duration, max: Duration) -> Duration {
    let ttl = if ttl.is_zero() {
        Duration::from_secs(300)
    } else {
        ttl
    };
    ttl.min(max).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_must_be_a_login_name() {
        assert_eq!(check_user("").unwrap(), "user");
        assert_eq!(check_user("root").unwrap(), "root");
        assert_eq!(check_user("dev-1").unwrap(), "dev-1");
        for bad in [".", "..", "a/b", "a\\b", "a\0b", "a:b", "x\ny"] {
            assert!(check_user(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relative_workdir_lives_under_home() {
        assert_eq!(
            resolve_workdir("user", "crabbox").unwrap(),
            "/home/user/crabbox"
        );
        assert_eq!(resolve_workdir("root", "repo").unwrap(), "/root/repo");
        assert_eq!(resolve_workdir("dev", "a/./b/").unwrap(), "/home/dev/a/b");
        assert_eq!(
            Placement::new("", "crabbox").unwrap().workdir,
            "/home/user/crabbox"
        );
    }

    #[test]
    fn tilde_means_home_and_the_home_itself_is_refused_with_the_fix() {
        assert_eq!(
            resolve_workdir("user", "~/proj").unwrap(),
            "/home/user/proj"
        );
        for whole_home in ["~", "/home/user", "/home/user/", "."] {
            let err = resolve_workdir("user", whole_home).unwrap_err();
            assert!(
                err.contains("home directory") && err.contains("crabbox"),
                "{err}"
            );
        }
    }

    #[test]
    fn absolute_workdir_is_cleaned() {
        assert_eq!(
            resolve_workdir("user", "//srv//app/../work/").unwrap(),
            "/srv/work"
        );
    }

    #[test]
    fn broad_roots_and_empty_are_refused() {
        for bad in [
            "",
            "  ",
            "/",
            "/etc",
            "/usr/",
            "/tmp/.",
            "/home",
            "/root",
            "/var",
            "/opt",
            "/proc",
            "/sys",
            "/bin",
            "/sbin",
            "/lib",
            "/lib64",
            "/dev",
            "..",
            "../..",
            "../../etc",
            "/home/user/../../usr",
        ] {
            assert!(resolve_workdir("user", bad).is_err(), "{bad:?}");
        }
        assert!(resolve_workdir("root", "..").is_err(), "/ from /root/..");
        assert!(resolve_workdir("user", "a\0b").is_err());
    }

    #[test]
    fn ttl_is_clamped_to_max_and_zero_means_five_minutes() {
        let hour = Duration::from_secs(3600);
        assert_eq!(clamp_ttl(Duration::from_secs(90 * 60), hour), hour);
        assert_eq!(clamp_ttl(Duration::ZERO, hour), Duration::from_secs(300));
        assert_eq!(
            clamp_ttl(Duration::from_secs(600), hour),
            Duration::from_secs(600)
        );
        let day = Duration::from_secs(86400);
        assert_eq!(
            clamp_ttl(Duration::from_secs(90 * 60), day),
            Duration::from_secs(90 * 60)
        );
    }
}
