//! E2B's `maskRequestHost`: the `Host` requests to a sandbox's ports carry, whatever the
//! client sent (a dev server that answers only `localhost` is reached as `localhost`).
//! `${PORT}` in it stands for the port the request goes to. The agent's port is not masked.

use cove_proto::rest::SandboxNetwork;

use super::LifecycleError;

/// What stands for the port in a mask.
pub const PORT_PLACEHOLDER: &str = "${PORT}";

/// The mask of a create's `network`, checked: `HOST` or `HOST:PORT`, the host a DNS name, an
/// IPv4 address or a bracketed IPv6 one, ASCII only; `${PORT}` may stand in either part.
pub fn from_create(network: Option<&SandboxNetwork>) -> Result<Option<String>, LifecycleError> {
    let Some(mask) = network
        .and_then(|n| n.mask_request_host.as_deref())
        .filter(|m| !m.is_empty())
    else {
        return Ok(None);
    };
    match valid(&mask.replace(PORT_PLACEHOLDER, "1")) {
        true => Ok(Some(mask.to_owned())),
        false => Err(LifecycleError::BadRequest(format!(
            "network.maskRequestHost `{mask}` is not HOST or HOST:PORT (ASCII; `{PORT_PLACEHOLDER}` stands for the sandbox port a request goes to, e.g. localhost:{PORT_PLACEHOLDER})"
        ))),
    }
}

/// The `Host` of a request to `port` under `mask`.
pub fn host_for(mask: &str, port: u16) -> String {
    mask.replace(PORT_PLACEHOLDER, &port.to_string())
}

fn valid(authority: &str) -> bool {
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((v6, after)) if v6.parse::<std::net::Ipv6Addr>().is_ok() => {
                match after.strip_prefix(':') {
                    Some(port) => (None, Some(port)),
                    None if after.is_empty() => (None, None),
                    None => return false,
                }
            }
            _ => return false,
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        },
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    let host_ok = host.is_none_or(|h| {
        !h.is_empty()
            && h.len() <= 253
            && h.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    });
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(text: &str) -> Result<Option<String>, LifecycleError> {
        from_create(Some(&SandboxNetwork {
            mask_request_host: Some(text.to_owned()),
            ..SandboxNetwork::default()
        }))
    }

    #[test]
    fn masks_are_host_and_port_with_the_placeholder() {
        for good in [
            "localhost",
            "localhost:${PORT}",
            "${PORT}-app.example.com",
            "app.example.com:8080",
            "127.0.0.1:${PORT}",
            "[::1]:${PORT}",
            "[2001:db8::1]",
        ] {
            assert_eq!(mask(good).unwrap().as_deref(), Some(good), "{good}");
        }
        for bad in [
            "http://localhost",
            "localhost:99999",
            "localhost:0",
            "bad host",
            "host\r\nX-Injected: 1",
            "[::1",
            "[nope]:80",
            "exämple.com",
            "a..b",
            "localhost:",
        ] {
            let err = mask(bad).unwrap_err().to_string();
            assert!(err.contains("maskRequestHost"), "{bad}: {err}");
        }
        assert_eq!(mask("").unwrap(), None);
        assert_eq!(from_create(None).unwrap(), None);
        assert_eq!(host_for("localhost:${PORT}", 3000), "localhost:3000");
        assert_eq!(host_for("${PORT}-x.example.com", 80), "80-x.example.com");
    }
}
