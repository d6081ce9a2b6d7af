//! Making sure a step container never outlives its step.
//!
//! Three layers, from the common case to the worst one:
//! 1. [`super::run_container`] removes the container on every path it
//!    controls: success, error, and an interrupt (Ctrl-C, SIGTERM), which
//!    ends the step's work and is answered only after the removal;
//! 2. it holds the container in a [`ContainerGuard`], so if its own future
//!    is dropped without finishing (a panic, an outer `select!`), `Drop`
//!    starts the removal in the background;
//! 3. a run killed with `-9` is cleaned up by the next run's
//!    [`Engine::cleanup_leftovers`](super::Engine::cleanup_leftovers).

use std::sync::Arc;

use super::{Container, Engine, EngineError, StepEngine};

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
pub struct ContainerGuard {
    engine: Arc<dyn StepEngine>,
    container: Option<Container>,
}

impl std::fmt::Debug for ContainerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerGuard")
            .field("container", &self.container)
            .finish()
    }
}

impl ContainerGuard {
    pub fn new(engine: &Engine, container: Container) -> Self {
        Self::shared(Arc::new(engine.clone()), container)
    }

    /// A guard on any [`StepEngine`].
    pub fn shared(engine: Arc<dyn StepEngine>, container: Container) -> Self {
        ContainerGuard {
            engine,
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
