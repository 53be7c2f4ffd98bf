//! The layer Cove puts on top of every built template (and of each build step's sandbox):
//! what its agent and E2B's clients expect of any image, without writing it into the user's
//! layers. The account `user` (uid 1000, home `/home/user`; passwordless sudo where the image
//! has sudo), the sandbox's host name, `/etc/hosts`, name servers that work from inside
//! a sandbox, and a login profile that starts no `id`, as the `base` template has them.
//!
//! The account files are the image's own with Cove's lines added, so the layer is computed
//! from the layers below it and named after its content: the same stack gives the same layer.

use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::{
    layer_tree::{LayerTree, TreeError},
    stack::{Stack, StackError},
};

/// Bumped whenever what this layer holds changes, so an old one is not reused.
const RECIPE: &str = "cove-accounts-v2";
/// The user E2B's clients run as by default, and its ids.
pub const USER: &str = "user";
pub const USER_ID: u32 = 1000;
pub const USER_HOME: &str = "/home/user";
/// Directories every sandbox needs, with the modes they get where the image lacks them.
const SANDBOX_DIRS: [(&str, u32); 6] = [
    ("/dev", 0o755),
    ("/proc", 0o555),
    ("/sys", 0o555),
    ("/tmp", 0o1777),
    ("/run", 0o755),
    ("/root", 0o700),
];
/// Where Debian-like images keep the certificates TLS clients trust.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// The profile login shells read.
const PROFILE: &str = "/etc/profile";
/// The sudo group's id where the image has none.
const SUDO_GID: u32 = 27;

/// One file of the layer: path, content, owner, mode.
#[derive(Clone, Debug, PartialEq, Eq)]
struct File {
    path: &'static str,
    content: Vec<u8>,
    owner: (u32, u32),
    mode: u32,
}

/// What the accounts layer of a stack holds, before it is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accounts {
    files: Vec<File>,
    /// `/home/user` is missing below and must be made.
    make_home: bool,
    /// Mount points and directories a sandbox needs that the image lacks (many images
    /// leave `/proc`, `/sys` and `/dev` to the container runtime), with their modes.
    dirs: Vec<(&'static str, u32)>,
    sudo: bool,
}

