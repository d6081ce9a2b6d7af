//! From text to logical lines: drops blank lines and full-line comments,
//! joins `\` continuations (keeping each character's source position, so
//! errors inside a continued line still point at the right physical line),
//! and collects the heredoc bodies a RUN line opens. Words, quotes and
//! substitution are the job of `words`; instructions that of `parser`.

use super::ast::Span;
use super::diagnostics::Reporter;

/// One instruction's text, continuations joined.
#[derive(Debug)]
pub(crate) struct Logical {
    pub chars: Vec<char>,
    /// The source position of each of `chars`.
    pub spans: Vec<Span>,
    /// For a RUN that opens heredocs: the script with the bodies, and
    /// whether it is the `RUN <<EOF` form (the script is then the body).
    pub heredoc: Option<(String, bool)>,
}

/// The physical lines, without `\n` or a CRLF's `\r`.
pub(crate) fn split_lines(src: &str) -> Vec<&str> {
    let src = src.strip_suffix('\n').unwrap_or(src);
    if src.is_empty() {
        return Vec::new();
    }
    src.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect()
}

fn is_blank(line: &str) -> bool {
    line.chars().all(|c| c == ' ' || c == '\t')
}

fn is_comment(line: &str) -> bool {
    line.trim_start_matches([' ', '\t']).starts_with('#')
}

/// The byte index of a continuation backslash: the last character, spaces
/// and tabs after it aside.
fn continuation(line: &str) -> Option<usize> {
    let t = line.trim_end_matches([' ', '\t']);
    t.strip_suffix('\\').map(|rest| rest.len())
}

fn span(line_idx: usize, col_idx: usize) -> Span {
    Span {
        line: u32::try_from(line_idx + 1).unwrap_or(u32::MAX),
        col: u32::try_from(col_idx + 1).unwrap_or(u32::MAX),
    }
}

/// Split the source into logical lines, reporting control characters,
/// dangling continuations and unterminated heredocs.
pub(crate) fn logical_lines(lines: &[&str], rep: &mut Reporter) -> Vec<Logical> {
    for (i, line) in lines.iter().enumerate() {
        // Control characters are never intended and would not survive a
        // canonical reprint; tabs are fine.
        if let Some((col, c)) = line
            .chars()
            .enumerate()
            .find(|(_, c)| c.is_control() && *c != '\t')
        {
            rep.error(
                span(i, col),
                1,
                format!("control character U+{:04X} in the Buildfile", u32::from(c)),
                None,
            );
        }
    }
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() && !rep.is_full() {
        if is_blank(lines[i]) || is_comment(lines[i]) {
            i += 1;
            continue;
        }
        let mut logical = Logical {
            chars: Vec::new(),
            spans: Vec::new(),
            heredoc: None,
        };
        loop {
            let line_idx = i;
            let line = lines[i];
            let cont = continuation(line);
            let content = &line[..cont.unwrap_or(line.len())];
            for (col, c) in content.chars().enumerate() {
                logical.chars.push(c);
                logical.spans.push(span(i, col));
            }
            i += 1;
            let Some(backslash) = cont else { break };
            // Comment lines inside a continued instruction are dropped, as
            // Docker does; a blank line ends it, so that a stray `\` cannot
            // swallow the next instruction.
            while i < lines.len() && is_comment(lines[i]) {
                i += 1;
            }
            if i == lines.len() || is_blank(lines[i]) {
                let what = if i == lines.len() {
                    "the end of the file"
                } else {
                    "a blank line"
                };
                rep.error(
                    span(line_idx, line[..backslash].chars().count()),
                    1,
                    format!("line continuation `\\` is followed by {what}"),
                    Some("remove the `\\` or join the lines".into()),
                );
                break;
            }
        }
        if logical.chars.iter().all(|c| matches!(c, ' ' | '\t')) {
            // Only a `\` (already reported, or continued into a comment).
            continue;
        }
        if is_run(&logical.chars) {
            i = read_heredocs(lines, i, &mut logical, rep);
        }
        out.push(logical);
    }
    out
}

fn keyword_end(chars: &[char]) -> usize {
    let start = chars.iter().take_while(|c| matches!(c, ' ' | '\t')).count();
    start
        + chars[start..]
            .iter()
            .take_while(|c| !matches!(c, ' ' | '\t'))
            .count()
}

