//! `cove template`: the templates sandboxes are made from — list, build (a Dockerfile, with
//! live logs and a progress bar for image pulls), import, tags, removal, disk use and
//! collection of unused layers.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use cove_proto::templates::{BuildLogEntry, BuildStart, BuildStatus, NewTemplate};
use cove_sdk::ConnectionConfig;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{
    connection::{Connection, block_on, print_json},
    dockerfile,
};

/// How often a build's status is asked for.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: TemplateCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TemplateCommand {
    /// List the templates the server offers (built-in, built and snapshots).
    #[command(alias = "ls")]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a template from a Dockerfile (or a directory holding one, its build context),
    /// printing the build's log as it goes.
    Build {
        /// The Dockerfile, or its directory.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// The template's name (`name` or `name:tag`).
        #[arg(long, short = 'n')]
        name: String,
        /// More tags for this build.
        #[arg(long = "tag", short = 't')]
        tags: Vec<String>,
        /// The start command (else the Dockerfile's CMD or ENTRYPOINT).
        #[arg(long)]
        cmd: Option<String>,
        /// A command that succeeds once the started sandbox is ready.
        #[arg(long)]
        ready_cmd: Option<String>,
        #[arg(long)]
        cpu_count: Option<u32>,
        #[arg(long)]
        memory_mb: Option<u64>,
        /// The backend its sandboxes run on (`namespace`, `gvisor`) unless a create names
        /// one (metadata `cove.runtime`); kept until a build names another.
        #[arg(long)]
        runtime: Option<String>,
        /// Rebuild every step, whatever the cache holds.
        #[arg(long)]
        force: bool,
    },
    /// Import an OCI layout directory, an OCI layout tar or a `docker save` archive.
    Import {
        path: PathBuf,
        /// The template's name (`name` or `name:tag`).
        #[arg(long, short = 'n')]
        name: String,
        /// The image in the archive, when it holds several.
        #[arg(long)]
        image: Option<String>,
        /// The backend its sandboxes run on (`namespace`, `gvisor`) unless a create names
        /// one (metadata `cove.runtime`).
        #[arg(long)]
        runtime: Option<String>,
    },
    /// Delete templates (built ones or snapshots), by id or name. Sandboxes made from them
    /// keep running, and the layers they use stay.
    #[command(alias = "delete")]
    Rm {
        #[arg(required = true)]
        templates: Vec<String>,
    },
    /// A template's tags, or tag builds (`add name:tag new…`) and take tags off (`rm`).
    #[command(args_conflicts_with_subcommands = true)]
    Tags {
        #[command(subcommand)]
        command: Option<TagsCommand>,
        /// The template whose tags to list.
        template: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Disk used by each of your templates' layers.
    Usage {
        #[arg(long)]
        json: bool,
    },
    /// Remove the layers no template, build or sandbox uses.
    Gc,
}

