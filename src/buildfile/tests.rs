//! Whole-Buildfile tests: one per instruction and one per error, checking
//! message, line and column; then the reprint round trip as a proptest.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;

const FROM: &str = "FROM 127.0.0.1:5000/platform/base:1\n";

fn parse_with(src: &str, args: &[(&str, &str)]) -> Result<BuildFile, Diagnostics> {
    let args: BTreeMap<String, String> = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse_str(Path::new("dir/Buildfile"), src, &args)
}

fn ok(src: &str) -> BuildFile {
    parse_with(src, &[]).unwrap_or_else(|d| panic!("{d}"))
}

/// The only instruction after FROM.
fn one(body: &str) -> InstructionKind {
    let f = ok(&format!("{FROM}{body}\n"));
    assert_eq!(f.instructions.len(), 1, "{:?}", f.instructions);
    f.instructions[0].kind.clone()
}

/// `line:col message` of each error.
fn errors(src: &str) -> Vec<String> {
    errors_with(src, &[])
}

fn errors_with(src: &str, args: &[(&str, &str)]) -> Vec<String> {
    match parse_with(src, args) {
        Ok(f) => panic!("parsed, but should not have: {f:?}"),
        Err(d) => {
            d.0.iter()
                .map(|d| format!("{}:{} {}", d.line, d.col, d.message))
                .collect()
        }
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn design_example_parses() {
    let f = ok(r#"
ARG RELEASE=2024.06
FROM registry.example.com/platform/base:${RELEASE}   # exactly one FROM; tag or @sha256 digest
ENV DEBIAN_FRONTEND=noninteractive
INSTALL openssh-server curl                # apt-get install, recommends off by default
REMOVE  vim-tiny                           # apt-get purge
COPY overlay/ /                            # from the Buildfile's folder; --chown= --chmod=
RUN systemctl enable ssh                   # sh -c in the container
LABEL org.opencontainers.image.version=1.0 # annotations on the result
"#);
    assert_eq!(
        f.from.reference,
        "registry.example.com/platform/base:2024.06"
    );
    assert_eq!(f.from.span, Span { line: 3, col: 1 });
    assert_eq!(f.context, Path::new("dir"));
    assert_eq!(f.args["RELEASE"], "2024.06");
    let names: Vec<&str> = f.instructions.iter().map(|i| i.kind.name()).collect();
    assert_eq!(names, ["ENV", "INSTALL", "REMOVE", "COPY", "RUN", "LABEL"]);
    assert_eq!(
        f.instructions[4].kind,
        InstructionKind::Run {
            script: "systemctl enable ssh                   # sh -c in the container".into(),
            heredoc: false
        }
    );
    assert_eq!(f.instructions[1].span, Span { line: 5, col: 1 });
}

#[test]
fn instruction_names_are_case_insensitive() {
    let f = ok("from base:1\ninstall curl\nRun true\n");
    assert_eq!(f.instructions[0].kind.name(), "INSTALL");
    assert_eq!(f.to_string(), "FROM base:1\nINSTALL curl\nRUN true\n");
}

#[test]
fn build_args_override_arg_defaults() {
    let f = parse_with(
        "ARG BASE=a:1\nFROM ${BASE}\nARG V\nLABEL v=${V}\n",
        &[("BASE", "b:2"), ("V", "x y")],
    )
    .unwrap();
    assert_eq!(f.from.reference, "b:2");
    assert_eq!(
        f.instructions[0].kind,
        InstructionKind::Label(pairs(&[("v", "x y")]))
    );
    assert_eq!(
        f.args,
        BTreeMap::from([("BASE".into(), "b:2".into()), ("V".into(), "x y".into())])
    );
}

#[test]
fn arg_after_from_and_arg_using_an_earlier_arg() {
    let f = ok("ARG A=1 B=${A}2\nFROM base:${B}\nARG C=${A:-0}3\nENV C=${C}\n");
    assert_eq!(f.from.reference, "base:12");
    assert_eq!(
        f.instructions[0].kind,
        InstructionKind::Env(pairs(&[("C", "13")]))
    );
}

#[test]
fn arg_redeclared_without_value_keeps_its_value() {
    let f = ok("ARG A=1\nFROM base\nARG A\nENV A=${A}\n");
    assert_eq!(
        f.instructions[0].kind,
        InstructionKind::Env(pairs(&[("A", "1")]))
    );
}

#[test]
fn from_accepts_digests_and_oci_layouts() {
    let d = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(
        ok(&format!("FROM h.example/r@{d}\n")).from.reference,
        format!("h.example/r@{d}")
    );
    assert_eq!(ok("FROM oci:out/base:1\n").from.reference, "oci:out/base:1");
}

#[test]
fn env_and_label_take_quoted_values() {
    assert_eq!(
        one(r#"ENV A=1 B="two words" C='${not}' D="""#),
        InstructionKind::Env(pairs(&[
            ("A", "1"),
            ("B", "two words"),
            ("C", "${not}"),
            ("D", "")
        ]))
    );
    assert_eq!(
        one(r#"LABEL org.opencontainers.image.title="A # B" x=y=z"#),
        InstructionKind::Label(pairs(&[
            ("org.opencontainers.image.title", "A # B"),
            ("x", "y=z")
        ]))
    );
}

#[test]
fn install_with_versions_and_recommends() {
    assert_eq!(
        one("INSTALL --recommends curl=7.88.1-10+deb12u5 less"),
        InstructionKind::Install {
            packages: strings(&["curl=7.88.1-10+deb12u5", "less"]),
            recommends: true
        }
    );
    assert_eq!(
        one("install \\\n  curl \\\n  # a comment line\n  less"),
        InstructionKind::Install {
            packages: strings(&["curl", "less"]),
            recommends: false
        }
    );
}

#[test]
fn remove_takes_names() {
    assert_eq!(
        one("REMOVE vim-tiny nano"),
        InstructionKind::Remove {
            packages: strings(&["vim-tiny", "nano"])
        }
    );
}

#[test]
fn copy_with_flags_and_relative_dest() {
    assert_eq!(
        one("COPY --chown=1000:adm --chmod=755 a b etc/x/"),
        InstructionKind::Copy {
            sources: strings(&["a", "b"]),
            dest: "/etc/x/".into(),
            chown: Some("1000:adm".into()),
            chmod: Some(0o755),
        }
    );
}

#[test]
fn run_is_verbatim_with_comments_and_dollars() {
    assert_eq!(
        one("RUN echo $HOME ${X} 'a  b' \\\n    && true # the shell sees this"),
        InstructionKind::Run {
            script: "echo $HOME ${X} 'a  b'     && true # the shell sees this".into(),
            heredoc: false
        }
    );
}

#[test]
fn run_heredoc_forms() {
    let body = "useradd -m kiosk\necho '$x' > /etc/y\n";
    for open in ["<<EOF", "<<'EOF'", "<<\"EOF\"", "<<EOF   # make the user"] {
        assert_eq!(
            one(&format!("RUN {open}\n{body}EOF")),
            InstructionKind::Run {
                script: body.into(),
                heredoc: true
            },
            "{open}"
        );
    }
    assert_eq!(
        one("RUN <<-EOF\n\tuseradd -m kiosk\n\t\techo '$x' > /etc/y\n\tEOF"),
        InstructionKind::Run {
            script: body.into(),
            heredoc: true
        }
    );
}

#[test]
fn keep_items() {
    assert_eq!(
        one("KEEP machine-id ssh-host-keys machine-id random-seed"),
        InstructionKind::Keep(vec![Keep::MachineId, Keep::SshHostKeys, Keep::RandomSeed])
    );
}

#[test]
fn instruction_display_is_canonical() {
    let f = ok(&format!(
        "{FROM}env A=\"x y\" B=$\ncopy --chmod=644 'my file' /x\nrun <<EOF\nEOF1\nEOF\nKEEP machine-id\n"
    ));
    let shown: Vec<String> = f.instructions.iter().map(|i| i.to_string()).collect();
    assert_eq!(
        shown,
        [
            "ENV A=\"x y\" B=\"\\$\"",
            "COPY --chmod=0644 \"my file\" /x",
            "RUN <<EOF\nEOF1\nEOF",
            "KEEP machine-id"
        ]
    );
}

#[test]
fn heredoc_display_picks_an_unused_delimiter() {
    let k = InstructionKind::Run {
        script: "EOF\n".into(),
        heredoc: true,
    };
    let i = Instruction {
        span: Span::default(),
        kind: k,
    };
    assert_eq!(i.to_string(), "RUN <<EOF1\nEOF\nEOF1");
}

// --- errors -------------------------------------------------------------

#[test]
fn unknown_instruction_suggests_the_nearest() {
    let e = parse_with(&format!("{FROM}\n\nINSTAL openssh-server curl\n"), &[]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "error: unknown instruction `INSTAL`
  --> dir/Buildfile:4:1
   |
 4 | INSTAL openssh-server curl
   | ^^^^^^
   = hint: did you mean `INSTALL`?"
    );
}

#[test]
fn dockerfile_only_instructions_get_a_specific_hint() {
    let e = parse_with(&format!("{FROM}WORKDIR /x\n"), &[]).unwrap_err();
    assert_eq!(
        e.0[0].message,
        "`WORKDIR` is a Dockerfile instruction that tplbuild does not support"
    );
    assert!(e.0[0].hint.as_deref().unwrap().contains("cd DIR"));
}

#[test]
fn missing_from_is_one_whole_file_error() {
    assert_eq!(
        errors("ARG A=1\nINSTALL curl\n"),
        ["0:0 Buildfile has no FROM instruction"]
    );
    assert_eq!(errors(""), ["0:0 Buildfile has no FROM instruction"]);
}

#[test]
fn second_from_points_at_itself_and_names_the_first() {
    assert_eq!(
        errors("FROM a:1\nINSTALL curl\n  FROM b:1\n"),
        ["3:3 second FROM: a Buildfile has exactly one (the first is on line 1)"]
    );
}

#[test]
fn only_arg_may_come_before_from() {
    assert_eq!(
        errors("ARG A=1\nENV X=1\nFROM a:1\n"),
        ["2:1 `ENV` comes before FROM"]
    );
}

#[test]
fn undefined_arg_points_at_its_column() {
    let e = parse_with("ARG RELEASE\nFROM base:${RELEASE}\n", &[]).unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].col, e.0[0].len), (2, 11, 10));
    assert_eq!(e.0[0].message, "undefined ARG `RELEASE`");
    assert!(e.0[0]
        .hint
        .as_deref()
        .unwrap()
        .contains("--build-arg RELEASE=VALUE"));
    assert_eq!(
        errors("FROM base:1\nLABEL a=\"x ${NOPE}\"\n"),
        ["2:12 undefined ARG `NOPE`"]
    );
}

#[test]
fn install_without_packages_or_with_bad_names() {
    assert_eq!(
        errors(&format!("{FROM}INSTALL\n")),
        ["2:1 INSTALL needs at least one package"]
    );
    assert_eq!(
        errors(&format!("{FROM}INSTALL # nothing\n")),
        ["2:1 INSTALL needs at least one package"]
    );
    assert_eq!(
        errors(&format!("{FROM}INSTALL curl Vim x curl=abc\n")),
        [
            "2:14 bad package name `Vim`",
            "2:18 bad package name `x`",
            "2:20 bad version `abc` for package `curl`"
        ]
    );
}

#[test]
fn upper_case_package_gets_the_lower_case_spelling() {
    let e = parse_with(&format!("{FROM}INSTALL Curl\n"), &[]).unwrap_err();
    assert_eq!(
        e.0[0].hint.as_deref(),
        Some("package names are lower-case: `curl`")
    );
}

#[test]
fn bad_chmod_and_chown() {
    assert_eq!(
        errors(&format!("{FROM}COPY --chmod=0x644 --chown=a:b:c a /\n")),
        ["2:6 bad --chmod `0x644`", "2:20 bad --chown `a:b:c`"]
    );
}

#[test]
fn unknown_flags() {
    let e = parse_with(
        &format!("{FROM}COPY --chmode=644 a /\nINSTALL --no-recommends x1\n"),
        &[],
    )
    .unwrap_err();
    let got: Vec<_> =
        e.0.iter()
            .map(|d| (d.line, d.col, d.message.as_str(), d.hint.as_deref()))
            .collect();
    assert_eq!(
        got,
        [
            (
                2,
                6,
                "unknown flag `--chmode` for COPY",
                Some("did you mean `--chmod`?")
            ),
            (
                3,
                9,
                "unknown flag `--no-recommends` for INSTALL",
                Some("did you mean `--recommends`?")
            ),
        ]
    );
    assert_eq!(
        errors(&format!("{FROM}RUN --mount=x true\n")),
        ["2:5 unknown flag `--mount=x` for RUN"]
    );
    assert_eq!(
        errors(&format!("{FROM}KEEP --all\n")),
        ["2:6 unknown flag `--all` for KEEP"]
    );
    assert_eq!(
        errors(&format!("{FROM}RUN --network=none cat <<EOF\nx\nEOF\n")),
        ["2:5 unknown flag `--network=none` for RUN"]
    );
}

#[test]
fn empty_run() {
    assert_eq!(
        errors(&format!("{FROM}RUN\nRUN   \nRUN <<EOF\n\nEOF\n")),
        ["2:1 empty RUN", "3:1 empty RUN", "4:1 empty RUN heredoc"]
    );
}

#[test]
fn unterminated_heredoc_points_at_the_marker() {
    assert_eq!(
        errors(&format!("{FROM}RUN <<EOF\necho hi\neof\n")),
        ["2:5 unterminated heredoc: no line `EOF` closes it"]
    );
}

#[test]
fn bad_keep_item_suggests_the_nearest() {
    let e = parse_with(&format!("{FROM}KEEP machine_id\n"), &[]).unwrap_err();
    assert_eq!((e.0[0].line, e.0[0].col), (2, 6));
    assert_eq!(e.0[0].message, "unknown KEEP item `machine_id`");
    assert_eq!(e.0[0].hint.as_deref(), Some("did you mean `machine-id`?"));
}

#[test]
fn copy_sources_outside_the_context_are_rejected_as_text() {
    assert_eq!(
        errors(&format!(
            "{FROM}COPY ../secret /etc/\nCOPY /etc/passwd /x\n"
        )),
        [
            "2:6 COPY source `../secret` leaves the Buildfile's folder",
            "3:6 COPY source `/etc/passwd` is an absolute path"
        ]
    );
}

#[test]
fn several_errors_are_all_reported() {
    let src = "ARG A=1\nFROM base:1\nINSTAL x\nINSTALL\nKEEP nope\nENV X\nLABEL\n";
    assert_eq!(errors(src).len(), 5, "{:?}", errors(src));
}

#[test]
fn env_key_value_form_gets_a_hint() {
    let e = parse_with(&format!("{FROM}ENV A 1\n"), &[]).unwrap_err();
    assert_eq!(e.0[0].message, "ENV expects KEY=VALUE, found `A`");
    assert!(e.0[0].hint.as_deref().unwrap().contains("ENV A=VALUE"));
}

#[test]
fn bad_from_reference() {
    assert_eq!(
        errors("FROM Host.example/UPPER:1\n"),
        ["1:6 bad image reference: image reference \"Host.example/UPPER:1\" has an invalid repository name (lower-case letters, digits and . _ - / only)"]
    );
    assert_eq!(
        errors("FROM a:1 AS b\n"),
        ["1:10 FROM takes one image reference"]
    );
}

#[test]
fn control_characters_in_build_args_are_rejected() {
    assert_eq!(
        errors_with("ARG A\nFROM a:1\n", &[("A", "x\ny")]),
        ["0:0 --build-arg A: the value contains a control character"]
    );
}

#[test]
fn exponential_arg_growth_is_cut_off() {
    let mut src = String::from("ARG A0=xxxxxxxxxxxxxxxx\n");
    for i in 1..40 {
        src.push_str(&format!("ARG A{i}=${{A{p}}}${{A{p}}}\n", p = i - 1));
    }
    src.push_str("FROM a:1\n");
    assert_eq!(
        errors(&src),
        ["19:9 ARG substitution makes the Buildfile too large"]
    );
}

#[test]
fn lone_backslash_line_is_reported_not_a_crash() {
    assert_eq!(
        errors("FROM a:1\n\\\n"),
        ["2:1 line continuation `\\` is followed by the end of the file"]
    );
}

#[test]
fn shipped_examples_parse_with_their_copy_sources() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("buildfiles");
    for name in ["gateway", "kiosk", "minimal"] {
        let f = parse_file(&root.join(name).join("Buildfile"), &BTreeMap::new())
            .unwrap_or_else(|d| panic!("{name}:\n{d}"));
        assert_eq!(f.from.reference, "127.0.0.1:5000/platform/base:1", "{name}");
        assert_eq!(f.args["BASE"], "127.0.0.1:5000/platform/base:1", "{name}");
    }
    let kiosk = parse_file(&root.join("kiosk/Buildfile"), &BTreeMap::new()).unwrap();
    assert!(kiosk.instructions.iter().any(|i| matches!(
        &i.kind,
        InstructionKind::Run { heredoc: true, script } if script.starts_with("set -e\nuseradd")
    )));
    let base = BTreeMap::from([("BASE".to_string(), "oci:out/base:2".to_string())]);
    let minimal = parse_file(&root.join("minimal/Buildfile"), &base).unwrap();
    assert_eq!(minimal.from.reference, "oci:out/base:2");
}

/// Inputs that were (or could easily become) quadratic: a huge ARG used
/// after the expansion budget ran out, and many undefined ARGs among many
/// declared ones. The bound is loose: the point is minutes versus seconds.
#[test]
fn hostile_inputs_parse_in_linear_time() {
    let mut big = String::from("ARG A0=xxxxxxxxxxxxxxxx\n");
    for i in 1..19 {
        big.push_str(&format!("ARG A{i}=${{A{p}}}${{A{p}}}\n", p = i - 1));
    }
    big.push_str("FROM a:1\n");
    big.push_str(&"ENV a=${A18}\n".repeat(50_000));
    let mut many = String::from("FROM a:1\n");
    for i in 0..20_000 {
        many.push_str(&format!("ARG N{i}=x\nENV a=${{M{i}}}\n"));
    }
    for src in [big, many] {
        assert!(src.len() <= 1 << 20);
        let start = std::time::Instant::now();
        let e = parse_with(&src, &[]).unwrap_err();
        assert!(!e.0.is_empty());
        assert!(start.elapsed().as_secs() < 10, "took {:?}", start.elapsed());
    }
}

#[test]
fn shell_arithmetic_with_spaces_is_not_a_heredoc() {
    assert_eq!(
        one("RUN echo $((1 << N)) >/x"),
        InstructionKind::Run {
            script: "echo $((1 << N)) >/x".into(),
            heredoc: false
        }
    );
}
