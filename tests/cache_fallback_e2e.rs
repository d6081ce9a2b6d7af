//! A `--cache-from` cache never fails a build: a step whose cached layer
//! cannot be had (deleted from the registry, or served with the wrong
//! bytes) runs instead, with one warning naming the step and the layer,
//! and the result is the same as the first build's.
//!
//! Machine A builds with `--cache-to`; machine B (an empty store) builds
//! the same Buildfile with `--cache-from` after the cache was damaged.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: &str = "INSTALL hello\nCOPY overlay/ /\nRUN cat /etc/motd > /motd.copy\n";

fn write_buildfile(dir: &Path) -> String {
    fs_err::create_dir_all(dir.join("overlay/etc")).unwrap();
    fs_err::write(dir.join("overlay/etc/motd"), "fallback\n").unwrap();
    fs_err::write(dir.join("Buildfile"), format!("FROM {TEMPLATE}\n{BODY}")).unwrap();
    dir.join("Buildfile").display().to_string()
}

fn unique(name: &str) -> String {
    format!(
        "cache-fallback/{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// `tplbuild build` with JSON progress, a tar output, and `extra`.
fn build(env: &Env, file: &str, tar: &Path, extra: &[&str]) -> Vec<Value> {
    let out_arg = format!("type=tar,dest={}", tar.display());
    let mut args = vec![
        "build",
        "-f",
        file,
        "--engine",
        "docker",
        "--progress",
        "json",
        "-o",
        &out_arg,
    ];
    args.extend_from_slice(extra);
    let out = env.run(&args);
    assert!(
        out.status.success(),
        "the build failed; the end of its stderr:\n{}",
        last_lines(&String::from_utf8_lossy(&out.stderr), 25)
    );
    json_events(&out)
}

/// The layer digest of step `n` (1-based) in a build's events.
fn step_layer(events: &[Value], n: u64) -> String {
    events
        .iter()
        .find(|e| e["event"] == "step-done" && e["step"] == n)
        .and_then(|e| e["layer"]["digest"].as_str())
        .expect("the step's layer")
        .to_string()
}

fn warnings(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "warning")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Machine A: build, push the cache, and keep the tar output.
struct First {
    env: Env,
    events: Vec<Value>,
    tar: Vec<u8>,
}

fn first_build(cache: &str) -> First {
    let env = Env::new();
    let file = write_buildfile(&env.path("bf"));
    let tar = env.path("a.tar");
    let events = build(&env, &file, &tar, &["--cache-to", cache]);
    let tar = fs_err::read(&tar).unwrap();
    First { env, events, tar }
}

/// Machine B's build compared with A's: the damaged step ran, the others
/// came from the cache, one warning named the step and the layer, and the
/// image and the rootfs are A's.
fn assert_same_result_with_one_warning(a: &First, b: &[Value], b_tar: &Path, layer: &str) {
    assert_eq!(
        statuses(b),
        ["HIT (registry)", "MISS", "HIT (registry)"],
        "only the step whose layer is unusable runs"
    );
    let w = warnings(b);
    let about: Vec<&String> = w.iter().filter(|w| w.contains(layer)).collect();
    assert_eq!(about.len(), 1, "one warning about the layer: {w:?}");
    assert!(
        about[0].contains("step 2") && about[0].contains("COPY overlay/ /"),
        "the warning names the step: {}",
        about[0]
    );
    assert_eq!(
        w.iter().filter(|w| w.contains("cache")).count(),
        1,
        "no other cache warning: {w:?}"
    );
    assert_eq!(
        done(b)["digest"],
        done(&a.events)["digest"],
        "the same image"
    );
    assert!(
        fs_err::read(b_tar).unwrap() == a.tar,
        "the same rootfs tarball"
    );
}

#[test]
fn a_cache_layer_deleted_from_the_registry_is_a_warning_and_the_step_runs() {
    if !testbed("cache layer deleted") {
        return;
    }
    template();
    let repo = unique("deleted");
    let cache = format!("{REGISTRY}/{repo}:buildcache");
    let a = first_build(&cache);
    let layer = step_layer(&a.events, 2);
    // The registry's DELETE blob API (the test bed enables deletes).
    let status = sh_ok(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' -X DELETE http://{REGISTRY}/v2/{repo}/blobs/{layer}"
    ));
    assert_eq!(status.trim(), "202", "deleting {layer}");

    let b = Env::new();
    let file = write_buildfile(&b.path("bf"));
    // `plan` says what the build will do: the step misses, and why.
    let plan = b.run(&["plan", "-f", &file, "--cache-from", &cache]);
    assert!(plan.status.success());
    let plan_out = String::from_utf8_lossy(&plan.stdout);
    assert_eq!(plan_out.matches("HIT").count(), 1, "{plan_out}");
    assert!(
        String::from_utf8_lossy(&plan.stderr).contains(&layer),
        "plan warns about the layer"
    );
    let tar = b.path("b.tar");
    let events = build(&b, &file, &tar, &["--cache-from", &cache]);
    assert_same_result_with_one_warning(&a, &events, &tar, &layer);
    drop(a.env);
}

#[test]
fn a_cache_layer_served_with_wrong_bytes_is_a_warning_and_the_step_runs() {
    if !testbed("cache layer corrupt") {
        return;
    }
    template();
    let repo = unique("corrupt");
    let a = first_build(&format!("{REGISTRY}/{repo}:buildcache"));
    let layer = step_layer(&a.events, 2);
    let proxy = CorruptingProxy::start(&layer);
    let cache = format!("{}/{repo}:buildcache", proxy.addr);

    let b = Env::new();
    let file = write_buildfile(&b.path("bf"));
    let tar = b.path("b.tar");
    let events = build(
        &b,
        &file,
        &tar,
        // Both, after the subcommand: clap's later occurrences of a
        // global flag replace those given before the subcommand.
        &[
            "--cache-from",
            &cache,
            "--insecure-registry",
            REGISTRY,
            "--insecure-registry",
            &proxy.addr,
        ],
    );
    assert!(
        proxy.corrupted.load(Ordering::SeqCst) >= 1,
        "the proxy served the corrupt layer"
    );
    assert_same_result_with_one_warning(&a, &events, &tar, &layer);
}

/// A plain-HTTP proxy in front of the test bed's registry that flips the
/// last byte of one blob (same length, wrong digest) and passes the rest.
struct CorruptingProxy {
    addr: String,
    corrupted: Arc<AtomicUsize>,
}

impl CorruptingProxy {
    fn start(digest: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let corrupted = Arc::new(AtomicUsize::new(0));
        let (count, target) = (corrupted.clone(), format!("/blobs/{digest}"));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                while let Ok((c, _)) = listener.accept().await {
                    tokio::spawn(serve(c, target.clone(), count.clone()));
                }
            });
        });
        CorruptingProxy { addr, corrupted }
    }
}

async fn serve(mut client: TcpStream, target: String, count: Arc<AtomicUsize>) {
    // GET and HEAD carry no body; other requests' bodies follow through
    // the copy.
    let Some(head) = read_head(&mut client).await else {
        return;
    };
    let head = String::from_utf8_lossy(&head).into_owned();
    let line = head.lines().next().unwrap_or_default().to_string();
    let Ok(mut upstream) = TcpStream::connect(REGISTRY).await else {
        return;
    };
    if upstream
        .write_all(one_request_per_connection(&head).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    if !(line.starts_with("GET ") && line.contains(&target)) {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        return;
    }
    // The whole answer (Connection: close ends it), one body byte flipped.
    let mut answer = vec![];
    if upstream.read_to_end(&mut answer).await.is_err() {
        return;
    }
    let body_at = answer.windows(4).position(|w| w == b"\r\n\r\n");
    if let (Some(at), true) = (body_at, answer.starts_with(b"HTTP/1.1 200")) {
        if answer.len() > at + 4 {
            *answer.last_mut().unwrap() ^= 0xff;
            count.fetch_add(1, Ordering::SeqCst);
        }
    }
    let _ = client.write_all(&answer).await;
}
