//! Failure signatures: known failures of the process and of the lab, as data.
//!
//! `signatures/known-failures.yaml` (embedded; an override file can replace it) lists
//! codes and patterns with the cause, remedy, class and a reference. Every failed step
//! of a run is matched against it; the report shows the best match, or says plainly
//! that no known signature matches.

use std::path::Path;
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::ReportError;

/// The shipped signatures.
pub const DEFAULT_SIGNATURES: &str = include_str!("../../signatures/known-failures.yaml");

/// Where a signature looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Search {
    /// The failure's message and hint.
    Message,
    Console,
    /// Screen titles and text read from the screen.
    Screen,
    /// Everything the events said (retries, device states, artifact failures).
    Events,
    /// Text diagnostics collected from the device (dsregcmd, event logs, IME logs).
    Diagnostics,
}

const ALL_SEARCH: [Search; 5] = [
    Search::Message,
    Search::Console,
    Search::Screen,
    Search::Events,
    Search::Diagnostics,
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    signatures: Vec<RawSignature>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    id: String,
    title: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    seen_as: Option<String>,
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(default)]
    search: Vec<Search>,
    #[serde(default)]
    when: RawWhen,
    class: String,
    cause: String,
    remedy: String,
    reference: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhen {
    #[serde(default)]
    failure_class: Vec<String>,
    #[serde(default)]
    phase: Vec<String>,
    #[serde(default)]
    gap_shorter_than: Option<String>,
    #[serde(default)]
    gap_longer_than: Option<String>,
}

/// One known failure.
#[derive(Debug, Clone)]
pub struct Signature {
    pub id: String,
    pub title: String,
    pub code: Option<String>,
    pub seen_as: Option<String>,
    patterns: Vec<Regex>,
    requires: Vec<Regex>,
    search: Vec<Search>,
    when_class: Vec<String>,
    when_phase: Vec<String>,
    gap_shorter_than: Option<Duration>,
    gap_longer_than: Option<Duration>,
    pub class: String,
    pub cause: String,
    pub remedy: String,
    pub reference: String,
}

/// What is known about one failure, for matching.
#[derive(Debug, Clone, Default)]
pub struct FailureFacts {
    pub class: String,
    pub code: Option<String>,
    pub phase: String,
    /// Message and hint.
    pub message: String,
    pub console: String,
    pub screen: String,
    pub events: String,
    pub diagnostics: String,
    /// The measured wait between the previous phase's end and this phase's start.
    pub gap_before: Option<Duration>,
}

impl FailureFacts {
    fn text(&self, s: Search) -> &str {
        match s {
            Search::Message => &self.message,
            Search::Console => &self.console,
            Search::Screen => &self.screen,
            Search::Events => &self.events,
            Search::Diagnostics => &self.diagnostics,
        }
    }
}

/// The verdict on one failure: a known signature, or an honest "unknown".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Diagnosis {
    /// The matching signature's id; `None` when no signature matches.
    pub signature: Option<String>,
    pub title: String,
    pub cause: String,
    pub remedy: String,
    /// The class the known cause belongs to.
    pub class: Option<String>,
    pub reference: Option<String>,
    /// What identified it (`code 0x80180014`, `pattern in console`, ...).
    pub matched_on: Option<String>,
}

impl Diagnosis {
    pub fn known(&self) -> bool {
        self.signature.is_some()
    }
}

/// The signature list.
#[derive(Debug, Clone)]
pub struct SignatureBook {
    signatures: Vec<Signature>,
}

impl SignatureBook {
    /// The shipped list.
    pub fn builtin() -> SignatureBook {
        // The embedded file is checked by the tests; failing here is a build mistake.
        SignatureBook::parse(
            DEFAULT_SIGNATURES,
            "signatures/known-failures.yaml (built in)",
        )
        .unwrap_or_else(|e| panic!("the built-in signature file is invalid: {e}"))
    }

    /// Reads an override file.
    pub fn load(path: &Path) -> Result<SignatureBook, ReportError> {
        let text = std::fs::read_to_string(path).map_err(|e| ReportError::io(path, e))?;
        SignatureBook::parse(&text, &path.display().to_string())
    }

