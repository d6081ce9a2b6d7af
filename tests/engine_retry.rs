//! A step whose container the engine fails to attach to is run again in a
//! fresh container. The real Docker daemon sits behind a small proxy on a
//! unix socket that answers the first attach with the 409 Podman 4.3 gives
//! now and then ("preparing container … for attach: write child: broken
//! pipe") and passes everything else through.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

const DOCKER: &str = "/var/run/docker.sock";

/// Counts of what the proxy saw.
#[derive(Default)]
struct Seen {
    attaches: AtomicUsize,
    refused: AtomicUsize,
}

async fn serve(mut client: UnixStream, seen: Arc<Seen>, refuse: usize) {
    let Some(head) = read_head(&mut client).await else {
        return;
    };
    let head = String::from_utf8_lossy(&head).into_owned();
    let line = head.lines().next().unwrap_or_default().to_string();
    if line.starts_with("POST ") && line.contains("/attach?") {
        let n = seen.attaches.fetch_add(1, Ordering::SeqCst);
        if n < refuse {
            seen.refused.fetch_add(1, Ordering::SeqCst);
            let body = r#"{"message":"preparing container for attach: write child: broken pipe"}"#;
            let reply = format!(
                "HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(reply.as_bytes()).await;
            return;
        }
    }
    let Ok(mut upstream) = UnixStream::connect(DOCKER).await else {
        return;
    };
    if upstream
        .write_all(one_request_per_connection(&head).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Start the proxy; it refuses the first `refuse` attaches.
fn proxy(dir: &Path, refuse: usize) -> (PathBuf, Arc<Seen>) {
    let sock = dir.join("engine.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    listener.set_nonblocking(true).unwrap();
    let seen = Arc::new(Seen::default());
    let s2 = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = UnixListener::from_std(listener).unwrap();
            while let Ok((c, _)) = listener.accept().await {
                tokio::spawn(serve(c, s2.clone(), refuse));
            }
        });
    });
    (sock, seen)
}

/// The build's output and its pid, which labels the step containers it
/// made (`dev.tplbuild.pid`).
fn build_through(env: &Env, sock: &Path) -> (std::process::Output, u32) {
    let bf = env.path("ctx/Buildfile");
    fs_err::create_dir_all(bf.parent().unwrap()).unwrap();
    fs_err::write(
        &bf,
        format!("FROM {TEMPLATE}\nRUN echo retried > /etc/retried\n"),
    )
    .unwrap();
    let child = env
        .cmd()
        .env("DOCKER_HOST", format!("unix://{}", sock.display()))
        .args(["build", "-f", bf.to_str().unwrap(), "--engine", "docker"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, pid)
}

/// Both cases in one test: they share the proxy's way of counting.
#[test]
fn a_step_the_engine_cannot_attach_to_runs_again_in_a_new_container() {
    if !testbed("engine retry") || !has_socket(DOCKER) {
        return;
    }
    template();
    // This build's step containers only: other builds may run beside it.
    let containers = |pid: u32| {
        sh_ok(&format!(
            "docker ps -aq --filter label=dev.tplbuild.pid={pid}"
        ))
    };

    // Refused once: the step runs in a second container, with a warning.
    let env = Env::new();
    // Unix socket paths are short: keep it in a short folder.
    let dir = tempfile::tempdir().unwrap();
    let (sock, seen) = proxy(dir.path(), 1);
    let (out, pid) = build_through(&env, &sock);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("write child: broken pipe")
            && stderr.contains("trying again in a new container"),
        "the retry is told: {stderr}"
    );
    assert_eq!(seen.refused.load(Ordering::SeqCst), 1);
    assert_eq!(
        seen.attaches.load(Ordering::SeqCst),
        2,
        "one refused, one served"
    );
    assert!(containers(pid).trim().is_empty(), "no container is left");

    // Refused every time: three containers, then the step's error.
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let (sock, seen) = proxy(dir.path(), usize::MAX);
    let (out, pid) = build_through(&env, &sock);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("attaching to container"), "{stderr}");
    assert!(stderr.contains("Buildfile:2"), "names the step: {stderr}");
    assert_eq!(seen.attaches.load(Ordering::SeqCst), 3);
    assert!(containers(pid).trim().is_empty(), "no container is left");
}
