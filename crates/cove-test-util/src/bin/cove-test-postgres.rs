//! For test suites outside Rust (tests/compat): a real PostgreSQL of the test's own
//! ([`cove_test_util::TestPostgres`]). Prints its URL on a line of stdout once it accepts
//! connections, and runs until stdin closes; then it stops the server and removes its
//! cluster, so nothing is left behind.

use std::{
    io::{Read, Write},
    process::ExitCode,
};

use cove_test_util::TestPostgres;

fn main() -> ExitCode {
    if !TestPostgres::installed() {
        eprintln!(
            "cove-test-postgres: PostgreSQL is not installed under /usr/lib/postgresql \
             (Debian package postgresql)"
        );
        return ExitCode::FAILURE;
    }
    let postgres = TestPostgres::start();
    println!("{}", postgres.url());
    let _ = std::io::stdout().flush();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(postgres);
    ExitCode::SUCCESS
}
