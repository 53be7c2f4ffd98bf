//! What `/execute` streams: one JSON object per line, as E2B's code interpreter sends them
//! (`stdout`, `stderr`, `result`, `error`, `number_of_executions`, `keepalive`,
//! `end_of_execution`), translated from the kernel's Jupyter messages.

use cove_jupyter::{Channel, Incoming};
use serde::Serialize;
use serde_json::{Map, Value};

/// One line of an execution's output.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputLine {
    NumberOfExecutions {
        execution_count: i64,
    },
    Stdout {
        text: String,
        timestamp: String,
    },
    Stderr {
        text: String,
        timestamp: String,
    },
    Result(Box<RichResult>),
    Error {
        name: String,
        value: String,
        traceback: String,
    },
    /// Sent while nothing else is, so a client that went away is noticed.
    Keepalive,
    EndOfExecution,
}

impl OutputLine {
    pub fn error(name: &str, value: impl Into<String>) -> Self {
        OutputLine::Error {
            name: name.to_owned(),
            value: value.into(),
            traceback: String::new(),
        }
    }

    /// The line as sent: JSON and a newline.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("output lines are plain JSON");
        line.push('\n');
        line
    }
}

/// A displayed value in each format the kernel rendered it in (a MIME bundle).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RichResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub markdown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub png: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jpeg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pdf: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub javascript: Option<String>,
    /// A table's columns (E2B's `e2b/data` format).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// A chart's data (E2B's `e2b/chart` format).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart: Option<Value>,
    /// Formats with no field of their own, by MIME type.
    pub extra: Map<String, Value>,
    /// Whether this is the value of the code's last expression (not a `display` call).
    pub is_main_result: bool,
}

impl RichResult {
    /// Sorts a MIME bundle into fields; what has no field goes to `extra`.
    pub fn from_bundle(bundle: &Value, is_main_result: bool) -> Self {
        let mut extra = bundle.as_object().cloned().unwrap_or_default();
        let mut text = |mime: &str| match extra.remove(mime) {
            Some(Value::String(s)) => Some(s),
            Some(Value::Array(lines)) => Some(
                lines
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .concat(),
            ),
            Some(other) => Some(other.to_string()),
            None => None,
        };
        let mut result = RichResult {
            text: text("text/plain").map(unquote),
            html: text("text/html"),
            markdown: text("text/markdown"),
            svg: text("image/svg+xml"),
            png: text("image/png"),
            jpeg: text("image/jpeg"),
            pdf: text("application/pdf"),
            latex: text("text/latex"),
            javascript: text("application/javascript"),
            is_main_result,
            ..RichResult::default()
        };
        result.json = extra.remove("application/json");
        result.data = extra.remove("e2b/data");
        result.chart = extra.remove("e2b/chart");
        result.extra = extra;
        result
    }
}

/// A string's repr loses its quotes, as E2B's interpreter shows it (`'a'` is `a`).
fn unquote(text: String) -> String {
    let quoted = text.len() >= 2
        && ((text.starts_with('\'') && text.ends_with('\''))
            || (text.starts_with('"') && text.ends_with('"')));
    if quoted {
        text[1..text.len() - 1].to_owned()
    } else {
        text
    }
}

