//! `crabbox doctor [--json]`: runs the library's checks and prints them; exit 1 when one
//! fails.

use crabbox_core::config::LoadOptions;
use crabbox_core::doctor::{diagnose, CheckStatus};
use crabbox_core::Result;

use crate::cli::{DoctorArgs, GlobalArgs};
use crate::context;

pub async fn run(g: &GlobalArgs, a: DoctorArgs) -> Result<i32> {
    let opts = LoadOptions::from_process(
        context::flag_layers(g),
        crate::registry::registry().sections(),
    )?;
    let report = diagnose(&opts, context::provider).await;
    let code = i32::from(!report.passed());
    if a.json {
        super::print_json(&report);
        return Ok(code);
    }
    for check in &report.checks {
        let mark = match check.status {
            CheckStatus::Pass => "ok  ",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Skip => "skip",
        };
        println!("{mark} {:<14} {}", check.name, check.detail);
        if let Some(fix) = check
            .fix
            .as_ref()
            .filter(|_| check.status != CheckStatus::Pass)
        {
            println!("     {:<14} fix: {fix}", "");
        }
    }
    println!(
        "{}",
        if report.passed() {
            "crabbox doctor: every check passed"
        } else {
            "crabbox doctor: some checks failed (see the fixes above)"
        }
    );
    Ok(code)
}
