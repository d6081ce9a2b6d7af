//! Helpers shared by the engine's tests against real engines: connecting
//! to each engine present, building small layers and the test bed's base
//! image, and reading results back.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::OnceCell;
use tplbuild::engine::{connect_host, Container, Engine, EngineKind, LoadLayer, LoadSpec};
use tplbuild::oci::{Compression, Digest, Sha256};

pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
pub const PODMAN_SOCKET: &str = "/run/podman/podman.sock";
pub const ROOTFS: &str = "/var/lib/tplbuild-testbed/cache/bookworm-minbase.tar";

/// The engines present, each connected through its own socket.
pub async fn engines() -> Vec<Engine> {
    let mut out = Vec::new();
    for socket in [DOCKER_SOCKET, PODMAN_SOCKET] {
        if !Path::new(socket).exists() {
            eprintln!("skipping the engine at {socket}: it is absent (run scripts/testbed)");
            assert!(
                std::env::var_os("TPLBUILD_TEST_REQUIRE_TESTBED").is_none(),
                "the test bed is required here"
            );
            continue;
        }
        // Never the DOCKER_HOST the environment may set.
        let engine = connect_host(&format!("unix://{socket}")).await;
        out.push(engine.unwrap_or_else(|e| panic!("{socket}: {e}")));
    }
    out
}

pub fn kind(e: &Engine) -> EngineKind {
    e.info().kind
}

/// A layer tar from `(path, content)` pairs, stored gzip-compressed.
pub fn small_layer(dir: &Path, files: &[(&str, &[u8])]) -> LoadLayer {
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
        present: false,
        blob_path: path,
        compression: Compression::Gzip,
        diff_id: Digest::of(&tar),
        uncompressed_size: tar.len() as u64,
    }
}

pub fn config_for(layers: &[&LoadLayer], entrypoint: Option<&[&str]>) -> Vec<u8> {
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
pub fn rootfs_layer() -> LoadLayer {
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
                present: false,
                blob_path: tar_path,
                compression: Compression::None,
                diff_id: Digest::from_hasher(hasher),
                uncompressed_size: size,
            }
        })
        .clone()
}

pub struct HashWriter<'a>(&'a mut Sha256);
impl io::Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        sha2::Digest::update(self.0, b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub fn base_spec() -> (String, LoadSpec) {
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
pub async fn base_image(engine: &Engine) -> String {
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

pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
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

pub fn as_stream(data: Vec<u8>) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let chunks: Vec<io::Result<Bytes>> = data
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(chunks)
}

/// Files of an exported tar: path (without leading `./` or `/`) → content.
pub async fn exported_files(
    engine: &Engine,
    c: &Container,
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

pub async fn container_exists(engine: &Engine, id: &str) -> bool {
    engine
        .inspect(&Container { id: id.to_string() })
        .await
        .is_ok()
}

/// A pid that is certainly not running: a child we started and reaped.
pub fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}
