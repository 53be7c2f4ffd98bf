//! Finding the Jupyter kernels a sandbox has: `kernel.json` files under the standard
//! `share/jupyter/kernels` directories, as `jupyter kernelspec list` finds them.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// Where kernels are installed, most specific first (the user's own, then the system's).
fn search_dirs(home: &Path) -> [PathBuf; 3] {
    [
        home.join(".local/share/jupyter/kernels"),
        PathBuf::from("/usr/local/share/jupyter/kernels"),
        PathBuf::from("/usr/share/jupyter/kernels"),
    ]
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
        })
    }

    /// Whether this is IPython's kernel (which takes IPython's options).
    pub fn is_ipykernel(&self) -> bool {
        self.argv
            .iter()
            .any(|a| a == "ipykernel_launcher" || a == "ipykernel")
    }
}

/// Every kernel installed, by name; a user's kernel hides a system one of the same name.
pub fn installed(home: &Path) -> BTreeMap<String, KernelSpec> {
    let mut found = BTreeMap::new();
    for dir in search_dirs(home) {
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
        let kernels = installed(home.path());
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

    #[test]
    fn normalizes_language_names() {
        assert_eq!(normalize_language(None), "python");
        assert_eq!(normalize_language(Some(" JS ")), "javascript");
        assert_eq!(normalize_language(Some("ts")), "typescript");
        assert_eq!(normalize_language(Some("Bash")), "bash");
    }
}
