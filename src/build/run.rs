//! Running one step in the engine and turning its change into a layer.

use std::io::Write as _;

use anyhow::Context as _;

use super::signals::Signals;
use super::{location, record_for, BuildError, BuildOptions};
use crate::engine::{self, Container, ContainerSpec, Engine, EngineError, LoadLayer, LoadSpec};
use crate::image::Image;
use crate::layer::{self, Hygiene, LayerOptions};
use crate::oci::{Compression, Descriptor, Digest};
use crate::plan::{Plan, Step, StepKind};
use crate::progress::Progress;
use crate::registry::Client;
use crate::store::{StepRecord, Store};
use crate::transfer;

/// Paths an engine puts into a container's upper dir that are not the
/// step's work: mount points for files the engine bind-mounts, and
/// Podman's marker file. Docker keeps these in a separate init layer.
pub const ENGINE_PATHS: &[&str] = &[
    "run/.containerenv",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
    ".dockerenv",
    // Podman links /etc/mtab to /proc/mounts when the image has none.
    "etc/mtab",
];

pub struct Runner {
    pub(crate) engine: Engine,
    network: engine::Network,
    diff: super::diff::DiffChoice,
    /// Whether the diff source was announced.
    diff_said: bool,
    indexes: super::diff::Indexes,
    pub containers_created: usize,
    /// Layers (by diff_id) the engine is known to hold, from the states
    /// this run loaded or found.
    present: std::collections::BTreeSet<Digest>,
}

impl Runner {
    pub async fn connect(opts: &BuildOptions, progress: &Progress) -> anyhow::Result<Self> {
        let engine = engine::connect(opts.engine).await?;
        let info = engine.info();
        progress.note(
            "engine",
            &format!(
                "using {} {} (API {}) at {}",
                info.kind, info.version, info.api_version, info.host
            ),
        );
        match engine.cleanup_leftovers().await {
            Ok(0) => {}
            Ok(n) => progress.note(
                "cleanup",
                &format!("removed {n} container(s) left by an interrupted tplbuild"),
            ),
            Err(e) => progress.warn(&format!("could not look for leftover containers: {e}")),
        }
        Ok(Runner {
            engine,
            network: opts.network,
            diff: opts.diff,
            diff_said: false,
            indexes: Default::default(),
            containers_created: 0,
            present: Default::default(),
        })
    }

    /// Make the engine hold exactly `image`'s layers under a tag derived
    /// from its digest; load it only if the engine does not have it, and
    /// then send only the layers it does not have yet.
    pub(crate) async fn ensure_state(
        &mut self,
        store: &Store,
        client: &Client,
        sources: &transfer::Sources,
        image: &Image,
    ) -> anyhow::Result<String> {
        let tag = format!("tplbuild/state:{}", image.digest().hex());
        if self.engine.has_image(&tag).await? {
            self.present.extend(image.diff_ids().iter().cloned());
            return Ok(tag);
        }
        self.ensure_bottom_layer(store, client, sources, image)
            .await;
        let missing: Vec<_> = image
            .layers()
            .iter()
            .zip(image.diff_ids())
            .filter(|(_, d)| !self.present.contains(*d))
            .map(|(l, _)| l.clone())
            .collect();
        transfer::ensure_from(store, client, sources, &missing)
            .await
            .context("fetching the parent layers")?;
        let spec = self.load_spec(store, image, true)?;
        let kind = self.engine.info().kind;
        if let Err(e) = self.engine.load_image(&tag, &spec).await {
            if !spec.layers.iter().any(|l| l.present) {
                return Err(
                    anyhow::Error::new(e).context(format!("loading the parent image into {kind}"))
                );
            }
            // An engine that insists on reading every layer: send them all.
            tracing::debug!("load with known layers left out failed ({e}); sending all layers");
            transfer::ensure_from(store, client, sources, image.layers())
                .await
                .context("fetching the parent layers")?;
            let full = self.load_spec(store, image, false)?;
            self.engine
                .load_image(&tag, &full)
                .await
                .with_context(|| format!("loading the parent image into {kind}"))?;
        }
        self.present.extend(image.diff_ids().iter().cloned());
        Ok(tag)
    }

