//! The one error a user sees at the end: a message, maybe a hint, and the
//! exit code it maps to. Commands (`cli`) and the build job (`build::job`)
//! both attach it as context to an `anyhow` chain; `cli::report` prints the
//! chain and picks the code. It lives below both so neither imports the
//! other for it.

/// Exit codes, like BuildKit's and uv's: 1 for a failed operation, 2 for
/// bad input (usage, Buildfile), 128+signal for interrupts.
pub mod exit {
    pub const FAILURE: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const SIGINT: u8 = 130;
    pub const SIGTERM: u8 = 143;
}

/// An error with an exit code and an optional hint for the user.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub hint: Option<String>,
    pub code: u8,
    /// The message is already a full report (Buildfile diagnostics) and is
    /// printed as it is.
    pub preformatted: bool,
}

impl Failure {
    pub fn bad_input(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: None,
            code: exit::BAD_INPUT,
            preformatted: false,
        }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: None,
            code: exit::FAILURE,
            preformatted: false,
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}
