//! [`RecordingReporter`]: keeps what the engine reported, for tests to assert on.

use std::sync::Mutex;

use crate::events::Reporter;
use crate::hint::Hint;

/// Records status lines and hints in the order they were reported.
#[derive(Debug, Default)]
pub struct RecordingReporter {
    statuses: Mutex<Vec<String>>,
    hints: Mutex<Vec<Hint>>,
}

impl RecordingReporter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn statuses(&self) -> Vec<String> {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn hints(&self) -> Vec<Hint> {
        self.hints.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Reporter for RecordingReporter {
    fn status(&self, message: &str) {
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message.to_string());
    }

    fn hint(&self, hint: &Hint) {
        self.hints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hint.clone());
    }
}
