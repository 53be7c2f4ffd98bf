//! The catalogue of templates teams built: templates and their names, builds (status, log,
//! why they failed, the layers they made), tags naming builds, the build cache, and the build
//! contexts uploaded. It lives in the state database beside keys and sandboxes, on a
//! connection of its own, so a restarted server finds every template again.
//!
//! A template belongs to one team; its name (E2B's alias) is unique on the server, so a name
//! another team holds is refused rather than shadowed. Each build that finished is reachable
//! through its tags (`default` unless the build asked for others); `name` alone means
//! `name:default`.

mod builds;
mod cache;
mod logs;
mod tags;
mod templates;

use cove_db::{Db, Location};

pub use self::{
    builds::{BuildRow, Built},
    cache::Cached,
    logs::{MAX_ENTRIES as MAX_LOG_ENTRIES, level_rank},
    tags::TagRow,
    templates::{Owner, TemplateRow},
};

/// The tag a build takes when it names none, and the one a bare name means.
pub const DEFAULT_TAG: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("template catalogue query failed")]
    Query(#[from] cove_db::DbError),
    #[error("a stored template record is unreadable")]
    Record(#[from] serde_json::Error),
}

pub type Result<T> = std::result::Result<T, CatalogError>;

impl CatalogError {
    /// Whether the database could not be written because its disk is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, CatalogError::Query(err) if err.is_disk_full())
    }

    /// Whether the database server could not be reached.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CatalogError::Query(err) if err.is_unavailable())
    }
}

/// The catalogue (see the module documentation).
pub struct Catalog {
    db: Db,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    /// Opens the catalogue in the database at `location` (on a connection of its own).
    pub fn open(location: &Location) -> Result<Self> {
        Ok(Self {
            db: Db::open(location)?,
        })
    }
}

/// Whether `name` may be a template's name: 1 to 128 of `a-z 0-9 . _ -`, starting with a
/// letter or digit (E2B's rule, lowercase as its CLI makes them).
pub fn valid_name(name: &str) -> bool {
    valid_word(name, |b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Whether `tag` may be a tag: 1 to 128 of `A-Z a-z 0-9 . _ -`, starting with a letter or
/// digit.
pub fn valid_tag(tag: &str) -> bool {
    valid_word(tag, |b| b.is_ascii_alphanumeric())
}

/// 1 to 128 bytes, the first a `letter` and the rest letters, `.`, `_` or `-`.
fn valid_word(word: &str, letter: impl Fn(u8) -> bool) -> bool {
    let bytes = word.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && letter(bytes[0])
        && bytes
            .iter()
            .all(|b| letter(*b) || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_tags() {
        assert!(valid_name("my-app") && valid_name("a.b_c-1") && valid_name("1st"));
        assert!(!valid_name("") && !valid_name("My-App") && !valid_name("-x"));
        assert!(!valid_name("team/app") && !valid_name("a:b") && !valid_name(&"a".repeat(129)));
        assert!(valid_tag("v2") && valid_tag("Prod.1") && !valid_tag("a:b") && !valid_tag(""));
    }

    /// Templates, names, builds, tags, logs and the cache, the same on both backends.
    #[test]
    fn the_catalogue_keeps_templates_builds_tags_and_logs() {
        crate::test_backends::each(|location| {
            let catalog = Catalog::open(location).unwrap();
            let made = catalog
                .create_template("t1", "team", "app", 2, 512, Some("gvisor"))
                .unwrap();
            let taken = catalog
                .create_template("t2", "team", "app", 1, 256, None)
                .unwrap_err();
            assert!(
                matches!(taken, CatalogError::Query(ref e) if e.is_conflict()),
                "{taken:?}"
            );
            assert!(
                catalog.template("t2").unwrap().is_none(),
                "a failed create leaves nothing"
            );
            catalog.set_template_resources("t1", 4, 1024).unwrap();
            catalog.note_spawn("t1").unwrap();
            let row = catalog.template("t1").unwrap().unwrap();
            assert_eq!(
                (
                    row.cpu_count,
                    row.memory_mb,
                    row.spawn_count,
                    row.runtime.as_deref()
                ),
                (4, 1024, 1, Some("gvisor"))
            );
            assert_eq!(row.names, ["app"]);
            assert!(
                matches!(catalog.find("team", "app").unwrap(), Owner::Team(r) if r.id == made.id)
            );
            assert_eq!(catalog.find("other", "app").unwrap(), Owner::OtherTeam);

            let build = catalog.new_build("b1", "t1", &["v1".to_owned()]).unwrap();
            assert!(catalog.trigger_build("b1").unwrap());
            assert!(!catalog.trigger_build("b1").unwrap());
            let entries = |n: u64| {
                (0..n)
                    .map(|i| cove_proto::templates::BuildLogEntry {
                        timestamp: String::new(),
                        message: format!("line {i}"),
                        level: if i % 2 == 0 { "info" } else { "debug" }.to_owned(),
                        step: None,
                        progress: None,
                    })
                    .collect::<Vec<_>>()
            };
            let next = catalog.append_logs("b1", 0, &entries(5)).unwrap();
            assert_eq!(next, 5);
            assert_eq!(catalog.log_len("b1").unwrap(), 5);
            assert_eq!(
                catalog.read_logs("b1", 1, 10, Some("info")).unwrap().len(),
                2
            );
            let built = Built {
                layers: vec!["l1".into()],
                ..Default::default()
            };
            catalog.finish_build("b1", Ok(&built)).unwrap();
            assert_eq!(catalog.assign_tag("t1", "v1", "b1").unwrap(), None);
            let ready = catalog.tagged_build("t1", "v1").unwrap().unwrap();
            assert_eq!(
                (ready.id.as_str(), ready.result),
                (build.id.as_str(), Some(built))
            );
            assert_eq!(catalog.tag_count("b1").unwrap(), 1);
            assert_eq!(
                catalog.remove_tag("t1", "v1").unwrap().as_deref(),
                Some("b1")
            );

            catalog.cache_step("k", None).unwrap();
            assert_eq!(catalog.cached_step("k").unwrap(), Cached::NoLayer);
            catalog.cache_step("k", Some("l1")).unwrap();
            assert_eq!(
                catalog.cached_step("k").unwrap(),
                Cached::Layer("l1".into())
            );
            assert_eq!(catalog.forget_cached_layers(&|_| false).unwrap(), 1);
            catalog.note_upload("team", "h").unwrap();
            assert!(catalog.has_upload("team", "h").unwrap());

            assert_eq!(catalog.delete_template("t1").unwrap(), ["b1"]);
            assert_eq!(catalog.log_len("b1").unwrap(), 0);
            assert_eq!(catalog.find("team", "app").unwrap(), Owner::Nobody);
        });
    }
}
