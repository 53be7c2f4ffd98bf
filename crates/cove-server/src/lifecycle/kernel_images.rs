//! Kernel images: for gVisor sandboxes, a memory snapshot of each template taken once its
//! Python kernel is up. A sandbox of the template is started on gVisor with its kernel
//! started and primed, snapshotted with its memory, and ended; sandboxes of that template
//! then start restored from the image, the kernel already running, so their first
//! `run_code` pays no kernel start (each takes its own identity at the restore, and the
//! kernel catches up with the sandbox's environment on its first run).
//!
//! Code-interpreter sandboxes use them (a create that names E2B's code-interpreter template,
//! as its code-interpreter SDKs do). An image is made on a template's first such create, in
//! the background (that create starts the usual way), and kept while the server runs: its layers live under the
//! snapshots directory, held here and by the records of the sandboxes made from it, and are
//! collected with unused snapshot layers once neither holds them. Warm gVisor sandboxes are
//! restored from it ahead of demand ([`super::warm`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cove_runtime::Template;

use super::{
    Lifecycle,
    pool::Warm,
    settings::{RUNTIME_KEY, Settings},
    snapshot::LayersHeld,
    templates::{TemplateEntry, TemplateKind},
};
use crate::secrets;

/// How long after a failed attempt a template's image is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(600);

/// The kernel images, by template (its warm key: a rebuilt template gets a new one).
#[derive(Debug, Default)]
pub struct KernelImages(Mutex<HashMap<String, Image>>);

#[derive(Debug)]
enum Image {
    Making,
    Ready(Template, #[allow(dead_code)] LayersHeld),
    Failed(Instant),
}

impl KernelImages {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Image>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether sandboxes of these settings start from a kernel image: code-interpreter sandboxes
/// (the create named that template) on gVisor, with no volumes (a checkpoint restores only
/// onto the mounts it was taken with).
pub fn fits(settings: &Settings) -> bool {
    settings.code_interpreter
        && settings.on_gvisor
        && matches!(
            settings.template.kind,
            TemplateKind::BuiltIn | TemplateKind::Built { .. }
        )
        && settings.template.start.is_none()
        && settings.template.template.memory.is_none()
        && settings.volumes.is_empty()
        && settings.fork_of.is_none()
}

impl Lifecycle {
    /// The kernel image of `entry` if it is ready, without making one.
    pub(super) fn ready_kernel_image(&self, entry: &TemplateEntry) -> Option<Template> {
        match self.kernel_images.lock().get(&entry.warm_key()) {
            Some(Image::Ready(template, _)) => Some(template.clone()),
            _ => None,
        }
    }

    /// The kernel image of `entry`, when it is ready; otherwise it is made (once, in the
    /// background) and none is said. Once made, the warm pool of its gVisor sandboxes of
    /// kind `network` fills.
    pub(super) fn kernel_image(
        self: &Arc<Self>,
        entry: &TemplateEntry,
        network: bool,
    ) -> Option<Template> {
        let key = entry.warm_key();
        {
            let mut images = self.kernel_images.lock();
            match images.get(&key) {
                Some(Image::Ready(template, _)) => return Some(template.clone()),
                Some(Image::Making) => return None,
                Some(Image::Failed(at)) if at.elapsed() < RETRY_AFTER => return None,
                _ => {}
            }
            images.insert(key.clone(), Image::Making);
        }
        let this = self.clone();
        let entry = entry.clone();
        self.warming.spawn(async move {
            let began = Instant::now();
            let made = this.make_kernel_image(&entry).await;
            let ready = made.is_ok();
            let image = match made {
                Ok((template, held)) => {
                    tracing::info!(template = %entry.id, took_ms = began.elapsed().as_millis(), "kernel image ready for gVisor sandboxes");
                    Image::Ready(template, held)
                }
                Err(err) => {
                    tracing::warn!(template = %entry.id, %err, "cannot make a kernel image; gVisor sandboxes of this template start their kernel on first use");
                    Image::Failed(Instant::now())
                }
            };
            this.kernel_images.lock().insert(key, image);
            if ready {
                this.refill(&entry, network, super::warm::Flavor::GvisorKernel, Duration::ZERO);
            }
        });
        None
    }

    /// Starts a gVisor sandbox of `entry`, has its agent start and prime the Python kernel,
    /// snapshots it with its memory and ends it.
    async fn make_kernel_image(
        &self,
        entry: &TemplateEntry,
    ) -> Result<(Template, LayersHeld), String> {
        let mut settings = Settings::warm(entry.clone(), self.config.caps, false);
        settings.metadata.insert(
            RUNTIME_KEY.to_owned(),
            cove_runtime::gvisor::NAME.to_owned(),
        );
        let mut record = settings.record(&self.config, secrets::random_id(20));
        let started = match self.start(&mut record, entry.template.clone(), false).await {
            Ok(started) => started,
            Err(err) => {
                self.discard(&record).await;
                return Err(format!("cannot start its sandbox: {err}"));
            }
        };
        let builder = Warm::new(record, started);
        let made = self.snapshot_kernel(&builder, entry).await;
        self.end_warm(builder).await;
        made
    }

    async fn snapshot_kernel(
        &self,
        builder: &Warm,
        entry: &TemplateEntry,
    ) -> Result<(Template, LayersHeld), String> {
        // The kernel is up and primed (by a run nobody counts) once this answers.
        let warm = format!(
            "{}{}",
            cove_proto::envd::INTERPRETER_PREFIX,
            cove_proto::envd::INTERPRETER_WARM
        );
        crate::agent_link::post_json(
            &builder.links,
            &warm,
            Some(&builder.record.envd_access_token),
            &serde_json::json!({}),
        )
        .await
        .map_err(|err| format!("its kernel did not start: {err}"))?;
        let into = self.config.snapshots_dir.join(secrets::random_id(20));
        let held = self.layers_in_use.hold_paths(vec![into.clone()]);
        let (handle, template, dir) = (
            builder.started.handle.clone(),
            entry.template.clone(),
            self.config.snapshots_dir.clone(),
        );
        let image = self
            .blocking(move |r| {
                super::snapshot::make_dir(&dir)?;
                r.snapshot_memory(&handle, &template, &into)
            })
            .await
            .map_err(|err| format!("cannot snapshot it: {err}"))?;
        Ok((image, held))
    }
}
