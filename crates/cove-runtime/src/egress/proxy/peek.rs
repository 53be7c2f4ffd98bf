//! What name a connection asks for, read from its first bytes: the server name (SNI) of a TLS
//! ClientHello on port 443, the `Host` header of an HTTP/1.x request head on port 80. The
//! egress proxy decides by that name, resolves it itself and connects there, so the name it
//! decided on is the name it connects to, whatever else the bytes say.
//!
//! Both readers are strict: what is malformed or ambiguous (two server names, two `Host`
//! headers, bare line feeds, folded headers) is [`Peeked::NotRecognised`], which the proxy
//! refuses. Neither panics nor indexes out of bounds on any input; the sandbox writes these
//! bytes.

use std::net::Ipv6Addr;

/// What the first bytes of a connection name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peeked {
    /// The name asked for: lowercase ASCII letters, digits, `-`, `_` and dots, no trailing
    /// dot. Dotted IPv4 text passes that rule too; an IPv6 literal (canonical text, no
    /// brackets) comes only from a `Host` header.
    Name(String),
    /// A complete, well-formed opening that names no server.
    NoName,
    /// A valid beginning that ends too soon: read more and ask again.
    NeedMore,
    /// Not this protocol, malformed, ambiguous, or longer than [`MAX_PEEK`].
    NotRecognised,
}

/// Most bytes read before deciding (a ClientHello record or a request head fits).
pub const MAX_PEEK: usize = 16 * 1024 + 5;

/// Longest name (RFC 1035, in its dotted text form without the trailing dot).
const MAX_NAME: usize = 253;
/// Longest label of a name (RFC 1035).
const MAX_LABEL: usize = 63;

/// The TLS server name (SNI host_name) of a ClientHello at the start of `buf`.
///
/// The ClientHello may be split over several handshake records; the whole message must
/// arrive within [`MAX_PEEK`] bytes. A prefix is checked as far as it goes, so bytes that
/// cannot begin a ClientHello are refused at once rather than after [`MAX_PEEK`] bytes.
pub fn tls_server_name(buf: &[u8]) -> Peeked {
    let buf = buf.get(..MAX_PEEK).unwrap_or(buf);
    let result = handshake_message(buf).and_then(|message| client_hello(&message));
    match result {
        Ok(Some(name)) => Peeked::Name(name),
        Ok(None) => Peeked::NoName,
        Err(Stop::More) if buf.len() < MAX_PEEK => Peeked::NeedMore,
        Err(Stop::More | Stop::Bad) => Peeked::NotRecognised,
    }
}

/// The host of the `Host` header of an HTTP/1.x request head at the start of `buf`.
///
/// The port is dropped, brackets around an IPv6 literal too (which comes back in its
/// canonical text form); an empty `Host` value names nothing ([`Peeked::NoName`]). For a
/// request target in absolute form (`GET http://x/ HTTP/1.1`) the `Host` header is still the
/// name: the proxy connects to the address of that name, so a different authority in the
/// target can only reach what the `Host` name reaches.
pub fn http_host(buf: &[u8]) -> Peeked {
    let buf = buf.get(..MAX_PEEK).unwrap_or(buf);
    let Some(end) = find(buf, b"\r\n\r\n") else {
        let plausible = match find(buf, b"\r\n") {
            Some(line_end) => request_line(&buf[..line_end]),
            None => request_line_prefix(buf),
        };
        return if plausible && buf.len() < MAX_PEEK {
            Peeked::NeedMore
        } else {
            Peeked::NotRecognised
        };
    };
    let mut lines = Lines(&buf[..end]);
    if !lines.next().is_some_and(request_line) {
        return Peeked::NotRecognised;
    }
    let mut host = None;
    for line in lines {
        let Some((name, value)) = header_field(line) else {
            return Peeked::NotRecognised;
        };
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                // Two hosts: the proxy and the server behind it might each pick another.
                return Peeked::NotRecognised;
            }
            host = Some(value);
        }
    }
    match host {
        None => Peeked::NoName,
        Some(value) => host_name(value),
    }
}

/// Why a reader stopped before an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The bytes so far are a valid beginning.
    More,
    /// The bytes are not what they should be.
    Bad,
}

