//! Incremental parsing of a watch stream as `raftkv bench` receives it: an
//! HTTP/1.1 chunked body ([`ChunkedDecoder`]) carrying Server-Sent Events
//! ([`SseParser`]) whose `events` messages hold a JSON batch
//! ([`parse_batch`]).
//!
//! Both decoders are fed whatever a socket read returned, however the bytes
//! are split, and keep only the unfinished tail between calls: a watcher
//! task reads for minutes, so nothing may grow with the stream.

use serde::Deserialize;

/// Largest chunk-size line or SSE line accepted (a message line holds one
/// revision's events; RaftKV values are at most 1 MiB, base64 adds a third).
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Why a watch stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// A chunk-size line that is not hexadecimal.
    #[error("bad chunk size line {0:?}")]
    BadChunkSize(String),
    /// Chunk data not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    MissingChunkEnd,
    /// A line longer than [`MAX_LINE_BYTES`].
    #[error("line over {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    /// An `events` message whose data is not the expected JSON batch.
    #[error("bad watch batch: {0}")]
    BadBatch(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the chunk-size line.
    Size,
    /// This many data bytes of the current chunk are left.
    Data(usize),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last (zero) chunk: trailer lines up to a blank one.
    Trailer,
    /// The body is complete.
    Done,
}

/// Decodes a `Transfer-Encoding: chunked` body incrementally.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    /// Unconsumed bytes of a line (size or trailer) or of a chunk end.
    pending: Vec<u8>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            pending: Vec::new(),
        }
    }
}

impl ChunkedDecoder {
    /// True once the terminating zero-size chunk and trailers were read.
    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes `input`, appending the payload bytes to `out`. Bytes after
    /// the end of the body are ignored.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), StreamError> {
        while !input.is_empty() {
            match self.state {
                ChunkState::Done => return Ok(()),
                ChunkState::Data(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::DataEnd => {
                    let need = 2 - self.pending.len();
                    let n = need.min(input.len());
                    self.pending.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.pending.len() == 2 {
                        if self.pending != b"\r\n" {
                            return Err(StreamError::MissingChunkEnd);
                        }
                        self.pending.clear();
                        self.state = ChunkState::Size;
                    }
                }
                ChunkState::Size | ChunkState::Trailer => {
                    let Some(line) = self.take_line(&mut input)? else {
                        continue;
                    };
                    if self.state == ChunkState::Trailer {
                        if line.is_empty() {
                            self.state = ChunkState::Done;
                        }
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line);
                    let size_text = text.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(size_text, 16)
                        .map_err(|_| StreamError::BadChunkSize(text.clone().into_owned()))?;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
            }
        }
        Ok(())
    }

    /// Moves bytes from `input` into `pending` up to a CRLF; returns the
    /// complete line (without CRLF) if one ended.
    fn take_line(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, StreamError> {
        match input.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pending.extend_from_slice(&input[..i]);
                *input = &input[i + 1..];
                let mut line = std::mem::take(&mut self.pending);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Ok(Some(line))
            }
            None => {
                self.pending.extend_from_slice(input);
                *input = &[];
                if self.pending.len() > MAX_LINE_BYTES {
                    return Err(StreamError::LineTooLong);
                }
                Ok(None)
            }
        }
    }
}

/// One Server-Sent Events message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseMessage {
    /// The `id` field (the watch's revision), if given.
    pub id: Option<String>,
    /// The `event` field; `message` when absent (the SSE default).
    pub event: String,
    /// The `data` lines, joined by `\n`.
    pub data: String,
}

/// Parses an SSE stream (the text/event-stream format) incrementally.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of an unfinished line.
    line: Vec<u8>,
    /// A `\r` ended the last line: a `\n` right after it is part of it.
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Parses `input`, appending every message it completes to `out`.
    /// Comment lines (`:` first) and unknown fields are skipped; a message
    /// with no `data` line is not dispatched (as in the SSE spec).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<SseMessage>) -> Result<(), StreamError> {
        let mut start = 0;
        for (i, &b) in input.iter().enumerate() {
            if b != b'\n' && b != b'\r' {
                continue;
            }
            if b == b'\n' && self.after_cr && i == start && self.line.is_empty() {
                // The `\n` of a `\r\n` whose `\r` ended the line.
                self.after_cr = false;
                start = i + 1;
                continue;
            }
            self.line.extend_from_slice(&input[start..i]);
            start = i + 1;
            self.after_cr = b == b'\r';
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out);
        }
        if start < input.len() {
            self.after_cr = false;
            self.line.extend_from_slice(&input[start..]);
            if self.line.len() > MAX_LINE_BYTES {
                return Err(StreamError::LineTooLong);
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseMessage>) {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(SseMessage {
                    id: self.id.take(),
                    event: self.event.take().unwrap_or_else(|| "message".into()),
                    data,
                });
            }
            self.id = None;
            self.event = None;
            return;
        }
        if line[0] == b':' {
            return;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        match field {
            "id" => self.id = Some(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
    }
}

/// What the bench needs of one watch batch: its revision, and per event
/// its kind and the key's `mod_revision`. Every other field is skipped
/// without being copied.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BatchLite {
    /// The batch's revision.
    pub revision: i64,
    /// Its events (absent in a `progress` message).
    #[serde(default)]
    pub events: Vec<EventLite>,
}

