//! Volumes against a real server and real sandboxes: what a sandbox plants in a volume
//! cannot make the host's content API read or write outside it, a mounted volume cannot be
//! deleted, another team's volumes are not there, and volumes and sandbox disks are
//! mounted so that a rename does not wait for the device.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{cove, loop_devices_under, root, sandbox, sh};
use cove_sdk::{ConnectionConfig, CreateOptions, Error, Sandbox, volumes::Volume};
use cove_test_util::TestServer;

fn mounting(name: &str, path: &str) -> CreateOptions {
    CreateOptions {
        volume_mounts: vec![(name.to_owned(), path.to_owned())],
        ..CreateOptions::default()
    }
}

/// Mounts of the host whose path lies below `dir`.
fn mounts_under(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap()))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn links_planted_in_a_volume_keep_the_host_inside_it() {
    let server = TestServer::start(cove()).await;
    let config = server.config();
    let volume = Volume::create(&config, "planted", Some(16)).await.unwrap();
    let sbx = sandbox(&server, mounting("planted", "/mnt/v")).await;
    let planted = sh(
        &root(&sbx),
        "cd /mnt/v && ln -s /etc/shadow shadow && ln -s / hostroot \
         && ln -s ../../../../../../../etc up && ln -s /proc/self/root magic \
         && mkfifo fifo && echo ok",
    )
    .await;
    assert_eq!(planted.trim(), "ok", "{planted}");
    let shadow_before = std::fs::read("/etc/shadow").unwrap();

    // Reads: every link resolves inside the volume, where nothing of the host is.
    for path in [
        "shadow",
        "hostroot/etc/shadow",
        "hostroot/etc/passwd",
        "up/passwd",
        "magic/etc/passwd",
    ] {
        let read = volume.read(path).await;
        assert!(matches!(read, Err(Error::NotFound(_))), "{path}: {read:?}");
    }
    // A FIFO is refused at once instead of holding the server.
    let fifo = volume.read("fifo").await;
    assert!(matches!(fifo, Err(Error::InvalidArgument(_))), "{fifo:?}");
    let fifo = volume.write("fifo", "x").await;
    assert!(matches!(fifo, Err(Error::InvalidArgument(_))), "{fifo:?}");
    // Listing through the link to / lists the volume's root, not the host's.
    let listed = volume.list_dir("hostroot").await.unwrap();
    let names: Vec<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert!(
        names.contains(&"shadow") && !names.contains(&"usr"),
        "{names:?}"
    );
    let shadow = volume.stat("shadow").await.unwrap();
    assert_eq!(
        (shadow.kind.as_str(), shadow.target.as_deref()),
        ("symlink", Some("/etc/shadow"))
    );

    // Writes through the links land inside the volume.
    let escape = format!("cove-volume-escape-{}", volume.id());
    volume
        .write(&format!("hostroot/tmp/{escape}"), "planted")
        .await
        .unwrap();
    assert!(!std::path::Path::new("/tmp").join(&escape).exists());
    let inside = sh(&root(&sbx), &format!("cat /mnt/v/tmp/{escape}")).await;
    assert_eq!(inside, "planted");
    // The link to /etc/shadow means the volume's etc/shadow: not there yet, then made.
    let dangling = volume.write("shadow", "root::0:0:::::").await;
    assert!(matches!(dangling, Err(Error::NotFound(_))), "{dangling:?}");
    volume.make_dir("etc").await.unwrap();
    volume.write("shadow", "root::0:0:::::").await.unwrap();
    assert_eq!(std::fs::read("/etc/shadow").unwrap(), shadow_before);
    let inside = sh(&root(&sbx), "cat /mnt/v/etc/shadow").await;
    assert_eq!(inside, "root::0:0:::::");
    // Removing through a link removes the link only.
    volume.remove("hostroot").await.unwrap();
    assert!(std::path::Path::new("/etc/shadow").exists());
    let left = sh(&root(&sbx), "ls /mnt/v | sort | tr '\\n' ' '").await;
    assert_eq!(left.trim(), "etc fifo magic shadow tmp up");
    // `..` is refused before anything is opened.
    let up = volume.read("../../etc/passwd").await;
    assert!(matches!(up, Err(Error::InvalidArgument(_))), "{up:?}");

    // Owners are the sandbox's: what its user writes is 1000's, also for the host.
    sh(&sbx.agent().clone(), "echo mine > /mnt/v/mine").await;
    assert_eq!(volume.stat("mine").await.unwrap().uid, 1000);
    let owner = sh(&root(&sbx), "stat -c %U /mnt/v/mine /mnt/v/shadow").await;
    assert_eq!(owner, "user\nroot\n");
    // Mounted without device files or setuid programs.
    let options = sh(&root(&sbx), "grep ' /mnt/v ' /proc/self/mounts").await;
    assert!(
        options.contains("nosuid") && options.contains("nodev"),
        "{options}"
    );
    sbx.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mount_path_through_planted_links_stays_in_the_sandbox() {
    let server = TestServer::start(cove()).await;
    let config = server.config();
    let volume = Volume::create(&config, "target", Some(16)).await.unwrap();
    // Links planted in a sandbox's files, which a snapshot carries into the next sandbox,
    // whose volume is mounted through them while its root is built on the host.
    let planter = sandbox(&server, CreateOptions::default()).await;
    let planted = sh(
        &root(&planter),
        "ln -s /etc /home/user/etc && ln -s ../../../../../../../../tmp /home/user/up && echo ok",
    )
    .await;
    assert_eq!(planted.trim(), "ok", "{planted}");
    let snapshot = planter.snapshot(None).await.unwrap();
    planter.kill().await.unwrap();
    let name = format!("cove-volume-target-{}", volume.id());
    let options = CreateOptions {
        template: Some(snapshot.snapshot_id.clone()),
        volume_mounts: vec![("target".to_owned(), format!("/home/user/etc/{name}"))],
        ..CreateOptions::default()
    };
    let sbx = sandbox(&server, options).await;
    assert!(!std::path::Path::new("/etc").join(&name).exists());
    sh(&sbx.agent().clone(), &format!("echo in > /etc/{name}/f")).await;
    assert_eq!(volume.read("f").await.unwrap(), "in\n");
    sbx.kill().await.unwrap();
    let options = CreateOptions {
        template: Some(snapshot.snapshot_id.clone()),
        volume_mounts: vec![("target".to_owned(), format!("/home/user/up/{name}"))],
        ..CreateOptions::default()
    };
    let sbx = sandbox(&server, options).await;
    assert!(!std::path::Path::new("/tmp").join(&name).exists());
    assert_eq!(
        sh(&sbx.agent().clone(), &format!("cat /tmp/{name}/f")).await,
        "in\n"
    );
    sbx.kill().await.unwrap();
    assert!(
        Sandbox::delete_snapshot(&config, &snapshot.snapshot_id)
            .await
            .unwrap()
    );
    assert!(Volume::destroy(&config, volume.id()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mounted_volume_is_not_deleted_and_one_deleted_leaves_nothing() {
    let server = TestServer::start(cove()).await;
    let config = server.config();
    let volume = Volume::create(&config, "busy", Some(16)).await.unwrap();
    let sbx = sandbox(&server, mounting("busy", "/data")).await;
    let refused = Volume::destroy(&config, volume.id()).await;
    match refused {
        Err(Error::Api {
            status: 409,
            message,
        }) => assert!(
            message.contains(sbx.id()) && message.contains("busy"),
            "{message}"
        ),
        other => panic!("deleting a mounted volume: {other:?}"),
    }
    // A name taken, a name that is no name, a path that is no place.
    assert!(matches!(
        Volume::create(&config, "busy", None).await,
        Err(Error::Api { status: 409, .. })
    ));
    assert!(matches!(
        Volume::create(&config, "../x", None).await,
        Err(Error::InvalidArgument(_))
    ));
    for bad in ["relative", "/", "/proc/x", "/a/../b"] {
        let created = Sandbox::create(&config, mounting("busy", bad)).await;
        assert!(
            matches!(created, Err(Error::InvalidArgument(_))),
            "{bad}: {created:?}"
        );
    }
    sh(&sbx.agent().clone(), "echo kept > /data/f").await;
    sbx.kill().await.unwrap();
    assert_eq!(volume.read("f").await.unwrap(), "kept\n");

    assert!(Volume::destroy(&config, volume.id()).await.unwrap());
    assert!(!Volume::destroy(&config, volume.id()).await.unwrap());
    let volumes = server.state_dir().join("volumes");
    assert!(
        mounts_under(&volumes).is_empty(),
        "{:?}",
        mounts_under(&volumes)
    );
    cove_test_util::wait_until(
        "the volume's loop device to detach",
        std::time::Duration::from_secs(60),
        || async { loop_devices_under(&volumes).is_empty().then_some(()) },
    )
    .await;
    assert!(!volumes.join(volume.id()).exists());
}

/// A network helper (slirp4netns, which parses everything its sandbox sends) sees none of the
/// host's mounts: a volume deleted while sandboxes with internet access run, whose helpers
/// started while it was mounted on the host, detaches at once instead of when they end.
#[tokio::test(flavor = "multi_thread")]
async fn network_helpers_hold_no_volume_of_the_host() {
    let server = TestServer::start(cove()).await;
    let config = server.config();
    let passing = Volume::create(&config, "passing", Some(16)).await.unwrap();
    Volume::create(&config, "own", Some(16)).await.unwrap();
    // Mounting a volume makes this a fresh sandbox, whose helper starts now.
    let bystander = sandbox(&server, mounting("own", "/own")).await;
    assert_eq!(sh(&bystander.agent().clone(), "echo up").await, "up\n");
    let state = server.state_dir().canonicalize().unwrap();
    let helpers: Vec<std::path::PathBuf> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "slirp4netns")
        })
        .collect();
    assert!(!helpers.is_empty(), "no network helper runs");
    let allowed = [
        "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "proc", "dev",
    ];
    for helper in &helpers {
        // Gone meanwhile (another test's sandbox ended): nothing to look at.
        let Ok(mounts) = std::fs::read_to_string(helper.join("mountinfo")) else {
            continue;
        };
        assert!(
            !mounts.contains(state.to_str().unwrap()),
            "{helper:?} sees the server's state dir: {mounts}"
        );
        // Its root holds the system's programs and settings and nothing else.
        let Ok(root) = std::fs::read_dir(helper.join("root")) else {
            continue;
        };
        for entry in root.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(allowed.contains(&name.as_str()), "{helper:?} sees /{name}");
        }
    }

    assert!(Volume::destroy(&config, passing.id()).await.unwrap());
    let image = state.join("volumes").join(passing.id());
    cove_test_util::wait_until(
        "the deleted volume's loop device to detach",
        std::time::Duration::from_secs(60),
        || async { loop_devices_under(&image).is_empty().then_some(()) },
    )
    .await;
    bystander.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn another_teams_volume_is_not_there() {
    let server = TestServer::start(cove()).await;
    let config = server.config();
    let volume = Volume::create(&config, "ours", Some(16)).await.unwrap();
    let created = Command::new(cove())
        .args(["keys", "create", "--team", "other", "--state-dir"])
        .arg(server.state_dir())
        .output()
        .unwrap();
    assert!(created.status.success());
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let other = ConnectionConfig::new(&server.url(), &key).unwrap();

    assert!(Volume::list(&other).await.unwrap().is_empty());
    assert!(matches!(
        Volume::connect(&other, volume.id()).await,
        Err(Error::NotFound(_))
    ));
    assert!(!Volume::destroy(&other, volume.id()).await.unwrap());
    let mounted = Sandbox::create(&other, mounting("ours", "/data")).await;
    assert!(
        matches!(mounted, Err(Error::InvalidArgument(_))),
        "{mounted:?}"
    );
    // The same name is free in the other team.
    let theirs = Volume::create(&other, "ours", Some(16)).await.unwrap();
    assert_ne!(theirs.id(), volume.id());
    // A wrong token reads nothing.
    let http = reqwest::Client::new();
    let url = format!("{}/volumecontent/{}/dir?path=/", server.url(), volume.id());
    let wrong = http.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(Volume::destroy(&other, theirs.id()).await.unwrap());
    assert!(Volume::destroy(&config, volume.id()).await.unwrap());
}

/// `cove volume ARGS…` against `server`: its exit status, stdout and stderr.
fn cli(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(cove())
        .arg("volume")
        .args(args)
        .env("COVE_API_URL", server.url())
        .env("COVE_API_KEY", &server.api_key)
        .env_remove("E2B_API_URL")
        .env_remove("E2B_API_KEY")
        .env("COVE_LOG", "warn")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_creates_copies_lists_and_removes_volumes() {
    let server = TestServer::start(cove()).await;
    let (ok, id, err) = cli(&server, &["create", "clivol", "--size-mb", "16"]);
    assert!(ok && id.trim().starts_with("vol_"), "{err}");
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("in.txt");
    std::fs::write(&local, "from the cli").unwrap();
    let (ok, _, err) = cli(
        &server,
        &["cp", local.to_str().unwrap(), "clivol:/dir/f.txt"],
    );
    assert!(ok, "{err}");
    let (ok, listed, _) = cli(&server, &["ls"]);
    assert!(
        ok && listed.contains(id.trim()) && listed.contains("clivol"),
        "{listed}"
    );
    let (_, json, _) = cli(&server, &["ls", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json[0]["name"], "clivol");
    let out = work.path().join("out.txt");
    let (ok, _, err) = cli(&server, &["cp", "clivol:/dir/f.txt", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "from the cli");

    let sbx = sandbox(&server, mounting("clivol", "/v")).await;
    assert_eq!(
        sh(&sbx.agent().clone(), "cat /v/dir/f.txt").await,
        "from the cli"
    );
    let (ok, _, err) = cli(&server, &["rm", "clivol"]);
    assert!(!ok && err.contains("kill them before deleting it"), "{err}");
    sbx.kill().await.unwrap();
    let (ok, _, err) = cli(&server, &["rm", id.trim()]);
    assert!(ok, "{err}");
    let (_, listed, _) = cli(&server, &["ls"]);
    assert!(!listed.contains("clivol"), "{listed}");
    let (ok, _, err) = cli(&server, &["cp", "clivol:/dir/f.txt", out.to_str().unwrap()]);
    assert!(!ok && err.contains("cannot find volume clivol"), "{err}");
}

/// The ext4 options the kernel reports for the filesystem on loop device `name`.
fn ext4_options(name: &str) -> Vec<String> {
    let device = name.trim_start_matches("/dev/");
    std::fs::read_to_string(format!("/proc/fs/ext4/{device}/options"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The loop devices of `sbx`'s disk and of the one volume on `server`.
fn disk_and_volume_devices(server: &TestServer, sbx: &Sandbox) -> [String; 2] {
    let state = server.state_dir();
    [
        state.join("sandboxes").join(sbx.id()),
        state.join("volumes"),
    ]
    .map(|dir| {
        let devices = loop_devices_under(&dir);
        assert_eq!(devices.len(), 1, "{}: {devices:?}", dir.display());
        devices[0].split_whitespace().next().unwrap().to_owned()
    })
}

/// A sandbox's disk and a volume are mounted `noauto_da_alloc`: a rename over a file (how
/// an upload replaces one) does not wait until the device has taken the new content in,
/// which took a third of a 256 MiB upload (docs/BENCHMARKS.md). They have no journal, so
/// ext4's flush on a rename bought no crash guarantee either.
#[tokio::test(flavor = "multi_thread")]
async fn a_rename_on_a_disk_or_a_volume_does_not_wait_for_the_device() {
    let server = TestServer::start(cove()).await;
    let config = server.config();
    let volume = Volume::create(&config, "renames", Some(16)).await.unwrap();
    let sbx = sandbox(&server, mounting("renames", "/data")).await;
    let [disk, volume_device] = disk_and_volume_devices(&server, &sbx);
    for name in [disk, volume_device] {
        let options = ext4_options(&name);
        assert!(
            options.iter().any(|o| o == "noauto_da_alloc"),
            "{name}: {options:?}"
        );
    }
    // An upload replaces a file by a rename; the new content is what is read back, on the
    // disk and in the volume (through the host's own mount of it too).
    for path in ["/home/user/replaced", "/data/replaced"] {
        for content in ["old", "new"] {
            sbx.files().write(path, content).await.unwrap();
        }
        assert_eq!(sbx.files().read(path).await.unwrap(), "new");
    }
    sbx.kill().await.unwrap();
    assert_eq!(volume.read("replaced").await.unwrap(), "new");
}

/// The loop device of a filesystem with 4 KiB blocks (a sandbox's 4 GiB disk) has 4 KiB
/// logical blocks from the start, so mounting it changes no block size (each change
/// flushes the device and interrupts every CPU, twice per create before). A small volume's
/// filesystem has 1 KiB blocks: its device keeps 512-byte blocks and still mounts.
#[tokio::test(flavor = "multi_thread")]
async fn a_loop_device_has_its_filesystems_block_size() {
    let server = TestServer::start(cove()).await;
    let config = server.config();
    let volume = Volume::create(&config, "blocks", Some(16)).await.unwrap();
    let sbx = sandbox(&server, mounting("blocks", "/data")).await;
    let [disk, volume_device] = disk_and_volume_devices(&server, &sbx);
    for (name, bytes) in [(&disk, "4096"), (&volume_device, "512")] {
        let device = name.trim_start_matches("/dev/");
        let size = std::fs::read_to_string(format!("/sys/block/{device}/queue/logical_block_size"))
            .unwrap();
        assert_eq!(size.trim(), bytes, "{name}");
    }
    // The sandbox's disk notes its device on the image itself, in no file beside it (a new
    // inode on the host's filesystem per create).
    let dir = server.state_dir().join("sandboxes").join(sbx.id());
    let mut hint = [0u8; 16];
    let len = rustix::fs::lgetxattr(dir.join("disk.img"), c"user.cove.loop", &mut hint).unwrap();
    let noted = std::str::from_utf8(&hint[..len]).unwrap();
    assert_eq!(format!("/dev/loop{noted}"), disk);
    assert!(!dir.join("disk.img.loop").exists());
    for path in ["/home/user/blocks", "/data/blocks"] {
        sbx.files().write(path, "written").await.unwrap();
        assert_eq!(sbx.files().read(path).await.unwrap(), "written");
    }
    sbx.kill().await.unwrap();
    assert_eq!(volume.read("blocks").await.unwrap(), "written");
}
