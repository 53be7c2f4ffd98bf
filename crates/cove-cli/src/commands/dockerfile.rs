//! A Dockerfile turned into the build steps of E2B's template API, client-side, as E2B's CLI
//! and SDKs do (`e2b template create`, `Template().from_dockerfile(…)`): `FROM` is the base,
//! `RUN`, `COPY`/`ADD` (local files), `ENV`, `WORKDIR` and `USER` are steps, `CMD` or
//! `ENTRYPOINT` the start command. What has no step (`EXPOSE`, `LABEL`, …) is reported and
//! left out; what cannot be honoured (a second `FROM`, `ADD` of a URL, `COPY --from`) is an
//! error naming its line.

use std::{
    io::Write,
    path::{Component, Path, PathBuf},
};

use cove_proto::templates::Step;
use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum DockerfileError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("the Dockerfile has no FROM")]
    NoFrom,
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a Dockerfile asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub from_image: String,
    pub steps: Vec<PlannedStep>,
    /// From `CMD` or `ENTRYPOINT` (the last of them).
    pub start_cmd: Option<String>,
    /// Instructions left out, with their line: nothing in a template corresponds to them.
    pub ignored: Vec<(usize, String)>,
}

/// A step, and for a COPY the context path its files come from.
#[derive(Debug, PartialEq, Eq)]
pub struct PlannedStep {
    pub kind: &'static str,
    pub args: Vec<String>,
    /// COPY: the source, relative to the context.
    pub copy_src: Option<String>,
}

/// Parses `text` (a Dockerfile).
pub fn parse(text: &str) -> Result<Plan, DockerfileError> {
    let mut plan = Plan::default();
    for (line, instruction) in logical_lines(text) {
        let err = |message: String| DockerfileError::Line { line, message };
        let (word, rest) = instruction
            .split_once(char::is_whitespace)
            .map_or((instruction.as_str(), ""), |(w, r)| (w, r.trim()));
        let word = word.to_ascii_uppercase();
        if plan.from_image.is_empty() && !matches!(word.as_str(), "FROM" | "ARG") {
            return Err(err(format!("{word} before FROM")));
        }
        match word.as_str() {
            "FROM" => {
                if !plan.from_image.is_empty() {
                    return Err(err(
                        "a second FROM: multi-stage builds are not supported; build the final stage from an image".into(),
                    ));
                }
                let mut words = rest.split_whitespace().filter(|w| !w.starts_with("--"));
                plan.from_image = words
                    .next()
                    .ok_or_else(|| err("FROM names no image".into()))?
                    .to_owned();
            }
            "RUN" => {
                let command = shell_or_exec(rest).map_err(err)?;
                plan.steps.push(PlannedStep {
                    kind: "RUN",
                    args: vec![command],
                    copy_src: None,
                });
            }
            "COPY" | "ADD" => plan.steps.extend(copy_steps(&word, rest).map_err(err)?),
            "ENV" => {
                let pairs = env_pairs(rest).map_err(err)?;
                plan.steps.push(PlannedStep {
                    kind: "ENV",
                    args: pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                    copy_src: None,
                });
            }
            "WORKDIR" | "USER" if rest.is_empty() => {
                return Err(err(format!("{word} needs an argument")));
            }
            "WORKDIR" => plan.steps.push(PlannedStep {
                kind: "WORKDIR",
                args: vec![unquote(rest)],
                copy_src: None,
            }),
            "USER" => plan.steps.push(PlannedStep {
                kind: "USER",
                args: vec![unquote(rest)],
                copy_src: None,
            }),
            "CMD" | "ENTRYPOINT" => plan.start_cmd = Some(shell_or_exec(rest).map_err(err)?),
            _ => plan.ignored.push((line, word)),
        }
    }
    if plan.from_image.is_empty() {
        return Err(DockerfileError::NoFrom);
    }
    // As Docker runs a Dockerfile (root, in `/`) and as E2B's CLI turns one into a
    // template: the template's own user and directory are E2B's unless it names others.
    let names = |kind: &str| plan.steps.iter().any(|s| s.kind == kind);
    let (has_user, has_workdir) = (names("USER"), names("WORKDIR"));
    let start = [("USER", "root"), ("WORKDIR", "/")];
    let mut end = Vec::new();
    if !has_user {
        end.push(("USER", "user"));
    }
    if !has_workdir {
        end.push(("WORKDIR", "/home/user"));
    }
    let setting = |(kind, arg): (&'static str, &str)| PlannedStep {
        kind,
        args: vec![arg.to_owned()],
        copy_src: None,
    };
    plan.steps = start
        .into_iter()
        .map(setting)
        .chain(std::mem::take(&mut plan.steps))
        .chain(end.into_iter().map(setting))
        .collect();
    Ok(plan)
}