fn is_run(chars: &[char]) -> bool {
    let start = chars.iter().take_while(|c| matches!(c, ' ' | '\t')).count();
    let end = keyword_end(chars);
    let kw: String = chars[start..end].iter().collect();
    kw.eq_ignore_ascii_case("RUN")
}

/// A `<<[-]WORD` (or `<<'WORD'`, `<<"WORD"`) in a RUN line.
struct Marker {
    /// Index of the first `<` in the logical line.
    at: usize,
    /// Index just after the marker.
    end: usize,
    strip_tabs: bool,
    delimiter: String,
}

/// Find heredoc markers the way a shell would: not inside quotes, not in a
/// comment. Shell arithmetic such as `$((1<<N))` can look like one; such a
/// line is still passed to the shell verbatim, only its body is collected.
fn find_markers(chars: &[char], from: usize) -> Vec<Marker> {
    let mut markers = Vec::new();
    let (mut single, mut double, mut word_start) = (false, false, true);
    let mut i = from;
    while i < chars.len() {
        let c = chars[i];
        if single {
            single = c != '\'';
            i += 1;
            continue;
        }
        if double {
            match c {
                '\\' => i += 1,
                '"' => double = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        let boundary = matches!(c, ' ' | '\t' | ';' | '&' | '|' | '(' | ')');
        match c {
            '\\' => i += 1,
            '\'' => single = true,
            '"' => double = true,
            '#' if word_start => break,
            '<' if chars.get(i + 1) == Some(&'<')
                && (i == 0 || chars[i - 1] != '<')
                && chars.get(i + 2) != Some(&'<') =>
            {
                if let Some(m) = marker_at(chars, i) {
                    i = m.end;
                    markers.push(m);
                    word_start = false;
                    continue;
                }
            }
            _ => {}
        }
        word_start = boundary;
        i += 1;
    }
    markers
}

fn marker_at(chars: &[char], at: usize) -> Option<Marker> {
    let mut i = at + 2;
    let strip_tabs = chars.get(i) == Some(&'-');
    if strip_tabs {
        i += 1;
    }
    let quote = chars.get(i).copied().filter(|c| *c == '\'' || *c == '"');
    if quote.is_some() {
        i += 1;
    }
    let start = i;
    while i < chars.len()
        && (chars[i].is_ascii_alphanumeric() || chars[i] == '_')
        && (i > start || !chars[i].is_ascii_digit())
    {
        i += 1;
    }
    if i == start {
        return None;
    }
    let delimiter: String = chars[start..i].iter().collect();
    if let Some(q) = quote {
        if chars.get(i) != Some(&q) {
            return None;
        }
        i += 1;
    }
    Some(Marker {
        at,
        end: i,
        strip_tabs,
        delimiter,
    })
}

/// Collect the bodies of the heredocs `logical` opens, which start at line
/// `next`; returns the index of the line after the last delimiter.
fn read_heredocs(lines: &[&str], next: usize, logical: &mut Logical, rep: &mut Reporter) -> usize {
    let kw_end = keyword_end(&logical.chars);
    let markers = find_markers(&logical.chars, kw_end);
    if markers.is_empty() {
        return next;
    }
    let mut i = next;
    let mut bodies: Vec<&[&str]> = Vec::new();
    for m in &markers {
        let ends = |l: &&str| {
            let l = if m.strip_tabs {
                l.trim_start_matches('\t')
            } else {
                l
            };
            l == m.delimiter
        };
        match lines[i..].iter().position(ends) {
            Some(n) => {
                bodies.push(&lines[i..i + n]);
                i += n + 1;
            }
            None => {
                rep.error(
                    logical.spans[m.at],
                    m.end - m.at,
                    format!("unterminated heredoc: no line `{}` closes it", m.delimiter),
                    Some(format!(
                        "end the script with a line that is exactly `{}`",
                        m.delimiter
                    )),
                );
                return lines.len();
            }
        }
    }
    let body_start = logical.chars[kw_end..]
        .iter()
        .position(|c| !matches!(c, ' ' | '\t'))
        .map_or(logical.chars.len(), |p| kw_end + p);
    let rest: String = logical.chars[markers[0].end..].iter().collect();
    let rest_is_comment =
        rest.is_empty() || is_blank(&rest) || (rest.starts_with([' ', '\t']) && is_comment(&rest));
    let script = if markers.len() == 1 && markers[0].at == body_start && rest_is_comment {
        // `RUN <<EOF`: the body is the script.
        let mut s = String::new();
        for l in bodies[0] {
            let l = if markers[0].strip_tabs {
                l.trim_start_matches('\t')
            } else {
                l
            };
            s.push_str(l);
            s.push('\n');
        }
        (s, true)
    } else {
        // The shell reads the heredocs itself: hand it the whole text.
        let first: String = logical.chars[body_start..].iter().collect();
        let mut s = first.trim_end_matches([' ', '\t']).to_string();
        for l in &lines[next..i] {
            s.push('\n');
            s.push_str(l);
        }
        (s, false)
    };
    logical.heredoc = Some(script);
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn lex(src: &str) -> (Vec<String>, Vec<String>) {
        let lines = split_lines(src);
        let mut rep = Reporter::new(Path::new("B"), &lines);
        let out = logical_lines(&lines, &mut rep);
        let texts = out.iter().map(|l| l.chars.iter().collect()).collect();
        let errs = rep
            .finish()
            .into_iter()
            .map(|d| format!("{}:{} {}", d.line, d.col, d.message))
            .collect();
        (texts, errs)
    }

    #[test]
    fn continuations_join_and_skip_comment_lines() {
        let (t, e) = lex("INSTALL a \\\n# why b\n  b\\\n c\n\n# done\nRUN x\n");
        assert_eq!(t, ["INSTALL a   b c", "RUN x"]);
        assert!(e.is_empty(), "{e:?}");
    }

    #[test]
    fn positions_survive_continuations() {
        let lines = split_lines("ENV \\\n  A=1");
        let mut rep = Reporter::new(Path::new("B"), &lines);
        let out = logical_lines(&lines, &mut rep);
        let a = out[0].chars.iter().position(|c| *c == 'A').unwrap();
        assert_eq!(out[0].spans[a], Span { line: 2, col: 3 });
    }

    #[test]
    fn continuation_into_blank_line_is_an_error() {
        let (t, e) = lex("RUN a \\\n\nINSTALL b\n");
        assert_eq!(t, ["RUN a ", "INSTALL b"]);
        assert_eq!(
            e,
            ["1:7 line continuation `\\` is followed by a blank line"]
        );
    }

    #[test]
    fn crlf_line_ends_are_accepted() {
        let (t, e) = lex("RUN a \\\r\n b\r\n");
        assert_eq!(t, ["RUN a  b"]);
        assert!(e.is_empty());
    }

    #[test]
    fn control_characters_are_rejected_at_their_column() {
        let (_, e) = lex("RUN a\u{7}b\n");
        assert_eq!(e, ["1:6 control character U+0007 in the Buildfile"]);
    }

    #[test]
    fn heredoc_body_is_not_parsed_as_instructions() {
        let lines = split_lines("RUN <<-'EOF'\n\tINSTALL x\n# not a comment \\\n\tEOF\nREMOVE y\n");
        let mut rep = Reporter::new(Path::new("B"), &lines);
        let out = logical_lines(&lines, &mut rep);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[0].heredoc,
            Some(("INSTALL x\n# not a comment \\\n".to_string(), true))
        );
        assert!(rep.finish().is_empty());
    }

    #[test]
    fn heredoc_inside_a_command_goes_to_the_shell_whole() {
        let lines = split_lines("RUN cat <<EOF >/etc/x && cat <<'B' >/y\nhi\nEOF\nthere\nB\n");
        let mut rep = Reporter::new(Path::new("B"), &lines);
        let out = logical_lines(&lines, &mut rep);
        assert_eq!(
            out[0].heredoc,
            Some((
                "cat <<EOF >/etc/x && cat <<'B' >/y\nhi\nEOF\nthere\nB".to_string(),
                false
            ))
        );
    }

    #[test]
    fn quoted_or_commented_angle_brackets_are_not_heredocs() {
        let lines = split_lines("RUN echo '<<A' \"<<B\" # <<C\nINSTALL x\n");
        let mut rep = Reporter::new(Path::new("B"), &lines);
        let out = logical_lines(&lines, &mut rep);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].heredoc, None);
    }

    #[test]
    fn unterminated_heredoc_points_at_the_marker() {
        let (_, e) = lex("FROM x\nRUN  <<EOF\necho\nEOF \n");
        assert_eq!(e, ["2:6 unterminated heredoc: no line `EOF` closes it"]);
    }
}
