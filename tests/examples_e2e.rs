//! The example Buildfiles, built for real and exported to every type.

mod common;

use std::path::Path;

use common::*;

const TYPES: &[(&str, &str)] = &[
    ("tar", "rootfs.tar"),
    ("ext4", "rootfs.ext4"),
    ("erofs", "rootfs.erofs"),
    ("squashfs", "rootfs.squashfs"),
    ("dir", "rootfs"),
    ("oci", "oci"),
];

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("buildfiles")
        .join(name)
        .join("Buildfile")
        .display()
        .to_string()
}

/// Build an example with every output type into `out`; returns the digest.
fn build_all(env: &Env, name: &str, engine: &str, out: &Path) -> String {
    let mut args: Vec<String> = [
        "build",
        "-f",
        &example(name),
        "--engine",
        engine,
        "--progress",
        "plain",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (ty, file) in TYPES {
        args.push("-o".into());
        args.push(format!("type={ty},dest={}", out.join(file).display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env.ok(&args).trim().to_string()
}

/// The image files whose bytes must not depend on the machine or engine.
const IMAGES: &[&str] = &[
    "rootfs.tar",
    "rootfs.ext4",
    "rootfs.erofs",
    "rootfs.squashfs",
];

#[test]
fn minimal_builds_to_every_type_reproducibly_on_docker_and_podman() {
    if !testbed("examples: minimal") {
        return;
    }
    template();
    // Each build's images are hashed and then removed before the next
    // build, so the test needs room for one set of outputs, not three.
    let built = |engine: &str, check: bool| -> (String, Vec<String>) {
        let env = Env::new();
        let out = env.path("out");
        let digest = build_all(&env, "minimal", engine, &out);
        let sums = IMAGES.iter().map(|f| sha256sum(&out.join(f))).collect();
        if check {
            sh_ok(&format!(
                "fsck.ext4 -fn {}",
                out.join("rootfs.ext4").display()
            ));
            assert!(out.join("rootfs/usr/bin/hello").is_file());
            // The OCI layout is readable by skopeo, by its tag: the
            // layout also lists the image's SBOM and provenance.
            sh_ok(&format!(
                "skopeo inspect --raw oci:{}:latest",
                out.join("oci").display()
            ));
        }
        (digest, sums)
    };
    let (da, sa) = built("docker", true);
    let (db, sb) = built("docker", false);
    let (dp, sp) = built("podman", true);
    assert_eq!(da, db, "two cold builds differ");
    assert_eq!(da, dp, "Docker and Podman builds differ");
    for (i, file) in IMAGES.iter().enumerate() {
        assert_eq!(sa[i], sb[i], "{file} differs between two cold builds");
        assert_eq!(sa[i], sp[i], "{file} differs between Docker and Podman");
    }
}

#[test]
fn gateway_and_kiosk_build_and_export() {
    if !testbed("examples: gateway, kiosk") {
        return;
    }
    template();
    let env = Env::new();
    build_all(&env, "gateway", "docker", &env.path("gw"));
    let root = env.path("gw/rootfs");
    assert!(root.join("usr/sbin/sshd").is_file());
    assert!(root.join("usr/bin/curl").is_file());
    assert!(fs_err::read_to_string(root.join("etc/motd"))
        .unwrap()
        .contains("gateway"));
    assert!(
        !fs_err::read_dir(root.join("etc/ssh")).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("ssh_host_")),
        "host keys must not ship"
    );
    sh_ok(&format!(
        "fsck.ext4 -fn {}",
        env.path("gw/rootfs.ext4").display()
    ));
    // Room for one example's outputs at a time.
    fs_err::remove_dir_all(env.path("gw")).unwrap();

    build_all(&env, "kiosk", "docker", &env.path("kiosk"));
    let root = env.path("kiosk/rootfs");
    let profile = fs_err::symlink_metadata(root.join("home/kiosk/.profile")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        profile.uid(),
        1001,
        "COPY --chown=kiosk resolved in the image"
    );
    assert_eq!(profile.mode() & 0o777, 0o600);
    assert_eq!(
        fs_err::read_link(root.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/Europe/Berlin"),
        "a symlink in a COPY folder arrives as that symlink"
    );
    let issue = fs_err::symlink_metadata(root.join("etc/issue")).unwrap();
    assert_eq!(issue.mode() & 0o777, 0o644);
}
