//! Logical lines to a [`BuildFile`]: dispatches on the instruction name,
//! resolves ARGs, enforces "ARGs, then exactly one FROM, then the rest",
//! and reports every problem it finds (an instruction with an error is
//! dropped and parsing goes on at the next line).

use std::collections::BTreeMap;
use std::path::Path;

use super::ast::{BuildFile, FromImage, Instruction, InstructionKind, Span};
use super::diagnostics::{nearest, Diagnostic, Reporter};
use super::instructions;
use super::lexer::{logical_lines, split_lines, Logical};
use super::validate;
use super::words::{Env, Scanner};

/// Buildfiles are short; anything larger is a mistake (or a fuzzer), and
/// the cap bounds the parser's work.
pub(crate) const MAX_SOURCE_BYTES: usize = 1 << 20;
/// What `${…}` may produce in one Buildfile, all substitutions together.
const MAX_EXPANSION_BYTES: usize = 4 << 20;

const INSTRUCTIONS: [&str; 9] = [
    "ARG", "FROM", "ENV", "INSTALL", "REMOVE", "COPY", "RUN", "LABEL", "KEEP",
];

/// A COPY source to check on disk once parsing is done.
#[derive(Debug, Clone)]
pub(crate) struct CopySource {
    pub text: String,
    pub span: Span,
    pub len: usize,
}

pub(crate) struct Parsed {
    pub file: Option<BuildFile>,
    pub copy_sources: Vec<CopySource>,
    pub diagnostics: Vec<Diagnostic>,
}

pub(crate) fn parse(path: &Path, src: &str, build_args: &BTreeMap<String, String>) -> Parsed {
    if src.len() > MAX_SOURCE_BYTES {
        return Parsed {
            file: None,
            copy_sources: Vec::new(),
            diagnostics: vec![too_large(path)],
        };
    }
    let lines = split_lines(src);
    let mut rep = Reporter::new(path, &lines);
    for (k, v) in build_args {
        if !validate::is_arg_name(k) {
            rep.error(
                Span::default(),
                0,
                format!("--build-arg `{k}` is not a valid ARG name"),
                None,
            );
        } else if v.chars().any(char::is_control) {
            rep.error(
                Span::default(),
                0,
                format!("--build-arg {k}: the value contains a control character"),
                None,
            );
        }
    }
    let logicals = logical_lines(&lines, &mut rep);
    let mut p = Parser {
        build_args,
        env: Env {
            declared: BTreeMap::new(),
            budget: MAX_EXPANSION_BYTES,
            exhausted: false,
        },
        args: BTreeMap::new(),
        from: None,
        has_from: logicals
            .iter()
            .any(|l| keyword(l).2.eq_ignore_ascii_case("FROM")),
        instructions: Vec::new(),
        copy_sources: Vec::new(),
    };
    if !p.has_from {
        rep.list.push(
            Diagnostic::file(path, "Buildfile has no FROM instruction").with_hint(
                "start with `FROM REGISTRY/REPOSITORY:TAG` (only ARGs may come before it)",
            ),
        );
    }
    for l in &logicals {
        if rep.is_full() {
            break;
        }
        p.instruction(l, &mut rep);
    }
    let diagnostics = rep.finish();
    let file = match (diagnostics.is_empty(), p.from) {
        (true, Some(from)) => Some(BuildFile {
            path: path.to_path_buf(),
            context: context_of(path),
            from,
            instructions: p.instructions,
            args: p.args,
        }),
        _ => None,
    };
    Parsed {
        file,
        copy_sources: p.copy_sources,
        diagnostics,
    }
}

pub(crate) fn too_large(path: &Path) -> Diagnostic {
    Diagnostic::file(
        path,
        format!(
            "the Buildfile is larger than {} KiB",
            MAX_SOURCE_BYTES >> 10
        ),
    )
}

/// The Buildfile's folder (`.` for a bare file name).
pub(crate) fn context_of(path: &Path) -> std::path::PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => ".".into(),
    }
}

/// (start, end, text) of the instruction name.
fn keyword(l: &Logical) -> (usize, usize, String) {
    let start = l
        .chars
        .iter()
        .take_while(|c| matches!(c, ' ' | '\t'))
        .count();
    let len = l.chars[start..]
        .iter()
        .take_while(|c| !matches!(c, ' ' | '\t'))
        .count();
    (
        start,
        start + len,
        l.chars[start..start + len].iter().collect(),
    )
}

