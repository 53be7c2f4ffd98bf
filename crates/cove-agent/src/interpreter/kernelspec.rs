//! Finding the Jupyter kernels a sandbox has: `kernel.json` files under the directories
//! `jupyter kernelspec list` searches (`$JUPYTER_PATH`, the user's, each environment's on
//! `PATH`, the system's), and the program each one starts.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// `PATH` when neither the sandbox's variables nor the agent name one.
const FALLBACK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where kernels are installed, most specific first, as Jupyter orders them: `$JUPYTER_PATH`,
/// the user's own, the environments whose `bin` is on `PATH` (a virtualenv, conda, an
/// image's `/usr/local`: `pip install ipykernel` puts its spec under the prefix it installs
/// into), then the system's.
fn search_dirs(home: &Path, env: &BTreeMap<String, String>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut add = |dir: PathBuf| {
        if dir.is_absolute() && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    };
    if let Some(jupyter_path) = env.get("JUPYTER_PATH") {
        for dir in std::env::split_paths(jupyter_path) {
            add(dir.join("kernels"));
        }
    }
    add(home.join(".local/share/jupyter/kernels"));
    for bin in std::env::split_paths(&search_path(env)) {
        if bin.file_name().is_some_and(|name| name == "bin")
            && let Some(prefix) = bin.parent()
        {
            add(prefix.join("share/jupyter/kernels"));
        }
    }
    add(PathBuf::from("/usr/local/share/jupyter/kernels"));
    add(PathBuf::from("/usr/share/jupyter/kernels"));
    dirs
}

/// The `PATH` kernels start with: the sandbox's, else the agent's own.
pub fn search_path(env: &BTreeMap<String, String>) -> String {
    env.get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| FALLBACK_PATH.to_owned())
}

