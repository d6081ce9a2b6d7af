//! Hostile layers through the whole path a user would meet them: an image
//! pushed to the registry whose layer tries to escape, exported with
//! `tplbuild export` to a folder and to a tarball. Nothing outside the
//! destination may change, and each case fails or sanitizes with a clear
//! message. (The per-entry cases are in tests/layer_hostile.)

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use tplbuild::image::Image;
use tplbuild::oci::{Descriptor, Digest, ImageConfig, MediaType, RootFs};

enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        // Write names raw: the tar crate's helpers refuse `..` themselves.
        let (name, kind, data, link): (&str, tar::EntryType, &[u8], Option<&str>) = match e {
            E::Dir(n) => (n, tar::EntryType::Directory, b"", None),
            E::File(n, d) => (n, tar::EntryType::Regular, d, None),
            E::Symlink(n, t) => (n, tar::EntryType::Symlink, b"", Some(t)),
            E::Hardlink(n, t) => (n, tar::EntryType::Link, b"", Some(t)),
        };
        h.set_entry_type(kind);
        if kind == tar::EntryType::Directory {
            h.set_mode(0o755);
        }
        h.set_size(data.len() as u64);
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Write a one-layer image into an OCI layout and copy it to the registry.
fn push_image(env: &Env, name: &str, tar: &[u8]) -> String {
    let layout = env.path(&format!("layout-{name}"));
    let blobs = layout.join("blobs/sha256");
    fs_err::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = Digest::of(bytes);
        fs_err::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let layer_digest = put(tar);
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![layer_digest.clone()],
        },
        ..Default::default()
    };
    let image = Image::assemble(
        config,
        vec![Descriptor::new(
            MediaType::OCI_LAYER_TAR,
            layer_digest,
            tar.len() as u64,
        )],
        BTreeMap::new(),
    );
    put(&image.config_bytes);
    put(&image.manifest_bytes);
    fs_err::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MediaType::OCI_MANIFEST,
            "digest": image.digest().to_string(),
            "size": image.manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "x"}
        }]
    });
    fs_err::write(layout.join("index.json"), index.to_string()).unwrap();
    let r = format!("{REGISTRY}/hostile/{name}:{}", std::process::id());
    env.ok(&["copy", &format!("oci:{}:x", layout.display()), &r]);
    r
}

/// Every path under `dir` with its type, size and mode.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let out = sh_ok(&format!(
        "cd {} && find . -printf '%p %y %s %m %l\\n' | sort",
        dir.display()
    ));
    out.lines()
        .map(|l| {
            let (p, rest) = l.split_once(' ').unwrap();
            (p.to_string(), rest.to_string())
        })
        .collect()
}

/// Export to dir and tar inside a bed folder with a decoy next to the
/// destination; nothing in the bed outside the destination may change.
fn check_contained(name: &str, entries: &[E]) -> Vec<String> {
    let env = Env::new();
    let r = push_image(&env, name, &layer(entries));
    let bed = env.path("bed");
    fs_err::create_dir_all(bed.join("outside")).unwrap();
    fs_err::write(bed.join("outside/passwd"), "decoy\n").unwrap();
    fs_err::write(bed.join("x"), "decoy\n").unwrap();
    let before = snapshot(&bed);
    let mut messages = vec![];
    for (kind, dest) in [("dir", bed.join("rootfs")), ("tar", bed.join("rootfs.tar"))] {
        let out = env.run(&[
            "export",
            &r,
            "-o",
            &format!("type={kind},dest={}", dest.display()),
        ]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        if !out.status.success() {
            assert!(err.contains("error:"), "a failure must say why: {err}");
        }
        messages.push(err);
    }
    let after: BTreeMap<_, _> = snapshot(&bed)
        .into_iter()
        .filter(|(p, _)| !p.starts_with("./rootfs"))
        .collect();
    assert_eq!(
        before, after,
        "{name}: something outside the destination changed"
    );
    assert_eq!(
        fs_err::read_to_string(bed.join("outside/passwd")).unwrap(),
        "decoy\n"
    );
    messages
}

#[test]
fn zip_slip_dotdot_entry_stays_inside() {
    if !testbed("hostile ..") {
        return;
    }
    check_contained(
        "dotdot",
        &[E::File("../x", b"evil"), E::File("a/../../x", b"evil")],
    );
}

#[test]
fn absolute_paths_stay_inside() {
    if !testbed("hostile /abs") {
        return;
    }
    check_contained("abs", &[E::File("/x", b"evil")]);
}

#[test]
fn cve_2018_15664_symlink_then_write_through_it_stays_inside() {
    if !testbed("hostile symlink") {
        return;
    }
    let bed_outside = "../outside";
    check_contained(
        "symlink",
        &[
            E::Symlink("etc", bed_outside),
            E::File("etc/passwd", b"evil"),
            E::Symlink("abs", "/tmp"),
            E::File("abs/evil", b"evil"),
        ],
    );
}

#[test]
fn hardlink_to_an_outside_target_stays_inside() {
    if !testbed("hostile hardlink") {
        return;
    }
    check_contained(
        "hardlink",
        &[
            E::Hardlink("h", "../outside/passwd"),
            E::Symlink("l", "../outside"),
            E::Hardlink("h2", "l/passwd"),
        ],
    );
}

#[test]
fn symlink_named_dot_and_dir_over_symlink_stay_inside() {
    if !testbed("hostile dot") {
        return;
    }
    check_contained(
        "dot",
        &[
            E::Symlink("s", "../outside"),
            E::Dir("s"),
            E::File("s/passwd", b"evil"),
            E::Symlink(".", "../outside"),
            E::File("passwd", b"evil"),
        ],
    );
}
