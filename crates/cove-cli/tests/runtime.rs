//! The namespace runtime on its own: real sandboxes from the `base` template, driven through
//! their agents, checked for isolation from the host and from each other.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use cove_runtime::{
    NamespaceRuntime, RunningSandbox, Runtime, SandboxSpec, namespace::init::AGENT_SOCKET_INSIDE,
    template,
};
use cove_sdk::AgentClient;

struct Fixture {
    runtime: NamespaceRuntime,
    state: tempfile::TempDir,
    template: cove_runtime::Template,
}

impl Fixture {
    fn new() -> Self {
        let state = tempfile::Builder::new()
            .prefix("cove-runtime-test-")
            .tempdir()
            .unwrap();
        let template = template::base(&state.path().join("templates/base")).unwrap();
        Self {
            runtime: NamespaceRuntime::new(
                env!("CARGO_BIN_EXE_cove"),
                cove_runtime::egress::EgressConfig::default(),
            ),
            state,
            template,
        }
    }

    fn start(&self, id: &str, slot: u32) -> (RunningSandbox, AgentClient) {
        let spec = SandboxSpec {
            id: id.to_owned(),
            dir: self.state.path().join("sandboxes").join(id),
            template: self.template.clone(),
            uid_base: cove_runtime::userns::base_for_slot(slot),
            hostname: id.to_owned(),
            agent_args: vec!["--listen".into(), format!("unix:{AGENT_SOCKET_INSIDE}")],
            network: false,
            no_new_privs: false,
            limits: cove_runtime::cgroup::Limits {
                memory_bytes: 512 << 20,
                cpus: 1,
                pids: 256,
            },
        };
        let started = std::time::Instant::now();
        let sandbox = self.runtime.create(&spec).unwrap();
        eprintln!("sandbox {id} up in {:?}", started.elapsed());
        let client = AgentClient::unix(&sandbox.socket).unwrap();
        (sandbox, client)
    }

    fn stop(&self, id: &str, sandbox: &RunningSandbox) {
        self.runtime.kill(sandbox).unwrap();
        assert!(!self.runtime.is_alive(sandbox));
        self.runtime
            .remove(&self.state.path().join("sandboxes").join(id))
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_runs_commands_as_its_own_users() {
    let fixture = Fixture::new();
    let (sandbox, client) = fixture.start("alpha", 1);
    let out = client
        .commands()
        .run("id; hostname; echo $HOME; ls /; cat /proc/1/cmdline | tr '\\0' ' '")
        .await
        .unwrap();
    eprintln!("{}", out.stdout);
    assert!(
        out.stdout.starts_with("uid=1000(user) gid=1000(user)"),
        "{}",
        out.stdout
    );
    let root = client.clone().as_user("root");
    assert_eq!(root.commands().run("id -u").await.unwrap().stdout, "0\n");
    assert_eq!(
        client.commands().run("sudo -n id -u").await.unwrap().stdout,
        "0\n"
    );
    // Host-root-owned template files look root-owned inside.
    assert_eq!(
        client
            .commands()
            .run("stat -c %U /usr/bin/sudo /etc/passwd")
            .await
            .unwrap()
            .stdout,
        "root\nroot\n"
    );
    client.files().write("hello.txt", "hi").await.unwrap();
    assert_eq!(
        client
            .commands()
            .run("cat ~/hello.txt")
            .await
            .unwrap()
            .stdout,
        "hi"
    );
    fixture.stop("alpha", &sandbox);
    fixture.runtime.shutdown();
    assert!(!Path::new(&fixture.state.path().join("sandboxes/alpha")).exists());
    let _ = Duration::from_secs(1);
}
