//! Running one step in the engine and turning its change into a layer.

use std::io::Write as _;

use anyhow::Context as _;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::signals::Signals;
use super::{record_for, BuildError, BuildOptions};
use futures_util::future::BoxFuture;

use crate::engine::{
    self, run_container, Container, ContainerSpec, ContainerWork, DiffChoice, DiffSource,
    StepEngine,
};
use crate::failure::Failure;
use crate::image::Image;
use crate::layer::{self, Hygiene, LayerOptions};
use crate::oci::{Compression, Descriptor, Digest};
use crate::plan::{Plan, Step, StepKind};
use crate::progress::Progress;
use crate::registry::Client;
use crate::stage::{remember_uncompressed_size, resolve_chown, EngineState};
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

/// Runs the steps that missed, on one engine, for one build or lock.
pub struct Runner {
    engine: Arc<dyn StepEngine>,
    network: engine::Network,
    diff: DiffChoice,
    /// Whether the diff source was announced.
    diff_said: AtomicBool,
    indexes: tokio::sync::Mutex<super::diff::Indexes>,
    pub containers_created: usize,
    state: EngineState,
    /// The platform whose emulation was found to work (checked once).
    emulation_ok: Option<crate::oci::Platform>,
}

impl Runner {
    /// Which engine ran the steps, for the build's provenance.
    pub fn engine_info(&self) -> crate::engine::EngineInfo {
        self.engine.info().clone()
    }

    /// Connect to the engine `opts` names (see [`engine::connect`]).
    pub async fn connect(opts: &BuildOptions, progress: &Progress) -> anyhow::Result<Self> {
        let engine = engine::connect(opts.engine).await?;
        Ok(Self::with_engine(Arc::new(engine), opts, progress).await)
    }

