//! The command line as a user meets it, without engines or registries:
//! help that teaches, and bad input that gets a clear error and exit code 2.

mod common;

use common::Env;

#[test]
fn help_lists_every_command_with_examples() {
    let env = Env::new();
    let out = env.ok(&["--help"]);
    for cmd in ["template", "pull", "copy", "plan", "build", "export"] {
        assert!(out.contains(cmd), "--help does not mention {cmd}:\n{out}");
    }
    assert!(out.contains("Examples:"));
    let build = env.ok(&["build", "--help"]);
    for flag in [
        "--cache-from",
        "--cache-to",
        "--progress",
        "--engine",
        "--output",
        "--tag",
    ] {
        assert!(build.contains(flag), "build --help lacks {flag}");
    }
}

#[test]
fn a_typo_in_a_buildfile_is_exit_2_with_location_caret_and_suggestion() {
    let env = Env::new();
    let dir = env.path("typo");
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::write(
        dir.join("Buildfile"),
        "FROM 127.0.0.1:5000/platform/base:1\nINSTAL curl\nRUN true\nCOPY ../secret /\n",
    )
    .unwrap();
    let out = env.run(&["plan", "-f", dir.join("Buildfile").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Buildfile:2:1"), "{err}");
    assert!(err.contains("INSTALL"), "a suggestion is given: {err}");
    assert!(err.contains('^'), "the line is shown with a caret: {err}");
    // Every error in the file is reported, not just the first.
    assert!(err.contains("Buildfile:4:"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn a_missing_buildfile_says_how_to_name_one() {
    let env = Env::new();
    let out = env.run(&["plan", "-f", env.path("nope/Buildfile").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("-f"), "{err}");
}

#[test]
fn a_bad_output_spec_is_exit_2_and_names_the_valid_types() {
    let env = Env::new();
    let out = env.run(&["export", "oci:/nonexistent:x", "-o", "type=ext5,dest=x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ext4"), "{err}");
}

#[test]
fn a_malformed_reference_is_exit_2() {
    let env = Env::new();
    let out = env.run(&["template", "inspect", "Bad/UPPER:ref"]);
    assert_eq!(out.status.code(), Some(2));
    let out = env.run(&["pull", "127.0.0.1:5000/x@sha256:../../etc"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("digest"), "{err}");
}

/// `lock`, `fetch` and `build` take the same Buildfile flags, so one
/// command line serves all three (`fetch --build-arg` was a clap error).
#[test]
fn every_command_that_reads_a_buildfile_takes_the_buildfile_flags() {
    let env = Env::new();
    for cmd in ["plan", "build", "lock", "fetch", "bundle"] {
        let help = env.ok(&[cmd, "--help"]);
        for flag in ["--file", "--build-arg", "--platform"] {
            assert!(help.contains(flag), "{cmd} --help lacks {flag}:\n{help}");
        }
    }
    let missing = env.path("none/Buildfile");
    let out = env.run(&[
        "fetch",
        "-f",
        missing.to_str().unwrap(),
        "--build-arg",
        "RELEASE=1",
        "--platform",
        "linux/amd64",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("does not exist"), "not a flag error: {err}");
}
