//! Pulls from a real registry (Debian's `docker-registry`, started per test on a free
//! loopback port) seeded with images this test writes itself and pushes with skopeo.

use std::{
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::Path,
    sync::Mutex,
};

use cove_image::{
    ClientConfig, Credentials, Error, LayerStore, Mirror, Platform, PullEvent, Reference,
    RegistryClient, RegistryError, StoreError, StoreOptions, import_blocking, pull,
};
use cove_test_util::{
    TestRegistry, free_port,
    image::{LayerBuilder, TestImage, TestLayer, write_image, write_index, write_layout_index},
};
use serde_json::json;
use tar::EntryType;

/// Two layers with every kind of entry: owners, setuid, hard link, symlink, a device node
/// (refused), then a whiteout and an opaque directory over the first.
fn tiny_layers() -> Vec<TestLayer> {
    let bottom = LayerBuilder::default()
        .dir("home/")
        .entry(
            "home/user/",
            EntryType::Directory,
            0o750,
            (1000, 1000),
            None,
            b"",
        )
        .entry(
            "home/user/.profile",
            EntryType::Regular,
            0o644,
            (1000, 1000),
            None,
            b"export A=1\n",
        )
        .dir("usr/")
        .dir("usr/bin/")
        .entry(
            "usr/bin/tool",
            EntryType::Regular,
            0o4755,
            (0, 0),
            None,
            b"#!/bin/sh\necho tool\n",
        )
        .entry(
            "usr/bin/tool-again",
            EntryType::Link,
            0o4755,
            (0, 0),
            Some("usr/bin/tool"),
            b"",
        )
        .entry(
            "usr/bin/alias",
            EntryType::Symlink,
            0o777,
            (0, 0),
            Some("tool"),
            b"",
        )
        .dir("dev/")
        .entry("dev/null", EntryType::Char, 0o666, (0, 0), None, b"")
        .dir("etc/")
        .file("etc/old.conf", b"old\n")
        .dir("opt/")
        .dir("opt/data/")
        .file("opt/data/a", b"a\n")
        .finish();
    let top = LayerBuilder::default()
        .dir("etc/")
        .file("etc/.wh.old.conf", b"")
        .dir("opt/")
        .dir("opt/data/")
        .file("opt/data/.wh..wh..opq", b"")
        .file("opt/data/b", b"b\n")
        .finish();
    vec![TestLayer::gzip(bottom), TestLayer::gzip(top)]
}

fn tiny_image() -> TestImage {
    TestImage::amd64(
        tiny_layers(),
        json!({"Env": ["PATH=/usr/bin", "GREETING=hi"], "Cmd": ["/usr/bin/tool"], "WorkingDir": "/home/user", "User": "1000"}),
    )
}

/// Writes the tiny image as an OCI layout tagged `1` and pushes it to `name` in `registry`.
fn seed_tiny(registry: &TestRegistry, dir: &Path, name: &str) {
    let written = write_image(dir, &tiny_image());
    write_layout_index(dir, &[("1", &written)]);
    registry.push_layout(dir, "1", name);
}

fn client(mirrors: &[String]) -> RegistryClient {
    RegistryClient::new(ClientConfig {
        mirrors: mirrors
            .iter()
            .map(|m| m.parse::<Mirror>().expect("mirror"))
            .collect(),
        ..ClientConfig::default()
    })
    .expect("client")
}

fn reference(text: &str) -> Reference {
    Reference::parse(text).expect("reference")
}

struct Events(Mutex<Vec<PullEvent>>);

impl Events {
    fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }
    fn record(&self) -> impl Fn(PullEvent) + Send + Sync + '_ {
        move |event| self.0.lock().expect("events").push(event)
    }
    fn take(&self) -> Vec<PullEvent> {
        std::mem::take(&mut *self.0.lock().expect("events"))
    }
}

