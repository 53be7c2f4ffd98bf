//! Connect messages in the protobuf codec (`application/proto`, `application/connect+proto`):
//! every request and response type of the two services, decoded by `Codec::Proto`.
//!
//! Input: a message name on the first line (another string picks a type by its hash), the
//! binary body after it.
//! Properties: a decoded message encodes and decodes back to itself; when the proto3 JSON
//! mapping can express it (enum numbers without a name and times outside years 1–9999 it
//! cannot), its JSON form decodes back to it too.
#![no_main]

use cove_fuzz::{
    MessageVisitor, has_unparseable_timestamp, unrepresentable_in_json, visit_message,
};
use cove_proto::connect::{Codec, Wire};
use libfuzzer_sys::fuzz_target;

struct ProtoRoundTrip<'a>(&'a [u8]);

impl MessageVisitor for ProtoRoundTrip<'_> {
    fn visit<M>(self, name: &'static str)
    where
        M: Wire + PartialEq + std::fmt::Debug,
    {
        let Ok(message) = Codec::Proto.decode::<M>(self.0) else {
            return;
        };
        let proto = Codec::Proto.encode(&message);
        let again: M = Codec::Proto
            .decode(&proto)
            .unwrap_or_else(|err| panic!("{name}: our own protobuf does not decode: {err}"));
        assert_eq!(message, again, "{name} changed in a protobuf round trip");
        match serde_json::to_vec(&message) {
            Ok(json) => match Codec::Json.decode::<M>(&json) {
                Ok(from_json) => {
                    assert_eq!(message, from_json, "{name} changed going through JSON")
                }
                Err(err) => assert!(
                    has_unparseable_timestamp(&json),
                    "{name}: our own JSON {} does not decode: {err}",
                    String::from_utf8_lossy(&json)
                ),
            },
            Err(err) => assert!(
                unrepresentable_in_json(&err),
                "{name} {message:?} does not encode as JSON: {err}"
            ),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let name = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();
    visit_message(&name, ProtoRoundTrip(body));
});
