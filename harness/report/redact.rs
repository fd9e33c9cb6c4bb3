//! Keeping secrets out of every file a run writes.
//!
//! The lead resolves the secrets a run uses (client secrets, user passwords, KVM and BMC
//! passwords) and builds one [`Redactor`] from their values. Everything the report layer
//! writes goes through it: events on append, console logs, excerpts, messages, the three
//! report files, evidence and text artifacts. A secret can appear escaped (JSON, HTML,
//! XML, a URL-encoded form body), so each secret is matched in those spellings too.
//! Tokens that were never handed over (a JWT, a bearer token, `client_secret=...` in a
//! logged request) are caught by shape.

use std::borrow::Cow;

use regex::Regex;
use regex::bytes::Regex as BytesRegex;

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Shapes of credentials that are scrubbed even when nobody named them.
/// The first group (when present) is kept, so `Bearer [redacted]` stays readable.
const SHAPES: [&str; 3] = [
    // A JWT (access tokens, id tokens): three base64url parts, the first two JSON.
    r"()eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
    r"(?i)(bearer[ \t]+)[A-Za-z0-9._~+/-]{16,}=*",
    r#"(?i)((?:client_secret|password|passwd|access_token|refresh_token)["']?[ \t]*[=:][ \t]*["']?)[^\s"'&,;<]+"#,
];

/// Scrubs secret values from text and bytes.
#[derive(Clone)]
pub struct Redactor {
    secrets: Option<Regex>,
    secrets_bytes: Option<BytesRegex>,
    shapes: Vec<Regex>,
    shapes_bytes: Vec<BytesRegex>,
}

/// Never shows the secrets: a `{:?}` of a run directory ends up in logs.
impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(Vec::<String>::new())
    }
}

impl Redactor {
    /// A redactor for these secret values (empty values are ignored).
    pub fn new<I, S>(secrets: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut spellings: Vec<String> = Vec::new();
        for secret in secrets {
            let secret = secret.as_ref();
            if secret.is_empty() {
                continue;
            }
            spellings.extend(spellings_of(secret));
        }
        spellings.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        spellings.dedup();
        // Longest first: with leftmost-first alternation a secret that contains another
        // is replaced whole, not in pieces.
        let alternation = spellings
            .iter()
            .map(|s| regex::escape(s))
            .collect::<Vec<_>>()
            .join("|");
        let (secrets, secrets_bytes) = if spellings.is_empty() {
            (None, None)
        } else {
            (
                Regex::new(&alternation).ok(),
                BytesRegex::new(&alternation).ok(),
            )
        };
        Redactor {
            secrets,
            secrets_bytes,
            shapes: SHAPES.iter().filter_map(|p| Regex::new(p).ok()).collect(),
            shapes_bytes: SHAPES
                .iter()
                .filter_map(|p| BytesRegex::new(p).ok())
                .collect(),
        }
    }

    /// Scrubs secrets from text.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        if let Some(re) = &self.secrets
            && re.is_match(&out)
        {
            out = Cow::Owned(re.replace_all(&out, REDACTED).into_owned());
        }
        for re in &self.shapes {
            if re.is_match(&out) {
                let replaced = re.replace_all(&out, format!("${{1}}{REDACTED}").as_str());
                out = Cow::Owned(replaced.into_owned());
            }
        }
        out
    }

    /// Scrubs secrets from bytes that may not be UTF-8 (console logs, artifacts).
    pub fn redact_bytes<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out = Cow::Borrowed(bytes);
        if let Some(re) = &self.secrets_bytes
            && re.is_match(&out)
        {
            out = Cow::Owned(re.replace_all(&out, REDACTED.as_bytes()).into_owned());
        }
        for re in &self.shapes_bytes {
            if re.is_match(&out) {
                let replaced = re.replace_all(&out, format!("${{1}}{REDACTED}").as_bytes());
                out = Cow::Owned(replaced.into_owned());
            }
        }
        out
    }
}

/// The ways a secret can be spelled in the files aplab writes.
fn spellings_of(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret)
        .map(|q| q[1..q.len() - 1].to_string())
        .unwrap_or_default();
    let xml = secret
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;");
    let mut out = vec![
        secret.to_string(),
        json,
        xml,
        // tera's HTML escaping also escapes `/` and `'` its own way.
        tera::escape_html(secret),
        percent_encoded(secret),
        // The console log escapes backslashes by doubling them.
        secret.replace('\\', "\\\\"),
    ];
    out.retain(|s| !s.is_empty());
    out
}

/// `application/x-www-form-urlencoded` spelling (token requests send the client secret so).
fn percent_encoded(secret: &str) -> String {
    let mut out = String::new();
    for b in secret.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_every_spelling_of_a_secret() {
        let r = Redactor::new(["p@ss/w<o>rd&\"1\"", "s3cr3t-value"]);
        let secret = "p@ss/w<o>rd&\"1\"";
        for text in [
            format!("typed {secret} at the prompt"),
            format!("{{\"text\":{}}}", serde_json::to_string(secret).unwrap()),
            format!("<p>{}</p>", tera::escape_html(secret)),
            format!("client_id=x&secret={}", percent_encoded(secret)),
        ] {
            let out = r.redact(&text);
            assert!(out.contains(REDACTED), "{out}");
            assert!(!out.contains("w<o>rd") && !out.contains("w&lt;o"), "{out}");
        }
        assert_eq!(r.redact("token s3cr3t-value."), "token [redacted].");
    }

    #[test]
    fn scrubs_bytes_that_are_not_utf8() {
        let r = Redactor::new(["hunter22"]);
        let out = r.redact_bytes(b"\xff\xfepassword hunter22\x1b[0m");
        assert_eq!(&*out, b"\xff\xfepassword [redacted]\x1b[0m".as_slice());
    }

    #[test]
    fn scrubs_credential_shapes_nobody_named() {
        let r = Redactor::default();
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJncmFwaCJ9.c2lnbmF0dXJl";
        assert_eq!(r.redact(&format!("got {jwt}")), "got [redacted]");
        assert_eq!(
            r.redact("Authorization: Bearer abcdefghijklmnop0123"),
            "Authorization: Bearer [redacted]"
        );
        assert_eq!(
            r.redact("grant_type=client_credentials&client_secret=xyz~123&scope=a"),
            "grant_type=client_credentials&client_secret=[redacted]&scope=a"
        );
        // Nothing to scrub: the text comes back untouched, without a copy.
        assert!(matches!(
            r.redact("Securing your hardware"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let r = Redactor::new(["hunter22-secret"]);
        assert!(!format!("{r:?}").contains("hunter22"), "{r:?}");
    }

    #[test]
    fn a_secret_inside_another_is_replaced_whole() {
        let r = Redactor::new(["abc", "xxabcxx"]);
        assert_eq!(r.redact("1 xxabcxx 2 abc"), "1 [redacted] 2 [redacted]");
    }
}
