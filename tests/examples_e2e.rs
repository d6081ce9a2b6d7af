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

fn sha(path: &Path) -> String {
    sh_ok(&format!("sha256sum {}", path.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn minimal_builds_to_every_type_reproducibly_on_docker_and_podman() {
    if !testbed("examples: minimal") {
        return;
    }
    template();
    let a = Env::new();
    let b = Env::new();
    let p = Env::new();
    let da = build_all(&a, "minimal", "docker", &a.path("out"));
    let db = build_all(&b, "minimal", "docker", &b.path("out"));
    let dp = build_all(&p, "minimal", "podman", &p.path("out"));
    assert_eq!(da, db, "two cold builds differ");
    assert_eq!(da, dp, "Docker and Podman builds differ");
    for file in [
        "rootfs.tar",
        "rootfs.ext4",
        "rootfs.erofs",
        "rootfs.squashfs",
    ] {
        let (x, y, z) = (
            sha(&a.path("out").join(file)),
            sha(&b.path("out").join(file)),
            sha(&p.path("out").join(file)),
        );
        assert_eq!(x, y, "{file} differs between two cold builds");
        assert_eq!(x, z, "{file} differs between Docker and Podman");
    }
    sh_ok(&format!(
        "fsck.ext4 -fn {}",
        a.path("out/rootfs.ext4").display()
    ));
    assert!(a.path("out/rootfs/usr/bin/hello").is_file());
    // The OCI layout is readable by skopeo.
    sh_ok(&format!(
        "skopeo inspect --raw oci:{}",
        a.path("out/oci").display()
    ));
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
}
