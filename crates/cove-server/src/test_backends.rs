//! The state database's backends, for the store's tests: each test runs on both.

use cove_db::Location;
use cove_test_util::TestPostgres;

/// Runs `test` on a fresh SQLite file, then on a fresh PostgreSQL server (where it is
/// installed: CI installs it). `test` may open the location as often as it likes, as
/// processes sharing it would.
pub fn each(test: impl Fn(&Location)) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    test(&Location::File(dir.path().join("state.db")));
    if !TestPostgres::installed() {
        eprintln!("SKIPPED on PostgreSQL: it is not installed (Debian package postgresql)");
        return;
    }
    let server = TestPostgres::start();
    test(&Location::Postgres(server.url()));
}
