//! The engine module against the real Docker and Podman of the test bed
//! (`scripts/testbed`). Each test runs on both engines and skips, saying
//! why, an engine whose socket is absent.
//!
//! The base image is the test bed's mmdebstrap minbase rootfs, loaded as a
//! one-layer docker-archive; its config sets `Entrypoint: ["false"]` so
//! that every RUN also checks that a template's entrypoint is cleared.
//!
//! `measure_apt_step_on_both_engines` (ignored: it talks to Debian's
//! archive and takes a minute) prints the numbers the design relies on.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::OnceCell;
use tplbuild::engine::{
    connect, Change, ChangeKind, ContainerGuard, ContainerSpec, Engine, EngineChoice, EngineError,
    EngineKind, LoadLayer, LoadSpec, Network, LABEL_HOST, LABEL_PID, LABEL_STARTED, LABEL_STEP,
};
use tplbuild::oci::{Compression, Digest, Sha256};

const DOCKER_SOCKET: &str = "/var/run/docker.sock";
const PODMAN_SOCKET: &str = "/run/podman/podman.sock";
const ROOTFS: &str = "/var/lib/tplbuild-testbed/cache/bookworm-minbase.tar";

/// The engines present, each connected through its own socket.
async fn engines() -> Vec<Engine> {
    let mut out = Vec::new();
    for (choice, socket) in [
        (EngineChoice::Docker, DOCKER_SOCKET),
        (EngineChoice::Podman, PODMAN_SOCKET),
    ] {
        if !Path::new(socket).exists() {
            eprintln!("skipping {choice:?}: {socket} is absent (run scripts/testbed)");
            continue;
        }
        let engine = if choice == EngineChoice::Docker {
            // Never follow a DOCKER_HOST the environment happens to set.
            let hosts = format!("unix://{socket}");
            std::env::set_var("DOCKER_HOST", &hosts);
            connect(choice).await
        } else {
            connect(choice).await
        };
        out.push(engine.unwrap_or_else(|e| panic!("{choice:?} at {socket}: {e}")));
    }
    out
}

fn kind(e: &Engine) -> EngineKind {
    e.info().kind
}

/// A layer tar from `(path, content)` pairs, stored gzip-compressed.
fn small_layer(dir: &Path, files: &[(&str, &[u8])]) -> LoadLayer {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        b.append_data(&mut h, path, *content).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    io::Write::write_all(&mut gz, &tar).unwrap();
    let path = dir.join(format!("{}.tar.gz", Digest::of(&tar).hex()));
    fs_err::write(&path, gz.finish().unwrap()).unwrap();
    LoadLayer {
        blob_path: path,
        compression: Compression::Gzip,
        diff_id: Digest::of(&tar),
        uncompressed_size: tar.len() as u64,
    }
}

fn config_for(layers: &[&LoadLayer], entrypoint: Option<&[&str]>) -> Vec<u8> {
    let mut config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>() },
    });
    if let Some(ep) = entrypoint {
        config["config"]["Entrypoint"] = serde_json::json!(ep);
    }
    serde_json::to_vec(&config).unwrap()
}

/// The test bed's rootfs as one uncompressed layer tar. The test bed may
/// have left a directory under the `.tar` name (mmdebstrap picks its output
/// format from the extension of `$out.tmp`); then we tar it up once.
fn rootfs_layer() -> LoadLayer {
    static LAYER: std::sync::OnceLock<LoadLayer> = std::sync::OnceLock::new();
    LAYER
        .get_or_init(|| {
            let src =
                PathBuf::from(std::env::var("TPLBUILD_TEST_ROOTFS_TAR").unwrap_or(ROOTFS.into()));
            let tar_path = if src.is_dir() {
                let out =
                    Path::new(env!("CARGO_TARGET_TMPDIR")).join("engine-bookworm-minbase.tar");
                if !out.exists() {
                    let tmp = out.with_extension("tmp");
                    let status = std::process::Command::new("tar")
                        .args(["--numeric-owner", "--xattrs", "-C"])
                        .arg(&src)
                        .arg("-cf")
                        .arg(&tmp)
                        .arg(".")
                        .status()
                        .unwrap();
                    assert!(status.success(), "tar of {} failed", src.display());
                    fs_err::rename(&tmp, &out).unwrap();
                }
                out
            } else {
                src
            };
            let mut file = fs_err::File::open(&tar_path).unwrap();
            let mut hasher = <Sha256 as sha2::Digest>::new();
            let size = io::copy(&mut file, &mut HashWriter(&mut hasher)).unwrap();
            LoadLayer {
                blob_path: tar_path,
                compression: Compression::None,
                diff_id: Digest::from_hasher(hasher),
                uncompressed_size: size,
            }
        })
        .clone()
}

