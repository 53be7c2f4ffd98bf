//! Running one build: the base, every step (from the cache while nothing before it changed
//! and nothing forces it; from the first step that must run on, each is run), Cove's
//! accounts layer on top, and the start command checked.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use cove_image::Digest;
use cove_runtime::{Layer, Template};

use super::{
    Builder, Failure,
    accounts::{self, Accounts},
    cache,
    image::{self, BASE_STEP},
    layer_tree::LayerTree,
    logs::{BuildLog, Level},
    owner,
    plan::{Base, Plan, PlannedStep, StepKind},
    stack::Stack,
    workdir,
};
use crate::{
    agent_exec,
    catalog::{BuildRow, Built, Cached, TemplateRow},
    lifecycle::{LifecycleError, PrivateSpec, TemplateKind, start_cmd},
    store::SandboxDefaults,
};

/// The step name of what follows the last step.
pub const FINALIZE_STEP: &str = "finalize";
/// How long one RUN step may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(3600);
/// The least memory a build step's sandbox gets (compilers and package managers need it).
const BUILD_MEMORY_MB: u64 = 2048;
/// Set for steps and sandboxes of images: pip may install into Debian's Python (PEP 668),
/// as it may in E2B's templates and in `base`.
pub(super) const PIP_OVERRIDE: (&str, &str) = ("PIP_BREAK_SYSTEM_PACKAGES", "1");
/// Variables naming the certificates of TLS clients that do not read the system's store.
const CA_VARIABLES: [&str; 5] = [
    "SSL_CERT_FILE",
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
];

/// Where a build is between steps.
struct State {
    /// Layers so far, top first.
    layers: Vec<Digest>,
    key: String,
    user: String,
    workdir: String,
    env: BTreeMap<String, String>,
    from: String,
}

impl Builder {
    pub(super) async fn run(
        &self,
        template: &TemplateRow,
        build: &BuildRow,
        plan: &Plan,
        log: &BuildLog,
    ) -> Result<Built, Failure> {
        let owner = owner(&build.id);
        let mut state = self.base(template, plan, &owner, log).await?;
        let total = plan.steps.len();
        let mut rebuilding = plan.force;
        for step in &plan.steps {
            let number = step.number.to_string();
            let key = cache::step_key(&state.key, step);
            match &step.kind {
                StepKind::Env(pairs) => {
                    log.info(
                        &number,
                        format!("[{}/{total}] {}", step.number, step.summary()),
                    );
                    state.env.extend(pairs.iter().cloned());
                    state.key = key;
                    continue;
                }
                StepKind::User(user) => {
                    log.info(
                        &number,
                        format!("[{}/{total}] {}", step.number, step.summary()),
                    );
                    state.user = user.clone();
                    state.key = key;
                    continue;
                }
                _ => {}
            }
            rebuilding |= step.force;
            if !rebuilding && let Some(layer) = self.cached(&key, &owner) {
                log.info(
                    &number,
                    format!("[{}/{total}] CACHED {}", step.number, step.summary()),
                );
                if let Some(layer) = layer {
                    state.layers.insert(0, layer);
                }
                if let StepKind::Workdir(path) = &step.kind {
                    state.workdir = workdir::join(&state.workdir, path);
                }
                state.key = key;
                continue;
            }
            // From the first step that runs on, every step runs: what it is built on changed.
            rebuilding = true;
            log.info(
                &number,
                format!("[{}/{total}] {}", step.number, step.summary()),
            );
            let layer = match &step.kind {
                StepKind::Run { command, user } => {
                    self.run_step(
                        template,
                        build,
                        step,
                        &state,
                        command,
                        user.as_deref(),
                        &key,
                        log,
                    )
                    .await?
                }
                StepKind::Copy { copy, files_hash } => {
                    let archive = self.contexts.path(&template.team, files_hash);
                    if !archive.is_file() {
                        return Err(Failure::at(
                            number,
                            format!(
                                "{}: the files with hash {files_hash} were not uploaded (or were collected since): upload them again",
                                step.describe()
                            ),
                        ));
                    }
                    let (copy, workdir) = (copy.clone(), PathBuf::from(&state.workdir));
                    let max = self.config.max_layer_bytes;
                    self.host_layer(
                        &state,
                        &key,
                        &build.id,
                        &owner,
                        move |stack, tree, scratch| {
                            copy.apply(&archive, max, stack, tree, &workdir, scratch)
                                .map_err(|e| e.to_string())
                        },
                    )
                    .await
                    .map_err(|e| Failure::at(&number, format!("{}: {e}", step.describe())))?
                }
                StepKind::Workdir(path) => {
                    let target = workdir::join(&state.workdir, path);
                    let user = state.user.clone();
                    let made = self
                        .host_layer(&state, &key, &build.id, &owner, move |stack, tree, _| {
                            let ids = accounts::resolve_owner(stack, &user)
                                .map_err(|e| e.to_string())?
                                .ok_or_else(|| format!("no user {user:?} in the template"))?;
                            workdir::make(stack, tree, &target, ids).map_err(|e| e.to_string())?;
                            Ok(())
                        })
                        .await
                        .map_err(|e| Failure::at(&number, format!("{}: {e}", step.describe())))?;
                    state.workdir = workdir::join(&state.workdir, path);
                    made
                }
                StepKind::Env(_) | StepKind::User(_) => None,
            };
            if let Err(err) = self
                .catalog
                .cache_step(&key, layer.as_ref().map(|l| l.hex().to_owned()).as_deref())
            {
                tracing::warn!(?err, "cannot record a step in the build cache");
            }
            if let Some(layer) = layer {
                state.layers.insert(0, layer);
            }
            state.key = key;
        }

        let accounts = self
            .accounts_layer(&state.layers, &owner)
            .await
            .map_err(|e| Failure::at(FINALIZE_STEP, e))?;
        let shell = self.shell(&state.layers).await;
        let built = Built {
            layers: state.layers.iter().map(|d| d.hex().to_owned()).collect(),
            accounts: accounts.hex().to_owned(),
            user: state.user,
            workdir: state.workdir,
            env: state.env,
            start_cmd: plan.start_cmd.clone(),
            ready_cmd: plan.ready_cmd.clone(),
            from: state.from,
            shell,
        };
        if built.start_cmd.is_some() || built.ready_cmd.is_some() {
            self.check_start(template, build, &built, log).await?;
        }
        Ok(built)
    }

