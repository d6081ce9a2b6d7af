//! A [`StepEngine`] for unit tests: each container is a temp folder that
//! plays the overlay upper dir; running a container applies the [`Effect`]
//! scripted for its command (files written, lines printed, an exit code,
//! or a wait that only an interrupt ends), and its changes are read with
//! `ChangeSet::from_upper`. It counts what a test wants to check: images
//! loaded, containers created and removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::TryStreamExt;

use super::{
    ByteStream, Container, ContainerSpec, DiffChoice, DiffSource, EngineError, EngineInfo,
    EngineKind, LineSink, LoadLayer, LoadSpec, StepEngine,
};
use crate::layer::{ChangeSet, TreeIndex};
use crate::oci::Platform;

/// What running a container with a given script does.
#[derive(Debug, Clone, Default)]
pub struct Effect {
    pub lines: Vec<String>,
    pub exit: i64,
    /// Files written, relative to the root.
    pub files: Vec<(String, Vec<u8>)>,
    /// Never ends by itself.
    pub hang: bool,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub images_loaded: usize,
    pub created: usize,
    pub removed: usize,
    /// Containers that exist now.
    pub alive: BTreeSet<String>,
    /// The environment each container was created with, in order.
    pub envs: Vec<Vec<String>>,
}

pub struct FakeEngine {
    info: EngineInfo,
    root: tempfile::TempDir,
    effects: Mutex<HashMap<String, Effect>>,
    scripts: Mutex<BTreeMap<String, Option<String>>>,
    images: Mutex<BTreeSet<String>>,
    /// How many of the next runs fail as "never started".
    never_start: Mutex<usize>,
    pub counts: Arc<Mutex<Counts>>,
}

impl FakeEngine {
    pub fn new() -> Self {
        FakeEngine {
            info: EngineInfo {
                kind: EngineKind::Docker,
                version: "fake".into(),
                api_version: "1.41".into(),
                host: "fake://".into(),
            },
            root: tempfile::tempdir().expect("a temp dir"),
            effects: Default::default(),
            scripts: Default::default(),
            images: Default::default(),
            never_start: Mutex::new(0),
            counts: Default::default(),
        }
    }

    /// Running `script` does `effect`.
    pub fn on(&self, script: &str, effect: Effect) {
        self.effects
            .lock()
            .unwrap()
            .insert(script.to_string(), effect);
    }

    /// The next `n` runs fail before their command starts.
    pub fn fail_to_start(&self, n: usize) {
        *self.never_start.lock().unwrap() = n;
    }

    fn upper(&self, c: &Container) -> PathBuf {
        self.root.path().join(&c.id)
    }
}

fn not_started(id: &str) -> EngineError {
    EngineError::NotStarted {
        action: format!("attaching to container {id}"),
        source: bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message: "preparing container for attach: write child: broken pipe".into(),
        },
    }
}

impl StepEngine for FakeEngine {
    fn info(&self) -> &EngineInfo {
        &self.info
    }
    fn has_image<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async move { Ok(self.images.lock().unwrap().contains(tag)) })
    }
    fn load_image<'a>(
        &'a self,
        tag: &'a str,
        _: &'a LoadSpec,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            self.images.lock().unwrap().insert(tag.to_string());
            self.counts.lock().unwrap().images_loaded += 1;
            Ok(())
        })
    }
    fn import_layer<'a>(
        &'a self,
        tag: &'a str,
        _: &'a LoadLayer,
        _: &'a Platform,
    ) -> BoxFuture<'a, Result<bool, EngineError>> {
        Box::pin(async move {
            self.images.lock().unwrap().insert(tag.to_string());
            Ok(true)
        })
    }
    fn remove_image<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            self.images.lock().unwrap().remove(tag);
            Ok(())
        })
    }
    fn create<'a>(
        &'a self,
        spec: &'a ContainerSpec,
    ) -> BoxFuture<'a, Result<Container, EngineError>> {
        Box::pin(async move {
            let mut counts = self.counts.lock().unwrap();
            counts.created += 1;
            let c = Container {
                id: format!("fake{}", counts.created),
            };
            counts.alive.insert(c.id.clone());
            counts.envs.push(spec.env.clone());
            fs_err::create_dir_all(self.upper(&c)).expect("a container folder");
            self.scripts
                .lock()
                .unwrap()
                .insert(c.id.clone(), spec.script.clone());
            Ok(c)
        })
    }
    fn upload<'a>(
        &'a self,
        c: &'a Container,
        dest_dir: &'a str,
        tar: ByteStream,
    ) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let io = |source| EngineError::Io {
                action: format!("copying into {dest_dir}"),
                source,
            };
            let chunks: Vec<bytes::Bytes> = tar.try_collect().await.map_err(io)?;
            let bytes: Vec<u8> = chunks.concat();
            let dest = self.upper(c).join(dest_dir.trim_start_matches('/'));
            let mut ar = tar::Archive::new(&bytes[..]);
            ar.set_preserve_permissions(true);
            ar.set_preserve_ownerships(rustix::process::geteuid().is_root());
            ar.unpack(dest).map_err(io)
        })
    }
    fn run<'a>(
        &'a self,
        c: &'a Container,
        mut on_line: LineSink<'a>,
    ) -> BoxFuture<'a, Result<i64, EngineError>> {
        Box::pin(async move {
            {
                let mut left = self.never_start.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    return Err(not_started(&c.id));
                }
            }
            let script = self.scripts.lock().unwrap().get(&c.id).cloned().flatten();
            let effect = script
                .and_then(|s| self.effects.lock().unwrap().get(&s).cloned())
                .unwrap_or_default();
            for l in &effect.lines {
                on_line(super::seam::OutputStream::Stdout, l);
            }
            for (path, bytes) in &effect.files {
                let p = self.upper(c).join(path);
                fs_err::create_dir_all(p.parent().expect("a parent")).expect("folders");
                fs_err::write(p, bytes).expect("a file");
            }
            if effect.hang {
                std::future::pending::<()>().await;
            }
            Ok(effect.exit)
        })
    }
    fn read_changes<'a>(
        &'a self,
        c: &'a Container,
        _: DiffChoice,
        _: &'a Path,
        _: Arc<TreeIndex>,
        _: Option<i64>,
    ) -> BoxFuture<'a, anyhow::Result<(ChangeSet, DiffSource)>> {
        Box::pin(async move { Ok((ChangeSet::from_upper(&self.upper(c))?, DiffSource::Upper)) })
    }
    fn remove<'a>(&'a self, c: &'a Container) -> BoxFuture<'a, Result<(), EngineError>> {
        Box::pin(async move {
            let mut counts = self.counts.lock().unwrap();
            if counts.alive.remove(&c.id) {
                counts.removed += 1;
            }
            let _ = fs_err::remove_dir_all(self.upper(c));
            Ok(())
        })
    }
    fn cleanup_leftovers(&self) -> BoxFuture<'_, Result<usize, EngineError>> {
        Box::pin(async { Ok(0) })
    }
}
