//! What goes wrong with an engine on another machine: the connection drops
//! while tplbuild reads a step's changes, and the user presses Ctrl-C while
//! a step runs there. Against the test bed's "remote" dockerd
//! (tcp://127.0.0.1:2375, storage in a mount namespace of its own), so the
//! step's diff can only come through the API.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn remote() -> String {
    std::env::var("TPLBUILD_TEST_REMOTE_DOCKER_HOST")
        .unwrap_or_else(|_| "tcp://127.0.0.1:2375".to_string())
}

fn bed_up(what: &str) -> bool {
    if !testbed(what) {
        return false;
    }
    let up = sh(&format!("docker -H {} version", remote()))
        .status
        .success();
    if !up {
        eprintln!(
            "skipping {what}: no remote dockerd at {} (run scripts/testbed)",
            remote()
        );
        assert!(!testbed_required(), "the test bed is required here");
    }
    up
}

fn buildfile(env: &Env, body: &str) -> String {
    let dir = env.path("bf");
    fs_err::create_dir_all(&dir).unwrap();
    let path = dir.join("Buildfile");
    fs_err::write(&path, format!("FROM {TEMPLATE}\n{body}")).unwrap();
    path.display().to_string()
}

/// tplbuild aimed at `host` and nothing else.
fn cmd_at(env: &Env, host: &str) -> std::process::Command {
    env.cmd_with_engine(&[("DOCKER_HOST", host)])
}

/// The remote engine's step containers a given tplbuild process made.
fn remote_containers_of(pid: u32) -> usize {
    sh_ok(&format!(
        "docker -H {} ps -aq --filter label=dev.tplbuild.step --filter label=dev.tplbuild.pid={pid}",
        remote()
    ))
    .lines()
    .count()
}

/// A proxy in front of the remote engine that passes everything through,
/// except that the answer to `GET /containers/{id}/export` is cut after
/// `cut` bytes. Returns its address and how many exports it cut.
async fn cutting_proxy(upstream: String, cut: usize) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("tcp://{}", listener.local_addr().unwrap());
    let cuts = Arc::new(AtomicUsize::new(0));
    let seen = cuts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut client).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&head).into_owned();
                let line = head.lines().next().unwrap_or_default().to_string();
                let export = line.starts_with("GET ") && line.contains("/export");
                let Ok(mut up) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let head = one_request_per_connection(&head);
                if up.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = up.into_split();
                let to_up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut uw).await;
                });
                let mut sent = 0usize;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let n = if export { n.min(cut - sent) } else { n };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                    if export && sent >= cut {
                        seen.fetch_add(1, Ordering::SeqCst);
                        break; // hang up mid-stream
                    }
                }
                to_up.abort();
            });
        }
    });
    (addr, cuts)
}

#[test]
fn an_engine_that_drops_the_connection_mid_export_is_a_clear_error_and_the_step_runs_again() {
    if !bed_up("export cut") {
        return;
    }
    template();
    let env = Env::new();
    // Big enough that the export stream outlives the cut.
    let f = buildfile(
        &env,
        "RUN head -c 3000000 /dev/urandom > /blob && echo done\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream = remote().trim_start_matches("tcp://").to_string();
    let (proxy, cuts) = rt.block_on(cutting_proxy(upstream, 256 * 1024));

    let child = cmd_at(&env, &proxy)
        .args(["build", "-f", &f, "--progress", "plain"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build should fail:\n{err}");
    assert!(
        cuts.load(Ordering::SeqCst) >= 1,
        "the proxy never cut an export"
    );
    assert!(
        err.contains("Buildfile:2") && err.contains("container"),
        "the error should name the step and say what was being read:\n{}",
        last_lines(&err, 15)
    );
    assert!(!err.contains("panicked"), "{err}");
    eprintln!("the error, as the user sees it:\n{}", last_lines(&err, 6));
    // Only that stream was cut: the container was removed through the
    // same proxy.
    assert_eq!(
        remote_containers_of(pid),
        0,
        "the step container was left behind"
    );
    // Nothing was recorded for the step: the next build runs it again,
    // straight to the engine this time, and succeeds.
    let out = cmd_at(&env, &remote())
        .args(["build", "-f", &f, "--progress", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        last_lines(&String::from_utf8_lossy(&out.stderr), 20)
    );
    assert_eq!(statuses(&json_events(&out)), ["MISS"]);
    drop(rt);
}

#[test]
fn ctrl_c_during_a_step_on_a_remote_engine_removes_the_container_there() {
    if !bed_up("remote interrupt") {
        return;
    }
    template();
    let env = Env::new();
    let f = buildfile(&env, "RUN echo started && sleep 60\n");
    let mut child = cmd_at(&env, &remote())
        .args(["build", "-f", &f, "--progress", "plain"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t0 = Instant::now();
    while remote_containers_of(pid) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "the step never started"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_secs(1));
    sh_ok(&format!("kill -INT {pid}"));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(
        remote_containers_of(pid),
        0,
        "the step container was left on the remote engine"
    );
    let plan = cmd_at(&env, &remote())
        .args(["plan", "-f", &f])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("MISS"),
        "an interrupted step must not be cached"
    );
}
