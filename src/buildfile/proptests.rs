//! The canonical reprint is what cache keys are made from, so it must read
//! back to the same BuildFile: checked from generated BuildFiles (printing
//! must quote whatever values hold) and from generated text (whatever
//! parses must reprint faithfully).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::validate;
use super::*;

fn path() -> PathBuf {
    PathBuf::from("ctx/Buildfile")
}

fn value() -> impl Strategy<Value = String> {
    // Any text without control characters, weighted towards the ones that
    // need quoting.
    prop_oneof!["\\PC{0,12}", "[ a-z$#\"'\\\\={}-]{0,12}",]
}

fn env_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[A-Za-z_][A-Za-z0-9_]{0,6}", value()), 1..4)
}

fn label_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("[a-z0-9][a-z0-9._/:-]{0,11}", value()), 1..4)
}

fn package() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9+.-]{1,8}"
}

fn versioned_package() -> impl Strategy<Value = String> {
    (
        package(),
        prop::option::of("([0-9]{1,2}:)?[0-9][0-9A-Za-z.+~]{0,5}(-[0-9a-z.+~]{1,4})?"),
    )
        .prop_map(|(p, v)| match v {
            Some(v) => format!("{p}={v}"),
            None => p,
        })
}

fn copy() -> impl Strategy<Value = InstructionKind> {
    let source = "[a-zA-Z0-9 _.#$\"'\\\\/-]{1,8}"
        .prop_filter("stays in the context", |s| validate::copy_source(s).is_ok());
    (
        prop::collection::vec(source, 1..3),
        "/[a-z0-9 ._$#/-]{0,8}",
        prop::option::of("(root|[0-9]{1,4})(:(adm|[0-9]{1,3}))?"),
        prop::option::of(0u32..=0o7777),
    )
        .prop_map(|(sources, mut dest, chown, chmod)| {
            if sources.len() > 1 && !dest.ends_with('/') {
                dest.push('/');
            }
            InstructionKind::Copy {
                sources,
                dest,
                chown,
                chmod,
            }
        })
        .prop_filter("valid destination", |k| match k {
            InstructionKind::Copy { sources, dest, .. } => {
                validate::copy_dest(dest, sources.len()).as_ref() == Ok(dest)
            }
            _ => false,
        })
}

fn run() -> impl Strategy<Value = InstructionKind> {
    let shell = "[a-z0-9 '\"#$|;&\\\\-]{1,20}"
        .prop_map(|s| s.trim_matches([' ', '\t']).to_string())
        .prop_filter("a shell line the parser can produce", |s| {
            !s.is_empty() && !s.starts_with("--") && !s.ends_with('\\')
        })
        .prop_map(|script| InstructionKind::Run {
            script,
            heredoc: false,
        });
    let heredoc = prop::collection::vec("\\PC{0,10}", 1..4)
        .prop_map(|lines| lines.iter().map(|l| format!("{l}\n")).collect::<String>())
        .prop_filter("not blank", |s| !s.chars().all(char::is_whitespace))
        .prop_map(|script| InstructionKind::Run {
            script,
            heredoc: true,
        });
    prop_oneof![shell, heredoc]
}

fn instruction() -> impl Strategy<Value = InstructionKind> {
    prop_oneof![
        env_pairs().prop_map(InstructionKind::Env),
        label_pairs().prop_map(InstructionKind::Label),
        (
            prop::collection::vec(versioned_package(), 1..4),
            any::<bool>()
        )
            .prop_map(|(packages, recommends)| InstructionKind::Install {
                packages,
                recommends
            }),
        prop::collection::vec(package(), 1..4)
            .prop_map(|packages| InstructionKind::Remove { packages }),
        copy(),
        run(),
        prop::sample::subsequence(Keep::ALL.to_vec(), 1..=3).prop_map(InstructionKind::Keep),
    ]
}

fn reference() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("127.0.0.1:5000/platform/base:1".to_string()),
        Just(format!("h.example/r@sha256:{}", "0f".repeat(32))),
        Just("debian".to_string()),
        "oci:[a-z0-9/ $#.]{1,8}:[a-z0-9]{1,4}",
    ]
}

fn buildfile() -> impl Strategy<Value = BuildFile> {
    (
        prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,6}", value(), 0..4),
        reference(),
        prop::collection::vec(instruction(), 0..8),
    )
        .prop_map(|(args, reference, kinds)| BuildFile {
            path: path(),
            context: "ctx".into(),
            from: FromImage {
                reference,
                span: Span::default(),
            },
            instructions: kinds
                .into_iter()
                .map(|kind| Instruction {
                    span: Span::default(),
                    kind,
                })
                .collect(),
            args,
        })
}

