//! The `text/event-stream` parser: bytes as they arrive in, frames out.

use serde_json::Value;

/// One frame of the event stream (the lines up to a blank line).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub comments: Vec<String>,
}

impl Frame {
    /// Only comments (a keep-alive): no id, event name or data.
    pub fn is_comment(&self) -> bool {
        self.id.is_none() && self.event.is_none() && self.data.is_none()
    }

    /// The event's name; `message` when the frame names none.
    pub fn event(&self) -> &str {
        self.event.as_deref().unwrap_or("message")
    }

    pub fn id(&self) -> u64 {
        self.id
            .as_deref()
            .unwrap_or_else(|| panic!("frame without id: {self:?}"))
            .parse()
            .unwrap_or_else(|_| panic!("frame id is not a number: {self:?}"))
    }

    pub fn json(&self) -> Value {
        let data = self
            .data
            .as_deref()
            .unwrap_or_else(|| panic!("frame without data: {self:?}"));
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {self:?}"))
    }

    /// The data's top-level keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .json()
            .as_object()
            .unwrap_or_else(|| panic!("data is not an object: {self:?}"))
            .keys()
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    fn add_line(&mut self, line: &str) {
        if let Some(comment) = line.strip_prefix(':') {
            self.comments.push(comment.trim_start().to_owned());
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "id" => self.id = Some(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                self.data = Some(match self.data.take() {
                    Some(d) => format!("{d}\n{value}"),
                    None => value.to_owned(),
                })
            }
            _ => {} // `retry` and unknown fields are not used here
        }
    }
}

/// Incremental parser: lines end in LF or CRLF, a blank line ends a frame.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of a line not yet ended.
    partial: Vec<u8>,
    /// The frame being read, and whether it has a line yet.
    frame: Frame,
    in_frame: bool,
}

impl Parser {
    /// The frames that `bytes` completes. A line that is not UTF-8 is an
    /// error, and the parser starts afresh after it (the frame it was in,
    /// and any others these bytes completed, are dropped).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, std::str::Utf8Error> {
        self.partial.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.partial[start..].iter().position(|&b| b == b'\n') {
            let line = &self.partial[start..start + nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            start += nl + 1;
            let line = match std::str::from_utf8(line) {
                Ok(line) => line,
                Err(e) => {
                    *self = Self::default();
                    return Err(e);
                }
            };
            if !line.is_empty() {
                self.frame.add_line(line);
                self.in_frame = true;
            } else if self.in_frame {
                frames.push(std::mem::take(&mut self.frame));
                self.in_frame = false;
            }
        }
        self.partial.drain(..start);
        Ok(frames)
    }

    /// Nothing but white space since the last frame: a body may end here.
    pub fn between_frames(&self) -> bool {
        !self.in_frame && self.partial.iter().all(u8::is_ascii_whitespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_frames_split_anywhere_with_comments_and_crlf() {
        let mut p = Parser::default();
        assert_eq!(
            p.push(b": keep-alive\n\nevent: org.entitlements.snap"),
            Ok(vec![Frame {
                comments: vec!["keep-alive".into()],
                ..Frame::default()
            }])
        );
        assert!(!p.between_frames());
        let frames = p
            .push(b"shot\r\nid: 0\ndata: {\"seq\":0}\n\nid: 1\nevent: x\ndata: a\ndata:b\n\n")
            .unwrap();
        assert_eq!(
            frames,
            vec![
                Frame {
                    event: Some("org.entitlements.snapshot".into()),
                    id: Some("0".into()),
                    data: Some("{\"seq\":0}".into()),
                    comments: vec![],
                },
                Frame {
                    event: Some("x".into()),
                    id: Some("1".into()),
                    data: Some("a\nb".into()),
                    comments: vec![],
                }
            ]
        );
        assert!(frames[1].event() == "x" && frames[1].id() == 1);
        assert!(p.between_frames());
    }

    #[test]
    fn blank_lines_alone_make_no_frame_and_a_bad_line_is_an_error() {
        let mut p = Parser::default();
        assert_eq!(p.push(b"\n\r\n\n"), Ok(vec![]));
        assert!(p.between_frames());
        assert!(p.push(b"data: \xff\n\n").is_err());
        assert_eq!(
            p.push(b"data: after\n\n").unwrap()[0].data.as_deref(),
            Some("after")
        );
    }
}
