//! Layers through a real object store: a directory, and an S3 server (`s3s-fs`, an S3
//! implementation over a directory, installed by `scripts/setup`) on a free port.

#![allow(clippy::unwrap_used)]

use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use cove_depot::{Depot, DepotError, Put};
use cove_image::{Digest, LayerStore, StoreOptions};

/// A layer as a build makes it, in `store`.
fn made_layer(store: &LayerStore, content: &[u8]) -> Digest {
    let tree = store.staging_dir().unwrap();
    fs::create_dir_all(tree.join("srv")).unwrap();
    fs::write(tree.join("srv/data.bin"), content).unwrap();
    fs::write(tree.join("srv/config"), b"mode = test\n").unwrap();
    let id = Digest::of(content);
    store.install_tree(&id, &tree, "build:b1").unwrap();
    id
}

fn stores(dir: &Path) -> (LayerStore, LayerStore) {
    (
        LayerStore::open(dir.join("node-a"), StoreOptions::default()).unwrap(),
        LayerStore::open(dir.join("node-b"), StoreOptions::default()).unwrap(),
    )
}

/// What a second node sees after fetching: the first node's files.
async fn travels(depot: &Depot, dir: &Path) {
    let (a, b) = stores(dir);
    // Larger than one upload part, so the multipart path is taken.
    let content: Vec<u8> = (0..20u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let id = made_layer(&a, &content);
    assert!(!depot.has(&id).await.unwrap());
    let Put::Written(exported) = depot.put(&a, &id).await.unwrap() else {
        panic!("the first put writes");
    };
    assert!(exported.size > 0);
    assert_eq!(depot.put(&a, &id).await.unwrap(), Put::Present);
    assert!(depot.has(&id).await.unwrap());

    assert!(depot.fetch(&b, &id, "build:b1").await.unwrap(), "fetched");
    assert!(
        !depot.fetch(&b, &id, "sandbox:s1").await.unwrap(),
        "kept since"
    );
    let root = b.layer_path(&id);
    assert_eq!(fs::read(root.join("srv/data.bin")).unwrap(), content);
    assert_eq!(fs::read(root.join("srv/config")).unwrap(), b"mode = test\n");
    assert_eq!(b.owners(&id).unwrap(), vec!["build:b1", "sandbox:s1"]);

    let unknown = Digest::of(b"never stored");
    let err = depot.fetch(&b, &unknown, "build:b2").await.unwrap_err();
    assert!(matches!(err, DepotError::Missing { .. }), "{err:?}");
    assert!(
        err.to_string().contains("is not in the object store"),
        "{err}"
    );
}

/// A snapshot's directory as the copy stage leaves it: a layer with a whiteout (a character
/// device 0:0) and an opaque directory, and a memory image beside it.
fn made_snapshot_dir(dir: &Path, image: &[u8]) {
    fs::create_dir_all(dir.join("0/etc/app")).unwrap();
    fs::write(dir.join("0/etc/app/settings"), b"debug = true\n").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("0/etc/removed"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o000),
        0,
    )
    .unwrap();
    rustix::fs::setxattr(
        dir.join("0/etc/app"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::create_dir_all(dir.join("memory")).unwrap();
    fs::write(dir.join("memory/checkpoint.img"), image).unwrap();
}

/// A snapshot's directory made on one node arrives whole on another.
async fn a_snapshot_dir_travels(depot: &Depot, dir: &Path) {
    let image: Vec<u8> = (0..12u32 << 20).map(|i| (i % 251) as u8).collect();
    let made = dir.join("node-a/snapshots/s1x");
    made_snapshot_dir(&made, &image);
    assert!(!depot.has_tree("s1x").await.unwrap());
    assert!(matches!(
        depot.put_tree("s1x", &made).await.unwrap(),
        Put::Written(_)
    ));
    assert_eq!(depot.put_tree("s1x", &made).await.unwrap(), Put::Present);
    assert!(depot.has_tree("s1x").await.unwrap());

    let here = dir.join("node-b/snapshots");
    fs::create_dir_all(&here).unwrap();
    let (into, staging) = (here.join("s1x"), here.join("s1x.fetching"));
    assert!(depot.fetch_tree("s1x", &into, &staging).await.unwrap());
    assert!(!staging.exists(), "the staging directory goes");
    assert!(!depot.fetch_tree("s1x", &into, &staging).await.unwrap());
    assert_eq!(fs::read(into.join("memory/checkpoint.img")).unwrap(), image);
    assert_eq!(
        fs::read(into.join("0/etc/app/settings")).unwrap(),
        b"debug = true\n"
    );
    let whiteout = fs::symlink_metadata(into.join("0/etc/removed")).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);
    let mut opaque = [0u8; 1];
    rustix::fs::getxattr(
        into.join("0/etc/app"),
        "trusted.overlay.opaque",
        &mut opaque,
    )
    .unwrap();
    assert_eq!(&opaque, b"y");

    let err = depot
        .fetch_tree("never0stored", &here.join("never0stored"), &staging)
        .await
        .unwrap_err();
    assert!(matches!(err, DepotError::MissingTree { .. }), "{err:?}");
    for bad in ["", "../etc", "a/b", "a.json"] {
        let err = depot.has_tree(bad).await.unwrap_err();
        assert!(matches!(err, DepotError::TreeName(_)), "{bad}: {err:?}");
    }
}

#[tokio::test]
async fn a_layer_goes_through_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let depot = Depot::open(&format!("file://{}", dir.path().join("depot").display())).unwrap();
    travels(&depot, dir.path()).await;
    a_snapshot_dir_travels(&depot, dir.path()).await;
}

