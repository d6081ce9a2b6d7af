//! The typed Buildfile: what the parser produces and what `plan` and `build`
//! consume. Every value here is already substituted and validated, and its
//! `Display` is the canonical text (the parser reads it back unchanged), so
//! cache keys can be computed from those bytes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// A 1-based position in the Buildfile, counted in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Span {
    pub line: u32,
    pub col: u32,
}

/// A parsed, substituted and validated Buildfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFile {
    /// The Buildfile's path, as given.
    pub path: PathBuf,
    /// The Buildfile's folder: COPY sources are relative to it.
    pub context: PathBuf,
    pub from: FromImage,
    /// Everything after FROM, in order (ARGs are resolved away).
    pub instructions: Vec<Instruction>,
    /// The resolved value of every ARG that has one.
    pub args: BTreeMap<String, String>,
}

/// The template the build starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromImage {
    /// After substitution; `crate::oci::Target::parse` accepts it.
    pub reference: String,
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// Where the instruction's name starts.
    pub span: Span,
    pub kind: InstructionKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstructionKind {
    Env(Vec<(String, String)>),
    /// Each package is `name` or `name=version`.
    Install {
        packages: Vec<String>,
        recommends: bool,
    },
    Remove {
        packages: Vec<String>,
    },
    /// `dest` is absolute (a relative DEST is taken relative to `/`).
    Copy {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
        chmod: Option<u32>,
    },
    /// `script` is what the shell gets, verbatim. For a `RUN <<EOF`
    /// heredoc it is the body, one `\n`-terminated line per body line.
    Run {
        script: String,
        heredoc: bool,
    },
    Label(Vec<(String, String)>),
    Keep(Vec<Keep>),
}

/// Per-device secrets that the hygiene step removes unless kept
/// (DESIGN.md invariant 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Keep {
    SshHostKeys,
    MachineId,
    RandomSeed,
}

impl Keep {
    pub const ALL: [Keep; 3] = [Keep::SshHostKeys, Keep::MachineId, Keep::RandomSeed];

    /// The spelling used in Buildfiles.
    pub fn as_str(self) -> &'static str {
        match self {
            Keep::SshHostKeys => "ssh-host-keys",
            Keep::MachineId => "machine-id",
            Keep::RandomSeed => "random-seed",
        }
    }

    pub fn from_name(s: &str) -> Option<Keep> {
        Keep::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Keep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl InstructionKind {
    /// The canonical (upper-case) instruction name.
    pub fn name(&self) -> &'static str {
        match self {
            InstructionKind::Env(_) => "ENV",
            InstructionKind::Install { .. } => "INSTALL",
            InstructionKind::Remove { .. } => "REMOVE",
            InstructionKind::Copy { .. } => "COPY",
            InstructionKind::Run { .. } => "RUN",
            InstructionKind::Label(_) => "LABEL",
            InstructionKind::Keep(_) => "KEEP",
        }
    }
}

impl BuildFile {
    /// The same Buildfile with every span zeroed: what a canonical reprint
    /// preserves (positions naturally move when the text is reprinted).
    #[cfg(test)]
    pub fn with_spans_cleared(&self) -> BuildFile {
        let mut out = self.clone();
        out.from.span = Span::default();
        for i in &mut out.instructions {
            i.span = Span::default();
        }
        out
    }
}

/// Quote a word so that the parser reads back exactly `s`: no substitution,
/// no comment, no word splitting, never mistaken for a `--flag`.
pub(crate) fn quote(s: &str) -> std::borrow::Cow<'_, str> {
    let plain = !s.is_empty()
        && !s.starts_with('-')
        && !s
            .chars()
            .any(|c| matches!(c, ' ' | '\t' | '"' | '\'' | '\\' | '$' | '#'));
    if plain {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out.into()
}

fn write_pairs(f: &mut fmt::Formatter<'_>, pairs: &[(String, String)]) -> fmt::Result {
    for (k, v) in pairs {
        write!(f, " {k}={}", quote(v))?;
    }
    Ok(())
}

/// A heredoc delimiter that is not a line of `script`.
fn delimiter_for(script: &str) -> String {
    let mut delim = "EOF".to_string();
    let mut n = 0;
    while script.lines().any(|l| l == delim) {
        n += 1;
        delim = format!("EOF{n}");
    }
    delim
}

impl fmt::Display for Instruction {
    /// The canonical text: one line, except a heredoc RUN, which is the
    /// `RUN <<EOF` line, its body and the delimiter line (no final newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        match &self.kind {
            InstructionKind::Env(pairs) | InstructionKind::Label(pairs) => write_pairs(f, pairs),
            InstructionKind::Install {
                packages,
                recommends,
            } => {
                if *recommends {
                    f.write_str(" --recommends")?;
                }
                packages.iter().try_for_each(|p| write!(f, " {p}"))
            }
            InstructionKind::Remove { packages } => {
                packages.iter().try_for_each(|p| write!(f, " {p}"))
            }
            InstructionKind::Copy {
                sources,
                dest,
                chown,
                chmod,
            } => {
                if let Some(c) = chown {
                    write!(f, " --chown={}", quote(c))?;
                }
                if let Some(m) = chmod {
                    write!(f, " --chmod={m:04o}")?;
                }
                for s in sources {
                    write!(f, " {}", quote(s))?;
                }
                write!(f, " {}", quote(dest))
            }
            InstructionKind::Run {
                script,
                heredoc: false,
            } => write!(f, " {script}"),
            InstructionKind::Run {
                script,
                heredoc: true,
            } => {
                let delim = delimiter_for(script);
                write!(f, " <<{delim}\n{script}")?;
                if !script.is_empty() && !script.ends_with('\n') {
                    f.write_str("\n")?;
                }
                f.write_str(&delim)
            }
            InstructionKind::Keep(items) => items.iter().try_for_each(|k| write!(f, " {k}")),
        }
    }
}

impl fmt::Display for BuildFile {
    /// A canonical Buildfile: ARGs (resolved values), FROM, instructions.
    /// `parse_str` reads it back to an equal BuildFile (spans aside).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.args {
            writeln!(f, "ARG {k}={}", quote(v))?;
        }
        writeln!(f, "FROM {}", quote(&self.from.reference))?;
        for i in &self.instructions {
            writeln!(f, "{i}")?;
        }
        Ok(())
    }
}
