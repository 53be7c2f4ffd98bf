//! One module per subcommand: each parses its arguments and calls a library.

pub mod agent;
pub mod keys;
pub mod sandbox_init;
pub mod serve;