/// TLS record content type of handshake messages.
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const CLIENT_HELLO: u8 = 1;
/// Extension type of server_name (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// Name type of a host name in the server_name extension.
const NAME_TYPE_HOST: u8 = 0;
/// Bytes of a TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
/// Bytes of a handshake message header: type, 24-bit length.
const HANDSHAKE_HEADER: usize = 4;
/// Longest plaintext record (RFC 8446 §5.1).
const MAX_RECORD: usize = 1 << 14;

/// The first handshake message, gathered from the handshake records at the start of `buf`:
/// all of it, or as much as has arrived (the caller's parse then stops with [`Stop::More`]).
fn handshake_message(buf: &[u8]) -> Result<Vec<u8>, Stop> {
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        if let Some(total) = message_len(&message)?
            && message.len() >= total
        {
            // Whatever follows the ClientHello in its last record is not ours to read.
            message.truncate(total);
            return Ok(message);
        }
        // A record header, checked byte by byte as it arrives.
        if rest.first().is_some_and(|&ty| ty != CONTENT_HANDSHAKE)
            || rest.get(1).is_some_and(|&major| major != 3)
            || rest.get(2).is_some_and(|&minor| minor > 4)
        {
            return Err(Stop::Bad);
        }
        let Some(header) = rest.get(..RECORD_HEADER) else {
            return Ok(message);
        };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err(Stop::Bad);
        }
        let body = &rest[RECORD_HEADER..];
        let (fragment, after) = body.split_at(len.min(body.len()));
        message.extend_from_slice(fragment);
        if fragment.len() < len {
            return Ok(message);
        }
        rest = after;
    }
}

/// The length of the whole handshake message whose beginning is `message`, once its header
/// has arrived; refuses any but a ClientHello, and one that could never fit in [`MAX_PEEK`].
fn message_len(message: &[u8]) -> Result<Option<usize>, Stop> {
    if message.first().is_some_and(|&ty| ty != CLIENT_HELLO) {
        return Err(Stop::Bad);
    }
    let Some(&[_, a, b, c]) = message.get(..HANDSHAKE_HEADER) else {
        return Ok(None);
    };
    let total = HANDSHAKE_HEADER + usize::from_be_bytes([0, 0, 0, 0, 0, a, b, c]);
    if total > MAX_PEEK - RECORD_HEADER {
        return Err(Stop::Bad);
    }
    Ok(Some(total))
}

/// The server name of the ClientHello `message` (handshake header included), which may be
/// only its beginning.
fn client_hello(message: &[u8]) -> Result<Option<String>, Stop> {
    let Some(total) = message_len(message)? else {
        return Err(Stop::More);
    };
    let body = &message[HANDSHAKE_HEADER..];
    let mut body = Cursor::new(body, total - HANDSHAKE_HEADER);
    let version = body.take(2)?;
    if version[0] != 3 {
        return Err(Stop::Bad);
    }
    body.take(32)?; // random
    let session_id = usize::from(body.u8()?);
    if session_id > 32 {
        return Err(Stop::Bad);
    }
    body.take(session_id)?;
    let suites = usize::from(body.u16()?);
    if suites == 0 || suites % 2 != 0 {
        return Err(Stop::Bad);
    }
    body.take(suites)?;
    let compression = usize::from(body.u8()?);
    if compression == 0 {
        return Err(Stop::Bad);
    }
    body.take(compression)?;
    if body.at_end() {
        // Before TLS 1.3 the extensions may be left out altogether.
        return Ok(None);
    }
    let len = usize::from(body.u16()?);
    let mut extensions = body.sub(len)?;
    if !body.at_end() {
        return Err(Stop::Bad);
    }
    let mut server_name = None;
    while !extensions.at_end() {
        let ty = extensions.u16()?;
        let len = usize::from(extensions.u16()?);
        if ty == EXT_SERVER_NAME {
            if server_name.is_some() {
                return Err(Stop::Bad);
            }
            server_name = Some(host_name_entry(extensions.sub(len)?)?);
        } else {
            extensions.take(len)?;
        }
    }
    Ok(server_name.flatten())
}