/// Lines with their continuations joined, comments and blank lines out; with the number of
/// the line each starts on.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (start, mut text) = current.take().unwrap_or((i + 1, String::new()));
        if let Some(body) = trimmed.strip_suffix('\\') {
            text.push_str(body);
            text.push(' ');
            current = Some((start, text));
        } else {
            text.push_str(trimmed);
            out.push((start, text.trim().to_owned()));
        }
    }
    if let Some((start, text)) = current {
        out.push((start, text.trim().to_owned()));
    }
    out
}

/// A command in shell form as it is; in exec form (a JSON array) its words quoted for `sh`.
fn shell_or_exec(rest: &str) -> Result<String, String> {
    if rest.is_empty() {
        return Err("the command is empty".into());
    }
    if rest.starts_with('[') {
        let words: Vec<String> =
            serde_json::from_str(rest).map_err(|e| format!("invalid exec form {rest:?}: {e}"))?;
        return Ok(words
            .iter()
            .map(|w| sh_quote(w))
            .collect::<Vec<_>>()
            .join(" "));
    }
    Ok(rest.to_owned())
}

fn sh_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn unquote(word: &str) -> String {
    let word = word.trim();
    for quote in ['"', '\''] {
        if let Some(inner) = word.strip_prefix(quote).and_then(|w| w.strip_suffix(quote)) {
            return inner.to_owned();
        }
    }
    word.to_owned()
}

/// `ENV k=v k2="v 2"` or the old `ENV k v w`.
fn env_pairs(rest: &str) -> Result<Vec<(String, String)>, String> {
    let words = split_words(rest)?;
    let Some(first) = words.first() else {
        return Err("ENV sets nothing".into());
    };
    if !first.contains('=') {
        let value = rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..].trim();
        return Ok(vec![(first.clone(), unquote(value))]);
    }
    words
        .into_iter()
        .map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("{w:?} is no NAME=VALUE"))
        })
        .collect()
}

/// Words split on blanks, quotes removed (`"a b"` is one word).
fn split_words(rest: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => word.extend(chars.next()),
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                word.extend(chars.next());
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("an unclosed quote".into());
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// `COPY [--chown=u:g] [--chmod=0755] src… dest`: one step per source.
fn copy_steps(word: &str, rest: &str) -> Result<Vec<PlannedStep>, String> {
    let words = if rest.starts_with('[') {
        serde_json::from_str::<Vec<String>>(rest).map_err(|e| format!("invalid {word}: {e}"))?
    } else {
        split_words(rest)?
    };
    let (mut owner, mut mode) = (String::new(), String::new());
    let mut paths = Vec::new();
    for w in words {
        if let Some(v) = w.strip_prefix("--chown=") {
            owner = v.to_owned();
        } else if let Some(v) = w.strip_prefix("--chmod=") {
            mode = v.to_owned();
        } else if w.starts_with("--from=") {
            return Err(format!(
                "{word} --from needs another stage: multi-stage builds are not supported"
            ));
        } else if w.starts_with("--") {
            return Err(format!("{word} option {w} is not supported"));
        } else {
            paths.push(w);
        }
    }
    let Some(dest) = paths.pop() else {
        return Err(format!("{word} needs a source and a destination"));
    };
    if paths.is_empty() {
        return Err(format!("{word} needs a source and a destination"));
    }
    let dest = if paths.len() > 1 && !dest.ends_with('/') {
        format!("{dest}/")
    } else {
        dest
    };
    paths
        .into_iter()
        .map(|src| {
            if src.contains("://") {
                return Err(format!(
                    "{word} of a URL ({src}) is not supported: download it in a RUN step"
                ));
            }
            let clean = context_path(&src)?;
            Ok(PlannedStep {
                kind: "COPY",
                args: vec![clean.clone(), dest.clone(), owner.clone(), mode.clone()],
                copy_src: Some(clean),
            })
        })
        .collect()
}

/// A source path inside the build context, as a relative path.
fn context_path(src: &str) -> Result<String, String> {
    if src.contains(['*', '?', '[']) {
        return Err(format!(
            "the wildcard source {src:?} is not supported: name the files or their directory"
        ));
    }
    let mut parts = Vec::new();
    for component in Path::new(src).components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{src:?} leaves the build context"));
            }
        }
    }
    Ok(if parts.is_empty() {
        ".".to_owned()
    } else {
        parts.join("/")
    })
}