    /// The override file if given, else the file `APLAB_SIGNATURES` names, else the
    /// built-in list.
    pub fn load_or_builtin(path: Option<&Path>) -> Result<SignatureBook, ReportError> {
        match path {
            Some(p) => SignatureBook::load(p),
            None => match std::env::var_os("APLAB_SIGNATURES") {
                Some(p) if !p.is_empty() => SignatureBook::load(Path::new(&p)),
                _ => Ok(SignatureBook::builtin()),
            },
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<SignatureBook, ReportError> {
        let bad = |msg: String| ReportError::Signatures {
            origin: origin.to_string(),
            message: msg,
        };
        let file: SignatureFile = serde_saphyr::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut signatures = Vec::with_capacity(file.signatures.len());
        for raw in file.signatures {
            let id = raw.id.clone();
            let compile = |p: &String| {
                Regex::new(p).map_err(|e| bad(format!("signature {id}: pattern {p:?}: {e}")))
            };
            let patterns = raw.patterns.iter().map(compile).collect::<Result<_, _>>()?;
            let requires = raw.requires.iter().map(compile).collect::<Result<_, _>>()?;
            if raw.code.is_none() && raw.patterns.is_empty() && raw.when.gap_shorter_than.is_none()
            {
                return Err(bad(format!(
                    "signature {id} has neither a code nor patterns: it would match everything"
                )));
            }
            let gap = |g: &Option<String>| -> Result<Option<Duration>, ReportError> {
                g.as_deref()
                    .map(|s| {
                        humantime::parse_duration(s)
                            .map_err(|e| bad(format!("signature {id}: duration {s:?}: {e}")))
                    })
                    .transpose()
            };
            signatures.push(Signature {
                gap_shorter_than: gap(&raw.when.gap_shorter_than)?,
                gap_longer_than: gap(&raw.when.gap_longer_than)?,
                id: raw.id,
                title: raw.title,
                code: raw.code,
                seen_as: raw.seen_as,
                patterns,
                requires,
                search: if raw.search.is_empty() {
                    ALL_SEARCH.to_vec()
                } else {
                    raw.search
                },
                when_class: raw.when.failure_class,
                when_phase: raw.when.phase,
                class: raw.class,
                cause: raw.cause,
                remedy: raw.remedy,
                reference: raw.reference,
            });
        }
        Ok(SignatureBook { signatures })
    }

    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    /// The best matching signature for a failure, or the unknown verdict.
    pub fn diagnose(&self, facts: &FailureFacts) -> Diagnosis {
        let mut best: Option<(u32, &Signature, String)> = None;
        for sig in &self.signatures {
            if let Some((score, why)) = sig.score(facts)
                && best.as_ref().is_none_or(|(b, _, _)| score > *b)
            {
                best = Some((score, sig, why));
            }
        }
        match best {
            Some((_, sig, why)) => Diagnosis {
                signature: Some(sig.id.clone()),
                title: sig.title.clone(),
                cause: sig.cause.clone(),
                remedy: sig.remedy.clone(),
                class: Some(sig.class.clone()),
                reference: Some(sig.reference.clone()),
                matched_on: Some(why),
            },
            None => Diagnosis {
                signature: None,
                title: "unknown failure".to_string(),
                cause: format!(
                    "no known signature matches; {} failure{}{}",
                    facts.class,
                    facts
                        .code
                        .as_deref()
                        .map(|c| format!(" with code {c}"))
                        .unwrap_or_default(),
                    if facts.phase.is_empty() {
                        String::new()
                    } else {
                        format!(" in phase {}", facts.phase)
                    }
                ),
                remedy: "read the console excerpt and the diagnostics; once the cause is known, \
                         add a signature to signatures/known-failures.yaml"
                    .to_string(),
                class: None,
                reference: None,
                matched_on: None,
            },
        }
    }
}

impl Signature {
    /// How well this signature fits the failure (higher is better), and why; `None` when
    /// it does not match.
    fn score(&self, facts: &FailureFacts) -> Option<(u32, String)> {
        if !self.when_class.is_empty()
            && !self
                .when_class
                .iter()
                .any(|c| c.eq_ignore_ascii_case(&facts.class))
        {
            return None;
        }
        if !self.when_phase.is_empty()
            && !self
                .when_phase
                .iter()
                .any(|p| p.eq_ignore_ascii_case(&facts.phase))
        {
            return None;
        }
        let mut score = 0;
        let mut why = Vec::new();
        if let Some(limit) = self.gap_shorter_than {
            match facts.gap_before {
                Some(gap) if gap < limit => {
                    score += 1;
                    why.push(format!(
                        "the phase started {} after the previous one (less than {})",
                        humantime::format_duration(Duration::from_secs(gap.as_secs())),
                        humantime::format_duration(limit)
                    ));
                }
                _ => return None,
            }
        }
        if let Some(limit) = self.gap_longer_than {
            match facts.gap_before {
                Some(gap) if gap > limit => score += 1,
                _ => return None,
            }
        }
        for re in &self.requires {
            let found = self.search.iter().find(|s| re.is_match(facts.text(**s)))?;
            score += 1;
            why.push(format!("{} mentions {}", word(*found), re.as_str()));
        }
        let mut identified = false;
        if let Some(code) = &self.code {
            if facts.code.as_deref().is_some_and(|c| same_code(c, code)) {
                score += 40;
                identified = true;
                why.insert(0, format!("code {code}"));
            } else if let Some(found) = self
                .search
                .iter()
                .find(|s| contains_ignore_case(facts.text(**s), code))
            {
                // What the failure itself says outweighs what was around it.
                score += if *found == Search::Message { 35 } else { 30 };
                identified = true;
                why.insert(0, format!("code {code} in the {}", word(*found)));
            }
        }
        if !identified {
            for re in &self.patterns {
                if let Some(found) = self.search.iter().find(|s| re.is_match(facts.text(**s))) {
                    score += if *found == Search::Message { 25 } else { 20 };
                    identified = true;
                    why.insert(0, format!("pattern in the {}", word(*found)));
                    break;
                }
            }
        }
        if !identified && (self.code.is_some() || !self.patterns.is_empty()) {
            return None;
        }
        Some((score, why.join("; ")))
    }
}

fn word(s: Search) -> &'static str {
    match s {
        Search::Message => "message",
        Search::Console => "console",
        Search::Screen => "screen",
        Search::Events => "events",
        Search::Diagnostics => "diagnostics",
    }
}

/// `0x80180014` is `0X80180014`; `HTTP 403` covers `HTTP 403 Forbidden`.
fn same_code(seen: &str, known: &str) -> bool {
    let seen = seen.trim();
    let known = known.trim();
    seen.eq_ignore_ascii_case(known)
        || (seen.len() > known.len()
            && seen.is_char_boundary(known.len())
            && seen[..known.len()].eq_ignore_ascii_case(known)
            && seen[known.len()..].starts_with(' '))
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    !needle.is_empty() && haystack.to_lowercase().contains(&needle.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_file_parses_and_covers_the_domain_table() {
        let book = SignatureBook::builtin();
        for code in [
            "0x800705B4",
            "0x801C03EA",
            "0x81039001",
            "0x81039023",
            "0x81039024",
            "0x80070490",
            "0x80180014",
            "0x801C03F3",
            "0x80180005",
            "0x80070774",
            "0x80180018",
            "0x80180022",
            "0xC1036501",
            "NotComputed",
        ] {
            assert!(
                book.signatures()
                    .iter()
                    .any(|s| s.code.as_deref() == Some(code)),
                "no signature for {code}"
            );
        }
    }

    #[test]
    fn an_unknown_failure_says_so() {
        let d = SignatureBook::builtin().diagnose(&FailureFacts {
            class: "product".into(),
            code: Some("0xDEADBEEF".into()),
            phase: "technician".into(),
            message: "something odd".into(),
            ..Default::default()
        });
        assert!(!d.known());
        assert!(
            d.cause
                .starts_with("no known signature matches; product failure with code 0xDEADBEEF"),
            "{}",
            d.cause
        );
    }

    #[test]
    fn bad_override_files_say_what_is_wrong() {
        let e = SignatureBook::parse("signatures: [{id: x}]", "over.yaml").unwrap_err();
        assert!(e.to_string().contains("over.yaml"), "{e}");
        let e = SignatureBook::parse(
            "signatures:\n  - {id: x, title: t, patterns: ['('], class: product, cause: c, remedy: r, reference: u}\n",
            "over.yaml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("signature x"), "{e}");
    }
}