/// The host_name entry of a server_name extension's data (RFC 6066 §3).
fn host_name_entry(mut data: Cursor<'_>) -> Result<Option<String>, Stop> {
    let len = usize::from(data.u16()?);
    let mut list = data.sub(len)?;
    if len == 0 || !data.at_end() {
        return Err(Stop::Bad);
    }
    let mut host = None;
    while !list.at_end() {
        let ty = list.u8()?;
        // Every name type defined or proposed is a 16-bit length and that many bytes.
        let len = usize::from(list.u16()?);
        let name = list.take(len)?;
        if ty == NAME_TYPE_HOST {
            if host.is_some() {
                // RFC 6066 allows one name per type; two leave the choice to the reader.
                return Err(Stop::Bad);
            }
            host = Some(dns_name(name).ok_or(Stop::Bad)?);
        }
    }
    Ok(host)
}

/// Reads a TLS structure whose declared length is `end` of which only `data` may have
/// arrived: reading past `end` is malformed, reading past `data` (within `end`) needs more.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    fn new(data: &'a [u8], end: usize) -> Self {
        let data = data.get(..end).unwrap_or(data);
        Self { data, pos: 0, end }
    }

    /// Whether the structure has been read to its declared end.
    fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Stop> {
        let stop = self.pos.checked_add(n).ok_or(Stop::Bad)?;
        if stop > self.end {
            return Err(Stop::Bad);
        }
        let bytes = self.data.get(self.pos..stop).ok_or(Stop::More)?;
        self.pos = stop;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, Stop> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Stop> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    /// The next `n` bytes as a structure of their own (whose bytes need not all have
    /// arrived: reading it says so).
    fn sub(&mut self, n: usize) -> Result<Cursor<'a>, Stop> {
        let stop = self.pos.checked_add(n).ok_or(Stop::Bad)?;
        if stop > self.end {
            return Err(Stop::Bad);
        }
        let data = self.data.get(self.pos..).unwrap_or_default();
        self.pos = stop;
        Ok(Cursor::new(data, n))
    }
}

/// `text` as a host name: lowercased, one trailing dot dropped; `None` when empty, longer
/// than 253 bytes, with an empty or over-long label, or a byte outside `[a-z0-9._-]`.
fn dns_name(text: &[u8]) -> Option<String> {
    let text = text.strip_suffix(b".").unwrap_or(text);
    if text.is_empty() || text.len() > MAX_NAME {
        return None;
    }
    let name = text.to_ascii_lowercase();
    let valid = name.split(|&b| b == b'.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL
            && label
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    });
    if !valid {
        return None;
    }
    String::from_utf8(name).ok()
}

/// The lines of a request head (without its final empty line), split at CRLF.
struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        match find(self.0, b"\r\n") {
            Some(end) => {
                let line = &self.0[..end];
                self.0 = &self.0[end + 2..];
                Some(line)
            }
            None => Some(std::mem::take(&mut self.0)),
        }
    }
}

/// Whether `line` is `METHOD SP request-target SP HTTP/1.x`.
fn request_line(line: &[u8]) -> bool {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method.iter().copied().all(is_tchar)
        && !target.is_empty()
        && target.iter().all(u8::is_ascii_graphic)
        && matches!(version, [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit())
}

/// Whether `partial`, the beginning of a first line without its CRLF yet, can still become a
/// request line.
fn request_line_prefix(partial: &[u8]) -> bool {
    if let Some(line) = partial.strip_suffix(b"\r") {
        return request_line(line);
    }
    let mut parts = partial.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    if !method.iter().copied().all(is_tchar) {
        return false;
    }
    let Some(target) = parts.next() else {
        return true;
    };
    if method.is_empty() || !target.iter().all(u8::is_ascii_graphic) {
        return false;
    }
    let Some(version) = parts.next() else {
        return true;
    };
    if target.is_empty() || parts.next().is_some() {
        return false;
    }
    match version.split_last() {
        Some((minor, b"HTTP/1.")) => minor.is_ascii_digit(),
        _ => b"HTTP/1.".starts_with(version),
    }
}

/// A header line's name and value (without surrounding whitespace); `None` when malformed,
/// which includes space before the colon and obsolete line folding (RFC 9112 §5).
fn header_field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().copied().all(is_tchar) {
        return None;
    }
    // Field values: visible ASCII, space, tab and obs-text; no other control byte (a lone CR
    // or LF would end the line for some readers and not for others).
    if !value
        .iter()
        .all(|&b| b == b' ' || b == b'\t' || b.is_ascii_graphic() || b >= 0x80)
    {
        return None;
    }
    Some((name, value.trim_ascii()))
}

