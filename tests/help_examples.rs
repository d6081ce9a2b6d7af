//! Every example that every `--help` shows runs as printed, on the test
//! bed, in the order a new user meets them: a first build from the
//! top-level help, then each command's own examples. The loopback registry
//! is named in `registries.toml` (as the top-level help says), so the
//! examples need no `--insecure-registry`. Example lines must also fit 80
//! columns, so that no terminal wraps a command in the middle.

mod common;

use std::path::Path;
use std::process::Command;

use common::{testbed, Env};

/// Each command's help, in the order its examples run (later examples use
/// what earlier ones made: the template, the lockfile, the build).
const ORDER: &[&[&str]] = &[
    &[],
    &["template", "import"],
    &["template", "inspect"],
    &["sign"],
    &["verify"],
    &["pull"],
    &["copy"],
    &["plan"],
    &["lock"],
    &["fetch"],
    &["build"],
    &["export"],
    &["sbom"],
    &["images"],
    &["bundle"],
    &["docs"],
    &["completion"],
    &["man"],
    &["prune"],
];

/// The commands a help lists under "Commands:".
fn commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A wrapped description goes on further indented.
        .filter(|l| !l[2..].starts_with(' '))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

/// The example commands in a help text, continuation lines joined.
fn examples(help: &str) -> Vec<String> {
    let mut out = vec![];
    let mut lines = help.lines().peekable();
    while let Some(l) = lines.next() {
        let t = l.trim_start();
        let is_example = l.starts_with("  ")
            && ["tplbuild ", "source <(tplbuild ", "mmdebstrap ", "openssl "]
                .iter()
                .any(|p| t.starts_with(p));
        if !is_example {
            continue;
        }
        let mut cmd = t.to_string();
        while cmd.ends_with('\\') {
            cmd.pop();
            let next = lines.next().expect("a continuation line");
            cmd.push_str(next.trim());
        }
        out.push(cmd);
    }
    out
}

fn example_lines_fit_80_columns(help: &str, which: &str) {
    let mut in_examples = false;
    for l in help.lines() {
        if l.starts_with("Example") || l.starts_with("A first build") {
            in_examples = true;
        } else if l.is_empty() {
            in_examples = false;
        } else if in_examples {
            assert!(
                l.chars().count() <= 80,
                "`tplbuild {which} --help`: an example line is longer than 80 columns \
                 and a terminal would wrap it:\n{l}"
            );
        }
    }
}

#[test]
fn every_help_example_runs_as_printed() {
    if !testbed("help examples") {
        return;
    }
    let env = Env::new();
    let work = env.path("work");
    let config = env.path("config");
    fs_err::create_dir_all(work.join("buildfiles")).unwrap();
    fs_err::create_dir_all(&config).unwrap();
    fs_err::write(
        config.join("registries.toml"),
        "insecure = [\"127.0.0.1:5000\"]\n",
    )
    .unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    common::sh_ok(&format!(
        "cp -r {}/buildfiles/gateway {}/buildfiles/",
        repo.display(),
        work.display()
    ));
    // What `mmdebstrap --variant=minbase bookworm rootfs.tar` makes: the
    // test bed made it already.
    std::os::unix::fs::symlink(common::rootfs_tar().unwrap(), work.join("rootfs.tar")).unwrap();
    // The multi-platform import's two rootfs: the test bed caches both.
    std::os::unix::fs::symlink(common::rootfs_tar().unwrap(), work.join("amd64.tar")).unwrap();
    let arm64 = std::env::var("TPLBUILD_TEST_ARM64_ROOTFS_TAR")
        .unwrap_or_else(|_| "/var/lib/tplbuild-testbed/cache/bookworm-minbase-arm64.tar".into());
    std::os::unix::fs::symlink(arm64, work.join("arm64.tar")).unwrap();
    let bin = std::path::PathBuf::from(common::bin());
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let help = |which: &[&str]| -> String {
        let out = Command::new(&bin)
            .args(which)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    // Every command is in ORDER, so none has examples this test skips.
    let mut listed: Vec<String> = commands(&help(&[]));
    listed.extend(
        commands(&help(&["template"]))
            .into_iter()
            .map(|c| format!("template {c}")),
    );
    for c in &listed {
        let covered = ORDER.iter().any(|o| o.join(" ") == *c) || c == "template";
        assert!(covered, "`tplbuild {c}` is missing from ORDER");
    }
    let mut ran = 0;
    for which in ORDER {
        let text = help(which);
        let name = which.join(" ");
        example_lines_fit_80_columns(&text, &name);
        let found = examples(&text);
        assert!(!found.is_empty(), "`tplbuild {name} --help` has no example");
        for cmd in found {
            if cmd.starts_with("mmdebstrap ") {
                continue;
            }
            let t0 = std::time::Instant::now();
            let out = Command::new("bash")
                .args(["-o", "pipefail", "-c", &cmd])
                .current_dir(&work)
                .env("PATH", &path)
                .env("HOME", &work)
                .env("TPLBUILD_HOME", env.home())
                .env("TPLBUILD_CONFIG_DIR", &config)
                .env_remove("DOCKER_HOST")
                .env_remove("CONTAINER_HOST")
                .output()
                .unwrap();
            eprintln!("$ {cmd}   ({:.1}s)", t0.elapsed().as_secs_f64());
            assert!(
                out.status.success(),
                "the example `{cmd}` from `tplbuild {name} --help` failed ({}):\n{}",
                out.status,
                common::last_lines(&String::from_utf8_lossy(&out.stderr), 20)
            );
            ran += 1;
        }
    }
    assert!(ran >= 30, "only {ran} examples ran");
    // What the first build promised is there.
    assert!(work.join("out/gateway.ext4").is_file());
    assert!(
        work.join("gw.ext4").is_file(),
        "the offline build from the bundle"
    );
}
