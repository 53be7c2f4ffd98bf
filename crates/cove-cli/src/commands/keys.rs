//! `cove keys`: API keys of a state directory (works whether or not the server runs).

use anyhow::Context;

use super::serve::StateDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    state: StateDir,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, clap::Subcommand)]
enum KeysCommand {
    /// Create a key and print it (it is shown only once).
    Create {
        /// Team the key belongs to; a key sees only its team's sandboxes.
        #[arg(long, default_value = cove_server::DEFAULT_TEAM,
              value_parser = clap::builder::NonEmptyStringValueParser::new())]
        team: String,
        /// A note to recognise the key by.
        #[arg(long, default_value = "created with cove keys")]
        name: String,
    },
    /// List keys (never their secrets).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id.
    Revoke { id: String },
}

pub fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let store = args.state.open_store()?;
    match args.command {
        KeysCommand::Create { team, name } => {
            let (info, secret) = store
                .create_key(&team, &name)
                .context("cannot create a key")?;
            eprintln!("created key {} for team {}", info.id, info.team);
            println!("{secret}");
        }
        KeysCommand::List { json } => {
            let keys = store.list_keys().context("cannot list keys")?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&keys).context("cannot encode keys")?
                );
            } else {
                println!(
                    "{:<14} {:<12} {:<16} {:<8} NAME",
                    "ID", "TEAM", "PREFIX", "STATE"
                );
                for key in keys {
                    let state = if key.revoked { "revoked" } else { "active" };
                    println!(
                        "{:<14} {:<12} {:<16} {:<8} {}",
                        key.id, key.team, key.prefix, state, key.name
                    );
                }
            }
        }
        KeysCommand::Revoke { id } => {
            if !store.revoke_key(&id).context("cannot revoke the key")? {
                anyhow::bail!("no active key with id {id}");
            }
            eprintln!("revoked key {id}");
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
