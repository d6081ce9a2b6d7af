//! The instructions that are lists of words: ENV, LABEL, INSTALL, REMOVE,
//! COPY and KEEP, each from its words (already split and substituted) to
//! an [`InstructionKind`], reporting what is wrong with each word.

use super::ast::{InstructionKind, Keep, Span};
use super::diagnostics::{nearest, Reporter};
use super::parser::CopySource;
use super::validate;
use super::words::Word;

/// A `--name[=value]` flag of an instruction.
pub(super) struct Flag<'w> {
    name: String,
    value: Option<String>,
    word: &'w Word,
}

/// Split leading `--flags` from the operands, reporting unknown,
/// repeated and malformed flags (and then returning `None`). `known`
/// lists (name, takes a value).
pub(super) fn flags<'w>(
    words: &'w [Word],
    instr: &str,
    known: &[(&str, bool)],
    rep: &mut Reporter,
) -> Option<(Vec<Flag<'w>>, &'w [Word])> {
    let n = words.iter().take_while(|w| w.flag).count();
    let errors_before = rep.count();
    let mut flags: Vec<Flag> = Vec::new();
    for w in &words[..n] {
        let (name, value) = match w.split_eq() {
            Some((k, v)) => (k[2..].to_string(), Some(v.to_string())),
            None => (w.text[2..].to_string(), None),
        };
        let Some((_, takes_value)) = known.iter().find(|(k, _)| *k == name) else {
            bad_flag(w, instr, known, rep);
            continue;
        };
        if *takes_value != value.is_some() {
            let msg = if *takes_value {
                format!("flag `--{name}` needs a value: `--{name}=…`")
            } else {
                format!("flag `--{name}` takes no value")
            };
            rep.error(w.span, w.len, msg, None);
            continue;
        }
        if flags.iter().any(|f| f.name == name) {
            rep.error(w.span, w.len, format!("flag `--{name}` given twice"), None);
            continue;
        }
        flags.push(Flag {
            name,
            value,
            word: w,
        });
    }
    // With a bad flag, "no operands" and the like would be noise.
    (rep.count() == errors_before).then_some((flags, &words[n..]))
}

pub(super) fn pairs(
    words: &[Word],
    instr: &str,
    span: Span,
    rep: &mut Reporter,
) -> Option<Vec<(String, String)>> {
    let (_, operands) = flags(words, instr, &[], rep)?;
    if operands.is_empty() {
        rep.error(
            span,
            instr.len(),
            format!("{instr} needs at least one KEY=VALUE"),
            None,
        );
        return None;
    }
    let mut pairs = Vec::new();
    for w in operands {
        let Some((k, v)) = w.split_eq() else {
            let hint = (operands.len() == 2).then(|| {
                format!(
                    "write `{instr} {}=VALUE` (the `{instr} KEY VALUE` form is not supported)",
                    w.text
                )
            });
            rep.error(
                w.span,
                w.len,
                format!("{instr} expects KEY=VALUE, found `{}`", w.text),
                hint,
            );
            return None;
        };
        let ok = if instr == "ENV" {
            validate::is_arg_name(k)
        } else {
            validate::is_label_key(k)
        };
        if !ok {
            let what = if instr == "ENV" {
                "ENV names are letters, digits and _, not starting with a digit"
            } else {
                "LABEL keys are letters, digits and . _ - / :, starting with a letter or digit"
            };
            rep.error(
                w.span,
                w.len,
                format!("bad {instr} key `{k}`"),
                Some(what.into()),
            );
            continue;
        }
        pairs.push((k.to_string(), v.to_string()));
    }
    Some(pairs)
}

pub(super) fn install(words: &[Word], span: Span, rep: &mut Reporter) -> Option<InstructionKind> {
    let (flags, operands) = flags(words, "INSTALL", &[("recommends", false)], rep)?;
    if operands.is_empty() {
        rep.error(
            span,
            7,
            "INSTALL needs at least one package".into(),
            Some("write `INSTALL PACKAGE[=VERSION]...`".into()),
        );
        return None;
    }
    for w in operands {
        let (name, version) = match w.text.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (w.text.as_str(), None),
        };
        check_package(w, name, rep);
        if let Some(v) = version {
            if !validate::is_debian_version(v) {
                rep.error(
                    w.span,
                    w.len,
                    format!("bad version `{v}` for package `{name}`"),
                    Some("Debian versions look like [EPOCH:]UPSTREAM[-REVISION], e.g. 1:2.36-9+deb12u4".into()),
                );
            }
        }
    }
    Some(InstructionKind::Install {
        packages: operands.iter().map(|w| w.text.clone()).collect(),
        recommends: !flags.is_empty(),
    })
}

