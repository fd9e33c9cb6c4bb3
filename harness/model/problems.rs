//! Problems found in a scenario or an inventory, each pointing at `file:line:col`.
//!
//! The loaders collect every problem they find in one pass instead of stopping at the
//! first, so a lab engineer fixes a file in one round trip. A problem carries its source
//! line, so printing needs no access to the files any more.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A file as read, kept beside the nodes parsed from it so a problem can quote its line.
#[derive(Debug)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

impl SourceFile {
    pub fn new(path: &Path, text: String) -> Arc<SourceFile> {
        Arc::new(SourceFile {
            path: path.to_path_buf(),
            text,
        })
    }

    /// The text of line `line` (1-based), without its line break.
    pub fn line_text(&self, line: u32) -> &str {
        self.text
            .split('\n')
            .nth(line.saturating_sub(1) as usize)
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .unwrap_or("")
    }
}

/// Where something was written: a file, a 1-based line and column, and a width in
/// characters (for the caret line).
#[derive(Debug, Clone)]
pub struct Span {
    pub file: Arc<SourceFile>,
    pub line: u32,
    pub col: u32,
    pub width: u32,
}

impl Span {
    /// The start of a file (for problems about a file as a whole).
    pub fn file_start(file: &Arc<SourceFile>) -> Span {
        Span {
            file: file.clone(),
            line: 1,
            col: 1,
            width: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem: where, what, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub file: PathBuf,
    pub line: u32,
    pub col: u32,
    pub width: u32,
    pub message: String,
    pub hint: Option<String>,
    /// The source line the problem is on.
    pub source_line: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        writeln!(
            f,
            "{}:{}:{}: {label}{}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        let number = self.line.to_string();
        let pad = " ".repeat(number.len());
        if self.width == 0 {
            if let Some(hint) = &self.hint {
                writeln!(f, "{pad} = hint: {hint}")?;
            }
            return Ok(());
        }
        // Tabs would make the caret drift; a tab is shown as one space.
        let shown: String = self
            .source_line
            .chars()
            .map(|c| if c == '\t' { ' ' } else { c })
            .collect();
        writeln!(f, "{pad} |")?;
        writeln!(f, "{number} | {shown}")?;
        writeln!(
            f,
            "{pad} | {}{}",
            " ".repeat(self.col.saturating_sub(1) as usize),
            "^".repeat(self.width.max(1) as usize)
        )?;
        if let Some(hint) = &self.hint {
            writeln!(f, "{pad} = hint: {hint}")?;
        }
        Ok(())
    }
}

/// All problems found while loading, errors and warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems {
    pub items: Vec<Problem>,
}

impl Problems {
    pub fn new() -> Problems {
        Problems::default()
    }

    pub fn error(&mut self, span: &Span, message: impl Into<String>) -> &mut Problem {
        self.push(Severity::Error, span, message)
    }

    pub fn warning(&mut self, span: &Span, message: impl Into<String>) -> &mut Problem {
        self.push(Severity::Warning, span, message)
    }

    fn push(
        &mut self,
        severity: Severity,
        span: &Span,
        message: impl Into<String>,
    ) -> &mut Problem {
        let source_line = span.file.line_text(span.line).to_string();
        // Keep the caret on the line: a span running past its end is cut at the end.
        let room = (source_line.chars().count() as u32 + 1).saturating_sub(span.col);
        self.items.push(Problem {
            severity,
            file: span.file.path.clone(),
            line: span.line,
            col: span.col,
            width: span.width.min(room).max(1),
            message: message.into(),
            hint: None,
            source_line,
        });
        let last = self.items.len() - 1;
        &mut self.items[last]
    }

    /// A problem about a file that could not even be read.
    pub fn file_error(&mut self, path: &Path, message: impl Into<String>, hint: &str) {
        self.items.push(Problem {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            // No position in the file: printed without a source line.
            width: 0,
            message: message.into(),
            hint: Some(hint.to_string()),
            source_line: String::new(),
        });
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|p| p.severity == Severity::Error)
    }

    pub fn error_count(&self) -> usize {
        self.items
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count()
    }

    pub fn warning_count(&self) -> usize {
        self.items.len() - self.error_count()
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Problem> {
        self.items
            .iter()
            .filter(|p| p.severity == Severity::Warning)
    }

    pub fn extend(&mut self, other: Problems) {
        self.items.extend(other.items);
    }

    /// Orders problems by file and position and drops exact repeats (a template shared by
    /// several devices fails the same way for each).
    pub fn sort(&mut self) {
        self.items.sort_by(|a, b| {
            (&a.file, a.line, a.col, a.severity, &a.message)
                .cmp(&(&b.file, b.line, b.col, b.severity, &b.message))
        });
        self.items.dedup();
    }
}

impl Problem {
    pub fn hint(&mut self, hint: impl Into<String>) -> &mut Problem {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The closest of `candidates` to `word`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
