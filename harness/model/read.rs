//! Reading typed values out of the node tree, recording a problem (and carrying on) for
//! every value that is not what it should be.

use std::collections::BTreeMap;
use std::time::Duration;

use super::duration::parse_duration;
use super::node::{Node, NodeKind};
use super::problems::{Problems, did_you_mean};

/// The keys of one YAML map, checked against the keys allowed in that place.
pub struct Fields<'n> {
    pub node: &'n Node,
    entries: &'n [(Node, Node)],
}

impl<'n> Fields<'n> {
    /// Checks that `node` is a map whose keys are all in `allowed`; every unknown key is a
    /// problem with a did-you-mean. `what` names the thing for messages ("a device").
    pub fn of(
        node: &'n Node,
        allowed: &[&str],
        what: &str,
        p: &mut Problems,
    ) -> Option<Fields<'n>> {
        let Some(entries) = node.as_map() else {
            p.error(
                &node.span,
                format!("expected {what} (a map of keys), found {}", node.describe()),
            )
            .hint(format!("the keys {what} takes: {}", allowed.join(", ")));
            return None;
        };
        let mut seen: Vec<&str> = Vec::new();
        for (key, _) in entries {
            let Some(name) = key.as_str() else {
                p.error(&key.span, "a key must be a plain word")
                    .hint(format!("the keys {what} takes: {}", allowed.join(", ")));
                continue;
            };
            if seen.contains(&name) {
                p.error(&key.span, format!("key `{name}` is given twice"))
                    .hint("keep one of them");
            }
            seen.push(name);
            if !allowed.contains(&name) {
                let problem = p.error(&key.span, format!("unknown key `{name}` in {what}"));
                match did_you_mean(name, allowed) {
                    Some(close) => problem.hint(format!("did you mean `{close}`?")),
                    None => problem.hint(format!("the keys {what} takes: {}", allowed.join(", "))),
                };
            }
        }
        Some(Fields { node, entries })
    }

    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
            .filter(|v| !v.is_null())
    }

    /// The key node itself (to point at `name:` rather than its value).
    pub fn key(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, _)| k)
    }

    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// A key that must be present; its absence is a problem pointing at the map.
    pub fn req(&self, key: &str, what: &str, p: &mut Problems) -> Option<&'n Node> {
        let found = self.get(key);
        if found.is_none() {
            p.error(&self.node.span, format!("{what} is missing `{key}:`"));
        }
        found
    }

    pub fn entries(&self) -> &'n [(Node, Node)] {
        self.entries
    }

    pub fn str(&self, key: &str, p: &mut Problems) -> Option<String> {
        self.get(key).and_then(|n| string(n, key, p))
    }

    pub fn req_str(&self, key: &str, what: &str, p: &mut Problems) -> Option<String> {
        self.req(key, what, p).and_then(|n| string(n, key, p))
    }

    pub fn bool(&self, key: &str, default: bool, p: &mut Problems) -> bool {
        self.get(key)
            .and_then(|n| boolean(n, key, p))
            .unwrap_or(default)
    }

    pub fn duration(&self, key: &str, p: &mut Problems) -> Option<Duration> {
        self.get(key).and_then(|n| duration(n, key, p))
    }
}

/// A scalar as a string. Lists and maps are problems.
pub fn string(node: &Node, what: &str, p: &mut Problems) -> Option<String> {
    match &node.kind {
        NodeKind::Scalar { value, .. } => Some(value.clone()),
        _ => {
            p.error(
                &node.span,
                format!("`{what}` must be a single value, found {}", node.describe()),
            );
            None
        }
    }
}

pub fn boolean(node: &Node, what: &str, p: &mut Problems) -> Option<bool> {
    match node.as_str() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => {
            p.error(
                &node.span,
                format!("`{what}` must be true or false, found {}", node.describe()),
            );
            None
        }
    }
}

pub fn number<T: std::str::FromStr>(
    node: &Node,
    what: &str,
    range: &str,
    p: &mut Problems,
) -> Option<T> {
    match node.as_str().and_then(|s| s.trim().parse::<T>().ok()) {
        Some(n) => Some(n),
        None => {
            p.error(
                &node.span,
                format!(
                    "`{what}` must be a whole number ({range}), found {}",
                    node.describe()
                ),
            );
            None
        }
    }
}

