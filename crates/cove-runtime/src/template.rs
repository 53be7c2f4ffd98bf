//! Templates: ordered read-only layers a sandbox's filesystem is built from, and the `base`
//! template made from the host's own system directories.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// One read-only directory tree, shown at `at` inside the sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub path: PathBuf,
    pub at: PathBuf,
}

/// A sandbox filesystem recipe: layers listed top first, and for a memory snapshot the
/// image its sandboxes are restored from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    pub layers: Vec<Layer>,
    /// A checkpoint of a sandbox's processes and memory taken on exactly these layers (a
    /// directory): a sandbox made from it starts with them running instead of a fresh
    /// agent. Only a backend that can restore one starts it (gVisor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<PathBuf>,
}

impl Template {
    /// The distinct mount points of the layers, parents before children ("/" first).
    pub fn mount_points(&self) -> Vec<PathBuf> {
        let mut points: Vec<PathBuf> = Vec::new();
        for layer in &self.layers {
            if !points.contains(&layer.at) {
                points.push(layer.at.clone());
            }
        }
        points.sort_by_key(|p| p.components().count());
        points
    }

    /// Every directory a sandbox made from it reads: its layers and its memory image.
    pub fn paths(&self) -> impl Iterator<Item = &Path> + '_ {
        self.layers
            .iter()
            .map(|l| l.path.as_path())
            .chain(self.memory.as_deref())
    }

    /// The layers shown at `at`, top first.
    pub fn layers_at<'a>(&'a self, at: &'a Path) -> impl Iterator<Item = &'a Layer> + 'a {
        self.layers.iter().filter(move |l| l.at == at)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("cannot build the base template in {path}")]
    Build {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the host has no {0}: the base template needs it (see the README's setup)")]
    MissingHostDir(PathBuf),
}

/// Bumped whenever the base layer's recipe changes, so an old build is not reused.
const BASE_VERSION: &str = "v4";

/// Host root entries a sandbox sees: the system directories (or their merged-usr links).
const HOST_SYSTEM_DIRS: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// Host `/etc` entries never copied into a template: secrets of the host, and files the
/// template writes itself.
const ETC_EXCLUDED: [&str; 23] = [
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "passwd",
    "passwd-",
    "group",
    "group-",
    "sudoers",
    "sudoers.d",
    "subuid",
    "subuid-",
    "subgid",
    "subgid-",
    "machine-id",
    "hostname",
    "hosts",
    "mtab",
    "ssh",
    "ssl/private",
    "security/opasswd",
    ".pwd.lock",
    "resolv.conf",
];

/// The `base` template: the host's `/usr` (and merged-usr links) read-only, a filtered copy
/// of its `/etc` with Cove's own accounts, and an empty home for `user`. Built once under
/// `dir`; later calls reuse it.
pub fn base(dir: &Path) -> Result<Template, TemplateError> {
    base_from_host(dir, Path::new("/"))
}

fn base_from_host(dir: &Path, host: &Path) -> Result<Template, TemplateError> {
    let built = dir.join(BASE_VERSION);
    let build_err = |source| TemplateError::Build {
        path: built.clone(),
        source,
    };
    if !built.join("complete").exists() {
        let staging = dir.join(format!("{BASE_VERSION}.building-{}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        build_base_layers(&staging, host).map_err(build_err)?;
        fs::File::create(staging.join("complete")).map_err(build_err)?;
        // Another server may have finished first; either build is as good.
        if let Err(err) = fs::rename(&staging, &built) {
            let _ = fs::remove_dir_all(&staging);
            if !built.join("complete").exists() {
                return Err(build_err(err));
            }
        }
    }
    let mut layers = vec![
        Layer {
            path: built.join("root"),
            at: PathBuf::from("/"),
        },
        Layer {
            path: built.join("usr"),
            at: PathBuf::from("/usr"),
        },
    ];
    for name in HOST_SYSTEM_DIRS {
        let host_dir = host.join(name);
        let Ok(meta) = fs::symlink_metadata(&host_dir) else {
            if name == "usr" {
                return Err(TemplateError::MissingHostDir(host_dir));
            }
            continue;
        };
        // Merged-usr links are copied into the root layer; real directories are layers.
        if meta.is_dir() {
            layers.push(Layer {
                path: host_dir,
                at: PathBuf::from("/").join(name),
            });
        }
    }
    Ok(Template {
        memory: None,
        name: "base".to_owned(),
        layers,
    })
}

fn build_base_layers(staging: &Path, host: &Path) -> io::Result<()> {
    let root = staging.join("root");
    let mkdir = |path: &Path, mode: u32| -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
    };
    mkdir(&root, 0o755)?;
    for (name, mode) in [
        ("usr", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("run", 0o755),
        ("mnt", 0o755),
        ("opt", 0o755),
        ("srv", 0o755),
        ("media", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("var/tmp", 0o1777),
        ("var/log", 0o755),
        ("var/cache", 0o755),
        ("var/lib", 0o755),
        ("var/spool", 0o755),
        ("home", 0o755),
        ("home/user", 0o755),
    ] {
        mkdir(&root.join(name), mode)?;
    }
    std::os::unix::fs::chown(root.join("home/user"), Some(1000), Some(1000))?;
    for name in HOST_SYSTEM_DIRS {
        if let Ok(target) = fs::read_link(host.join(name)) {
            std::os::unix::fs::symlink(target, root.join(name))?;
        }
    }
    copy_tree(
        &host.join("etc"),
        &root.join("etc"),
        &ETC_EXCLUDED.map(Path::new),
    )?;
    write_accounts(&root.join("etc"), &host.join("etc"))?;
    spare_id_in_profile(&root.join("etc/profile"))?;

    // Conveniences E2B templates have: `python`/`pip` commands, and pip allowed to install
    // for the sandbox user despite Debian's externally-managed marker (PEP 668).
    let usr = staging.join("usr");
    mkdir(&usr.join("local/bin"), 0o755)?;
    for (name, target) in [("python", "python3"), ("pip", "pip3")] {
        if !host.join("usr/bin").join(name).exists() && host.join("usr/bin").join(target).exists() {
            std::os::unix::fs::symlink(
                Path::new("/usr/bin").join(target),
                usr.join("local/bin").join(name),
            )?;
        }
    }
    let mut pip_conf = fs::read_to_string(host.join("etc/pip.conf")).unwrap_or_default();
    if !pip_conf.contains("break-system-packages") {
        if !pip_conf.contains("[global]") {
            pip_conf.push_str("\n[global]\n");
        }
        pip_conf = pip_conf.replacen("[global]", "[global]\nbreak-system-packages = true", 1);
    }
    fs::write(root.join("etc/pip.conf"), pip_conf)?;
    Ok(())
}

/// Debian's `/etc/profile` runs `id -u` to choose `PATH` (and the prompt), and every command
/// the SDKs run is a login shell (`bash -l -c`) that reads it: a fork and an exec of `id`,
/// about 1.5 ms in a sandbox, before each command. The base template's copy reads the
/// effective uid from `/proc/self/status` with shell builtins instead (no process, in bash
/// and dash alike, and nothing the environment can set), and asks `id` only when that
/// cannot be read. A profile without the line is left as it is.
fn spare_id_in_profile(profile: &Path) -> io::Result<()> {
    let text = match fs::read_to_string(profile) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    match profile_sparing_id(&text) {
        Some(spared) => fs::write(profile, spared),
        None => Ok(()),
    }
}

/// A profile's text that reads the effective uid as [`spare_id_in_profile`] says, in place of
/// each `"$(id -u)"`; `None` when it asks for none (then it stays as it is). Built templates
/// get it too, in the layer Cove puts over an image.
pub fn profile_sparing_id(text: &str) -> Option<String> {
    const ASKED: &str = "\"$(id -u)\"";
    let first = text.find(ASKED)?;
    let line_start = text[..first].rfind('\n').map_or(0, |i| i + 1);
    Some(format!(
        "{}{PROFILE_EUID}{}\nunset __cove_euid\n",
        &text[..line_start],
        text[line_start..].replace(ASKED, "\"${__cove_euid:-$(id -u)}\"")
    ))
}

/// What [`profile_sparing_id`] puts before the profile's first `id -u`.
const PROFILE_EUID: &str = "\
# Cove: the effective uid without starting `id` (every command of the SDKs reads this file).
__cove_euid=
while read -r __cove_key __cove_real __cove_effective __cove_rest; do
  if [ \"$__cove_key\" = \"Uid:\" ]; then
    __cove_euid=$__cove_effective
    break
  fi
done 2>/dev/null </proc/self/status
unset __cove_key __cove_real __cove_effective __cove_rest
";

/// Writes the template's own account database: the host's system accounts (uid < 1000),
/// and `user` (uid 1000, home /home/user) with passwordless sudo. No host password hash
/// is ever copied.
fn write_accounts(etc: &Path, host_etc: &Path) -> io::Result<()> {
    let host_passwd = fs::read_to_string(host_etc.join("passwd")).unwrap_or_default();
    let host_group = fs::read_to_string(host_etc.join("group")).unwrap_or_default();
    let system = |line: &&str, id_field: usize| {
        line.split(':')
            .nth(id_field)
            .and_then(|id| id.parse::<u32>().ok())
            .is_some_and(|id| id < 1000 || id == 65534)
    };
    let mut passwd: Vec<String> = host_passwd
        .lines()
        .filter(|l| system(l, 2) && !l.starts_with("root:"))
        .map(str::to_owned)
        .collect();
    passwd.insert(0, "root:x:0:0:root:/root:/bin/bash".to_owned());
    passwd.push("user:x:1000:1000::/home/user:/bin/bash".to_owned());

    let mut group: Vec<String> = host_group
        .lines()
        .filter(|l| system(l, 2))
        .map(|line| {
            // Host members are host accounts; only `user` joins the sudo group, as on E2B.
            let fields: Vec<&str> = line.splitn(4, ':').collect();
            let members = if fields[0] == "sudo" { "user" } else { "" };
            format!("{}:x:{}:{members}", fields[0], fields.get(2).unwrap_or(&""))
        })
        .collect();
    if !group.iter().any(|g| g.starts_with("sudo:")) {
        group.push("sudo:x:27:user".to_owned());
    }
    group.push("user:x:1000:".to_owned());

    let names = |lines: &[String]| {
        lines
            .iter()
            .filter_map(|l| l.split(':').next().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let shadow: String = names(&passwd)
        .iter()
        .map(|n| format!("{n}:*:19000:0:99999:7:::\n"))
        .collect();
    let gshadow: String = names(&group).iter().map(|n| format!("{n}:*::\n")).collect();

    let write = |name: &str, content: String, mode: u32| -> io::Result<()> {
        let path = etc.join(name);
        fs::write(&path, content)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
    };
    write("passwd", passwd.join("\n") + "\n", 0o644)?;
    write("group", group.join("\n") + "\n", 0o644)?;
    write("shadow", shadow, 0o640)?;
    write("gshadow", gshadow, 0o640)?;
    write(
        "sudoers",
        "Defaults env_reset\nDefaults secure_path=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\n\
         root ALL=(ALL:ALL) ALL\n%sudo ALL=(ALL:ALL) NOPASSWD: ALL\n@includedir /etc/sudoers.d\n"
            .to_owned(),
        0o440,
    )?;
    fs::DirBuilder::new()
        .mode(0o755)
        .create(etc.join("sudoers.d"))?;
    write("hostname", "sandbox\n".to_owned(), 0o644)?;
    write(
        "hosts",
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tsandbox\n"
            .to_owned(),
        0o644,
    )?;
    write("machine-id", String::new(), 0o444)?;
    write("resolv.conf", resolv_conf(host_etc), 0o644)?;
    Ok(())
}

/// The host's name servers, except loopback ones (a systemd-resolved stub is the host's
/// own and unreachable); the network helper's DNS relay when none is left.
pub fn resolv_conf(host_etc: &Path) -> String {
    let host = fs::read_to_string(host_etc.join("resolv.conf")).unwrap_or_default();
    let mut out: Vec<String> = host
        .lines()
        .filter(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => !(addr.starts_with("127.") || addr == "::1"),
                (Some("search" | "options" | "domain"), _) => true,
                _ => false,
            }
        })
        .map(str::to_owned)
        .collect();
    if !out.iter().any(|l| l.starts_with("nameserver")) {
        out.push("nameserver 10.0.2.3".to_owned());
    }
    out.join("\n") + "\n"
}

/// Copies a directory tree with modes, owners and symlinks; skips `excluded` (relative
/// paths), unreadable entries and special files.
fn copy_tree(from: &Path, to: &Path, excluded: &[&Path]) -> io::Result<()> {
    copy_dir(from, to, Path::new(""), excluded)
}

fn copy_dir(from: &Path, to: &Path, relative: &Path, excluded: &[&Path]) -> io::Result<()> {
    let meta = fs::metadata(from)?;
    fs::DirBuilder::new()
        .mode(meta.mode() & 0o7777)
        .create(to)?;
    fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let rel = relative.join(entry.file_name());
        if excluded.contains(&rel.as_path()) {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let Ok(meta) = fs::symlink_metadata(&src) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
            std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
        } else if ft.is_dir() {
            copy_dir(&src, &dst, &rel, excluded)?;
        } else if ft.is_file() {
            if fs::copy(&src, &dst).is_err() {
                continue;
            }
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host() -> tempfile::TempDir {
        let host = tempfile::tempdir().unwrap();
        let h = host.path();
        fs::create_dir_all(h.join("usr/bin")).unwrap();
        fs::write(h.join("usr/bin/python3"), "").unwrap();
        std::os::unix::fs::symlink("usr/bin", h.join("bin")).unwrap();
        fs::create_dir_all(h.join("etc/ssh")).unwrap();
        fs::create_dir_all(h.join("etc/ssl/private")).unwrap();
        fs::write(h.join("etc/ssl/private/host.key"), "secret").unwrap();
        fs::write(h.join("etc/ssl/openssl.cnf"), "cnf").unwrap();
        fs::write(h.join("etc/shadow"), "root:$6$hash:1::::::").unwrap();
        fs::write(h.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/bin/false\nalice:x:1001:1001::/home/alice:/bin/bash\n").unwrap();
        fs::write(
            h.join("etc/group"),
            "root:x:0:\nsudo:x:27:alice\nalice:x:1001:\n",
        )
        .unwrap();
        fs::write(
            h.join("etc/pip.conf"),
            "[global]\ncert = /etc/ssl/certs/ca.crt\n",
        )
        .unwrap();
        fs::write(h.join("etc/profile"), DEBIAN_PROFILE).unwrap();
        host
    }

    /// The start of Debian 12's `/etc/profile`.
    const DEBIAN_PROFILE: &str = "if [ \"$(id -u)\" -eq 0 ]; then\n  PATH=\"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\"\nelse\n  PATH=\"/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games\"\nfi\nexport PATH\n";

    #[test]
    fn the_profile_reads_the_uid_without_starting_id() {
        let host = fake_host();
        let state = tempfile::tempdir().unwrap();
        let template = base_from_host(state.path(), host.path()).unwrap();
        let profile = template.layers[0].path.join("etc/profile");
        let text = fs::read_to_string(&profile).unwrap();
        assert!(
            text.contains("if [ \"${__cove_euid:-$(id -u)}\" -eq 0 ]; then\n")
                && !text.contains("\"$(id -u)\"")
                && text.ends_with("unset __cove_euid\n"),
            "{text}"
        );
        // The same PATH as Debian's own, for bash and for dash, as root and as another
        // user, whatever the environment says.
        let sourced = |shell: &str, file: &Path, uid: Option<u32>, then: &str| {
            let mut command = std::process::Command::new(shell);
            command
                .arg("-c")
                .arg(format!(". {} && {then}", file.display()))
                .env_clear()
                .env("EUID", "0")
                .env("__cove_euid", "0");
            if let Some(uid) = uid {
                std::os::unix::process::CommandExt::uid(&mut command, uid);
            }
            let out = command.output().unwrap();
            assert!(out.status.success(), "{shell}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let path_of =
            |shell: &str, file: &Path, uid: Option<u32>| sourced(shell, file, uid, "echo $PATH");
        let original = host.path().join("etc/profile");
        let root = rustix::process::geteuid().is_root();
        let users: &[Option<u32>] = if root { &[None, Some(65534)] } else { &[None] };
        if root {
            // Root and another user get different PATHs, so both cases are seen below.
            assert_ne!(
                path_of("/bin/bash", &original, None),
                path_of("/bin/bash", &original, Some(65534))
            );
        }
        for shell in ["/bin/bash", "/bin/sh"] {
            for &uid in users {
                assert_eq!(
                    path_of(shell, &profile, uid),
                    path_of(shell, &original, uid),
                    "{shell} as {uid:?}"
                );
                // Nothing of ours is left in the shell.
                assert_eq!(
                    sourced(shell, &profile, uid, "set | grep -c ^__cove_ || true"),
                    "0\n",
                    "{shell} as {uid:?}"
                );
            }
            // `id` is not asked: one that lies changes nothing.
            let lied_to = std::process::Command::new(shell)
                .arg("-c")
                .arg(format!(
                    "id() {{ echo 999; }}; . {} && echo $PATH",
                    profile.display()
                ))
                .env_clear()
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8(lied_to.stdout).unwrap(),
                path_of(shell, &original, None),
                "{shell}"
            );
        }
    }

    #[test]
    fn base_template_keeps_host_secrets_out() {
        let host = fake_host();
        let state = tempfile::tempdir().unwrap();
        let template = base_from_host(state.path(), host.path()).unwrap();
        let root = &template.layers[0].path;
        assert_eq!(template.layers[0].at, PathBuf::from("/"));
        assert!(
            template
                .layers
                .iter()
                .any(|l| l.path == host.path().join("usr") && l.at == Path::new("/usr"))
        );
        assert_eq!(
            fs::read_link(root.join("bin")).unwrap(),
            PathBuf::from("usr/bin")
        );

        assert!(!root.join("etc/ssl/private").exists());
        assert!(root.join("etc/ssl/openssl.cnf").exists());
        assert!(
            !fs::read_to_string(root.join("etc/shadow"))
                .unwrap()
                .contains("$6$")
        );
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert!(passwd.contains("user:x:1000:1000::/home/user:/bin/bash"));
        assert!(passwd.contains("daemon:x:1:1"));
        assert!(!passwd.contains("alice"), "host users stay out: {passwd}");
        let group = fs::read_to_string(root.join("etc/group")).unwrap();
        assert!(group.contains("sudo:x:27:user\n"), "{group}");
        let pip = fs::read_to_string(root.join("etc/pip.conf")).unwrap();
        assert!(pip.contains("break-system-packages = true") && pip.contains("cert ="));
        assert_eq!(
            fs::read_link(template.layers[1].path.join("local/bin/python")).unwrap(),
            PathBuf::from("/usr/bin/python3")
        );
        assert_eq!(
            fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
            0o1777
        );

        // A second call reuses the build.
        let again = base_from_host(state.path(), host.path()).unwrap();
        assert_eq!(again, template);
    }
}