    /// The layers and settings the build starts from.
    async fn base(
        &self,
        template: &TemplateRow,
        plan: &Plan,
        owner: &str,
        log: &BuildLog,
    ) -> Result<State, Failure> {
        match &plan.base {
            Base::Image {
                reference,
                credentials,
            } => {
                let image = image::pull(
                    &self.registry,
                    &self.store,
                    reference,
                    credentials,
                    owner,
                    log,
                )
                .await
                .map_err(|err| {
                    Failure::at(
                        BASE_STEP,
                        format!("cannot pull {reference}: {}", cove_image::error_chain(&err)),
                    )
                })?;
                let layers: Vec<Digest> = image.layers.iter().rev().cloned().collect();
                let env = self.image_env(&image.config.env_pairs(), &layers).await;
                Ok(State {
                    layers,
                    key: cache::base_key(&format!("image:{}", image.manifest_digest)),
                    user: accounts::USER.to_owned(),
                    workdir: accounts::USER_HOME.to_owned(),
                    env,
                    from: image.name,
                })
            }
            Base::Template(name) => {
                log.info(BASE_STEP, format!("building on template {name}"));
                let entry = self
                    .lifecycle
                    .templates()
                    .get(&template.team, name)
                    .map_err(|err| {
                        Failure::at(BASE_STEP, format!("cannot build on {name:?}: {err}"))
                    })?;
                if let TemplateKind::Snapshot { .. } = &entry.kind {
                    let (store, template, holder) =
                        (self.store.clone(), entry.template.clone(), owner.to_owned());
                    let layers = tokio::task::spawn_blocking(move || {
                        super::from_snapshot::store_layers(&store, &template, &holder)
                    })
                    .await
                    .map_err(|e| Failure::at(BASE_STEP, e.to_string()))?
                    .map_err(|e| {
                        Failure::at(BASE_STEP, format!("cannot build on {name:?}: {e}"))
                    })?;
                    let defaults = entry.defaults.clone().unwrap_or_else(|| SandboxDefaults {
                        user: accounts::USER.to_owned(),
                        workdir: accounts::USER_HOME.to_owned(),
                        env: BTreeMap::new(),
                    });
                    return Ok(State {
                        layers,
                        // Its layers' paths name its content (a reused snapshot name gets
                        // new layers).
                        key: cache::base_key(&format!(
                            "snapshot:{}",
                            entry
                                .template
                                .layers
                                .iter()
                                .map(|l| l.path.display().to_string())
                                .collect::<Vec<_>>()
                                .join(":")
                        )),
                        user: defaults.user,
                        workdir: defaults.workdir,
                        env: defaults.env,
                        from: format!("snapshot {}", entry.alias),
                    });
                }
                let TemplateKind::Built { build, .. } = &entry.kind else {
                    return Err(Failure::at(
                        BASE_STEP,
                        format!(
                            "cannot build on {name:?}: it is built into the server from the host's \
                             own files; start from an image instead (fromImage, e.g. debian:bookworm)"
                        ),
                    ));
                };
                // Built on another node of the cluster: its layers come from the object store.
                self.lifecycle
                    .templates()
                    .ensure_local(&entry)
                    .await
                    .map_err(|err| {
                        Failure::at(BASE_STEP, format!("cannot build on {name:?}: {err}"))
                    })?;
                // Its own accounts layer stays out: this build gets its own.
                let layers: Vec<Digest> = entry.store_layers.iter().skip(1).cloned().collect();
                for layer in &layers {
                    self.store.retain(layer, owner).map_err(|err| {
                        Failure::at(
                            BASE_STEP,
                            format!("a layer of template {name:?} is gone ({err}); build it again"),
                        )
                    })?;
                }
                let defaults = entry.defaults.clone().unwrap_or_default();
                Ok(State {
                    layers,
                    key: cache::base_key(&format!("template:{}@{build}", entry.id)),
                    user: defaults.user,
                    workdir: defaults.workdir,
                    env: defaults.env,
                    from: format!("template {} (build {build})", entry.alias),
                })
            }
        }
    }

