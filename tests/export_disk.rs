//! End-to-end exports with the real tools (mke2fs, debugfs, mkfs.erofs,
//! fsck.erofs, mksquashfs, unsquashfs), no container engine: a rootfs made
//! by hand with every awkward kind of entry becomes a two-layer image (the
//! second layer deletes a file and replaces a directory), which is then
//! exported to every type. Needs root (device nodes, owners, capabilities).

#[path = "export_disk/ext4_listing.rs"]
mod ext4_listing;
#[path = "export_disk/fixture.rs"]
mod fixture;
#[path = "export_disk/listing.rs"]
mod listing;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use fixture::{all_specs, cap_net_raw, fixture, long_file, non_utf8, spec, Fixture, EPOCH};
use listing::{assert_same, Ignore, Kind, Listing};
use tplbuild::export::{export_all, ExportReport, OutputKind, OutputSpec};
use tplbuild::image::Image;
use tplbuild::oci::{Descriptor, DigestWriter, ImageConfig, MediaType, RootFs};
use tplbuild::store::Store;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{text}",
        out.status
    );
    text
}

fn sha256_file(p: &Path) -> String {
    let mut w = DigestWriter::new(std::io::sink());
    std::io::copy(&mut fs_err::File::open(p).unwrap(), &mut w).unwrap();
    w.finish().1.to_string()
}

fn tar_listing(p: &Path) -> Listing {
    listing::of_tar(fs_err::File::open(p).unwrap())
}

fn extract_erofs(img: &Path, dir: &Path) -> PathBuf {
    run(Command::new("fsck.erofs")
        .arg(format!("--extract={}", dir.display()))
        .arg(img));
    dir.to_path_buf()
}

fn extract_squashfs(img: &Path, dir: &Path) -> PathBuf {
    run(Command::new("unsquashfs")
        .arg("-no-progress")
        .arg("-d")
        .arg(dir)
        .arg(img));
    dir.to_path_buf()
}

/// A `debugfs -R "stat PATH"` of one inode of an ext4 image.
fn ext4_stat(img: &Path, path: &str) -> String {
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("stat \"{path}\""))
        .arg(img))
}

fn report(reports: &[ExportReport], kind: OutputKind) -> &ExportReport {
    reports.iter().find(|r| r.kind == kind).unwrap()
}

fn assert_no_whiteouts(l: &Listing, what: &str) {
    for p in l.keys() {
        let name = p.rsplit(|b| *b == b'/').next().unwrap();
        assert!(
            !name.starts_with(b".wh."),
            "{what} has {}",
            String::from_utf8_lossy(p)
        );
    }
}

