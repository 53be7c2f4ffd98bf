//! `cove template build|list|tags|rm` as a user runs them: the real binary against a real
//! server whose docker.io is a real registry (Debian's docker-registry, seeded with the test
//! image), real build sandboxes, and a sandbox made from the result; then a snapshot of that
//! sandbox, which is a template too and outlives the template it was taken of.
#![allow(clippy::unwrap_used)]

use std::{path::Path, process::Output, time::Duration};

use assert_cmd::Command;
use cove_sdk::{CreateOptions, Sandbox};
use cove_test_util::{TestServer, seeded_mirror};

fn cove_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cove"))
}

fn cove(server: &TestServer, args: &[&str]) -> Output {
    Command::new(cove_bin())
        .env("COVE_API_URL", server.url())
        .env("COVE_API_KEY", &server.api_key)
        .env_remove("E2B_API_URL")
        .env_remove("E2B_SANDBOX_URL")
        .env_remove("E2B_API_KEY")
        .env("COVE_LOG", "warn")
        .timeout(Duration::from_secs(600))
        .args(args)
        .output()
        .unwrap()
}

fn ok(server: &TestServer, args: &[&str]) -> String {
    let output = cove(server, args);
    assert!(
        output.status.success(),
        "cove {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn run(sandbox: &Sandbox, line: &str) -> String {
    let out = sandbox.commands().run(line).await.unwrap();
    assert_eq!(out.exit_code, 0, "{line}: {}", out.stderr);
    out.stdout.trim().to_owned()
}

const DOCKERFILE: &str = r#"FROM debian:bookworm
RUN echo built > /built.txt && \
    mkdir -p /opt/tool
ENV GREETING="hello there" STAGE=cli
WORKDIR /app
COPY src ./
COPY --chown=user:user notes.txt /home/user/
USER user
EXPOSE 8000
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_dockerfile_builds_a_template_that_sandboxes_and_snapshots_start_from() {
    let registry = seeded_mirror().await;
    let mirror = format!("docker.io={}", registry.url());
    let server = TestServer::start_with_args(
        cove_bin(),
        &["--warm-pool", "0", "--registry-mirror", &mirror],
    )
    .await;
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::create_dir(context.path().join("src")).unwrap();
    std::fs::write(context.path().join("src/main.py"), "print('hi')\n").unwrap();
    std::os::unix::fs::symlink("main.py", context.path().join("src/link.py")).unwrap();
    std::fs::write(context.path().join("notes.txt"), "mine\n").unwrap();
    let dir = context.path().to_str().unwrap();

    let output = cove(&server, &["template", "build", dir, "--name", "cli-app"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("EXPOSE has no part in a template"),
        "{stderr}"
    );
    assert!(stderr.contains("[1]"), "the step's log lines: {stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("cli-app is ready"));

    let table = ok(&server, &["template", "list"]);
    assert!(table.contains("cli-app"), "{table}");
    ok(&server, &["template", "tags", "add", "cli-app", "v2"]);
    let tags = ok(&server, &["template", "tags", "cli-app"]);
    assert!(tags.contains("default") && tags.contains("v2"), "{tags}");

    // An unchanged rebuild comes from the cache, step by step.
    let again = cove(&server, &["template", "build", dir, "--name", "cli-app:v3"]);
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{log}");
    assert!(log.contains("the server has these files already"), "{log}");
    assert!(log.to_lowercase().contains("cache"), "{log}");

    let config = server.config();
    let sandbox = Sandbox::create(
        &config,
        CreateOptions {
            template: Some("cli-app:v2".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(run(&sandbox, "whoami").await, "user");
    // The image's login profile starts no `id` (Cove's layer spares it, as in `base`), and
    // keeps Debian's PATH for `user` and for root.
    assert_ne!(run(&sandbox, "grep -c __cove_euid /etc/profile").await, "0");
    assert_eq!(
        run(&sandbox, "echo $PATH").await,
        "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
    );
    let as_root = sandbox.agent().clone().as_user("root");
    let root_path = as_root.commands().run("echo $PATH").await.unwrap();
    assert_eq!(
        root_path.stdout.trim(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(run(&sandbox, "pwd").await, "/app");
    assert_eq!(
        run(&sandbox, "echo $GREETING/$STAGE").await,
        "hello there/cli"
    );
    assert_eq!(run(&sandbox, "cat /built.txt").await, "built");
    assert_eq!(run(&sandbox, "readlink /app/link.py").await, "main.py");
    assert_eq!(
        run(&sandbox, "stat -c %U /home/user/notes.txt").await,
        "user"
    );
    run(&sandbox, "echo later > /home/user/later.txt").await;

    // A snapshot of it is a template: listed, and it keeps the built layers and settings
    // when the built template is deleted.
    let snapshot = sandbox.snapshot(Some("cli-snap")).await.unwrap();
    sandbox.kill().await.unwrap();
    let table = ok(&server, &["template", "list"]);
    assert!(table.contains("cli-snap"), "{table}");
    ok(&server, &["template", "rm", "cli-app"]);
    let table = ok(&server, &["template", "list"]);
    assert!(!table.contains("cli-app"), "{table}");
    let from_snapshot = Sandbox::create(
        &config,
        CreateOptions {
            template: Some(snapshot.snapshot_id.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        run(&from_snapshot, "cat /home/user/later.txt").await,
        "later"
    );
    assert_eq!(run(&from_snapshot, "cat /built.txt").await, "built");
    assert_eq!(run(&from_snapshot, "whoami").await, "user");
    from_snapshot.kill().await.unwrap();

    // A snapshot is a base to build on (fromTemplate), as a built template is.
    let requested = cove_sdk::templates::request_build(
        &config,
        &cove_proto::templates::NewTemplate {
            name: Some("on-snap".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let start = cove_proto::templates::BuildStart {
        from_template: Some(snapshot.snapshot_id.clone()),
        steps: vec![cove_proto::templates::Step {
            kind: "RUN".into(),
            args: vec!["cat /home/user/later.txt > /home/user/seen.txt".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    cove_sdk::templates::start_build(&config, &requested.template_id, &requested.build_id, &start)
        .await
        .unwrap();
    let (id, build) = (requested.template_id.clone(), requested.build_id.clone());
    let config2 = config.clone();
    cove_test_util::wait_until(
        "the build on a snapshot ends",
        Duration::from_secs(300),
        || {
            let (config, id, build) = (config2.clone(), id.clone(), build.clone());
            async move {
                let info = cove_sdk::templates::build_status(&config, &id, &build, 0)
                    .await
                    .unwrap();
                assert_ne!(
                    info.status,
                    cove_proto::templates::BuildStatus::Error,
                    "{:?}",
                    info.reason
                );
                (info.status == cove_proto::templates::BuildStatus::Ready).then_some(())
            }
        },
    )
    .await;
    let on_snap = Sandbox::create(
        &config,
        CreateOptions {
            template: Some("on-snap".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(run(&on_snap, "cat /home/user/seen.txt").await, "later");
    assert_eq!(run(&on_snap, "cat /built.txt").await, "built");
    on_snap.kill().await.unwrap();
    ok(&server, &["template", "rm", "on-snap"]);
    ok(&server, &["template", "rm", "cli-snap"]);
    let table = ok(&server, &["template", "list"]);
    assert!(!table.contains("cli-snap"), "{table}");

    // A failing step fails the command, naming the step.
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM debian:bookworm\nRUN echo about to fail && false\n",
    )
    .unwrap();
    let failed = cove(&server, &["template", "build", dir, "--name", "cli-bad"]);
    let log = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(log.contains("about to fail"), "{log}");
    assert!(
        log.contains("the build failed: step 3 (RUN echo about to fail && false)"),
        "{log}"
    );
    ok(&server, &["template", "rm", "cli-bad"]);
    let gc = ok(&server, &["template", "gc"]);
    assert!(gc.contains("unused layers removed"), "{gc}");
}

/// A template names the backend its sandboxes run on: built with `--runtime gvisor`, they run
/// on gVisor's kernel unless a create names another in its metadata; a snapshot of one runs
/// where its source ran; a rebuild naming another backend moves the template; a backend the
/// server lacks is refused before anything is built. Skipped (with a message) without runsc.
#[tokio::test(flavor = "multi_thread")]
async fn a_template_names_the_runtime_its_sandboxes_run_on() {
    if !Path::new(cove_runtime::gvisor::runsc::DEFAULT_BINARY).is_file() {
        eprintln!("SKIPPED: runsc is not installed (Debian package runsc)");
        return;
    }
    let registry = seeded_mirror().await;
    let mirror = format!("docker.io={}", registry.url());
    let server = TestServer::start_with_args(
        cove_bin(),
        &["--warm-pool", "0", "--registry-mirror", &mirror],
    )
    .await;
    let context = tempfile::tempdir().unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM debian:bookworm\nRUN echo built > /built.txt\n",
    )
    .unwrap();
    let dir = context.path().to_str().unwrap();

    let refused = cove(
        &server,
        &[
            "template",
            "build",
            dir,
            "-n",
            "rt-app",
            "--runtime",
            "firecracker",
        ],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains(
            "runtime: this server has no runtime \"firecracker\"; it has namespace, gvisor"
        ),
        "{stderr}"
    );
    assert!(!ok(&server, &["template", "list"]).contains("rt-app"));

    ok(
        &server,
        &[
            "template",
            "build",
            dir,
            "-n",
            "rt-app",
            "--runtime",
            "gvisor",
        ],
    );
    let listed = cove_sdk::templates::list(&server.config()).await.unwrap();
    let entry = listed
        .iter()
        .find(|t| t.names.contains(&"rt-app".to_owned()))
        .unwrap();
    assert_eq!(entry.runtime.as_deref(), Some("gvisor"));
    assert!(ok(&server, &["template", "list"]).contains("gvisor"));

    let config = server.config();
    let create = |metadata: &[(&str, &str)], template: &str| {
        let options = CreateOptions {
            template: Some(template.to_owned()),
            allow_internet_access: Some(false),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        };
        let config = config.clone();
        async move { Sandbox::create(&config, options).await.unwrap() }
    };
    // gVisor's kernel answers as Linux 4.4.0, whatever the host runs.
    let on_gvisor = create(&[], "rt-app").await;
    assert_eq!(run(&on_gvisor, "uname -r").await, "4.4.0");
    assert_eq!(run(&on_gvisor, "cat /built.txt").await, "built");
    let metadata = on_gvisor.info().await.unwrap().listed.metadata;
    assert_eq!(
        metadata.get("cove.runtime").map(String::as_str),
        Some("gvisor")
    );
    let asked_otherwise = create(&[("cove.runtime", "namespace")], "rt-app").await;
    assert_ne!(run(&asked_otherwise, "uname -r").await, "4.4.0");
    assert_eq!(run(&asked_otherwise, "cat /built.txt").await, "built");

    // A snapshot of a gVisor sandbox is a template that runs where its source ran.
    run(&on_gvisor, "echo kept > /home/user/kept.txt").await;
    let snapshot = on_gvisor.snapshot(None).await.unwrap();
    let from_snapshot = create(&[], &snapshot.snapshot_id).await;
    assert_eq!(run(&from_snapshot, "uname -r").await, "4.4.0");
    assert_eq!(run(&from_snapshot, "cat /home/user/kept.txt").await, "kept");

    // A rebuild that names another backend moves the template's next sandboxes.
    ok(
        &server,
        &[
            "template",
            "build",
            dir,
            "-n",
            "rt-app",
            "--runtime",
            "namespace",
        ],
    );
    let moved = create(&[], "rt-app").await;
    assert_ne!(run(&moved, "uname -r").await, "4.4.0");

    for sandbox in [on_gvisor, asked_otherwise, from_snapshot, moved] {
        sandbox.kill().await.unwrap();
    }
    assert!(
        Sandbox::delete_snapshot(&config, &snapshot.snapshot_id)
            .await
            .unwrap()
    );
    ok(&server, &["template", "rm", "rt-app"]);
}
