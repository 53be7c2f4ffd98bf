//! Several backends behind one [`Runtime`], side by side in one server: a sandbox is created
//! on the backend its spec names ([`SandboxSpec::runtime`]; the first, the server's default,
//! when it names none), and every later call about it goes to the backend its handle names.
//! Calls that carry only an id go to every backend (each ignores ids it does not know), or,
//! for network egress, to the backend that holds the sandbox (both share one egress filter).

use std::sync::Arc;

use crate::{
    Handle, Limits, Liveness, PauseMode, Recovered, Runtime, RuntimeError, SandboxSpec, Started,
    Template, Usage, egress,
};

/// The backends of one server, the default first.
pub struct Backends {
    list: Vec<Arc<dyn Runtime>>,
}

impl Backends {
    /// Only `default`.
    pub fn new(default: Arc<dyn Runtime>) -> Self {
        Self {
            list: vec![default],
        }
    }

    /// With `other` beside the ones so far, unless one of its name is there already.
    pub fn with(mut self, other: Arc<dyn Runtime>) -> Self {
        if !self.list.iter().any(|r| r.name() == other.name()) {
            self.list.push(other);
        }
        self
    }

    /// The names of the backends, the default first.
    pub fn names(&self) -> Vec<&'static str> {
        self.list.iter().map(|r| r.name()).collect()
    }

    fn default_backend(&self) -> &dyn Runtime {
        self.list[0].as_ref()
    }

    fn named(&self, name: &str) -> Option<&dyn Runtime> {
        self.list
            .iter()
            .find(|r| r.name() == name)
            .map(|r| r.as_ref())
    }

    /// The backend whose sandbox `id` is; the default for one not made yet (the egress
    /// filter is shared, so a policy set before the create holds on either).
    fn holder(&self, id: &str) -> &dyn Runtime {
        self.list
            .iter()
            .find(|r| r.holds(id))
            .map_or_else(|| self.default_backend(), |r| r.as_ref())
    }

    fn of(&self, handle: &Handle) -> Result<&dyn Runtime, RuntimeError> {
        self.named(&handle.backend)
            .ok_or_else(|| RuntimeError::ForeignHandle {
                id: handle.id.clone(),
                backend: handle.backend.clone(),
            })
    }

    /// Calls `each` on every backend; the first error, after all were called.
    fn on_all(
        &self,
        mut each: impl FnMut(&dyn Runtime) -> Result<(), RuntimeError>,
    ) -> Result<(), RuntimeError> {
        let mut first = Ok(());
        for backend in &self.list {
            if let Err(err) = each(backend.as_ref())
                && first.is_ok()
            {
                first = Err(err);
            }
        }
        first
    }
}

