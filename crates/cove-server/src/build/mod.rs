//! The template builder, one concept per file: a request checked into a [`plan`], the base
//! [`image`] pulled, each step run ([`run`]) — `RUN` in a real sandbox of the layers below,
//! `COPY` ([`copy`]) and `WORKDIR` ([`workdir`]) written on the host — and its writable layer
//! kept as a read-only layer in the layer store under a [`cache`] key, Cove's own
//! [`accounts`] layer on top, the build's [`logs`] kept for clients polling them, and the
//! uploaded [`context`] files the COPY steps take.
//!
//! Builds of different templates run side by side up to a limit; two builds of one template
//! run one after the other (the second waits, and says so in its log).

pub mod accounts;
pub mod cache;
pub mod context;
pub mod copy;
mod from_snapshot;
pub mod image;
mod import;
pub mod layer_tree;
pub mod logs;
pub mod plan;
mod run;
mod share;
pub mod stack;
pub mod storage;
pub mod workdir;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use cove_image::{LayerStore, RegistryClient};
use cove_proto::templates::{BuildReason, BuildStatus};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::{
    catalog::{BuildRow, Catalog, CatalogError, TemplateRow},
    lifecycle::Lifecycle,
};

pub use self::{context::Contexts, logs::BuildLog, plan::Plan};

/// How the builder is set up.
#[derive(Clone, Debug)]
pub struct BuilderConfig {
    /// Builds that run at once (others wait their turn).
    pub concurrent: usize,
    /// The name servers build steps and templates get (`/etc/resolv.conf`).
    pub resolv_conf: String,
    /// PEM certificates templates trust besides their image's own (an egress proxy's).
    pub extra_ca_certs: String,
    /// The most a layer made on the host (COPY) may hold: a sandbox's disk, as for RUN.
    pub max_layer_bytes: u64,
    /// How long the object store keeps what nothing needs before a collection removes it.
    pub object_store_keep_for: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("build {0} was started already")]
    AlreadyStarted(String),
}

/// See the module documentation.
pub struct Builder {
    catalog: Arc<Catalog>,
    store: LayerStore,
    registry: RegistryClient,
    contexts: Contexts,
    lifecycle: Arc<Lifecycle>,
    config: BuilderConfig,
    turns: Semaphore,
    /// One build at a time per template.
    templates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    tasks: TaskTracker,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").finish_non_exhaustive()
    }
}

/// Why a build failed: the step (`base`, `1`…, `finalize`) and what happened.
#[derive(Clone, Debug)]
pub struct Failure {
    pub step: String,
    pub message: String,
}

impl Failure {
    pub fn at(step: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            step: step.into(),
            message: message.into(),
        }
    }
}

impl Builder {
    pub fn new(
        catalog: Arc<Catalog>,
        store: LayerStore,
        registry: RegistryClient,
        contexts: Contexts,
        lifecycle: Arc<Lifecycle>,
        config: BuilderConfig,
    ) -> Self {
        Self {
            turns: Semaphore::new(config.concurrent.max(1)),
            catalog,
            store,
            registry,
            contexts,
            lifecycle,
            config,
            templates: Mutex::default(),
            tasks: TaskTracker::new(),
        }
    }

    pub fn contexts(&self) -> &Contexts {
        &self.contexts
    }

    pub fn store(&self) -> &LayerStore {
        &self.store
    }

    /// After a restart: builds the previous server was running ended with it.
    pub fn fail_interrupted(&self) -> Result<usize, CatalogError> {
        let reason = BuildReason {
            message: "the build was interrupted: the server stopped while it ran; start it again"
                .to_owned(),
            step: None,
            log_entries: Vec::new(),
        };
        let interrupted = self.catalog.fail_interrupted_builds(&reason)?;
        for build in &interrupted {
            tracing::warn!(build_id = %build.id, template = %build.template, "build interrupted by a restart");
            let _ = self.store.release_all(&owner(&build.id));
        }
        Ok(interrupted.len())
    }

