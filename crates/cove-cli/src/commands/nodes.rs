//! `cove nodes`: the nodes of a cluster, as they last reported themselves to its database;
//! drain one (it takes no new sandboxes and lets its own finish) or let it take them again.

use anyhow::Context;
use cove_server::cluster::Nodes;

use super::serve::StateDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: StateDir,
    #[command(subcommand)]
    command: NodesCommand,
}

#[derive(Debug, clap::Subcommand)]
enum NodesCommand {
    /// List the nodes: state, address, what they have free, their last report.
    #[command(alias = "ls")]
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drain a node: it takes no new sandboxes (within a heartbeat) and lets its own run to
    /// their end; kept across its restarts.
    Drain { node: String },
    /// Let a drained node take new sandboxes again.
    Undrain { node: String },
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let store = args.state.open_store()?;
    let nodes = Nodes(store.db());
    match args.command {
        NodesCommand::List { json } => {
            let listed = nodes.list().context("cannot list the nodes")?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&listed).context("cannot encode the nodes")?
                );
            } else {
                println!(
                    "{:<20} {:<9} {:<28} {:>9} {:>10} {:>5} LAST REPORT",
                    "NODE", "STATE", "ADDRESS", "SANDBOXES", "FREE MEM", "CPUS"
                );
                for node in listed {
                    println!(
                        "{:<20} {:<9} {:<28} {:>9} {:>10} {:>5} {}",
                        node.id,
                        node.state.as_str(),
                        node.address,
                        format!(
                            "{}/{}",
                            node.capacity.sandboxes, node.capacity.max_sandboxes
                        ),
                        format!("{}M", node.capacity.memory_free_mb),
                        node.capacity.cpus,
                        cove_server::clock::rfc3339(node.heartbeat_at),
                    );
                }
            }
        }
        NodesCommand::Drain { node } => {
            anyhow::ensure!(
                nodes
                    .set_draining(&node, true)
                    .context("cannot drain the node")?,
                "there is no node {node:?} (cove nodes list)"
            );
            println!("{node} is draining: it takes no new sandboxes");
        }
        NodesCommand::Undrain { node } => {
            anyhow::ensure!(
                nodes
                    .set_draining(&node, false)
                    .context("cannot undrain the node")?,
                "there is no node {node:?} (cove nodes list)"
            );
            println!("{node} takes new sandboxes again");
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
