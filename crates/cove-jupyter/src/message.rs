//! One Jupyter message and its wire form: `<IDS|MSG>`, an HMAC signature, then the header,
//! parent header, metadata and content as JSON, then any binary buffers.

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

/// The frame between routing identities and the signed parts.
pub const DELIMITER: &[u8] = b"<IDS|MSG>";

/// The version of the messaging protocol we speak.
pub const PROTOCOL_VERSION: &str = "5.3";

/// A message header; parents are headers too. Fields a peer leaves out stay empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Header {
    pub msg_id: String,
    pub session: String,
    pub username: String,
    pub date: String,
    pub msg_type: String,
    pub version: String,
}

impl Header {
    /// A new header for a message of `msg_type` in `session`, dated now.
    pub fn new(session: &str, msg_type: &str) -> Self {
        Self {
            msg_id: uuid::Uuid::new_v4().to_string(),
            session: session.to_owned(),
            username: "cove".to_owned(),
            date: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            msg_type: msg_type.to_owned(),
            version: PROTOCOL_VERSION.to_owned(),
        }
    }
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub header: Header,
    /// The header of the request this message answers (`None` when it answers none).
    pub parent: Option<Header>,
    pub metadata: Value,
    pub content: Value,
    pub buffers: Vec<Bytes>,
}

impl Message {
    /// A request of `msg_type` with `content`.
    pub fn request(session: &str, msg_type: &str, content: Value) -> Self {
        Self {
            header: Header::new(session, msg_type),
            parent: None,
            metadata: Value::Object(Default::default()),
            content,
            buffers: Vec::new(),
        }
    }

    pub fn msg_type(&self) -> &str {
        &self.header.msg_type
    }

    /// The id of the request this message belongs to.
    pub fn parent_id(&self) -> Option<&str> {
        self.parent
            .as_ref()
            .map(|p| p.msg_id.as_str())
            .filter(|id| !id.is_empty())
    }
}

/// Why a received message was refused.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("the message has no `<IDS|MSG>` delimiter")]
    NoDelimiter,
    #[error("the message has {0} parts after the delimiter, fewer than 5")]
    TooShort(usize),
    #[error("the message signature does not match")]
    BadSignature,
    #[error("the message's {part} is not valid JSON")]
    Json {
        part: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Signs and checks messages with the connection's key (HMAC-SHA256); an empty key means
/// messages are not signed, as the protocol allows.
#[derive(Clone)]
pub struct Signer {
    key: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("signed", &self.key.is_some())
            .finish()
    }
}

impl Signer {
    pub fn new(key: &str) -> Self {
        Self {
            key: (!key.is_empty()).then(|| {
                Hmac::<Sha256>::new_from_slice(key.as_bytes())
                    .expect("HMAC takes keys of any length")
            }),
        }
    }

    fn mac(&self, parts: &[&[u8]]) -> Option<Hmac<Sha256>> {
        let mut mac = self.key.clone()?;
        for part in parts {
            mac.update(part);
        }
        Some(mac)
    }

    /// The frames of `message`, ready to send on a DEALER socket.
    pub fn encode(&self, message: &Message) -> Vec<Bytes> {
        let header = to_json(&message.header);
        let parent = match &message.parent {
            Some(parent) => to_json(parent),
            None => b"{}".to_vec(),
        };
        let metadata = to_json(&message.metadata);
        let content = to_json(&message.content);
        let signature = self
            .mac(&[&header, &parent, &metadata, &content])
            .map(|mac| hex::encode(mac.finalize().into_bytes()))
            .unwrap_or_default();
        let mut frames = vec![
            Bytes::from_static(DELIMITER),
            Bytes::from(signature),
            Bytes::from(header),
            Bytes::from(parent),
            Bytes::from(metadata),
            Bytes::from(content),
        ];
        frames.extend(message.buffers.iter().cloned());
        frames
    }

    /// Checks and decodes received frames (routing identities or an IOPub topic first).
    pub fn decode(&self, frames: &[Bytes]) -> Result<Message, MessageError> {
        let start = frames
            .iter()
            .position(|f| f.as_ref() == DELIMITER)
            .ok_or(MessageError::NoDelimiter)?;
        let parts = &frames[start + 1..];
        if parts.len() < 5 {
            return Err(MessageError::TooShort(parts.len()));
        }
        if let Some(mac) = self.mac(&[&parts[1], &parts[2], &parts[3], &parts[4]]) {
            let given = hex::decode(&parts[0]).map_err(|_| MessageError::BadSignature)?;
            mac.verify_slice(&given)
                .map_err(|_| MessageError::BadSignature)?;
        }
        let json = |part: &'static str, raw: &Bytes| {
            serde_json::from_slice::<Value>(raw)
                .map_err(|source| MessageError::Json { part, source })
        };
        let header: Header =
            serde_json::from_slice(&parts[1]).map_err(|source| MessageError::Json {
                part: "header",
                source,
            })?;
        let parent = match json("parent header", &parts[2])? {
            Value::Object(map) if map.is_empty() => None,
            other => Some(
                serde_json::from_value(other).map_err(|source| MessageError::Json {
                    part: "parent header",
                    source,
                })?,
            ),
        };
        Ok(Message {
            header,
            parent,
            metadata: json("metadata", &parts[3])?,
            content: json("content", &parts[4])?,
            buffers: parts[5..].to_vec(),
        })
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("message parts are plain JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_message_survives_the_round_trip() {
        let signer = Signer::new("secret");
        let mut message =
            Message::request("s1", "execute_request", serde_json::json!({"code": "1+1"}));
        message.parent = Some(Header::new("s0", "kernel_info_request"));
        let mut frames = vec![Bytes::from_static(b"topic")];
        frames.extend(signer.encode(&message));
        let back = signer.decode(&frames).unwrap();
        assert_eq!(back, message);
        assert_eq!(
            back.parent_id(),
            Some(message.parent.as_ref().unwrap().msg_id.as_str())
        );
    }

    #[test]
    fn a_tampered_or_foreign_message_is_refused() {
        let signer = Signer::new("secret");
        let message = Message::request("s1", "execute_request", serde_json::json!({"code": "1"}));
        let mut frames = signer.encode(&message);
        frames[5] = Bytes::from_static(br#"{"code": "import os"}"#);
        assert!(matches!(
            signer.decode(&frames),
            Err(MessageError::BadSignature)
        ));
        let other = Signer::new("other").encode(&message);
        assert!(matches!(
            signer.decode(&other),
            Err(MessageError::BadSignature)
        ));
        assert!(matches!(
            signer.decode(&frames[1..]),
            Err(MessageError::NoDelimiter)
        ));
    }

    #[test]
    fn an_empty_key_neither_signs_nor_checks() {
        let signer = Signer::new("");
        let message = Message::request("s", "kernel_info_request", serde_json::json!({}));
        let frames = signer.encode(&message);
        assert!(frames[1].is_empty());
        assert_eq!(signer.decode(&frames).unwrap().parent_id(), None);
    }
}