    /// The variables of a template made from an image with `image_env`: the image's, pip
    /// allowed to install into the system's Python, and — when the server adds certificates
    /// to the image's trust store — the variables that point TLS clients with trust stores of
    /// their own (pip, requests, Node.js, curl) at it.
    pub(super) async fn image_env(
        &self,
        image_env: &[(String, String)],
        layers: &[Digest],
    ) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = image_env.iter().cloned().collect();
        env.entry(PIP_OVERRIDE.0.to_owned())
            .or_insert_with(|| PIP_OVERRIDE.1.to_owned());
        if !self.config.extra_ca_certs.is_empty() {
            let stack = Stack::new(self.paths(layers));
            let has_bundle = tokio::task::spawn_blocking(move || {
                stack
                    .resolve(std::path::Path::new(accounts::CA_BUNDLE))
                    .is_ok_and(|r| r.exists)
            })
            .await
            .unwrap_or(false);
            if has_bundle {
                for name in CA_VARIABLES {
                    env.entry(name.to_owned())
                        .or_insert_with(|| accounts::CA_BUNDLE.to_owned());
                }
            }
        }
        env
    }

    /// The layer the cache has for `key`, retained for the build (`Some(None)`: the step
    /// changed nothing); `None` when it must run.
    fn cached(&self, key: &str, owner: &str) -> Option<Option<Digest>> {
        match self.catalog.cached_step(key).ok()? {
            Cached::Unknown => None,
            Cached::NoLayer => Some(None),
            Cached::Layer(hex) => {
                let layer = Digest::from_hex(&hex).ok()?;
                // Collected since: the step runs again.
                self.store.retain(&layer, owner).ok()?;
                Some(Some(layer))
            }
        }
    }

    fn paths(&self, layers: &[Digest]) -> Vec<PathBuf> {
        layers.iter().map(|d| self.store.layer_path(d)).collect()
    }

    /// `/bin/bash` where the layers have it, else `/bin/sh`.
    pub(super) async fn shell(&self, layers: &[Digest]) -> String {
        let stack = Stack::new(self.paths(layers));
        tokio::task::spawn_blocking(move || {
            if stack
                .resolve(std::path::Path::new("/bin/bash"))
                .is_ok_and(|r| r.exists)
            {
                "/bin/bash".to_owned()
            } else {
                "/bin/sh".to_owned()
            }
        })
        .await
        .unwrap_or_else(|_| "/bin/sh".to_owned())
    }

    /// Cove's accounts layer for `layers`, stored (once per content) and retained for
    /// `owner`.
    pub(super) async fn accounts_layer(
        &self,
        layers: &[Digest],
        owner: &str,
    ) -> Result<Digest, String> {
        let stack = Stack::new(self.paths(layers));
        let (store, owner, resolv, extra_ca) = (
            self.store.clone(),
            owner.to_owned(),
            self.config.resolv_conf.clone(),
            self.config.extra_ca_certs.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let accounts = Accounts::for_stack(&stack, &resolv, &extra_ca)
                .map_err(|e| format!("cannot read the template's accounts: {e}"))?;
            let id = accounts.id();
            if store.retain(&id, &owner).is_ok() {
                return Ok(id);
            }
            let staging = store.staging_dir().map_err(|e| e.to_string())?;
            let root = staging.join("tree");
            let made = std::fs::create_dir(&root)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    accounts
                        .write(&LayerTree::new(root.clone(), &stack))
                        .map_err(|e| e.to_string())
                })
                .and_then(|()| {
                    store
                        .install_tree(&id, &root, &owner)
                        .map_err(|e| e.to_string())
                });
            let _ = std::fs::remove_dir_all(&staging);
            made.map(|_| id)
                .map_err(|e| format!("cannot make the accounts layer: {e}"))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// A layer made on the host by `make` (given the stack below, the new layer's tree and
    /// a scratch directory), stored for the step with cache key `key`; `None` when it wrote
    /// nothing.
    async fn host_layer(
        &self,
        state: &State,
        key: &str,
        build: &str,
        owner: &str,
        make: impl FnOnce(&Stack, &LayerTree<'_>, &std::path::Path) -> Result<(), String>
        + Send
        + 'static,
    ) -> Result<Option<Digest>, String> {
        let stack = Stack::new(self.paths(&state.layers));
        let store = self.store.clone();
        let id = cache::layer_id(key, build);
        let owner = owner.to_owned();
        tokio::task::spawn_blocking(move || {
            let staging = store.staging_dir().map_err(|e| e.to_string())?;
            let root = staging.join("tree");
            let scratch = staging.join("scratch");
            let result = (|| {
                std::fs::create_dir(&root).map_err(|e| e.to_string())?;
                std::fs::create_dir(&scratch).map_err(|e| e.to_string())?;
                let tree = LayerTree::new(root.clone(), &stack);
                make(&stack, &tree, &scratch)?;
                if tree.is_empty() {
                    return Ok(None);
                }
                store
                    .install_tree(&id, &root, &owner)
                    .map_err(|e| e.to_string())?;
                Ok(Some(id))
            })();
            let _ = std::fs::remove_dir_all(&staging);
            result
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Runs a RUN step in a sandbox of the layers so far and keeps what it wrote.
    #[allow(clippy::too_many_arguments)]
    async fn run_step(
        &self,
        template: &TemplateRow,
        build: &BuildRow,
        step: &PlannedStep,
        state: &State,
        command: &str,
        user: Option<&str>,
        key: &str,
        log: &BuildLog,
    ) -> Result<Option<Digest>, Failure> {
        let number = step.number.to_string();
        let fail =
            |message: String| Failure::at(&number, format!("{}: {message}", step.describe()));
        let owner = owner(&build.id);
        let accounts = self
            .accounts_layer(&state.layers, &owner)
            .await
            .map_err(fail)?;
        let layers: Vec<Digest> = std::iter::once(accounts)
            .chain(state.layers.iter().cloned())
            .collect();
        let sandbox_template = self.template_of(&build.id, &layers);
        let user = user.unwrap_or(&state.user).to_owned();
        let shell = self.shell(&state.layers).await;
        let sandbox = self
            .lifecycle
            .start_private(PrivateSpec {
                purpose: format!("build:{}", build.id),
                template: sandbox_template.clone(),
                defaults: SandboxDefaults {
                    user: user.clone(),
                    workdir: state.workdir.clone(),
                    env: state.env.clone(),
                },
                network: true,
                cpu_count: template.cpu_count,
                memory_mb: template.memory_mb.max(BUILD_MEMORY_MB),
            })
            .await
            .map_err(|err| fail(format!("cannot start its sandbox: {}", chain(&err))))?;
        let command = agent_exec::Command {
            line: command.to_owned(),
            shell,
            user,
            cwd: state.workdir.clone(),
            env: Default::default(),
            timeout: Some(RUN_TIMEOUT),
        };
        let exit = agent_exec::run(
            &sandbox.started.agent,
            &sandbox.record.envd_access_token,
            &command,
            &mut |_, line| log.info(&number, line),
        )
        .await;
        let exit = match exit {
            Ok(exit) => exit,
            Err(err) => {
                self.lifecycle.end_private(sandbox).await;
                return Err(fail(format!("cannot run it: {err}")));
            }
        };
        if !exit.success() {
            self.lifecycle.end_private(sandbox).await;
            return Err(fail(format!("the command failed ({})", exit.status)));
        }
        let staging = match self.store.staging_dir() {
            Ok(staging) => staging,
            Err(err) => {
                self.lifecycle.end_private(sandbox).await;
                return Err(fail(err.to_string()));
            }
        };
        let frozen = self
            .lifecycle
            .freeze_private(sandbox, staging.join("layers"))
            .await;
        let result = match frozen {
            Err(err) => Err(fail(format!("cannot keep what it wrote: {}", chain(&err)))),
            Ok(frozen) => {
                let new = frozen
                    .layers
                    .len()
                    .saturating_sub(sandbox_template.layers.len());
                match frozen
                    .layers
                    .iter()
                    .take(new)
                    .find(|l| l.at == std::path::Path::new("/"))
                {
                    None => Ok(None),
                    Some(layer) => {
                        let (store, path, id, owner) = (
                            self.store.clone(),
                            layer.path.clone(),
                            cache::layer_id(key, &build.id),
                            owner.clone(),
                        );
                        tokio::task::spawn_blocking(move || {
                            store.install_tree(&id, &path, &owner).map(|_| Some(id))
                        })
                        .await
                        .map_err(|e| fail(e.to_string()))?
                        .map_err(|e| fail(format!("cannot store what it wrote: {e}")))
                    }
                }
            }
        };
        let _ = tokio::fs::remove_dir_all(&staging).await;
        result
    }

    /// A sandbox template of store layers (top first).
    fn template_of(&self, name: &str, layers: &[Digest]) -> Template {
        Template {
            memory: None,
            name: name.to_owned(),
            layers: layers
                .iter()
                .map(|d| Layer {
                    path: self.store.layer_path(d),
                    at: "/".into(),
                })
                .collect(),
        }
    }

    /// Starts a sandbox of the finished template and checks its start and ready commands.
    async fn check_start(
        &self,
        template: &TemplateRow,
        build: &BuildRow,
        built: &Built,
        log: &BuildLog,
    ) -> Result<(), Failure> {
        let layers: Vec<Digest> = std::iter::once(&built.accounts)
            .chain(&built.layers)
            .filter_map(|hex| Digest::from_hex(hex).ok())
            .collect();
        let defaults = SandboxDefaults {
            user: built.user.clone(),
            workdir: built.workdir.clone(),
            env: built.env.clone(),
        };
        if let Some(start) = &built.start_cmd {
            log.info(
                FINALIZE_STEP,
                format!("checking the start command: {start}"),
            );
        }
        let sandbox = self
            .lifecycle
            .start_private(PrivateSpec {
                purpose: format!("build:{}", build.id),
                template: self.template_of(&build.id, &layers),
                defaults: defaults.clone(),
                network: true,
                cpu_count: template.cpu_count,
                memory_mb: template.memory_mb,
            })
            .await
            .map_err(|err| {
                Failure::at(
                    FINALIZE_STEP,
                    format!("cannot start a sandbox of the template: {}", chain(&err)),
                )
            })?;
        let start = crate::lifecycle::StartCommand {
            start_cmd: built.start_cmd.clone(),
            ready_cmd: built.ready_cmd.clone(),
        };
        let ready = start_cmd::start_and_wait(
            &sandbox.started.agent,
            &sandbox.record.envd_access_token,
            &defaults,
            &built.shell,
            &start,
            start_cmd::READY_TIMEOUT,
            &mut |_, line| log.line(Level::Debug, FINALIZE_STEP, line),
        )
        .await;
        self.lifecycle.end_private(sandbox).await;
        match ready {
            Ok(()) => {
                log.info(FINALIZE_STEP, "the template is ready");
                Ok(())
            }
            Err(reason) => Err(Failure::at(FINALIZE_STEP, reason)),
        }
    }
}

fn chain(err: &LifecycleError) -> String {
    cove_image::error_chain(err)
}