#[test]
fn every_export_type_holds_the_same_tree() {
    let f = fixture();
    let reports = export_all(&f.store, &f.image, &all_specs(&f.out), EPOCH).unwrap();
    assert_eq!(reports.len(), 6);
    assert!(reports.iter().all(|r| !r.cached), "{reports:?}");
    let ext4_report = report(&reports, OutputKind::Ext4);
    assert!(
        ext4_report.summary.starts_with("ext4, "),
        "{}",
        ext4_report.summary
    );

    let tar = tar_listing(&f.out.join("rootfs.tar"));
    let dir = listing::of_dir(&f.out.join("rootfs"));
    assert_same("tar export", &tar, "dir export", &dir, Ignore::default());

    // What the layers should have made of the tree.
    assert_no_whiteouts(&tar, "the tar export");
    assert!(
        !tar.contains_key(b"etc/deleted-file".as_slice()),
        "the whiteout was not applied"
    );
    assert!(tar.contains_key(b"etc/added-by-layer-2".as_slice()));
    let replaced: Vec<_> = tar
        .keys()
        .filter(|p| p.starts_with(b"replaced-dir/"))
        .collect();
    assert_eq!(
        replaced,
        vec![&b"replaced-dir/new-file".to_vec()],
        "the opaque dir kept lower entries"
    );
    assert_eq!(tar[b"replaced-dir".as_slice()].mode, 0o700);
    let ping = &tar[b"usr/bin/ping".as_slice()];
    assert_eq!(
        ping.xattrs.get(b"security.capability".as_slice()),
        Some(&cap_net_raw())
    );
    assert_eq!(tar[b"usr/bin/su".as_slice()].mode, 0o4755);
    assert_eq!(tar[b"usr/bin/wall".as_slice()].mode, 0o2755);
    assert_eq!(tar[b"tmp".as_slice()].mode, 0o1777);
    assert_eq!(tar[b"home/user/.profile".as_slice()].uid, 1000);
    assert_eq!(tar[b"etc/shadow".as_slice()].gid, 42);
    assert_eq!(tar[b"dev/null".as_slice()].rdev, Some((1, 3)));
    assert_eq!(tar[b"dev/loop9".as_slice()].kind, Kind::Block);
    assert_eq!(tar[b"run/initctl".as_slice()].kind, Kind::Fifo);
    assert_eq!(
        tar[b"usr/bin/tool-again".as_slice()].link_group.as_deref(),
        Some(b"usr/bin/tool".as_slice())
    );
    assert!(tar.contains_key(long_file().as_bytes()));
    assert!(tar.contains_key(non_utf8()));

    // squashfs: unsquashfs restores everything as root.
    let x = tempfile::tempdir().unwrap();
    let sq = extract_squashfs(&f.out.join("rootfs.squashfs"), &x.path().join("sq"));
    assert_same(
        "tar export",
        &tar,
        "squashfs",
        &listing::of_dir(&sq),
        Ignore::default(),
    );

    // erofs: fsck clean, then extracted.
    let img = f.out.join("rootfs.erofs");
    run(Command::new("fsck.erofs").arg(&img));
    let ero = extract_erofs(&img, &x.path().join("erofs"));
    let ero = listing::of_dir(&ero);
    let ero_ignore = erofs_extract_limits(&tar, &ero);
    assert_same("tar export", &tar, "erofs", &ero, ero_ignore);
    // What the extractor cannot show, read from the image itself.
    assert_eq!(erofs_inode(&img, "/usr/bin/su").1, 0o4755);
    assert_eq!(erofs_inode(&img, "/usr/bin/wall").1, 0o2755);
    assert_eq!(erofs_inode(&img, "/tmp").1, 0o1777);
    let (tool, _) = erofs_inode(&img, "/usr/bin/tool");
    assert!(tool.contains("Links: 2"), "{tool}");
    let xattr_size = |p: &str| -> u64 {
        let (t, _) = erofs_inode(&img, p);
        t.split("Xattr size: ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        xattr_size("/usr/bin/ping") > 0,
        "ping has no xattrs in erofs"
    );
    assert!(
        xattr_size("/etc/hostname") > 0,
        "hostname has no xattrs in erofs"
    );
    assert_eq!(xattr_size("/usr/bin/su"), 0);

    // ext4: fsck clean, then listed with debugfs (rdump alone loses too
    // much, see ext4_listing).
    let img = f.out.join("rootfs.ext4");
    run(Command::new("fsck.ext4").args(["-fn"]).arg(&img));
    let ext = ext4_listing::of_ext4(&img, &x.path().join("ext4"));
    assert_same("tar export", &tar, "ext4", &ext, Ignore::default());
    let s = ext4_stat(&img, "/dev/null");
    assert!(
        s.contains("Type: character special") && s.contains("Mode:  0666"),
        "{s}"
    );
    assert!(s.contains("Device major/minor number: 01:03"), "{s}");
    let s = ext4_stat(&img, "/dev/loop9");
    assert!(
        s.contains("Type: block special") && s.contains("07:09"),
        "{s}"
    );
    let s = ext4_stat(&img, "/run/initctl");
    assert!(s.contains("Type: FIFO") && s.contains("Mode:  0600"), "{s}");
    let s = ext4_stat(&img, "/usr/bin/ping");
    assert!(s.contains("security.capability"), "{s}");
    let s = ext4_stat(&img, "/usr/bin/tool");
    assert!(s.contains("Links: 2"), "{s}");
    // ext4 keeps each file's (clamped) mtime; the pinned ctime and atime
    // are the epoch.
    let s = ext4_stat(&img, "/etc/added-by-layer-2");
    assert!(s.contains(&format!(" mtime: {:#x}:", EPOCH - 100)), "{s}");
    assert!(s.contains(&format!(" ctime: {EPOCH:#x}:")), "{s}");
    assert!(s.contains(&format!(" atime: {EPOCH:#x}:")), "{s}");
    let s = ext4_stat(&img, "/");
    assert!(
        s.contains("Mode:  0755") && s.contains("User:     0   Group:     0"),
        "{s}"
    );
    let label = run(Command::new("dumpe2fs").arg("-h").arg(&img));
    assert!(
        label.contains("Filesystem volume name:   tplroot"),
        "{label}"
    );

    // The OCI layout names the image.
    let index = fs_err::read_to_string(f.out.join("layout/index.json")).unwrap();
    assert!(
        index.contains(&f.image.digest().to_string()) && index.contains("\"v1\""),
        "{index}"
    );

    // Nothing but the outputs is left beside them.
    let mut names: Vec<_> = fs_err::read_dir(&f.out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "layout",
            "rootfs",
            "rootfs.erofs",
            "rootfs.ext4",
            "rootfs.squashfs",
            "rootfs.tar"
        ]
    );
}

