//! One module per subcommand: each parses its arguments and calls a library.

pub mod agent;
pub mod completions;
pub mod connection;
pub mod cp;
pub mod dockerfile;
pub mod doctor;
pub mod exec;
pub mod keys;
pub mod logs;
pub mod nodes;
pub mod sandbox;
pub mod sandbox_init;
pub mod serve;
pub mod shell;
pub mod teams;
pub mod template;
pub mod volume;
