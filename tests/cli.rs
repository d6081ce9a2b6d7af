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

/// A Buildfile with a typo on line 2 in a folder of its own; its path.
fn typo_dir(env: &Env) -> std::path::PathBuf {
    let dir = env.path("ctx");
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::write(
        dir.join("Buildfile"),
        "FROM 127.0.0.1:5000/platform/base:1\nINSTAL curl\n",
    )
    .unwrap();
    dir
}

#[test]
fn a_folder_as_build_path_or_f_means_its_buildfile_like_docker_build() {
    let env = Env::new();
    let dir = typo_dir(&env);
    let dir = dir.to_str().unwrap();
    for args in [
        vec!["build", dir],
        vec!["plan", dir],
        vec!["plan", "-f", dir],
    ] {
        let out = env.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        // The Buildfile in the folder was read: its typo is reported.
        assert!(err.contains("ctx/Buildfile:2:1"), "{args:?}: {err}");
    }
    let out = env.run(&["plan", dir, "-f", "other/Buildfile"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("name the Buildfile") && err.contains("hint:"),
        "{err}"
    );
}

/// A template in an OCI layout (no registry) and a Buildfile of no steps
/// on it, so a build needs no engine either; returns the Buildfile.
fn stepless(env: &Env) -> String {
    let root = env.path("rootfs");
    fs_err::create_dir_all(root.join("etc")).unwrap();
    fs_err::write(root.join("etc/os-release"), "ID=debian\n").unwrap();
    let layout = env.path("layout");
    env.ok(&[
        "template",
        "import",
        root.to_str().unwrap(),
        &format!("oci:{}:base", layout.display()),
        "--platform",
        "linux/amd64",
    ]);
    let dir = env.path("bf");
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::write(
        dir.join("Buildfile"),
        format!(
            "ARG VERSION=1\nFROM oci:{}:base\nLABEL version=${{VERSION}}\n",
            layout.display()
        ),
    )
    .unwrap();
    dir.join("Buildfile").display().to_string()
}

#[test]
fn build_q_prints_the_digest_alone_and_a_misspelt_build_arg_is_warned_about() {
    let env = Env::new();
    let f = stepless(&env);
    let out = env.run(&["build", "-q", "-f", &f, "--build-arg", "VERSOIN=2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.trim().starts_with("sha256:") && stdout.trim().lines().count() == 1,
        "only the digest on stdout: {stdout:?}"
    );
    assert!(
        stderr.contains("VERSOIN") && stderr.contains("declares no ARG"),
        "the unused --build-arg is warned about: {stderr}"
    );
    assert!(!stderr.contains("built "), "no summary with -q: {stderr}");
    // A declared one is used, and not warned about.
    let out = env.run(&["build", "-q", "-f", &f, "--build-arg", "VERSION=2"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("declares no ARG"),
        "{stderr}"
    );
    assert_ne!(
        String::from_utf8_lossy(&out.stdout),
        stdout,
        "the label changed the image"
    );
}

#[test]
fn an_output_given_as_a_path_takes_its_type_from_the_extension() {
    let env = Env::new();
    let f = stepless(&env);
    let tar = env.path("out/rootfs.tar");
    fs_err::create_dir_all(tar.parent().unwrap()).unwrap();
    let out = env.run(&["build", "-f", &f, "-o", tar.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let names: Vec<String> = tar::Archive::new(fs_err::File::open(&tar).unwrap())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("etc/os-release")),
        "{names:?}"
    );
}

/// The last JSON event a run printed.
fn last_event(out: &std::process::Output) -> serde_json::Value {
    let events = common::json_events(out);
    events.last().cloned().unwrap_or_default()
}

#[test]
fn every_json_build_ends_with_one_result_event_carrying_the_exit_code() {
    let env = Env::new();
    // Success: the digest.
    let f = stepless(&env);
    let out = env.run(&["build", "-f", &f, "--progress", "json"]);
    assert!(out.status.success());
    let result = last_event(&out);
    assert_eq!(result["event"], "result", "{result}");
    assert_eq!(result["exit_code"], 0);
    assert_eq!(
        result["digest"],
        common::done(&common::json_events(&out))["digest"]
    );
    // Bad input: exit 2, and the error in the event.
    let dir = typo_dir(&env);
    let out = env.run(&["build", dir.to_str().unwrap(), "--progress", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let result = last_event(&out);
    assert_eq!(
        (result["event"].as_str(), result["exit_code"].as_i64()),
        (Some("result"), Some(2)),
        "{result}"
    );
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Buildfile:2"),
        "{result}"
    );
    let results = common::json_events(&out)
        .iter()
        .filter(|e| e["event"] == "result")
        .count();
    assert_eq!(results, 1);
}

/// A tiny Debian-looking rootfs: one package that owns one file, and one
/// file no package owns.
fn tiny_rootfs(env: &Env) -> std::path::PathBuf {
    let root = env.path("tiny-rootfs");
    for (path, text) in [
        ("usr/lib/os-release", "ID=debian\nVERSION_ID=\"12\"\n"),
        (
            "var/lib/dpkg/status",
            "Package: hello\nStatus: install ok installed\nArchitecture: amd64\nVersion: 2.10-3\n",
        ),
        (
            "var/lib/dpkg/info/hello.list",
            "/.\n/usr\n/usr/bin\n/usr/bin/hello\n",
        ),
        ("usr/bin/hello", "#!/bin/sh\necho hello\n"),
        ("etc/site.conf", "mine\n"),
    ] {
        let p = root.join(path);
        fs_err::create_dir_all(p.parent().unwrap()).unwrap();
        fs_err::write(p, text).unwrap();
    }
    root
}

#[test]
fn template_import_attaches_an_sbom_that_sbom_prints_and_the_layers_agree() {
    let env = Env::new();
    let root = tiny_rootfs(&env);
    let layout = format!("oci:{}:tiny", env.path("layout").display());
    env.ok(&[
        "template",
        "import",
        root.to_str().unwrap(),
        &layout,
        "--force",
    ]);
    let attached = env.ok(&["sbom", &layout]);
    let doc: serde_json::Value = serde_json::from_str(&attached).unwrap();
    let hello = &doc["packages"][1];
    assert_eq!(hello["name"], "hello");
    assert_eq!(
        hello["annotations"][0]["comment"],
        "tplbuild:step=template import"
    );
    let files: Vec<&str> = doc["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fileName"].as_str().unwrap())
        .collect();
    assert!(files.contains(&"./etc/site.conf"), "{files:?}");
    assert!(!files.contains(&"./usr/bin/hello"), "{files:?}");
    // Read from the layers instead: the same packages and files.
    let read: serde_json::Value =
        serde_json::from_str(&env.ok(&["sbom", &layout, "--from-layers"])).unwrap();
    assert_eq!(read["packages"][1]["name"], "hello");
    // Only the step names differ (the layers do not know the import).
    let sums = |d: &serde_json::Value| -> Vec<(String, String)> {
        d["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["fileName"].to_string(), f["checksums"].to_string()))
            .collect()
    };
    assert_eq!(sums(&read), sums(&doc));
    let cdx: serde_json::Value =
        serde_json::from_str(&env.ok(&["sbom", &layout, "--format", "cyclonedx"])).unwrap();
    assert_eq!(
        cdx["components"][0]["purl"],
        "pkg:deb/debian/hello@2.10-3?arch=amd64&distro=debian-12"
    );
    // `export -o type=sbom` writes what `sbom --from-layers` prints.
    let file = env.path("tiny.cdx.json");
    env.ok(&[
        "export",
        &layout,
        "-o",
        &format!("type=sbom,format=cyclonedx,dest={}", file.display()),
    ]);
    let from_layers = env.ok(&["sbom", &layout, "--from-layers", "--format", "cyclonedx"]);
    assert_eq!(fs_err::read_to_string(&file).unwrap(), from_layers);
    let bad = env.run(&["sbom", &layout, "--format", "swid"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("spdx, cyclonedx"));
}
