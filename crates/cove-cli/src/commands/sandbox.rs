//! `cove sandbox`: create, list, inspect, extend and kill sandboxes.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use cove_sdk::{CreateOptions, Sandbox, rest::ListedSandbox};

use super::connection::{Connection, block_on, duration, key_value, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: SandboxCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SandboxCommand {
    /// Create a sandbox and print its id.
    Create {
        /// Template id or alias.
        #[arg(long, short, default_value = "base")]
        template: String,
        /// Lifetime: seconds or `10m`, `1h` (the server's default is 300 s).
        #[arg(long, value_parser = duration)]
        timeout: Option<Duration>,
        /// Metadata `KEY=VALUE` (repeatable).
        #[arg(long = "metadata", short, value_parser = key_value)]
        metadata: Vec<(String, String)>,
        /// Environment variable of every process, `KEY=VALUE` (repeatable).
        #[arg(long = "env", short, value_parser = key_value)]
        envs: Vec<(String, String)>,
        /// No egress to the internet.
        #[arg(long)]
        no_internet: bool,
        /// CPUs the sandbox may use.
        #[arg(long)]
        cpu_count: Option<u32>,
        /// Memory limit in MiB.
        #[arg(long)]
        memory_mb: Option<u64>,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List running sandboxes.
    #[command(alias = "ls")]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one sandbox.
    Info {
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a sandbox's CPU, memory and disk use, measured now.
    Metrics {
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Kill sandboxes.
    #[command(alias = "rm")]
    Kill {
        /// Sandboxes to kill.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Kill every sandbox the key can see.
        #[arg(long)]
        all: bool,
    },
    /// Set a sandbox to end this long from now (shorter or longer than before).
    Timeout {
        id: String,
        /// Seconds, or `10m`, `1h`.
        #[arg(value_parser = duration)]
        timeout: Duration,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    block_on(async move {
        let config = args.connection.config()?;
        match args.command {
            SandboxCommand::Create {
                template,
                timeout,
                metadata,
                envs,
                no_internet,
                cpu_count,
                memory_mb,
                json,
            } => {
                let options = CreateOptions {
                    template: Some(template.clone()),
                    timeout,
                    metadata: metadata.into_iter().collect(),
                    envs: envs.into_iter().collect(),
                    allow_internet_access: no_internet.then_some(false),
                    cpu_count,
                    memory_mb,
                    ..CreateOptions::default()
                };
                let sandbox = Sandbox::create(&config, options)
                    .await
                    .with_context(|| format!("cannot create a sandbox from {template}"))?;
                if json {
                    print_json(&sandbox.info().await.context("cannot read it back")?)?;
                } else {
                    println!("{}", sandbox.id());
                }
            }
            SandboxCommand::List { json } => {
                let sandboxes = Sandbox::list(&config)
                    .await
                    .context("cannot list sandboxes")?;
                if json {
                    print_json(&sandboxes)?;
                } else {
                    print_table(&sandboxes);
                }
            }
            SandboxCommand::Info { id, json } => {
                let info = Sandbox::info_by_id(&config, &id)
                    .await
                    .with_context(|| format!("cannot get sandbox {id}"))?;
                if json {
                    print_json(&info)?;
                } else {
                    let s = &info.listed;
                    let mut lines = vec![
                        ("id", s.sandbox_id.clone()),
                        ("template", s.template_id.clone()),
                        ("state", format!("{:?}", s.state).to_lowercase()),
                        ("started", s.started_at.clone()),
                        ("ends", s.end_at.clone()),
                        ("cpus", s.cpu_count.to_string()),
                        ("memory", format!("{} MiB", s.memory_mb)),
                        ("disk", format!("{} MiB", s.disk_size_mb)),
                        ("envd", s.envd_version.clone()),
                    ];
                    if let Some(domain) = &info.domain {
                        lines.push(("domain", domain.clone()));
                    }
                    if let Some(internet) = info.allow_internet_access {
                        lines.push(("internet", internet.to_string()));
                    }
                    lines.extend(
                        s.metadata
                            .iter()
                            .map(|(k, v)| ("metadata", format!("{k}={v}"))),
                    );
                    for (key, value) in lines {
                        println!("{key:<9} {value}");
                    }
                }
            }
            SandboxCommand::Metrics { id, json } => {
                let metrics = Sandbox::metrics_by_id(&config, &id)
                    .await
                    .with_context(|| format!("cannot get the metrics of sandbox {id}"))?;
                if json {
                    print_json(&metrics)?;
                } else {
                    println!(
                        "{:<25} {:>6} {:>12} {:>12} {:>12} {:>12}",
                        "TIME", "CPU%", "MEM USED", "MEM TOTAL", "DISK USED", "DISK TOTAL"
                    );
                    for m in metrics {
                        println!(
                            "{:<25} {:>6.1} {:>12} {:>12} {:>12} {:>12}",
                            m.timestamp,
                            m.cpu_used_pct,
                            mib(m.mem_used),
                            mib(m.mem_total),
                            mib(m.disk_used),
                            mib(m.disk_total)
                        );
                    }
                }
            }
            SandboxCommand::Kill { ids, all } => {
                let ids = if all {
                    Sandbox::list(&config)
                        .await
                        .context("cannot list sandboxes")?
                        .into_iter()
                        .map(|s| s.sandbox_id)
                        .collect()
                } else {
                    ids
                };
                let mut missing = Vec::new();
                for id in ids {
                    if Sandbox::kill_by_id(&config, &id)
                        .await
                        .with_context(|| format!("cannot kill sandbox {id}"))?
                    {
                        eprintln!("killed {id}");
                    } else {
                        missing.push(id);
                    }
                }
                if !missing.is_empty() {
                    anyhow::bail!("no such sandbox: {}", missing.join(", "));
                }
            }
            SandboxCommand::Timeout { id, timeout } => {
                Sandbox::set_timeout_by_id(&config, &id, timeout)
                    .await
                    .with_context(|| format!("cannot set the timeout of sandbox {id}"))?;
                eprintln!(
                    "sandbox {id} now ends in {}",
                    humantime::format_duration(timeout)
                );
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

fn print_table(sandboxes: &[ListedSandbox]) {
    println!(
        "{:<22} {:<12} {:<25} {:<25} METADATA",
        "ID", "TEMPLATE", "STARTED", "ENDS"
    );
    for s in sandboxes {
        let metadata = s
            .metadata
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        println!(
            "{:<22} {:<12} {:<25} {:<25} {metadata}",
            s.sandbox_id, s.template_id, s.started_at, s.end_at
        );
    }
}
