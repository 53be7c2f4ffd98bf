//! A real OCI registry for tests: Debian's `docker-registry` (CNCF distribution) on a free
//! loopback port with its own storage, optionally behind htpasswd Basic auth, and `skopeo`
//! to push OCI layouts into it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{free_port, wait_until};

/// A running `docker-registry`; stopped (by its pid) and its storage removed on drop.
pub struct TestRegistry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub addr: SocketAddr,
    credentials: Option<(String, String)>,
}

impl TestRegistry {
    /// An open registry.
    pub async fn start() -> Self {
        Self::launch(None).await
    }

    /// A registry that wants `username` / `password` (htpasswd, bcrypt) for every request.
    pub async fn start_with_basic_auth(username: &str, password: &str) -> Self {
        Self::launch(Some((username.to_owned(), password.to_owned()))).await
    }

    async fn launch(credentials: Option<(String, String)>) -> Self {
        let binary = Path::new("/usr/bin/docker-registry");
        assert!(
            binary.exists(),
            "the docker-registry Debian package is missing (scripts/setup installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("cove-registry-test-")
            .tempdir()
            .expect("a temporary registry directory");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n  secret: cove-test-registry\n",
            storage = dir.path().join("storage").display(),
        );
        if let Some((username, password)) = &credentials {
            let htpasswd = dir.path().join("htpasswd");
            let output = Command::new("htpasswd")
                .args(["-Bbn", username, password])
                .output()
                .expect("htpasswd runs (apache2-utils; scripts/setup installs it)");
            assert!(output.status.success(), "htpasswd failed");
            std::fs::write(&htpasswd, output.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: cove-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write the registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("docker-registry starts");
        let registry = Self {
            child: Some(child),
            dir,
            addr,
            credentials,
        };
        let url = format!("{}/v2/", registry.url());
        let http = reqwest::Client::new();
        wait_until(
            "docker-registry to answer /v2/",
            Duration::from_secs(30),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let status = http.get(&url).send().await.ok()?.status();
                    (status.is_success() || status.as_u16() == 401).then_some(())
                }
            },
        )
        .await;
        registry
    }

    /// `127.0.0.1:PORT`, as image references name it.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What the registry logged (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes the image tagged `tag` in the OCI layout `layout` to `name` (`repo:tag`) in
    /// this registry with skopeo; an index is pushed whole (every platform in it).
    pub fn push_layout(&self, layout: &Path, tag: &str, name: &str) {
        let mut command = Command::new("skopeo");
        command.args([
            "copy",
            "--quiet",
            "--all",
            "--dest-tls-verify=false",
            "--preserve-digests",
        ]);
        if let Some((username, password)) = &self.credentials {
            command.arg(format!("--dest-creds={username}:{password}"));
        }
        let output = command
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}", self.host()))
            .stdin(Stdio::null())
            .output()
            .expect("skopeo runs (scripts/setup installs it)");
        assert!(
            output.status.success(),
            "skopeo copy to {name} failed: {}\nregistry log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Stops the registry (SIGTERM, then SIGKILL), waiting for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}
