//! The disk quota: a sandbox's writable layer lives on its own ext4 filesystem in a sparse
//! image file of the quota's size, mounted through a loop device. Filling it gives the
//! writer ENOSPC; the host's disk only ever holds what was written. The device detaches by
//! itself when the sandbox's last mount of it goes away.
//!
//! Formatting takes about 15 ms of CPU, so it happens once: [`ImagePool`] keeps some copies
//! of one freshly formatted image ready (a sparse copy moves only the filesystem's
//! metadata, about 170 KiB for 4 GiB), already written out to the host's disk, and for the
//! namespace backend already attached and mounted ([`Preparation::Mounted`]).

use std::{
    fs, io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Condvar, Mutex},
};

/// Formats a sparse ext4 image of `size` bytes at `path`. No journal: a sandbox's disk does
/// not outlive a host crash anyway, and it keeps formatting and mounting fast. No blocks
/// reserved for growing the filesystem while mounted (`resize_inode`), which nothing here
/// does: for 4 GiB they are 2 MiB of the image's 2.2, which every create copied and then
/// flushed (attaching a loop device for direct I/O writes its file out first); without
/// them the image holds about 170 KiB.
pub fn format_image(path: &Path, size: u64) -> io::Result<()> {
    let file = fs::File::create(path)?;
    file.set_len(size)?;
    drop(file);
    let output = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-O",
            "^has_journal,^resize_inode",
            "-E",
            "lazy_itable_init=1",
            "-m",
            "0",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        let _ = fs::remove_file(path);
        Err(io::Error::other(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_GET_STATUS64: libc::c_ulong = 0x4C05;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Serialises Cove's loop device allocations host-wide. "Get a free device" and "configure
/// it" are two calls: setups racing between them all got the same device, and a burst of
/// creates ran out of retries.
const LOOP_LOCK: &str = "/run/cove/loop.lock";

/// Holds [`LOOP_LOCK`] while alive.
fn lock_loop_allocation() -> io::Result<fs::File> {
    let path = Path::new(LOOP_LOCK);
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
    Ok(lock)
}

/// Attaches `image` to a free loop device and mounts its ext4 filesystem at `target`. The
/// device is set to detach when unmounted, and to bypass the host's page cache (the
/// sandbox's own cache is charged to its cgroup).
pub fn mount_image(image: &Path, target: &Path) -> io::Result<()> {
    attach_image(image)?.mount(target)
}

/// A loop device with a sandbox's disk image behind it, to be mounted ([`Device::mount`]):
/// attaching needs the image's directory, which the mount point may hide.
#[derive(Debug)]
pub struct Device {
    path: PathBuf,
    /// Our handle on a device we attached. With autoclear set, the device stays attached
    /// while it is open or mounted: dropped without a mount, it detaches.
    _held: Option<OwnedFd>,
}

impl Device {
    /// Mounts the device's filesystem at `target` ([`mount_device`]); then only the mount
    /// holds a device we attached.
    pub fn mount(self, target: &Path) -> io::Result<()> {
        mount_device(&self.path, target)
    }

    /// Mounts the device's filesystem with [`mount_device`]'s options, but nowhere yet: a
    /// detached mount, which a setup stage moves into its own namespace (`move_mount`). Then
    /// only the mount holds a device we attached; dropped unmoved, it is unmounted, and the
    /// device detaches.
    pub fn mount_detached(self) -> io::Result<OwnedFd> {
        use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
        let fs = rustix::mount::fsopen("ext4", FsOpenFlags::FSOPEN_CLOEXEC)?;
        rustix::mount::fsconfig_set_string(&fs, "source", &self.path)?;
        rustix::mount::fsconfig_set_flag(&fs, "noauto_da_alloc")?;
        rustix::mount::fsconfig_create(&fs)?;
        let mount = rustix::mount::fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_NOSUID | MountAttrFlags::MOUNT_ATTR_NODEV,
        )?;
        Ok(mount)
    }
}

/// Checks that `mount`, a detached mount handed to a setup stage, is the filesystem of the
/// loop device `image` is attached to: a sandbox gets its own disk or none.
pub fn check_mounted(image: &Path, mount: &OwnedFd) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let device = attached_device(image)?
        .ok_or_else(|| io::Error::other("the disk image is attached to no loop device"))?;
    if fs::metadata(&device)?.rdev() == rustix::fs::fstat(mount)?.st_dev {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "the mounted disk is not the filesystem of {}",
            device.display()
        )))
    }
}