/// One event of a [`BatchLite`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EventLite {
    /// `put` or `delete`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The record (only its `mod_revision` is read).
    pub kv: KvLite,
}

/// The part of an event's record the bench reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct KvLite {
    /// The event's revision.
    #[serde(default)]
    pub mod_revision: i64,
}

/// Parses the data of an `events` (or `progress`) message.
pub fn parse_batch(data: &str) -> Result<BatchLite, StreamError> {
    serde_json::from_str(data).map_err(|e| StreamError::BadBatch(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` to a decoder split at `cut` and returns the payload.
    fn dechunk_split(input: &[u8], cuts: &[usize]) -> Result<(Vec<u8>, bool), StreamError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            d.feed(&input[prev..c], &mut out)?;
            prev = c;
        }
        Ok((out, d.done()))
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let body =
            b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n1\r\nZ\r\n0\r\nX-T: 1\r\n\r\nGARBAGE";
        let want = b"abc0123456789abcdefZ".to_vec();
        // Whole, then every single split point, then every byte apart.
        assert_eq!(dechunk_split(body, &[]).unwrap(), (want.clone(), true));
        for cut in 0..=body.len() {
            assert_eq!(
                dechunk_split(body, &[cut]).unwrap(),
                (want.clone(), true),
                "split at {cut}"
            );
        }
        let every: Vec<usize> = (1..body.len()).collect();
        assert_eq!(dechunk_split(body, &every).unwrap(), (want, true));

        // Unfinished: payload so far, not done.
        let (out, done) = dechunk_split(b"5\r\nhel", &[]).unwrap();
        assert_eq!((out.as_slice(), done), (&b"hel"[..], false));
    }

    #[test]
    fn malformed_chunked_bodies_are_errors() {
        assert!(matches!(
            dechunk_split(b"zz\r\n", &[]),
            Err(StreamError::BadChunkSize(_))
        ));
        assert_eq!(
            dechunk_split(b"2\r\nabXY", &[]),
            Err(StreamError::MissingChunkEnd)
        );
        let long = vec![b'1'; MAX_LINE_BYTES + 1];
        assert_eq!(dechunk_split(&long, &[]), Err(StreamError::LineTooLong));
    }

    fn sse_split(input: &[u8], cuts: &[usize]) -> Vec<SseMessage> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        let mut prev = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            p.feed(&input[prev..c], &mut out).unwrap();
            prev = c;
        }
        out
    }

    fn msg(id: Option<&str>, event: &str, data: &str) -> SseMessage {
        SseMessage {
            id: id.map(str::to_string),
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn sse_messages_parse_with_any_line_ending_and_split() {
        let stream = b": comment\n\
id: 12\nevent: events\ndata: {\"revision\":12}\n\n\
id:15\r\nevent:progress\r\ndata: a\r\ndata: b\r\n\r\n\
event: canceled\rdata\r\r\
id: 99\nevent: nodata\n\n\
data:plain\n\n\
data: unfinished";
        let want = vec![
            msg(Some("12"), "events", "{\"revision\":12}"),
            msg(Some("15"), "progress", "a\nb"),
            msg(None, "canceled", ""),
            msg(None, "message", "plain"),
        ];
        assert_eq!(sse_split(stream, &[]), want);
        for cut in 0..=stream.len() {
            assert_eq!(sse_split(stream, &[cut]), want, "split at {cut}");
        }
        let every: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(sse_split(stream, &every), want);
    }

    #[test]
    fn sse_lines_are_bounded() {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        let long = vec![b'x'; MAX_LINE_BYTES + 1];
        assert_eq!(p.feed(&long, &mut out), Err(StreamError::LineTooLong));
    }

    #[test]
    fn batches_parse_the_fields_the_bench_needs() {
        // The shape docs/api.md gives, with fields the bench skips.
        let data = r#"{"revision":12,"events":[{"type":"put","kv":{"key":"a","value":"2","index":12,"create_revision":11,"mod_revision":12,"version":2,"lease":0},"prev_kv":{"key":"a","value":"1","index":11,"create_revision":11,"mod_revision":11,"version":1,"lease":0}},{"type":"delete","kv":{"key_base64":"/wA=","value":"","index":12,"create_revision":0,"mod_revision":12,"version":0,"lease":0}}]}"#;
        let b = parse_batch(data).unwrap();
        assert_eq!(b.revision, 12);
        assert_eq!(b.events.len(), 2);
        assert_eq!(b.events[0].kind, "put");
        assert_eq!(b.events[1].kind, "delete");
        assert!(b.events.iter().all(|e| e.kv.mod_revision == 12));
        let p = parse_batch(r#"{"revision":15}"#).unwrap();
        assert_eq!((p.revision, p.events.len()), (15, 0));
        assert!(matches!(parse_batch("{"), Err(StreamError::BadBatch(_))));
        assert!(matches!(
            parse_batch(r#"{"events":[]}"#),
            Err(StreamError::BadBatch(_))
        ));
    }
}