#[tokio::test]
async fn pulls_by_tag_and_by_digest_with_every_kind_of_entry() {
    let registry = TestRegistry::start().await;
    let seed = tempfile::tempdir().expect("seed");
    seed_tiny(&registry, seed.path(), "tiny/app:1");
    let store_dir = tempfile::tempdir().expect("store");
    let store = LayerStore::open(store_dir.path(), StoreOptions::default()).expect("store");
    let client = client(&[]);
    let events = Events::new();

    let by_tag = reference(&format!("{}/tiny/app:1", registry.host()));
    let image = pull(
        &client,
        &store,
        &by_tag,
        &Credentials::Anonymous,
        "template:a",
        &events.record(),
    )
    .await
    .expect("pull by tag");
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.config.env, ["PATH=/usr/bin", "GREETING=hi"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/home/user"));
    assert_eq!(image.config.user.as_deref(), Some("1000"));
    assert_eq!(image.config.cmd, Some(vec!["/usr/bin/tool".to_owned()]));
    assert_eq!(
        (image.config.os.as_str(), image.config.architecture.as_str()),
        ("linux", "amd64")
    );
    assert!(image.name.ends_with(&format!("@{}", image.manifest_digest)));

    let pulled = events.take();
    let Some(PullEvent::Resolved { layers, .. }) = pulled.first() else {
        panic!("first event is Resolved: {pulled:?}")
    };
    for (index, (_, size)) in layers.iter().enumerate() {
        let last = pulled.iter().rev().find_map(|e| match e {
            PullEvent::LayerBytes {
                index: i,
                done,
                total,
                ..
            } if *i == index => Some((*done, *total)),
            _ => None,
        });
        assert_eq!(
            last,
            Some((*size, *size)),
            "layer {index} reported to the end"
        );
    }
    assert_eq!(
        pulled
            .iter()
            .filter(|e| matches!(e, PullEvent::LayerStored { .. }))
            .count(),
        2
    );

    let [bottom, top] = [
        store.layer_path(&image.layers[0]),
        store.layer_path(&image.layers[1]),
    ];
    let home = std::fs::metadata(bottom.join("home/user")).expect("home");
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1000, 0o750)
    );
    assert_eq!(
        std::fs::metadata(bottom.join("home/user/.profile"))
            .expect("profile")
            .uid(),
        1000
    );
    let tool = std::fs::metadata(bottom.join("usr/bin/tool")).expect("tool");
    assert_eq!(tool.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(
        std::fs::metadata(bottom.join("usr/bin/tool-again"))
            .expect("link")
            .ino(),
        tool.ino()
    );
    assert_eq!(
        std::fs::read_link(bottom.join("usr/bin/alias")).expect("symlink"),
        Path::new("tool")
    );
    assert!(
        !bottom.join("dev/null").exists(),
        "device nodes are refused"
    );
    let info = store
        .layer(&image.layers[0])
        .expect("info")
        .expect("stored");
    assert_eq!(info.skipped, ["dev/null (character device)"]);
    assert_eq!(info.owners, ["template:a"]);
    let whiteout = std::fs::symlink_metadata(top.join("etc/old.conf")).expect("whiteout");
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    assert_eq!(
        xattr::get(top.join("opt/data"), "trusted.overlay.opaque").expect("xattr"),
        Some(b"y".to_vec())
    );
    assert_eq!(std::fs::read(top.join("opt/data/b")).expect("b"), b"b\n");
    let paths = image.layer_paths_top_first(&store);
    assert_eq!(paths, [top.clone(), bottom.clone()]);

    // By digest, for another owner: nothing is fetched again.
    let by_digest = reference(&format!(
        "{}/tiny/app@{}",
        registry.host(),
        image.manifest_digest
    ));
    let again = pull(
        &client,
        &store,
        &by_digest,
        &Credentials::Anonymous,
        "template:b",
        &events.record(),
    )
    .await
    .expect("pull by digest");
    assert_eq!(again.layers, image.layers);
    let cached = events.take();
    assert_eq!(
        cached
            .iter()
            .filter(|e| matches!(e, PullEvent::LayerCached { .. }))
            .count(),
        2,
        "{cached:?}"
    );
    assert!(
        !cached
            .iter()
            .any(|e| matches!(e, PullEvent::LayerBytes { .. }))
    );
    assert_eq!(
        store.owners(&image.layers[1]).expect("owners"),
        ["template:a", "template:b"]
    );
    assert!(store.disk_usage(&image.layers).expect("du") > 0);
}