#[derive(Debug, clap::Subcommand)]
enum TagsCommand {
    /// Tag the build `target` (`name:tag`, or `name` for its default tag) with more tags.
    Add {
        target: String,
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Take tags off a template.
    Rm {
        template: String,
        #[arg(required = true)]
        tags: Vec<String>,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let config = args.connection.config()?;
        match args.command {
            TemplateCommand::List { json } => list(&config, json).await,
            TemplateCommand::Build {
                path,
                name,
                tags,
                cmd,
                ready_cmd,
                cpu_count,
                memory_mb,
                runtime,
                force,
            } => {
                let request = NewTemplate {
                    name: Some(name),
                    tags: (!tags.is_empty()).then_some(tags),
                    cpu_count,
                    memory_mb,
                    runtime,
                    ..Default::default()
                };
                build(&config, &path, request, cmd, ready_cmd, force).await
            }
            TemplateCommand::Import {
                path,
                name,
                image,
                runtime,
            } => import(&config, &path, &name, image.as_deref(), runtime.as_deref()).await,
            TemplateCommand::Rm { templates } => {
                for template in templates {
                    cove_sdk::templates::delete(&config, &template)
                        .await
                        .with_context(|| format!("cannot delete template {template}"))?;
                    println!("{template} deleted");
                }
                Ok(ExitCode::SUCCESS)
            }
            TemplateCommand::Tags {
                command,
                template,
                json,
            } => tags(&config, command, template, json).await,
            TemplateCommand::Usage { json } => {
                let usage = cove_sdk::templates::usage(&config)
                    .await
                    .context("cannot read the templates' disk use")?;
                if json {
                    print_json(&usage)?;
                } else {
                    println!(
                        "{:<22} {:<28} {:>6} {:>10} {:>10}",
                        "ID", "ALIASES", "LAYERS", "DISK", "SHARED"
                    );
                    for u in usage {
                        println!(
                            "{:<22} {:<28} {:>6} {:>10} {:>10}",
                            u.template_id,
                            u.aliases.join(","),
                            u.layers,
                            mib(u.disk_bytes),
                            mib(u.shared_bytes)
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            TemplateCommand::Gc => {
                let collected = cove_sdk::templates::collect(&config)
                    .await
                    .context("cannot collect unused layers")?;
                println!(
                    "{} unused layers removed, {} freed",
                    collected.removed_layers,
                    mib(collected.freed_bytes)
                );
                if collected.shared_removed > 0 {
                    println!(
                        "{} unused layers and snapshots removed from the object store, {} freed",
                        collected.shared_removed,
                        mib(collected.shared_freed_bytes)
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1}M", bytes as f64 / f64::from(1 << 20))
}

async fn list(config: &ConnectionConfig, json: bool) -> anyhow::Result<ExitCode> {
    let templates = cove_sdk::templates::list(config)
        .await
        .context("cannot list templates")?;
    if json {
        print_json(&templates)?;
    } else {
        println!(
            "{:<22} {:<28} {:>5} {:>8} {:<8} {:<9} CREATED",
            "ID", "ALIASES", "CPUS", "MEMORY", "STATUS", "RUNTIME"
        );
        for t in templates {
            println!(
                "{:<22} {:<28} {:>5} {:>8} {:<8} {:<9} {}",
                t.template_id,
                t.aliases.join(","),
                t.cpu_count,
                format!("{}M", t.memory_mb),
                t.build_status,
                t.runtime.as_deref().unwrap_or("default"),
                t.created_at
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The Dockerfile `path` names (itself, or `Dockerfile` in it) and its context directory.
fn dockerfile_at(path: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    if path.is_dir() {
        let file = path.join("Dockerfile");
        anyhow::ensure!(file.is_file(), "{} holds no Dockerfile", path.display());
        return Ok((file, path.to_owned()));
    }
    let context = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((path.to_owned(), context))
}

async fn build(
    config: &ConnectionConfig,
    path: &Path,
    request: NewTemplate,
    cmd: Option<String>,
    ready_cmd: Option<String>,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let (file, context) = dockerfile_at(path)?;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let plan = dockerfile::parse(&text).with_context(|| format!("in {}", file.display()))?;
    for (line, word) in &plan.ignored {
        eprintln!(
            "{}:{line}: {word} has no part in a template; left out",
            file.display()
        );
    }
    let requested = cove_sdk::templates::request_build(config, &request)
        .await
        .context("cannot ask for the build")?;
    let mut steps = Vec::new();
    for step in &plan.steps {
        let files_hash = if step.copy_src.is_some() {
            let (archive, hash) = dockerfile::pack(&context, step)?;
            let had =
                cove_sdk::templates::upload_files(config, &requested.template_id, &hash, archive)
                    .await
                    .with_context(|| format!("cannot upload the files of COPY {}", step.args[0]))?;
            if had {
                eprintln!("COPY {}: the server has these files already", step.args[0]);
            }
            Some(hash)
        } else {
            None
        };
        steps.push(dockerfile::api_step(step, files_hash));
    }
    let start = BuildStart {
        from_image: Some(plan.from_image.clone()),
        force,
        steps,
        start_cmd: cmd.or(plan.start_cmd),
        ready_cmd,
        ..Default::default()
    };
    cove_sdk::templates::start_build(config, &requested.template_id, &requested.build_id, &start)
        .await
        .context("cannot start the build")?;
    let name = request.name.unwrap_or_default();
    eprintln!(
        "building {name} (template {}, build {})",
        requested.template_id, requested.build_id
    );
    let mut offset = 0u64;
    let mut bars = Bars::default();
    loop {
        let info = cove_sdk::templates::build_status(
            config,
            &requested.template_id,
            &requested.build_id,
            offset,
        )
        .await
        .context("cannot read the build's status")?;
        offset += info.log_entries.len() as u64;
        for entry in &info.log_entries {
            bars.show(entry);
        }
        // A finished build's log may take more pages than one.
        if info.status.is_finished() && !info.log_entries.is_empty() {
            continue;
        }
        match info.status {
            BuildStatus::Ready => {
                bars.finish();
                println!("{name} is ready (template {})", info.template_id);
                return Ok(ExitCode::SUCCESS);
            }
            BuildStatus::Error => {
                bars.finish();
                // The message names the failing step.
                let reason = info.reason.map(|r| r.message);
                eprintln!(
                    "the build failed: {}",
                    reason.unwrap_or_else(|| "no reason given".to_owned())
                );
                return Ok(ExitCode::FAILURE);
            }
            BuildStatus::Waiting | BuildStatus::Building => tokio::time::sleep(POLL).await,
        }
    }
}

/// Log lines, and a progress bar per download the log reports progress of.
#[derive(Default)]
struct Bars {
    bars: HashMap<String, ProgressBar>,
}

impl Bars {
    fn show(&mut self, entry: &BuildLogEntry) {
        let step = entry.step.as_deref().unwrap_or("-");
        let Some(progress) = entry.progress else {
            let line = format!("[{step}] {}", entry.message);
            // Above the bars on a terminal; bars are hidden elsewhere, lines are not.
            match self.bars.values().find(|b| !b.is_hidden()) {
                Some(bar) => bar.println(line),
                None => eprintln!("{line}"),
            }
            return;
        };
        let bar = self
            .bars
            .entry(entry.message.clone())
            .or_insert_with(|| new_bar(progress.total, &entry.message));
        bar.set_position(progress.done);
        if progress.done >= progress.total {
            bar.finish();
        }
    }

    fn finish(&mut self) {
        for bar in self.bars.values() {
            bar.finish();
        }
    }
}

fn new_bar(total: u64, message: &str) -> ProgressBar {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:30!} {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(message.to_owned());
    bar
}

async fn import(
    config: &ConnectionConfig,
    path: &Path,
    name: &str,
    image: Option<&str>,
    runtime: Option<&str>,
) -> anyhow::Result<ExitCode> {
    // A layout directory goes as a tar of it; an archive as it is.
    let (archive, _dir) = if path.is_dir() {
        let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
        let tar_path = dir.path().join("layout.tar");
        let file = std::fs::File::create(&tar_path).context("cannot write the layout's tar")?;
        let mut tar = tar::Builder::new(file);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", path)
            .with_context(|| format!("cannot pack {}", path.display()))?;
        tar.finish().context("cannot write the layout's tar")?;
        (tar_path, Some(dir))
    } else {
        (path.to_owned(), None)
    };
    let imported = cove_sdk::templates::import(config, name, image, runtime, &archive)
        .await
        .with_context(|| format!("cannot import {}", path.display()))?;
    println!("{name} is ready (template {})", imported.template_id);
    Ok(ExitCode::SUCCESS)
}

async fn tags(
    config: &ConnectionConfig,
    command: Option<TagsCommand>,
    template: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    match command {
        Some(TagsCommand::Add { target, tags }) => {
            let assigned = cove_sdk::templates::assign_tags(config, &target, tags)
                .await
                .with_context(|| format!("cannot tag {target}"))?;
            println!(
                "build {} tagged {}",
                assigned.build_id,
                assigned.tags.join(", ")
            );
        }
        Some(TagsCommand::Rm { template, tags }) => {
            cove_sdk::templates::delete_tags(config, &template, tags)
                .await
                .with_context(|| format!("cannot take tags off {template}"))?;
        }
        None => {
            let template = template.context("name the template whose tags to list")?;
            let tags = cove_sdk::templates::tags(config, &template)
                .await
                .with_context(|| format!("cannot list the tags of {template}"))?;
            if json {
                print_json(&tags)?;
            } else {
                println!("{:<20} {:<38} CREATED", "TAG", "BUILD");
                for t in tags {
                    println!("{:<20} {:<38} {}", t.tag, t.build_id, t.created_at);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
