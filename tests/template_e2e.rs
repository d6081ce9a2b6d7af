//! Templates end to end: import an mmdebstrap rootfs into the loopback
//! registry and an OCI layout, inspect it, copy it around, and check that
//! Docker, Podman and skopeo accept what tplbuild writes (and the reverse).

mod common;

use common::*;

#[test]
fn import_to_registry_and_inspect_shows_the_debian_package_list() {
    if !testbed("template import") {
        return;
    }
    let digest = template();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let env = Env::new();
    let json = env.ok(&["template", "inspect", TEMPLATE, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["platform"], "linux/amd64");
    assert_eq!(v["annotations"]["dev.tplbuild.template.suite"], "bookworm");
    let pkgs = v["packages"].as_array().unwrap();
    assert!(
        (60..200).contains(&pkgs.len()),
        "a minbase bookworm has ~90 packages, got {}",
        pkgs.len()
    );
    assert!(pkgs.iter().any(|p| p["name"] == "dpkg"));
    assert_eq!(
        v["annotations"]["dev.tplbuild.template.package-count"],
        pkgs.len().to_string().as_str()
    );
    // The text form shows the same list.
    let text = env.ok(&["template", "inspect", TEMPLATE]);
    assert!(text.contains("Packages ("), "{text}");
    assert!(text.contains("base-files"));
}

#[test]
fn importing_the_same_source_twice_gives_the_same_digest() {
    if !testbed("deterministic import") {
        return;
    }
    let tar = rootfs_tar().unwrap();
    let a = Env::new();
    let b = Env::new();
    let da = a.ok(&[
        "template",
        "import",
        tar.to_str().unwrap(),
        &format!("oci:{}:t", a.path("layout").display()),
    ]);
    let db = b.ok(&[
        "template",
        "import",
        tar.to_str().unwrap(),
        &format!("oci:{}:t", b.path("layout").display()),
    ]);
    assert_eq!(da.trim(), db.trim());
    assert_eq!(
        da.trim(),
        template(),
        "the registry import has the same digest"
    );
}

#[test]
fn copy_registry_to_layout_and_back_keeps_the_digest() {
    if !testbed("copy") {
        return;
    }
    let digest = template();
    let env = Env::new();
    let layout = format!("oci:{}:base-1", env.path("mirror").display());
    assert_eq!(env.ok(&["copy", TEMPLATE, &layout]).trim(), digest);
    // A fresh store reads the layout, verifies and pushes it under a new name.
    let other = Env::new();
    let back = format!("{REGISTRY}/mirror/base:copied");
    assert_eq!(other.ok(&["copy", &layout, &back]).trim(), digest);
    let json = other.ok(&["template", "inspect", &back, "--json"]);
    assert!(json.contains(&digest));
    // The layout is a valid OCI layout for skopeo too.
    let out = sh_ok(&format!("skopeo inspect --raw {layout}"));
    assert!(out.contains("application/vnd.oci.image.manifest.v1+json"));
}

#[test]
fn docker_podman_and_skopeo_accept_the_template() {
    if !testbed("interop") {
        return;
    }
    let digest = template();
    let insp = sh_ok(&format!(
        "skopeo inspect --tls-verify=false docker://{TEMPLATE}"
    ));
    assert!(insp.contains(&digest), "{insp}");
    let scratch = Env::new();
    sh_ok(&format!(
        "skopeo copy --src-tls-verify=false docker://{TEMPLATE} oci:{}:x",
        scratch.path("skopeo-copy").display()
    ));
    if has_socket("/var/run/docker.sock") {
        sh_ok(&format!("docker pull -q {TEMPLATE}"));
        let os = sh_ok(&format!(
            "docker run --rm --network none {TEMPLATE} cat /etc/os-release"
        ));
        assert!(os.contains("bookworm"), "{os}");
    }
    if has_socket("/run/podman/podman.sock") {
        sh_ok(&format!("podman pull -q {TEMPLATE}"));
        let os = sh_ok(&format!(
            "podman run --rm --network none {TEMPLATE} cat /etc/os-release"
        ));
        assert!(os.contains("bookworm"), "{os}");
    }
}

#[test]
fn tplbuild_reads_what_docker_pushes() {
    if !testbed("docker push interop") || !has_socket("/var/run/docker.sock") {
        return;
    }
    template();
    sh_ok(&format!("docker pull -q {TEMPLATE}"));
    let pushed = format!("{REGISTRY}/interop/docker-pushed:1");
    sh_ok(&format!(
        "docker tag {TEMPLATE} {pushed} && docker push -q {pushed}"
    ));
    let env = Env::new();
    let json = env.ok(&["template", "inspect", &pushed, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    // Docker 20.10 pushes Docker media types.
    assert_eq!(
        v["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    env.ok(&["pull", &pushed]);
}

#[test]
fn a_folder_that_is_not_a_rootfs_is_refused_without_force() {
    let env = Env::new();
    let src = env.path("not-a-rootfs");
    fs_err::create_dir_all(src.join("data")).unwrap();
    fs_err::write(src.join("data/file"), "x").unwrap();
    let dest = format!("oci:{}:x", env.path("layout").display());
    let out = env.run(&["template", "import", src.to_str().unwrap(), &dest]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("os-release"), "{err}");
    assert!(err.contains("--force"), "{err}");
    let out = env.run(&[
        "template",
        "import",
        "--force",
        src.to_str().unwrap(),
        &dest,
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
}

#[test]
fn a_missing_tag_is_a_clear_error() {
    if !testbed("missing tag") {
        return;
    }
    let env = Env::new();
    let out = env.run(&[
        "template",
        "inspect",
        &format!("{REGISTRY}/platform/base:no-such-tag"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-tag"), "{err}");
    assert!(err.to_lowercase().contains("not found"), "{err}");
}

#[test]
fn an_http_registry_not_named_insecure_is_refused_with_a_hint() {
    if !testbed("insecure registry") {
        return;
    }
    let env = Env::new();
    let out = std::process::Command::new(common::bin())
        .env("TPLBUILD_HOME", env.home())
        .env("TPLBUILD_CONFIG_DIR", env.path("config"))
        .args(["template", "inspect", TEMPLATE])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-registry"), "{err}");
}

#[test]
fn a_tag_the_registry_lacks_is_named_with_the_tags_it_has() {
    if !testbed("missing tag") {
        return;
    }
    template();
    let env = Env::new();
    let out = env.run(&["pull", &format!("{REGISTRY}/platform/base:nosuch")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tag not found; it has: "), "{err}");
    let has = err.split("it has: ").nth(1).unwrap_or_default();
    assert!(has.split([',', ' ', '\n']).any(|t| t == "1"), "{err}");
    assert!(
        !has.contains("sha256-"),
        "signature tags are left out: {err}"
    );
}
