//! The last steps of PID 1 before the agent runs: hide the kernel interfaces a sandbox has
//! no business with, shrink the capability sets, and keep the agent itself out of reach of
//! `ptrace`. Root inside a sandbox is already an unprivileged host uid; this takes away
//! what root inside its own user namespace could still touch.

use std::{io, path::Path};

use rustix::thread::{CapabilitySet, CapabilitySets};

/// What root in a sandbox keeps: Docker's default set, less `NET_RAW` (ping works through
/// ICMP datagram sockets instead) and `SYS_CHROOT` (chroot is refused by seccomp).
pub fn kept_capabilities() -> CapabilitySet {
    CapabilitySet::CHOWN
        | CapabilitySet::DAC_OVERRIDE
        | CapabilitySet::FSETID
        | CapabilitySet::FOWNER
        | CapabilitySet::MKNOD
        | CapabilitySet::SETGID
        | CapabilitySet::SETUID
        | CapabilitySet::SETFCAP
        | CapabilitySet::SETPCAP
        | CapabilitySet::NET_BIND_SERVICE
        | CapabilitySet::KILL
        | CapabilitySet::AUDIT_WRITE
}

/// Masks `/proc` and `/sys` below `root` (before the switch of root, while mounting works)
/// as `resources/masks.json` says.
pub fn mask_kernel_interfaces(root: &Path) -> io::Result<()> {
    // ICMP echo for everyone, as `ping` needs without CAP_NET_RAW; set before /proc/sys
    // turns read-only. The setting is the sandbox's network namespace's own.
    let _ = std::fs::write(
        root.join("proc/sys/net/ipv4/ping_group_range"),
        "0 2147483647",
    );
    // The caller (the PID 1 stage) takes an io::Error; the typed error travels inside it.
    crate::masks::apply(root).map_err(io::Error::other)
}

/// Shrinks the bounding set (for everything started from now on) and this process's own
/// capabilities to [`kept_capabilities`].
pub fn drop_capabilities() -> io::Result<()> {
    let kept = kept_capabilities();
    for bit in 0..64u32 {
        let capability = CapabilitySet::from_bits_retain(1 << bit);
        if kept.contains(capability) {
            continue;
        }
        match rustix::thread::remove_capability_from_bounding_set(capability) {
            Ok(()) => {}
            // Past the last capability this kernel knows.
            Err(rustix::io::Errno::INVAL) => break,
            Err(err) => return Err(err.into()),
        }
    }
    rustix::thread::clear_ambient_capability_set()?;
    rustix::thread::set_capabilities(
        None,
        CapabilitySets {
            effective: kept,
            permitted: kept,
            inheritable: CapabilitySet::empty(),
        },
    )?;
    Ok(())
}

/// Keeps the agent from being traced or read through `/proc/1/mem` by processes of the
/// sandbox (which lack `CAP_SYS_PTRACE`).
pub fn make_undumpable() -> io::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    Ok(())
}

/// Sets no_new_privs: no program run in the sandbox gains privileges on exec (setuid
/// binaries such as `sudo` stop working).
pub fn forbid_new_privileges() -> io::Result<()> {
    rustix::thread::set_no_new_privs(true)?;
    Ok(())
}

/// Marks every descriptor above stderr close-on-exec, so nothing this process inherited
/// (from whoever started the server) reaches the programs a sandbox runs. Call it first
/// thing, before this process opens anything of its own.
pub fn close_inherited_fds() -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors; it
    // closes nothing, so no descriptor this process still uses becomes invalid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
