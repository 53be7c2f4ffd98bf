//! Test images made here, without a registry or Docker: OCI image layouts written from tar
//! layers, and a real Debian image (`mmdebstrap` bookworm with python3, pip and Node.js)
//! cached under the target directory.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// One tar layer of a test image (uncompressed), stored gzip'd unless `plain`.
pub struct TestLayer {
    pub tar: Vec<u8>,
    pub plain: bool,
}

impl TestLayer {
    pub fn gzip(tar: Vec<u8>) -> Self {
        Self { tar, plain: false }
    }
}

/// An image to write: its layers bottom first and its run config (`Env`, `Cmd`, …).
pub struct TestImage {
    pub layers: Vec<TestLayer>,
    pub config: Value,
    pub architecture: String,
}

impl TestImage {
    pub fn amd64(layers: Vec<TestLayer>, config: Value) -> Self {
        Self {
            layers,
            config,
            architecture: "amd64".to_owned(),
        }
    }
}

/// A layout entry's description, as written.
#[derive(Clone, Debug)]
pub struct Written {
    pub digest: String,
    pub size: u64,
    pub media_type: &'static str,
    /// Layers' compressed blob digests and diff ids, bottom first.
    pub layers: Vec<(String, String)>,
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Writes a blob into the layout `dir` and returns its digest.
pub fn write_blob(dir: &Path, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("blobs dir");
    let path = blobs.join(&digest["sha256:".len()..]);
    fs::write(path, bytes).expect("write blob");
    digest
}

/// Writes `image`'s blobs into the layout `dir` (made if missing) and returns its manifest.
pub fn write_image(dir: &Path, image: &TestImage) -> Written {
    let mut layers = Vec::new();
    let mut descriptors = Vec::new();
    for layer in &image.layers {
        let diff_id = sha256(&layer.tar);
        let (bytes, media_type) = if layer.plain {
            (layer.tar.clone(), "application/vnd.oci.image.layer.v1.tar")
        } else {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&layer.tar).expect("gzip");
            (
                gz.finish().expect("gzip"),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        };
        let digest = write_blob(dir, &bytes);
        descriptors.push(json!({"mediaType": media_type, "digest": digest, "size": bytes.len()}));
        layers.push((digest, diff_id));
    }
    let config = json!({
        "architecture": image.architecture,
        "os": "linux",
        "config": image.config,
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(_, d)| d).collect::<Vec<_>>()},
    });
    let config = serde_json::to_vec(&config).expect("config json");
    let config_digest = write_blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descriptors,
    }))
    .expect("manifest json");
    let digest = write_blob(dir, &manifest);
    Written {
        digest,
        size: manifest.len() as u64,
        media_type: OCI_MANIFEST,
        layers,
    }
}

/// Writes an index of `entries` (manifest, os, architecture) into `dir` and returns it.
pub fn write_index(dir: &Path, entries: &[(&Written, &str, &str)]) -> Written {
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(w, os, arch)| {
            json!({"mediaType": w.media_type, "digest": w.digest, "size": w.size,
                   "platform": {"os": os, "architecture": arch}})
        })
        .collect();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests,
    }))
    .expect("index json");
    let digest = write_blob(dir, &index);
    Written {
        digest,
        size: index.len() as u64,
        media_type: OCI_INDEX,
        layers: Vec::new(),
    }
}

/// Names the layout's entries (`tag` → manifest or index) in `index.json`.
pub fn write_layout_index(dir: &Path, tagged: &[(&str, &Written)]) {
    fs::create_dir_all(dir).expect("layout dir");
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    let manifests: Vec<Value> = tagged
        .iter()
        .map(|(tag, w)| {
            json!({"mediaType": w.media_type, "digest": w.digest, "size": w.size,
                   "annotations": {"org.opencontainers.image.ref.name": tag}})
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("index.json");
}

/// Builds tar layers entry by entry, including what honest tools never write.
pub struct LayerBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }
}

