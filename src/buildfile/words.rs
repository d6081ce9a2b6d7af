//! Words and `${ARG}` substitution for every instruction but RUN: splits a
//! logical line at unquoted spaces, removes quotes and escapes, expands
//! `${NAME}` and `${NAME:-default}`, and drops a trailing `# comment`.
//!
//! Quoting: `"…"` (where `\"`, `\\` and `\$` are escapes and `${…}` still
//! expands), `'…'` (literal), and `\c` outside quotes (literal `c`). A bare
//! `$NAME` is an error rather than a silent literal: it is nearly always a
//! forgotten brace or a container variable tplbuild cannot know.

use std::collections::BTreeMap;

use super::ast::Span;
use super::diagnostics::Reporter;

/// Substitutions may nest this deep (`${A:-${B:-…}}`).
const MAX_DEPTH: u32 = 8;

/// One word of an instruction, quotes removed and ARGs expanded.
#[derive(Debug, Clone)]
pub(crate) struct Word {
    pub text: String,
    pub span: Span,
    /// How many characters of the source line the word covers.
    pub len: usize,
    /// Byte offset in `text` of the first `=` that was not quoted.
    pub eq: Option<usize>,
    /// The word starts with an unquoted `--`.
    pub flag: bool,
    /// Reading it reported an error (undefined ARG, open quote…): checking
    /// what is left would only add confusing follow-up errors.
    pub broken: bool,
}

impl Word {
    /// The text before and after the first unquoted `=`.
    pub fn split_eq(&self) -> Option<(&str, &str)> {
        self.eq.map(|e| (&self.text[..e], &self.text[e + 1..]))
    }
}

/// The ARGs visible at a point of the Buildfile, and what expansion may
/// still cost.
#[derive(Debug)]
pub(crate) struct Env {
    /// Declared ARGs; `None` is declared without a value.
    pub declared: BTreeMap<String, Option<String>>,
    /// Bytes that substitution may still produce in this Buildfile: keeps
    /// `ARG B=${A}${A}`-style doubling from eating the machine.
    pub budget: usize,
    pub exhausted: bool,
}

/// Reads words one at a time, so that ARG can declare a name before the
/// next word uses it.
pub(crate) struct Scanner<'s> {
    chars: &'s [char],
    spans: &'s [Span],
    i: usize,
    /// Set while reading an unused `:-` default: its ARGs need not exist.
    quiet: bool,
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Mode {
    Word,
    Default,
}

impl<'s> Scanner<'s> {
    pub fn new(chars: &'s [char], spans: &'s [Span], from: usize) -> Self {
        Scanner {
            chars,
            spans,
            i: from,
            quiet: false,
        }
    }

    /// All remaining words.
    pub fn rest(&mut self, env: &mut Env, rep: &mut Reporter) -> Vec<Word> {
        std::iter::from_fn(|| self.next_word(env, rep)).collect()
    }

    pub fn next_word(&mut self, env: &mut Env, rep: &mut Reporter) -> Option<Word> {
        loop {
            while self.i < self.chars.len() && matches!(self.chars[self.i], ' ' | '\t') {
                self.i += 1;
            }
            if self.i >= self.chars.len() {
                return None;
            }
            if self.chars[self.i] != '#' {
                break;
            }
            // A comment runs to the end of its physical line; a continued
            // instruction goes on after it.
            let line = self.spans[self.i].line;
            while self.i < self.chars.len() && self.spans[self.i].line == line {
                self.i += 1;
            }
        }
        let start = self.i;
        let errors_before = rep.count();
        let flag = self.chars[start..].starts_with(&['-', '-']);
        let mut text = String::new();
        let mut eq = None;
        self.scan(Mode::Word, 0, &mut text, &mut eq, env, rep);
        let span = self.spans[start];
        let len = self.spans[start..self.i]
            .iter()
            .filter(|s| s.line == span.line)
            .count();
        Some(Word {
            text,
            span,
            len,
            eq,
            flag,
            broken: rep.count() != errors_before,
        })
    }