/// Attaches `image` to a free loop device (detached again when its last mount or handle
/// goes away, bypassing the host's page cache).
pub fn attach_image(image: &Path) -> io::Result<Device> {
    let backing = fs::OpenOptions::new().read(true).write(true).open(image)?;
    let control = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    // Read once, before the host-wide lock: the same for every device tried.
    let block_size = loop_block_size(&backing);
    let allocating = lock_loop_allocation()?;
    // Programs other than Cove may still take the device between "get free" and
    // "configure": then try again.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if number < 0 {
            return Err(io::Error::last_os_error());
        }
        let device_path = PathBuf::from(format!("/dev/loop{number}"));
        let device: OwnedFd = match fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&device_path)
        {
            Ok(file) => file.into(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        // SAFETY: all-zero is a valid `loop_config` (plain integers and byte arrays).
        let mut config: LoopConfig = unsafe { std::mem::zeroed() };
        config.fd = u32::try_from(backing.as_raw_fd())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        config.info.lo_flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
        config.block_size = block_size;
        // SAFETY: `device` is an open loop device and `config` a valid `loop_config` that
        // outlives the call; the kernel only reads it.
        let rc = unsafe {
            libc::ioctl(
                device.as_raw_fd(),
                LOOP_CONFIGURE,
                &config as *const LoopConfig,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(err);
        }
        // Configured: nobody else gets this device now.
        drop(allocating);
        // Only a hint, checked before use: without it the device is searched for.
        let _ = rustix::fs::fsetxattr(
            &backing,
            DEVICE_HINT,
            number.to_string().as_bytes(),
            rustix::fs::XattrFlags::empty(),
        );
        return Ok(Device {
            path: device_path,
            _held: Some(device),
        });
    }
    Err(io::Error::other("no free loop device"))
}

/// The block size of the ext4 filesystem in `image`: `s_log_block_size` of its superblock
/// (1 KiB in, little-endian), when the magic there says ext4.
fn ext4_block_size(image: &fs::File) -> Option<u32> {
    let mut superblock = [0u8; 64];
    image.read_exact_at(&mut superblock, 1024).ok()?;
    let magic = u16::from_le_bytes([superblock[56], superblock[57]]);
    let log = u32::from_le_bytes([
        superblock[24],
        superblock[25],
        superblock[26],
        superblock[27],
    ]);
    (magic == 0xEF53 && log <= 6).then(|| 1024 << log)
}

/// The logical block size a loop device over `image` gets: 4096 when its ext4 filesystem has
/// 4 KiB blocks (every image Cove formats of 512 MiB and more), else the kernel's default
/// (0: 512 bytes). Mounting sets the device's block size to the filesystem's, and each change
/// flushes the device and interrupts every CPU (`set_blocksize`); on a device left at 512
/// bytes, ext4 makes two such changes (to 1 KiB to read its superblock, then to 4 KiB), on
/// the create path of every sandbox. What the image holds decides only this size: a wrong
/// one fails the mount, it cannot make the device read anything else.
fn loop_block_size(image: &fs::File) -> u32 {
    match ext4_block_size(image) {
        Some(4096) => 4096,
        _ => 0,
    }
}

/// Mounts the ext4 filesystem on `device` at `target` (no setuid programs, no device files).
/// Mounting a device that is mounted elsewhere already shares that mount's filesystem: both
/// see the same files and caches (and the first mount's options).
///
/// `noauto_da_alloc`: by default ext4 starts writing a file's data out when it is renamed
/// over another file, and the rename waits for room in the loop device's queue until all of
/// it has been handed over. An upload is committed that way (the agent's `atomic` module),
/// and for 256 MiB the rename took 100–140 ms, a third of the whole upload. The heuristic
/// is there to narrow what a crash loses of a file replaced without `fsync`; these
/// filesystems have no journal, so a crash gets no ordering from them anyway, and a
/// sandbox's disk is written out when it is unmounted (pause without memory, the end).
/// `fsync` still writes through.
pub fn mount_device(device: &Path, target: &Path) -> io::Result<()> {
    rustix::mount::mount(
        device,
        target,
        "ext4",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        Some(c"noauto_da_alloc"),
    )?;
    Ok(())
}

/// Mounts the filesystem of `image` at `target` in a stage's own mount namespace: through
/// the loop device it is attached to (a running sandbox's disk, whose filesystem this then
/// shares), else — unless `attached` says it must be — by attaching it (a stopped one's).
/// Never a second device on an attached image.
pub fn mount_existing(image: &Path, target: &Path, attached: bool) -> io::Result<()> {
    existing_device(image, attached)?.mount(target)
}

/// The loop device to mount `image`'s filesystem from ([`mount_existing`]).
pub fn existing_device(image: &Path, attached: bool) -> io::Result<Device> {
    match attached_device(image)? {
        Some(path) => Ok(Device { path, _held: None }),
        None if attached => Err(io::Error::other(
            "the running sandbox's disk is attached to no loop device",
        )),
        None => attach_image(image),
    }
}

/// The loop device `image` is attached to, if any. A second device on the same image would
/// be a second filesystem over the same blocks, and two of them writing it corrupt it: so a
/// device is recognised by the image's inode, not by its name.
pub fn attached_device(image: &Path) -> io::Result<Option<PathBuf>> {
    let meta = fs::metadata(image)?;
    // The device the image was last attached to, when that is still it: no search through
    // every loop device of the host (there may be a thousand).
    let mut hint = [0u8; 16];
    if let Some(number) = rustix::fs::lgetxattr(image, DEVICE_HINT, &mut hint)
        .ok()
        .and_then(|len| std::str::from_utf8(&hint[..len]).ok()?.parse::<u32>().ok())
    {
        let device = PathBuf::from(format!("/dev/loop{number}"));
        if backs(&device, &meta) {
            return Ok(Some(device));
        }
    }
    let named = fs::canonicalize(image)?;
    let mut attached = Vec::new();
    for entry in fs::read_dir("/sys/block")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        // Only attached devices have a backing file.
        let Ok(backing) = fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")) else {
            continue;
        };
        // The device whose backing file has the image's name first: usually the one.
        if Path::new(backing.trim_end_matches('\n')) == named {
            attached.insert(0, name);
        } else {
            attached.push(name);
        }
    }
    for name in attached {
        let device = PathBuf::from(format!("/dev/{name}"));
        if backs(&device, &meta) {
            return Ok(Some(device));
        }
    }
    Ok(None)
}