/// Plausible Buildfile text with the awkward bits (quotes, escapes,
/// substitutions, continuations, comments, heredocs), so that a good part
/// of it parses.
fn soup() -> impl Strategy<Value = String> {
    fn pick(items: &'static [&'static str]) -> impl Strategy<Value = &'static str> + Clone {
        prop::sample::select(items)
    }
    let value = pick(&[
        "v", "\"a b\"", "'$x'", "${T}", "${U:-d}", "\\$", "\\ ", "x#y", "\"\\\"\"", "é", "",
    ]);
    let pair = (pick(&["k", "K_2", "org.x/y"]), value)
        .prop_map(|(k, v)| format!("{k}={v}"))
        .boxed();
    let install = (
        pick(&["", "--recommends "]),
        prop::collection::vec(
            pick(&["curl", "less=1.0-1", "g++", "${P:-vim}", "1:2.0~rc"]),
            1..4,
        ),
    )
        .prop_map(|(f, p)| format!("INSTALL {f}{}", p.join(" ")));
    let copy = (
        pick(&["", "--chmod=644 ", "--chown=0:adm ", "--chown=${T} "]),
        prop::collection::vec(
            pick(&["a", "\"b c\"", "d/../e", "./f", "${T}", "'#'"]),
            1..3,
        ),
        pick(&["/x/", "etc/", "/"]),
    )
        .prop_map(|(f, s, d)| format!("COPY {f}{} {d}", s.join(" ")));
    let run = pick(&[
        "echo hi",
        "a \\\n  b",
        "<<EOF\nx\n\nEOF",
        "<<-X\n\tx y\n\tX",
        "cat <<A >f\n l\nA",
        "# c",
        "$HOME ${T} \"q\"",
        "true # c",
    ])
    .prop_map(|r| format!("RUN {r}"));
    let line = prop_oneof![
        prop::collection::vec(pair.clone(), 1..3).prop_map(|p| format!("ENV {}", p.join(" "))),
        prop::collection::vec(pair, 1..3).prop_map(|p| format!("label {}", p.join(" \\\n  "))),
        install,
        pick(&["REMOVE vim-tiny", "REMOVE a1 \\\n# c\n b2"]).prop_map(str::to_string),
        copy,
        run,
        pick(&["KEEP machine-id", "KEEP random-seed ssh-host-keys"]).prop_map(str::to_string),
        pick(&["ARG T=2", "ARG P", "ARG U=${T}x"]).prop_map(str::to_string),
        pick(&["", "# comment", "  \t"]).prop_map(str::to_string),
    ];
    let tail = pick(&["\n", " # c\n", "\r\n", "\t\n"]);
    (
        pick(&[
            "FROM a:1\n",
            "ARG T=1\nfrom oci:x:${T:-1}\n",
            "ARG T\nFROM h.example/r:${T:-v}\n",
        ]),
        prop::collection::vec((line, tail), 0..10),
    )
        .prop_map(|(head, lines)| {
            let mut s = head.to_string();
            for (l, t) in lines {
                s.push_str(&l);
                s.push_str(t);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn printing_a_buildfile_parses_back_to_it(f in buildfile()) {
        let text = f.to_string();
        let back = parse_str(&f.path, &text, &BTreeMap::new())
            .unwrap_or_else(|d| panic!("reprint does not parse:\n{text}\n{d}"));
        prop_assert_eq!(back.with_spans_cleared(), f, "{}", text);
    }

    #[test]
    fn whatever_parses_reprints_to_the_same_buildfile(src in soup()) {
        let args = BTreeMap::from([("U".to_string(), "u v".to_string())]);
        if let Ok(f) = parse_str(Path::new("Buildfile"), &src, &args) {
            let text = f.to_string();
            let back = parse_str(Path::new("Buildfile"), &text, &BTreeMap::new())
                .unwrap_or_else(|d| panic!("reprint of\n{src}\ndoes not parse:\n{text}\n{d}"));
            prop_assert_eq!(back.with_spans_cleared(), f.with_spans_cleared(), "{}", text);
        }
    }

    #[test]
    fn parser_never_panics_on_any_text(src in "\\PC{0,200}|[\\x00-\\x7f]{0,200}") {
        let _ = parse_str(Path::new("Buildfile"), &src, &BTreeMap::new());
    }
}
