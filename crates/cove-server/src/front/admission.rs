//! Who may open another connection: at most so many in all and so many per client address.
//! A connection beyond either limit is refused at once, before anything of it is read.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex, MutexGuard},
};

/// Counts of open connections against their limits.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_client: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The server has as many connections as it allows.
    Full,
    /// The client's address has as many connections as one address may have.
    ClientFull,
}

impl Refusal {
    /// The answer written (without waiting) to a refused connection before it is closed: a
    /// 503 in the shape E2B clients read errors in, telling them to come back later.
    pub fn answer(self) -> &'static [u8] {
        match self {
            Refusal::Full => FULL_ANSWER,
            Refusal::ClientFull => CLIENT_FULL_ANSWER,
        }
    }
}

const FULL_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 60\r\n\r\n\
{\"code\":503,\"message\":\"the server has too many connections\"}";

const CLIENT_FULL_ANSWER: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 63\r\n\r\n\
{\"code\":503,\"message\":\"too many connections from your address\"}";

/// One admitted connection; dropping it (when the socket closes) frees its place.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    client: IpAddr,
}

impl Admission {
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_client,
            counts: Mutex::default(),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `peer`, or says why not.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refusal> {
        let client = client_of(peer);
        let mut counts = self.counts();
        if counts.total >= self.max_total {
            return Err(Refusal::Full);
        }
        let open = counts.per_client.entry(client).or_default();
        if *open >= self.max_per_client {
            return Err(Refusal::ClientFull);
        }
        *open += 1;
        counts.total += 1;
        Ok(Permit {
            admission: self.clone(),
            client,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts().total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(open) = counts.per_client.get_mut(&self.client) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                counts.per_client.remove(&self.client);
            }
        }
    }
}

/// The address a per-client limit counts against: an IPv4 address (also one written as
/// IPv6), or an IPv6 address's /64, which one host or household usually owns whole.
fn client_of(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_hold_in_all_and_per_client() {
        let admission = Admission::new(3, 2);
        let a1 = admission.admit(ip("10.0.0.1")).unwrap();
        let _a2 = admission.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.1")).unwrap_err(),
            Refusal::ClientFull
        );
        let _b1 = admission.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(admission.admit(ip("10.0.0.3")).unwrap_err(), Refusal::Full);
        assert_eq!(admission.open(), 3);
        drop(a1);
        assert_eq!(admission.open(), 2);
        let _a3 = admission.admit(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn closed_connections_leave_no_entries_behind() {
        let admission = Admission::new(10, 10);
        for n in 0..100u8 {
            drop(admission.admit(IpAddr::from([10, 0, 0, n])).unwrap());
        }
        assert!(admission.counts().per_client.is_empty());
        assert_eq!(admission.open(), 0);
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let admission = Admission::new(10, 1);
        let _first = admission.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            admission.admit(ip("2001:db8:1:2:ffff::9")).unwrap_err(),
            Refusal::ClientFull
        );
        let _other = admission.admit(ip("2001:db8:1:3::1")).unwrap();
        let _v4 = admission.admit(ip("::ffff:10.0.0.1")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.1")).unwrap_err(),
            Refusal::ClientFull
        );
    }

    #[test]
    fn refusals_are_complete_json_answers() {
        for refusal in [Refusal::Full, Refusal::ClientFull] {
            let answer = std::str::from_utf8(refusal.answer()).unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(length, body.len(), "{answer}");
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(json["code"], 503);
        }
    }
}
