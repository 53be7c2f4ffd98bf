//! The namespace runtime on its own: real sandboxes from the `base` template, driven through
//! their agents, checked for isolation from the host and from each other.
#![allow(clippy::unwrap_used)]

use std::{path::Path, time::Duration};

use cove_runtime::{
    AgentEndpoint, AgentSettings, NamespaceRuntime, Runtime, SandboxSpec, Started, template,
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
                state.path().join("sandboxes"),
                cove_runtime::egress::EgressConfig::default(),
            ),
            state,
            template,
        }
    }

    fn start(&self, id: &str) -> (Started, AgentClient) {
        let spec = SandboxSpec {
            id: id.to_owned(),
            template: self.template.clone(),
            hostname: id.to_owned(),
            agent: AgentSettings {
                access_token: String::new(),
                default_user: "user".into(),
                default_workdir: "/home/user".into(),
                env: Default::default(),
                code_interpreter_port: None,
                warm_kernel: false,
            },
            network: false,
            limits: cove_runtime::Limits {
                memory_bytes: 512 << 20,
                cpus: 1,
                pids: 256,
            },
            volumes: Vec::new(),
            runtime: None,
        };
        let started = std::time::Instant::now();
        let sandbox = self.runtime.create(&spec).unwrap();
        eprintln!("sandbox {id} up in {:?}", started.elapsed());
        let AgentEndpoint::Unix(socket) = &sandbox.agent else {
            panic!("the namespace backend's agent listens on a host-only socket");
        };
        let client = AgentClient::unix(socket).unwrap();
        (sandbox, client)
    }

    fn stop(&self, id: &str, sandbox: &Started) {
        self.runtime.kill(&sandbox.handle).unwrap();
        assert!(matches!(
            self.runtime.liveness(&sandbox.handle).unwrap(),
            cove_runtime::Liveness::Ended(_)
        ));
        self.runtime.remove(id).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_runs_commands_as_its_own_users() {
    // A strict umask on the host side must not reach the sandbox.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let fixture = Fixture::new();
    let (sandbox, client) = fixture.start("alpha");
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
    // The usual modes for what the sandbox makes, whatever the server's umask.
    assert_eq!(
        client
            .commands()
            .run("umask; touch ~/f; mkdir ~/d; stat -c %a ~/f ~/d")
            .await
            .unwrap()
            .stdout,
        "0022\n644\n755\n"
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
