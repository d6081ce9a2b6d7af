//! Measurements behind the engine module's documentation and the layer
//! code's exclusion list, on Docker and on Podman. Ignored by default (it
//! installs openssh-server from Debian's archive, about a minute per
//! engine); run it alone, since it removes and reloads the base image:
//!
//!     cargo test --test engine_measure -- --ignored --nocapture --test-threads=1
//!
//! It prints timings and listings, and asserts only what the layer code
//! relies on: the upper dir is readable after exit, whiteouts are 0/0
//! character devices, and re-created directories are marked opaque.

mod engine_support;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine_support::*;
use futures_util::StreamExt;
use tplbuild::engine::{Container, ContainerSpec, Engine, LoadLayer, LoadSpec, Network};
use tplbuild::oci::Compression;

/// One upper-dir entry: its type, device number, size and xattrs.
#[derive(Debug)]
struct Entry {
    kind: char,
    rdev: u64,
    size: u64,
    target: Option<PathBuf>,
    xattrs: BTreeMap<String, String>,
}

fn xattrs(path: &Path) -> BTreeMap<String, String> {
    let mut names = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(path, &mut names[..]).unwrap_or(0);
    let mut out = BTreeMap::new();
    for name in names[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 64 * 1024];
        let len = rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).unwrap_or(0);
        out.insert(name, String::from_utf8_lossy(&value[..len]).into_owned());
    }
    out
}

fn walk(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in fs_err::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let meta = fs_err::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                todo.push(path.clone());
                'd'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_file() {
                'f'
            } else {
                '?'
            };
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let target = ft.is_symlink().then(|| fs_err::read_link(&path).unwrap());
            out.insert(
                rel,
                Entry {
                    kind,
                    rdev: meta.rdev(),
                    size: meta.size(),
                    target,
                    xattrs: xattrs(&path),
                },
            );
        }
    }
    out
}

fn show(title: &str, entries: &BTreeMap<String, Entry>) {
    println!("  {title}: {} entries", entries.len());
    for (p, e) in entries {
        println!(
            "    {} {p} size={} rdev={} target={:?} xattrs={:?}",
            e.kind, e.size, e.rdev, e.target, e.xattrs
        );
    }
}

/// The rootfs layer gzip-compressed, as the store would hold it.
fn rootfs_gz_layer() -> LoadLayer {
    let plain = rootfs_layer();
    // Keyed by content: the test bed may rebuild its rootfs.
    let gz = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "engine-rootfs-{}.tar.gz",
        &plain.diff_id.hex()[..16]
    ));
    if !gz.exists() {
        let tmp = gz.with_extension("tmp");
        let mut enc = flate2::write::GzEncoder::new(
            fs_err::File::create(&tmp).unwrap(),
            flate2::Compression::new(6),
        );
        std::io::copy(&mut fs_err::File::open(&plain.blob_path).unwrap(), &mut enc).unwrap();
        enc.finish().unwrap();
        fs_err::rename(&tmp, &gz).unwrap();
    }
    LoadLayer {
        present: false,
        blob_path: gz,
        compression: Compression::Gzip,
        ..plain
    }
}

fn spec_with_label(layer: &LoadLayer, label: &str) -> LoadSpec {
    let mut config: serde_json::Value =
        serde_json::from_slice(&config_for(&[layer], None)).unwrap();
    config["config"]["Labels"] = serde_json::json!({ "measure": label });
    LoadSpec {
        config_json: serde_json::to_vec(&config).unwrap(),
        layers: vec![layer.clone()],
    }
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let t = Instant::now();
    let out = f.await;
    println!("  {what}: {:.3} s", t.elapsed().as_secs_f64());
    out
}

async fn run_script(
    engine: &Engine,
    image: &str,
    script: Option<&str>,
    network: Network,
) -> (Container, i64, Duration) {
    let spec = ContainerSpec {
        image: image.into(),
        env: vec!["DEBIAN_FRONTEND=noninteractive".into()],
        script: script.map(Into::into),
        network,
        platform: None,
    };
    let t = Instant::now();
    let c = engine.create(&spec).await.unwrap();
    let code = if script.is_some() {
        let mut last = Vec::new();
        let code = engine
            .run(&c, |_, l| {
                last.push(l.to_string());
                if last.len() > 20 {
                    last.remove(0);
                }
            })
            .await
            .unwrap();
        if code != 0 {
            println!("  exit {code}; last lines:\n    {}", last.join("\n    "));
        }
        code
    } else {
        0
    };
    (c, code, t.elapsed())
}