struct HashWriter<'a>(&'a mut Sha256);
impl io::Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        sha2::Digest::update(self.0, b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn base_spec() -> (String, LoadSpec) {
    let layer = rootfs_layer();
    let tag = format!(
        "localhost/tplbuild-test/bookworm:{}",
        &layer.diff_id.hex()[..12]
    );
    let config = config_for(&[&layer], Some(&["false"]));
    (
        tag,
        LoadSpec {
            config_json: config,
            layers: vec![layer],
        },
    )
}

/// The base image's tag, loaded into `engine` once per test process.
async fn base_image(engine: &Engine) -> String {
    static DOCKER: OnceCell<String> = OnceCell::const_new();
    static PODMAN: OnceCell<String> = OnceCell::const_new();
    let cell = match kind(engine) {
        EngineKind::Docker => &DOCKER,
        EngineKind::Podman => &PODMAN,
    };
    cell.get_or_init(|| async {
        let (tag, spec) = tokio::task::spawn_blocking(base_spec).await.unwrap();
        if !engine.has_image(&tag).await.unwrap() {
            engine.load_image(&tag, &spec).await.unwrap();
        }
        tag
    })
    .await
    .clone()
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o600);
        h.set_uid(1234);
        h.set_gid(5678);
        h.set_mtime(1_000_000);
        b.append_data(&mut h, path, *content).unwrap();
    }
    b.into_inner().unwrap()
}

fn as_stream(data: Vec<u8>) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let chunks: Vec<io::Result<Bytes>> = data
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(chunks)
}

/// Files of an exported tar: path (without leading `./` or `/`) → content.
async fn exported_files(
    engine: &Engine,
    c: &tplbuild::engine::Container,
    wanted: &[&str],
) -> BTreeMap<String, Vec<u8>> {
    let mut stream = engine.export(c).await.unwrap();
    let mut all = Vec::new();
    while let Some(chunk) = stream.next().await {
        all.extend_from_slice(&chunk.unwrap());
    }
    let mut out = BTreeMap::new();
    for e in tar::Archive::new(&all[..]).entries().unwrap() {
        let mut e = e.unwrap();
        let p = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        if wanted.contains(&p.as_str()) {
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(p, data);
        }
    }
    out
}

async fn container_exists(engine: &Engine, id: &str) -> bool {
    engine
        .inspect(&tplbuild::engine::Container { id: id.to_string() })
        .await
        .is_ok()
}

#[tokio::test]
async fn connect_reports_each_engine_with_api_1_41() {
    for engine in engines().await {
        let info = engine.info();
        assert_eq!(info.api_version, "1.41", "{info:?}");
        assert!(!info.version.is_empty(), "{info:?}");
        match info.kind {
            EngineKind::Docker => assert_eq!(info.host, format!("unix://{DOCKER_SOCKET}")),
            EngineKind::Podman => assert_eq!(info.host, format!("unix://{PODMAN_SOCKET}")),
        }
    }
}

#[tokio::test]
async fn load_image_makes_the_tag_and_remove_image_takes_it_away_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let layer = small_layer(dir.path(), &[("hello.txt", b"hello")]);
    let spec = LoadSpec {
        config_json: config_for(&[&layer], None),
        layers: vec![layer],
    };
    for engine in engines().await {
        let tag = format!(
            "localhost/tplbuild-test/small:{}-{}",
            kind(&engine),
            std::process::id()
        );
        assert!(!engine.has_image(&tag).await.unwrap());
        engine
            .load_image(&tag, &spec)
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e:#?}", kind(&engine)));
        assert!(engine.has_image(&tag).await.unwrap(), "{:?}", kind(&engine));
        engine.remove_image(&tag).await.unwrap();
        assert!(
            !engine.has_image(&tag).await.unwrap(),
            "{:?}",
            kind(&engine)
        );
        engine.remove_image(&tag).await.unwrap();
    }
}

#[tokio::test]
async fn load_image_refuses_a_blob_that_does_not_match_its_diff_id_and_loads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut layer = small_layer(dir.path(), &[("hello.txt", b"hello")]);
    layer.diff_id = Digest::of(b"not this layer");
    let spec = LoadSpec {
        config_json: config_for(&[&layer], None),
        layers: vec![layer],
    };
    for engine in engines().await {
        let tag = format!(
            "localhost/tplbuild-test/bad:{}-{}",
            kind(&engine),
            std::process::id()
        );
        let err = engine.load_image(&tag, &spec).await.unwrap_err();
        assert!(
            matches!(err, EngineError::LayerMismatch { .. }),
            "{:?}: {err}",
            kind(&engine)
        );
        assert!(
            !engine.has_image(&tag).await.unwrap(),
            "{:?}",
            kind(&engine)
        );
    }
}

