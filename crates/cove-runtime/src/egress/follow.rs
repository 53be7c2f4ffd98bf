//! The thread that keeps the filter's maps current: addresses the host gains are refused
//! as netlink reports them (within milliseconds), addresses it loses are opened again, and
//! the name servers follow `resolv.conf`. It ends when the filter is dropped.

use std::{
    io,
    sync::{Arc, Weak},
    time::Duration,
};

use super::{
    Shared,
    dns::ResolvConf,
    netlink::{self, Event, Watch},
};

/// How long a wait for netlink lasts: also how often `resolv.conf` is looked at, and how
/// late the thread notices the filter is gone.
const TICK: Duration = Duration::from_secs(1);

pub(super) fn spawn(shared: Weak<Shared>, watch: Watch, resolv: ResolvConf) -> io::Result<()> {
    std::thread::Builder::new()
        .name("cove-egress".into())
        .spawn(move || follow(&shared, watch, resolv))
        .map(drop)
}

fn follow(shared: &Weak<Shared>, mut watch: Watch, mut resolv: ResolvConf) {
    loop {
        let events = watch.next(TICK);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let mut state = shared.state();
        let mut changed = false;
        match events {
            Ok(events) => {
                for event in events {
                    changed |= match event {
                        Event::Added(addr) => {
                            tracing::info!(addr = %addr.addr, "the host gained an address; refusing it to sandboxes");
                            state.addresses.insert(addr)
                        }
                        Event::Removed(addr) => {
                            tracing::info!(addr = %addr.addr, "the host lost an address");
                            state.addresses.remove(&addr)
                        }
                        Event::Done | Event::Error(_) => false,
                    };
                }
            }
            // Changes were lost (the queue overflowed): list them all again.
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => match netlink::dump() {
                Ok(addresses) => {
                    state.addresses = addresses.into_iter().collect();
                    changed = true;
                }
                Err(err) => tracing::error!(%err, "cannot list the host's addresses"),
            },
            Err(err) => {
                tracing::error!(%err, "cannot follow the host's addresses");
                drop(state);
                std::thread::sleep(TICK);
                continue;
            }
        }
        if let Some(name_servers) = resolv.changed()
            && name_servers != state.name_servers
        {
            tracing::info!(?name_servers, "the host's name servers changed");
            state.name_servers = name_servers;
            changed = true;
        }
        if changed && let Err(err) = shared.sync(&mut state) {
            tracing::error!(err = %super::error_chain(&err), "cannot update the egress filter");
        }
        drop(state);
        drop::<Arc<Shared>>(shared);
    }
}
