//! The code interpreter (E2B's port 49999): contexts backed by real Jupyter kernels, driven
//! over ZeroMQ, with `/execute` streaming each execution's output as JSON lines.

mod context;
mod http;
mod kernel;
pub mod kernelspec;
pub mod output;
mod startup;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
};

pub use self::http::router;
use self::{
    context::{Context, KernelSlot},
    kernel::{Kernel, KernelError, Launch},
    kernelspec::KernelSpec,
};
use crate::AgentState;

/// What a client did wrong, or what the sandbox lacks.
#[derive(Debug, thiserror::Error)]
pub enum InterpreterError {
    #[error("Context {0} not found")]
    NoContext(String),
    #[error(
        "this sandbox has no Jupyter kernel for {language} (kernels installed: {installed}); \
         the template must provide one, e.g. ipykernel for python"
    )]
    NoKernel { language: String, installed: String },
    #[error("working directory {0} is not an existing directory")]
    BadCwd(PathBuf),
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// Every context of the sandbox.
#[derive(Clone)]
pub struct Interpreter(Arc<Inner>);

struct Inner {
    agent: AgentState,
    /// Python kernels listen on Unix sockets, not TCP ports (see [`Interpreter::new`]).
    unix_kernels: bool,
    contexts: Mutex<Vec<Arc<Context>>>,
    /// The context `/execute` uses for a language when it names no context.
    defaults: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Interpreter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interpreter").finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Interpreter {
    /// The interpreter of a sandbox. Nothing is read or started here: the default Python
    /// context is made when first used or listed, and its kernel on first use. With
    /// `unix_kernels`, ipykernel kernels listen on Unix sockets instead of loopback TCP
    /// ports: a sandbox that is checkpointed (gVisor) can then be checkpointed with its
    /// kernels (this runsc cannot checkpoint a listening TCP socket).
    pub fn new(agent: AgentState, unix_kernels: bool) -> Self {
        Self(Arc::new(Inner {
            agent,
            unix_kernels,
            contexts: Mutex::default(),
            defaults: Mutex::default(),
        }))
    }

    fn kernels(&self) -> BTreeMap<String, KernelSpec> {
        kernelspec::installed(&self.home(), &self.0.agent.defaults().env())
    }

    fn home(&self) -> PathBuf {
        self.0
            .agent
            .user(None)
            .map(|u| u.home)
            .unwrap_or_else(|_| PathBuf::from("/home/user"))
    }

    /// Where contexts run when a request names no directory (E2B: `/home/user`).
    fn default_cwd(&self) -> PathBuf {
        self.0
            .agent
            .defaults()
            .workdir()
            .unwrap_or_else(|| self.home())
    }