#[tokio::test]
async fn pulls_docker_hub_names_through_a_mirror_and_falls_back_from_a_dead_one() {
    let registry = TestRegistry::start().await;
    let seed = tempfile::tempdir().expect("seed");
    seed_tiny(&registry, seed.path(), "library/tiny:1");
    let store_dir = tempfile::tempdir().expect("store");
    let store = LayerStore::open(store_dir.path(), StoreOptions::default()).expect("store");

    let mirrored = client(&[format!("docker.io={}", registry.url())]);
    let image = pull(
        &mirrored,
        &store,
        &reference("tiny:1"),
        &Credentials::Anonymous,
        "t",
        &|_| {},
    )
    .await
    .expect("pull through the mirror");
    assert!(
        image.name.starts_with("docker.io/library/tiny:1@sha256:"),
        "{}",
        image.name
    );

    // A mirror that is down (nothing listens on its port): the registry itself answers.
    let dead = format!("{}=http://127.0.0.1:{}", registry.host(), free_port());
    let fallback = client(&[dead]);
    let store_dir = tempfile::tempdir().expect("store");
    let store = LayerStore::open(store_dir.path(), StoreOptions::default()).expect("store");
    let again = pull(
        &fallback,
        &store,
        &reference(&format!("{}/library/tiny:1", registry.host())),
        &Credentials::Anonymous,
        "t",
        &|_| {},
    )
    .await
    .expect("pull falls back to the registry");
    assert_eq!(again.layers, image.layers);
}

#[tokio::test]
async fn private_registries_need_the_right_credentials() {
    let registry = TestRegistry::start_with_basic_auth("builder", "s3cret-pass").await;
    let seed = tempfile::tempdir().expect("seed");
    seed_tiny(&registry, seed.path(), "private/app:1");
    let store_dir = tempfile::tempdir().expect("store");
    let store = LayerStore::open(store_dir.path(), StoreOptions::default()).expect("store");
    let client = client(&[]);
    let image = reference(&format!("{}/private/app:1", registry.host()));

    for (credentials, with_credentials) in [
        (Credentials::Anonymous, false),
        (Credentials::basic("builder", "wrong"), true),
    ] {
        let err = pull(&client, &store, &image, &credentials, "t", &|_| {})
            .await
            .expect_err("refused");
        assert!(
            matches!(err, Error::Registry(RegistryError::Denied { with_credentials: w, .. }) if w == with_credentials),
            "{err:?}"
        );
        assert!(err.to_string().contains("access to"), "{err}");
        assert!(err.is_user_error());
    }
    let pulled = pull(
        &client,
        &store,
        &image,
        &Credentials::basic("builder", "s3cret-pass"),
        "t",
        &|_| {},
    )
    .await
    .expect("pull with credentials");
    assert_eq!(pulled.layers.len(), 2);
}

#[tokio::test]
async fn an_index_without_our_platform_is_refused_naming_what_it_has() {
    let registry = TestRegistry::start().await;
    let seed = tempfile::tempdir().expect("seed");
    let mut arm = tiny_image();
    arm.architecture = "arm64".to_owned();
    let arm_manifest = write_image(seed.path(), &arm);
    let index = write_index(seed.path(), &[(&arm_manifest, "linux", "arm64")]);
    write_layout_index(seed.path(), &[("1", &index)]);
    registry.push_layout(seed.path(), "1", "multi/app:1");
    let store_dir = tempfile::tempdir().expect("store");
    let store = LayerStore::open(store_dir.path(), StoreOptions::default()).expect("store");
    let amd64 = RegistryClient::new(ClientConfig {
        platform: Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        },
        ..ClientConfig::default()
    })
    .expect("client");
    let name = format!("{}/multi/app:1", registry.host());
    let err = pull(
        &amd64,
        &store,
        &reference(&name),
        &Credentials::Anonymous,
        "t",
        &|_| {},
    )
    .await
    .expect_err("no amd64 image");
    assert_eq!(
        err.to_string(),
        format!(
            "{} has no linux/amd64 image; it has: linux/arm64",
            reference(&name)
        )
    );
    assert!(
        store.layers().expect("layers").is_empty(),
        "nothing was fetched"
    );
}

