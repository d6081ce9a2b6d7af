//! The hand-made image of the disk tests: a rootfs with every awkward kind
//! of entry as the first layer (written by `layer::write_dir`), and a
//! second layer written with the tar crate that deletes a file and
//! replaces a directory (a whiteout and an opaque marker).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tplbuild::export::OutputSpec;
use tplbuild::image::Image;
use tplbuild::layer::{self, Hygiene, LayerOptions};
use tplbuild::oci::{Compression, Descriptor, ImageConfig, MediaType, RootFs};
use tplbuild::store::Store;

pub const EPOCH: i64 = 1_700_000_000;
pub const LONG_DIR: &str =
    "usr/share/a-directory-with-a-rather-long-name-to-push-the-path-past-the-ustar-limits";

pub fn long_file() -> String {
    format!("{LONG_DIR}/{}", "f".repeat(200))
}

pub fn non_utf8() -> &'static [u8] {
    b"etc/caf\xe9"
}

/// `security.capability` for `cap_net_raw+ep` (VFS_CAP_REVISION_2).
pub fn cap_net_raw() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 13).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

fn write(root: &Path, rel: &str, body: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(rel);
    fs_err::create_dir_all(p.parent().unwrap()).unwrap();
    fs_err::write(&p, body).unwrap();
    fs_err::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mkdir(root: &Path, rel: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let p = root.join(rel);
    fs_err::create_dir_all(&p).unwrap();
    fs_err::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The hand-made rootfs of the first layer.
pub fn make_rootfs(root: &Path) {
    use rustix::fs::{mknodat, FileType, Mode, CWD};
    for d in ["etc", "usr/bin", "usr/lib", "var/lib", "dev", "run", "home"] {
        mkdir(root, d, 0o755);
    }
    mkdir(root, "tmp", 0o1777);
    write(root, "etc/hostname", b"tplbuild\n", 0o644);
    write(
        root,
        "etc/deleted-file",
        b"to be deleted by layer 2\n",
        0o644,
    );
    write(root, "etc/shadow", b"root:*:19000:0:99999:7:::\n", 0o640);
    write(root, "usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755);
    fs_err::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-again")).unwrap();
    write(root, "usr/bin/su", b"setuid binary\n", 0o4755);
    write(root, "usr/bin/wall", b"setgid binary\n", 0o2755);
    write(root, "usr/bin/ping", b"ping with a capability\n", 0o755);
    rustix::fs::lsetxattr(
        root.join("usr/bin/ping"),
        "security.capability",
        &cap_net_raw(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        root.join("etc/hostname"),
        "user.tplbuild.note",
        b"kept",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    // Bigger than a block, with a recognisable pattern.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    write(root, "usr/lib/libbig.so", &big, 0o644);
    write(root, "usr/lib/empty", b"", 0o644);
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    std::os::unix::fs::symlink("../../usr/bin/tool", root.join("var/lib/tool-link")).unwrap();
    let long_target = "x".repeat(120);
    std::os::unix::fs::symlink(&long_target, root.join("var/lib/long-link")).unwrap();
    mknodat(
        CWD,
        root.join("dev/null"),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    mknodat(
        CWD,
        root.join("dev/loop9"),
        FileType::BlockDevice,
        Mode::from_raw_mode(0o660),
        rustix::fs::makedev(7, 9),
    )
    .unwrap();
    mknodat(
        CWD,
        root.join("run/initctl"),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // mknod obeys the umask; set the modes we asked for.
    for (p, m) in [
        ("dev/null", 0o666),
        ("dev/loop9", 0o660),
        ("run/initctl", 0o600),
    ] {
        rustix::fs::chmod(root.join(p), Mode::from_raw_mode(m)).unwrap();
    }
    mkdir(root, "home/user", 0o750);
    write(root, "home/user/.profile", b"# user profile\n", 0o644);
    for p in ["home/user", "home/user/.profile"] {
        std::os::unix::fs::lchown(root.join(p), Some(1000), Some(1000)).unwrap();
    }
    std::os::unix::fs::lchown(root.join("etc/shadow"), Some(0), Some(42)).unwrap();
    write(root, &long_file(), b"long name\n", 0o644);
    let odd = root.join(OsStr::from_bytes(non_utf8()));
    fs_err::write(&odd, b"not utf-8\n").unwrap();
    mkdir(root, "replaced-dir", 0o755);
    write(root, "replaced-dir/old-a", b"a\n", 0o644);
    mkdir(root, "replaced-dir/old-sub", 0o755);
    write(root, "replaced-dir/old-sub/b", b"b\n", 0o644);
}

/// The second layer, written with the tar crate: a whiteout, an opaque
/// directory with new content, and a new file.
pub fn second_layer() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, body: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(EPOCH as u64 - 100);
        h.set_size(body.len() as u64);
        b.append_data(&mut h, path, body).unwrap();
    };
    add("etc/.wh.deleted-file", tar::EntryType::Regular, 0o644, b"");
    add("replaced-dir/", tar::EntryType::Directory, 0o700, b"");
    add(
        "replaced-dir/new-file",
        tar::EntryType::Regular,
        0o600,
        b"new\n",
    );
    add(
        "replaced-dir/.wh..wh..opq",
        tar::EntryType::Regular,
        0o644,
        b"",
    );
    add(
        "etc/added-by-layer-2",
        tar::EntryType::Regular,
        0o644,
        b"added\n",
    );
    b.into_inner().unwrap()
}

/// An image of the hand-made rootfs plus the second layer, in `store`.
pub fn make_image(store: &Store, rootfs: &Path) -> Image {
    let opts = LayerOptions {
        epoch: Some(EPOCH),
        compression: Compression::Gzip,
        drop_volatile: false,
        hygiene: Hygiene::keep_all(),
        exclude: Vec::new(),
    };
    let mut w = store.blob_writer().unwrap();
    let l1 = layer::write_dir(rootfs, &mut w, &opts).unwrap();
    w.commit(Some((&l1.digest, l1.size))).unwrap();
    let tar2 = second_layer();
    let d2 = store.put_bytes(&tar2).unwrap();
    let config = ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![l1.diff_id.clone(), d2.clone()],
        },
        ..Default::default()
    };
    let layers = vec![
        Descriptor::new(l1.media_type.clone(), l1.digest.clone(), l1.size),
        Descriptor::new(MediaType::OCI_LAYER_TAR, d2, tar2.len() as u64),
    ];
    let image = Image::assemble(config, layers, BTreeMap::new());
    tplbuild::transfer::store_image(store, &image).unwrap();
    image
}

pub struct Fixture {
    _home: tempfile::TempDir,
    pub store: Store,
    pub image: Image,
    pub out: PathBuf,
}

pub fn fixture() -> Fixture {
    let home = tempfile::tempdir().unwrap();
    let rootfs = home.path().join("src-rootfs");
    fs_err::create_dir(&rootfs).unwrap();
    make_rootfs(&rootfs);
    let store = Store::open(&home.path().join("home")).unwrap();
    let image = make_image(&store, &rootfs);
    let out = home.path().join("out");
    Fixture {
        _home: home,
        store,
        image,
        out,
    }
}

pub fn spec(s: &str) -> OutputSpec {
    s.parse().unwrap()
}

pub fn all_specs(out: &Path) -> Vec<OutputSpec> {
    let o = out.display();
    vec![
        spec(&format!("type=tar,dest={o}/rootfs.tar")),
        spec(&format!("type=ext4,dest={o}/rootfs.ext4,label=tplroot")),
        spec(&format!("type=erofs,dest={o}/rootfs.erofs")),
        spec(&format!("type=squashfs,dest={o}/rootfs.squashfs")),
        spec(&format!("type=oci,dest={o}/layout,tag=v1")),
        spec(&format!("type=dir,dest={o}/rootfs")),
    ]
}