/// What fsck.erofs 1.5's extractor does not restore, found by looking:
/// the comparison ignores only what is missing on the erofs side.
fn erofs_extract_limits(tar: &Listing, ero: &Listing) -> Ignore {
    let special_missing = tar.iter().any(|(p, n)| {
        matches!(n.kind, Kind::Char | Kind::Block | Kind::Fifo) && !ero.contains_key(p)
    });
    let xattrs_missing = !ero.values().any(|n| !n.xattrs.is_empty());
    let links_split = !ero.values().any(|n| n.link_group.is_some());
    let setid_lost = tar
        .iter()
        .any(|(p, n)| n.mode & 0o6000 != 0 && ero.get(p).is_some_and(|e| e.mode & 0o6000 == 0));
    eprintln!(
        "fsck.erofs --extract limits: special files missing={special_missing}, xattrs missing={xattrs_missing}, hardlinks split={links_split}, setuid/setgid lost={setid_lost}"
    );
    Ignore {
        special_files: special_missing,
        link_groups: links_split,
        xattrs: xattrs_missing,
        setid_bits: setid_lost,
    }
}

/// `dump.erofs --path` of one inode, plus its full mode read from the
/// image (dump.erofs 1.5 prints only the rwx bits).
fn erofs_inode(img: &Path, path: &str) -> (String, u32) {
    let text = run(Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg(img));
    let nid: u64 = text
        .split("NID: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no NID in {text}"));
    let bytes = fs_err::read(img).unwrap();
    // Superblock at 1024; meta_blkaddr at offset 40; 32-byte inode slots;
    // i_mode at offset 4 of compact and extended inodes alike.
    let sb = &bytes[1024..];
    let meta = u32::from_le_bytes(sb[40..44].try_into().unwrap()) as usize;
    let off = meta * 4096 + nid as usize * 32;
    let mode = u16::from_le_bytes(bytes[off + 4..off + 6].try_into().unwrap());
    (text, u32::from(mode) & 0o7777)
}

#[test]
fn two_cold_exports_on_two_empty_stores_are_byte_identical() {
    let a = fixture();
    // Time passes between the two, so anything taken from the clock shows.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = fixture();
    assert_eq!(
        a.image.digest(),
        b.image.digest(),
        "the fixture image is not deterministic"
    );
    let files = [
        "rootfs.tar",
        "rootfs.ext4",
        "rootfs.erofs",
        "rootfs.squashfs",
    ];
    let specs = |f: &Fixture| -> Vec<OutputSpec> {
        all_specs(&f.out)
            .into_iter()
            .filter(|s| s.kind.is_file())
            .collect()
    };
    export_all(&a.store, &a.image, &specs(&a), EPOCH).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    export_all(&b.store, &b.image, &specs(&b), EPOCH).unwrap();
    for f in files {
        assert_eq!(
            sha256_file(&a.out.join(f)),
            sha256_file(&b.out.join(f)),
            "{f} differs between two cold exports"
        );
    }
}

