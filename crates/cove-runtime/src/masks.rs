//! What a sandbox sees of the kernel's `/proc` and `/sys`: the policy of
//! `resources/masks.json`, applied by the sandbox's PID 1 to its fresh `/proc` and `/sys`
//! before it switches root (mounting is still possible then, and never again after).

use std::{
    fs, io,
    path::{Component, Path, PathBuf},
};

use rustix::mount::{MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags};
use serde::Deserialize;

/// The policy, as data with a reason per entry.
const POLICY: &str = include_str!("../resources/masks.json");

/// The top-level directories of sysfs, recreated empty in the rebuilt `/sys` so that
/// programs probing for them find what they expect of Linux.
const SYS_TOP_LEVEL: [&str; 10] = [
    "block", "bus", "class", "dev", "devices", "firmware", "fs", "kernel", "module", "power",
];

#[derive(Debug, Deserialize)]
struct Policy {
    sys_keep: Vec<Entry>,
    mask: Vec<Entry>,
    read_only: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    path: String,
    #[allow(dead_code)]
    reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("the mask policy is malformed: {0}")]
    Policy(String),
    #[error("cannot {action} {}", path.display())]
    Mount {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn failed(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> MaskError {
    let path = path.to_owned();
    move |source| MaskError::Mount {
        action,
        path,
        source,
    }
}

fn policy() -> Result<Policy, MaskError> {
    let policy: Policy =
        serde_json::from_str(POLICY).map_err(|e| MaskError::Policy(e.to_string()))?;
    let entries = policy
        .sys_keep
        .iter()
        .chain(&policy.mask)
        .chain(&policy.read_only);
    for entry in entries {
        let relative = Path::new(&entry.path);
        if !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(MaskError::Policy(format!(
                "{:?} is not a plain relative path",
                entry.path
            )));
        }
    }
    if let Some(entry) = policy.sys_keep.iter().find(|e| !e.path.starts_with("sys/")) {
        return Err(MaskError::Policy(format!(
            "{:?} is kept but not below sys/",
            entry.path
        )));
    }
    Ok(policy)
}

/// Applies the policy to the `/proc` and `/sys` mounted below `root`.
pub fn apply(root: &Path) -> Result<(), MaskError> {
    let policy = policy()?;
    rebuild_sys(root, &policy.sys_keep)?;
    for entry in &policy.mask {
        for (target, kind) in expand(root, &entry.path) {
            cover(root, &target, kind)?;
        }
    }
    for entry in &policy.read_only {
        for (target, _) in expand(root, &entry.path) {
            make_read_only(&target)?;
        }
    }
    Ok(())
}

/// Covers the sysfs at `root/sys` with an empty read-only tmpfs holding only the `keep`
/// subtrees of it (with whatever is mounted below them).
fn rebuild_sys(root: &Path, keep: &[Entry]) -> Result<(), MaskError> {
    let sys = root.join("sys");
    // Detached copies, taken while the whole sysfs is still there to copy from.
    let mut kept = Vec::new();
    for entry in keep {
        let source = root.join(&entry.path);
        if !source.is_dir() {
            continue;
        }
        let tree = rustix::mount::open_tree(
            rustix::fs::CWD,
            &source,
            OpenTreeFlags::OPEN_TREE_CLONE
                | OpenTreeFlags::OPEN_TREE_CLOEXEC
                | OpenTreeFlags::AT_RECURSIVE,
        )
        .map_err(|e| failed("copy", &source)(e.into()))?;
        kept.push((root.join(&entry.path), tree));
    }
    // Stacked on the sysfs rather than replacing it: an unmount waits for an RCU grace
    // period (milliseconds), and nothing in the sandbox can lift the tmpfs again (no
    // CAP_SYS_ADMIN, umount refused by seccomp).
    let data = c"mode=755,size=64k";
    rustix::mount::mount(
        "tmpfs",
        &sys,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
        Some(data),
    )
    .map_err(|e| failed("mount a tmpfs at", &sys)(e.into()))?;
    for name in SYS_TOP_LEVEL {
        let dir = sys.join(name);
        fs::create_dir(&dir).map_err(failed("create", &dir))?;
    }
    for (target, tree) in kept {
        fs::create_dir_all(&target).map_err(failed("create", &target))?;
        rustix::mount::move_mount(
            &tree,
            c"",
            rustix::fs::CWD,
            &target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|e| failed("bind sysfs at", &target)(e.into()))?;
    }
    rustix::mount::mount_remount(
        &sys,
        MountFlags::BIND
            | MountFlags::RDONLY
            | MountFlags::NOSUID
            | MountFlags::NODEV
            | MountFlags::NOEXEC,
        "",
    )
    .map_err(|e| failed("make read-only", &sys)(e.into()))?;
    Ok(())
}

/// Hides `target`, of `kind`: a directory under an empty read-only tmpfs, anything else
/// under `/dev/null` (reads find it empty).
fn cover(root: &Path, target: &Path, kind: fs::FileType) -> Result<(), MaskError> {
    if kind.is_dir() {
        crate::mounts::mount_tmpfs_read_only(target).map_err(failed("cover", target))
    } else {
        rustix::mount::mount_bind(root.join("dev/null"), target)
            .map_err(|e| failed("cover", target)(e.into()))
    }
}

/// Makes `target` read-only where it is.
fn make_read_only(target: &Path) -> Result<(), MaskError> {
    let result = rustix::mount::mount_bind(target, target)
        .and_then(|()| rustix::mount::mount_change(target, MountPropagationFlags::PRIVATE))
        .and_then(|()| {
            rustix::mount::mount_remount(
                target,
                MountFlags::BIND
                    | MountFlags::RDONLY
                    | MountFlags::NOSUID
                    | MountFlags::NODEV
                    | MountFlags::NOEXEC,
                "",
            )
        });
    result.map_err(|e| failed("make read-only", target)(e.into()))
}

/// The existing paths below `root` that `pattern` names, each with its kind (looked up once:
/// each lookup in a fresh procfs makes its entry, a tenth of PID 1's mask work); a `*` in
/// one of its components stands for any text. Symbolic links are left out: covering one
/// would cover where it points.
fn expand(root: &Path, pattern: &str) -> Vec<(PathBuf, fs::FileType)> {
    let mut found = vec![root.to_path_buf()];
    for component in pattern.split('/') {
        let mut next = Vec::new();
        for dir in found {
            let Some((prefix, suffix)) = component.split_once('*') else {
                next.push(dir.join(component));
                continue;
            };
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|name| {
                    name.len() >= prefix.len() + suffix.len()
                        && name.starts_with(prefix)
                        && name.ends_with(suffix)
                })
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|name| dir.join(name)));
        }
        found = next;
    }
    found
        .into_iter()
        .filter_map(|path| {
            let kind = path.symlink_metadata().ok()?.file_type();
            (!kind.is_symlink()).then_some((path, kind))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_parses_and_every_entry_has_a_reason() {
        let policy = policy().unwrap();
        for entry in policy
            .sys_keep
            .iter()
            .chain(&policy.mask)
            .chain(&policy.read_only)
        {
            assert!(entry.reason.len() > 10, "{}: give a reason", entry.path);
        }
    }

    fn hidden(policy: &Policy, path: &str) -> bool {
        let masked = |p: &str| {
            policy.mask.iter().any(|m| {
                let pattern: Vec<&str> = m.path.split('/').collect();
                let path: Vec<&str> = p.split('/').collect();
                path.len() >= pattern.len()
                    && pattern
                        .iter()
                        .zip(&path)
                        .all(|(pat, name)| match pat.split_once('*') {
                            Some((prefix, suffix)) => {
                                name.starts_with(prefix) && name.ends_with(suffix)
                            }
                            None => pat == name,
                        })
            })
        };
        let kept = |p: &str| {
            policy
                .sys_keep
                .iter()
                .any(|k| p == k.path || p.starts_with(&format!("{}/", k.path)))
        };
        masked(path) || (path.starts_with("sys/") && !kept(path))
    }

    /// Docker's masked and read-only paths (moby's daemon/pkg/oci/defaults.go, 2026-08): each
    /// is hidden here too, or at least read-only.
    #[test]
    fn at_least_what_docker_masks() {
        let policy = policy().unwrap();
        for path in [
            "proc/acpi",
            "proc/asound",
            "proc/interrupts",
            "proc/kcore",
            "proc/keys",
            "proc/latency_stats",
            "proc/sched_debug",
            "proc/scsi",
            "proc/timer_list",
            "proc/timer_stats",
            "sys/devices/virtual/powercap",
            "sys/firmware",
            "sys/devices/system/cpu/cpu0/thermal_throttle",
        ] {
            assert!(hidden(&policy, path), "Docker masks {path}");
        }
        for path in [
            "proc/bus",
            "proc/fs",
            "proc/irq",
            "proc/sys",
            "proc/sysrq-trigger",
        ] {
            let read_only = policy.read_only.iter().any(|r| r.path == path);
            assert!(
                hidden(&policy, path) || read_only,
                "Docker makes {path} read-only"
            );
        }
    }

    #[test]
    fn what_tells_about_the_host_is_hidden() {
        let policy = policy().unwrap();
        for path in [
            "proc/config.gz",
            "proc/cmdline",
            "proc/modules",
            "proc/slabinfo",
            "proc/vmallocinfo",
            "proc/buddyinfo",
            "proc/diskstats",
            "proc/partitions",
            "sys/kernel/btf/vmlinux",
            "sys/kernel/vmcoreinfo",
            "sys/kernel/boot_params",
            "sys/kernel/notes",
            "sys/kernel/slab",
            "sys/kernel/mm/ksm",
            "sys/module/ext4",
            "sys/block/loop0",
            "sys/class/block/vda",
            "sys/class/bdi",
            "sys/dev/block",
            "sys/devices/virtual/block/loop0/loop/backing_file",
            "sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda",
            "sys/devices/virtual/dmi/id",
            "sys/fs/ext4/loop0",
            "sys/bus/pci/devices",
            "sys/devices/system/cpu/vulnerabilities",
        ] {
            assert!(hidden(&policy, path), "{path} is visible");
        }
        // And what programs read stays.
        for path in [
            "proc/cpuinfo",
            "proc/meminfo",
            "proc/stat",
            "proc/loadavg",
            "proc/uptime",
            "proc/self/status",
            "sys/devices/system/cpu/online",
            "sys/devices/system/cpu/cpu0/topology/core_id",
            "sys/kernel/mm/transparent_hugepage/enabled",
            "sys/class/net/lo",
            "sys/fs/cgroup",
        ] {
            assert!(!hidden(&policy, path), "{path} is hidden");
        }
    }

    #[test]
    fn patterns_expand_to_existing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let cpu = dir.path().join("sys/devices/system/cpu");
        for name in ["cpu0/thermal_throttle", "cpu1", "cpu12/thermal_throttle"] {
            fs::create_dir_all(cpu.join(name)).unwrap();
        }
        fs::create_dir_all(cpu.join("cpuidle/thermal_throttle_not")).unwrap();
        fs::write(dir.path().join("kcore"), "").unwrap();
        std::os::unix::fs::symlink("kcore", dir.path().join("link")).unwrap();

        let paths = |pattern| -> Vec<PathBuf> {
            expand(dir.path(), pattern)
                .into_iter()
                .map(|(path, _)| path)
                .collect()
        };
        assert_eq!(
            paths("sys/devices/system/cpu/cpu*/thermal_throttle"),
            [
                cpu.join("cpu0/thermal_throttle"),
                cpu.join("cpu12/thermal_throttle")
            ]
        );
        let kcore = expand(dir.path(), "kcore");
        assert_eq!(kcore.len(), 1);
        assert_eq!(kcore[0].0, dir.path().join("kcore"));
        assert!(kcore[0].1.is_file());
        assert!(
            expand(dir.path(), "sys/devices/system/cpu/cpu0/thermal_throttle")[0]
                .1
                .is_dir()
        );
        assert!(expand(dir.path(), "missing").is_empty());
        assert!(expand(dir.path(), "link").is_empty());
        assert!(expand(dir.path(), "missing/*/x").is_empty());
    }
}