async fn upper(engine: &Engine, c: &Container) -> PathBuf {
    let p = engine.upper_dir(c).await.unwrap().expect("an upper dir");
    assert!(
        fs_err::read_dir(&p).is_ok(),
        "upper dir {} is readable",
        p.display()
    );
    p
}

#[tokio::test]
#[ignore = "talks to Debian's archive; run alone with --ignored --nocapture"]
async fn measure_apt_step_on_both_engines() {
    let layer = tokio::task::spawn_blocking(rootfs_gz_layer).await.unwrap();
    println!(
        "rootfs layer: {} bytes uncompressed, blob {} bytes (gzip)",
        layer.uncompressed_size,
        fs_err::metadata(&layer.blob_path).unwrap().len()
    );
    // Per engine: the apt step's changes and upper-dir paths, compared below.
    let mut apt_changes = Vec::new();
    let mut apt_uppers = Vec::new();
    for engine in engines().await {
        let info = engine.info().clone();
        println!(
            "== {} {} (API {}) at {}",
            info.kind, info.version, info.api_version, info.host
        );
        let nonce = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
        );
        // Cold: the engine holds no image with this layer.
        let (base_tag, _) = base_spec();
        engine.remove_image(&base_tag).await.unwrap();
        let a = spec_with_label(&layer, &format!("a-{nonce}"));
        let b = spec_with_label(&layer, &format!("b-{nonce}"));
        let (tag_a, tag_a2, tag_b) = (
            format!("localhost/tplbuild-measure/a:{nonce}"),
            format!("localhost/tplbuild-measure/a2:{nonce}"),
            format!("localhost/tplbuild-measure/b:{nonce}"),
        );
        timed(
            "load_image cold (180 MB layer, gzip blob)",
            engine.load_image(&tag_a, &a),
        )
        .await
        .unwrap();
        timed(
            "load_image same image, new tag (tag only)",
            engine.load_image(&tag_a2, &a),
        )
        .await
        .unwrap();
        timed(
            "load_image new config, layer already present",
            engine.load_image(&tag_b, &b),
        )
        .await
        .unwrap();

        // A container that never starts (COPY): what the engine puts in its upper dir.
        let (copy, _, t) = run_script(&engine, &tag_a, None, Network::Host).await;
        println!("  create (never started): {:.3} s", t.as_secs_f64());
        show(
            "upper dir of a created, never started container",
            &walk(&upper(&engine, &copy).await),
        );
        println!(
            "  changes of it: {:?}",
            engine.changes(&copy).await.unwrap()
        );
        engine.remove(&copy).await.unwrap();

        // `true`: the engine's own additions for a container that ran.
        let (c, code, t) = run_script(&engine, &tag_a, Some("true"), Network::Host).await;
        assert_eq!(code, 0);
        println!("  create+start+wait of `true`: {:.3} s", t.as_secs_f64());
        show(
            "upper dir after `true` (not the step's work)",
            &walk(&upper(&engine, &c).await),
        );
        println!(
            "  changes after `true`: {:?}",
            engine.changes(&c).await.unwrap()
        );
        let inspect = timed("inspect", engine.inspect(&c)).await.unwrap();
        if let Some(g) = inspect.graph_driver {
            println!(
                "  graph driver {}: {:?}",
                g.name,
                g.data.keys().collect::<Vec<_>>()
            );
            if let Some(lower) = g.data.get("LowerDir") {
                println!("  LowerDir: {lower}");
            }
        }
        timed("remove", engine.remove(&c)).await.unwrap();

        // An image without /etc/hostname and /etc/resolv.conf: which mount
        // points does the engine add to the upper dir then?
        let dir = tempfile::tempdir().unwrap();
        let bare = small_layer(
            dir.path(),
            &[("etc/.wh.hostname", b""), ("etc/.wh.resolv.conf", b"")],
        );
        let bare_spec = LoadSpec {
            config_json: config_for(&[&layer, &bare], None),
            layers: vec![layer.clone(), bare],
        };
        let tag_bare = format!("localhost/tplbuild-measure/bare:{nonce}");
        engine.load_image(&tag_bare, &bare_spec).await.unwrap();
        let (c, code, _) = run_script(&engine, &tag_bare, Some("true"), Network::Host).await;
        assert_eq!(code, 0);
        show(
            "upper dir after `true`, image without etc/hostname, etc/resolv.conf",
            &walk(&upper(&engine, &c).await),
        );
        println!("  changes: {:?}", engine.changes(&c).await.unwrap());
        engine.remove(&c).await.unwrap();
        engine.remove_image(&tag_bare).await.unwrap();

        // Whiteouts and opaque directories.
        let script = "rm /etc/issue.net && rm -rf /etc/apt/apt.conf.d && mkdir /etc/apt/apt.conf.d && echo x > /etc/apt/apt.conf.d/99x && mkdir /etc/brand-new";
        let (c, code, _) = run_script(&engine, &tag_a, Some(script), Network::None).await;
        assert_eq!(code, 0);
        let up = upper(&engine, &c).await;
        let entries = walk(&up);
        show("upper dir after rm + re-created dir", &entries);
        let wh = &entries["etc/issue.net"];
        assert_eq!(
            (wh.kind, wh.rdev),
            ('c', 0),
            "whiteout is a 0/0 char device"
        );
        let opaque = &entries["etc/apt/apt.conf.d"];
        println!(
            "  opaque dir xattrs: {:?}; new dir xattrs: {:?}",
            opaque.xattrs, entries["etc/brand-new"].xattrs
        );
        assert_eq!(
            opaque
                .xattrs
                .get("trusted.overlay.opaque")
                .map(String::as_str),
            Some("y")
        );
        println!("  changes: {:?}", engine.changes(&c).await.unwrap());
        engine.remove(&c).await.unwrap();

        // The apt step.
        let script = "apt-get update && apt-get install -y --no-install-recommends openssh-server";
        let (c, code, t) = run_script(&engine, &tag_a, Some(script), Network::Host).await;
        assert_eq!(code, 0, "apt step failed");
        println!("  apt step (create+run): {:.3} s", t.as_secs_f64());
        let up = upper(&engine, &c).await;
        let t = Instant::now();
        let entries = walk(&up);
        let bytes: u64 = entries
            .values()
            .filter(|e| e.kind == 'f')
            .map(|e| e.size)
            .sum();
        println!("  upper dir after exit: readable, {} entries, {} file bytes, walked with xattrs in {:.3} s", entries.len(), bytes, t.elapsed().as_secs_f64());
        let whiteouts: Vec<&String> = entries
            .iter()
            .filter(|(_, e)| e.kind == 'c')
            .map(|(p, _)| p)
            .collect();
        let opaques: Vec<&String> = entries
            .iter()
            .filter(|(_, e)| e.xattrs.contains_key("trusted.overlay.opaque"))
            .map(|(p, _)| p)
            .collect();
        println!("  whiteouts: {whiteouts:?}\n  opaque dirs: {opaques:?}");
        let changes = timed("changes", engine.changes(&c)).await.unwrap();
        println!("  changes: {} entries", changes.len());
        apt_changes.push(
            changes
                .iter()
                .map(|c| (c.path.clone(), format!("{:?}", c.kind)))
                .collect::<BTreeMap<_, _>>(),
        );
        apt_uppers.push(
            entries
                .keys()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>(),
        );
        let t = Instant::now();
        let mut stream = engine.export(&c).await.unwrap();
        let mut exported = 0u64;
        while let Some(chunk) = stream.next().await {
            exported += chunk.unwrap().len() as u64;
        }
        println!(
            "  export: {:.3} s, {exported} bytes",
            t.elapsed().as_secs_f64()
        );
        timed("inspect", engine.inspect(&c)).await.unwrap();
        timed("upper_dir", engine.upper_dir(&c)).await.unwrap();
        timed("remove", engine.remove(&c)).await.unwrap();

        for tag in [&tag_a, &tag_a2, &tag_b] {
            engine.remove_image(tag).await.unwrap();
        }
    }
    if let ([docker, podman], [docker_up, podman_up]) = (&apt_changes[..], &apt_uppers[..]) {
        for (path, kind) in docker {
            match podman.get(path) {
                None => println!("apt step, change only Docker reports: {kind} {path}"),
                Some(k) if k != kind => {
                    println!("apt step, {path}: Docker says {kind}, Podman {k}")
                }
                Some(_) => {}
            }
        }
        for (path, kind) in podman {
            if !docker.contains_key(path) {
                println!("apt step, change only Podman reports: {kind} {path}");
            }
        }
        println!(
            "apt step, upper-dir paths only Docker has: {:?}",
            docker_up.difference(podman_up).collect::<Vec<_>>()
        );
        println!(
            "apt step, upper-dir paths only Podman has: {:?}",
            podman_up.difference(docker_up).collect::<Vec<_>>()
        );
    }
}
