//! Orchestration tests with a fake exporter: what runs, how often, and
//! what is left behind when something fails.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::export::DirExporter;
use crate::oci::ImageConfig;

/// Records the tree it was given; writes a small file or fails.
struct Fake {
    kind: OutputKind,
    seen: Arc<Mutex<Vec<PathBuf>>>,
    fail: bool,
}

impl Exporter for Fake {
    fn kind(&self) -> OutputKind {
        self.kind
    }
    fn key_options(&self) -> Result<BTreeMap<String, String>, ExportError> {
        Ok([("fake".to_string(), "1".to_string())].into())
    }
    fn export(&self, rootfs: &Path, ctx: &ExportContext, dest: &Path) -> Result<(), ExportError> {
        self.seen.lock().unwrap().push(rootfs.to_path_buf());
        fs_err::write(dest, format!("half-written {}", ctx.epoch))?;
        if self.fail {
            return Err(ExportError::Unexpected {
                what: "the fake failed".into(),
            });
        }
        Ok(())
    }
}

struct Bed {
    _home: tempfile::TempDir,
    store: Store,
    image: Image,
    out: PathBuf,
    seen: Arc<Mutex<Vec<PathBuf>>>,
}

fn bed() -> Bed {
    let home = tempfile::tempdir().unwrap();
    let store = Store::open(&home.path().join("home")).unwrap();
    // No layers: flattening makes an empty tree without the layer code.
    let image = Image::empty(ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        ..Default::default()
    });
    let out = home.path().join("out");
    Bed {
        _home: home,
        store,
        image,
        out,
        seen: Arc::default(),
    }
}

impl Bed {
    fn fake(&self, kind: OutputKind, fail: bool) -> Option<BoxedExporter> {
        Some(Box::new(Fake {
            kind,
            seen: self.seen.clone(),
            fail,
        }))
    }
    fn spec(&self, s: &str) -> OutputSpec {
        s.replace("OUT", &self.out.display().to_string())
            .parse()
            .unwrap()
    }
    fn runs(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs_err::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn one_tree_serves_every_output_and_dir_takes_it_last() {
    let b = bed();
    let specs = [
        b.spec("type=dir,dest=OUT/rootfs"),
        b.spec("type=tar,dest=OUT/a.tar"),
        b.spec("type=ext4,dest=OUT/a.ext4"),
    ];
    let exporters = vec![
        Some(Box::new(DirExporter) as BoxedExporter),
        b.fake(OutputKind::Tar, false),
        b.fake(OutputKind::Ext4, false),
    ];
    let reports = export_with(&b.store, &b.image, &specs, exporters, 7).unwrap();
    let seen = b.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], seen[1], "the tree was flattened twice");
    // Made beside the dir output, so that its move is a rename.
    assert_eq!(seen[0].parent().unwrap().parent().unwrap(), b.out);
    assert!(b.out.join("rootfs").is_dir());
    assert_eq!(names(&b.out), ["a.ext4", "a.tar", "rootfs"]);
    assert_eq!(
        reports.iter().map(|r| r.kind).collect::<Vec<_>>(),
        [OutputKind::Dir, OutputKind::Tar, OutputKind::Ext4]
    );
}

#[test]
fn a_cached_output_runs_no_exporter_and_flattens_nothing() {
    let b = bed();
    let specs = [b.spec("type=tar,dest=OUT/a.tar")];
    let first = export_with(
        &b.store,
        &b.image,
        &specs,
        vec![b.fake(OutputKind::Tar, false)],
        7,
    )
    .unwrap();
    assert!(!first[0].cached);
    fs_err::remove_file(b.out.join("a.tar")).unwrap();
    let again = export_with(
        &b.store,
        &b.image,
        &specs,
        vec![b.fake(OutputKind::Tar, false)],
        7,
    )
    .unwrap();
    assert!(again[0].cached, "{}", again[0].summary);
    assert_eq!(b.runs(), 1);
    assert_eq!(
        fs_err::read_to_string(b.out.join("a.tar")).unwrap(),
        "half-written 7"
    );
    assert!(names(&b.store.tmp_dir()).is_empty());
    // Another epoch is not the same output.
    let other = export_with(
        &b.store,
        &b.image,
        &specs,
        vec![b.fake(OutputKind::Tar, false)],
        8,
    )
    .unwrap();
    assert!(!other[0].cached);
    assert_eq!(b.runs(), 2);
}

#[test]
fn a_failed_export_leaves_no_file_no_temp_and_no_cache_entry() {
    let b = bed();
    fs_err::create_dir_all(&b.out).unwrap();
    fs_err::write(b.out.join("a.ext4"), b"the previous image").unwrap();
    let specs = [b.spec("type=ext4,dest=OUT/a.ext4")];
    let err = export_with(
        &b.store,
        &b.image,
        &specs,
        vec![b.fake(OutputKind::Ext4, true)],
        7,
    )
    .unwrap_err();
    assert!(err.to_string().contains("the fake failed"), "{err}");
    assert_eq!(
        fs_err::read(b.out.join("a.ext4")).unwrap(),
        b"the previous image"
    );
    assert_eq!(names(&b.out), ["a.ext4"]);
    assert!(names(&b.store.exports_dir()).is_empty());
    assert!(names(&b.store.tmp_dir()).is_empty());
}

#[test]
fn two_outputs_to_one_dest_are_refused_before_any_work() {
    let b = bed();
    fs_err::create_dir_all(&b.out).unwrap();
    for other in ["OUT/x", "OUT/../out/x", "OUT/./x"] {
        let specs = [
            b.spec("type=tar,dest=OUT/x"),
            b.spec(&format!("type=ext4,dest={other}")),
        ];
        let exporters = vec![
            b.fake(OutputKind::Tar, false),
            b.fake(OutputKind::Ext4, false),
        ];
        let r = export_with(&b.store, &b.image, &specs, exporters, 7);
        assert!(
            matches!(r, Err(ExportError::DuplicateDest { .. })),
            "{other}: {r:?}"
        );
    }
    assert_eq!(b.runs(), 0);
}

#[test]
fn a_file_output_over_a_directory_is_refused() {
    let b = bed();
    fs_err::create_dir_all(b.out.join("img")).unwrap();
    let specs = [b.spec("type=ext4,dest=OUT/img")];
    let r = export_with(
        &b.store,
        &b.image,
        &specs,
        vec![b.fake(OutputKind::Ext4, false)],
        7,
    );
    assert!(matches!(r, Err(ExportError::DestIsDir { .. })));
    assert_eq!(b.runs(), 0);
}