/// The extended attribute of an image in which [`attach_image`] notes the device it
/// attached the image to. On the image's own inode, so that noting it makes no file: on a
/// host filesystem without a journal each new inode costs a scan of the inodes freed in the
/// last seconds, of which a host creating and ending sandboxes has many (1.5–2 % of both
/// CPUs per file during creates, docs/profiles).
const DEVICE_HINT: &std::ffi::CStr = c"user.cove.loop";

/// Whether the loop device `device` is attached to the file `image` is.
fn backs(device: &Path, image: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(file) = fs::File::open(device) else {
        return false;
    };
    // SAFETY: all-zero is a valid `loop_info64` (plain integers and byte arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: `file` is an open loop device and `info` a writable `loop_info64` that
    // outlives the call; the kernel fills it in.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            LOOP_GET_STATUS64,
            &mut info as *mut LoopInfo64,
        )
    };
    // ENXIO: detached in the meantime.
    rc == 0 && info.lo_inode == image.ino() && info.lo_device == image.dev()
}

/// Copies the sparse file `from` to `to`, moving only its data (the holes stay holes).
pub fn copy_sparse(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::SeekFrom;
    let source = fs::File::open(from)?;
    let size = source.metadata()?.len();
    let target = fs::File::create(to)?;
    target.set_len(size)?;
    let mut at = 0u64;
    while at < size {
        let data = match rustix::fs::seek(&source, SeekFrom::Data(at)) {
            Ok(data) => data,
            // No data after `at`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            Err(err) => return Err(err.into()),
        };
        let hole = rustix::fs::seek(&source, SeekFrom::Hole(data))?;
        let (mut from_off, mut to_off) = (data, data);
        while from_off < hole {
            let len = usize::try_from(hole - from_off).unwrap_or(usize::MAX);
            let copied = rustix::fs::copy_file_range(
                &source,
                Some(&mut from_off),
                &target,
                Some(&mut to_off),
                len,
            )?;
            if copied == 0 {
                break;
            }
        }
        at = hole;
    }
    Ok(())
}