struct Parser<'a> {
    build_args: &'a BTreeMap<String, String>,
    env: Env,
    args: BTreeMap<String, String>,
    from: Option<FromImage>,
    has_from: bool,
    instructions: Vec<Instruction>,
    copy_sources: Vec<CopySource>,
}

impl Parser<'_> {
    fn instruction(&mut self, l: &Logical, rep: &mut Reporter) {
        let (start, end, name) = keyword(l);
        let span = l.spans[start];
        let upper = name.to_ascii_uppercase();
        let name_len = end - start;
        if !INSTRUCTIONS.contains(&upper.as_str()) {
            unknown_instruction(&name, span, name_len, rep);
            return;
        }
        if upper == "ARG" {
            return self.arg(l, end, span, rep);
        }
        if upper == "FROM" {
            return self.from(l, end, span, name_len, rep);
        }
        if self.from.is_none() && self.has_from {
            rep.error(
                span,
                name_len,
                format!("`{upper}` comes before FROM"),
                Some("only ARG instructions may come before FROM".into()),
            );
        }
        let kind = if upper == "RUN" {
            self.run(l, end, span, rep)
        } else {
            let words = Scanner::new(&l.chars, &l.spans, end).rest(&mut self.env, rep);
            if words.iter().any(|w| w.broken) {
                return;
            }
            let errors_before = rep.count();
            let kind = match upper.as_str() {
                "ENV" => instructions::pairs(&words, "ENV", span, rep).map(InstructionKind::Env),
                "LABEL" => {
                    instructions::pairs(&words, "LABEL", span, rep).map(InstructionKind::Label)
                }
                "INSTALL" => instructions::install(&words, span, rep),
                "REMOVE" => instructions::remove(&words, span, rep),
                "COPY" => instructions::copy(&mut self.copy_sources, &words, span, rep),
                "KEEP" => instructions::keep(&words, span, rep),
                _ => unreachable!("every name in INSTRUCTIONS is handled"),
            };
            kind.filter(|_| rep.count() == errors_before)
        };
        if let Some(kind) = kind {
            if self.from.is_some() {
                self.instructions.push(Instruction { span, kind });
            }
        }
    }

    fn arg(&mut self, l: &Logical, end: usize, span: Span, rep: &mut Reporter) {
        let mut scanner = Scanner::new(&l.chars, &l.spans, end);
        let mut any = false;
        while let Some(w) = scanner.next_word(&mut self.env, rep) {
            any = true;
            if w.flag {
                instructions::bad_flag(&w, "ARG", &[], rep);
                continue;
            }
            let (name, default) = match w.split_eq() {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (w.text.clone(), None),
            };
            if !validate::is_arg_name(&name) {
                rep.error(
                    w.span,
                    w.len,
                    format!("bad ARG name `{name}`"),
                    Some("ARG names are letters, digits and _, not starting with a digit".into()),
                );
                continue;
            }
            // A redeclaration without a value keeps the value it had.
            let value = self
                .build_args
                .get(&name)
                .cloned()
                .or(default)
                .or_else(|| self.args.get(&name).cloned());
            if let Some(v) = &value {
                self.args.insert(name.clone(), v.clone());
            }
            self.env.declared.insert(name, value);
        }
        if !any {
            rep.error(
                span,
                3,
                "ARG needs a name".into(),
                Some("write `ARG NAME` or `ARG NAME=DEFAULT`".into()),
            );
        }
    }

    fn from(&mut self, l: &Logical, end: usize, span: Span, name_len: usize, rep: &mut Reporter) {
        if let Some(first) = &self.from {
            rep.error(
                span,
                name_len,
                format!(
                    "second FROM: a Buildfile has exactly one (the first is on line {})",
                    first.span.line
                ),
                Some(
                    "multi-stage builds are not supported; make the first image a template".into(),
                ),
            );
            return;
        }
        let words = Scanner::new(&l.chars, &l.spans, end).rest(&mut self.env, rep);
        // Later instructions count as after FROM even if this one is bad.
        let placeholder = FromImage {
            reference: String::new(),
            span,
        };
        let Some((_, operands)) = instructions::flags(&words, "FROM", &[], rep) else {
            self.from = Some(placeholder);
            return;
        };
        let reference = match operands {
            [] => {
                rep.error(
                    span,
                    name_len,
                    "FROM needs an image reference".into(),
                    Some("write `FROM REGISTRY/REPOSITORY:TAG` or `FROM oci:DIR:TAG`".into()),
                );
                String::new()
            }
            [w, rest @ ..] => {
                if let Some(extra) = rest.first() {
                    let hint = extra.text.eq_ignore_ascii_case("AS").then(|| {
                        "multi-stage builds (`FROM … AS name`) are not supported".to_string()
                    });
                    rep.error(
                        extra.span,
                        extra.len,
                        "FROM takes one image reference".into(),
                        hint,
                    );
                }
                if w.broken {
                    // The reference is incomplete; its error is reported.
                } else if let Err(e) = crate::oci::Target::parse(&w.text) {
                    rep.error(w.span, w.len, format!("bad image reference: {e}"), None);
                }
                w.text.clone()
            }
        };
        self.from = Some(FromImage {
            reference,
            ..placeholder
        });
    }

    fn run(
        &mut self,
        l: &Logical,
        end: usize,
        span: Span,
        rep: &mut Reporter,
    ) -> Option<InstructionKind> {
        let body: String = l.chars[end..].iter().collect();
        let script = body.trim_matches([' ', '\t']);
        if script.is_empty() {
            rep.error(
                span,
                3,
                "empty RUN".into(),
                Some("give a shell command, or a script as a heredoc: `RUN <<EOF`".into()),
            );
            return None;
        }
        if script.starts_with("--") {
            let first = l.chars[end..]
                .iter()
                .position(|c| !matches!(c, ' ' | '\t'))
                .unwrap_or(0);
            let flag_len = script
                .chars()
                .take_while(|c| !matches!(c, ' ' | '\t'))
                .count();
            rep.error(
                l.spans[end + first],
                flag_len,
                format!(
                    "unknown flag `{}` for RUN",
                    script.split([' ', '\t']).next().unwrap_or("")
                ),
                Some("RUN takes no flags; the rest of the line goes to the shell as it is".into()),
            );
            return None;
        }
        if let Some((script, heredoc)) = &l.heredoc {
            if script.chars().all(char::is_whitespace) {
                rep.error(span, 3, "empty RUN heredoc".into(), None);
                return None;
            }
            return Some(InstructionKind::Run {
                script: script.clone(),
                heredoc: *heredoc,
            });
        }
        Some(InstructionKind::Run {
            script: script.to_string(),
            heredoc: false,
        })
    }
}

