//! `cove volume`: a team's volumes — create, ls, rm, and cp of a file into or out of one
//! (`cove volume cp LOCAL VOLUME:PATH`, `cove volume cp VOLUME:PATH LOCAL`, by name).

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use cove_sdk::volumes::Volume;

use super::connection::{Connection, block_on, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Debug, clap::Subcommand)]
enum VolumeCommand {
    /// Create a volume and print its id.
    Create {
        /// Letters, digits, '-' and '_'; unique in the team.
        name: String,
        /// Its quota in MiB [default: the server's, `cove serve --volume-mb`].
        #[arg(long)]
        size_mb: Option<u64>,
    },
    /// List the team's volumes.
    #[command(alias = "list")]
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume (by name or id) and its files; refused while a sandbox mounts it.
    #[command(alias = "delete")]
    Rm { volume: String },
    /// Copy a file: `LOCAL VOLUME:PATH` or `VOLUME:PATH LOCAL` (VOLUME: a name or id).
    Cp { source: String, destination: String },
}

/// `VOLUME:PATH`, when `raw` is one.
fn in_volume(raw: &str) -> Option<(&str, &str)> {
    raw.split_once(':').filter(|(volume, path)| {
        !volume.is_empty()
            && !path.is_empty()
            && volume
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

async fn find(config: &cove_sdk::ConnectionConfig, volume: &str) -> anyhow::Result<Volume> {
    let by_id = if volume.starts_with("vol_") {
        Volume::connect(config, volume).await.ok()
    } else {
        None
    };
    match by_id {
        Some(found) => Ok(found),
        None => Volume::by_name(config, volume)
            .await
            .with_context(|| format!("cannot find volume {volume}")),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let config = args.connection.config()?;
        match args.command {
            VolumeCommand::Create { name, size_mb } => {
                let volume = Volume::create(&config, &name, size_mb)
                    .await
                    .with_context(|| format!("cannot create volume {name}"))?;
                println!("{}", volume.id());
            }
            VolumeCommand::Ls { json } => {
                let volumes = Volume::list(&config).await.context("cannot list volumes")?;
                if json {
                    print_json(&volumes)?;
                } else {
                    println!("{:<28} NAME", "ID");
                    for volume in volumes {
                        println!("{:<28} {}", volume.volume_id, volume.name);
                    }
                }
            }
            VolumeCommand::Rm { volume } => {
                let found = find(&config, &volume).await?;
                Volume::destroy(&config, found.id())
                    .await
                    .with_context(|| format!("cannot delete volume {volume}"))?;
            }
            VolumeCommand::Cp {
                source,
                destination,
            } => match (in_volume(&source), in_volume(&destination)) {
                (None, Some((volume, path))) => {
                    let data = tokio::fs::read(&source)
                        .await
                        .with_context(|| format!("cannot read {source}"))?;
                    let volume = find(&config, volume).await?;
                    volume
                        .write(path, data)
                        .await
                        .with_context(|| format!("cannot write {destination}"))?;
                }
                (Some((volume, path)), None) => {
                    let volume = find(&config, volume).await?;
                    let data = volume
                        .read(path)
                        .await
                        .with_context(|| format!("cannot read {source}"))?;
                    tokio::fs::write(PathBuf::from(&destination), data)
                        .await
                        .with_context(|| format!("cannot write {destination}"))?;
                }
                (None, None) => {
                    anyhow::bail!("neither side is in a volume: write one as VOLUME:PATH")
                }
                (Some(_), Some(_)) => {
                    anyhow::bail!("both sides are in volumes: copy through a local file")
                }
            },
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_sides_are_recognised() {
        assert_eq!(in_volume("data:/a/b"), Some(("data", "/a/b")));
        assert_eq!(in_volume("./a:b"), None);
        assert_eq!(in_volume("local.txt"), None);
    }
}
