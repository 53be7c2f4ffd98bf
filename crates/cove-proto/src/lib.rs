//! Wire types of Cove: the envd-compatible `filesystem` and `process` services (prost types
//! with the proto3 JSON mapping), the Connect framing both ends use, and the E2B REST DTOs.
#![forbid(unsafe_code)]

pub mod connect;
pub mod envd;
pub mod rest;
pub mod signing;
pub mod templates;

/// `filesystem.Filesystem` messages.
#[allow(clippy::all, missing_docs)]
pub mod filesystem {
    include!(concat!(env!("OUT_DIR"), "/filesystem.rs"));
    include!(concat!(env!("OUT_DIR"), "/filesystem.serde.rs"));
}

/// `process.Process` messages.
#[allow(clippy::all, missing_docs)]
pub mod process {
    include!(concat!(env!("OUT_DIR"), "/process.rs"));
    include!(concat!(env!("OUT_DIR"), "/process.serde.rs"));
}

pub use pbjson_types::Timestamp;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::Codec;

    #[test]
    fn json_matches_what_the_e2b_sdk_sends() {
        let raw = br#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo $MY_VAR"],"envs":{"MY_VAR":"hello"},"cwd":"/home/user/project"},"stdin":false,"unknownField":1}"#;
        let req: process::StartRequest = Codec::Json.decode(raw).unwrap();
        let config = req.process.unwrap();
        assert_eq!(config.cmd, "/bin/bash");
        assert_eq!(config.envs["MY_VAR"], "hello");
        assert_eq!(config.cwd.as_deref(), Some("/home/user/project"));
        assert_eq!(req.stdin, Some(false));

        let sig: process::SendSignalRequest = Codec::Json
            .decode(br#"{"process":{"pid":42},"signal":"SIGNAL_SIGKILL"}"#)
            .unwrap();
        assert_eq!(sig.signal(), process::Signal::Sigkill);

        let input: process::SendInputRequest = Codec::Json
            .decode(br#"{"process":{"pid":42},"input":{"stdin":"cGluZwo="}}"#)
            .unwrap();
        let Some(process::process_input::Input::Stdin(data)) = input.input.unwrap().input else {
            panic!("stdin expected")
        };
        assert_eq!(&data[..], b"ping\n");

        let watch: filesystem::WatchDirRequest = Codec::Json
            .decode(br#"{"path":"/home/user","recursive":true,"include_entry":true}"#)
            .unwrap();
        assert!(watch.recursive && watch.include_entry);
    }

    #[test]
    fn events_encode_as_proto3_json() {
        use process::process_event::{DataEvent, Event, data_event::Output};
        let event = process::StartResponse {
            event: Some(process::ProcessEvent {
                event: Some(Event::Data(DataEvent {
                    output: Some(Output::Stdout(bytes::Bytes::from_static(b"hi\n"))),
                })),
            }),
        };
        let json: serde_json::Value = serde_json::from_slice(&Codec::Json.encode(&event)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"event": {"data": {"stdout": "aGkK"}}})
        );
    }
}
