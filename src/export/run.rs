//! [`export_all`]: every `-o` of one image, sharing one flattened tree.
//!
//! Order of work: check every destination (so a refused `dir` fails before
//! minutes of mkfs); look each file output up in the export cache; flatten
//! once if anything still needs the tree; make the file outputs and the
//! OCI layout; move the tree into the `dir` output last, since that
//! consumes it. The tree is flattened beside the first `dir` destination
//! when there is one (so the final move is a rename on one filesystem),
//! else in the store's tmp folder; a second `dir` output gets a tree of
//! its own.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::cache::{export_key, inputs_for, Cache, Entry};
use super::place::{
    check_dir_dest, check_file_dest, check_writable, persist_file, temp_beside, temp_dir_beside,
};
use super::{
    flatten, human_bytes, thousands, ExportContext, ExportError, ExportReport, Exporter,
    OutputKind, OutputSpec, TreeStats,
};
use crate::image::Image;
use crate::oci::Digest;
use crate::store::Store;

/// Export one image to every requested output; the rootfs is flattened at
/// most once (in a temp dir under the store's tmp, or beside the `dir`
/// destination if there is one) and only if an output needs it and is not
/// cached.
///
/// The image's layer blobs must be in the store. Reports come back in the
/// order of `outputs`; the first output that needed the tree counts the
/// flattening in its `seconds`, so the times add up to the whole.
pub fn export_all(
    store: &Store,
    image: &Image,
    outputs: &[OutputSpec],
    epoch: i64,
) -> Result<Vec<ExportReport>, ExportError> {
    let exporters = outputs.iter().map(OutputSpec::exporter).collect();
    export_with(store, image, outputs, exporters, epoch)
}

/// [`export_all`] with the exporters given (one per output, `None` for
/// `oci`), so tests can count what runs.
pub(super) fn export_with(
    store: &Store,
    image: &Image,
    outputs: &[OutputSpec],
    exporters: Vec<Option<BoxedExporter>>,
    epoch: i64,
) -> Result<Vec<ExportReport>, ExportError> {
    let started = Instant::now();
    check_dests(outputs)?;
    let cache = Cache::new(store);
    let digest = image.digest();

    // Plan: which file outputs are cached already.
    let mut plans = Vec::with_capacity(outputs.len());
    for (spec, exporter) in outputs.iter().zip(exporters) {
        let cached = match (&exporter, spec.kind.is_file()) {
            (Some(ex), true) => {
                let inputs = inputs_for(&digest, spec.kind, epoch, ex.key_options()?);
                let key = export_key(&inputs);
                let hit = cache.get(&key);
                if hit.is_none() {
                    if let Some(why) = cache.explain_miss(&inputs) {
                        tracing::info!(kind = %spec.kind, "export cache miss: {why}");
                    }
                }
                Some(Keyed { inputs, key, hit })
            }
            _ => None,
        };
        plans.push(Plan {
            spec,
            exporter,
            cached,
        });
    }

    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "export cache looked up"
    );
    let needs_tree = plans.iter().any(|p| {
        p.spec.kind.needs_rootfs() && !matches!(p.cached, Some(Keyed { hit: Some(_), .. }))
    });
    let mut tree: Option<Tree> = None;
    // Charged to the first output that uses the tree.
    let mut flatten_seconds = 0.0;
    if needs_tree {
        let first_dir = outputs.iter().find(|s| s.kind == OutputKind::Dir);
        tree = Some(Tree::make(
            store,
            image,
            first_dir.map(|s| s.dest.as_path()),
            epoch,
        )?);
        flatten_seconds = tree.as_ref().map_or(0.0, |t| t.seconds);
    }

    let mut reports: Vec<Option<ExportReport>> = vec![None; outputs.len()];
    // Everything but `dir` first: `dir` takes the tree away.
    for (i, plan) in plans.iter().enumerate() {
        if plan.spec.kind == OutputKind::Dir {
            continue;
        }
        let started = Instant::now();
        let mut report = match plan.spec.kind {
            OutputKind::Oci => export_oci(store, image, plan.spec)?,
            OutputKind::Sbom => {
                return Err(ExportError::Unexpected {
                    what: "an sbom output reached the rootfs exporters".into(),
                })
            }
            _ => export_file(&cache, plan, tree.as_ref(), &digest, epoch, store)?,
        };
        report.seconds = started.elapsed().as_secs_f64();
        if !report.cached && plan.spec.kind.needs_rootfs() {
            report.seconds += std::mem::take(&mut flatten_seconds);
        }
        tracing::info!(dest = %report.dest.display(), cached = report.cached, "{}", report.summary);
        reports[i] = Some(report);
    }
    for (i, plan) in plans.iter().enumerate() {
        if plan.spec.kind != OutputKind::Dir {
            continue;
        }
        let started = Instant::now();
        let dest = &plan.spec.dest;
        let (t, shared) = match tree.take() {
            Some(t) if t.beside.as_ref() == Some(dest) => (t, true),
            other => {
                tree = other;
                (Tree::make(store, image, Some(dest), epoch)?, false)
            }
        };
        let flattened_before = if shared {
            std::mem::take(&mut flatten_seconds)
        } else {
            0.0
        };
        let ex = plan.exporter.as_ref().expect("dir has an exporter");
        let ctx = t.context(store, &digest, epoch);
        ex.export(t.path(), &ctx, dest)?;
        let stats = t.stats;
        t.disarm();
        let summary = format!(
            "dir, {}, {} files",
            human_bytes(stats.file_bytes),
            thousands(stats.entries)
        );
        reports[i] = Some(ExportReport {
            kind: OutputKind::Dir,
            dest: dest.clone(),
            bytes: stats.file_bytes,
            cached: false,
            seconds: started.elapsed().as_secs_f64() + flattened_before,
            summary,
        });
    }
    let cleanup = Instant::now();
    drop(tree);
    tracing::debug!(
        cleanup_seconds = cleanup.elapsed().as_secs_f64(),
        seconds = started.elapsed().as_secs_f64(),
        "exports done"
    );
    Ok(reports
        .into_iter()
        .map(|r| r.expect("every output ran"))
        .collect())
}