#[tokio::test]
async fn a_changed_snapshot_dir_is_refused_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("depot");
    let depot = Depot::open(objects.to_str().unwrap()).unwrap();
    for (name, image) in [("first", &b"one image"[..]), ("second", b"another image")] {
        let made = dir.path().join("made").join(name);
        made_snapshot_dir(&made, image);
        depot.put_tree(name, &made).await.unwrap();
    }
    // Someone with access to the bucket puts another directory's archive in its place.
    let archives = objects.join("snapshots");
    fs::copy(
        archives.join("second.tar.gz"),
        archives.join("first.tar.gz"),
    )
    .unwrap();
    let here = dir.path().join("here");
    fs::create_dir_all(&here).unwrap();
    let (into, staging) = (here.join("first"), here.join("first.fetching"));
    let err = depot
        .fetch_tree("first", &into, &staging)
        .await
        .unwrap_err();
    assert!(matches!(err, DepotError::Changed { .. }), "{err:?}");
    assert!(!into.exists() && !staging.exists());
}

#[tokio::test]
async fn a_changed_archive_is_refused_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("depot");
    let depot = Depot::open(objects.to_str().unwrap()).unwrap();
    let (a, b) = stores(dir.path());
    let id = made_layer(&a, b"the original");
    depot.put(&a, &id).await.unwrap();
    // Someone with access to the bucket puts another layer's archive in its place.
    let other = made_layer(&a, b"something else");
    depot.put(&a, &other).await.unwrap();
    let archives = objects.join("layers/sha256");
    fs::copy(
        archives.join(format!("{}.tar.gz", other.hex())),
        archives.join(format!("{}.tar.gz", id.hex())),
    )
    .unwrap();
    let err = depot.fetch(&b, &id, "build:b1").await.unwrap_err();
    assert!(
        err.to_string().contains("digest mismatch") || err.to_string().contains("larger than"),
        "{err}"
    );
    assert!(!b.contains(&id));
}

#[test]
fn locations_are_checked() {
    for bad in ["relative/dir", "s3://", "gs://bucket/x", ""] {
        let err = Depot::open(bad).unwrap_err();
        assert!(matches!(err, DepotError::Location(_)), "{bad}: {err:?}");
    }
}

