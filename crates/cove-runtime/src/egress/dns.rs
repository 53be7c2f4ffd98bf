//! The host's name servers, from `/etc/resolv.conf`, re-read when the file changes (DHCP
//! and VPN clients rewrite it; slirp4netns follows it too, so the filter must).

use std::{
    collections::BTreeSet,
    fs,
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// The host's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// A `resolv.conf` and what it said when last read.
#[derive(Debug)]
pub struct ResolvConf {
    path: PathBuf,
    /// Device, inode, size and modification time when last read (`None` inside: there was
    /// no file): a rewrite or a replacement changes one.
    stamp: Option<Option<Stamp>>,
}

/// What tells one version of a file from another.
type Stamp = (u64, u64, u64, i64, i64);

impl ResolvConf {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            stamp: None,
        }
    }

    /// The name servers, when the file changed since the last call (the first call always
    /// reads it). A missing file lists none.
    pub fn changed(&mut self) -> Option<BTreeSet<IpAddr>> {
        let stamp = fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()));
        if self.stamp == Some(stamp) {
            return None;
        }
        self.stamp = Some(stamp);
        Some(name_servers(&self.path))
    }
}

/// The `nameserver` addresses of the file at `path`.
fn name_servers(path: &Path) -> BTreeSet<IpAddr> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                // An IPv6 server may carry its interface (`fe80::1%eth0`).
                (Some("nameserver"), Some(addr)) => addr.split('%').next()?.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_name_servers_again_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resolv.conf");
        fs::write(
            &path,
            "# comment\nsearch example\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\nnameserver bogus\n",
        )
        .unwrap();
        let mut conf = ResolvConf::new(&path);
        let expected: BTreeSet<IpAddr> =
            ["10.255.255.53".parse().unwrap(), "fe80::1".parse().unwrap()]
                .into_iter()
                .collect();
        assert_eq!(conf.changed(), Some(expected));
        assert_eq!(conf.changed(), None);
        // Replaced the way resolvers do it: a new file renamed over the old one.
        let next = dir.path().join("resolv.conf.new");
        fs::write(&next, "nameserver 192.168.1.1\n").unwrap();
        fs::rename(&next, &path).unwrap();
        let expected: BTreeSet<IpAddr> = ["192.168.1.1".parse().unwrap()].into_iter().collect();
        assert_eq!(conf.changed(), Some(expected));
        fs::remove_file(&path).unwrap();
        assert_eq!(conf.changed(), Some(BTreeSet::new()));
        assert_eq!(conf.changed(), None);
    }
}
