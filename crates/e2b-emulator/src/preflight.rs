//! Whether this host can run the emulator, and what tests do when it cannot.
//!
//! The emulator needs root, `bubblewrap` (`bwrap`) that the kernel lets make
//! namespaces, and util-linux (`nsenter`). On a machine without them a
//! test that starts an emulator skips with a one-line reason instead of failing;
//! where the emulator is required (CI), it fails, so a broken CI machine cannot
//! turn the E2B tests into no-ops.

use crate::isolation::HostTools;
use std::io::Write;
use std::sync::OnceLock;

/// Environment variable that makes a test fail rather than skip when the emulator cannot run
/// here (`cargo xtask ci` sets it to `1`); `CI` has the same effect.
pub const REQUIRE_EMULATOR_ENV: &str = "CRABBOX_REQUIRE_EMULATOR";

/// Runs the host check the emulator runs at start-up, without starting anything.
/// `Err` is one line saying what is missing and how to fix it.
///
/// Blocks while a short bubblewrap probe runs.
pub fn preflight() -> Result<(), String> {
    HostTools::check().map(drop).map_err(|e| {
        let text = e.to_string();
        text.lines().map(str::trim).collect::<Vec<_>>().join(" ")
    })
}

/// For a test that starts an emulator: `true` when it can run here.
///
/// When it cannot, prints `skipped: <test>: ...` to stderr (past the test harness's output
/// capture, so it shows) and returns `false`, and the test returns early. When `CI` or
/// `CRABBOX_REQUIRE_EMULATOR` is set (to anything but empty, `0` or `false`), it panics
/// with the reason instead. The host is checked once per process.
pub fn available_or_skip() -> bool {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let Err(reason) = CHECKED.get_or_init(preflight) else {
        return true;
    };
    if let Some(var) = [REQUIRE_EMULATOR_ENV, "CI"]
        .into_iter()
        .find(|var| is_set(std::env::var(var).ok().as_deref()))
    {
        panic!(
            "the e2b emulator cannot run here, and with {var} set the tests that need it may \
             not be skipped: {reason}"
        );
    }
    let test = std::thread::current()
        .name()
        .filter(|name| *name != "main")
        .map(|name| format!("{name}: "))
        .unwrap_or_default();
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {test}the e2b emulator cannot run here: {reason}"
    );
    false
}

/// Whether a flag variable's value turns it on.
fn is_set(value: Option<&str>) -> bool {
    match value.map(str::trim) {
        None | Some("") | Some("0") => false,
        Some(v) => !v.eq_ignore_ascii_case("false"),
    }
}

#[cfg(test)]
mod tests {
    use super::is_set;

    #[test]
    fn flag_values() {
        for on in ["1", "true", "yes", "TRUE"] {
            assert!(is_set(Some(on)), "{on}");
        }
        for off in [None, Some(""), Some("0"), Some("false"), Some("False")] {
            assert!(!is_set(off), "{off:?}");
        }
    }
}