    /// Run on `engine`: say which it is, and remove what killed runs left.
    pub async fn with_engine(
        engine: Arc<dyn StepEngine>,
        opts: &BuildOptions,
        progress: &Progress,
    ) -> Self {
        engine::introduce(&*engine, progress).await;
        Runner {
            engine,
            network: opts.network,
            diff: opts.diff,
            diff_said: AtomicBool::new(false),
            indexes: Default::default(),
            containers_created: 0,
            state: EngineState::default(),
            emulation_ok: None,
        }
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
        let loc = plan.location(step.span);
        let wrap = |e: anyhow::Error| BuildError::Step {
            location: loc.clone(),
            text: step.text.clone(),
            source: e,
        };
        self.check_emulation(&plan.platform).map_err(wrap)?;
        if let StepKind::Copy { chown: Some(c), .. } = &step.kind {
            if c.split(':').any(|part| part.parse::<u32>().is_err()) {
                // Names are looked up in the parent's /etc/passwd and /etc/group.
                transfer::ensure_from(store, client, sources, parent.layers())
                    .await
                    .map_err(|e| wrap(e.into()))?;
            }
        }
        let tag = self
            .state
            .ensure(&*self.engine, store, client, sources, parent, progress)
            .await
            .map_err(wrap)?;
        let mut env: Vec<String> = step.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if step.kind.uses_apt() {
            env.push("DEBIAN_FRONTEND=noninteractive".into());
        }
        // Tools that stamp what they make (mkinitramfs' cpio, man-db,
        // python's .pyc) do so reproducibly with the epoch, which the
        // step's key covers already; an ENV of the Buildfile wins.
        if !step.env.iter().any(|(k, _)| k == "SOURCE_DATE_EPOCH") {
            env.push(format!("SOURCE_DATE_EPOCH={}", plan.epoch));
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
            platform: Some(plan.platform.clone()),
        };
        // The parent as metadata, to make the step's layer canonical.
        let tree = {
            let mut indexes = self.indexes.lock().await;
            match indexes.tree(store, parent).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!("indexing the parent needs its layers: {e:#}");
                    transfer::ensure_from(store, client, sources, parent.layers())
                        .await
                        .map_err(|e| wrap(e.into()))?;
                    indexes.tree(store, parent).await.map_err(wrap)?
                }
            }
        };
        let engine = self.engine.clone();
        let (result, created) = run_container(
            &engine,
            &spec,
            progress,
            || async { anyhow::Error::from(signals.wait().await) },
            StepWork {
                runner: self,
                tree,
                store,
                plan,
                step,
                parent,
                key,
                inputs,
            },
        )
        .await;
        self.containers_created += created;
        result.map_err(|e| match e.downcast::<BuildError>() {
            Ok(b) => b.into(),
            Err(e) => match e.downcast::<super::Interrupted>() {
                Ok(i) => i.into(),
                Err(e) => wrap(e).into(),
            },
        })
    }

    /// Before the first step for a foreign platform, check that the kernel
    /// can run its binaries (see [`crate::emulation`]). Only for a local
    /// engine: a remote one runs on a kernel we cannot read, and a step
    /// failing there with "exec format error" gets the same hint.
    fn check_emulation(&mut self, platform: &crate::oci::Platform) -> anyhow::Result<()> {
        if self.emulation_ok.as_ref() == Some(platform) {
            return Ok(());
        }
        let host = crate::oci::Platform::host();
        if self.engine.info().host.starts_with("unix://") {
            let dir = crate::emulation::binfmt_dir();
            if let Err(e) = crate::emulation::check(platform, &host, &dir) {
                let hint = e.hint();
                return Err(anyhow::Error::new(
                    Failure::failed(e.to_string()).with_hint(hint),
                ));
            }
        } else if !crate::emulation::is_native(platform, &host) {
            tracing::debug!("{platform} on a remote engine: its binfmt handlers are not checked");
        }
        self.emulation_ok = Some(platform.clone());
        Ok(())
    }

    /// The step's work in its container: feed it, run it, read its
    /// changes, write and record the layer.
    #[allow(clippy::too_many_arguments)]
    async fn work(
        &self,
        tree: Arc<crate::layer::TreeIndex>,
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
                let attrs = crate::stage::copy::CopyAttrs {
                    uid,
                    gid,
                    chmod: *chmod,
                    mtime: plan.epoch.max(0) as u64,
                };
                // Reading and framing the sources is blocking work.
                let (context, sources, dest) = (
                    plan.buildfile.context.clone(),
                    sources.clone(),
                    dest.clone(),
                );
                let tmp_dir = store.tmp_dir();
                let tmp = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir)?;
                    crate::stage::copy::write_copy_tar(&context, &sources, &dest, &attrs, &mut tmp)
                        .context("reading the COPY sources (did they change after planning?)")?;
                    tmp.flush()?;
                    Ok(tmp)
                })
                .await??;
                let file = tokio::fs::File::open(tmp.path()).await?;
                self.engine
                    .upload(
                        container,
                        "/",
                        Box::pin(tokio_util::io::ReaderStream::new(file)),
                    )
                    .await?;
            }
            _ => {
                if let Some(l) = plan.locked_step(step) {
                    self.upload_debs(store, container, l).await?;
                }
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let engine = self.engine.clone();
                let c = container.clone();
                let run = tokio::spawn(async move {
                    engine
                        .run(
                            &c,
                            Box::new(move |stream, line: &str| {
                                let _ = tx.send((stream, line.to_string()));
                            }),
                        )
                        .await
                });
                while let Some((stream, line)) = rx.recv().await {
                    progress.output(step.number, stream, &line);
                }
                let code = run.await??;
                if code != 0 {
                    return Err(BuildError::StepFailed {
                        step: step.number,
                        location: plan.location(step.span),
                        text: step.text.clone(),
                        code,
                        tail: progress.tail(),
                    }
                    .into());
                }
            }
        }
        let reading = std::time::Instant::now();
        let (set, source) = self
            .engine
            .read_changes(
                container,
                self.diff,
                &store.tmp_dir(),
                tree.clone(),
                Some(plan.epoch),
            )
            .await?;
        if !self.diff_said.swap(true, Ordering::Relaxed) {
            progress.note("diff", source.describe());
        }
        if source == DiffSource::Api {
            progress.note(
                "engine-read",
                &format!(
                    "read {} of the container's files through the engine API in {:.1}s",
                    crate::human::human_size(set.read_bytes),
                    reading.elapsed().as_secs_f64()
                ),
            );
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
        self.indexes
            .lock()
            .await
            .remember(store, &written.diff_id, index);
        let source_name = match source {
            DiffSource::Upper => "upper",
            DiffSource::Api => "api",
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

/// One step's [`Runner::work`], as [`run_container`] calls it.
struct StepWork<'a> {
    runner: &'a Runner,
    tree: Arc<crate::layer::TreeIndex>,
    store: &'a Store,
    plan: &'a Plan,
    step: &'a Step,
    parent: &'a Image,
    key: &'a Digest,
    inputs: serde_json::Value,
}

impl ContainerWork for StepWork<'_> {
    type Output = StepRecord;
    fn work<'x>(
        &'x mut self,
        container: &'x Container,
        progress: &'x mut Progress,
    ) -> BoxFuture<'x, anyhow::Result<StepRecord>> {
        Box::pin(self.runner.work(
            self.tree.clone(),
            self.store,
            self.plan,
            self.step,
            self.parent,
            self.key,
            self.inputs.clone(),
            container,
            progress,
        ))
    }
}

/// Where a locked step's .debs are put in its container (tmp/ is dropped
/// from layers as volatile).
const DEB_DIR: &str = "tmp/tplbuild-debs";

/// The script of a locked apt step: install the given .debs (apt orders and
/// checks them, with no package lists and no network), mark what the
/// Buildfile did not ask for as automatically installed, as apt would have.
fn locked_script(kind: &StepKind, locked: &crate::lockfile::LockedStep) -> String {
    use crate::lockfile::LockedPackage;
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
                "set -e; apt-get install -y {} --no-install-recommends /{DEB_DIR}/*.deb; rm -rf /{DEB_DIR}",
                crate::plan::DPKG_UNSAFE_IO
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
        locked: &crate::lockfile::LockedStep,
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
        // Copying the .debs into a tar is blocking work.
        let tmp_dir = store.tmp_dir();
        let tmp = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir)?;
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
            Ok(tmp)
        })
        .await??;
        let file = tokio::fs::File::open(tmp.path()).await?;
        self.engine
            .upload(
                container,
                "/",
                Box::pin(tokio_util::io::ReaderStream::new(file)),
            )
            .await?;
        Ok(())
    }
}
