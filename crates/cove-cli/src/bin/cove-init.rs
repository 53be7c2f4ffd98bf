//! `cove-init`: a sandbox's PID 1 (crate `cove_init`), exec'd by the sandbox's setup stage,
//! never by hand. A binary of its own so that each create execs less than all of `cove`; the
//! same code runs as `cove __sandbox-init --pid1` when no `cove-init` lies beside `cove`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    use cove_runtime::namespace::init::{PID1_FLAG, SUBCOMMAND};
    // The arguments of `cove`'s own PID 1, so that the sandbox sees the same command line.
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    if args != [SUBCOMMAND, PID1_FLAG] {
        eprintln!(
            "cove-init is a sandbox's PID 1, started by `cove serve` inside each sandbox \
             (with `{SUBCOMMAND} {PID1_FLAG}`)"
        );
        return std::process::ExitCode::from(2);
    }
    cove_init::log::install();
    match cove_init::pid1() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cove-init: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