/// The name of a `Host` header value: `host`, `host:port`, `[v6]` or `[v6]:port`.
fn host_name(value: &[u8]) -> Peeked {
    if value.is_empty() {
        // An empty Host stands for a target without an authority (RFC 9110 §7.2).
        return Peeked::NoName;
    }
    let name = if let Some(bracketed) = value.strip_prefix(b"[") {
        let Some(close) = bracketed.iter().position(|&b| b == b']') else {
            return Peeked::NotRecognised;
        };
        let (literal, port) = (&bracketed[..close], &bracketed[close + 1..]);
        let address = std::str::from_utf8(literal)
            .ok()
            .and_then(|text| text.parse::<Ipv6Addr>().ok());
        match address {
            Some(address) if port_suffix(port) => Some(address.to_string()),
            _ => None,
        }
    } else {
        let (host, port) = match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], &value[colon..]),
            None => (value, &b""[..]),
        };
        if port_suffix(port) {
            dns_name(host)
        } else {
            None
        }
    };
    name.map_or(Peeked::NotRecognised, Peeked::Name)
}

/// Whether `suffix` is nothing or `:` and a port (RFC 3986 allows the digits to be absent).
fn port_suffix(suffix: &[u8]) -> bool {
    match suffix.strip_prefix(b":") {
        None => suffix.is_empty(),
        Some(digits) => {
            digits.is_empty()
                || std::str::from_utf8(digits).is_ok_and(|d| {
                    d.bytes().all(|b| b.is_ascii_digit()) && d.parse::<u16>().is_ok()
                })
        }
    }
}