#[tokio::test]
async fn unknown_images_and_tags_are_not_found() {
    let registry = TestRegistry::start().await;
    let seed = tempfile::tempdir().expect("seed");
    seed_tiny(&registry, seed.path(), "tiny/app:1");
    let store_dir = tempfile::tempdir().expect("store");
    let store = LayerStore::open(store_dir.path(), StoreOptions::default()).expect("store");
    let client = client(&[]);
    for name in ["nope/nothing:1", "tiny/app:2"] {
        let name = format!("{}/{name}", registry.host());
        let err = pull(
            &client,
            &store,
            &reference(&name),
            &Credentials::Anonymous,
            "t",
            &|_| {},
        )
        .await
        .expect_err("not found");
        assert!(
            matches!(err, Error::Registry(RegistryError::NotFound { .. })),
            "{err:?}"
        );
        assert_eq!(err.to_string(), format!("image {name} not found"));
        assert!(err.is_user_error());
    }
}

#[tokio::test]
async fn a_blob_changed_in_the_registry_is_refused_and_not_kept() {
    let registry = TestRegistry::start().await;
    let seed = tempfile::tempdir().expect("seed");
    let written = write_image(seed.path(), &tiny_image());
    write_layout_index(seed.path(), &[("1", &written)]);
    registry.push_layout(seed.path(), "1", "tiny/app:1");
    // Corrupt the top layer's blob where the registry keeps it.
    let (blob, diff_id) = &written.layers[1];
    let hex = &blob["sha256:".len()..];
    let data = registry
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).expect("stored blob");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, bytes).expect("corrupt");

    let store_dir = tempfile::tempdir().expect("store");
    let store =
        LayerStore::open(store_dir.path(), StoreOptions { keep_blobs: true }).expect("store");
    let err = pull(
        &client(&[]),
        &store,
        &reference(&format!("{}/tiny/app:1", registry.host())),
        &Credentials::Anonymous,
        "t",
        &|_| {},
    )
    .await
    .expect_err("refused");
    let text = cove_image::error_chain(&err);
    assert!(
        matches!(
            err,
            Error::Store(StoreError::DigestMismatch { .. } | StoreError::Unpack { .. })
        ),
        "{text}"
    );
    let diff_id = diff_id.parse().expect("digest");
    assert!(!store.contains(&diff_id));
    assert!(!store.blob_path(&blob.parse().expect("digest")).exists());
    assert!(
        store
            .layers()
            .expect("layers")
            .iter()
            .all(|l| l.owners.is_empty()),
        "a failed pull keeps no references"
    );
    assert_eq!(
        std::fs::read_dir(store_dir.path().join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
}

#[test]
fn imports_oci_layouts_and_docker_save_archives_into_the_same_layers() {
    let seed = tempfile::tempdir().expect("seed");
    let written = write_image(seed.path(), &tiny_image());
    write_layout_index(seed.path(), &[("docker.io/library/tiny:1", &written)]);
    let store_dir = tempfile::tempdir().expect("store");
    let store = LayerStore::open(store_dir.path(), StoreOptions::default()).expect("store");
    let platform = Platform::host();
    let from_layout = import_blocking(&store, seed.path(), Some("1"), &platform, "import:a")
        .expect("import the layout");
    assert_eq!(from_layout.config.env, ["PATH=/usr/bin", "GREETING=hi"]);

    // A classic `docker save` archive: manifest.json, the config, plain layer tars.
    let layers = tiny_layers();
    let diff_ids: Vec<String> = written.layers.iter().map(|(_, d)| d.clone()).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["FROM=docker-save"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("config");
    let config_name = format!("{}.json", hex_of(&config));
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name, "RepoTags": ["tiny:saved"],
        "Layers": ["l0/layer.tar", "l1/layer.tar"],
    }]))
    .expect("manifest");
    let mut archive = LayerBuilder::default()
        .file("manifest.json", &manifest)
        .file(&config_name, &config);
    for (i, layer) in layers.iter().enumerate() {
        archive = archive
            .dir(&format!("l{i}/"))
            .file(&format!("l{i}/layer.tar"), &layer.tar);
    }
    let tarball = seed.path().join("saved.tar");
    std::fs::write(&tarball, archive.finish()).expect("write archive");
    let saved = import_blocking(
        &store,
        &tarball,
        Some("docker.io/library/tiny:saved"),
        &platform,
        "import:b",
    )
    .expect("import the archive");
    assert_eq!(saved.config.env, ["FROM=docker-save"]);
    assert_eq!(
        saved.layers, from_layout.layers,
        "the same layers, stored once"
    );
    assert_eq!(store.layers().expect("layers").len(), 2);
    assert_eq!(
        store.owners(&saved.layers[0]).expect("owners"),
        ["import:a", "import:b"]
    );

    // Docker 25+ writes an OCI layout inside the `docker save` tarball.
    let mut oci_archive = tar::Builder::new(Vec::new());
    for name in ["oci-layout", "index.json"] {
        oci_archive
            .append_path_with_name(seed.path().join(name), name)
            .expect("append");
    }
    oci_archive
        .append_dir_all("blobs", seed.path().join("blobs"))
        .expect("append blobs");
    let oci_tarball = seed.path().join("oci-save.tar");
    std::fs::write(&oci_tarball, oci_archive.into_inner().expect("tar")).expect("write");
    let from_oci_tar = import_blocking(&store, &oci_tarball, None, &platform, "import:c")
        .expect("import an OCI layout inside a tarball");
    assert_eq!(from_oci_tar.layers, from_layout.layers);
    assert_eq!(from_oci_tar.manifest_digest, from_layout.manifest_digest);

    // Not an image at all.
    let err =
        import_blocking(&store, store_dir.path(), None, &platform, "x").expect_err("not an image");
    assert!(
        err.to_string().contains("neither an OCI image layout"),
        "{err}"
    );
}