fn string(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// Follows one execution's messages: what to send for each, and when it is over.
#[derive(Debug, Default)]
pub struct Tracker {
    errored: bool,
    /// Set once the kernel has begun the execution (and so reacts to an interrupt).
    pub started: bool,
    /// Set once the kernel has both replied and gone idle (or refused the request).
    pub done: bool,
    /// The two halves of the end, which come on different sockets in either order: an
    /// execution that ended at the first could lose the other's news (an `aborted` reply).
    replied: bool,
    idle: bool,
}

impl Tracker {
    /// Whether the execution has reported an error (an interrupt's included).
    pub fn errored(&self) -> bool {
        self.errored
    }

    /// The lines `incoming` becomes (often none).
    pub fn on(&mut self, incoming: &Incoming) -> Vec<OutputLine> {
        let message = &incoming.message;
        let content = &message.content;
        let mut lines = Vec::new();
        match (incoming.channel, message.msg_type()) {
            (Channel::IoPub, "execute_input") => {
                self.started = true;
                if let Some(count) = content["execution_count"].as_i64() {
                    lines.push(OutputLine::NumberOfExecutions {
                        execution_count: count,
                    });
                }
            }
            (Channel::IoPub, "stream") => {
                let text = string(&content["text"]);
                let timestamp = message.header.date.clone();
                lines.push(match content["name"].as_str() {
                    Some("stderr") => OutputLine::Stderr { text, timestamp },
                    _ => OutputLine::Stdout { text, timestamp },
                });
            }
            (Channel::IoPub, "display_data") => {
                lines.push(OutputLine::Result(Box::new(RichResult::from_bundle(
                    &content["data"],
                    false,
                ))));
            }
            (Channel::IoPub, "execute_result") => {
                lines.push(OutputLine::Result(Box::new(RichResult::from_bundle(
                    &content["data"],
                    true,
                ))));
            }
            (Channel::IoPub, "error") if !std::mem::replace(&mut self.errored, true) => {
                lines.push(error_line(content));
            }
            (Channel::IoPub, "status") if content["execution_state"] == "idle" => {
                self.idle = true;
            }
            (Channel::Shell, "execute_reply") => {
                self.replied = true;
                match content["status"].as_str() {
                    Some("error") if !std::mem::replace(&mut self.errored, true) => {
                        lines.push(error_line(content));
                    }
                    Some("aborted" | "abort") => {
                        lines.push(OutputLine::error(
                            "ExecutionAborted",
                            "Execution was aborted",
                        ));
                        self.done = true;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        self.done |= self.replied && self.idle;
        lines
    }
}

fn error_line(content: &Value) -> OutputLine {
    // Joined with nothing between the kernel's pieces, as E2B's interpreter joins them: the
    // SDKs hand this string to the user unchanged.
    let traceback = content["traceback"]
        .as_array()
        .map(|lines| lines.iter().filter_map(Value::as_str).collect::<String>())
        .unwrap_or_default();
    OutputLine::Error {
        name: string(&content["ename"]),
        value: string(&content["evalue"]),
        traceback,
    }
}

#[cfg(test)]
mod tests {
    use cove_jupyter::Message;
    use serde_json::json;

    use super::*;

    fn incoming(channel: Channel, msg_type: &str, content: Value) -> Incoming {
        Incoming {
            channel,
            message: Message::request("s", msg_type, content),
        }
    }

    #[test]
    fn results_keep_every_format() {
        let line = OutputLine::Result(Box::new(RichResult::from_bundle(
            &json!({"text/plain": "'hi'", "text/html": "<b>hi</b>", "image/png": "iVBOR",
                    "application/json": {"a": 1}, "application/vnd.custom": "x"}),
            true,
        )));
        let json: Value = serde_json::from_str(&line.to_line()).unwrap();
        assert_eq!(
            json,
            json!({"type": "result", "text": "hi", "html": "<b>hi</b>", "png": "iVBOR",
                   "json": {"a": 1}, "extra": {"application/vnd.custom": "x"},
                   "is_main_result": true})
        );
    }

    #[test]
    fn an_execution_ends_when_both_the_reply_and_idle_have_come() {
        // Idle (iopub) may come before the reply (shell): the reply still counts.
        let mut tracker = Tracker::default();
        tracker.on(&incoming(
            Channel::IoPub,
            "status",
            json!({"execution_state": "idle"}),
        ));
        assert!(!tracker.done, "ended before the kernel's reply");
        let lines = tracker.on(&incoming(
            Channel::Shell,
            "execute_reply",
            json!({"status": "aborted"}),
        ));
        assert!(
            matches!(&lines[..], [OutputLine::Error { name, .. }] if name == "ExecutionAborted")
        );
        assert!(tracker.done);

        let mut tracker = Tracker::default();
        tracker.on(&incoming(
            Channel::Shell,
            "execute_reply",
            json!({"status": "ok"}),
        ));
        assert!(!tracker.done, "ended before the kernel went idle");
        tracker.on(&incoming(
            Channel::IoPub,
            "status",
            json!({"execution_state": "idle"}),
        ));
        assert!(tracker.done);
    }

    #[test]
    fn an_execution_ends_when_the_kernel_goes_idle() {
        let mut tracker = Tracker::default();
        let lines = tracker.on(&incoming(
            Channel::IoPub,
            "execute_input",
            json!({"execution_count": 3}),
        ));
        assert_eq!(
            lines,
            [OutputLine::NumberOfExecutions { execution_count: 3 }]
        );
        let lines = tracker.on(&incoming(
            Channel::IoPub,
            "stream",
            json!({"name": "stderr", "text": "w\n"}),
        ));
        assert!(matches!(&lines[0], OutputLine::Stderr { text, .. } if text == "w\n"));
        let error = json!({"status": "error", "ename": "ValueError", "evalue": "bad",
                           "traceback": ["Traceback", "ValueError: bad"]});
        let lines = tracker.on(&incoming(Channel::IoPub, "error", error.clone()));
        assert_eq!(
            lines,
            [OutputLine::Error {
                name: "ValueError".into(),
                value: "bad".into(),
                // Joined with nothing between the pieces, as E2B's interpreter joins them.
                traceback: "TracebackValueError: bad".into()
            }]
        );
        // The reply repeats the error; it is sent once.
        assert!(
            tracker
                .on(&incoming(Channel::Shell, "execute_reply", error))
                .is_empty()
        );
        assert!(!tracker.done);
        tracker.on(&incoming(
            Channel::IoPub,
            "status",
            json!({"execution_state": "idle"}),
        ));
        assert!(tracker.done);
        assert_eq!(
            OutputLine::EndOfExecution.to_line(),
            "{\"type\":\"end_of_execution\"}\n"
        );
    }
}
