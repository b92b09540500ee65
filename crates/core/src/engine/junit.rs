//! JUnit XML reports (`--junit`): the counts and the failing cases of every report fetched,
//! read with `quick-xml` (the de-facto format: `<testsuites>` / `<testsuite>` of `<testcase>`
//! elements holding `<failure>`, `<error>` or `<skipped>`).

use std::path::{Path, PathBuf};

use quick_xml::events::{BytesStart, Event};
use serde::Serialize;

/// Lines of a failure's message kept in the summary.
const MESSAGE_LINES: usize = 3;
/// Failing cases listed (the rest are counted).
pub const FAILURES_LISTED: usize = 50;

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JunitSummary {
    pub reports: usize,
    pub tests: u64,
    pub passed: u64,
    pub failed: u64,
    pub errors: u64,
    pub skipped: u64,
    /// Sum of the cases' `time`, seconds.
    pub time_secs: f64,
    pub failures: Vec<FailedCase>,
    /// Reports that could not be read, with why.
    pub unreadable: Vec<String>,
}

#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailedCase {
    pub suite: String,
    pub name: String,
    pub classname: String,
    /// `failure` or `error`.
    pub kind: String,
    /// The first lines of its message (or of its text when it has no message).
    pub message: String,
    pub report: PathBuf,
}

impl JunitSummary {
    /// Reads every report in `files`.
    pub fn read(files: &[PathBuf]) -> Self {
        let mut s = JunitSummary::default();
        for f in files {
            let mut part = JunitSummary::default();
            match std::fs::read(f) {
                Ok(bytes) => match part.add(&bytes, f) {
                    Ok(()) => {
                        s.reports += 1;
                        s.tests += part.tests;
                        s.failed += part.failed;
                        s.errors += part.errors;
                        s.skipped += part.skipped;
                        s.time_secs += part.time_secs;
                        let room = FAILURES_LISTED.saturating_sub(s.failures.len());
                        s.failures.extend(part.failures.into_iter().take(room));
                    }
                    Err(e) => s.unreadable.push(format!("{}: {e}", f.display())),
                },
                Err(e) => s.unreadable.push(format!("{}: {e}", f.display())),
            }
        }
        s.passed = s.tests - s.failed - s.errors - s.skipped;
        s
    }

    fn add(&mut self, xml: &[u8], report: &Path) -> Result<(), String> {
        let mut reader = quick_xml::Reader::from_reader(xml);
        reader.config_mut().trim_text(true);
        let mut buf = Vec::new();
        let mut suite = String::new();
        // The case being read, and what it turned out to be.
        let mut case: Option<(String, String, String)> = None;
        let mut outcome: Option<(String, String)> = None;
        let mut in_outcome = false;
        let mut skipped = false;
        loop {
            let event = reader
                .read_event_into(&mut buf)
                .map_err(|e| format!("not valid XML at byte {}: {e}", reader.error_position()))?;
            match event {
                Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"testsuite" => {
                    suite = attr(&e, b"name");
                }
                Event::Start(ref e) | Event::Empty(ref e) if e.name().as_ref() == b"testcase" => {
                    self.tests += 1;
                    self.time_secs += attr(e, b"time").parse::<f64>().unwrap_or(0.0);
                    let started = (attr(e, b"name"), attr(e, b"classname"), suite.clone());
                    if matches!(event, Event::Empty(_)) {
                        continue;
                    }
                    case = Some(started);
                    outcome = None;
                    skipped = false;
                }
                Event::Start(ref e) | Event::Empty(ref e)
                    if case.is_some() && matches!(e.name().as_ref(), b"failure" | b"error") =>
                {
                    let kind = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                    outcome = Some((kind, attr(e, b"message")));
                    in_outcome = matches!(event, Event::Start(_));
                }
                Event::Start(ref e) | Event::Empty(ref e)
                    if case.is_some() && e.name().as_ref() == b"skipped" =>
                {
                    skipped = true;
                }
                Event::Text(t) if in_outcome => {
                    if let Some((_, message)) = &mut outcome {
                        if message.is_empty() {
                            *message = String::from_utf8_lossy(&t).into_owned();
                        }
                    }
                }
                Event::CData(t) if in_outcome => {
                    if let Some((_, message)) = &mut outcome {
                        if message.is_empty() {
                            *message = String::from_utf8_lossy(&t).into_owned();
                        }
                    }
                }
                Event::End(e) if matches!(e.name().as_ref(), b"failure" | b"error") => {
                    in_outcome = false;
                }
                Event::End(e) if e.name().as_ref() == b"testcase" => {
                    if let Some((name, classname, suite)) = case.take() {
                        match outcome.take() {
                            Some((kind, message)) => {
                                if kind == "error" {
                                    self.errors += 1;
                                } else {
                                    self.failed += 1;
                                }
                                if self.failures.len() < FAILURES_LISTED {
                                    self.failures.push(FailedCase {
                                        suite,
                                        name,
                                        classname,
                                        kind,
                                        message: first_lines(&message),
                                        report: report.to_path_buf(),
                                    });
                                }
                            }
                            None if skipped => self.skipped += 1,
                            None => {}
                        }
                    }
                }
                Event::Eof => break,
                _ => {}
            }
            buf.clear();
        }
        Ok(())
    }