/// The files of a COPY source (`src` in `context`), as a gzipped tar whose entries are
/// named as `src` is, and their hash (of the step and every entry's name, kind, mode and
/// content), which names them on the server. Symbolic links stay links; a source that is a
/// link itself, or a link on the way to it, is refused if it leads out of the context.
pub fn pack(context: &Path, step: &PlannedStep) -> Result<(Vec<u8>, String), DockerfileError> {
    let src = step.copy_src.as_deref().unwrap_or(".");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DockerfileError::Io { path, source }
    };
    let root = std::fs::canonicalize(context).map_err(io(context))?;
    let full = root.join(src);
    let resolved = std::fs::canonicalize(&full).map_err(io(&full))?;
    if !resolved.starts_with(&root) {
        return Err(DockerfileError::Io {
            path: full,
            source: std::io::Error::other("it leads out of the build context"),
        });
    }
    let mut hasher = Sha256::new();
    hasher.update(format!("COPY {}\0", step.args.join("\0")));
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let mut entries = Vec::new();
    collect(&full, Path::new(src), &mut entries).map_err(io(&full))?;
    for (host, name) in &entries {
        let meta = std::fs::symlink_metadata(host).map_err(io(host))?;
        hasher.update(name.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()).to_le_bytes());
        if meta.file_type().is_symlink() {
            hasher.update(
                std::fs::read_link(host)
                    .map_err(io(host))?
                    .to_string_lossy()
                    .as_bytes(),
            );
        } else if meta.is_file() {
            hasher.update(std::fs::read(host).map_err(io(host))?);
        }
        if meta.is_dir() {
            tar.append_dir(name, host).map_err(io(host))?;
        } else {
            tar.append_path_with_name(host, name).map_err(io(host))?;
        }
    }
    let gz = tar.into_inner().map_err(io(&full))?;
    let mut gz = gz;
    gz.flush().map_err(io(&full))?;
    let archive = gz.finish().map_err(io(&full))?;
    Ok((archive, hex::encode(hasher.finalize())))
}