pub(super) fn remove(words: &[Word], span: Span, rep: &mut Reporter) -> Option<InstructionKind> {
    let (_, operands) = flags(words, "REMOVE", &[], rep)?;
    if operands.is_empty() {
        rep.error(span, 6, "REMOVE needs at least one package".into(), None);
        return None;
    }
    for w in operands {
        if w.text.contains('=') {
            rep.error(
                w.span,
                w.len,
                "REMOVE takes package names without versions".into(),
                None,
            );
        } else {
            check_package(w, &w.text, rep);
        }
    }
    Some(InstructionKind::Remove {
        packages: operands.iter().map(|w| w.text.clone()).collect(),
    })
}

pub(super) fn copy(
    copy_sources: &mut Vec<CopySource>,
    words: &[Word],
    span: Span,
    rep: &mut Reporter,
) -> Option<InstructionKind> {
    let (flags, operands) = flags(words, "COPY", &[("chown", true), ("chmod", true)], rep)?;
    let mut chown = None;
    let mut chmod = None;
    for f in &flags {
        let value = f.value.clone().unwrap_or_default();
        if f.name == "chown" {
            if !validate::is_chown(&value) {
                rep.error(
                    f.word.span,
                    f.word.len,
                    format!("bad --chown `{value}`"),
                    Some(
                        "write --chown=USER or --chown=USER:GROUP, each a name or a number".into(),
                    ),
                );
            }
            chown = Some(value);
        } else {
            chmod = validate::parse_chmod(&value);
            if chmod.is_none() {
                rep.error(
                    f.word.span,
                    f.word.len,
                    format!("bad --chmod `{value}`"),
                    Some("write an octal mode such as 0644 or 755".into()),
                );
            }
        }
    }
    let [sources @ .., dest] = operands else {
        return None;
    };
    if sources.is_empty() {
        rep.error(
            span,
            4,
            "COPY needs a source and a destination".into(),
            Some("write `COPY SRC... DEST`".into()),
        );
        return None;
    }
    for s in sources {
        if let Err((msg, hint)) = validate::copy_source(&s.text) {
            rep.error(s.span, s.len, msg, hint);
        } else {
            copy_sources.push(CopySource {
                text: s.text.clone(),
                span: s.span,
                len: s.len,
            });
        }
    }
    let dest_text = match validate::copy_dest(&dest.text, sources.len()) {
        Ok(d) => d,
        Err(msg) => {
            rep.error(dest.span, dest.len, msg, None);
            return None;
        }
    };
    Some(InstructionKind::Copy {
        sources: sources.iter().map(|w| w.text.clone()).collect(),
        dest: dest_text,
        chown,
        chmod,
    })
}

pub(super) fn keep(words: &[Word], span: Span, rep: &mut Reporter) -> Option<InstructionKind> {
    let (_, operands) = flags(words, "KEEP", &[], rep)?;
    let names: Vec<&str> = Keep::ALL.iter().map(|k| k.as_str()).collect();
    if operands.is_empty() {
        rep.error(
            span,
            4,
            "KEEP needs at least one item".into(),
            Some(format!("KEEP takes {}", names.join(", "))),
        );
        return None;
    }
    let mut items = Vec::new();
    for w in operands {
        match Keep::from_name(&w.text) {
            Some(k) if !items.contains(&k) => items.push(k),
            Some(_) => {}
            None => {
                let hint = match nearest(&w.text, &names) {
                    Some(n) => format!("did you mean `{n}`?"),
                    None => format!("KEEP takes {}", names.join(", ")),
                };
                rep.error(
                    w.span,
                    w.len,
                    format!("unknown KEEP item `{}`", w.text),
                    Some(hint),
                );
            }
        }
    }
    Some(InstructionKind::Keep(items))
}

fn check_package(w: &Word, name: &str, rep: &mut Reporter) {
    if validate::is_package_name(name) {
        return;
    }
    let hint = if name.contains(':') {
        "architecture qualifiers (`pkg:arch`) are not supported".to_string()
    } else if validate::is_package_name(&name.to_ascii_lowercase()) {
        format!(
            "package names are lower-case: `{}`",
            name.to_ascii_lowercase()
        )
    } else if name.starts_with('-') {
        "flags go before the packages".to_string()
    } else {
        "Debian package names are lower-case letters, digits and + - . (at least 2, starting with a letter or digit)".to_string()
    };
    rep.error(
        w.span,
        w.len,
        format!("bad package name `{name}`"),
        Some(hint),
    );
}

pub(super) fn bad_flag(w: &Word, instr: &str, known: &[(&str, bool)], rep: &mut Reporter) {
    let name = w.split_eq().map_or(w.text.as_str(), |(k, _)| k);
    let names: Vec<String> = known.iter().map(|(k, _)| format!("--{k}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let hint = match (nearest(name, &refs), refs.is_empty()) {
        (Some(n), _) => format!("did you mean `{n}`?"),
        (None, true) => format!("{instr} takes no flags"),
        (None, false) => format!("{instr} takes {}", refs.join(", ")),
    };
    rep.error(
        w.span,
        w.len,
        format!("unknown flag `{name}` for {instr}"),
        Some(hint),
    );
}