/// An S3 server of the test's own, removed when dropped.
struct S3Server {
    child: Child,
    port: u16,
    _root: tempfile::TempDir,
}

impl S3Server {
    fn start(bucket: &str) -> Self {
        let bin = which_s3s_fs();
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join(bucket)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--access-key",
                "cove-test",
                "--secret-key",
                "cove-test-secret",
            ])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _root: root,
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", "cove-test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "cove-test-secret".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s3s-fs` on PATH (cargo's bin directory, where `scripts/setup` installs it).
fn which_s3s_fs() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(home.map(|h| h.join(".cargo/bin")))
        .map(|dir| dir.join("s3s-fs"))
        .find(|path| path.is_file())
        .expect("s3s-fs is not installed: run scripts/setup (cargo install s3s-fs)")
}

#[tokio::test]
async fn a_layer_goes_through_an_s3_server() {
    let server = S3Server::start("cove-layers");
    let dir = tempfile::tempdir().unwrap();
    let depot = Depot::open_with("s3://cove-layers/cluster-1", server.vars()).unwrap();
    depot.check().await.unwrap();
    travels(&depot, dir.path()).await;
    a_snapshot_dir_travels(&depot, dir.path()).await;
    // Collected on a prefix of its own (what `travels` wrote is not kept there).
    let apart = Depot::open_with("s3://cove-layers/collected", server.vars()).unwrap();
    collects(&apart, &dir.path().join("collected")).await;
    // Wrong credentials: a clear error, not a missing layer.
    let mut wrong = server.vars();
    wrong.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY".to_owned(), "not-it".to_owned()));
    let depot = Depot::open_with("s3://cove-layers/cluster-1", wrong).unwrap();
    let err = depot.check().await.unwrap_err();
    assert!(matches!(err, DepotError::Objects { .. }), "{err:?}");
}

#[tokio::test]
async fn a_collection_removes_what_nothing_keeps_once_it_is_old_enough() {
    let dir = tempfile::tempdir().unwrap();
    let objects = dir.path().join("depot");
    let depot = Depot::open(objects.to_str().unwrap()).unwrap();
    collects(&depot, dir.path()).await;
    let left: Vec<String> = fs::read_dir(objects.join("layers/sha256"))
        .unwrap()
        .chain(fs::read_dir(objects.join("snapshots")).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 6, "an archive and a record each: {left:?}");
}

/// Two layers and two snapshot directories, one of each kept: the others go once old.
async fn collects(depot: &Depot, dir: &Path) {
    let (a, _) = stores(dir);
    let (kept_layer, gone_layer) = (made_layer(&a, b"kept"), made_layer(&a, b"gone"));
    for layer in [&kept_layer, &gone_layer] {
        depot.put(&a, layer).await.unwrap();
    }
    for name in ["keptdir", "gonedir"] {
        let made = dir.join("made").join(name);
        made_snapshot_dir(&made, name.as_bytes());
        depot.put_tree(name, &made).await.unwrap();
    }
    let kept = cove_depot::Kept {
        layers: [kept_layer.clone()].into(),
        trees: ["keptdir".to_owned()].into(),
    };
    // Young objects stay, needed or not: a build or snapshot may be about to record them.
    let young = depot
        .collect(&kept, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(young, cove_depot::Collected::default());
    assert!(depot.has(&gone_layer).await.unwrap() && depot.has_tree("gonedir").await.unwrap());

    let old = depot.collect(&kept, Duration::ZERO).await.unwrap();
    assert_eq!(old.removed, 2, "{old:?}");
    assert!(old.freed_bytes > 0);
    assert!(!depot.has(&gone_layer).await.unwrap());
    assert!(!depot.has_tree("gonedir").await.unwrap());
    assert!(depot.has(&kept_layer).await.unwrap());
    assert!(depot.has_tree("keptdir").await.unwrap());
    // A layer written again after a collection took it is whole again.
    depot.put(&a, &gone_layer).await.unwrap();
    assert!(depot.has(&gone_layer).await.unwrap());
}