impl Accounts {
    /// What goes on top of `below`, with the name servers of `resolv_conf`, trusting the
    /// PEM certificates `extra_ca` besides the image's own (none when empty).
    pub fn for_stack(below: &Stack, resolv_conf: &str, extra_ca: &str) -> Result<Self, StackError> {
        let read = |path: &str| -> Result<Option<String>, StackError> {
            Ok(below
                .read_file(Path::new(path))?
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
        };
        let attributes = |path: &str, default: (u32, u32, u32)| -> Result<_, StackError> {
            Ok(match below.lookup(&below.resolve(Path::new(path))?.path)? {
                Some(entry) if entry.meta.is_file() => {
                    use std::os::unix::fs::MetadataExt;
                    (
                        (entry.meta.uid(), entry.meta.gid()),
                        entry.meta.mode() & 0o7777,
                    )
                }
                _ => ((default.0, default.1), default.2),
            })
        };
        let exists =
            |path: &str| -> Result<bool, StackError> { Ok(below.resolve(Path::new(path))?.exists) };
        let sudo = exists("/usr/bin/sudo")? || exists("/bin/sudo")?;
        let shell = if exists("/bin/bash")? {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        let mut files = Vec::new();

        let passwd = read("/etc/passwd")?.unwrap_or_default();
        let (owner, mode) = attributes("/etc/passwd", (0, 0, 0o644))?;
        files.push(File {
            path: "/etc/passwd",
            content: with_line(
                &passwd,
                USER,
                &format!("{USER}:x:{USER_ID}:{USER_ID}::{USER_HOME}:{shell}"),
            )
            .into_bytes(),
            owner,
            mode,
        });
        let mut group = read("/etc/group")?.unwrap_or_default();
        group = with_line(&group, USER, &format!("{USER}:x:{USER_ID}:"));
        if sudo {
            group = with_member(&group, "sudo", USER, &format!("sudo:x:{SUDO_GID}:{USER}"));
        }
        let (owner, mode) = attributes("/etc/group", (0, 0, 0o644))?;
        files.push(File {
            path: "/etc/group",
            content: group.into_bytes(),
            owner,
            mode,
        });
        // The shadow files only where the image keeps them (tools that read them expect them).
        if let Some(shadow) = read("/etc/shadow")? {
            let (owner, mode) = attributes("/etc/shadow", (0, 0, 0o640))?;
            files.push(File {
                path: "/etc/shadow",
                content: with_line(&shadow, USER, &format!("{USER}:*:19000:0:99999:7:::"))
                    .into_bytes(),
                owner,
                mode,
            });
        }
        if let Some(gshadow) = read("/etc/gshadow")? {
            let (owner, mode) = attributes("/etc/gshadow", (0, 0, 0o640))?;
            let mut gshadow = with_line(&gshadow, USER, &format!("{USER}:*::"));
            if sudo {
                gshadow = with_member_at(&gshadow, "sudo", USER, 3, &format!("sudo:*::{USER}"));
            }
            files.push(File {
                path: "/etc/gshadow",
                content: gshadow.into_bytes(),
                owner,
                mode,
            });
        }
        if sudo {
            files.push(File {
                path: "/etc/sudoers.d/cove-user",
                content: format!("{USER} ALL=(ALL:ALL) NOPASSWD: ALL\n").into_bytes(),
                owner: (0, 0),
                mode: 0o440,
            });
        }
        files.push(File {
            path: "/etc/hostname",
            content: b"sandbox\n".to_vec(),
            owner: (0, 0),
            mode: 0o644,
        });
        files.push(File {
            path: "/etc/hosts",
            content: b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tsandbox\n"
                .to_vec(),
            owner: (0, 0),
            mode: 0o644,
        });
        files.push(File {
            path: "/etc/resolv.conf",
            content: resolv_conf.as_bytes().to_vec(),
            owner: (0, 0),
            mode: 0o644,
        });
        if !extra_ca.is_empty()
            && let Some(bundle) = read(CA_BUNDLE)?
        {
            let (owner, mode) = attributes(CA_BUNDLE, (0, 0, 0o644))?;
            let mut content = bundle;
            if !content.is_empty() && !content.ends_with('\n') {
                content.push('\n');
            }
            content.push_str(extra_ca);
            files.push(File {
                path: CA_BUNDLE,
                content: content.into_bytes(),
                owner,
                mode,
            });
        }
        // The login profile every command of the SDKs reads, spared its `id -u` as `base`'s
        // is (`cove_runtime::template::profile_sparing_id`, which keeps its `PATH`). Only a
        // plain file there, reached by no link, is replaced.
        if below.resolve(Path::new(PROFILE))?.path == Path::new(PROFILE)
            && let Some(profile) = read(PROFILE)?
            && let Some(spared) = cove_runtime::template::profile_sparing_id(&profile)
        {
            let (owner, mode) = attributes(PROFILE, (0, 0, 0o644))?;
            files.push(File {
                path: PROFILE,
                content: spared.into_bytes(),
                owner,
                mode,
            });
        }
        let make_home = !exists(USER_HOME)?;
        let mut dirs = Vec::new();
        for (dir, mode) in SANDBOX_DIRS {
            if !exists(dir)? {
                dirs.push((dir, mode));
            }
        }
        Ok(Self {
            files,
            make_home,
            dirs,
            sudo,
        })
    }

    /// The layer's name: a digest of everything in it.
    pub fn id(&self) -> cove_image::Digest {
        let mut hash = Sha256::new();
        hash.update(RECIPE.as_bytes());
        for file in &self.files {
            hash.update(
                format!(
                    "\0{}\0{}:{}:{:o}\0{}\0",
                    file.path,
                    file.owner.0,
                    file.owner.1,
                    file.mode,
                    file.content.len()
                )
                .as_bytes(),
            );
            hash.update(&file.content);
        }
        hash.update(if self.make_home { b"\0home" } else { b"\0----" });
        for (dir, mode) in &self.dirs {
            hash.update(format!("\0dir {dir} {mode:o}").as_bytes());
        }
        cove_image::Digest::from_hex(&hex::encode(hash.finalize())).expect("a sha256 is a digest")
    }

    /// Writes the layer into `tree`.
    pub fn write(&self, tree: &LayerTree<'_>) -> Result<(), TreeError> {
        for file in &self.files {
            let path = Path::new(file.path);
            if let Some(parent) = path.parent() {
                tree.ensure_dir(parent, (0, 0), 0o755)?;
            }
            tree.write_file(path, &file.content, file.owner, file.mode)?;
        }
        if self.make_home {
            tree.ensure_dir(Path::new(USER_HOME), (USER_ID, USER_ID), 0o755)?;
        }
        for (dir, mode) in &self.dirs {
            tree.ensure_dir(Path::new(dir), (0, 0), *mode)?;
        }
        Ok(())
    }

    /// Whether `user` may use sudo in templates with this layer.
    pub fn has_sudo(&self) -> bool {
        self.sudo
    }
}

/// The uid and gid `spec` (`name`, `uid`, `name:group`, `uid:gid`) names in the stack's
/// account files (with Cove's `user`).
pub fn resolve_owner(below: &Stack, spec: &str) -> Result<Option<(u32, u32)>, StackError> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let passwd = below
        .read_file(Path::new("/etc/passwd"))?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let groups = below
        .read_file(Path::new("/etc/group"))?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let account = |name: &str| -> Option<(u32, u32)> {
        if let Ok(uid) = name.parse::<u32>() {
            return Some((uid, uid));
        }
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&name) && f.len() > 3)
            .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .or_else(|| (name == USER).then_some((USER_ID, USER_ID)))
    };
    let Some((uid, primary)) = account(user) else {
        return Ok(None);
    };
    let gid = match group {
        None => primary,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match groups
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.first() == Some(&group) && f.len() > 2)
                .and_then(|f| f[2].parse().ok())
                .or_else(|| (group == USER).then_some(USER_ID))
            {
                Some(gid) => gid,
                None => return Ok(None),
            },
        },
    };
    Ok(Some((uid, gid)))
}