    fn scan(
        &mut self,
        mode: Mode,
        depth: u32,
        out: &mut String,
        eq: &mut Option<usize>,
        env: &mut Env,
        rep: &mut Reporter,
    ) {
        while self.i < self.chars.len() {
            let c = self.chars[self.i];
            match (mode, c) {
                (Mode::Word, ' ' | '\t') | (Mode::Default, '}') => return,
                (_, '\\') => {
                    match self.chars.get(self.i + 1) {
                        Some(&n) => out.push(n),
                        None => out.push('\\'),
                    }
                    self.i += 2;
                }
                (_, '\'') => {
                    let open = self.i;
                    self.i += 1;
                    while self.i < self.chars.len() && self.chars[self.i] != '\'' {
                        out.push(self.chars[self.i]);
                        self.i += 1;
                    }
                    if self.i == self.chars.len() {
                        self.unterminated_quote(open, rep);
                    }
                    self.i += 1;
                }
                (_, '"') => self.double_quoted(depth, out, env, rep),
                (_, '$') => self.dollar(depth, out, env, rep),
                (Mode::Word, '=') if eq.is_none() => {
                    *eq = Some(out.len());
                    out.push('=');
                    self.i += 1;
                }
                _ => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        self.i = self.i.min(self.chars.len());
    }

    fn double_quoted(&mut self, depth: u32, out: &mut String, env: &mut Env, rep: &mut Reporter) {
        let open = self.i;
        self.i += 1;
        loop {
            let Some(&c) = self.chars.get(self.i) else {
                self.unterminated_quote(open, rep);
                return;
            };
            match c {
                '"' => {
                    self.i += 1;
                    return;
                }
                '\\' if matches!(self.chars.get(self.i + 1), Some('"' | '\\' | '$')) => {
                    out.push(self.chars[self.i + 1]);
                    self.i += 2;
                }
                '$' => self.dollar(depth, out, env, rep),
                _ => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    fn unterminated_quote(&self, open: usize, rep: &mut Reporter) {
        rep.error(
            self.spans[open],
            1,
            format!("unterminated quote {}", self.chars[open]),
            Some(format!("close it with {}", self.chars[open])),
        );
    }

    /// At a `$`: expand `${…}`, reject a bare `$NAME`, keep any other `$`.
    fn dollar(&mut self, depth: u32, out: &mut String, env: &mut Env, rep: &mut Reporter) {
        let at = self.i;
        let next = self.chars.get(at + 1).copied();
        if next.is_some_and(|c| c.is_ascii_alphabetic() || c == '_') {
            let name: String = self.chars[at + 1..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            rep.error(
                self.spans[at],
                name.len() + 1,
                format!("`${name}` is not substituted"),
                Some(format!(
                    "write `${{{name}}}` for an ARG, or `\\${name}` for a literal `$`"
                )),
            );
            out.push('$');
            self.i += 1;
            return;
        }
        if next != Some('{') {
            out.push('$');
            self.i += 1;
            return;
        }
        self.i += 2;
        let name_start = self.i;
        while self.i < self.chars.len()
            && (self.chars[self.i].is_ascii_alphanumeric() || self.chars[self.i] == '_')
        {
            self.i += 1;
        }
        let name: String = self.chars[name_start..self.i].iter().collect();
        // Only the length: values are copied once, into the output.
        let value_len = env
            .declared
            .get(&name)
            .and_then(|v| v.as_ref())
            .map(String::len);
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
        match (valid, self.chars.get(self.i), self.chars.get(self.i + 1)) {
            (true, Some('}'), _) => {
                self.i += 1;
                match value_len {
                    Some(_) => push_arg(out, &name, self.spans[at], env, rep),
                    None => self.undefined(at, &name, env, rep),
                }
            }
            (true, Some(':'), Some('-')) => {
                self.i += 2;
                if depth >= MAX_DEPTH {
                    rep.error(
                        self.spans[at],
                        2,
                        format!("substitutions nested more than {MAX_DEPTH} deep"),
                        None,
                    );
                    self.skip_to_close();
                    return;
                }
                let used = value_len.is_some_and(|l| l > 0);
                let quiet = self.quiet;
                self.quiet = quiet || used;
                let mut default = String::new();
                self.scan(Mode::Default, depth + 1, &mut default, &mut None, env, rep);
                self.quiet = quiet;
                if self.i >= self.chars.len() {
                    self.unclosed(at, rep);
                    return;
                }
                self.i += 1;
                if used {
                    push_arg(out, &name, self.spans[at], env, rep);
                } else {
                    // The default's own expansions were paid for already.
                    out.push_str(&default);
                }
            }
            (_, None, _) => self.unclosed(at, rep),
            _ => {
                let end = self.chars[at..]
                    .iter()
                    .position(|c| *c == '}')
                    .map_or(self.chars.len(), |p| at + p + 1);
                let shown: String = self.chars[at..end].iter().collect();
                rep.error(
                    self.spans[at],
                    end - at,
                    format!("unsupported substitution `{shown}`"),
                    Some("write `${NAME}` or `${NAME:-default}`".into()),
                );
                self.i = end;
            }
        }
    }

    fn skip_to_close(&mut self) {
        while self.i < self.chars.len() && self.chars[self.i] != '}' {
            self.i += 1;
        }
        self.i = (self.i + 1).min(self.chars.len());
    }

    fn unclosed(&mut self, at: usize, rep: &mut Reporter) {
        rep.error(
            self.spans[at],
            2,
            "unterminated `${`".into(),
            Some("close it with `}`".into()),
        );
        self.i = self.chars.len();
    }

    fn undefined(&self, at: usize, name: &str, env: &Env, rep: &mut Reporter) {
        // Past the cap the hint search (over every ARG) would be wasted.
        if self.quiet || rep.is_full() {
            return;
        }
        let hint = match env.declared.get(name) {
            Some(None) => format!(
                "ARG {name} has no value: pass `--build-arg {name}=VALUE` or write `${{{name}:-default}}`"
            ),
            _ => {
                let names: Vec<&str> = env.declared.keys().map(String::as_str).collect();
                match super::diagnostics::nearest(name, &names) {
                    Some(n) => format!("did you mean `{n}`?"),
                    None => format!("declare it first with `ARG {name}=VALUE`"),
                }
            }
        };
        rep.error(
            self.spans[at],
            self.i - at,
            format!("undefined ARG `{name}`"),
            Some(hint),
        );
    }
}

/// Append the value of a declared ARG, if the budget allows.
fn push_arg(out: &mut String, name: &str, at: Span, env: &mut Env, rep: &mut Reporter) {
    let Env {
        declared,
        budget,
        exhausted,
    } = env;
    let value = declared.get(name).and_then(|v| v.as_deref()).unwrap_or("");
    if value.len() > *budget {
        if !*exhausted {
            *exhausted = true;
            rep.error(
                at,
                1,
                "ARG substitution makes the Buildfile too large".into(),
                Some("substitutions may produce at most 4 MiB in all".into()),
            );
        }
        return;
    }
    *budget -= value.len();
    out.push_str(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn env(pairs: &[(&str, Option<&str>)]) -> Env {
        Env {
            declared: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
            budget: 1 << 20,
            exhausted: false,
        }
    }

    fn words_of(src: &str, e: &mut Env) -> (Vec<String>, Vec<String>) {
        let lines = [src];
        let mut rep = Reporter::new(Path::new("B"), &lines);
        let chars: Vec<char> = src.chars().collect();
        let spans: Vec<Span> = (1..=chars.len() as u32)
            .map(|col| Span { line: 1, col })
            .collect();
        let words = Scanner::new(&chars, &spans, 0).rest(e, &mut rep);
        let errs = rep
            .finish()
            .iter()
            .map(|d| format!("{} {}", d.col, d.message))
            .collect();
        (words.into_iter().map(|w| w.text).collect(), errs)
    }

    #[test]
    fn quotes_and_escapes_are_removed() {
        let (w, e) = words_of(r#"a="b c" 'd $e' f\ g "h\"\\\$i\n""#, &mut env(&[]));
        assert_eq!(w, ["a=b c", "d $e", "f g", "h\"\\$i\\n"]);
        assert!(e.is_empty());
    }

    #[test]
    fn substitution_with_and_without_default() {
        let mut e = env(&[("A", Some("1")), ("E", Some("")), ("N", None)]);
        let (w, errs) = words_of("x${A}y ${E:-d} ${N:-${A}} \"${A} q\" '${A}' $5", &mut e);
        assert_eq!(w, ["x1y", "d", "1", "1 q", "${A}", "$5"]);
        assert!(errs.is_empty(), "{errs:?}");
    }

    #[test]
    fn unused_default_may_name_undefined_args() {
        let (w, e) = words_of("${A:-${NOPE}}", &mut env(&[("A", Some("1"))]));
        assert_eq!(w, ["1"]);
        assert!(e.is_empty());
    }

    #[test]
    fn undefined_arg_is_an_error_at_its_column() {
        let (_, e) = words_of("base:${RELEASE}", &mut env(&[("RELAESE", Some("1"))]));
        assert_eq!(e, ["6 undefined ARG `RELEASE`"]);
    }

    #[test]
    fn bare_dollar_name_is_an_error() {
        let (_, e) = words_of("PATH=/bin:$PATH", &mut env(&[]));
        assert_eq!(e, ["11 `$PATH` is not substituted"]);
    }

    #[test]
    fn bad_substitutions_are_reported() {
        let (_, e) = words_of("${A+x} ${", &mut env(&[("A", Some("1"))]));
        assert_eq!(
            e,
            ["1 unsupported substitution `${A+x}`", "8 unterminated `${`"]
        );
    }

    #[test]
    fn trailing_comment_is_dropped_but_hash_inside_words_is_kept() {
        let (w, _) = words_of("a#b \"#c\" # d e", &mut env(&[]));
        assert_eq!(w, ["a#b", "#c"]);
    }

    #[test]
    fn unquoted_equals_and_flags_are_marked() {
        let chars: Vec<char> = r#""a=b"=c --x "--y""#.chars().collect();
        let spans: Vec<Span> = (1..=chars.len() as u32)
            .map(|col| Span { line: 1, col })
            .collect();
        let lines = [""];
        let mut rep = Reporter::new(Path::new("B"), &lines);
        let w = Scanner::new(&chars, &spans, 0).rest(&mut env(&[]), &mut rep);
        assert_eq!(w[0].split_eq(), Some(("a=b", "c")));
        assert_eq!((w[1].flag, w[2].flag), (true, false));
    }

    #[test]
    fn doubling_args_hit_the_expansion_budget() {
        let mut e = env(&[("A", Some(&"x".repeat(1000)))]);
        e.budget = 5000;
        let (_, errs) = words_of(&"${A}".repeat(10), &mut e);
        assert_eq!(errs, ["21 ARG substitution makes the Buildfile too large"]);
    }
}
