//! Setting headers in an HTTP/1 request head (E2B's `rules`): the request line is kept, the
//! rule's headers replace any of the same name, and `Connection: close` ends the connection
//! after this request, so a next request on it — which the proxy does not read — never
//! reaches the server without them.

/// Headers about the connection, replaced by `Connection: close`.
const CONNECTION_HEADERS: [&str; 3] = ["connection", "keep-alive", "proxy-connection"];

/// `buf` (a request head up to its blank line, and what followed it) with `headers` set;
/// `None` when `buf` holds no complete head.
pub fn set_headers(buf: &[u8], headers: &[(String, String)]) -> Option<Vec<u8>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let mut out = String::with_capacity(end + 256);
    out.push_str(lines.next()?);
    out.push_str("\r\n");
    for line in lines {
        let name = line.split(':').next().unwrap_or_default().trim();
        let replaced = headers.iter().any(|(h, _)| h.eq_ignore_ascii_case(name))
            || CONNECTION_HEADERS
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name));
        if !replaced {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    for (name, value) in headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&buf[end + 4..]);
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_replace_theirs_and_the_connection_closes_after() {
        let request = b"POST /v1/x HTTP/1.1\r\nHost: api.test\r\nauthorization: Bearer fake\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nbody";
        let headers = vec![
            ("Authorization".to_owned(), "Bearer real".to_owned()),
            ("X-Team".to_owned(), "a b".to_owned()),
        ];
        let out = String::from_utf8(set_headers(request, &headers).unwrap()).unwrap();
        assert_eq!(
            out,
            "POST /v1/x HTTP/1.1\r\nHost: api.test\r\nContent-Length: 4\r\nAuthorization: Bearer real\r\nX-Team: a b\r\nConnection: close\r\n\r\nbody"
        );
        assert_eq!(set_headers(b"GET / HTTP/1.1\r\nHost: x", &headers), None);
    }
}