/// A byte of an HTTP token (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The first position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello handshake message (header included) with these extensions.
    fn client_hello_with(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![3, 3]; // legacy_version TLS 1.2
        body.extend((0..32).map(|i| i as u8 ^ 0xa5)); // random
        body.push(32);
        body.extend([0x42; 32]); // session id
        body.extend([0, 6, 0x13, 0x01, 0x13, 0x02, 0xc0, 0x2f]); // cipher suites
        body.extend([1, 0]); // compression: null
        let mut block = Vec::new();
        for (ty, data) in extensions {
            block.extend(ty.to_be_bytes());
            block.extend((data.len() as u16).to_be_bytes());
            block.extend(data);
        }
        body.extend((block.len() as u16).to_be_bytes());
        body.extend(block);
        handshake(&body)
    }

    fn handshake(body: &[u8]) -> Vec<u8> {
        let mut message = vec![CLIENT_HELLO];
        message.extend(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        message
    }

    /// The data of a server_name extension holding these (type, name) entries.
    fn server_names(entries: &[(u8, &[u8])]) -> Vec<u8> {
        let mut list = Vec::new();
        for (ty, name) in entries {
            list.push(*ty);
            list.extend((name.len() as u16).to_be_bytes());
            list.extend(*name);
        }
        let mut data = (list.len() as u16).to_be_bytes().to_vec();
        data.extend(list);
        data
    }

    /// Extensions as a browser sends them: others around the server name.
    fn typical(name: &[u8]) -> Vec<(u16, Vec<u8>)> {
        vec![
            (11, vec![1, 0]), // ec_point_formats
            (EXT_SERVER_NAME, server_names(&[(NAME_TYPE_HOST, name)])),
            (43, vec![4, 3, 4, 3, 3]),       // supported_versions
            (16, vec![0, 3, 2, b'h', b'2']), // ALPN
        ]
    }

    /// `message` in handshake records, cut before each of `cuts`.
    fn records(message: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut bounds = vec![0];
        bounds.extend(cuts);
        bounds.push(message.len());
        let mut out = Vec::new();
        for pair in bounds.windows(2) {
            let fragment = &message[pair[0]..pair[1]];
            out.extend([CONTENT_HANDSHAKE, 3, 1]);
            out.extend((fragment.len() as u16).to_be_bytes());
            out.extend(fragment);
        }
        out
    }

    fn hello(name: &[u8]) -> Vec<u8> {
        records(&client_hello_with(&typical(name)), &[])
    }

    #[test]
    fn tls_names_the_server_of_a_client_hello() {
        assert_eq!(
            tls_server_name(&hello(b"example.com")),
            Peeked::Name("example.com".into())
        );
        // Lowercased, the trailing dot dropped, underscores kept.
        assert_eq!(
            tls_server_name(&hello(b"Files_1.PyPI.org.")),
            Peeked::Name("files_1.pypi.org".into())
        );
    }

    #[test]
    fn tls_ignores_what_follows_the_client_hello() {
        let mut buf = hello(b"example.com");
        buf.extend([23, 3, 3, 0, 2, 0xde, 0xad]); // early application data
        assert_eq!(tls_server_name(&buf), Peeked::Name("example.com".into()));
    }

    #[test]
    fn tls_reads_a_client_hello_split_across_records() {
        let message = client_hello_with(&typical(b"pypi.org"));
        let expected = Peeked::Name("pypi.org".into());
        // Inside the handshake header, inside the body, inside the server name.
        for cut in [1, 3, 4, 40, message.len() - 20, message.len() - 1] {
            assert_eq!(
                tls_server_name(&records(&message, &[cut])),
                expected,
                "cut {cut}"
            );
        }
        let many: Vec<usize> = (1..message.len()).step_by(7).collect();
        assert_eq!(tls_server_name(&records(&message, &many)), expected);
    }

    #[test]
    fn tls_every_prefix_needs_more() {
        let message = client_hello_with(&typical(b"example.com"));
        for buf in [records(&message, &[]), records(&message, &[50, 51, 120])] {
            for len in 0..buf.len() {
                assert_eq!(
                    tls_server_name(&buf[..len]),
                    Peeked::NeedMore,
                    "{len} bytes"
                );
            }
        }
    }

    #[test]
    fn tls_without_server_name_is_no_name() {
        let others = vec![(11, vec![1, 0]), (43, vec![2, 3, 4])];
        assert_eq!(
            tls_server_name(&records(&client_hello_with(&others), &[])),
            Peeked::NoName
        );
        assert_eq!(
            tls_server_name(&records(&client_hello_with(&[]), &[])),
            Peeked::NoName
        );
        // No extensions block at all (allowed before TLS 1.3).
        let mut message = client_hello_with(&[]);
        message.truncate(message.len() - 2);
        let message = handshake(&message[HANDSHAKE_HEADER..]);
        assert_eq!(tls_server_name(&records(&message, &[])), Peeked::NoName);
        // A server_name extension with another name type only.
        let other_type = vec![(EXT_SERVER_NAME, server_names(&[(7, b"x")]))];
        assert_eq!(
            tls_server_name(&records(&client_hello_with(&other_type), &[])),
            Peeked::NoName
        );
    }

    #[test]
    fn tls_refuses_what_is_not_a_client_hello() {
        let refused =
            |buf: &[u8]| assert_eq!(tls_server_name(buf), Peeked::NotRecognised, "{buf:?}");
        refused(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
        refused(b"G");
        refused(&[CONTENT_HANDSHAKE, 9]); // not a TLS version
        refused(&[23, 3, 3, 0, 5, 1, 2, 3, 4, 5]); // application data
        refused(&[CONTENT_HANDSHAKE, 3, 1, 0, 0]); // empty record
        refused(&[CONTENT_HANDSHAKE, 3, 1, 0x40, 1]); // record longer than 2^14
        refused(&[CONTENT_HANDSHAKE, 3, 3, 0, 4, 2, 0, 0, 40]); // a ServerHello
        refused(&[CONTENT_HANDSHAKE, 3, 1, 0, 4, 1, 0x01, 0, 0]); // longer than MAX_PEEK
        // A change_cipher_spec record between two fragments of the ClientHello.
        let message = client_hello_with(&typical(b"example.com"));
        let mut buf = records(&message[..30], &[]);
        buf.extend([20, 3, 3, 0, 1, 1]);
        buf.extend(records(&message[30..], &[]));
        refused(&buf);
    }

    #[test]
    fn tls_refuses_lengths_that_overrun_their_container() {
        let message = client_hello_with(&typical(b"example.com"));
        let refused = |message: &[u8]| {
            assert_eq!(
                tls_server_name(&records(message, &[])),
                Peeked::NotRecognised
            )
        };
        // The extensions block claims more than the message holds.
        let ext_len_at = HANDSHAKE_HEADER + 2 + 32 + 1 + 32 + 8 + 2;
        let mut long = message.clone();
        long[ext_len_at + 1] += 1;
        refused(&long);
        // It claims less: the message has bytes after it.
        let mut short = message.clone();
        short[ext_len_at + 1] -= 1;
        refused(&short);
        // A session id longer than 32 bytes.
        let mut sid = message.clone();
        sid[HANDSHAKE_HEADER + 34] = 33;
        refused(&sid);
        // The server name list claims more than its extension holds.
        let mut bad_sni = vec![(EXT_SERVER_NAME, server_names(&[(0, b"example.com")]))];
        bad_sni[0].1[1] += 1;
        refused(&client_hello_with(&bad_sni));
        // A host name longer than its list.
        let mut data = server_names(&[(0, b"example.com")]);
        data[4] += 1;
        refused(&client_hello_with(&[(EXT_SERVER_NAME, data)]));
    }

    #[test]
    fn tls_refuses_ambiguous_or_invalid_names() {
        let refused = |extensions: Vec<(u16, Vec<u8>)>| {
            let buf = records(&client_hello_with(&extensions), &[]);
            assert_eq!(
                tls_server_name(&buf),
                Peeked::NotRecognised,
                "{extensions:?}"
            );
        };
        let sni = |name: &[u8]| (EXT_SERVER_NAME, server_names(&[(0, name)]));
        refused(vec![sni(b"a.com"), sni(b"b.com")]);
        refused(vec![(
            EXT_SERVER_NAME,
            server_names(&[(0, b"a.com"), (0, b"b.com")]),
        )]);
        refused(vec![(EXT_SERVER_NAME, server_names(&[]))]);
        refused(vec![(EXT_SERVER_NAME, vec![])]);
        let long = [
            b"a".repeat(63),
            b"b".repeat(63),
            b"c".repeat(63),
            b"d".repeat(62),
        ]
        .join(&b'.');
        assert_eq!(long.len(), 254);
        for name in [
            &b""[..],
            b".",
            b"a..b",
            b".a",
            b"a b",
            b"a/b",
            b"a:443",
            b"a\0b",
            "ü.de".as_bytes(),
            &long,
            &b"x".repeat(64),
        ] {
            refused(vec![sni(name)]);
        }
        let longest = &long[1..];
        let buf = records(&client_hello_with(&[sni(longest)]), &[]);
        assert_eq!(
            tls_server_name(&buf),
            Peeked::Name(String::from_utf8(longest.to_vec()).unwrap())
        );
    }

    #[test]
    fn tls_client_hello_beyond_max_peek_is_refused() {
        // Valid, but in one-byte records it takes more than MAX_PEEK bytes.
        let mut extensions = typical(b"example.com");
        extensions.insert(0, (21, vec![0; 3000])); // padding
        let message = client_hello_with(&extensions);
        let cuts: Vec<usize> = (1..message.len()).collect();
        let buf = records(&message, &cuts);
        assert!(buf.len() > MAX_PEEK);
        assert_eq!(tls_server_name(&buf), Peeked::NotRecognised);
        assert_eq!(tls_server_name(&buf[..MAX_PEEK - 1]), Peeked::NeedMore);
        assert_eq!(
            tls_server_name(&records(&message, &[])),
            Peeked::Name("example.com".into())
        );
    }

    #[test]
    fn tls_single_byte_corruptions_never_panic() {
        let message = client_hello_with(&typical(b"example.com"));
        let buf = records(&message, &[60]);
        for at in 0..buf.len() {
            for value in 0..=u8::MAX {
                let mut bad = buf.clone();
                bad[at] = value;
                let peeked = tls_server_name(&bad);
                if let Peeked::Name(name) = peeked {
                    assert!(dns_name(name.as_bytes()).as_deref() == Some(name.as_str()));
                }
            }
        }
    }

    #[test]
    fn http_names_the_host() {
        let host = |head: &str| http_host(head.as_bytes());
        assert_eq!(
            host("GET / HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"),
            Peeked::Name("example.com".into())
        );
        assert_eq!(
            host("POST /x HTTP/1.0\r\nuser-agent: curl\r\nhost:Example.COM.  \r\n\r\nbody"),
            Peeked::Name("example.com".into())
        );
        assert_eq!(
            host("GET / HTTP/1.1\r\nHOST: \tpypi.org:8080\r\n\r\n"),
            Peeked::Name("pypi.org".into())
        );
        assert_eq!(
            host("GET / HTTP/1.1\r\nHost: 203.0.113.7:80\r\n\r\n"),
            Peeked::Name("203.0.113.7".into())
        );
        assert_eq!(
            host("GET / HTTP/1.1\r\nHost: [2001:DB8::0:1]:8080\r\n\r\n"),
            Peeked::Name("2001:db8::1".into())
        );
        assert_eq!(
            host("GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n"),
            Peeked::Name("::1".into())
        );
        // Absolute form: the Host header still names the server (see `http_host`).
        assert_eq!(
            host("GET http://other.example/ HTTP/1.1\r\nHost: example.com\r\n\r\n"),
            Peeked::Name("example.com".into())
        );
    }

    #[test]
    fn http_without_host_is_no_name() {
        assert_eq!(http_host(b"GET / HTTP/1.0\r\n\r\n"), Peeked::NoName);
        assert_eq!(
            http_host(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n"),
            Peeked::NoName
        );
        assert_eq!(
            http_host(b"OPTIONS * HTTP/1.1\r\nHost:\r\n\r\n"),
            Peeked::NoName
        );
    }

    #[test]
    fn http_refuses_two_hosts() {
        for head in [
            "GET / HTTP/1.1\r\nHost: a.com\r\nHost: b.com\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a.com\r\nhOsT: a.com\r\n\r\n",
        ] {
            assert_eq!(
                http_host(head.as_bytes()),
                Peeked::NotRecognised,
                "{head:?}"
            );
        }
    }

    #[test]
    fn http_incomplete_head_needs_more() {
        let head = b"GET /simple HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
        for len in 0..head.len() {
            assert_eq!(http_host(&head[..len]), Peeked::NeedMore, "{len} bytes");
        }
        assert_eq!(http_host(head), Peeked::Name("example.com".into()));
    }

    #[test]
    fn http_refuses_what_is_not_an_http1_request_head() {
        for head in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n",
            b"PRI * HTTP/2",
            b"\x16\x03\x01\x02\x00\x01",
            b"\r\n\r\n",
            b"\r\n",
            b"GET  / HTTP/1.1\r\n",
            b"GET /\tx HTTP/1.1\r\n",
            b"GET / HTTP/1.1 \r\n",
            b"GET / HTTP/1.1\r\r\n",
            b"GET / HTTP/1.1x",
            b"GET / HTTP/1.1\nHost: a.com\n\n",
            b"GET / HTTP/1.1\r\nHost: a.com\nHost: b.com\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a.com\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: 1\r\n continued\r\nHost: a.com\r\n\r\n",
            b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.com:99999\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.com:x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@a.com\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a..com\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: 2001:db8::1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [2001:db8::1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [fe80::1%25eth0]\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [a.com]\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
        ] {
            assert_eq!(
                http_host(head),
                Peeked::NotRecognised,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn http_head_without_end_within_max_peek_is_refused() {
        let mut head = b"GET / HTTP/1.1\r\nHost: a.com\r\nX: ".to_vec();
        head.resize(MAX_PEEK - 1, b'y');
        assert_eq!(http_host(&head), Peeked::NeedMore);
        head.push(b'y');
        assert_eq!(http_host(&head), Peeked::NotRecognised);
        // The end just past MAX_PEEK is not read.
        head.extend(b"\r\n\r\n");
        assert_eq!(http_host(&head), Peeked::NotRecognised);
    }

    #[test]
    fn http_single_byte_corruptions_never_panic() {
        let head = b"GET http://[::1]:80/ HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\nA: b\r\n\r\n";
        for at in 0..head.len() {
            for value in 0..=u8::MAX {
                let mut bad = head.to_vec();
                bad[at] = value;
                http_host(&bad);
            }
        }
    }
}
