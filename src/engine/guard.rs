//! Making sure a step container never outlives its step.
//!
//! Three layers, from the common case to the worst one:
//! 1. the caller awaits [`ContainerGuard::remove`] on every path it
//!    controls (success and error alike);
//! 2. if the guard is dropped without that (a panic, an early `?`, a future
//!    cancelled by `select!`), `Drop` starts the removal in the background;
//! 3. on Ctrl-C / SIGTERM the build module's handler calls
//!    [`Engine::remove_created`], which removes every container this
//!    process created and has not removed yet, then exits; and a run killed
//!    with `-9` is cleaned up by the next run's [`Engine::cleanup_leftovers`].

use super::{Container, Engine, EngineError};

impl Engine {
    /// Remove every container this process created (through this engine or
    /// its clones) and has not removed yet: for the Ctrl-C / SIGTERM
    /// handler, which cannot know which guards are alive. Returns how many
    /// were removed; tries them all and reports the first error.
    pub async fn remove_created(&self) -> Result<usize, EngineError> {
        let ids: Vec<String> = self.created_ids();
        let mut first_err = None;
        for id in &ids {
            if let Err(e) = self.remove(&Container { id: id.clone() }).await {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(ids.len()),
        }
    }

    /// The containers [`Engine::remove_created`] would remove.
    pub fn created_ids(&self) -> Vec<String> {
        let set = self.created.lock().unwrap_or_else(|p| p.into_inner());
        set.iter().cloned().collect()
    }

    pub(super) fn track(&self, id: &str, alive: bool) {
        let mut set = self.created.lock().unwrap_or_else(|p| p.into_inner());
        if alive {
            set.insert(id.to_string());
        } else {
            set.remove(id);
        }
    }
}

/// Owns a step container until it is removed.
///
/// ```no_run
/// # async fn step(engine: &tplbuild::engine::Engine, spec: &tplbuild::engine::ContainerSpec)
/// #     -> Result<i64, tplbuild::engine::EngineError> {
/// use tplbuild::engine::ContainerGuard;
/// let guard = ContainerGuard::new(engine, engine.create(spec).await?);
/// let result = engine.run(guard.container(), |line| println!("{line}")).await;
/// // ... read the diff (upper_dir / changes + export) before removing ...
/// guard.remove().await?; // on the error path too: remove first, then `?` the result
/// result
/// # }
/// ```
#[derive(Debug)]
pub struct ContainerGuard {
    engine: Engine,
    container: Option<Container>,
}

impl ContainerGuard {
    pub fn new(engine: &Engine, container: Container) -> Self {
        ContainerGuard {
            engine: engine.clone(),
            container: Some(container),
        }
    }

    pub fn container(&self) -> &Container {
        self.container
            .as_ref()
            .expect("the container is only taken by remove(self) and drop")
    }

    /// Remove the container and wait for it: the way every normal path ends.
    pub async fn remove(mut self) -> Result<(), EngineError> {
        let c = self.container.take().expect("not yet removed");
        self.engine.remove(&c).await
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let Some(c) = self.container.take() else {
            return;
        };
        let engine = self.engine.clone();
        tracing::debug!(
            container = c.id,
            "guard dropped: removing in the background"
        );
        let removal = async move {
            if let Err(e) = engine.remove(&c).await {
                tracing::warn!(container = c.id, "could not remove step container: {e}");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(removal);
            }
            // Dropped outside a runtime: give the removal one of its own.
            Err(_) => {
                std::thread::spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(removal),
                        Err(e) => tracing::warn!("could not remove a step container: {e}"),
                    }
                });
            }
        }
    }
}