/// `text` (lines of `name:…`) with `line` added when no line is `name`'s.
fn with_line(text: &str, name: &str, line: &str) -> String {
    let prefix = format!("{name}:");
    let mut out = text.to_owned();
    if !text.lines().any(|l| l.starts_with(&prefix)) {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `/etc/group` with `member` in group `group` (added as `line` when missing).
fn with_member(text: &str, group: &str, member: &str, line: &str) -> String {
    with_member_at(text, group, member, 3, line)
}

/// Lines of `group:…` with `member` in the comma list of field `field`.
fn with_member_at(text: &str, group: &str, member: &str, field: usize, line: &str) -> String {
    let prefix = format!("{group}:");
    if !text.lines().any(|l| l.starts_with(&prefix)) {
        return with_line(text, group, line);
    }
    let mut out = String::with_capacity(text.len() + member.len() + 1);
    for l in text.lines() {
        if l.starts_with(&prefix) {
            let mut fields: Vec<String> = l.split(':').map(str::to_owned).collect();
            while fields.len() <= field {
                fields.push(String::new());
            }
            let members: Vec<&str> = fields[field].split(',').filter(|m| !m.is_empty()).collect();
            if !members.contains(&member) {
                let mut members = members.join(",");
                if !members.is_empty() {
                    members.push(',');
                }
                members.push_str(member);
                fields[field] = members;
            }
            out.push_str(&fields.join(":"));
        } else {
            out.push_str(l);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt};

    use super::*;

    #[test]
    fn the_users_lines_are_added_once_and_the_rest_kept() {
        let passwd = "root:x:0:0::/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh";
        let added = with_line(passwd, USER, "user:x:1000:1000::/home/user:/bin/sh");
        assert!(
            added.starts_with(passwd) && added.ends_with("user:x:1000:1000::/home/user:/bin/sh\n")
        );
        assert_eq!(with_line(&added, USER, "again"), added);
        let group = "root:x:0:\nsudo:x:27:alice\n";
        assert_eq!(
            with_member(group, "sudo", USER, "-"),
            "root:x:0:\nsudo:x:27:alice,user\n"
        );
        assert_eq!(
            with_member("root:x:0:\nsudo:x:27:\n", "sudo", USER, "-"),
            "root:x:0:\nsudo:x:27:user\n"
        );
        assert_eq!(
            with_member("root:x:0:\n", "sudo", USER, "sudo:x:27:user"),
            "root:x:0:\nsudo:x:27:user\n"
        );
    }

    #[test]
    fn an_images_login_profile_starts_no_id_and_other_profiles_stay() {
        const DEBIAN: &str = "if [ \"$(id -u)\" -eq 0 ]; then\n  PATH=\"/usr/local/sbin:/usr/sbin:/usr/bin\"\nelse\n  PATH=\"/usr/local/bin:/usr/bin\"\nfi\nexport PATH\n";
        let tmp = tempfile::tempdir().unwrap();
        let layer_of = |name: &str, profile: Option<&str>, linked: bool| {
            let image = tmp.path().join(name);
            fs::create_dir_all(image.join("etc")).unwrap();
            if let Some(profile) = profile {
                if linked {
                    fs::write(image.join("etc/profile.real"), profile).unwrap();
                    std::os::unix::fs::symlink("profile.real", image.join("etc/profile")).unwrap();
                } else {
                    fs::write(image.join("etc/profile"), profile).unwrap();
                    fs::set_permissions(
                        image.join("etc/profile"),
                        std::os::unix::fs::PermissionsExt::from_mode(0o600),
                    )
                    .unwrap();
                }
            }
            let stack = Stack::new(vec![image]);
            let accounts = Accounts::for_stack(&stack, "nameserver 10.0.2.3\n", "").unwrap();
            let layer = tmp.path().join(format!("{name}-layer"));
            fs::create_dir(&layer).unwrap();
            accounts
                .write(&LayerTree::new(layer.clone(), &stack))
                .unwrap();
            layer.join("etc/profile")
        };
        let spared = layer_of("debian", Some(DEBIAN), false);
        assert_eq!(
            fs::read_to_string(&spared).unwrap(),
            cove_runtime::template::profile_sparing_id(DEBIAN).unwrap()
        );
        assert_eq!(fs::metadata(&spared).unwrap().mode() & 0o777, 0o600);
        // A profile that starts no `id`, none at all, or one reached by a link: nothing.
        assert!(!layer_of("alpine", Some("export PATH=/usr/bin:/bin\n"), false).exists());
        assert!(!layer_of("bare", None, false).exists());
        assert!(!layer_of("linked", Some(DEBIAN), true).exists());
    }

    #[test]
    fn an_image_gets_the_user_its_home_and_sudo() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        fs::create_dir_all(image.join("etc")).unwrap();
        fs::create_dir_all(image.join("usr/bin")).unwrap();
        fs::create_dir_all(image.join("home")).unwrap();
        fs::write(image.join("usr/bin/sudo"), "").unwrap();
        fs::write(image.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(
            image.join("etc/group"),
            "root:x:0:\nsudo:x:27:\nshadow:x:42:\n",
        )
        .unwrap();
        fs::write(image.join("etc/shadow"), "root:*:1::::::\n").unwrap();
        std::os::unix::fs::lchown(image.join("etc/shadow"), Some(0), Some(42)).unwrap();
        fs::set_permissions(
            image.join("etc/shadow"),
            std::os::unix::fs::PermissionsExt::from_mode(0o640),
        )
        .unwrap();
        let stack = Stack::new(vec![image.clone()]);
        let accounts = Accounts::for_stack(&stack, "nameserver 10.0.2.3\n", "").unwrap();
        assert!(accounts.has_sudo());
        let layer = tmp.path().join("layer");
        fs::create_dir(&layer).unwrap();
        accounts
            .write(&LayerTree::new(layer.clone(), &stack))
            .unwrap();

        let top = Stack::new(vec![layer.clone(), image]);
        let passwd =
            String::from_utf8(top.read_file(Path::new("/etc/passwd")).unwrap().unwrap()).unwrap();
        assert!(
            passwd.contains("user:x:1000:1000::/home/user:/bin/sh"),
            "{passwd}"
        );
        let shadow = fs::metadata(layer.join("etc/shadow")).unwrap();
        assert_eq!((shadow.gid(), shadow.mode() & 0o777), (42, 0o640));
        let home = fs::metadata(layer.join("home/user")).unwrap();
        assert_eq!((home.uid(), home.gid()), (1000, 1000));
        assert!(
            fs::read_to_string(layer.join("etc/sudoers.d/cove-user"))
                .unwrap()
                .contains("NOPASSWD")
        );
        assert_eq!(resolve_owner(&top, "user").unwrap(), Some((1000, 1000)));
        assert_eq!(resolve_owner(&top, "root:shadow").unwrap(), Some((0, 42)));
        assert_eq!(resolve_owner(&top, "12:34").unwrap(), Some((12, 34)));
        assert_eq!(resolve_owner(&top, "nobody-here").unwrap(), None);
        // The same stack gives the same layer.
        assert_eq!(
            Accounts::for_stack(&stack, "nameserver 10.0.2.3\n", "")
                .unwrap()
                .id(),
            accounts.id()
        );
        assert_ne!(
            Accounts::for_stack(&stack, "nameserver 1.1.1.1\n", "")
                .unwrap()
                .id(),
            accounts.id()
        );
    }
}
