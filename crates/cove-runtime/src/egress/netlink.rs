//! The host's own addresses, from rtnetlink: a dump of them (`RTM_GETADDR`) and a socket
//! subscribed to their changes (`RTM_NEWADDR` / `RTM_DELADDR` of the IPv4 and IPv6 address
//! groups).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::OwnedFd,
    time::Duration,
};

use rustix::{
    event::{PollFd, PollFlags, Timespec},
    net::{
        AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType, netlink::SocketAddrNetlink,
    },
};

const NLMSG_HDR_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;

/// An address of an interface, as netlink reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct IfAddr {
    pub index: u32,
    pub addr: IpAddr,
}

/// What a netlink message said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Added(IfAddr),
    Removed(IfAddr),
    /// The end of a dump.
    Done,
    /// An error answer (a negative errno), or 0 for an acknowledgement.
    Error(i32),
}

fn socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::NETLINK,
        SocketType::RAW,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Every address of every interface of the host right now.
pub fn dump() -> io::Result<Vec<IfAddr>> {
    let socket = socket()?;
    rustix::net::bind(&socket, &SocketAddrNetlink::new(0, 0))?;
    let mut request = Vec::with_capacity(NLMSG_HDR_LEN + IFADDRMSG_LEN);
    request.extend(((NLMSG_HDR_LEN + IFADDRMSG_LEN) as u32).to_ne_bytes());
    request.extend(RTM_GETADDR.to_ne_bytes());
    request.extend((NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend(1u32.to_ne_bytes()); // sequence number
    request.extend(0u32.to_ne_bytes()); // port id: the kernel fills it in
    request.extend([0u8; IFADDRMSG_LEN]); // AF_UNSPEC: both families
    rustix::net::sendto(
        &socket,
        &request,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut addresses = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (len, _) = rustix::net::recv(&socket, &mut buf[..], RecvFlags::empty())?;
        for event in parse(&buf[..len]) {
            match event {
                Event::Added(addr) => addresses.push(addr),
                Event::Removed(_) => {}
                Event::Done => return Ok(addresses),
                Event::Error(0) => {}
                Event::Error(errno) => return Err(io::Error::from_raw_os_error(-errno)),
            }
        }
    }
}

/// A socket told of every address added to or removed from the host.
#[derive(Debug)]
pub struct Watch {
    socket: OwnedFd,
    buf: Vec<u8>,
}

impl Watch {
    /// Subscribes; changes from now on queue up until [`Watch::next`] reads them.
    pub fn subscribe() -> io::Result<Self> {
        let socket = socket()?;
        rustix::net::bind(
            &socket,
            &SocketAddrNetlink::new(0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR),
        )?;
        Ok(Self {
            socket,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// The changes queued, waiting up to `timeout` for the first. An error of kind
    /// `ENOBUFS` means changes were lost: the caller lists the addresses again.
    pub fn next(&mut self, timeout: Duration) -> io::Result<Vec<Event>> {
        let timeout = Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.socket, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Ok(Vec::new()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(Vec::new()),
            Err(err) => return Err(err.into()),
        }
        let mut events = Vec::new();
        loop {
            match rustix::net::recv(&self.socket, &mut self.buf[..], RecvFlags::DONTWAIT) {
                Ok((len, _)) => events.extend(parse(&self.buf[..len])),
                Err(rustix::io::Errno::AGAIN) => return Ok(events),
                Err(err) => return Err(err.into()),
            }
        }
    }
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The messages of one netlink datagram (malformed ones are skipped).
pub fn parse(buf: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    let mut at = 0;
    while let (Some(len), Some(kind)) = (u32_at(buf, at), u16_at(buf, at + 4)) {
        let len = len as usize;
        if len < NLMSG_HDR_LEN || at + len > buf.len() {
            break;
        }
        let body = &buf[at + NLMSG_HDR_LEN..at + len];
        match kind {
            NLMSG_DONE => events.push(Event::Done),
            NLMSG_ERROR => {
                if let Some(errno) = u32_at(body, 0) {
                    events.push(Event::Error(errno as i32));
                }
            }
            RTM_NEWADDR | RTM_DELADDR => {
                if let Some(addr) = if_addr(body) {
                    events.push(match kind {
                        RTM_NEWADDR => Event::Added(addr),
                        _ => Event::Removed(addr),
                    });
                }
            }
            _ => {}
        }
        at += align4(len);
    }
    events
}

/// The address of an `ifaddrmsg` and its attributes: `IFA_LOCAL` where present (on a
/// point-to-point link `IFA_ADDRESS` is the peer's), else `IFA_ADDRESS`.
fn if_addr(body: &[u8]) -> Option<IfAddr> {
    let family = *body.first()?;
    let index = u32_at(body, 4)?;
    let (mut address, mut local) = (None, None);
    let mut at = IFADDRMSG_LEN;
    while let (Some(len), Some(kind)) = (u16_at(body, at), u16_at(body, at + 2)) {
        let len = usize::from(len);
        if len < 4 || at + len > body.len() {
            break;
        }
        let data = &body[at + 4..at + len];
        let addr = match (i32::from(family), data.len()) {
            (libc::AF_INET, 4) => <[u8; 4]>::try_from(data)
                .ok()
                .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            (libc::AF_INET6, 16) => <[u8; 16]>::try_from(data)
                .ok()
                .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
            _ => None,
        };
        match kind {
            IFA_ADDRESS => address = addr,
            IFA_LOCAL => local = addr,
            _ => {}
        }
        at += align4(len);
    }
    Some(IfAddr {
        index,
        addr: local.or(address)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One address message as the kernel sends it.
    fn message(kind: u16, family: u8, index: u32, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![family, 24, 0, 0];
        body.extend(index.to_ne_bytes());
        for (kind, data) in attrs {
            body.extend(((4 + data.len()) as u16).to_ne_bytes());
            body.extend(kind.to_ne_bytes());
            body.extend(*data);
            body.resize(align4(body.len()), 0);
        }
        let mut msg = ((NLMSG_HDR_LEN + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend(kind.to_ne_bytes());
        msg.extend([0u8; 10]);
        msg.extend(body);
        msg
    }

    #[test]
    fn parses_address_changes() {
        let mut datagram = message(
            RTM_NEWADDR,
            libc::AF_INET as u8,
            3,
            &[(IFA_ADDRESS, &[10, 0, 0, 2]), (IFA_LOCAL, &[10, 0, 0, 1])],
        );
        let v6: Ipv6Addr = "fd00::2".parse().unwrap();
        datagram.extend(message(
            RTM_DELADDR,
            libc::AF_INET6 as u8,
            2,
            &[(IFA_ADDRESS, &v6.octets())],
        ));
        datagram.extend(message(NLMSG_DONE, 0, 0, &[]));
        assert_eq!(
            parse(&datagram),
            [
                Event::Added(IfAddr {
                    index: 3,
                    addr: "10.0.0.1".parse().unwrap()
                }),
                Event::Removed(IfAddr {
                    index: 2,
                    addr: IpAddr::V6(v6)
                }),
                Event::Done,
            ]
        );
        // A truncated message ends the datagram instead of being read past its end.
        assert_eq!(parse(&datagram[..20]), []);
    }

    #[test]
    fn dumps_the_hosts_addresses() {
        let addresses = dump().unwrap();
        assert!(
            addresses
                .iter()
                .any(|a| a.addr == IpAddr::V4(Ipv4Addr::LOCALHOST))
        );
    }
}
