//! Parse errors that point at the Buildfile like rustc does: message,
//! `file:line:col`, the source line with carets, and a hint. The parser
//! collects all of them (it recovers at the next line), and the CLI prints
//! [`Diagnostics`] as they are.

use std::fmt;
use std::path::{Path, PathBuf};

use super::ast::Span;

/// Past this many errors the rest would be noise (and a fuzzer's input
/// could make millions): stop collecting.
const MAX_DIAGNOSTICS: usize = 50;

/// One error in a Buildfile. `line` 0 means the file as a whole (it does
/// not exist, it has no FROM…), and then `source_line` is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub path: PathBuf,
    /// 1-based; 0 for the whole file.
    pub line: u32,
    /// 1-based, in characters.
    pub col: u32,
    /// How many characters the carets underline (at least 1).
    pub len: u32,
    pub message: String,
    pub hint: Option<String>,
    /// The physical line `line` points into, without its newline.
    pub source_line: String,
}

/// Every error found in one Buildfile, in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostic {
    /// An error about the whole file (no position).
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            path: path.into(),
            line: 0,
            col: 0,
            len: 0,
            message: message.into(),
            hint: None,
            source_line: String::new(),
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    pub fn span(&self) -> Span {
        Span {
            line: self.line,
            col: self.col,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        // rustc pads the gutter to the line number's width; this adds one
        // space on the left as in the design's sample output.
        let width = self.line.to_string().len() + 1;
        let pad = " ".repeat(width);
        if self.line == 0 {
            write!(f, "{pad}--> {}", self.path.display())?;
        } else {
            writeln!(
                f,
                "{pad}--> {}:{}:{}",
                self.path.display(),
                self.line,
                self.col
            )?;
            writeln!(f, "{pad} |")?;
            // Tabs are shown as 4 spaces so the carets stay under the text.
            let shown: String = self
                .source_line
                .chars()
                .map(|c| {
                    if c == '\t' {
                        "    ".to_string()
                    } else {
                        c.to_string()
                    }
                })
                .collect();
            writeln!(f, "{:>width$} | {}", self.line, shown.trim_end())?;
            let before: usize = self
                .source_line
                .chars()
                .take(self.col.saturating_sub(1) as usize)
                .map(|c| if c == '\t' { 4 } else { 1 })
                .sum();
            let carets = "^".repeat(self.len.max(1) as usize);
            write!(f, "{pad} | {}{carets}", " ".repeat(before))?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n{pad} = hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            d.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Collects diagnostics for one Buildfile, filling in path and source line.
pub(crate) struct Reporter<'a> {
    path: &'a Path,
    lines: &'a [&'a str],
    pub list: Vec<Diagnostic>,
    /// Errors reported, including those dropped past the cap.
    count: usize,
}

impl<'a> Reporter<'a> {
    pub fn new(path: &'a Path, lines: &'a [&'a str]) -> Self {
        Reporter {
            path,
            lines,
            list: Vec::new(),
            count: 0,
        }
    }

    /// Report an error underlining `len` characters from `at`.
    pub fn error(&mut self, at: Span, len: usize, message: String, hint: Option<String>) {
        self.count += 1;
        if self.list.len() >= MAX_DIAGNOSTICS {
            return;
        }
        let source_line = match at.line {
            0 => String::new(),
            n => self
                .lines
                .get(n as usize - 1)
                .copied()
                .unwrap_or("")
                .to_string(),
        };
        self.list.push(Diagnostic {
            path: self.path.to_path_buf(),
            line: at.line,
            col: at.col,
            len: u32::try_from(len.max(1)).unwrap_or(u32::MAX),
            message,
            hint,
            source_line,
        });
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn is_full(&self) -> bool {
        self.list.len() >= MAX_DIAGNOSTICS
    }

    /// The diagnostics in source order (whole-file ones first).
    pub fn finish(mut self) -> Vec<Diagnostic> {
        self.list.sort_by_key(|d| (d.line, d.col));
        self.list
    }
}

/// Levenshtein distance, for "did you mean" hints on short words.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a typo.
/// Long words are never typos of short names, and skipping them keeps this
/// cheap on hostile input.
pub(crate) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if word.chars().count() > 40 {
        return None;
    }
    candidates
        .iter()
        .filter(|c| c.len() <= 40)
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_rustc_with_carets_under_the_token() {
        let d = Diagnostic {
            path: "buildfiles/gateway/Buildfile".into(),
            line: 4,
            col: 1,
            len: 6,
            message: "unknown instruction `INSTAL`".into(),
            hint: Some("did you mean `INSTALL`?".into()),
            source_line: "INSTAL openssh-server curl".into(),
        };
        let want = "error: unknown instruction `INSTAL`
  --> buildfiles/gateway/Buildfile:4:1
   |
 4 | INSTAL openssh-server curl
   | ^^^^^^
   = hint: did you mean `INSTALL`?";
        assert_eq!(d.to_string(), want);
    }

    #[test]
    fn carets_follow_tabs_and_wide_line_numbers() {
        let d = Diagnostic {
            path: "B".into(),
            line: 120,
            col: 3,
            len: 2,
            message: "m".into(),
            hint: None,
            source_line: "\tx yy".into(),
        };
        assert_eq!(
            d.to_string(),
            "error: m\n    --> B:120:3\n     |\n 120 |     x yy\n     |      ^^"
        );
    }

    #[test]
    fn whole_file_errors_have_no_snippet() {
        let d = Diagnostic::file("Buildfile", "Buildfile has no FROM").with_hint("add one");
        assert_eq!(
            d.to_string(),
            "error: Buildfile has no FROM\n  --> Buildfile\n   = hint: add one"
        );
    }

    #[test]
    fn nearest_suggests_only_plausible_typos() {
        let names = ["INSTALL", "COPY", "RUN"];
        assert_eq!(nearest("INSTAL", &names), Some("INSTALL"));
        assert_eq!(nearest("CPY", &names), Some("COPY"));
        assert_eq!(nearest("FROBNICATE", &names), None);
    }
}