    /// Bring the bottom layer (the template's) in with an import, which
    /// both engines apply much faster than a load; the load that follows
    /// then leaves it out. Anything going wrong here only means the load
    /// sends the layer itself.
    async fn ensure_bottom_layer(
        &mut self,
        store: &Store,
        client: &Client,
        sources: &transfer::Sources,
        image: &Image,
    ) {
        let (Some(desc), Some(diff_id)) = (image.layers().first(), image.diff_ids().first()) else {
            return;
        };
        if self.present.contains(diff_id) {
            return;
        }
        let tag = format!("tplbuild/layer:{}", diff_id.hex());
        let result: anyhow::Result<bool> = async {
            if self.engine.has_image(&tag).await? {
                return Ok(true);
            }
            transfer::ensure_from(store, client, sources, std::slice::from_ref(desc)).await?;
            let layer = load_layer(store, desc, diff_id, 0, false);
            let matched = self.engine.import_layer(&tag, &layer).await?;
            if !matched {
                let _ = self.engine.remove_image(&tag).await;
            }
            Ok(matched)
        }
        .await;
        match result {
            Ok(true) => {
                self.present.insert(diff_id.clone());
            }
            Ok(false) => {
                tracing::debug!("the engine imported the bottom layer under another digest")
            }
            Err(e) => {
                tracing::debug!("importing the bottom layer failed ({e}); loading it instead")
            }
        }
    }