/// A copy of `golden` at `path`, written out to the host's disk: attaching a loop device
/// for direct I/O flushes its file first, and a pool's image should not make a create wait
/// for that.
fn prepare(golden: &Path, path: &Path) -> io::Result<()> {
    copy_sparse(golden, path)?;
    fs::File::open(path)?.sync_data()
}

/// The writable layer of the `i`-th mount point on the sandbox's disk mounted at `disk`.
pub fn upper_in(disk: &Path, i: usize) -> PathBuf {
    disk.join("upper").join(i.to_string())
}

/// The overlay work directory of the `i`-th mount point on the sandbox's disk at `disk`.
pub fn work_in(disk: &Path, i: usize) -> PathBuf {
    disk.join("work").join(i.to_string())
}

/// Makes the first mount point's writable layer and work directory on the filesystem
/// `mount` (the root of a fresh image's), as a setup stage would: host root's (the
/// sandbox's root, seen through its idmapping), mode 0755. A setup looked for them and made
/// them on every create, and each step read the new filesystem's metadata from the device,
/// past the host's page cache: 0.7 ms, and up to 5 ms. Made here, that metadata is in the
/// filesystem's cache when the setup looks.
fn make_first_layer(mount: &OwnedFd) -> io::Result<()> {
    use rustix::fs::{AtFlags, Mode};
    let mode = Mode::from_raw_mode(0o755);
    let none = Path::new("");
    for dir in [upper_in(none, 0), work_in(none, 0)] {
        let mut at = PathBuf::new();
        for part in dir.components() {
            at.push(part);
            match rustix::fs::mkdirat(mount, &at, mode) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(err) => return Err(err.into()),
            }
            // Whatever the server's umask.
            rustix::fs::chmodat(mount, &at, mode, AtFlags::empty())?;
        }
    }
    Ok(())
}

/// `image` attached, its filesystem mounted detached and its first layer made
/// ([`make_first_layer`]); `None` (the setup attaches and mounts it then) when that fails.
fn mount_ahead(image: &Path) -> Option<OwnedFd> {
    let mounted = attach_image(image).and_then(Device::mount_detached);
    match mounted.and_then(|mount| make_first_layer(&mount).map(|()| mount)) {
        Ok(mount) => Some(mount),
        Err(err) => {
            tracing::warn!(%err, image = %image.display(), "cannot mount a pool image ahead: its sandbox's setup will");
            None
        }
    }
}

/// How long [`ImagePool::stop`] waits for the devices of the images it unmounted to detach.
const DETACH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The image all others are copied from.
const GOLDEN: &str = "golden.img";
/// A waiting image's name in its own directory, and a sandbox's disk image's name in its
/// directory ([`ImagePool::take_dir`] hands the one over as the other).
pub const IMAGE: &str = "disk.img";