    /// Starts build `build` of `template` with `plan`, in the background.
    pub fn start(
        self: &Arc<Self>,
        template: TemplateRow,
        build: BuildRow,
        plan: Plan,
    ) -> Result<(), BuildError> {
        if !self.catalog.trigger_build(&build.id)? {
            return Err(BuildError::AlreadyStarted(build.id));
        }
        let this = self.clone();
        self.tasks.spawn(async move {
            this.build(template, build, plan).await;
        });
        Ok(())
    }

    async fn build(self: Arc<Self>, template: TemplateRow, build: BuildRow, plan: Plan) {
        let log = BuildLog::open(self.catalog.clone(), &build.id);
        let lock = self
            .templates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(template.id.clone())
            .or_default()
            .clone();
        let _template_turn = match lock.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                log.info(
                    image::BASE_STEP,
                    "waiting for the build of this template that is running to finish",
                );
                lock.lock().await
            }
        };
        let _turn = match self.turns.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                log.info(image::BASE_STEP, "waiting for other builds to finish");
                match self.turns.acquire().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                }
            }
        };
        if let Err(err) = self
            .catalog
            .set_build_status(&build.id, BuildStatus::Building)
        {
            tracing::error!(?err, build_id = %build.id, "cannot mark a build as running");
        }
        let started = std::time::Instant::now();
        let outcome = self.run(&template, &build, &plan, &log).await;
        match outcome {
            Ok(built) => {
                if let Err(failure) = self.share(&build, &built, &log).await {
                    self.fail(&build, &log, failure);
                    return;
                }
                log.info(
                    run::FINALIZE_STEP,
                    format!("build finished in {:.1} s", started.elapsed().as_secs_f64()),
                );
                if let Err(err) = self.finish_ready(&template, &build, &built) {
                    tracing::error!(?err, build_id = %build.id, "cannot record a finished build");
                    self.fail(
                        &build,
                        &log,
                        Failure::at(
                            run::FINALIZE_STEP,
                            format!("cannot record the build: {err}"),
                        ),
                    );
                }
            }
            Err(failure) => self.fail(&build, &log, failure),
        }
    }

    pub(super) fn fail(&self, build: &BuildRow, log: &BuildLog, failure: Failure) {
        log.line(logs::Level::Error, &failure.step, failure.message.clone());
        let reason = BuildReason {
            message: failure.message,
            step: Some(failure.step.clone()),
            log_entries: log.tail(&failure.step),
        };
        if let Err(err) = self.catalog.finish_build(&build.id, Err(&reason)) {
            tracing::error!(?err, build_id = %build.id, "cannot record a failed build");
        }
        // Its layers stay in the store (the cache may use them) until a collection.
        let _ = self.store.release_all(&owner(&build.id));
        tracing::info!(build_id = %build.id, step = %reason.step.unwrap_or_default(), "build failed");
    }

    /// Records a finished build: its tags point at it, builds they named before lose them
    /// (and their layers, when no tag names them any more).
    pub(super) fn finish_ready(
        &self,
        template: &TemplateRow,
        build: &BuildRow,
        built: &crate::catalog::Built,
    ) -> Result<(), CatalogError> {
        self.catalog.finish_build(&build.id, Ok(built))?;
        self.lifecycle.templates().note_cached(&template.id);
        for tag in &build.tags {
            if let Some(before) = self.catalog.assign_tag(&template.id, tag, &build.id)? {
                self.release_if_untagged(&before)?;
            }
        }
        if let Some(entry) = self
            .catalog
            .build(&template.id, &build.id)?
            .and_then(|row| self.lifecycle.templates().entry(template, &row))
            .filter(|_| build.tags.iter().any(|t| t == crate::catalog::DEFAULT_TAG))
        {
            self.lifecycle.prewarm(&entry);
        }
        tracing::info!(build_id = %build.id, template = %template.id, "build ready");
        Ok(())
    }

    /// Drops a build's layer references when no tag names it.
    pub fn release_if_untagged(&self, build: &str) -> Result<(), CatalogError> {
        if self.catalog.tag_count(build)? == 0 {
            let _ = self.store.release_all(&owner(build));
        }
        Ok(())
    }

    /// Lets builds under way end (at shutdown they are cut short: a restarted server marks
    /// them failed).
    pub fn close(&self) {
        self.tasks.close();
    }
}

/// The layer-store owner of a build's layers.
pub fn owner(build: &str) -> String {
    format!("build:{build}")
}
