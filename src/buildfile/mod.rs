//! The Buildfile language (v1): text in, a typed, substituted, validated
//! [`BuildFile`] out, or [`Diagnostics`] that point at `file:line:col`
//! before any container starts. `plan` turns the result into keyed steps
//! (keys are made from the canonical `Display` text); `build` runs them.
//!
//! The work is split by idea: `lexer` makes logical lines (comments,
//! continuations, heredocs), `words` splits words and expands `${ARG}`,
//! `parser` enforces the file's shape (ARGs, one FROM, the rest) and
//! `instructions` each instruction's words, `validate` knows the small
//! syntaxes inside them, and `context` checks COPY sources on disk. The
//! language itself is documented for users in `docs/buildfile.md`.

mod ast;
mod context;
mod diagnostics;
mod instructions;
mod lexer;
mod parser;
mod validate;
mod words;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

pub use ast::{BuildFile, FromImage, Instruction, InstructionKind, Keep, Span};
pub use diagnostics::{Diagnostic, Diagnostics};

/// Parse Buildfile text. Touches no file: COPY sources are checked only as
/// text (relative, not leaving the context); [`parse_file`] also checks
/// them on disk. `build_args` override ARG defaults.
pub fn parse_str(
    path: &Path,
    src: &str,
    build_args: &BTreeMap<String, String>,
) -> Result<BuildFile, Diagnostics> {
    let parsed = parser::parse(path, src, build_args);
    match parsed.file {
        Some(f) => Ok(f),
        None => Err(Diagnostics(parsed.diagnostics)),
    }
}

/// Read and parse a Buildfile, then check that every COPY source exists
/// and stays inside the Buildfile's folder, symlinks resolved.
pub fn parse_file(
    path: &Path,
    build_args: &BTreeMap<String, String>,
) -> Result<BuildFile, Diagnostics> {
    let bytes = match fs_err::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Diagnostics(vec![Diagnostic::file(
                path,
                format!("Buildfile `{}` does not exist", path.display()),
            )
            .with_hint(
                "check the path; `-f FILE` names a Buildfile and `tplbuild build DIR` takes DIR/Buildfile",
            )]));
        }
        Err(e) => {
            return Err(Diagnostics(vec![Diagnostic::file(
                path,
                format!("cannot read the Buildfile: {e}"),
            )]))
        }
    };
    if bytes.len() > parser::MAX_SOURCE_BYTES {
        return Err(Diagnostics(vec![parser::too_large(path)]));
    }
    let src = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            return Err(Diagnostics(vec![not_utf8(
                path,
                e.as_bytes(),
                e.utf8_error(),
            )]))
        }
    };
    let parsed = parser::parse(path, &src, build_args);
    let lines = lexer::split_lines(&src);
    let mut rep = diagnostics::Reporter::new(path, &lines);
    rep.list = parsed.diagnostics;
    context::check_sources(&parser::context_of(path), &parsed.copy_sources, &mut rep);
    let diagnostics = rep.finish();
    match parsed.file {
        Some(f) if diagnostics.is_empty() => Ok(f),
        _ => Err(Diagnostics(diagnostics)),
    }
}

/// Point at the first byte that is not UTF-8.
fn not_utf8(path: &Path, bytes: &[u8], e: std::str::Utf8Error) -> Diagnostic {
    let good = &bytes[..e.valid_up_to()];
    let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let line_end = bytes[line_start..]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |i| line_start + i);
    let before = std::str::from_utf8(&good[line_start..]).unwrap_or("");
    Diagnostic {
        path: path.to_path_buf(),
        line: u32::try_from(good.iter().filter(|b| **b == b'\n').count() + 1).unwrap_or(u32::MAX),
        col: u32::try_from(before.chars().count() + 1).unwrap_or(u32::MAX),
        len: 1,
        message: "the Buildfile is not UTF-8 text".into(),
        hint: None,
        source_line: String::from_utf8_lossy(&bytes[line_start..line_end]).into_owned(),
    }
}
