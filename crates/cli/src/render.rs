//! How the CLI says what the library reports: hints as command lines to type.

use crabbox_core::command::shell_quote;
use crabbox_core::hint::Hint;

/// One line of advice for `hint`, naming the `crabbox` command that does it.
pub fn hint(hint: &Hint) -> String {
    match hint {
        Hint::Stop { provider, lease_id } => {
            format!("release it with `crabbox stop --provider {provider} {lease_id}`")
        }
        Hint::Reclaim { provider, id } => format!(
            "if its box still exists, release it with `crabbox stop --provider {provider} \
             --reclaim {id}`"
        ),
        Hint::Rerun {
            provider,
            lease_id,
            command,
        } => {
            let words = if command.shell {
                command.argv.join(" ")
            } else {
                command
                    .argv
                    .iter()
                    .map(|w| shell_quote(w))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            format!(
                "rerun: crabbox run --provider {provider} --id {lease_id}{} -- {words}",
                if command.shell { " --shell" } else { "" }
            )
        }
        Hint::RunOn { provider, id } => format!(
            "run commands on it with `crabbox run --provider {provider} --id {id} -- <command>`"
        ),
        Hint::List { provider } => format!("`crabbox list --provider {provider}` shows the boxes"),
        Hint::Warmup { provider } => {
            format!("`crabbox warmup --provider {provider}` leases one")
        }
        Hint::PickLease { leases, .. } => format!(
            "pick one with --id: {}",
            leases
                .iter()
                .map(|(id, slug)| format!("{id} ({slug})"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Hint::StaleClaim { path } => {
            format!("if the claim is stale, remove {}", path.display())
        }
        Hint::DetachedRun { provider, run_id } => format!(
            "follow it with `crabbox logs --provider {provider} {run_id} --follow`, wait for it \
             with `crabbox wait --provider {provider} {run_id}`, stop it with `crabbox kill \
             --provider {provider} {run_id}`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crabbox_core::command::RemoteCommand;

    #[test]
    fn rerun_quotes_words_unless_shell() {
        let h = Hint::Rerun {
            provider: "e2b".into(),
            lease_id: "cbx_0123456789ab".into(),
            command: RemoteCommand::new(
                vec!["/bin/sh".into(), "-c".into(), "exit 3".into()],
                false,
            ),
        };
        assert_eq!(
            hint(&h),
            "rerun: crabbox run --provider e2b --id cbx_0123456789ab -- '/bin/sh' '-c' 'exit 3'"
        );
        let h = Hint::Rerun {
            provider: "local".into(),
            lease_id: "cbx_0123456789ab".into(),
            command: RemoteCommand::new(vec!["make".into(), "&&".into(), "ls".into()], true),
        };
        assert_eq!(
            hint(&h),
            "rerun: crabbox run --provider local --id cbx_0123456789ab --shell -- make && ls"
        );
    }
}