/// How far [`ImagePool`] prepares the images it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preparation {
    /// Copied and written out to the host's disk.
    Written,
    /// Also attached to a loop device, with the filesystem mounted detached
    /// ([`Device::mount_detached`]). A sandbox's setup did both on every create: about 0.5 ms
    /// to attach, and 2–3.5 ms to mount, most of it waiting for the device's reads, which go
    /// to the host's disk past its page cache (direct I/O).
    Mounted,
}

/// Formatted images waiting for sandboxes, refilled in the background.
#[derive(Clone, Debug)]
pub struct ImagePool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    dir: PathBuf,
    target: usize,
    preparation: Preparation,
    state: Mutex<PoolState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct PoolState {
    ready: Vec<Waiting>,
    stopped: bool,
    next: u64,
}

/// An image handed out in its own directory ([`ImagePool::take_dir`]).
#[derive(Debug)]
pub struct TakenDir {
    /// Its filesystem, mounted detached ([`Preparation::Mounted`]), when that worked.
    pub mounted: Option<OwnedFd>,
}

/// An image ready in the pool.
#[derive(Debug)]
struct Waiting {
    /// Its directory, holding the one [`IMAGE`].
    dir: PathBuf,
    /// Its filesystem mounted ahead ([`Preparation::Mounted`]), when that worked.
    mounted: Option<OwnedFd>,
}