fn unknown_instruction(name: &str, span: Span, len: usize, rep: &mut Reporter) {
    let upper = name.to_ascii_uppercase();
    let docker_hint = match upper.as_str() {
        "ADD" => Some("use COPY (tplbuild does not fetch URLs or unpack archives)"),
        "WORKDIR" => Some("use absolute paths, or `cd DIR && …` inside RUN"),
        "USER" => Some("steps run as root; use COPY --chown=, or `runuser` inside RUN"),
        "MAINTAINER" => Some("use LABEL org.opencontainers.image.authors=…"),
        "CMD" | "ENTRYPOINT" | "EXPOSE" | "VOLUME" | "HEALTHCHECK" | "STOPSIGNAL" | "SHELL"
        | "ONBUILD" => Some(
            "a root filesystem has no container settings; configure its init system instead (e.g. COPY a systemd unit)",
        ),
        _ => None,
    };
    if let Some(hint) = docker_hint {
        rep.error(
            span,
            len,
            format!("`{upper}` is a Dockerfile instruction that tplbuild does not support"),
            Some(hint.into()),
        );
        return;
    }
    let hint = match nearest(&upper, &INSTRUCTIONS) {
        Some(n) => format!("did you mean `{n}`?"),
        None => format!("instructions are {}", INSTRUCTIONS.join(", ")),
    };
    rep.error(
        span,
        len,
        format!("unknown instruction `{name}`"),
        Some(hint),
    );
}