#[tokio::test]
async fn run_streams_stdout_and_stderr_lines_passes_env_and_returns_the_exit_code() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let spec = ContainerSpec {
            image,
            env: vec!["GREETING=hello world".into()],
            script: Some("echo \"$GREETING\"; echo to-stderr >&2; pwd; id -u; exit 7".into()),
            network: Network::None,
        };
        let guard = ContainerGuard::new(&engine, engine.create(&spec).await.unwrap());
        let mut lines = Vec::new();
        let code = engine
            .run(guard.container(), |l| lines.push(l.to_string()))
            .await;
        guard.remove().await.unwrap();
        let code = code.unwrap_or_else(|e| panic!("{:?}: {e:#?}", kind(&engine)));
        // exit 7, not `false`'s 1: the image's entrypoint was cleared.
        assert_eq!(code, 7, "{:?}: {lines:?}", kind(&engine));
        for want in ["hello world", "to-stderr", "/", "0"] {
            assert!(
                lines.iter().any(|l| l == want),
                "{:?}: {want:?} not in {lines:?}",
                kind(&engine)
            );
        }
    }
}

#[tokio::test]
async fn run_of_a_successful_script_returns_zero() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let spec = ContainerSpec {
            image,
            script: Some("true".into()),
            ..Default::default()
        };
        let guard = ContainerGuard::new(&engine, engine.create(&spec).await.unwrap());
        let code = engine.run(guard.container(), |_| {}).await;
        guard.remove().await.unwrap();
        assert_eq!(code.unwrap(), 0, "{:?}", kind(&engine));
    }
}

#[tokio::test]
async fn create_labels_the_container_as_a_tplbuild_step_of_this_process() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let spec = ContainerSpec {
            image,
            ..Default::default()
        };
        let guard = ContainerGuard::new(&engine, engine.create(&spec).await.unwrap());
        let inspect = engine.inspect(guard.container()).await.unwrap();
        let labels = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let network = inspect
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.clone());
        guard.remove().await.unwrap();
        assert_eq!(
            labels.get(LABEL_STEP).map(String::as_str),
            Some("1"),
            "{:?}: {labels:?}",
            kind(&engine)
        );
        assert_eq!(labels.get(LABEL_PID), Some(&std::process::id().to_string()));
        assert!(labels
            .get(LABEL_STARTED)
            .is_some_and(|s| s.parse::<u64>().is_ok()));
        assert!(labels.contains_key(LABEL_HOST));
        assert_eq!(network.as_deref(), Some("host"), "{:?}", kind(&engine));
    }
}

/// COPY's path: upload into a never-started container, then read the diff
/// both ways (changes + export, and the upper dir).
#[tokio::test]
async fn uploaded_files_show_in_changes_export_and_upper_dir() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let spec = ContainerSpec {
            image,
            script: None,
            ..Default::default()
        };
        let guard = ContainerGuard::new(&engine, engine.create(&spec).await.unwrap());
        let c = guard.container().clone();
        let tar = tar_of(&[("copied/hello.txt", b"hello from the host\n")]);
        engine
            .upload(&c, "/opt", as_stream(tar))
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e:#?}", kind(&engine)));

        let changes = engine.changes(&c).await.unwrap();
        let want = Change {
            path: "/opt/copied/hello.txt".into(),
            kind: ChangeKind::Added,
        };
        assert!(changes.contains(&want), "{:?}: {changes:?}", kind(&engine));

        let files = exported_files(&engine, &c, &["opt/copied/hello.txt"]).await;
        assert_eq!(
            files.get("opt/copied/hello.txt").map(Vec::as_slice),
            Some(&b"hello from the host\n"[..])
        );

        let upper = engine
            .upper_dir(&c)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{:?}: no upper dir", kind(&engine)));
        let copied = upper.join("opt/copied/hello.txt");
        assert_eq!(fs_err::read(&copied).unwrap(), b"hello from the host\n");
        let meta = std::os::unix::fs::MetadataExt::uid(&fs_err::metadata(&copied).unwrap());
        assert_eq!(
            meta,
            1234,
            "{:?}: the archive API keeps numeric owners",
            kind(&engine)
        );
        guard.remove().await.unwrap();
        assert!(!container_exists(&engine, &c.id).await);
    }
}