impl LayerBuilder {
    /// Any entry: `kind`, mode, (uid, gid), link target, content.
    pub fn entry(
        mut self,
        path: &str,
        kind: tar::EntryType,
        mode: u32,
        owner: (u64, u64),
        link: Option<&str>,
        data: &[u8],
    ) -> Self {
        let mut header = tar::Header::new_gnu();
        header
            .set_path(path)
            .unwrap_or_else(|_| panic!("a path tar accepts: {path}"));
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(owner.0);
        header.set_gid(owner.1);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        if let Some(link) = link {
            header.set_link_name(link).expect("link name");
        }
        header.set_cksum();
        self.builder.append(&header, data).expect("append");
        self
    }

    pub fn dir(self, path: &str) -> Self {
        self.entry(path, tar::EntryType::Directory, 0o755, (0, 0), None, b"")
    }

    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.entry(path, tar::EntryType::Regular, 0o644, (0, 0), None, data)
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("tar")
    }
}

/// How the Debian test image is made; its hash names the cache entry, so changing the
/// recipe rebuilds it.
const DEBIAN_RECIPE: &str = "mmdebstrap --mode=root --variant=apt \
    --include=python3,python3-pip,nodejs --format=tar bookworm http://deb.debian.org/debian | \
    layer 2: whiteout etc/motd, opaque usr/share/doc with README.cove, \
    usr/local/bin/cove-hello | v2";

/// The OCI layout of a two-layer Debian bookworm image with python3, pip and Node.js,
/// tagged `bookworm`: layer 1 is the `mmdebstrap` rootfs, layer 2 (ours) deletes
/// `/etc/motd` (whiteout), replaces `/usr/share/doc` (opaque, only `README.cove` left) and
/// adds `/usr/local/bin/cove-hello`. Built once (minutes: it downloads from the Debian
/// mirror) and cached under `$CARGO_TARGET_DIR/test-images` (else `target/test-images`).
pub fn debian_layout() -> PathBuf {
    let cache = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target"))
        .join("test-images");
    fs::create_dir_all(&cache).expect("test image cache");
    let key = &hex::encode(Sha256::digest(DEBIAN_RECIPE))[..16];
    let layout = cache.join(format!("debian-{key}"));
    // One builder at a time, across test processes.
    let lock = fs::File::create(cache.join(".lock")).expect("cache lock");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    if layout.join("index.json").is_file() {
        return layout;
    }
    let work = tempfile::Builder::new()
        .prefix("debian-")
        .tempdir_in(&cache)
        .expect("work dir");
    let rootfs_tar = work.path().join("rootfs.tar");
    let output = Command::new("mmdebstrap")
        .args([
            "--quiet",
            "--mode=root",
            "--variant=apt",
            "--include=python3,python3-pip,nodejs",
            "--format=tar",
            "bookworm",
        ])
        .arg(&rootfs_tar)
        .arg("http://deb.debian.org/debian")
        .stdin(Stdio::null())
        .output()
        .expect("mmdebstrap runs (scripts/setup installs it)");
    assert!(
        output.status.success(),
        "mmdebstrap failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let base = fs::read(&rootfs_tar).expect("rootfs tar");
    let top = LayerBuilder::default()
        .dir("etc/")
        .file("etc/.wh.motd", b"")
        .dir("usr/")
        .dir("usr/share/")
        .dir("usr/share/doc/")
        .file("usr/share/doc/.wh..wh..opq", b"")
        .file("usr/share/doc/README.cove", b"only this is left\n")
        .dir("usr/local/")
        .dir("usr/local/bin/")
        .entry(
            "usr/local/bin/cove-hello",
            tar::EntryType::Regular,
            0o755,
            (0, 0),
            None,
            b"#!/bin/sh\necho hello from a layer\n",
        )
        .finish();
    let staged = work.path().join("layout");
    let image = TestImage::amd64(
        vec![TestLayer::gzip(base), TestLayer::gzip(top)],
        json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
            "Cmd": ["python3"],
            "WorkingDir": "/",
        }),
    );
    let written = write_image(&staged, &image);
    write_layout_index(&staged, &[("bookworm", &written)]);
    fs::rename(&staged, &layout).expect("cache the layout");
    layout
}