/// Every entry under `host` (itself first), named under `name`, in a stable order.
fn collect(host: &Path, name: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> std::io::Result<()> {
    out.push((host.to_owned(), name.to_owned()));
    let meta = std::fs::symlink_metadata(host)?;
    if meta.is_dir() {
        let mut children: Vec<_> = std::fs::read_dir(host)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        children.sort();
        for child in children {
            collect(&host.join(&child), &name.join(&child), out)?;
        }
    }
    Ok(())
}

/// The steps as the API takes them, COPY steps with their files' hash.
pub fn api_step(step: &PlannedStep, files_hash: Option<String>) -> Step {
    Step {
        kind: step.kind.to_owned(),
        args: step.args.clone(),
        files_hash,
        force: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"# a comment
FROM python:3.12-slim AS app
ARG X=1
RUN apt-get update && \
    apt-get install -y curl
ENV A=1 B="two words"
ENV OLD style value
WORKDIR /app
COPY --chown=user:user --chmod=0755 src/ ./
COPY a.txt b.txt /opt/
USER user
EXPOSE 8000
CMD ["python", "-m", "http.server", "8000"]
"#;

    #[test]
    fn a_dockerfile_becomes_steps() {
        let plan = parse(FULL).unwrap();
        assert_eq!(plan.from_image, "python:3.12-slim");
        let kinds: Vec<_> = plan.steps.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds,
            [
                "USER", "WORKDIR", "RUN", "ENV", "ENV", "WORKDIR", "COPY", "COPY", "COPY", "USER"
            ]
        );
        let args: Vec<_> = plan.steps.iter().map(|s| s.args.clone()).collect();
        assert_eq!(args[0], ["root"]);
        assert_eq!(args[1], ["/"]);
        assert_eq!(args[2], ["apt-get update &&  apt-get install -y curl"]);
        assert_eq!(args[3], ["A", "1", "B", "two words"]);
        assert_eq!(args[4], ["OLD", "style value"]);
        assert_eq!(args[6], ["src", "./", "user:user", "0755"]);
        assert_eq!(args[7], ["a.txt", "/opt/", "", ""]);
        assert_eq!(args[8], ["b.txt", "/opt/", "", ""]);
        assert_eq!(
            plan.start_cmd.as_deref(),
            Some("python -m http.server 8000")
        );
        assert_eq!(
            plan.ignored,
            [(3, "ARG".to_owned()), (12, "EXPOSE".to_owned())]
        );
    }

    #[test]
    fn steps_run_as_root_and_the_template_is_e2bs_user_unless_it_says() {
        let plan = parse("FROM a\nRUN true\n").unwrap();
        let settings: Vec<_> = plan
            .steps
            .iter()
            .map(|s| (s.kind, s.args[0].as_str()))
            .collect();
        assert_eq!(
            settings,
            [
                ("USER", "root"),
                ("WORKDIR", "/"),
                ("RUN", "true"),
                ("USER", "user"),
                ("WORKDIR", "/home/user")
            ]
        );
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_its_line() {
        for (text, needle) in [
            ("FROM a\nFROM b\n", "line 2: a second FROM"),
            ("RUN true\n", "line 1: RUN before FROM"),
            ("FROM a\nCOPY --from=x /a /b\n", "line 2"),
            ("FROM a\nADD https://x/y /y\n", "URL"),
            ("FROM a\nCOPY ../secret /x\n", "leaves the build context"),
            ("FROM a\nCOPY *.py /x\n", "wildcard"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        assert!(matches!(parse("# nothing\n"), Err(DockerfileError::NoFrom)));
    }

    #[test]
    fn packed_files_keep_links_and_their_hash_follows_their_content() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/a.txt"), b"one").unwrap();
        std::os::unix::fs::symlink("a.txt", dir.path().join("src/link")).unwrap();
        let step = &parse("FROM a\nCOPY src /app/\n").unwrap().steps[2];
        let (archive, hash) = pack(dir.path(), step).unwrap();
        let mut names = Vec::new();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            let kind = entry.header().entry_type();
            names.push((entry.path().unwrap().into_owned(), kind.is_symlink()));
        }
        assert_eq!(
            names,
            [
                (PathBuf::from("src"), false),
                (PathBuf::from("src/a.txt"), false),
                (PathBuf::from("src/link"), true)
            ]
        );
        let (_, same) = pack(dir.path(), step).unwrap();
        assert_eq!(hash, same);
        std::fs::write(dir.path().join("src/a.txt"), b"two").unwrap();
        let (_, changed) = pack(dir.path(), step).unwrap();
        assert_ne!(hash, changed);
        // A link that leads out of the context is no source.
        std::os::unix::fs::symlink("/etc", dir.path().join("out")).unwrap();
        let step = &parse("FROM a\nCOPY out /x\n").unwrap().steps[2];
        assert!(pack(dir.path(), step).is_err());
    }
}