    fn load_spec(
        &self,
        store: &Store,
        image: &Image,
        skip_present: bool,
    ) -> anyhow::Result<LoadSpec> {
        let mut layers = vec![];
        for (desc, diff_id) in image.layers().iter().zip(image.diff_ids()) {
            let present = skip_present && self.present.contains(diff_id);
            let size = if present {
                0
            } else {
                uncompressed_size(store, desc, diff_id)?
            };
            layers.push(load_layer(store, desc, diff_id, size, present));
        }
        Ok(LoadSpec {
            config_json: image.config_bytes.clone(),
            layers,
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn run_step(
        &mut self,
        store: &Store,
        client: &Client,
        sources: &transfer::Sources,
        plan: &Plan,
        step: &Step,
        parent: &Image,
        key: &Digest,
        inputs: serde_json::Value,
        progress: &mut Progress,
        signals: &Signals,
    ) -> anyhow::Result<StepRecord> {
        let loc = location(plan, step.span);
        let wrap = |e: anyhow::Error| BuildError::Step {
            location: loc.clone(),
            text: step.text.clone(),
            source: e,
        };
        if let StepKind::Copy { chown: Some(c), .. } = &step.kind {
            if c.split(':').any(|part| part.parse::<u32>().is_err()) {
                // Names are looked up in the parent's /etc/passwd and /etc/group.
                transfer::ensure_from(store, client, sources, parent.layers())
                    .await
                    .map_err(|e| wrap(e.into()))?;
            }
        }
        let tag = self
            .ensure_state(store, client, sources, parent)
            .await
            .map_err(wrap)?;
        let mut env: Vec<String> = step.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if step.kind.uses_apt() {
            env.push("DEBIAN_FRONTEND=noninteractive".into());
        }
        // A locked apt step installs exactly the verified .debs from the
        // store, with no network at all.
        let locked = plan.locked_step(step);
        let (script, network) = match locked {
            Some(l) => (Some(locked_script(&step.kind, l)), engine::Network::None),
            None => (step.kind.script(), self.network),
        };
        let spec = ContainerSpec {
            image: tag,
            env,
            script,
            network,
        };
        // The parent as metadata, to make the step's layer canonical.
        let tree = match self.indexes.tree(store, parent).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!("indexing the parent needs its layers: {e:#}");
                transfer::ensure_from(store, client, sources, parent.layers())
                    .await
                    .map_err(|e| wrap(e.into()))?;
                self.indexes.tree(store, parent).await.map_err(wrap)?
            }
        };
        let mut attempt = 1;
        let result = loop {
            let container = self
                .engine
                .create(&spec)
                .await
                .map_err(|e| wrap(e.into()))?;
            self.containers_created += 1;
            // From here on the container is removed on every path.
            let result = tokio::select! {
                r = self.work(tree.clone(), store, plan, step, parent, key, inputs.clone(), &container, progress) => r,
                i = signals.wait() => Err(i.into()),
            };
            if let Err(e) = self.engine.remove(&container).await {
                progress.warn(&format!("could not remove container {}: {e}", container.id));
            }
            match result {
                Err(e) if attempt < START_ATTEMPTS && EngineError::never_ran(&e) => {
                    progress.warn(&format!(
                        "{e:#}; the step never started, trying again in a new container"
                    ));
                    attempt += 1;
                }
                other => break other,
            }
        };
        result.map_err(|e| match e.downcast::<BuildError>() {
            Ok(b) => b.into(),
            Err(e) => match e.downcast::<super::Interrupted>() {
                Ok(i) => i.into(),
                Err(e) => wrap(e).into(),
            },
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn work(
        &mut self,
        tree: std::sync::Arc<crate::layer::TreeIndex>,
        store: &Store,
        plan: &Plan,
        step: &Step,
        parent: &Image,
        key: &Digest,
        inputs: serde_json::Value,
        container: &Container,
        progress: &mut Progress,
    ) -> anyhow::Result<StepRecord> {
        match &step.kind {
            StepKind::Copy {
                sources,
                dest,
                chown,
                chmod,
            } => {
                let (uid, gid) = resolve_chown(store, parent, chown.as_deref())?;
                let attrs = super::copy::CopyAttrs {
                    uid,
                    gid,
                    chmod: *chmod,
                    mtime: plan.epoch.max(0) as u64,
                };
                let mut tmp = tempfile::NamedTempFile::new_in(store.tmp_dir())?;
                super::copy::write_copy_tar(
                    &plan.buildfile.context,
                    sources,
                    dest,
                    &attrs,
                    &mut tmp,
                )
                .context("reading the COPY sources (did they change after planning?)")?;
                tmp.flush()?;
                let file = tokio::fs::File::open(tmp.path()).await?;
                self.engine
                    .upload(container, "/", tokio_util::io::ReaderStream::new(file))
                    .await?;
            }
            _ => {
                if let Some(l) = plan.locked_step(step) {
                    self.upload_debs(store, container, l).await?;
                }
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
                let engine = self.engine.clone();
                let c = container.clone();
                let run = tokio::spawn(async move {
                    engine
                        .run(&c, move |line| {
                            let _ = tx.send(line.to_string());
                        })
                        .await
                });
                while let Some(line) = rx.recv().await {
                    progress.output(step.number, &line);
                }
                let code = run.await??;
                if code != 0 {
                    return Err(BuildError::StepFailed {
                        location: location(plan, step.span),
                        text: step.text.clone(),
                        code,
                        tail: progress.tail(),
                    }
                    .into());
                }
            }
        }
        let (set, source) = super::diff::read_changes(
            &self.engine,
            container,
            self.diff,
            store,
            tree.clone(),
            Some(plan.epoch),
        )
        .await?;
        if !self.diff_said {
            progress.note("diff", source.describe());
            self.diff_said = true;
        }
        let keep = &plan.keep;
        let opts = LayerOptions {
            epoch: Some(plan.epoch),
            compression: Compression::Gzip,
            drop_volatile: true,
            hygiene: Hygiene {
                ssh_host_keys: !keep.iter().any(|k| k == "ssh-host-keys"),
                machine_id: !keep.iter().any(|k| k == "machine-id"),
                random_seed: !keep.iter().any(|k| k == "random-seed"),
            },
            exclude: ENGINE_PATHS.iter().map(|s| s.to_string()).collect(),
        };
        let read_bytes = set.read_bytes;
        let store2 = store.clone();
        let (written, index, packages) =
            tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let packages = set.read_file(b"var/lib/dpkg/status").map(|text| {
                    let text = String::from_utf8_lossy(&text);
                    let pkgs = crate::image::parse_dpkg_status(&text);
                    crate::image::package_lines(&pkgs)
                });
                let mut w = store2.blob_writer()?;
                let (written, index) = layer::write_changes(&set, &tree, &mut w, &opts)?;
                w.commit(Some((&written.digest, written.size)))?;
                Ok((written, index, packages))
            })
            .await??;
        self.indexes.remember(store, &written.diff_id, index);
        let source_name = match source {
            super::diff::DiffSource::Upper => "upper",
            super::diff::DiffSource::Api => "api",
        };
        progress.step_diff(
            step.number,
            source_name,
            read_bytes,
            written.uncompressed_size,
        );
        remember_uncompressed_size(store, &written.diff_id, written.uncompressed_size);
        let uncompressed = written.uncompressed_size;
        let desc = Descriptor::new(
            written.media_type.clone(),
            written.digest.clone(),
            written.size,
        );
        let rec = record_for(
            key,
            desc,
            written.diff_id.clone(),
            uncompressed,
            inputs,
            written.report.removed_secrets.clone(),
            packages,
        );
        store.put_step(&rec)?;
        Ok(rec)
    }
}

/// A stored layer as the engine module sends it.
fn load_layer(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
    uncompressed_size: u64,
    present: bool,
) -> LoadLayer {
    LoadLayer {
        blob_path: store.blob_path(&desc.digest),
        compression: desc
            .media()
            .layer_compression()
            .unwrap_or(Compression::Gzip),
        diff_id: diff_id.clone(),
        uncompressed_size,
        present,
    }
}

/// How many fresh containers a step gets when its command could not be
/// started in the one before ([`EngineError::NotStarted`]).
pub(crate) const START_ATTEMPTS: u32 = 3;

/// Where a locked step's .debs are put in its container (tmp/ is dropped
/// from layers as volatile).
const DEB_DIR: &str = "tmp/tplbuild-debs";

/// The script of a locked apt step: install the given .debs (apt orders and
/// checks them, with no package lists and no network), mark what the
/// Buildfile did not ask for as automatically installed, as apt would have.
fn locked_script(kind: &StepKind, locked: &crate::lock::LockedStep) -> String {
    use crate::lock::LockedPackage;
    match kind {
        StepKind::Install { packages, .. } => {
            let asked: std::collections::BTreeSet<&str> = packages
                .iter()
                .map(|p| p.split('=').next().unwrap_or(p))
                .collect();
            let auto: Vec<&str> = locked
                .packages
                .iter()
                .map(|p: &LockedPackage| p.name.as_str())
                .filter(|n| !asked.contains(n))
                .collect();
            let mut s = format!(
                "set -e; apt-get install -y --no-install-recommends /{DEB_DIR}/*.deb; rm -rf /{DEB_DIR}"
            );
            if !auto.is_empty() {
                s.push_str(&format!("; apt-mark auto {} >/dev/null", auto.join(" ")));
            }
            s
        }
        other => other.script().unwrap_or_default(),
    }
}

impl Runner {
    /// Put a locked step's .debs into its container through the archive API.
    async fn upload_debs(
        &self,
        store: &Store,
        container: &Container,
        locked: &crate::lock::LockedStep,
    ) -> anyhow::Result<()> {
        let debs = crate::lock::deb_paths(store, locked);
        let wanted = locked
            .packages
            .iter()
            .filter(|p| !p.sha256.is_empty())
            .count();
        if debs.len() != wanted {
            anyhow::bail!(
                "{} of the step's {wanted} locked .debs are not in the store; run `tplbuild fetch`",
                wanted - debs.len()
            );
        }
        let mut tmp = tempfile::NamedTempFile::new_in(store.tmp_dir())?;
        {
            let mut tar = tar::Builder::new(&mut tmp);
            let mut dir = tar::Header::new_gnu();
            dir.set_entry_type(tar::EntryType::Directory);
            dir.set_mode(0o755);
            dir.set_size(0);
            tar.append_data(&mut dir, format!("{DEB_DIR}/"), std::io::empty())?;
            for (path, name) in &debs {
                let mut f = fs_err::File::open(path)?;
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(f.metadata()?.len());
                tar.append_data(&mut h, format!("{DEB_DIR}/{name}"), &mut f)?;
            }
            tar.finish()?;
        }
        tmp.flush()?;
        let file = tokio::fs::File::open(tmp.path()).await?;
        self.engine
            .upload(container, "/", tokio_util::io::ReaderStream::new(file))
            .await?;
        Ok(())
    }
}

pub(crate) fn resolve_chown(
    store: &Store,
    image: &Image,
    chown: Option<&str>,
) -> anyhow::Result<(u32, u32)> {
    let Some(spec) = chown else {
        return Ok((0, 0));
    };
    let (u, g) = spec.split_once(':').unwrap_or((spec, spec));
    let numeric = |s: &str| s.parse::<u32>().ok();
    if let (Some(a), Some(b)) = (numeric(u), numeric(g)) {
        return Ok((a, b));
    }
    let files = super::files::read_files(store, image, &["etc/passwd", "etc/group"])?;
    let uid = super::files::lookup_id(files.get("etc/passwd").map(Vec::as_slice), u)
        .with_context(|| format!("COPY --chown: no user {u:?} in the image's /etc/passwd"))?;
    let gid = super::files::lookup_id(files.get("etc/group").map(Vec::as_slice), g)
        .with_context(|| format!("COPY --chown: no group {g:?} in the image's /etc/group"))?;
    Ok((uid, gid))
}

/// The store note that holds a layer's uncompressed size.
fn size_note(diff_id: &Digest) -> Digest {
    Digest::of(format!("uncompressed-size-v1 {diff_id}").as_bytes())
}

/// Remember a layer's uncompressed size (known when we wrote it).
pub fn remember_uncompressed_size(store: &Store, diff_id: &Digest, size: u64) {
    let note = size_note(diff_id);
    let _ = store.put_note(&note, &serde_json::json!(size));
}

/// The uncompressed size of a stored layer (needed to stream it into an
/// engine as a tar entry), measured once and remembered by diff_id.
pub fn uncompressed_size(
    store: &Store,
    desc: &Descriptor,
    diff_id: &Digest,
) -> anyhow::Result<u64> {
    let note = size_note(diff_id);
    if let Some(n) = store.get_note(&note).and_then(|v| v.as_u64()) {
        return Ok(n);
    }
    let blob = store.open_blob(&desc.digest)?;
    let mut r = layer::decompress(blob)?;
    let n = std::io::copy(&mut r, &mut std::io::sink())?;
    store.put_note(&note, &serde_json::json!(n))?;
    Ok(n)
}
