//! Connect messages in the JSON codec, the one the E2B SDKs use: every request and response
//! type of `filesystem.Filesystem` and `process.Process`, decoded by `Codec::Json` as the agent
//! and the SDK decode them; also Connect's JSON error bodies and content types.
//!
//! Input: a message name on the first line (another string picks a type by its hash), the
//! body after it.
//! Properties: a decoded message encodes, and decodes back to itself, in JSON and in proto;
//! error bodies and content types survive their own round trips.
#![no_main]

use cove_fuzz::{MessageVisitor, visit_message};
use cove_proto::connect::{Codec, ContentType, RpcError, Wire, parse_end_stream};
use libfuzzer_sys::fuzz_target;

struct JsonRoundTrip<'a>(&'a [u8]);

impl MessageVisitor for JsonRoundTrip<'_> {
    fn visit<M>(self, name: &'static str)
    where
        M: Wire + PartialEq + std::fmt::Debug,
    {
        let Ok(message) = Codec::Json.decode::<M>(self.0) else {
            return;
        };
        // Whatever JSON decodes, JSON can say again (enums and timestamps are checked on input).
        let json = serde_json::to_vec(&message)
            .unwrap_or_else(|err| panic!("{name} {message:?} does not encode: {err}"));
        assert_eq!(&Codec::Json.encode(&message)[..], &json[..]);
        let again: M = Codec::Json
            .decode(&json)
            .unwrap_or_else(|err| panic!("{name}: our own JSON {json:?} does not decode: {err}"));
        assert_eq!(message, again, "{name} changed in a JSON round trip");
        let proto = Codec::Proto.encode(&message);
        let from_proto: M = Codec::Proto
            .decode(&proto)
            .unwrap_or_else(|err| panic!("{name}: our own protobuf does not decode: {err}"));
        assert_eq!(message, from_proto, "{name} changed going through protobuf");
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let name = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();
    visit_message(&name, JsonRoundTrip(body));

    if let Some(content_type) = ContentType::parse(&name) {
        assert_eq!(
            ContentType::parse(content_type.as_str()),
            Some(content_type)
        );
    }
    if let Some(err) = RpcError::from_json(body) {
        assert_eq!(RpcError::from_json(&err.to_json()), Some(err));
    }
    if let Ok(Some(err)) = parse_end_stream(body) {
        assert_eq!(RpcError::from_json(&err.to_json()), Some(err));
    }
});
