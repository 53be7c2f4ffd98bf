//! `cove template`: the templates sandboxes are made from.

use std::process::ExitCode;

use anyhow::Context;

use super::connection::{Connection, block_on, print_json};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: TemplateCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TemplateCommand {
    /// List the templates the server offers.
    #[command(alias = "ls")]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a template (not available yet: the server has no template builds).
    Build {
        /// What a build would take (a Dockerfile, a name, …).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        TemplateCommand::List { json } => block_on(async move {
            let config = args.connection.config()?;
            let templates = cove_sdk::templates::list(&config)
                .await
                .context("cannot list templates")?;
            if json {
                print_json(&templates)?;
            } else {
                println!(
                    "{:<22} {:<28} {:>5} {:>8} {:<8} CREATED",
                    "ID", "ALIASES", "CPUS", "MEMORY", "STATUS"
                );
                for t in templates {
                    println!(
                        "{:<22} {:<28} {:>5} {:>8} {:<8} {}",
                        t.template_id,
                        t.aliases.join(","),
                        t.cpu_count,
                        format!("{}M", t.memory_mb),
                        t.build_status,
                        t.created_at
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }),
        TemplateCommand::Build { .. } => anyhow::bail!(
            "template builds are not available: this version of cove serve offers only its \
             built-in templates (see `cove template list`)"
        ),
    }
}