#[test]
fn a_repeat_export_is_cached_equal_and_a_copy() {
    let f = fixture();
    let specs: Vec<OutputSpec> = all_specs(&f.out)
        .into_iter()
        .filter(|s| s.kind.is_file())
        .collect();
    let first = export_all(&f.store, &f.image, &specs, EPOCH).unwrap();
    let sums: Vec<String> = first.iter().map(|r| sha256_file(&r.dest)).collect();
    // The user changes an output in place. The cache may share that file
    // (a hard link on one filesystem), so it must notice, and never serve
    // the user's bytes as the image's.
    fs_err::OpenOptions::new()
        .write(true)
        .open(f.out.join("rootfs.ext4"))
        .unwrap()
        .write_all(b"scribbled")
        .unwrap();
    let second = export_all(&f.store, &f.image, &specs, EPOCH).unwrap();
    // Outputs are ordinary files of the user: the mode any new file gets
    // (0666 less the umask), not a temp file's 0600, cached or not.
    let reference = f.out.join("reference");
    fs_err::File::create(&reference).unwrap();
    let mode = |p: &Path| fs_err::metadata(p).unwrap().permissions().mode() & 0o7777;
    for (r, sum) in second.iter().zip(&sums) {
        let scribbled = r.dest.ends_with("rootfs.ext4");
        assert_eq!(
            r.cached, !scribbled,
            "{} cached={}: {}",
            r.kind, r.cached, r.summary
        );
        assert_eq!(&sha256_file(&r.dest), sum, "cached {} differs", r.kind);
        assert_eq!(
            mode(&r.dest),
            mode(&reference),
            "mode of {}",
            r.dest.display()
        );
    }

    // Another epoch is another output.
    let third = export_all(&f.store, &f.image, &specs[..1], EPOCH + 1).unwrap();
    assert!(!third[0].cached);
    // No flattened tree is left in the store's tmp.
    let left: Vec<_> = fs_err::read_dir(f.store.tmp_dir()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn ext4_size_and_inodes_are_honoured_and_a_failing_ext4_leaves_nothing() {
    let f = fixture();
    let o = f.out.display();
    let r = export_all(
        &f.store,
        &f.image,
        &[spec(&format!(
            "type=ext4,dest={o}/sized.ext4,size=40M,inodes=5000"
        ))],
        EPOCH,
    )
    .unwrap();
    assert_eq!(r[0].bytes, 40 << 20);
    let h = run(Command::new("dumpe2fs")
        .arg("-h")
        .arg(f.out.join("sized.ext4")));
    let field = |name: &str| -> u64 {
        h.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {h}"))
    };
    assert_eq!(field("Block count:"), 10240);
    assert!(field("Inode count:") >= 5000);
    run(Command::new("fsck.ext4")
        .arg("-fn")
        .arg(f.out.join("sized.ext4")));

    // 16 inodes cannot hold the tree: the writer fails, and says why.
    let err = export_all(
        &f.store,
        &f.image,
        &[spec(&format!(
            "type=ext4,dest={o}/tiny.ext4,size=8M,inodes=16"
        ))],
        EPOCH,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("cannot make the ext4 filesystem"), "{err}");
    assert!(err.contains("inode"), "{err}");
    assert!(!f.out.join("tiny.ext4").exists());
}

#[test]
fn a_non_empty_dir_dest_is_refused_before_any_work_unless_forced() {
    let f = fixture();
    let dest = f.out.join("rootfs");
    fs_err::create_dir_all(&dest).unwrap();
    fs_err::write(dest.join("precious"), b"x").unwrap();
    let o = f.out.display();
    let err = export_all(
        &f.store,
        &f.image,
        &[
            spec(&format!("type=ext4,dest={o}/r.ext4")),
            spec(&format!("type=dir,dest={o}/rootfs")),
        ],
        EPOCH,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("force=true"), "{err}");
    assert!(
        !f.out.join("r.ext4").exists(),
        "work was done before the refusal"
    );
    export_all(
        &f.store,
        &f.image,
        &[spec(&format!("type=dir,dest={o}/rootfs,force=true"))],
        EPOCH,
    )
    .unwrap();
    assert!(!dest.join("precious").exists());
    assert!(dest.join("etc/hostname").exists());
}

/// Times of each export type for the mmdebstrap minbase rootfs of the test
/// bed (`cargo test --release --test export_disk -- --ignored --nocapture`),
/// and whether two cold exports of it are byte-identical. `EXPORT_KINDS="ext4 tar"`
/// limits it to those types (and skips the reproducibility half).
#[test]
#[ignore = "slow: needs /var/lib/tplbuild-testbed/cache/bookworm-minbase.tar"]
fn minbase_export_times() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tplbuild=debug")
        .with_writer(std::io::stderr)
        .try_init();
    let tarball = Path::new("/var/lib/tplbuild-testbed/cache/bookworm-minbase.tar");
    let work = tempfile::tempdir().unwrap();
    let image_in = |home: &Path| -> (Store, Image) {
        let store = Store::open(home).unwrap();
        let mut w = store.blob_writer().unwrap();
        std::io::copy(&mut fs_err::File::open(tarball).unwrap(), &mut w).unwrap();
        let digest = w.commit(None).unwrap();
        let size = store.blob_size(&digest).unwrap();
        let config = ImageConfig {
            architecture: "amd64".into(),
            os: "linux".into(),
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: vec![digest.clone()],
            },
            ..Default::default()
        };
        let image = Image::assemble(
            config,
            vec![Descriptor::new(MediaType::OCI_LAYER_TAR, digest, size)],
            BTreeMap::new(),
        );
        tplbuild::transfer::store_image(&store, &image).unwrap();
        (store, image)
    };
    let (store, image) = image_in(&work.path().join("a"));

    let t = std::time::Instant::now();
    let flat = tempfile::tempdir_in(store.tmp_dir()).unwrap();
    tplbuild::export::flatten(&store, &image, flat.path()).unwrap();
    eprintln!("flatten alone: {:.2} s", t.elapsed().as_secs_f64());
    drop(flat);

    let out = work.path().join("out");
    let o = out.display();
    let kinds = [
        format!("type=tar,dest={o}/a.tar"),
        format!("type=tar,dest={o}/a.tar.zst,compression=zstd"),
        format!("type=dir,dest={o}/a-dir"),
        format!("type=ext4,dest={o}/a.ext4"),
        format!("type=erofs,dest={o}/a.erofs"),
        format!("type=erofs,dest={o}/a-lz4.erofs,compression=lz4"),
        format!("type=squashfs,dest={o}/a.squashfs"),
        format!("type=oci,dest={o}/layout"),
    ];
    let only = std::env::var("EXPORT_KINDS").unwrap_or_default();
    for k in kinds.iter().filter(|k| {
        only.is_empty()
            || only
                .split(' ')
                .any(|o| k.starts_with(&format!("type={o},")))
    }) {
        let t = std::time::Instant::now();
        let r = export_all(&store, &image, &[spec(k)], EPOCH).unwrap();
        eprintln!(
            "{:<50} {:>6.2} s total (export step {:.2} s): {}",
            k.split(',').next().unwrap().to_string()
                + k.split(',')
                    .nth(2)
                    .map(|c| format!(",{c}"))
                    .as_deref()
                    .unwrap_or(""),
            t.elapsed().as_secs_f64(),
            r[0].seconds,
            r[0].summary
        );
    }
    let t = std::time::Instant::now();
    let r = export_all(
        &store,
        &image,
        &[spec(&format!("type=ext4,dest={o}/again.ext4"))],
        EPOCH,
    )
    .unwrap();
    eprintln!(
        "ext4 again (cached={}): {:.2} s",
        r[0].cached,
        t.elapsed().as_secs_f64()
    );
    run(Command::new("fsck.ext4")
        .args(["-fn"])
        .arg(out.join("a.ext4")));

    // The by-hand way for comparison, twice each, interleaved with ours
    // (the machine is shared, so single samples lie).
    for round in 0..2 {
        let d = work.path().join(format!("by-hand-{round}"));
        fs_err::create_dir_all(&d).unwrap();
        let t = std::time::Instant::now();
        run(Command::new("tar")
            .arg("--xattrs")
            .arg("--xattrs-include=*")
            .arg("-xf")
            .arg(tarball)
            .arg("-C")
            .arg(&d));
        let untar = t.elapsed().as_secs_f64();
        run(Command::new("mke2fs")
            .args(["-t", "ext4", "-d"])
            .arg(&d)
            .args(["-F", "-q"])
            .arg(work.path().join(format!("by-hand-{round}.ext4")))
            .arg("303104k"));
        eprintln!(
            "by hand: tar -x {untar:.2} s + mke2fs -d {:.2} s = {:.2} s",
            t.elapsed().as_secs_f64() - untar,
            t.elapsed().as_secs_f64()
        );
        fs_err::remove_dir_all(&d).unwrap();
        let t = std::time::Instant::now();
        let r = export_all(
            &store,
            &image,
            &[spec(&format!("type=ext4,dest={o}/round-{round}.ext4"))],
            EPOCH + 1 + round,
        )
        .unwrap();
        eprintln!(
            "tplbuild -o type=ext4 (cold): {:.2} s, {}",
            t.elapsed().as_secs_f64(),
            r[0].summary
        );
    }
    if !only.is_empty() {
        return;
    }
    // A second cold export on another store, with the flattened tree on
    // tmpfs this time: byte-identical files.
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let (store_b, image_b) = image_in(shm.path());
    let ob = work.path().join("out-b");
    let files = ["a.tar", "a.ext4", "a.erofs", "a.squashfs"];
    let specs: Vec<OutputSpec> = kinds
        .iter()
        .map(|k| spec(k))
        .filter(|s| files.iter().any(|f| s.dest.ends_with(f)))
        .map(|mut s| {
            s.dest = ob.join(s.dest.file_name().unwrap());
            s
        })
        .collect();
    let t = std::time::Instant::now();
    export_all(&store_b, &image_b, &specs, EPOCH).unwrap();
    eprintln!(
        "tar+ext4+erofs+squashfs together, cold: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    for f in files {
        assert_eq!(
            sha256_file(&out.join(f)),
            sha256_file(&ob.join(f)),
            "{f} differs"
        );
    }
}