pub fn duration(node: &Node, what: &str, p: &mut Problems) -> Option<Duration> {
    let text = string(node, what, p)?;
    match parse_duration(&text) {
        Ok(d) => Some(d),
        Err(e) => {
            p.error(&node.span, format!("`{what}`: {e}"));
            None
        }
    }
}

/// A list; a single value is a problem (a one-item list is written `[x]`).
pub fn list<'n>(node: &'n Node, what: &str, p: &mut Problems) -> Option<&'n [Node]> {
    match node.as_seq() {
        Some(items) => Some(items),
        None => {
            p.error(
                &node.span,
                format!("`{what}` must be a list, found {}", node.describe()),
            )
            .hint("write a list as `[a, b]` or as lines starting with `- `");
            None
        }
    }
}

/// A list of strings, or one string standing for a one-item list.
pub fn strings(node: &Node, what: &str, p: &mut Problems) -> Option<Vec<String>> {
    if let Some(items) = node.as_seq() {
        let mut out = Vec::new();
        for item in items {
            out.push(string(item, what, p)?);
        }
        Some(out)
    } else {
        string(node, what, p).map(|s| vec![s])
    }
}

/// A map of names to single values (tags, `when:`, expected `Key: Value` lines).
pub fn string_map(node: &Node, what: &str, p: &mut Problems) -> Option<BTreeMap<String, String>> {
    let Some(entries) = node.as_map() else {
        p.error(
            &node.span,
            format!(
                "`{what}` must be a map of names to values, found {}",
                node.describe()
            ),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    for (k, v) in entries {
        let key = string(k, what, p)?;
        let value = string(v, &key, p)?;
        if out.insert(key.clone(), value).is_some() {
            p.error(&k.span, format!("key `{key}` is given twice"));
        }
    }
    Some(out)
}

/// One of a fixed set of words, with a did-you-mean.
pub fn word<'a>(node: &Node, what: &str, allowed: &[&'a str], p: &mut Problems) -> Option<&'a str> {
    let text = string(node, what, p)?;
    if let Some(w) = allowed.iter().find(|w| **w == text) {
        return Some(w);
    }
    let problem = p.error(&node.span, format!("`{text}` is not a valid `{what}`"));
    // A long list (key names) is noise next to a good guess.
    match did_you_mean(&text, allowed) {
        Some(close) if allowed.len() > 12 => problem.hint(format!("did you mean `{close}`?")),
        Some(close) => problem.hint(format!(
            "did you mean `{close}`? (one of: {})",
            allowed.join(", ")
        )),
        None if allowed.len() > 12 => problem.hint(format!(
            "e.g. {}, ... (see docs/scenario-language.md)",
            allowed[..12].join(", ")
        )),
        None => problem.hint(format!("one of: {}", allowed.join(", "))),
    };
    None
}

/// A map with exactly one key out of `allowed` (`power: {redfish: {...}}`): the key and
/// its value.
pub fn one_of<'n>(
    node: &'n Node,
    what: &str,
    allowed: &[&str],
    p: &mut Problems,
) -> Option<(&'n str, &'n Node)> {
    let fields = Fields::of(node, allowed, what, p)?;
    let present: Vec<&(Node, Node)> = fields
        .entries()
        .iter()
        .filter(|(k, _)| k.as_str().is_some_and(|k| allowed.contains(&k)))
        .collect();
    match present.as_slice() {
        [(k, v)] => Some((k.as_str().unwrap_or_default(), v)),
        [] => {
            if fields.entries().is_empty() {
                p.error(&node.span, format!("{what} is empty"))
                    .hint(format!("give one of: {}", allowed.join(", ")));
            }
            None
        }
        [_, (second, _), ..] => {
            p.error(
                &second.span,
                format!("{what} takes exactly one of {}", allowed.join(", ")),
            )
            .hint("keep one of them");
            None
        }
    }
}