pub(super) type BoxedExporter = Box<dyn Exporter + Send + Sync>;

struct Plan<'a> {
    spec: &'a OutputSpec,
    exporter: Option<BoxedExporter>,
    /// For file outputs: the cache key and entry.
    cached: Option<Keyed>,
}

struct Keyed {
    inputs: super::ExportKeyInputs,
    key: Digest,
    /// The entry and its output file, if cached.
    hit: Option<(Entry, PathBuf)>,
}

/// A flattened rootfs in a temp folder, removed on drop unless it became a
/// `dir` output.
struct Tree {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    /// The `dir` destination it was made beside, if any.
    beside: Option<PathBuf>,
    stats: TreeStats,
    /// The image's architecture, for the exporters' context.
    arch: String,
    /// How long flattening and counting took.
    seconds: f64,
}

/// Where a throw-away tree is flattened: a memory filesystem when one has
/// room (writing and deleting ~10,000 files there costs a fraction of what
/// it costs on disk, and the tree is deleted right after the export), else
/// the store's tmp. `TPLBUILD_SCRATCH` overrides.
fn scratch_dir(store: &Store, image: &Image) -> PathBuf {
    if let Some(dir) = std::env::var_os("TPLBUILD_SCRATCH").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // Layers compress about 3:1; leave room for twice that and a margin.
    let needed = image.layers_size().saturating_mul(6) + (256 << 20);
    let shm = Path::new("/dev/shm");
    let roomy = rustix::fs::statvfs(shm)
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize) > needed)
        .unwrap_or(false);
    if roomy {
        shm.to_path_buf()
    } else {
        store.tmp_dir()
    }
}

