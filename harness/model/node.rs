//! YAML read into a tree of nodes that remember where they were written.
//!
//! serde stops at the first mistake; a lab engineer wants all of them. So the YAML is
//! read (by granit-parser, the parser under serde-saphyr) into this untyped tree first,
//! and the readers in `read_*` walk it, collecting every problem they meet. Every scalar
//! stays a string here: the readers decide what it must be (`on` is a power action, not a
//! boolean; `2.0` is a TPM family, not a float).

use std::collections::HashMap;
use std::sync::Arc;

use serde_saphyr::granit_parser::{Event, Marker, Parser, ScalarStyle};

use super::problems::{Problems, SourceFile, Span};

/// Nodes beyond this many (after expanding aliases) are refused: a few aliases can
/// otherwise expand into billions of nodes.
const MAX_NODES: usize = 200_000;
/// Nesting beyond this depth is refused, so no reader can overflow the stack.
const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone)]
pub struct Node {
    pub span: Span,
    pub kind: NodeKind,
    /// Nodes in this subtree (for the alias budget).
    size: usize,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A scalar as written; `plain` is false when it was quoted or a block scalar.
    Scalar {
        value: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in file order; keys are scalars (checked while reading).
    Map(Vec<(Node, Node)>),
}

impl Node {
    pub fn scalar(span: Span, value: &str) -> Node {
        Node {
            span,
            kind: NodeKind::Scalar {
                value: value.to_string(),
                plain: false,
            },
            size: 1,
        }
    }

    pub fn map(span: Span, entries: Vec<(Node, Node)>) -> Node {
        let size = 1 + entries.iter().map(|(k, v)| k.size + v.size).sum::<usize>();
        Node {
            span,
            kind: NodeKind::Map(entries),
            size,
        }
    }

    fn seq(span: Span, items: Vec<Node>) -> Node {
        let size = 1 + items.iter().map(|n| n.size).sum::<usize>();
        Node {
            span,
            kind: NodeKind::Seq(items),
            size,
        }
    }