impl Runtime for Backends {
    fn name(&self) -> &'static str {
        self.default_backend().name()
    }

    fn backends(&self) -> Vec<&'static str> {
        self.names()
    }

    fn create(&self, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        match spec.runtime.as_deref() {
            None => self.default_backend().create(spec),
            Some(name) => self
                .named(name)
                .ok_or_else(|| RuntimeError::Start {
                    id: spec.id.clone(),
                    reason: format!(
                        "this server has no {name:?} runtime (it has {})",
                        self.names().join(", ")
                    ),
                })?
                .create(spec),
        }
    }

    fn recover(&self, handle: &Handle) -> Result<Option<Recovered>, RuntimeError> {
        self.of(handle)?.recover(handle)
    }

    fn liveness(&self, handle: &Handle) -> Result<Liveness, RuntimeError> {
        self.of(handle)?.liveness(handle)
    }

    fn kill(&self, handle: &Handle) -> Result<(), RuntimeError> {
        self.of(handle)?.kill(handle)
    }

    fn kill_leftovers(&self, id: &str) -> Result<(), RuntimeError> {
        self.on_all(|r| r.kill_leftovers(id))
    }

    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.on_all(|r| r.remove(id))
    }

    fn usage(&self, handle: &Handle) -> Result<Usage, RuntimeError> {
        self.of(handle)?.usage(handle)
    }

    fn set_limits(&self, handle: &Handle, limits: Limits) -> Result<(), RuntimeError> {
        self.of(handle)?.set_limits(handle, limits)
    }

    /// The log of whichever backend has one for `id`.
    fn log(&self, id: &str) -> Result<String, RuntimeError> {
        let mut last = None;
        for backend in &self.list {
            match backend.log(id) {
                Ok(log) if !log.is_empty() => return Ok(log),
                Ok(log) => last = Some(Ok(log)),
                Err(err) => {
                    if last.is_none() {
                        last = Some(Err(err));
                    }
                }
            }
        }
        last.unwrap_or_else(|| Ok(String::new()))
    }

    fn shutdown(&self) {
        for backend in &self.list {
            backend.shutdown();
        }
    }

    fn pause(&self, handle: &Handle, mode: PauseMode) -> Result<Handle, RuntimeError> {
        self.of(handle)?.pause(handle, mode)
    }

    fn resume(&self, handle: &Handle, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
        self.of(handle)?.resume(handle, spec)
    }

    fn snapshot(
        &self,
        handle: &Handle,
        template: &Template,
        into: &std::path::Path,
    ) -> Result<Template, RuntimeError> {
        self.of(handle)?.snapshot(handle, template, into)
    }

    fn snapshot_memory(
        &self,
        handle: &Handle,
        template: &Template,
        into: &std::path::Path,
    ) -> Result<Template, RuntimeError> {
        self.of(handle)?.snapshot_memory(handle, template, into)
    }

    fn set_egress_policy(
        &self,
        id: &str,
        policy: Option<&egress::SandboxPolicy>,
    ) -> Result<(), RuntimeError> {
        self.holder(id).set_egress_policy(id, policy)
    }

    fn egress_ca_pem(&self) -> Option<String> {
        self.default_backend().egress_ca_pem()
    }

    fn take_egress_refusals(&self, id: &str) -> Vec<(egress::Refusal, u64)> {
        self.holder(id).take_egress_refusals(id)
    }

    fn holds(&self, id: &str) -> bool {
        self.list.iter().any(|r| r.holds(id))
    }

    fn can_reroot(&self) -> bool {
        self.default_backend().can_reroot()
    }

    fn reroot(&self, handle: &Handle, template: &Template) -> Result<(), RuntimeError> {
        self.of(handle)?.reroot(handle, template)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{AgentEndpoint, AgentSettings, Layer};

    /// A backend that only records which calls reached it.
    struct Recorder {
        name: &'static str,
        calls: Mutex<Vec<String>>,
    }

    impl Recorder {
        fn new(name: &'static str) -> Arc<Self> {
            Arc::new(Self {
                name,
                calls: Mutex::default(),
            })
        }
        fn note(&self, call: &str) {
            self.calls.lock().unwrap().push(call.to_owned());
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
        fn handle(&self, id: &str) -> Handle {
            Handle {
                id: id.to_owned(),
                backend: self.name.to_owned(),
                state: serde_json::Value::Null,
            }
        }
    }

    impl Runtime for Recorder {
        fn name(&self) -> &'static str {
            self.name
        }
        fn create(&self, spec: &SandboxSpec) -> Result<Started, RuntimeError> {
            self.note(&format!("create {}", spec.id));
            Ok(Started {
                handle: self.handle(&spec.id),
                agent: AgentEndpoint::Unix("/nonexistent".into()),
            })
        }
        fn recover(&self, _: &Handle) -> Result<Option<Recovered>, RuntimeError> {
            Ok(None)
        }
        fn liveness(&self, _: &Handle) -> Result<Liveness, RuntimeError> {
            Ok(Liveness::Running)
        }
        fn kill(&self, handle: &Handle) -> Result<(), RuntimeError> {
            self.note(&format!("kill {}", handle.id));
            Ok(())
        }
        fn kill_leftovers(&self, id: &str) -> Result<(), RuntimeError> {
            self.note(&format!("leftovers {id}"));
            Ok(())
        }
        fn remove(&self, id: &str) -> Result<(), RuntimeError> {
            self.note(&format!("remove {id}"));
            Ok(())
        }
        fn usage(&self, _: &Handle) -> Result<Usage, RuntimeError> {
            Ok(Usage::default())
        }
        fn set_limits(&self, _: &Handle, _: Limits) -> Result<(), RuntimeError> {
            Ok(())
        }
        fn log(&self, id: &str) -> Result<String, RuntimeError> {
            Ok(if self.calls().contains(&format!("create {id}")) {
                format!("{} log", self.name)
            } else {
                String::new()
            })
        }
        fn shutdown(&self) {}
    }

    fn spec(id: &str, runtime: Option<&str>) -> SandboxSpec {
        SandboxSpec {
            id: id.to_owned(),
            template: Template {
                memory: None,
                name: "base".to_owned(),
                layers: vec![Layer {
                    path: "/nonexistent".into(),
                    at: "/".into(),
                }],
            },
            hostname: "sandbox".to_owned(),
            agent: AgentSettings {
                access_token: String::new(),
                default_user: "user".to_owned(),
                default_workdir: "/".into(),
                env: Default::default(),
                code_interpreter_port: None,
                warm_kernel: false,
            },
            network: false,
            limits: Limits {
                memory_bytes: 1 << 30,
                cpus: 1,
                pids: 64,
            },
            volumes: Vec::new(),
            runtime: runtime.map(str::to_owned),
        }
    }

    #[test]
    fn sandboxes_go_to_the_backend_named_and_stay_there() {
        let (first, second) = (Recorder::new("first"), Recorder::new("second"));
        let backends = Backends::new(first.clone()).with(second.clone());
        assert_eq!(backends.backends(), ["first", "second"]);
        let a = backends.create(&spec("a", None)).unwrap();
        let b = backends.create(&spec("b", Some("second"))).unwrap();
        assert_eq!(
            (a.handle.backend.as_str(), b.handle.backend.as_str()),
            ("first", "second")
        );
        backends.kill(&b.handle).unwrap();
        assert_eq!(backends.log("b").unwrap(), "second log");
        backends.remove("b").unwrap();
        assert_eq!(first.calls(), ["create a", "remove b"]);
        assert_eq!(second.calls(), ["create b", "kill b", "remove b"]);
        // Unknown names are refused, handles of unknown backends too.
        assert!(matches!(
            backends.create(&spec("c", Some("third"))),
            Err(RuntimeError::Start { .. })
        ));
        let foreign = Handle {
            backend: "third".to_owned(),
            ..b.handle
        };
        assert!(matches!(
            backends.kill(&foreign),
            Err(RuntimeError::ForeignHandle { .. })
        ));
    }
}