impl ImagePool {
    /// A pool of `target` images of `size` bytes in `dir` (emptied first: images left by an
    /// earlier run are formatted again rather than trusted), prepared as far as `preparation`.
    pub fn start(
        dir: PathBuf,
        size: u64,
        target: usize,
        preparation: Preparation,
    ) -> io::Result<Self> {
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        // Each image waits in a directory of its own, spread over the filesystem with the
        // others (see `crate::spread`): the pool's churn slows no one's new files.
        crate::spread::spread_subdirectories(&dir);
        format_image(&dir.join(GOLDEN), size)?;
        let pool = Self {
            inner: Arc::new(PoolInner {
                dir,
                target,
                preparation,
                state: Mutex::default(),
                wake: Condvar::new(),
            }),
        };
        let filler = pool.clone();
        std::thread::Builder::new()
            .name("cove-disk-pool".into())
            .spawn(move || filler.fill())?;
        Ok(pool)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fill(&self) {
        loop {
            let path = {
                let mut state = self.state();
                while !state.stopped && state.ready.len() >= self.inner.target {
                    state = self
                        .inner
                        .wake
                        .wait(state)
                        .unwrap_or_else(|e| e.into_inner());
                }
                if state.stopped {
                    return;
                }
                state.next += 1;
                self.inner.dir.join(format!("image-{}", state.next))
            };
            let made = fs::create_dir(&path)
                .and_then(|()| prepare(&self.inner.dir.join(GOLDEN), &path.join(IMAGE)));
            match made {
                Ok(()) => {
                    let mounted = match self.inner.preparation {
                        Preparation::Written => None,
                        Preparation::Mounted => mount_ahead(&path.join(IMAGE)),
                    };
                    let mut state = self.state();
                    if state.stopped {
                        drop(mounted);
                        let _ = fs::remove_dir_all(&path);
                        return;
                    }
                    state.ready.push(Waiting { dir: path, mounted });
                }
                Err(err) => {
                    let _ = fs::remove_dir_all(&path);
                    tracing::warn!(%err, "cannot prepare a sandbox disk image");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
    }

    /// The image made last, if one is ready; the filler makes another.
    fn pop(&self) -> Option<Waiting> {
        let mut state = self.state();
        let image = state.ready.pop();
        self.inner.wake.notify_one();
        image
    }

    /// Moves a formatted image to `destination` (copying one now if none is ready), with
    /// its filesystem mounted detached when the pool had it so ([`Preparation::Mounted`]).
    pub fn take(&self, destination: &Path) -> io::Result<Option<OwnedFd>> {
        match self.pop() {
            Some(Waiting { dir, mounted }) => {
                // The loop device holds the image's inode, not its name: it moves along.
                let moved = fs::rename(dir.join(IMAGE), destination);
                let _ = fs::remove_dir_all(&dir);
                moved.map(|()| mounted)
            }
            None => copy_sparse(&self.inner.dir.join(GOLDEN), destination).map(|()| None),
        }
    }

    /// Moves a ready image's own directory to `dir` (which must not exist yet; its parent
    /// must), with `mode`: the image is then `dir/disk.img`, its filesystem mounted detached
    /// when the pool had it so. `None`, with nothing made, when no image is ready.
    pub fn take_dir(&self, dir: &Path, mode: u32) -> io::Result<Option<TakenDir>> {
        use std::os::unix::fs::PermissionsExt;
        let Some(Waiting {
            dir: holder,
            mounted,
        }) = self.pop()
        else {
            return Ok(None);
        };
        // The loop device holds the image's inode, not its name: it moves along.
        let moved = fs::rename(&holder, dir)
            .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(mode)));
        match moved {
            Ok(()) => Ok(Some(TakenDir { mounted })),
            Err(err) => {
                drop(mounted);
                let _ = fs::remove_dir_all(&holder);
                Err(err)
            }
        }
    }

    /// Stops refilling and deletes the images still waiting.
    pub fn stop(&self) {
        let ready = {
            let mut state = self.state();
            state.stopped = true;
            self.inner.wake.notify_all();
            std::mem::take(&mut state.ready)
        };
        let mut detaching = Vec::new();
        for Waiting { dir, mounted } in ready {
            let image = dir.join(IMAGE);
            if mounted.is_some()
                && let (Ok(Some(device)), Ok(meta)) =
                    (attached_device(&image), fs::metadata(&image))
            {
                detaching.push((device, meta));
            }
            // Unmounted first, so that its device detaches.
            drop(mounted);
            let _ = fs::remove_dir_all(dir);
        }
        // A stopped pool holds no device: the last unmount detaches it a moment later.
        let deadline = std::time::Instant::now() + DETACH_WAIT;
        while detaching.iter().any(|(device, image)| backs(device, image))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = fs::remove_file(self.inner.dir.join(GOLDEN));
        let _ = fs::remove_dir(&self.inner.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_copies_keep_data_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        let file = fs::File::create(&from).unwrap();
        file.set_len(64 << 20).unwrap();
        FileExt::write_all_at(&file, b"head", 0).unwrap();
        FileExt::write_all_at(&file, b"tail", (64 << 20) - 4).unwrap();
        copy_sparse(&from, &to).unwrap();
        assert_eq!(fs::read(&from).unwrap(), fs::read(&to).unwrap());
        let blocks = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&to).unwrap());
        assert!(
            blocks * 512 < 1 << 20,
            "the copy is not sparse: {blocks} blocks"
        );
    }

    #[test]
    fn a_loop_device_takes_the_block_size_of_a_filesystem_with_4_kib_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (large, small, blank) = (
            dir.path().join("large.img"),
            dir.path().join("small.img"),
            dir.path().join("blank.img"),
        );
        // mke2fs gives 4 KiB blocks from 512 MiB up, 1 KiB below.
        format_image(&large, 4 << 30).unwrap();
        format_image(&small, 16 << 20).unwrap();
        fs::File::create(&blank).unwrap().set_len(16 << 20).unwrap();
        let open = |path: &Path| fs::File::open(path).unwrap();
        assert_eq!(ext4_block_size(&open(&large)), Some(4096));
        assert_eq!(loop_block_size(&open(&large)), 4096);
        assert_eq!(ext4_block_size(&open(&small)), Some(1024));
        assert_eq!(loop_block_size(&open(&small)), 0);
        assert_eq!(ext4_block_size(&open(&blank)), None);
        assert_eq!(loop_block_size(&open(&blank)), 0);
    }

    #[test]
    fn a_formatted_image_holds_only_its_metadata() {
        // Every create copies a sandbox's image and writes the copy out to the host's disk:
        // for the default 4 GiB, blocks kept for growing the filesystem while mounted made
        // that 2.2 MiB.
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        format_image(&image, 4 << 30).unwrap();
        let meta = fs::metadata(&image).unwrap();
        assert_eq!(meta.len(), 4 << 30);
        let used = std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
        assert!(used < 512 << 10, "the image holds {used} bytes");
    }