/// Whether `name` is a Python interpreter named the way kernel specs name one (`python`,
/// `python3`, `python3.12`).
fn is_bare_python(name: &str) -> bool {
    name.strip_prefix("python").is_some_and(|version| {
        version.is_empty()
            || version
                .split('.')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `program` found on `path`, if it is there.
fn on_path(program: &str, path: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

/// One installed kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSpec {
    /// Its directory name (`python3`, `bash`, …).
    pub name: String,
    /// Command line; `{connection_file}` stands for the connection file's path.
    pub argv: Vec<String>,
    /// The language, lowercased.
    pub language: String,
    /// Whether an interrupt is a message on the control channel (else SIGINT).
    pub interrupt_by_message: bool,
    pub env: BTreeMap<String, String>,
    /// The directory its `kernel.json` is in.
    pub dir: PathBuf,
}

#[derive(Deserialize)]
struct KernelJson {
    argv: Vec<String>,
    language: String,
    #[serde(default)]
    interrupt_mode: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

impl KernelSpec {
    fn read(dir: &Path) -> Option<Self> {
        let raw = std::fs::read(dir.join("kernel.json")).ok()?;
        let json: KernelJson = serde_json::from_slice(&raw)
            .inspect_err(
                |err| tracing::debug!(?err, dir = %dir.display(), "unreadable kernel.json"),
            )
            .ok()?;
        if json.argv.is_empty() {
            return None;
        }
        Some(Self {
            name: dir.file_name()?.to_string_lossy().into_owned(),
            argv: json.argv,
            language: json.language.to_lowercase(),
            interrupt_by_message: json.interrupt_mode.as_deref() == Some("message"),
            env: json.env,
            dir: dir.to_owned(),
        })
    }

    /// The program to start, looked up on `path` when needed. A spec that names Python
    /// bare means the interpreter it was installed with, as Jupyter reads it: ipykernel's
    /// own spec says `python`, which Debian and many images lack (they have `python3`), so
    /// the interpreter of the prefix the spec lies in (`<prefix>/share/jupyter/kernels/…`)
    /// comes first, then the name on `path`, then `python3` on `path`.
    pub fn program(&self, path: &str) -> PathBuf {
        let named = self.argv.first().map(String::as_str).unwrap_or_default();
        if !is_bare_python(named) {
            return PathBuf::from(named);
        }
        let prefix_bin = self
            .dir
            .ancestors()
            .nth(4)
            .filter(|_| {
                self.dir
                    .parent()
                    .is_some_and(|p| p.ends_with("share/jupyter/kernels"))
            })
            .map(|prefix| prefix.join("bin"));
        let in_prefix = prefix_bin.iter().flat_map(|bin| {
            [named, "python3"]
                .into_iter()
                .map(move |program| bin.join(program))
        });
        in_prefix
            .chain(on_path(named, path))
            .chain(on_path("python3", path))
            .find(|candidate| is_executable(candidate))
            .unwrap_or_else(|| PathBuf::from(named))
    }

    /// Whether this is IPython's kernel (which takes IPython's options).
    pub fn is_ipykernel(&self) -> bool {
        self.argv
            .iter()
            .any(|a| a == "ipykernel_launcher" || a == "ipykernel")
    }
}

/// Every kernel installed, by name, for a sandbox whose variables are `env`; a kernel found
/// earlier in the search hides a later one of the same name (a user's hides the system's).
pub fn installed(home: &Path, env: &BTreeMap<String, String>) -> BTreeMap<String, KernelSpec> {
    let mut found = BTreeMap::new();
    for dir in search_dirs(home, env) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Some(spec) = KernelSpec::read(&entry.path()) {
                found.entry(spec.name.clone()).or_insert(spec);
            }
        }
    }
    found
}

/// The language a request names, as the code interpreter spells it (`python` by default;
/// `js` and `ts` are short forms).
pub fn normalize_language(language: Option<&str>) -> String {
    let language = language
        .map(|l| l.trim().to_lowercase())
        .unwrap_or_default();
    match language.as_str() {
        "" => "python".to_owned(),
        "js" => "javascript".to_owned(),
        "ts" => "typescript".to_owned(),
        _ => language,
    }
}

/// The kernel for `language`: one whose spec names that language, preferring the one named
/// after it (`python3` for Python). TypeScript runs on a kernel named `typescript` or
/// `tslab` when there is one.
pub fn for_language<'a>(
    kernels: &'a BTreeMap<String, KernelSpec>,
    language: &str,
) -> Option<&'a KernelSpec> {
    let preferred = match language {
        "python" => ["python3", "python"],
        "typescript" => ["typescript", "tslab"],
        other => [other, other],
    };
    preferred
        .iter()
        .find_map(|name| {
            kernels
                .get(*name)
                .filter(|k| k.language == language || language == "typescript")
        })
        .or_else(|| kernels.values().find(|k| k.language == language))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_spec(root: &Path, name: &str, json: &str) {
        let dir = root.join(".local/share/jupyter/kernels").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kernel.json"), json).unwrap();
    }

    #[test]
    fn finds_kernels_by_language() {
        let home = tempfile::tempdir().unwrap();
        write_spec(
            home.path(),
            "bash",
            r#"{"argv": ["python3", "-m", "bash_kernel", "-f", "{connection_file}"], "language": "bash"}"#,
        );
        write_spec(
            home.path(),
            "mypython",
            r#"{"argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "language": "Python", "interrupt_mode": "message"}"#,
        );
        write_spec(home.path(), "broken", "not json");
        let kernels = installed(home.path(), &BTreeMap::new());
        assert!(!kernels.contains_key("broken"));
        assert_eq!(for_language(&kernels, "bash").unwrap().name, "bash");
        let python = for_language(&kernels, "python").unwrap();
        // The system's python3 (when installed) is preferred over one with another name.
        assert!(python.name == "python3" || python.name == "mypython");
        let mine = &kernels["mypython"];
        assert!(mine.is_ipykernel() && mine.interrupt_by_message);
        assert_eq!(mine.language, "python");
        assert!(for_language(&kernels, "r").is_none());
    }

    fn executable(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// What `pip install ipykernel` leaves in an environment with only `python3`: its spec
    /// says `python`, which is found as the environment's `python3`.
    #[test]
    fn a_pip_installed_spec_in_an_environment_on_path_starts_its_python() {
        let root = tempfile::tempdir().unwrap();
        let venv = root.path().join("venv");
        let spec_dir = venv.join("share/jupyter/kernels/python3");
        std::fs::create_dir_all(&spec_dir).unwrap();
        std::fs::write(
            spec_dir.join("kernel.json"),
            r#"{"argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"], "language": "python"}"#,
        )
        .unwrap();
        executable(&venv.join("bin/python3"));
        let env = BTreeMap::from([(
            "PATH".to_owned(),
            format!("{}:/nonexistent/bin", venv.join("bin").display()),
        )]);
        let home = root.path().join("home");
        let kernels = installed(&home, &env);
        let python = for_language(&kernels, "python").unwrap();
        assert_eq!(python.dir, spec_dir);
        assert_eq!(python.program("/nonexistent/bin"), venv.join("bin/python3"));
        // Without the environment's own interpreter: python3 on PATH.
        std::fs::remove_file(venv.join("bin/python3")).unwrap();
        let elsewhere = root.path().join("elsewhere");
        executable(&elsewhere.join("python3"));
        assert_eq!(
            python.program(elsewhere.to_str().unwrap()),
            elsewhere.join("python3")
        );
        // Programs that are not a bare Python are left as they are.
        let spec = KernelSpec {
            argv: vec!["/opt/r/bin/R".to_owned()],
            ..python.clone()
        };
        assert_eq!(spec.program("/usr/bin"), PathBuf::from("/opt/r/bin/R"));
    }

    #[test]
    fn jupyter_path_comes_first() {
        let root = tempfile::tempdir().unwrap();
        let env = BTreeMap::from([
            (
                "JUPYTER_PATH".to_owned(),
                root.path().join("j").display().to_string(),
            ),
            ("PATH".to_owned(), "/opt/conda/bin:/usr/bin".to_owned()),
        ]);
        let dirs = search_dirs(Path::new("/home/user"), &env);
        assert_eq!(
            dirs,
            [
                root.path().join("j/kernels"),
                PathBuf::from("/home/user/.local/share/jupyter/kernels"),
                PathBuf::from("/opt/conda/share/jupyter/kernels"),
                PathBuf::from("/usr/share/jupyter/kernels"),
                PathBuf::from("/usr/local/share/jupyter/kernels"),
            ]
        );
        assert!(is_bare_python("python3.12") && is_bare_python("python"));
        assert!(!is_bare_python("python3-") && !is_bare_python("pythonista"));
    }

    #[test]
    fn normalizes_language_names() {
        assert_eq!(normalize_language(None), "python");
        assert_eq!(normalize_language(Some(" JS ")), "javascript");
        assert_eq!(normalize_language(Some("ts")), "typescript");
        assert_eq!(normalize_language(Some("Bash")), "bash");
    }
}
