//! The command line a box runs: argv words quoted for `bash -c`, or joined raw with `--shell`.

use serde::Serialize;

/// The user's command, as typed after `--`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteCommand {
    pub argv: Vec<String>,
    /// `--shell`: the words are shell source, joined with spaces, so `&&` and pipes work.
    pub shell: bool,
}

impl RemoteCommand {
    pub fn new(argv: Vec<String>, shell: bool) -> Self {
        Self { argv, shell }
    }

    /// The script handed to `bash -l -c`.
    pub fn script(&self) -> String {
        if self.shell {
            self.argv.join(" ")
        } else {
            self.argv
                .iter()
                .map(|w| shell_quote(w))
                .collect::<Vec<_>>()
                .join(" ")
        }
    }
}

/// Single-quotes one word for POSIX shells: `it's` becomes `'it'\''s'`.
pub fn shell_quote(word: &str) -> String {
    let mut out = String::with_capacity(word.len() + 2);
    out.push('\'');
    for c in word.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_word_is_single_quoted() {
        let c = RemoteCommand::new(vec!["echo".into(), "a b".into(), "$HOME".into()], false);
        assert_eq!(c.script(), "'echo' 'a b' '$HOME'");
    }

    #[test]
    fn embedded_single_quote_is_escaped() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn shell_mode_joins_words_raw() {
        let c = RemoteCommand::new(
            vec!["make".into(), "&&".into(), "make test | tee log".into()],
            true,
        );
        assert_eq!(c.script(), "make && make test | tee log");
    }

    #[test]
    fn quoted_script_round_trips_through_bash() {
        let words = vec![
            "printf".to_string(),
            "%s|".into(),
            "a b".into(),
            "it's".into(),
            "$(x)".into(),
            "`y`".into(),
            "\\n".into(),
        ];
        let script = RemoteCommand::new(words, false).script();
        let out = std::process::Command::new("/bin/bash")
            .arg("-c")
            .arg(&script)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "a b|it's|$(x)|`y`|\\n|"
        );
    }
}
