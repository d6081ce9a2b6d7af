//! The same build on every kind of engine gives the same bytes: the
//! gateway example, cold, to ext4, on the local Docker (whose overlay upper
//! dir tplbuild may read) and on engines whose files it cannot read — the
//! test bed's remote dockerd over tcp and over ssh, and the vfs Podman
//! through CONTAINER_HOST — must give byte-identical disk images and the
//! same image digest.
//!
//! Kept apart from tests/engine_remote.rs so it can be run alone: it makes
//! four cold gateway builds (~10 s each here, more over ssh and on vfs).

mod common;

use std::path::Path;

use common::*;

fn gateway() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("buildfiles/gateway/Buildfile")
        .display()
        .to_string()
}

fn addr(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// Build the gateway cold with `vars` naming the engine, in a store of its
/// own (so every step runs on that engine), to ext4; returns the image
/// digest and the ext4 file's sha256.
fn build_on(what: &str, vars: &[(&str, &str)], args: &[&str]) -> (String, String) {
    let env = Env::new();
    let ext4 = env.path("gateway.ext4");
    let mut cmd = env.cmd_with_engine(vars);
    let out = cmd
        .args([
            "build",
            "-f",
            &gateway(),
            "--no-cache",
            "--progress",
            "plain",
        ])
        .args(["-o", &format!("type=ext4,dest={}", ext4.display())])
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "--- {what} ---\n{}{err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.status.success(),
        "the gateway build on {what} failed ({}); the end of its stderr:\n{}",
        out.status,
        last_lines(&err, 25)
    );
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let sum = sh_ok(&format!("sha256sum {}", ext4.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    (digest, sum)
}

#[test]
fn gateway_is_byte_identical_on_local_docker_remote_tcp_ssh_and_vfs_podman() {
    if !testbed("gateway on every engine") || !has_socket("/var/run/docker.sock") {
        return;
    }
    if std::net::TcpStream::connect("127.0.0.1:2375").is_err() {
        eprintln!("skipping: the remote dockerd is not up (run scripts/testbed)");
        assert!(!testbed_required(), "the remote dockerd must be up here");
        return;
    }
    template();
    let tcp = addr("TPLBUILD_TEST_REMOTE_DOCKER_HOST", "tcp://127.0.0.1:2375");
    let ssh = addr(
        "TPLBUILD_TEST_SSH_DOCKER_HOST",
        "ssh://root@tplbuild-testbed",
    );
    let vfs = addr(
        "TPLBUILD_TEST_VFS_PODMAN_HOST",
        "unix:///run/podman-vfs/podman.sock",
    );
    let local = build_on(
        "the local Docker",
        &[("DOCKER_HOST", "unix:///var/run/docker.sock")],
        &[],
    );
    for (what, vars, args) in [
        (
            "the remote dockerd over tcp",
            [("DOCKER_HOST", tcp.as_str())],
            &[][..],
        ),
        (
            "the remote dockerd over ssh",
            [("DOCKER_HOST", ssh.as_str())],
            &[][..],
        ),
        (
            "the vfs Podman",
            [("CONTAINER_HOST", vfs.as_str())],
            &["--engine", "podman"][..],
        ),
    ] {
        let (digest, sum) = build_on(what, &vars, args);
        assert_eq!(
            digest, local.0,
            "image digest on {what} vs the local Docker"
        );
        assert_eq!(sum, local.1, "ext4 bytes on {what} vs the local Docker");
    }
}
