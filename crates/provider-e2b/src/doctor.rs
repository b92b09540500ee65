//! The E2B provider's checks for `crabbox doctor`: the key is there (never shown, only where
//! it came from), the API answers and takes it, the fixed envd URL answers, the template
//! exists. Nothing is created.

use crabbox_core::doctor::Check;
use crabbox_core::Error;

use crate::provider::E2bProvider;

/// The egress rules new sandboxes get, or why they are refused.
fn network_check(p: &E2bProvider) -> Check {
    match p.network_rules() {
        Ok(n) => Check::pass(
            "e2b.network",
            format!(
                "new sandboxes: internet {}{}{}",
                if n.allow_internet { "on" } else { "off" },
                if n.allow_out.is_empty() {
                    String::new()
                } else {
                    format!(", allowOut {}", n.allow_out.join(" "))
                },
                if n.deny_out.is_empty() {
                    String::new()
                } else {
                    format!(", denyOut {}", n.deny_out.join(" "))
                }
            ),
        ),
        Err(e) => Check::fail(
            "e2b.network",
            e.to_string(),
            "in repository files only tighten the rules; loosen them in your user config, the \
             environment or a flag",
        ),
    }
}

pub(crate) async fn checks(p: &E2bProvider) -> Vec<Check> {
    let mut checks = vec![
        Check::pass(
            "e2b.apiKey",
            format!("set by {} (its value is never shown)", p.key_origin),
        ),
        network_check(p),
    ];
    let api = &p.endpoint;
    let reachable = match p.control.probe().await {
        Ok(()) => {
            checks.push(Check::pass(
                "e2b.apiUrl",
                format!("{api} answers and accepts the API key"),
            ));
            true
        }
        Err(e @ Error::Usage(_)) => {
            // The key's own check says it: there, but refused.
            checks[0] = Check::fail(
                "e2b.apiKey",
                format!("set by {}, but refused: {e}", p.key_origin),
                "set E2B_API_KEY (or CRABBOX_E2B_API_KEY) to a key of your E2B team \
                 (https://e2b.dev/dashboard)",
            );
            false
        }
        Err(e) => {
            checks.push(Check::fail(
                "e2b.apiUrl",
                format!("{api} does not answer: {e}"),
                "check the network, or e2b.apiUrl / E2B_API_URL (default https://api.e2b.app)",
            ));
            false
        }
    };
    checks.push(match &p.sandbox_url {
        Some(url) => envd_check(p, url).await,
        None => Check::pass(
            "e2b.domain",
            format!(
                "each sandbox's envd is at https://49983-<sandbox>.{}; reached once a sandbox \
                 exists",
                p.domain
            ),
        ),
    });
    if !reachable {
        checks.push(Check::skip(
            "e2b.template",
            format!(
                "template {} not checked: the API did not answer",
                p.template
            ),
        ));
        return checks;
    }
    checks.push(match p.control.template_exists(&p.template).await {
        Ok(Some(true)) => Check::pass("e2b.template", format!("template {} exists", p.template)),
        Ok(Some(false)) => Check::fail(
            "e2b.template",
            format!(
                "template {} does not exist, or this API key's team may not use it",
                p.template
            ),
            "set e2b.template (--e2b-template, CRABBOX_E2B_TEMPLATE) to one of your \
             templates; `base` is E2B's default",
        ),
        Ok(None) => Check::warn(
            "e2b.template",
            format!(
                "template {}: {api} cannot say whether it exists (no template lookup)",
                p.template
            ),
            "a run will say so if it does not",
        ),
        Err(e) => Check::fail(
            "e2b.template",
            format!("looking up template {}: {e}", p.template),
            "retry later",
        ),
    });
    checks
}

/// The fixed envd URL answers HTTP at all (without a sandbox, envd's proxy says which is
/// missing: any answer proves the address).
async fn envd_check(p: &E2bProvider, url: &str) -> Check {
    let probe = p
        .http
        .get(format!("{url}/health"))
        .timeout(std::time::Duration::from_secs(10))
        .send()
        .await;
    match probe {
        Ok(_) => Check::pass("e2b.sandboxUrl", format!("{url} answers")),
        Err(e) => Check::fail(
            "e2b.sandboxUrl",
            format!(
                "{url} does not answer: {}",
                p.control.secrets().scrub(&crate::control::error_chain(&e))
            ),
            "check e2b.sandboxUrl / E2B_SANDBOX_URL, or unset it to reach each sandbox at \
             its own host",
        ),
    }
}
