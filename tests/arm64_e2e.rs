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
    let arm64 = foreign_rootfs(what, "arm64", arm64_rootfs_tar())?;
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

/// A fresh store and folder, once the two-platform template is there.
fn env_with_template(what: &str) -> Option<Env> {
    multi_template(what).map(|_| Env::new())
}

fn base_arg() -> String {
    format!("BASE={MULTI}")
}

/// Build `buildfile` for linux/arm64 on `engine` into the folder `out`
/// and `out.ext4`; returns the digest.
fn build_arm64(env: &Env, buildfile: &str, engine: &str, out: &Path) -> String {
    let ext4 = format!("type=ext4,dest={}", out.with_extension("ext4").display());
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
        "-o",
        &ext4,
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
fn two_platform_template_is_one_index_and_inspect_shows_each_platform() {
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
    assert_eq!(text.matches("Packages (").count(), 2, "{text}");

    // copy takes every platform (one index), or the one --platform names.
    let layout = env.path("mirror");
    let to = format!("oci:{}:multi", layout.display());
    env.ok(&["copy", MULTI, &to]);
    let raw = sh_ok(&format!(
        "skopeo inspect --raw oci:{}:multi",
        layout.display()
    ));
    assert_eq!(raw.matches("\"platform\"").count(), 2, "{raw}");
    let copied = env.ok(&[
        "template",
        "inspect",
        &to,
        "--platform",
        "linux/arm64",
        "--json",
    ]);
    assert!(copied.contains("\"linux/arm64\""), "{copied}");
    let one = format!("oci:{}:arm64", layout.display());
    env.ok(&["copy", MULTI, &one, "--platform", "linux/arm64"]);
    let raw = sh_ok(&format!(
        "skopeo inspect --raw oci:{}:arm64",
        layout.display()
    ));
    assert!(raw.contains("\"layers\""), "a single image: {raw}");
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
}

/// The tag the engine holds `MULTI`'s `platform` image under once a build
/// used it as a parent (`tplbuild/state:` and the manifest digest).
fn state_tag_of_template(env: &Env, platform: &str) -> String {
    let json = env.ok(&[
        "template",
        "inspect",
        MULTI,
        "--platform",
        platform,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let digest = v["digest"].as_str().unwrap();
    format!("tplbuild/state:{}", digest.strip_prefix("sha256:").unwrap())
}

/// The architecture (and, on Docker, the variant after a space) that
/// `engine` (docker or podman) says a loaded image has.
fn loaded_arch(engine: &str, tag: &str) -> String {
    let format = match engine {
        "docker" => "{{.Architecture}} {{.Variant}}",
        _ => "{{.Architecture}}",
    };
    sh_ok(&format!("{engine} image inspect -f '{format}' {tag}"))
        .trim_end_matches('\n')
        .to_string()
}

/// The architecture `file` sees in `/usr/bin/hello` inside an ext4 image.
fn hello_arch_in_ext4(img: &Path) -> String {
    sh_ok(&format!(
        "debugfs -R 'cat /usr/bin/hello' {} 2>/dev/null | file -",
        img.display()
    ))
}

/// One Docker store shares its emulated steps between the parts: the
/// arm64 minimal build (twice cold, on Docker and on Podman), a RUN on top
/// of it, and a two-platform build whose arm64 half hits that store.
#[test]
fn arm64_builds_alike_on_docker_and_podman_run_aarch64_and_publish_one_index() {
    let Some(docker) = env_with_template("arm64 builds") else {
        return;
    };
    let out = docker.path("out");
    let d1 = build_arm64(&docker, &minimal(), "docker", &out);
    let file = sh_ok(&format!("file {}", out.join("usr/bin/hello").display()));
    assert!(file.contains("ARM aarch64"), "{file}");
    // The template went into the engine as the parent of the INSTALL,
    // labelled arm64 (so the engine has no platform to warn about).
    let parent = state_tag_of_template(&docker, "linux/arm64");
    assert_eq!(loaded_arch("docker", &parent), "arm64 ");
    let ext4_docker = docker.path("docker.ext4");
    fs_err::rename(out.with_extension("ext4"), &ext4_docker).unwrap();
    fs_err::remove_dir_all(&out).unwrap();

    // A second cold build, on Podman: the same image, the same ext4 bytes.
    let podman = Env::new();
    let out_p = podman.path("out");
    let d2 = build_arm64(&podman, &minimal(), "podman", &out_p);
    assert_eq!(d1, d2, "Docker and Podman arm64 builds differ");
    assert_eq!(loaded_arch("podman", &parent), "arm64");
    let sum = |p: &Path| sh_ok(&format!("sha256sum < {}", p.display()));
    assert_eq!(
        sum(&ext4_docker),
        sum(&out_p.with_extension("ext4")),
        "two cold arm64 builds gave different ext4 images"
    );
    drop(podman);

    // A RUN on top (the INSTALL hits in this store): the kernel runs it
    // as aarch64.
    let bf = docker.path("uname/Buildfile");
    fs_err::create_dir_all(bf.parent().unwrap()).unwrap();
    let text = fs_err::read_to_string(minimal()).unwrap();
    fs_err::write(&bf, format!("{text}RUN uname -m > /etc/build-arch\n")).unwrap();
    build_arm64(&docker, bf.to_str().unwrap(), "docker", &out);
    let arch = fs_err::read_to_string(out.join("etc/build-arch")).unwrap();
    assert_eq!(arch.trim(), "aarch64");

    // Both platforms at once: one ext4 per platform and one index.
    let tag = format!(
        "{REGISTRY}/tests-arm64/minimal:multi-{}",
        std::process::id()
    );
    let dest = format!(
        "type=ext4,dest={}/{{platform}}.ext4",
        docker.path("multi").display()
    );
    docker.ok(&[
        "build",
        "-f",
        &minimal(),
        "--build-arg",
        &base_arg(),
        "--platform",
        "linux/amd64,linux/arm64",
        "--engine",
        "docker",
        "--tag",
        &tag,
        "-o",
        &dest,
    ]);
    let amd = hello_arch_in_ext4(&docker.path("multi/linux-amd64.ext4"));
    assert!(amd.contains("x86-64"), "{amd}");
    let arm = hello_arch_in_ext4(&docker.path("multi/linux-arm64.ext4"));
    assert!(arm.contains("ARM aarch64"), "{arm}");
    let raw = sh_ok(&format!(
        "skopeo inspect --tls-verify=false --raw docker://{tag}"
    ));
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let entries = index["manifests"].as_array().unwrap();
    let platforms: Vec<String> = entries
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    assert_eq!(
        entries[1]["digest"],
        d1.as_str(),
        "the index names the arm64 image built before"
    );
    // The store records both platforms under the Buildfile's name: export
    // picks one with --platform, this machine's (amd64) without.
    let rows: serde_json::Value = serde_json::from_str(&docker.ok(&["images", "--json"])).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "minimal")
        .expect("the build is listed");
    assert_eq!(
        row["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"]),
        "{rows}"
    );
    let exported_hello = |platform: Option<&str>| {
        let tar = docker.path("export.tar");
        let mut args = vec!["export", "minimal", "-o", tar.to_str().unwrap()];
        args.extend(platform.map(|p| ["--platform", p]).into_iter().flatten());
        docker.ok(&args);
        sh_ok(&format!(
            "tar -xOf {} usr/bin/hello | file -",
            tar.display()
        ))
    };
    let arm = exported_hello(Some("linux/arm64"));
    assert!(arm.contains("ARM aarch64"), "{arm}");
    let host = exported_hello(None);
    assert!(host.contains("x86-64"), "{host}");
    let bad = docker.path("riscv64.tar");
    let o = docker.run(&[
        "export",
        "minimal",
        "--platform",
        "linux/riscv64",
        "-o",
        bad.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("linux/amd64, linux/arm64") && err.contains("--platform"),
        "{err}"
    );

    sh_ok(&format!("docker pull -q --platform linux/arm64 {tag}"));
    let arch = sh_ok(&format!(
        "docker image inspect -f '{{{{.Architecture}}}}' {tag}"
    ));
    assert_eq!(arch.trim(), "arm64");
    sh_ok(&format!("docker rmi {tag}"));
    sh_ok(&format!("podman pull -q --arch arm64 {tag}"));
    let arch = sh_ok(&format!(
        "podman image inspect -f '{{{{.Architecture}}}}' {tag}"
    ));
    assert_eq!(arch.trim(), "arm64");
    sh_ok(&format!("podman rmi {tag}"));
}

#[test]
fn a_platform_the_template_lacks_is_named_with_those_it_has() {
    let Some(env) = env_with_template("--platform linux/s390x") else {
        return;
    };
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
    let Some(env) = env_with_template("the binfmt check") else {
        return;
    };
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

/// The version and architecture of `name` in a lockfile's first step.
fn locked(lockfile: &Path, name: &str) -> (String, String) {
    let lock: toml::Value = toml::from_str(&fs_err::read_to_string(lockfile).unwrap()).unwrap();
    let p = lock["step"][0]["package"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("{name} is locked in {}", lockfile.display()))
        .clone();
    (
        p["version"].as_str().unwrap().to_string(),
        p["architecture"].as_str().unwrap().to_string(),
    )
}

/// Lockfiles per platform, `plan` and `bundle` for a platform list, and
/// an offline build from the bundle, with no network, for each platform
/// that installs exactly its platform's locked versions.
#[test]
fn a_locked_two_platform_bundle_builds_offline_per_platform() {
    let Some(env) = env_with_template("a locked two-platform bundle") else {
        return;
    };
    let dir = env.path("bf");
    fs_err::create_dir_all(&dir).unwrap();
    let f = dir.join("Buildfile");
    fs_err::write(&f, format!("FROM {MULTI}\nINSTALL hello\n")).unwrap();
    let f = f.to_str().unwrap();
    env.ok(&["lock", "-f", f, "--platform", "linux/arm64"]);
    assert!(
        !dir.join("Buildfile.lock").exists(),
        "the amd64 lockfile is not written"
    );
    let arm64_lock = locked(&dir.join("Buildfile.linux-arm64.lock"), "hello");
    assert_eq!(arm64_lock.1, "arm64");
    env.ok(&["lock", "-f", f, "--platform", "linux/amd64"]);
    let amd64_lock = locked(&dir.join("Buildfile.lock"), "hello");
    assert_eq!(amd64_lock.1, "amd64");

    let both = ["--platform", "linux/amd64,linux/arm64"];
    // plan: each platform's plan, one JSON object each.
    let plans: serde_json::Value =
        serde_json::from_str(&env.ok(&[&["plan", "-f", f, "--json"][..], &both].concat())).unwrap();
    let plans = plans.as_array().expect("a list, one plan per platform");
    let platforms: Vec<&str> = plans
        .iter()
        .map(|p| p["platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    assert_ne!(
        plans[0]["steps"][0]["key"], plans[1]["steps"][0]["key"],
        "the platforms' step keys differ"
    );
    let text = env.ok(&[&["plan", "-f", f][..], &both].concat());
    assert!(
        text.contains("# linux/amd64") && text.contains("# linux/arm64"),
        "{text}"
    );

    // bundle: every platform's template and locked .debs.
    let bundle = env.path("bundle");
    env.ok(&[&["bundle", "-f", f][..], &both, &[bundle.to_str().unwrap()]].concat());
    for (platform, (version, arch)) in [("linux/amd64", &amd64_lock), ("linux/arm64", &arm64_lock)]
    {
        let out = env.path(&format!("out-{arch}"));
        // The other machine: only the bundle, no registry, no network.
        let o = std::process::Command::new(bin())
            .arg("--home")
            .arg(&bundle)
            .env("TPLBUILD_CONFIG_DIR", env.path("no-config"))
            .args(["build", "-f", f, "--offline", "--network", "none"])
            .args(["--engine", "docker", "--platform", platform, "-o"])
            .arg(format!("type=dir,dest={}", out.display()))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{platform}: {}", last_lines(&err, 25));
        let status = fs_err::read_to_string(out.join("var/lib/dpkg/status")).unwrap();
        let installed = tplbuild::template::rootfs::parse_dpkg_status(&status);
        let got = installed
            .iter()
            .find(|p| p.name == "hello")
            .expect("hello installed");
        assert_eq!(&got.version, version, "{platform}");
        assert_eq!(&got.architecture, arch, "{platform}");
    }
}

/// armhf: the minbase imports as a linux/arm/v7 template (from its dpkg
/// architecture), and the minimal example with a RUN on top builds for it
/// under qemu-arm. One build (emulated steps are slow).
#[test]
fn armhf_template_imports_as_arm_v7_and_builds_the_minimal_example() {
    if !testbed("an armhf build") {
        return;
    }
    let Some(armhf) = foreign_rootfs("an armhf build", "armhf", armhf_rootfs_tar()) else {
        return;
    };
    let env = Env::new();
    let base = "127.0.0.1:5000/tests-arm64/base-armhf:1";
    env.ok(&["template", "import", armhf.to_str().unwrap(), base]);
    let json = env.ok(&["template", "inspect", base, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["platform"], "linux/arm/v7", "{json}");
    let template = v["digest"].as_str().unwrap().to_string();

    let bf = env.path("armhf/Buildfile");
    fs_err::create_dir_all(bf.parent().unwrap()).unwrap();
    let text = fs_err::read_to_string(minimal()).unwrap();
    fs_err::write(&bf, format!("{text}RUN uname -m > /etc/build-arch\n")).unwrap();
    let out = env.path("out");
    let started = std::time::Instant::now();
    let o = env.run(&[
        "build",
        "-f",
        bf.to_str().unwrap(),
        "--build-arg",
        &format!("BASE={base}"),
        "--platform",
        "linux/arm/v7",
        "--engine",
        "docker",
        "--progress",
        "plain",
        "-o",
        &format!("type=dir,dest={}", out.display()),
    ]);
    eprintln!(
        "the armhf build took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{}", last_lines(&stderr, 25));
    assert!(
        !stderr.contains("does not match the detected host platform"),
        "the engine warned about the platform:\n{}",
        last_lines(&stderr, 25)
    );
    let file = sh_ok(&format!("file {}", out.join("usr/bin/hello").display()));
    assert!(
        file.contains("32-bit") && file.contains("ARM, EABI5"),
        "{file}"
    );
    let arch = fs_err::read_to_string(out.join("etc/build-arch")).unwrap();
    assert_eq!(arch.trim(), "armv7l");
    let parent = format!(
        "tplbuild/state:{}",
        template.strip_prefix("sha256:").unwrap()
    );
    assert_eq!(loaded_arch("docker", &parent), "arm v7");
}