impl Tree {
    fn make(
        store: &Store,
        image: &Image,
        beside: Option<&Path>,
        epoch: i64,
    ) -> Result<Tree, ExportError> {
        let started = Instant::now();
        let dir = match beside {
            Some(dest) => temp_dir_beside(dest)?,
            None => tempfile::Builder::new()
                .prefix("rootfs-")
                .tempdir_in(scratch_dir(store, image))?,
        };
        let path = dir.path().join("rootfs");
        fs_err::create_dir(&path)?;
        set_root_dir_attrs(&path)?;
        flatten(store, image, &path)?;
        let flattened = started.elapsed().as_secs_f64();
        let stats = TreeStats::scan(&path, Some(epoch))?;
        tracing::info!(
            layers = image.layers().len(),
            files = stats.entries,
            flatten_seconds = flattened,
            scan_seconds = started.elapsed().as_secs_f64() - flattened,
            "flattened {}",
            image.digest().short()
        );
        Ok(Tree {
            dir: Some(dir),
            path,
            beside: beside.map(Path::to_path_buf),
            stats,
            arch: image.config.architecture.clone(),
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn context(&self, store: &Store, image: &Digest, epoch: i64) -> ExportContext {
        ExportContext {
            image: image.clone(),
            epoch,
            tmp_dir: store.tmp_dir(),
            stats: self.stats,
            arch: self.arch.clone(),
        }
    }

    /// The tree was moved away: remove only the (now empty) temp folder.
    fn disarm(mut self) {
        if let Some(dir) = self.dir.take() {
            let kept = dir.keep();
            let _ = fs_err::remove_dir(kept);
        }
    }
}

/// The root of an image is `0755 root:root` whatever the temp folder was
/// made with; a layer that carries `./` may change it.
fn set_root_dir_attrs(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::lchown(path, Some(0), Some(0))?;
    }
    Ok(())
}

fn export_file(
    cache: &Cache,
    plan: &Plan<'_>,
    tree: Option<&Tree>,
    digest: &Digest,
    epoch: i64,
    store: &Store,
) -> Result<ExportReport, ExportError> {
    let dest = &plan.spec.dest;
    let ex = plan
        .exporter
        .as_ref()
        .expect("file outputs have an exporter");
    let Keyed { inputs, key, hit } = plan.cached.as_ref().expect("file outputs are keyed");
    let tmp = temp_beside(dest)?;
    let (bytes, entries, cached) = match hit {
        Some((entry, output)) => {
            cache.copy_out(key, entry, output, &tmp)?;
            (entry.bytes, entry.entries, true)
        }
        None => {
            let tree = tree.expect("a tree was flattened for uncached outputs");
            let ctx = tree.context(store, digest, epoch);
            let t = Instant::now();
            ex.export(tree.path(), &ctx, &tmp)
                .map_err(|e| e.for_dest(dest))?;
            let made = t.elapsed().as_secs_f64();
            let bytes = fs_err::metadata(&*tmp)?.len();
            let entry = Entry {
                inputs: inputs.clone(),
                bytes,
                entries: tree.stats.entries,
                shared: None,
            };
            cache.put(key, &tmp, &entry)?;
            tracing::debug!(
                kind = %plan.spec.kind,
                made,
                cache_seconds = t.elapsed().as_secs_f64() - made,
                "made"
            );
            (bytes, tree.stats.entries, false)
        }
    };
    let t = Instant::now();
    persist_file(tmp, dest)?;
    tracing::debug!(
        seconds = t.elapsed().as_secs_f64(),
        "fsynced and renamed into place"
    );
    Ok(ExportReport {
        kind: plan.spec.kind,
        dest: dest.clone(),
        bytes,
        cached,
        seconds: 0.0,
        summary: format!(
            "{}, {}, {} files",
            ex.label(),
            human_bytes(bytes),
            thousands(entries)
        ),
    })
}

fn export_oci(
    store: &Store,
    image: &Image,
    spec: &OutputSpec,
) -> Result<ExportReport, ExportError> {
    crate::transfer::write_layout_image(store, image, &spec.dest, spec.tag()).map_err(
        |source| ExportError::Layout {
            dest: spec.dest.clone(),
            source: Box::new(source),
        },
    )?;
    let bytes =
        image.layers_size() + image.manifest.config.size + image.manifest_bytes.len() as u64;
    Ok(ExportReport {
        kind: OutputKind::Oci,
        dest: spec.dest.clone(),
        bytes,
        cached: false,
        seconds: 0.0,
        summary: format!(
            "oci layout, {}, {} layers, tag {}",
            human_bytes(bytes),
            image.layers().len(),
            spec.tag()
        ),
    })
}

/// The path a destination really names: its parent resolved (links,
/// `..`) when the parent exists yet.
fn dest_identity(dest: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(dest)?;
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => match fs_err::canonicalize(parent) {
            Ok(p) => Ok(p.join(name)),
            Err(_) => Ok(abs),
        },
        _ => Ok(abs),
    }
}

/// Refuse bad destinations before any work (a build checks them before
/// its first step): two outputs to one path, a folder that takes no new
/// file, a file output over a directory, a non-empty `dir` without
/// `force=true`, a disk's layout file that does not read or check.
pub fn check_dests(outputs: &[OutputSpec]) -> Result<(), ExportError> {
    let mut seen = HashSet::new();
    for spec in outputs {
        spec.check_files()?;
        check_writable(&spec.dest)?;
        if !seen.insert(dest_identity(&spec.dest)?) {
            return Err(ExportError::DuplicateDest {
                dest: spec.dest.clone(),
            });
        }
        match spec.kind {
            OutputKind::Dir => check_dir_dest(&spec.dest, spec.force())?,
            OutputKind::Oci => {}
            OutputKind::Sbom => check_file_dest(&spec.dest, spec.kind)?,
            kind => check_file_dest(&spec.dest, kind)?,
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
