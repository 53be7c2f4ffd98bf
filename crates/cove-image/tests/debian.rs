//! A real Debian image (bookworm, python3, pip, Node.js; built by `mmdebstrap` and cached by
//! the harness) pushed to a real registry, pulled as the mirror of docker.io, and its layers
//! stacked with overlayfs in a private mount namespace: python3 runs in it, and the top
//! layer's whiteout and opaque directory show in the merged view. Also prints the pull +
//! unpack throughput against GNU `tar -x` of the same layer blobs.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use cove_image::{
    ClientConfig, Credentials, LayerStore, Reference, RegistryClient, StoreOptions, pull,
};
use cove_test_util::{TestRegistry, image::debian_layout};

fn layout_blobs(layout: &Path) -> Vec<PathBuf> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index"))
            .expect("json");
    let blob = |digest: &serde_json::Value| {
        let digest = digest.as_str().expect("digest");
        layout.join("blobs/sha256").join(&digest["sha256:".len()..])
    };
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(&index["manifests"][0]["digest"])).expect("manifest"),
    )
    .expect("json");
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| blob(&l["digest"]))
        .collect()
}

#[tokio::test]
async fn a_debian_image_pulled_through_the_mirror_runs_python_and_node_on_overlayfs() {
    let layout = tokio::task::spawn_blocking(debian_layout)
        .await
        .expect("build the Debian image");
    let registry = TestRegistry::start().await;
    registry.push_layout(&layout, "bookworm", "library/debian:bookworm");

    let store_dir = tempfile::tempdir().expect("store");
    let store = LayerStore::open(store_dir.path(), StoreOptions::default()).expect("store");
    let client = RegistryClient::new(ClientConfig {
        mirrors: vec![
            format!("docker.io={}", registry.url())
                .parse()
                .expect("mirror"),
        ],
        ..ClientConfig::default()
    })
    .expect("client");
    let blobs = layout_blobs(&layout);
    let compressed: u64 = blobs
        .iter()
        .map(|b| std::fs::metadata(b).expect("blob").len())
        .sum();

    let started = Instant::now();
    let image = pull(
        &client,
        &store,
        &Reference::parse("debian:bookworm").expect("reference"),
        &Credentials::Anonymous,
        "test",
        &|_| {},
    )
    .await
    .expect("pull");
    let pulled = started.elapsed();
    let unpacked = store.disk_usage(&image.layers).expect("du");
    assert_eq!(image.config.cmd, Some(vec!["python3".to_owned()]));
    let base = store
        .layer(&image.layers[0])
        .expect("info")
        .expect("stored");
    assert!(
        base.skipped.iter().any(|s| s.starts_with("dev/null")),
        "mmdebstrap's device nodes are refused: {:?}",
        base.skipped
    );

    // The same blobs with GNU tar, in this run, as the baseline.
    let baseline = tempfile::tempdir().expect("baseline");
    let started = Instant::now();
    for (i, blob) in blobs.iter().enumerate() {
        let target = baseline.path().join(i.to_string());
        std::fs::create_dir(&target).expect("dir");
        let status = Command::new("tar")
            .arg("-xzf")
            .arg(blob)
            .arg("-C")
            .arg(&target)
            .status()
            .expect("tar runs");
        assert!(status.success());
    }
    let tar_time = started.elapsed();
    let mib = compressed as f64 / (1 << 20) as f64;
    println!(
        "pull+unpack of {mib:.1} MiB compressed ({:.1} MiB on disk) in {:.2} s ({:.1} MiB/s) from the local registry; \
         GNU tar -xzf of the same blobs {:.2} s ({:.1} MiB/s); ratio {:.2}",
        unpacked as f64 / (1 << 20) as f64,
        pulled.as_secs_f64(),
        mib / pulled.as_secs_f64(),
        tar_time.as_secs_f64(),
        mib / tar_time.as_secs_f64(),
        pulled.as_secs_f64() / tar_time.as_secs_f64(),
    );

    // Stack the layers as overlayfs lowerdirs in a private mount namespace (gone with the
    // process), and look at the merged tree from inside.
    let work = tempfile::tempdir().expect("overlay dirs");
    for dir in ["upper", "work", "merged"] {
        std::fs::create_dir(work.path().join(dir)).expect("dir");
    }
    let lowers = image
        .layer_paths_top_first(&store)
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let merged = work.path().join("merged");
    let script = format!(
        "set -e
mount -t overlay overlay -o lowerdir={lowers},upperdir={w}/upper,workdir={w}/work {m}
chroot {m} /usr/bin/python3 --version
chroot {m} /usr/bin/python3 -m pip --version >/dev/null && echo pip-ok
chroot {m} /usr/bin/node -p 1+1 >/dev/null && chroot {m} /usr/bin/node --version
chroot {m} /usr/local/bin/cove-hello
test ! -e {m}/etc/motd && echo motd-gone
ls {m}/usr/share/doc
test -e {m}/etc/os-release && echo os-release-kept",
        w = work.path().display(),
        m = merged.display(),
    );
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Python 3.11"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("v18.")), "{stdout}");
    for line in [
        "pip-ok",
        "hello from a layer",
        "motd-gone",
        "os-release-kept",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "{line} missing from {stdout}"
        );
    }
    assert!(
        stdout.lines().any(|l| l == "README.cove")
            && !stdout.lines().any(|l| l == "python3" || l == "bash"),
        "the opaque /usr/share/doc shows only the top layer's file: {stdout}"
    );
    assert!(
        std::fs::read_dir(&merged).expect("merged").next().is_none(),
        "the overlay was only mounted inside the private namespace"
    );
}
