//! The command line as a user meets it, without engines or registries:
//! help that teaches, and bad input that gets a clear error and exit code 2.

mod common;

use common::Env;

#[test]
fn help_lists_every_command_with_examples() {
    let env = Env::new();
    let out = env.ok(&["--help"]);
    for cmd in [
        "template", "pull", "copy", "plan", "build", "export", "sign", "verify",
    ] {
        assert!(out.contains(cmd), "--help does not mention {cmd}:\n{out}");
    }
    assert!(out.contains("A first build"), "{out}");
    assert!(out.contains("  tplbuild build "), "{out}");
    let build = env.ok(&["build", "--help"]);
    for flag in [
        "--cache-from",
        "--cache-to",
        "--progress",
        "--engine",
        "--output",
        "--tag",
        "--sign",
        "--require-signed",
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

#[test]
fn every_json_event_has_a_time_and_typed_fields() {
    let env = Env::new();
    let f = stepless(&env);
    let dest = env.path("events.tar");
    let out = env.run(&[
        "build",
        "-f",
        &f,
        "--progress",
        "json",
        "-o",
        dest.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let events = common::json_events(&out);
    assert!(events.len() >= 3, "{events:?}");
    for e in &events {
        let t = e["time"].as_str().unwrap_or_else(|| panic!("no time: {e}"));
        // RFC 3339, UTC, milliseconds: 2026-12-01T22:25:38.010Z
        assert_eq!(t.len(), 24, "{e}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{e}");
        assert!(e["event"].is_string(), "{e}");
    }
    let export = events.iter().find(|e| e["event"] == "export").unwrap();
    assert_eq!(export["type"], "tar", "{export}");
    assert_eq!(export["path"], dest.to_str().unwrap(), "{export}");
    assert!(export["bytes"].as_u64().unwrap() > 0, "{export}");
    assert!(export["duration_ms"].is_u64(), "{export}");
    assert!(common::done(&events)["duration_ms"].is_u64());
}

#[test]
fn a_parse_error_under_json_carries_its_location_in_the_result() {
    let env = Env::new();
    let dir = typo_dir(&env);
    let out = env.run(&["build", dir.to_str().unwrap(), "--progress", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let result = last_event(&out);
    let location = result["error"]["location"].as_str().unwrap_or_default();
    assert!(location.ends_with("Buildfile:2:1"), "{result}");
}

#[test]
fn a_build_is_found_again_by_digest_short_digest_and_name_without_a_registry() {
    let env = Env::new();
    let f = stepless(&env);
    // Plain: the end of a build with no output says how to write it out.
    let out = env.run(&["build", "-f", &f]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tplbuild export bf -o"), "{err}");
    let digest = env.ok(&["build", "-q", "-f", &f]).trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    let typed = [
        digest.clone(),
        format!("@{digest}"),
        digest[..14].to_string(),
        "bf".to_string(),
        "build:bf".to_string(),
    ];
    for (i, t) in typed.iter().enumerate() {
        let dest = env.path(&format!("out{i}.tar"));
        env.ok(&["export", t, "-o", dest.to_str().unwrap()]);
        let listing = common::sh_ok(&format!("tar -tf {}", dest.display()));
        assert!(listing.contains("etc/os-release"), "{t}: {listing}");
    }
    let images: serde_json::Value = serde_json::from_str(&env.ok(&["images", "--json"])).unwrap();
    let rows = images.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{images}");
    assert_eq!(
        (rows[0]["name"].as_str(), rows[0]["kind"].as_str()),
        (Some("bf"), Some("build"))
    );
    assert_eq!(rows[0]["digest"], digest.as_str());
    assert!(rows[0]["recorded"].as_u64().unwrap() > 1_700_000_000);
    let table = env.ok(&["images"]);
    assert!(
        table.starts_with("NAME") && table.contains(&digest[..19]),
        "{table}"
    );
    // A digest this machine never made: exit 2, and where to look.
    let out = env.run(&["export", "sha256:0000000", "-o", "x.tar"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tplbuild images"), "{err}");
}

#[test]
fn an_output_that_cannot_be_written_fails_before_the_build_and_names_the_users_path() {
    let env = Env::new();
    let f = stepless(&env);
    let out = env.run(&["build", "-f", &f, "-o", "/proc/x.tar"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot write /proc/x.tar"), "{err}");
    assert!(!err.contains("built "), "checked before building: {err}");
    assert!(!err.contains("tplbuild-"), "no temp names: {err}");
    // Too small is known only once the content is: the user's path and
    // human sizes, never the temp file's name. 12 MiB that do not
    // compress, in an 8 MiB ext4.
    let root = env.path("big");
    fs_err::create_dir_all(root.join("etc")).unwrap();
    fs_err::write(root.join("etc/os-release"), "ID=debian\n").unwrap();
    common::sh_ok(&format!(
        "head -c 12M /dev/urandom > {}/blob",
        root.display()
    ));
    let layout = format!("oci:{}:big", env.path("big-layout").display());
    env.ok(&["template", "import", root.to_str().unwrap(), &layout]);
    let dest = env.path("small.ext4");
    let out = env.run(&[
        "export",
        &layout,
        "-o",
        &format!("type=ext4,dest={},size=8M", dest.display()),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:", dest.display())), "{err}");
    assert!(err.contains("KiB") || err.contains("MiB"), "{err}");
    assert!(!err.contains("tplbuild-tmp"), "{err}");
    assert!(!dest.exists());
}

#[test]
fn a_registry_that_does_not_answer_still_ends_the_json_stream_with_one_result() {
    let env = Env::new();
    let dir = env.path("closed");
    fs_err::create_dir_all(&dir).unwrap();
    // Port 1 on loopback: nothing listens, the connection is refused.
    fs_err::write(dir.join("Buildfile"), "FROM 127.0.0.1:1/platform/base:1\n").unwrap();
    let out = env.run(&[
        "build",
        dir.to_str().unwrap(),
        "--progress",
        "json",
        "--insecure-registry",
        "127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let events = common::json_events(&out);
    let results: Vec<_> = events.iter().filter(|e| e["event"] == "result").collect();
    assert_eq!(results.len(), 1, "{events:?}");
    assert_eq!(events.last(), Some(results[0]));
    let message = results[0]["error"].to_string();
    assert!(message.contains("127.0.0.1:1"), "{message}");
}

/// A throwaway P-256 key, for flag checks that never reach a registry.
const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgrYSwW0odAkOQwCAD
2FVTHUNgFvURfMQflN9e4AI2ucmhRANCAASR2NqMVwEwRIhZeZuo7yM7jNZGQzRx
L5UgylPot+56NOLYBR9kiqlC2zZL0Tt9THI43CUDudSkC2C5Tqw1UckR
-----END PRIVATE KEY-----
";

#[test]
fn signing_flags_refuse_what_cannot_be_signed_before_doing_anything() {
    let env = Env::new();
    fs_err::create_dir_all(env.dir.path()).unwrap();
    let key = env.path("k.pem");
    fs_err::write(&key, TEST_KEY).unwrap();
    let key = key.to_str().unwrap();
    let dir = typo_dir(&env);
    let bf = dir.join("Buildfile");
    let expect_2 = |args: &[&str], wants: &[&str]| {
        let out = env.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        for w in wants {
            assert!(err.contains(w), "wanted {w:?}: {err}");
        }
        assert!(!err.contains("MIGHAgEAMBMG"), "key material: {err}");
    };
    // --sign without a registry --tag: refused before the Buildfile is read.
    expect_2(
        &["build", "-f", bf.to_str().unwrap(), "--sign", key],
        &["--sign", "no --tag"],
    );
    expect_2(
        &[
            "template",
            "import",
            dir.to_str().unwrap(),
            "oci:/tmp/x:t",
            "--sign",
            key,
        ],
        &["OCI layout", "registry"],
    );
    expect_2(
        &[
            "sign",
            "127.0.0.1:5000/x:1",
            "--key",
            env.path("absent.pem").to_str().unwrap(),
        ],
        &["absent.pem"],
    );
    let enc = env.path("cosign.key");
    fs_err::write(
        &enc,
        "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nZm9v\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
    )
    .unwrap();
    expect_2(
        &["sign", "127.0.0.1:5000/x:1", "--key", enc.to_str().unwrap()],
        &["cosign.key", "PKCS#8", "hint:"],
    );
    // A file that holds no key at all.
    expect_2(
        &[
            "verify",
            "127.0.0.1:5000/x:1",
            "--key",
            bf.to_str().unwrap(),
        ],
        &["Buildfile", "no PEM block"],
    );
}

#[test]
fn a_missing_tag_or_buildfile_gets_a_hint_that_fits_what_was_typed() {
    let env = Env::new();
    let f = stepless(&env);
    let layout = std::path::Path::new(&f)
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("layout");
    let out = env.run(&["pull", &format!("oci:{}:nosuch", layout.display())]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"nosuch\"") && err.contains("it has: base"),
        "{err}"
    );
    // -f was given: the hint is about the path, not about -f.
    let out = env.run(&["plan", "-f", "nope/Buildfile"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("check the path"), "{err}");
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
