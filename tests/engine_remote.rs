//! Reaching engines that are not a local root socket, against the test
//! bed's real daemons (`scripts/testbed`): a "remote" dockerd whose
//! storage is on a tmpfs in a mount namespace of its own (tcp, TLS through
//! a TLS front, and ssh through the test bed's sshd), and a Podman service
//! with vfs storage (directly, and over ssh through a forwarded socket).
//!
//! Engines are reached through the library where no environment is needed,
//! and through the `tplbuild` binary where it is (TLS variables, contexts,
//! CONTAINER_HOST): a build whose one step prints a marker and fails needs
//! the engine for everything but the step's diff.

mod common;
mod engine_support;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use engine_support::{base_spec, container_exists};
use tplbuild::engine::{connect_host, ContainerGuard, ContainerSpec, Engine, EngineKind, Network};

/// A test bed address: the variable `scripts/testbed env` prints, else the
/// test bed's default.
fn addr(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn remote_docker() -> String {
    addr("TPLBUILD_TEST_REMOTE_DOCKER_HOST", "tcp://127.0.0.1:2375")
}
fn tls_docker() -> String {
    addr("TPLBUILD_TEST_TLS_DOCKER_HOST", "tcp://127.0.0.1:2376")
}
fn tls_cert_path() -> String {
    addr(
        "TPLBUILD_TEST_TLS_DOCKER_CERT_PATH",
        "/var/lib/tplbuild-testbed/docker-tls/client",
    )
}
fn ssh_docker() -> String {
    addr(
        "TPLBUILD_TEST_SSH_DOCKER_HOST",
        "ssh://root@tplbuild-testbed",
    )
}
fn ssh_badkey_docker() -> String {
    addr(
        "TPLBUILD_TEST_SSH_BADKEY_DOCKER_HOST",
        "ssh://root@tplbuild-testbed-badkey",
    )
}
fn ssh_podman() -> String {
    addr(
        "TPLBUILD_TEST_SSH_PODMAN_HOST",
        "ssh://root@tplbuild-testbed/run/podman-vfs/podman.sock",
    )
}
fn vfs_podman() -> String {
    addr(
        "TPLBUILD_TEST_VFS_PODMAN_HOST",
        "unix:///run/podman-vfs/podman.sock",
    )
}

/// The engine at `host`, or `None` (the test skips) when the test bed's
/// remote engines are not up and not required.
async fn engine_at(host: &str) -> Option<Engine> {
    match connect_host(host).await {
        Ok(e) => Some(e),
        Err(e) if !testbed_required() => {
            eprintln!("skipping {host}: {e} (run scripts/testbed)");
            None
        }
        Err(e) => panic!("{host}: {e}"),
    }
}

/// The test bed's rootfs as an image on `engine` (loaded once per engine).
async fn base_on(engine: &Engine) -> String {
    let (tag, spec) = tokio::task::spawn_blocking(base_spec).await.unwrap();
    if !engine.has_image(&tag).await.unwrap() {
        engine
            .load_image(&tag, &spec)
            .await
            .unwrap_or_else(|e| panic!("loading into {}: {e:#}", engine.info().host));
    }
    tag
}

fn echo_spec(image: String, marker: &str) -> ContainerSpec {
    ContainerSpec {
        image,
        env: vec![format!("MARKER={marker}")],
        script: Some("echo \"$MARKER\"".into()),
        network: Network::None,
        platform: None,
    }
}

/// ssh processes that are children of this test process and still alive.
fn live_ssh_children() -> usize {
    let me = std::process::id().to_string();
    let mut n = 0;
    for entry in fs_err::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = fs_err::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|(_, c)| c).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if comm == "ssh" && fields.get(1) == Some(&me.as_str()) && fields.first() != Some(&"Z") {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn the_remote_dockerds_storage_is_invisible_here_and_it_is_not_local() {
    let Some(engine) = engine_at(&remote_docker()).await else {
        return;
    };
    assert_eq!(engine.info().host, remote_docker());
    assert_eq!(engine.info().kind, EngineKind::Docker);
    assert!(!engine.is_local(), "{:?}", engine.info());
    let image = base_on(&engine).await;
    let guard = ContainerGuard::new(
        &engine,
        engine.create(&echo_spec(image, "x")).await.unwrap(),
    );
    let inspect = engine.inspect(guard.container()).await;
    let upper = engine.upper_dir(guard.container()).await;
    guard.remove().await.unwrap();
    let inspect = inspect.unwrap();
    // The engine reports an overlay upper dir, a path in its own mount
    // namespace: nothing is there in ours.
    let data = inspect.graph_driver.expect("GraphDriver").data;
    let reported = data.get("UpperDir").expect("an UpperDir");
    assert!(
        !Path::new(reported).exists(),
        "{reported} is visible from the host: the remote engine's storage leaks"
    );
    assert_eq!(upper.unwrap(), None);
}

#[tokio::test]
async fn each_remote_engine_runs_a_step_its_output_arrives_and_nothing_is_left() {
    let engines = [
        (remote_docker(), EngineKind::Docker, false),
        (ssh_docker(), EngineKind::Docker, false),
        (ssh_podman(), EngineKind::Podman, false),
        (vfs_podman(), EngineKind::Podman, true),
    ];
    for (host, kind, local) in engines {
        let Some(engine) = engine_at(&host).await else {
            continue;
        };
        let info = engine.info().clone();
        assert_eq!(info.host, host);
        assert_eq!(info.kind, kind, "{info:?}");
        assert_eq!(info.api_version, "1.41", "{info:?}");
        assert!(!info.version.is_empty(), "{info:?}");
        assert_eq!(engine.is_local(), local, "{info:?}");

        let image = base_on(&engine).await;
        let marker = format!("hello from {host}");
        let c = engine.create(&echo_spec(image, &marker)).await.unwrap();
        let guard = ContainerGuard::new(&engine, c.clone());
        let mut lines = Vec::new();
        let code = engine.run(&c, |_, l| lines.push(l.to_string())).await;
        // vfs keeps no overlay upper dir, local or not.
        let upper = engine.upper_dir(&c).await;
        guard.remove().await.unwrap();
        assert_eq!(code.unwrap(), 0, "{host}: {lines:?}");
        assert_eq!(lines, [marker], "{host}");
        assert_eq!(upper.unwrap(), None, "{host}");
        assert!(!container_exists(&engine, &c.id).await, "{host}: {}", c.id);

        // The ssh children of this engine (an idle pooled connection, or
        // the tunnel) end with it.
        if host.starts_with("ssh://") {
            assert!(live_ssh_children() > 0, "{host}: no ssh child to watch");
        }
        drop(engine);
        let deadline = Instant::now() + Duration::from_secs(5);
        while live_ssh_children() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(live_ssh_children(), 0, "{host}: ssh outlived the engine");
    }
}

/// Write a Buildfile whose one step prints `marker` and fails.
fn failing_step(env: &Env, marker: &str) -> String {
    let dir = env.path("ctx");
    fs_err::create_dir_all(&dir).unwrap();
    let path = dir.join("Buildfile");
    fs_err::write(
        &path,
        format!("FROM {TEMPLATE}\nRUN echo {marker}; exit 3\n"),
    )
    .unwrap();
    path.display().to_string()
}

/// `tplbuild build` of [`failing_step`] with `vars` set and `args` added;
/// returns its output and pid. Every engine variable the machine may set is
/// removed first.
fn build_with(env: &Env, marker: &str, vars: &[(&str, &str)], args: &[&str]) -> (Output, u32) {
    let file = failing_step(env, marker);
    let mut cmd = env.cmd_with_engine(vars);
    let child = cmd
        .args(["build", "-f", &file, "--no-cache", "--progress", "plain"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "$ {vars:?} tplbuild build {args:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, pid)
}

/// Whether the step's output (a line of its own, indented) holds `marker`
/// (the step's header line also names it).
fn printed(stderr: &str, marker: &str) -> bool {
    stderr.lines().any(|l| l.trim() == marker)
}

/// The step ran on the engine at `host` and failed as written; the build
/// removed its container there.
fn assert_step_ran_at(out: &Output, pid: u32, marker: &str, host: &str, cli_host: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The engine line ends at the host, or goes on to say that a variable
    // naming the other engine is not used.
    assert!(
        err.contains(&format!(") at {host}\n")) || err.contains(&format!(") at {host} (")),
        "{err}"
    );
    assert!(printed(&err, marker), "{err}");
    assert!(err.contains("failed with exit code 3"), "{err}");
    let left = sh_ok(&format!(
        "docker -H {cli_host} ps -aq --filter label=dev.tplbuild.pid={pid}"
    ));
    assert_eq!(left.trim(), "", "containers left on {host}");
}

fn bed_up(what: &str) -> bool {
    if !testbed(what) {
        return false;
    }
    let up = std::net::TcpStream::connect("127.0.0.1:2375").is_ok();
    if !up {
        eprintln!("skipping {what}: the remote dockerd is not up (run scripts/testbed)");
        assert!(!testbed_required(), "the remote dockerd must be up here");
    }
    up
}

#[test]
fn docker_host_with_tls_verify_and_client_certificates_runs_the_step_there() {
    if !bed_up("TLS DOCKER_HOST") {
        return;
    }
    template();
    let env = Env::new();
    let (tls, certs) = (tls_docker(), tls_cert_path());
    let (out, pid) = build_with(
        &env,
        "marker-tls",
        &[
            ("DOCKER_HOST", &tls),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", &certs),
        ],
        &[],
    );
    assert_step_ran_at(&out, pid, "marker-tls", &tls, &remote_docker());

    // Without the client certificate the TLS front refuses us, and the
    // error says where and why.
    let (out, _) = build_with(
        &env,
        "marker-tls",
        &[("DOCKER_HOST", &tls), ("DOCKER_TLS_VERIFY", "1")],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "the engine DOCKER_HOST names did not answer; tried {tls}"
        )),
        "{err}"
    );
    // What rustls reports depends on when the engine's alert arrives
    // (TLS 1.3 finishes the client's side of the handshake first), so the
    // hint, not the cause, is what says why.
    assert!(err.contains("no client certificate was sent"), "{err}");
}

#[test]
fn docker_contexts_made_by_the_docker_cli_are_followed() {
    if !bed_up("docker contexts") {
        return;
    }
    template();
    let env = Env::new();
    let config = env.path("docker-config");
    let certs = tls_cert_path();
    let docker = |args: &str| sh_ok(&format!("docker --config {} {args}", config.display()));
    docker(&format!(
        "context create tb-plain --docker host={}",
        remote_docker()
    ));
    docker(&format!(
        "context create tb-tls --docker host={},ca={certs}/ca.pem,cert={certs}/cert.pem,key={certs}/key.pem",
        tls_docker()
    ));
    // `docker context use` writes currentContext into config.json.
    docker("context use tb-plain");
    let (out, pid) = build_with(&env, "marker-context", &[], &[]);
    assert_step_ran_at(
        &out,
        pid,
        "marker-context",
        &remote_docker(),
        &remote_docker(),
    );
    // DOCKER_CONTEXT wins over currentContext; the TLS files are the
    // context's own copies.
    let (out, pid) = build_with(
        &env,
        "marker-context-tls",
        &[("DOCKER_CONTEXT", "tb-tls")],
        &[],
    );
    assert_step_ran_at(
        &out,
        pid,
        "marker-context-tls",
        &tls_docker(),
        &remote_docker(),
    );
    // And a context that is gone is named in the error.
    let (out, _) = build_with(&env, "x", &[("DOCKER_CONTEXT", "tb-gone")], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("\"tb-gone\" (DOCKER_CONTEXT) does not exist"),
        "{err}"
    );
}

#[test]
fn docker_host_over_ssh_and_container_host_over_ssh_run_the_step_there() {
    if !bed_up("ssh engines") {
        return;
    }
    template();
    let env = Env::new();
    let ssh = ssh_docker();
    let (out, pid) = build_with(&env, "marker-ssh", &[("DOCKER_HOST", &ssh)], &[]);
    assert_step_ran_at(&out, pid, "marker-ssh", &ssh, &remote_docker());
    let podman = ssh_podman();
    let (out, pid) = build_with(
        &env,
        "marker-ssh-podman",
        &[
            ("CONTAINER_HOST", &podman),
            ("DOCKER_HOST", "unix:///nonexistent.sock"),
        ],
        &["--engine", "podman"],
    );
    assert_step_ran_at(&out, pid, "marker-ssh-podman", &podman, &vfs_podman());
    // The DOCKER_HOST the user also set is named as not used.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("(DOCKER_HOST=unix:///nonexistent.sock is for the other engine and not used)"),
        "{err}"
    );
}

/// The error of a build whose engine settings name an engine that does not
/// answer.
fn unreachable(vars: &[(&str, &str)]) -> String {
    let env = Env::new();
    let (out, _) = build_with(&env, "never-printed", vars, &[]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !printed(&err, "never-printed"),
        "a step ran somewhere: {err}"
    );
    // Docker's socket is up on the test bed: no fallback to it.
    assert!(!err.contains("using docker"), "{err}");
    assert!(err.contains("hint: "), "{err}");
    err
}

#[test]
fn a_docker_host_that_refuses_is_an_error_naming_it_and_no_other_engine_is_used() {
    if !bed_up("refusing DOCKER_HOST") {
        return;
    }
    template();
    let err = unreachable(&[("DOCKER_HOST", "tcp://127.0.0.1:1")]);
    assert!(
        err.contains("the engine DOCKER_HOST names did not answer; tried tcp://127.0.0.1:1: "),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
    assert!(err.contains("unset it to use the local engine"), "{err}");
}

#[test]
fn ssh_with_a_key_the_host_refuses_shows_what_ssh_said() {
    if !bed_up("ssh bad key") {
        return;
    }
    template();
    let host = ssh_badkey_docker();
    let err = unreachable(&[("DOCKER_HOST", &host)]);
    assert!(
        err.contains(&format!(
            "the engine DOCKER_HOST names did not answer; tried {host}: "
        )),
        "{err}"
    );
    assert!(err.contains("exited with status 255"), "{err}");
    assert!(err.contains("Permission denied (publickey)"), "{err}");
    assert!(err.contains("BatchMode=yes"), "{err}");
}

#[test]
fn ssh_to_a_port_nobody_listens_on_shows_what_ssh_said() {
    if !bed_up("ssh closed port") {
        return;
    }
    template();
    let err = unreachable(&[("DOCKER_HOST", "ssh://root@tplbuild-testbed:1")]);
    assert!(
        err.contains("tried ssh://root@tplbuild-testbed:1: `ssh "),
        "{err}"
    );
    assert!(err.contains("port 1: Connection refused"), "{err}");
}