    /// A new context for `language` in `cwd` (its kernel not yet started).
    fn new_context(
        &self,
        language: &str,
        cwd: Option<PathBuf>,
    ) -> Result<Arc<Context>, InterpreterError> {
        let kernels = self.kernels();
        let spec = kernelspec::for_language(&kernels, language).ok_or_else(|| {
            InterpreterError::NoKernel {
                language: language.to_owned(),
                installed: if kernels.is_empty() {
                    "none".to_owned()
                } else {
                    kernels.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            }
        })?;
        let cwd = cwd.unwrap_or_else(|| self.default_cwd());
        if !cwd.is_absolute() || !cwd.is_dir() {
            return Err(InterpreterError::BadCwd(cwd));
        }
        let context = Arc::new(Context::new(language.to_owned(), cwd, spec.clone()));
        lock(&self.0.contexts).push(context.clone());
        Ok(context)
    }

    /// Creates a context and starts its kernel (so a broken kernel shows here).
    pub async fn create(
        &self,
        language: &str,
        cwd: Option<PathBuf>,
    ) -> Result<Arc<Context>, InterpreterError> {
        let context = self.new_context(language, cwd)?;
        if let Err(err) = self.ready(&context).await {
            self.forget(&context.id);
            return Err(err);
        }
        Ok(context)
    }

    /// Starts the default Python context's kernel now, as a warm sandbox does while it waits
    /// to be handed out: the first `run_code` then finds it running. A sandbox without a
    /// Python kernel, or one whose kernel fails to start, starts it on first use as usual.
    pub async fn prewarm(self) {
        match self.warm().await {
            Ok(()) => tracing::info!("warm kernel ready"),
            Err(err @ InterpreterError::NoKernel { .. }) => {
                tracing::info!(%err, "no kernel to start ahead of use");
            }
            Err(err) => {
                tracing::warn!(%err, "cannot start the kernel ahead of use; it starts on first use")
            }
        }
    }

    /// Starts the default Python context's kernel, if it does not run yet, and takes it
    /// through one run nobody sees; returns once it is ready for code.
    pub async fn warm(&self) -> Result<(), InterpreterError> {
        let context = self.default_context("python")?;
        let mut slot = self.ready(&context).await?;
        if slot.is_some()
            && let Err(line) = context.prime(&mut slot).await
        {
            tracing::debug!(context = %context.id, ?line, "priming the kernel failed");
        }
        Ok(())
    }

    /// The default context of `language`, made when first asked for.
    pub fn default_context(&self, language: &str) -> Result<Arc<Context>, InterpreterError> {
        let mut defaults = lock(&self.0.defaults);
        if let Some(context) = defaults.get(language).and_then(|id| self.get(id)) {
            return Ok(context);
        }
        let context = self.new_context(language, None)?;
        defaults.insert(language.to_owned(), context.id.clone());
        Ok(context)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Context>> {
        lock(&self.0.contexts).iter().find(|c| c.id == id).cloned()
    }

    /// Every context, the default Python one included (when the sandbox has a Python kernel).
    pub fn list(&self) -> Vec<Arc<Context>> {
        if let Err(err) = self.default_context("python") {
            tracing::debug!(%err, "no default python context");
        }
        lock(&self.0.contexts).clone()
    }

    fn forget(&self, id: &str) -> Option<Arc<Context>> {
        let mut contexts = lock(&self.0.contexts);
        let index = contexts.iter().position(|c| c.id == id)?;
        lock(&self.0.defaults).retain(|_, default| default != id);
        Some(contexts.remove(index))
    }

    /// Removes a context and kills its kernel.
    pub async fn remove(&self, id: &str) -> Result<(), InterpreterError> {
        let context = self
            .forget(id)
            .ok_or_else(|| InterpreterError::NoContext(id.to_owned()))?;
        context.kill_kernel();
        drop(context.slot().await.take());
        Ok(())
    }

    /// Kills a context's kernel (ending what it runs) and starts a fresh one.
    pub async fn restart(&self, id: &str) -> Result<(), InterpreterError> {
        let context = self
            .get(id)
            .ok_or_else(|| InterpreterError::NoContext(id.to_owned()))?;
        context.kill_kernel();
        let mut slot = context.slot().await;
        drop(slot.take());
        self.start_in(&context, &mut slot).await
    }

    /// Waits for the context to be free, with its kernel running.
    pub async fn ready(&self, context: &Context) -> Result<KernelSlot, InterpreterError> {
        let mut slot = context.slot().await;
        // A kernel that died while idle is replaced before the code runs, as E2B's Jupyter
        // restarts a dead kernel at once: the code runs on a fresh kernel, unaware.
        if let Some(exit) = slot.as_ref().and_then(|kernel| kernel.exited()) {
            tracing::warn!(context = %context.id, exit = %kernel::describe(exit), "the kernel died while idle; starting a fresh one");
            drop(slot.take());
        }
        if slot.is_none() {
            self.start_in(context, &mut slot).await?;
        }
        Ok(slot)
    }

    async fn start_in(
        &self,
        context: &Context,
        slot: &mut KernelSlot,
    ) -> Result<(), InterpreterError> {
        let agent = &self.0.agent;
        let user = agent
            .user(None)
            .map_err(|err| InterpreterError::BadRequest(err.to_string()))?;
        let kernel = Kernel::start(Launch {
            spec: &context.spec,
            user,
            cwd: context.cwd.clone(),
            env: agent.defaults().env(),
            reaper: agent.processes().reaper(),
            unix_sockets: self.0.unix_kernels,
        })
        .await?;
        let pid = kernel.process_group();
        tracing::info!(context = %context.id, kernel = %kernel.name(), pid = pid.as_raw_nonzero().get(), "kernel started");
        context.install(slot, kernel, pid);
        if context.spec.is_ipykernel()
            && let Err(line) = context.silent(slot, &startup::ipython_code()).await
        {
            // Only charts are missing then; the kernel itself works (or restarts on use).
            tracing::warn!(context = %context.id, ?line, "the kernel's startup code failed");
        }
        Ok(())
    }

    /// The sandbox-wide environment variables right now.
    pub fn sandbox_env(&self) -> BTreeMap<String, String> {
        self.0.agent.defaults().env()
    }
}