#[tokio::test]
async fn remove_is_idempotent() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let c = engine
            .create(&ContainerSpec {
                image,
                ..Default::default()
            })
            .await
            .unwrap();
        engine.remove(&c).await.unwrap();
        assert!(!container_exists(&engine, &c.id).await);
        engine.remove(&c).await.unwrap();
    }
}

#[tokio::test]
async fn remove_kills_a_running_container() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let spec = ContainerSpec {
            image,
            script: Some("echo started; sleep 300".into()),
            network: Network::None,
            ..Default::default()
        };
        let c = engine.create(&spec).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let run = {
            let (engine, c) = (engine.clone(), c.clone());
            tokio::spawn(async move {
                engine
                    .run(&c, move |l| {
                        let _ = tx.send(l.to_string());
                    })
                    .await
            })
        };
        let first = rx.recv().await;
        if first.is_none() {
            panic!("{:?}: run ended early: {:?}", kind(&engine), run.await);
        }
        assert_eq!(first.as_deref(), Some("started"));
        let t = Instant::now();
        engine.remove(&c).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(30));
        assert!(
            !container_exists(&engine, &c.id).await,
            "{:?}",
            kind(&engine)
        );
        // The run sees its container die: a code or an error, not a hang.
        let _ = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("run returned");
    }
}

#[tokio::test]
async fn dropped_guard_removes_its_container_in_the_background() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        let c = engine
            .create(&ContainerSpec {
                image,
                ..Default::default()
            })
            .await
            .unwrap();
        drop(ContainerGuard::new(&engine, c.clone()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while container_exists(&engine, &c.id).await {
            assert!(
                Instant::now() < deadline,
                "{:?}: still there",
                kind(&engine)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn remove_created_removes_what_this_engine_created_and_nothing_else() {
    for engine in engines().await {
        let image = base_image(&engine).await;
        // A separate connection, so other tests' containers are not in its set.
        let own = connect(match kind(&engine) {
            EngineKind::Docker => EngineChoice::Docker,
            EngineKind::Podman => EngineChoice::Podman,
        })
        .await
        .unwrap();
        let a = own
            .create(&ContainerSpec {
                image: image.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let b = own
            .create(&ContainerSpec {
                image: image.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let other = engine
            .create(&ContainerSpec {
                image,
                ..Default::default()
            })
            .await
            .unwrap();
        own.remove(&b).await.unwrap();
        assert_eq!(own.created_ids(), vec![a.id.clone()]);
        assert_eq!(own.remove_created().await.unwrap(), 1);
        assert!(!container_exists(&engine, &a.id).await);
        assert!(container_exists(&engine, &other.id).await);
        engine.remove(&other).await.unwrap();
    }
}

/// A pid that is certainly not running: a child we started and reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[tokio::test]
async fn cleanup_leftovers_removes_a_step_container_whose_pid_is_dead_and_keeps_live_ones() {
    let host = fs_err::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string();
    for engine in engines().await {
        let image = base_image(&engine).await;
        // Containers as a killed run would have left them; made with bollard
        // directly because `create` always writes our own, live pid.
        let docker = bollard::Docker::connect_with_host(&engine.info().host).unwrap();
        let make = |pid: u32| {
            let labels = HashMap::from([
                (LABEL_STEP.to_string(), "1".to_string()),
                (LABEL_PID.to_string(), pid.to_string()),
                (LABEL_STARTED.to_string(), "1700000000".to_string()),
                (LABEL_HOST.to_string(), host.clone()),
            ]);
            let body = bollard::models::ContainerCreateBody {
                image: Some(image.clone()),
                cmd: Some(vec!["true".into()]),
                labels: Some(labels),
                host_config: Some(bollard::models::HostConfig {
                    network_mode: Some("none".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let docker = docker.clone();
            async move {
                docker
                    .create_container(
                        None::<bollard::query_parameters::CreateContainerOptions>,
                        body,
                    )
                    .await
                    .unwrap()
                    .id
            }
        };
        let dead = make(dead_pid()).await;
        // One of this live process, made the normal way.
        let live = engine
            .create(&ContainerSpec {
                image: image.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
        let removed = engine.cleanup_leftovers().await.unwrap();
        assert!(removed >= 1, "{:?}", kind(&engine));
        assert!(
            !container_exists(&engine, &dead).await,
            "{:?}: leftover still there",
            kind(&engine)
        );
        assert!(
            container_exists(&engine, &live.id).await,
            "{:?}: live step removed",
            kind(&engine)
        );
        engine.remove(&live).await.unwrap();
    }
}