fn hex_of(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn token_auth_registries_are_answered_with_bearer_tokens() {
    let registry = TestRegistry::start_with_token_auth("builder", "t0ken-pass").await;
    let seed = tempfile::tempdir().expect("seed");
    seed_tiny(&registry, seed.path(), "public/app:1");
    registry.push_layout(seed.path(), "1", "private/app:1");
    let store_dir = tempfile::tempdir().expect("store");
    let store = LayerStore::open(store_dir.path(), StoreOptions::default()).expect("store");
    let client = client(&[]);
    let public = reference(&format!("{}/public/app:1", registry.host()));
    let private = reference(&format!("{}/private/app:1", registry.host()));

    // Anonymous tokens, as Docker Hub gives for public images.
    pull(
        &client,
        &store,
        &public,
        &Credentials::Anonymous,
        "t",
        &|_| {},
    )
    .await
    .expect("anonymous pull of a public image");
    for (credentials, with_credentials) in [
        (Credentials::Anonymous, false),
        (Credentials::basic("builder", "wrong"), true),
    ] {
        let err = pull(&client, &store, &private, &credentials, "t", &|_| {})
            .await
            .expect_err("refused");
        assert!(
            matches!(err, Error::Registry(RegistryError::Denied { with_credentials: w, .. }) if w == with_credentials),
            "{err:?}"
        );
    }
    let image = pull(
        &client,
        &store,
        &private,
        &Credentials::basic("builder", "t0ken-pass"),
        "t",
        &|_| {},
    )
    .await
    .expect("pull with credentials through the token service");
    assert_eq!(image.layers.len(), 2);
    assert!(
        registry
            .tokens_issued()
            .iter()
            .any(|scope| scope == "repository:private/app:pull"),
        "{:?}",
        registry.tokens_issued()
    );
}