    /// A one-screen summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "junit: {} tests in {} report{}: {} passed, {} failed, {} errors, {} skipped ({:.1}s)",
            self.tests,
            self.reports,
            if self.reports == 1 { "" } else { "s" },
            self.passed,
            self.failed,
            self.errors,
            self.skipped,
            self.time_secs
        );
        for f in &self.failures {
            let who = if f.classname.is_empty() {
                f.name.clone()
            } else {
                format!("{}.{}", f.classname, f.name)
            };
            s.push_str(&format!("\n  {} {who}", f.kind.to_uppercase()));
            for line in f.message.lines() {
                s.push_str(&format!("\n      {line}"));
            }
        }
        let listed = self.failures.len() as u64;
        if self.failed + self.errors > listed {
            s.push_str(&format!(
                "\n  ... and {} more",
                self.failed + self.errors - listed
            ));
        }
        for u in &self.unreadable {
            s.push_str(&format!("\n  unreadable report {u}"));
        }
        s
    }
}

fn attr(e: &BytesStart<'_>, key: &[u8]) -> String {
    e.attributes()
        .flatten()
        .find(|a| a.key.as_ref() == key)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
        .unwrap_or_default()
}

fn first_lines(m: &str) -> String {
    m.trim()
        .lines()
        .take(MESSAGE_LINES)
        .map(|l| l.chars().take(200).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"<?xml version="1.0"?>
<testsuites>
  <testsuite name="math" tests="4">
    <testcase classname="math.Add" name="adds" time="0.5"/>
    <testcase classname="math.Add" name="overflows" time="0.25">
      <failure message="expected 2 got 3&#10;at line 9&#10;more&#10;hidden">trace</failure>
    </testcase>
    <testcase classname="math.Div" name="by zero"><error><![CDATA[panic: divide by zero]]></error></testcase>
    <testcase classname="math.Div" name="later"><skipped/></testcase>
  </testsuite>
</testsuites>"#;

    #[test]
    fn counts_and_failing_cases_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.xml");
        std::fs::write(&a, REPORT).unwrap();
        let bad = dir.path().join("bad.xml");
        std::fs::write(&bad, "<testsuite><testcase").unwrap();
        let s = JunitSummary::read(&[a.clone(), bad]);
        assert_eq!(
            (s.reports, s.tests, s.passed, s.failed, s.errors, s.skipped),
            (1, 4, 1, 1, 1, 1)
        );
        assert!((s.time_secs - 0.75).abs() < 1e-9);
        assert_eq!(s.failures.len(), 2);
        assert_eq!(s.failures[0].name, "overflows");
        assert_eq!(s.failures[0].suite, "math");
        assert_eq!(
            s.failures[0].message, "expected 2 got 3\nat line 9\nmore",
            "the first lines only"
        );
        assert_eq!(s.failures[1].kind, "error");
        assert_eq!(s.failures[1].message, "panic: divide by zero");
        assert_eq!(s.unreadable.len(), 1, "{:?}", s.unreadable);
        let text = s.render();
        assert!(text.contains("FAILURE math.Add.overflows"), "{text}");
        assert!(
            text.contains("1 passed, 1 failed, 1 errors, 1 skipped"),
            "{text}"
        );
    }
}
