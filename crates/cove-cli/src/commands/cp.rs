//! `cove cp`: copies a file into a sandbox (`cove cp LOCAL SANDBOX:PATH`) or out of one
//! (`cove cp SANDBOX:PATH LOCAL`), streaming, with a progress bar for large files.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use cove_sdk::{FileKind, files::Files};
use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::AsyncWriteExt;

use super::connection::{Connection, agent_of, block_on};

/// Files smaller than this copy without a progress bar.
const PROGRESS_FROM: u64 = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    /// Act as this user (`root`, `user`, …) inside the sandbox.
    #[arg(long, short)]
    user: Option<String>,
    /// `LOCAL` or `SANDBOX:PATH` (write `./a:b` for a local name with a colon).
    source: String,
    /// `SANDBOX:PATH` or `LOCAL`; an existing directory (or a path ending in `/`) receives
    /// the file under its own name.
    destination: String,
}

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Location {
    Local(PathBuf),
    Sandbox { id: String, path: String },
}

impl Location {
    fn parse(raw: &str) -> Self {
        match raw.split_once(':') {
            Some((id, path))
                if !id.is_empty()
                    && !path.is_empty()
                    && id
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                Location::Sandbox {
                    id: id.to_owned(),
                    path: path.to_owned(),
                }
            }
            _ => Location::Local(PathBuf::from(raw)),
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let config = args.connection.config()?;
        let (id, upload) = match (
            Location::parse(&args.source),
            Location::parse(&args.destination),
        ) {
            (Location::Local(local), Location::Sandbox { id, path }) => (id, (local, path, true)),
            (Location::Sandbox { id, path }, Location::Local(local)) => (id, (local, path, false)),
            (Location::Local(_), Location::Local(_)) => {
                anyhow::bail!("neither side is in a sandbox: write one as SANDBOX:PATH")
            }
            (Location::Sandbox { .. }, Location::Sandbox { .. }) => {
                anyhow::bail!("both sides are in sandboxes: copy through a local file")
            }
        };
        let agent = agent_of(&config, &id, args.user.as_deref()).await?;
        let files = agent.files();
        let (local, remote, is_upload) = upload;
        if is_upload {
            let path = upload_file(&files, &local, &remote).await?;
            eprintln!("copied {} to {id}:{path}", local.display());
        } else {
            let path = download_file(&files, &remote, &local).await?;
            eprintln!("copied {id}:{remote} to {}", path.display());
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn upload_file(files: &Files<'_>, local: &Path, remote: &str) -> anyhow::Result<String> {
    let meta = tokio::fs::metadata(local)
        .await
        .with_context(|| format!("cannot read {}", local.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a file (cove cp copies files)", local.display());
    }
    let name = local
        .file_name()
        .and_then(|n| n.to_str())
        .context("the local file has no usable name")?;
    let into_dir = remote.ends_with('/')
        || matches!(files.stat(remote).await, Ok(entry) if entry.kind == FileKind::Dir);
    let remote = if into_dir {
        format!("{}/{name}", remote.trim_end_matches('/'))
    } else {
        remote.to_owned()
    };
    let file = tokio::fs::File::open(local)
        .await
        .with_context(|| format!("cannot open {}", local.display()))?;
    let progress = progress(meta.len());
    let counter = progress.clone();
    let chunks = tokio_util::io::ReaderStream::new(file).inspect_ok(move |chunk| {
        counter.inc(chunk.len() as u64);
    });
    let written = files
        .write_stream(&remote, chunks)
        .await
        .with_context(|| format!("cannot write {remote}"))?;
    progress.finish_and_clear();
    Ok(written.path)
}

async fn download_file(files: &Files<'_>, remote: &str, local: &Path) -> anyhow::Result<PathBuf> {
    let entry = files
        .stat(remote)
        .await
        .with_context(|| format!("cannot read {remote}"))?;
    if entry.target_kind != FileKind::File {
        anyhow::bail!("{remote} is not a file (cove cp copies files)");
    }
    let local = if local.is_dir() || local.as_os_str().to_string_lossy().ends_with('/') {
        local.join(&entry.name)
    } else {
        local.to_owned()
    };
    let mut chunks = files
        .read_stream(remote)
        .await
        .with_context(|| format!("cannot read {remote}"))?;
    let mut file = tokio::fs::File::create(&local)
        .await
        .with_context(|| format!("cannot create {}", local.display()))?;
    let progress = progress(u64::try_from(entry.size).unwrap_or(0));
    let copied = async {
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.with_context(|| format!("cannot read {remote}"))?;
            file.write_all(&chunk).await?;
            progress.inc(chunk.len() as u64);
        }
        file.flush().await?;
        anyhow::Ok(())
    }
    .await;
    progress.finish_and_clear();
    if let Err(err) = copied {
        // Leave no truncated copy that looks complete.
        let _ = tokio::fs::remove_file(&local).await;
        return Err(err.context(format!("cannot write {}", local.display())));
    }
    Ok(local)
}

/// A byte-counting progress bar on stderr, hidden for small files and when stderr is not a
/// terminal.
fn progress(total: u64) -> ProgressBar {
    if total < PROGRESS_FROM {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("abc123:/tmp/x"),
            Location::Sandbox {
                id: "abc123".into(),
                path: "/tmp/x".into()
            }
        );
        assert_eq!(
            Location::parse("./a:b"),
            Location::Local(PathBuf::from("./a:b"))
        );
        assert_eq!(
            Location::parse("/tmp/x"),
            Location::Local(PathBuf::from("/tmp/x"))
        );
        assert_eq!(
            Location::parse("abc:"),
            Location::Local(PathBuf::from("abc:"))
        );
    }
}
