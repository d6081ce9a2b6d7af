//! Foreign platforms on an amd64 host: a two-platform template (amd64 +
//! arm64 minbase in one index), arm64 builds under qemu-user on Docker and
//! Podman, and the errors for a platform the template lacks and for a
//! kernel without a qemu handler. Emulated steps are slow (~50 s for
//! `INSTALL hello`), so each is run once and its results shared.

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::*;

/// A tag of this test's own, so that no other test sees an index.
const MULTI: &str = "127.0.0.1:5000/tests-arm64/base-multi:1";

fn minimal() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("buildfiles/minimal/Buildfile")
        .display()
        .to_string()
}

/// Import the test bed's amd64 and arm64 minbase as one two-platform
/// template, once per test binary; `None` (and a note) without the test bed.
fn multi_template(what: &str) -> Option<String> {
    if !testbed(what) {
        return None;
    }
    let Some(arm64) = arm64_rootfs_tar() else {
        assert!(
            !testbed_required(),
            "{what}: the arm64 rootfs is missing (scripts/testbed makes it)"
        );
        eprintln!("skipping {what}: no arm64 rootfs (run scripts/testbed)");
        return None;
    };
    static DIGEST: OnceLock<String> = OnceLock::new();
    Some(
        DIGEST
            .get_or_init(|| {
                let env = Env::new();
                let amd64 = rootfs_tar().unwrap();
                let out = env.ok(&[
                    "template",
                    "import",
                    amd64.to_str().unwrap(),
                    arm64.to_str().unwrap(),
                    MULTI,
                ]);
                out.trim().to_string()
            })
            .clone(),
    )
}

fn base_arg() -> String {
    format!("BASE={MULTI}")
}

/// Build the minimal example for linux/arm64 on `engine` into `out` (a
/// folder); returns the digest.
fn build_arm64(env: &Env, buildfile: &str, engine: &str, out: &Path) -> String {
    let out = format!("type=dir,dest={}", out.display());
    let args = [
        "build",
        "-f",
        buildfile,
        "--build-arg",
        &base_arg(),
        "--platform",
        "linux/arm64",
        "--engine",
        engine,
        "--progress",
        "plain",
        "-o",
        &out,
    ];
    let o = env.run(&args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", last_lines(&stderr, 25));
    assert!(
        !stderr.contains("does not match the detected host platform"),
        "the engine warned about the platform:\n{}",
        last_lines(&stderr, 25)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn two_platform_template_is_one_index_that_engines_pull() {
    let Some(digest) = multi_template("a two-platform template") else {
        return;
    };
    let raw = sh_ok(&format!(
        "skopeo inspect --tls-verify=false --raw docker://{MULTI}"
    ));
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    assert!(digest.starts_with("sha256:"));

    // inspect shows each platform with its own package list.
    let env = Env::new();
    let text = env.ok(&["template", "inspect", MULTI]);
    assert!(text.contains("Platform:   linux/amd64"), "{text}");
    assert!(text.contains("Platform:   linux/arm64"), "{text}");
    assert!(text.contains("hello") || text.contains("arm64"), "{text}");
    let one = env.ok(&[
        "template",
        "inspect",
        MULTI,
        "--platform",
        "linux/arm64",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert_eq!(v["platform"], "linux/arm64");
    assert!(v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["architecture"] == "arm64" || p["architecture"] == "all"));

    // Docker and Podman pull the arm64 image from it.
    let tag = format!("tplbuild-tests-arm64-pull:{}", std::process::id());
    sh_ok(&format!("docker pull -q --platform linux/arm64 {MULTI}"));
    let arch = sh_ok(&format!(
        "docker image inspect -f '{{{{.Architecture}}}}' {MULTI}"
    ));
    assert_eq!(arch.trim(), "arm64");
    sh_ok(&format!("docker rmi {MULTI}"));
    sh_ok(&format!("podman pull -q --arch arm64 {MULTI}"));
    sh_ok(&format!("podman tag {MULTI} {tag}"));
    let arch = sh_ok(&format!(
        "podman image inspect -f '{{{{.Architecture}}}}' {tag}"
    ));
    assert_eq!(arch.trim(), "arm64");
    sh_ok(&format!("podman rmi {tag} {MULTI}"));
}

#[test]
fn arm64_minimal_builds_alike_on_docker_and_podman_and_runs_aarch64() {
    if multi_template("arm64 builds").is_none() {
        return;
    }
    let docker = Env::new();
    let out = docker.path("out");
    let d1 = build_arm64(&docker, &minimal(), "docker", &out);
    let file = sh_ok(&format!("file {}", out.join("usr/bin/hello").display()));
    assert!(file.contains("ARM aarch64"), "{file}");
    fs_err::remove_dir_all(&out).unwrap();

    // A RUN on top (the INSTALL hits in this store): the kernel runs it
    // as aarch64.
    let bf = docker.path("uname/Buildfile");
    fs_err::create_dir_all(bf.parent().unwrap()).unwrap();
    let text = fs_err::read_to_string(minimal()).unwrap();
    fs_err::write(&bf, format!("{text}RUN uname -m > /etc/build-arch\n")).unwrap();
    build_arm64(&docker, bf.to_str().unwrap(), "docker", &out);
    let arch = fs_err::read_to_string(out.join("etc/build-arch")).unwrap();
    assert_eq!(arch.trim(), "aarch64");

    let podman = Env::new();
    let d2 = build_arm64(&podman, &minimal(), "podman", &podman.path("out"));
    assert_eq!(d1, d2, "Docker and Podman arm64 builds differ");
}

#[test]
fn a_platform_the_template_lacks_is_named_with_those_it_has() {
    if multi_template("--platform linux/s390x").is_none() {
        return;
    }
    let env = Env::new();
    let o = env.run(&[
        "build",
        "-f",
        &minimal(),
        "--build-arg",
        &base_arg(),
        "--platform",
        "linux/s390x",
        "--engine",
        "docker",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("linux/s390x"), "{err}");
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "{err}"
    );
}

#[test]
fn a_kernel_without_a_qemu_handler_stops_with_the_install_hint() {
    if multi_template("the binfmt check").is_none() {
        return;
    }
    let env = Env::new();
    let empty = env.path("binfmt");
    fs_err::create_dir_all(&empty).unwrap();
    let o = env
        .cmd()
        .env("TPLBUILD_BINFMT_DIR", &empty)
        .args(["build", "-f", &minimal(), "--build-arg", &base_arg()])
        .args(["--platform", "linux/arm64", "--engine", "docker"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("cannot run linux/arm64 steps"), "{err}");
    assert!(
        err.contains("hint:") && err.contains("qemu-user-static"),
        "{err}"
    );
    assert!(err.contains("Buildfile:4"), "names the step: {err}");
}