    /// `~`, `null` or nothing at all, unquoted.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { value, plain: true }
            if value.is_empty() || value == "~" || value == "null" || value == "Null" || value == "NULL")
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { value, .. } if !self.is_null() => Some(value),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.kind {
            NodeKind::Map(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.kind {
            NodeKind::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// The value under `key`, if this is a map that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }

    /// What this node is, in words, for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Scalar { .. } if self.is_null() => "nothing (null)".to_string(),
            NodeKind::Scalar { value, .. } => {
                let short: String = value.chars().take(40).collect();
                if short.len() < value.len() {
                    format!("`{short}...`")
                } else {
                    format!("`{short}`")
                }
            }
            NodeKind::Seq(_) => "a list".to_string(),
            NodeKind::Map(_) => "a map".to_string(),
        }
    }
}

fn span_of(file: &Arc<SourceFile>, start: Marker, end: Marker) -> Span {
    let width = if end.line() == start.line() && end.col() > start.col() {
        (end.col() - start.col()) as u32
    } else {
        1
    };
    Span {
        file: file.clone(),
        line: start.line().max(1) as u32,
        col: start.col() as u32 + 1,
        width,
    }
}

enum Frame {
    Seq {
        span: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        span: Span,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

/// Reads one YAML document into a node tree. Syntax errors, a second document, alias
/// bombs and absurd nesting are reported as problems (never a panic).
pub fn parse(file: &Arc<SourceFile>, problems: &mut Problems) -> Option<Node> {
    let mut parser = Parser::new_from_str(&file.text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    let mut total = 0usize;

    for item in &mut parser {
        let (event, span) = match item {
            Ok(pair) => pair,
            Err(e) => {
                let m = *e.marker();
                problems
                    .error(
                        &span_of(file, m, m),
                        format!("this is not valid YAML: {}", e.kind()),
                    )
                    .hint("check the indentation and the quoting around here");
                return None;
            }
        };
        let here = span_of(file, span.start, span.end);
        // Nodes this event adds to the document: one, or an alias's whole copy. A
        // finished sequence or map adds only itself (its children were counted as they
        // came), so nesting does not count a node once per level.
        let mut added = 1;
        let node = match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    problems
                        .error(&here, "a second YAML document in one file")
                        .hint("write one scenario or inventory per file, without `---` separators");
                    return None;
                }
                continue;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => continue,
            Event::Scalar(value, style, anchor, _tag) => {
                let node = Node {
                    span: here,
                    kind: NodeKind::Scalar {
                        value: value.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                    size: 1,
                };
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(target) => {
                    added = target.size;
                    let mut node = target.clone();
                    node.span = here;
                    node
                }
                None => {
                    problems.error(&here, "this alias names no anchor defined before it");
                    return None;
                }
            },
            Event::SequenceStart(_, anchor, _) => {
                stack.push(Frame::Seq {
                    span: here,
                    anchor,
                    items: Vec::new(),
                });
                if stack.len() > MAX_DEPTH {
                    problems.error(
                        &span_of(file, span.start, span.start),
                        format!("nested deeper than {MAX_DEPTH} levels"),
                    );
                    return None;
                }
                continue;
            }
            Event::MappingStart(_, anchor, _) => {
                stack.push(Frame::Map {
                    span: here,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                });
                if stack.len() > MAX_DEPTH {
                    problems.error(
                        &span_of(file, span.start, span.start),
                        format!("nested deeper than {MAX_DEPTH} levels"),
                    );
                    return None;
                }
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = stack.pop() else {
                    continue;
                };
                let (node, anchor) = match frame {
                    Frame::Seq {
                        span,
                        anchor,
                        items,
                        ..
                    } => (Node::seq(span, items), anchor),
                    Frame::Map {
                        span,
                        anchor,
                        entries,
                        ..
                    } => (Node::map(span, entries), anchor),
                };
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            _ => continue,
        };
        total += added;
        if total > MAX_NODES {
            problems
                .error(&node.span, format!("more than {MAX_NODES} YAML nodes"))
                .hint("aliases (`*name`) expand into copies; use fewer of them");
            return None;
        }
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                None => *key = Some(node),
                Some(k) => entries.push((k, node)),
            },
        }
    }
    Some(root.unwrap_or_else(|| Node {
        span: Span::file_start(file),
        kind: NodeKind::Scalar {
            value: String::new(),
            plain: true,
        },
        size: 1,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tree(text: &str) -> (Option<Node>, Problems) {
        let file = SourceFile::new(Path::new("t.yaml"), text.to_string());
        let mut p = Problems::new();
        (parse(&file, &mut p), p)
    }

    #[test]
    fn spans_are_one_based() {
        let (node, p) = tree("a:\n  b: [1, two]\n");
        assert!(p.items.is_empty());
        let node = node.unwrap();
        let b = node.get("a").unwrap().get("b").unwrap();
        let two = &b.as_seq().unwrap()[1];
        assert_eq!((two.span.line, two.span.col, two.span.width), (2, 10, 3));
        assert_eq!(two.as_str(), Some("two"));
    }

    #[test]
    fn syntax_errors_and_bombs_are_problems() {
        let (node, p) = tree("a: [1, 2\n");
        assert!(node.is_none());
        assert!(p.items[0].message.starts_with("this is not valid YAML"));
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..8 {
            let prev = format!("*a{}", i - 1);
            bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let (node, p) = tree(&bomb);
        assert!(node.is_none());
        assert!(p.items[0].message.contains("YAML nodes"), "{p}");
    }

    #[test]
    fn nesting_counts_each_node_once() {
        // 20,000 items of 5 nodes each (100,001 in all) are accepted although each
        // node sits inside up to three parents (counted once per level: 220,001);
        // 100,000 items of 3 nodes (300,001) are refused.
        let doc: String = (0..20_000)
            .map(|i| format!("- {{a: {{b: {i}}}}}\n"))
            .collect();
        let (node, p) = tree(&doc);
        assert!(node.is_some(), "{p}");
        let doc: String = (0..100_000).map(|i| format!("- {{a: {i}}}\n")).collect();
        let (node, _) = tree(&doc);
        assert!(node.is_none());
    }
}