    /// Waits (up to 30 s) until `ready` says so.
    fn wait_for(what: &str, ready: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ready() {
            assert!(std::time::Instant::now() < deadline, "{what}: timed out");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn a_pool_image_comes_mounted_and_only_with_its_own_device() {
        let dir = tempfile::tempdir().unwrap();
        let pool =
            ImagePool::start(dir.path().join("pool"), 64 << 20, 2, Preparation::Mounted).unwrap();
        wait_for("two images mounted ahead", || {
            let state = pool.state();
            state.ready.len() == 2 && state.ready.iter().all(|w| w.mounted.is_some())
        });
        let (first, second) = (dir.path().join("first.img"), dir.path().join("second.img"));
        let first_mount = pool.take(&first).unwrap().expect("mounted ahead");
        let second_mount = pool.take(&second).unwrap().expect("mounted ahead");
        // Each mount is the ext4 filesystem of the device its own image is attached to,
        // without setuid programs or device files.
        check_mounted(&first, &first_mount).unwrap();
        check_mounted(&second, &second_mount).unwrap();
        assert!(check_mounted(&first, &second_mount).is_err());
        let stat = rustix::fs::fstatfs(&first_mount).unwrap();
        assert_eq!(stat.f_type, 0xEF53, "not ext4");
        let flags = rustix::fs::fstatvfs(&first_mount).unwrap().f_flag;
        assert!(flags.contains(rustix::fs::StatVfsMountFlags::NOSUID));
        assert!(flags.contains(rustix::fs::StatVfsMountFlags::NODEV));
        // The first mount point's layer and work directories are made, as a setup would:
        // root's, mode 0755, empty.
        for dir in [upper_in(Path::new(""), 0), work_in(Path::new(""), 0)] {
            let stat =
                rustix::fs::statat(&first_mount, &dir, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .unwrap();
            assert_eq!(
                rustix::fs::FileType::from_raw_mode(stat.st_mode),
                rustix::fs::FileType::Directory
            );
            assert_eq!(
                (stat.st_uid, stat.st_gid, stat.st_mode & 0o7777),
                (0, 0, 0o755)
            );
            assert_eq!(stat.st_nlink, 2, "{} is not empty", dir.display());
        }
        // Dropped unmoved, a mount goes, and its device detaches.
        let device = attached_device(&first).unwrap().expect("attached");
        drop(first_mount);
        wait_for("the dropped mount's device to detach", || {
            attached_device(&first).unwrap().is_none()
        });
        assert!(!backs(&device, &fs::metadata(&first).unwrap()));
        drop(second_mount);
        // Taken with its directory: the image comes as `disk.img` in a new directory.
        wait_for("the pool to refill", || pool.state().ready.len() == 2);
        let taken = dir.path().join("sandbox");
        let mounted = pool.take_dir(&taken, 0o711).unwrap().unwrap().mounted;
        check_mounted(&taken.join(IMAGE), &mounted.expect("mounted ahead")).unwrap();
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&taken).unwrap().permissions());
        assert_eq!(mode & 0o7777, 0o711);
        // Stopping unmounts the images still waiting (refilled meanwhile) and detaches them.
        wait_for("the pool to refill", || pool.state().ready.len() == 2);
        let waiting: Vec<PathBuf> = pool
            .state()
            .ready
            .iter()
            .map(|w| w.dir.join(IMAGE))
            .collect();
        let devices: Vec<(PathBuf, fs::Metadata)> = waiting
            .iter()
            .map(|image| {
                let device = attached_device(image).unwrap().expect("attached");
                (device, fs::metadata(image).unwrap())
            })
            .collect();
        pool.stop();
        assert!(
            devices.iter().all(|(device, image)| !backs(device, image)),
            "a stopped pool still holds a device"
        );
    }
}
