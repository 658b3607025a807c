//! Where each key of a YAML document is written: a map from a dotted key
//! path (`services.web.build`, `services.web.ports.1`) to its 1-based line
//! and column, read with yaml-rust2's marked parser events, so notes about a
//! Compose file point at the line a user opens.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Key paths to `(line, column)`, both 1-based.
#[derive(Debug, Default, Clone)]
pub struct Positions(HashMap<String, (usize, usize)>);

impl Positions {
    /// Indexes `text`; a document yaml-rust2 cannot parse gives an empty index
    /// (serde_yaml reports the syntax error with its own location).
    pub fn of(text: &str) -> Positions {
        let mut r = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut r, false);
        Positions(r.out)
    }

    /// The position of `path`, or of its nearest indexed ancestor, or 1:1.
    pub fn at(&self, path: &str) -> (usize, usize) {
        let mut p = path;
        loop {
            if let Some(pos) = self.0.get(p) {
                return *pos;
            }
            match p.rfind('.') {
                Some(i) => p = &p[..i],
                None => return (1, 1),
            }
        }
    }
}

enum Frame {
    /// A mapping: the key being read (None: the next scalar is a key), and
    /// whether no key was read yet (a block mapping's start marker is not
    /// where its first key is, so an item that is a mapping is placed there).
    Map { key: Option<String>, first: bool },
    /// A sequence: the index of the next item.
    Seq { next: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    out: HashMap<String, (usize, usize)>,
}

impl Recorder {
    fn path(&self) -> Vec<String> {
        let mut v = Vec::new();
        for f in &self.stack {
            match f {
                Frame::Map { key: Some(k), .. } => v.push(k.clone()),
                Frame::Seq { next } => v.push(next.to_string()),
                Frame::Map { key: None, .. } => {}
            }
        }
        v
    }

    /// A value (scalar, alias, or a finished collection) ended: the parent
    /// moves on to its next key or item.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { next }) => *next += 1,
            None => {}
        }
    }

    /// A value starts at `mark`: in a sequence, the item's own position.
    fn value_start(&mut self, mark: Marker) {
        if let Some(Frame::Seq { .. }) = self.stack.last() {
            let path = self.path().join(".");
            self.out
                .entry(path)
                .or_insert((mark.line(), mark.col() + 1));
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, ..) => {
                if let Some(Frame::Map {
                    key: key @ None,
                    first,
                }) = self.stack.last_mut()
                {
                    *key = Some(text);
                    let was_first = std::mem::replace(first, false);
                    let path = self.path().join(".");
                    if was_first {
                        if let Some(i) = path.rfind('.') {
                            let item = path[..i].to_string();
                            let n = self.stack.len();
                            if n >= 2 && matches!(self.stack[n - 2], Frame::Seq { .. }) {
                                self.out
                                    .entry(item)
                                    .or_insert((mark.line(), mark.col() + 1));
                            }
                        }
                    }
                    self.out
                        .entry(path)
                        .or_insert((mark.line(), mark.col() + 1));
                } else {
                    self.value_start(mark);
                    self.value_done();
                }
            }
            Event::Alias(_) => {
                self.value_start(mark);
                self.value_done();
            }
            Event::MappingStart(..) => {
                self.stack.push(Frame::Map {
                    key: None,
                    first: true,
                });
            }
            Event::SequenceStart(..) => {
                self.value_start(mark);
                self.stack.push(Frame::Seq { next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_items_are_found_where_they_are_written() {
        let text = "services:\n  web:\n    image: x\n    build: .\n    ports:\n      - \"80:80\"\n      - target: 81\n        published: 8081\n  db:\n    image: y\n";
        let p = Positions::of(text);
        assert_eq!(p.at("services"), (1, 1));
        assert_eq!(p.at("services.web"), (2, 3));
        assert_eq!(p.at("services.web.build"), (4, 5));
        assert_eq!(p.at("services.web.ports.0"), (6, 9));
        assert_eq!(p.at("services.web.ports.1"), (7, 9));
        assert_eq!(p.at("services.web.ports.1.published"), (8, 9));
        assert_eq!(p.at("services.db.image"), (10, 5));
        // Unknown paths fall back to the nearest ancestor.
        assert_eq!(p.at("services.db.nope.deeper"), (9, 3));
        assert_eq!(p.at("nothing"), (1, 1));
    }
}
