//! OAuth2 client-credentials tokens for Graph, with a client secret or a certificate
//! (a signed client assertion).
//!
//! A small flow of our own rather than `azure_identity`: a harness needs exactly one
//! grant (client credentials against `{login_url}/{tenant}/oauth2/v2.0/token`), must
//! target any login host (sovereign clouds, the virtual lab on 127.0.0.1) and must share
//! the retry and error classification of the Graph calls. See docs/tenant.md.
//!
//! The secret is resolved from its reference at each token request and lives only in the
//! form body of that request; it is never stored, logged or put into an error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::graph::{RetryPolicy, send_retrying};
use crate::device::{DeviceError, DeviceResult};
use crate::model::inventory::{Credential, SecretRef, TenantConfig};

/// Reads a secret from where the inventory says it is (one reader for every backend).
pub use crate::device::build::secret as resolve_secret;

/// `client_assertion_type` of a certificate credential.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a client assertion is valid (Entra accepts up to 10 minutes' skew).
const ASSERTION_LIFETIME: u64 = 600;

/// The claims of a client assertion (RFC 7523; Entra's certificate credential).
#[derive(Debug, serde::Serialize, Deserialize)]
pub struct AssertionClaims {
    pub aud: String,
    pub iss: String,
    pub sub: String,
    pub jti: String,
    pub nbf: u64,
    pub iat: u64,
    pub exp: u64,
}

/// The certificate's SHA-256 thumbprint as Entra wants it in `x5t#S256`: base64url of
/// the SHA-256 of the DER certificate.
pub fn certificate_thumbprint(certificate_pem: &str) -> Result<String, String> {
    use base64::Engine;
    use sha2::Digest;
    let parsed = pem::parse_many(certificate_pem).map_err(|e| e.to_string())?;
    let der = parsed
        .iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .ok_or("no CERTIFICATE block in the file")?
        .contents();
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der)))
}

/// Signs a client assertion (RS256, `x5t#S256` naming the certificate) for the token
/// endpoint `audience`, with the private key from its reference.
pub fn client_assertion(
    client_id: &str,
    audience: &str,
    certificate: &std::path::Path,
    key: &SecretRef,
) -> DeviceResult<String> {
    let certificate_pem = std::fs::read_to_string(certificate).map_err(|e| {
        DeviceError::config(format!(
            "cannot read certificate {}: {e}",
            certificate.display()
        ))
        .with_hint("the certificate (PEM) uploaded to the app registration")
    })?;
    let thumbprint = certificate_thumbprint(&certificate_pem).map_err(|e| {
        DeviceError::config(format!(
            "certificate {} is not PEM: {e}",
            certificate.display()
        ))
        .with_hint("give the PEM certificate (-----BEGIN CERTIFICATE-----)")
    })?;
    let key_pem = resolve_secret(key)?;
    let signing_key =
        jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes()).map_err(|_| {
            DeviceError::config("the certificate's private key is not an RSA private key in PEM")
                .with_hint("Entra certificate credentials use RSA keys (PKCS#1 or PKCS#8 PEM)")
        })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let claims = AssertionClaims {
        aud: audience.to_string(),
        iss: client_id.to_string(),
        sub: client_id.to_string(),
        jti: format!("{:032x}", rand::random::<u128>()),
        nbf: now,
        iat: now,
        exp: now + ASSERTION_LIFETIME,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.x5t_s256 = Some(thumbprint);
    jsonwebtoken::encode(&header, &claims, &signing_key)
        .map_err(|e| DeviceError::harness(format!("cannot sign the client assertion: {e}")))
}

/// The application permissions an access token carries (its `roles` claim), when the
/// token is a JWT. Entra's app-only Graph tokens are; the claim is read, not verified:
/// it only lets pre-flight name a missing permission before a write fails.
pub fn token_roles(token: &str) -> Option<Vec<String>> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let roles = claims.get("roles")?.as_array()?;
    Some(
        roles
            .iter()
            .filter_map(|r| r.as_str().map(str::to_string))
            .collect(),
    )
}

/// When to fetch a new token, measured from when the current one was issued: a little
/// before it expires, so that a request never leaves with a token about to lapse.
pub fn refresh_after(lifetime: Duration) -> Duration {
    let margin = (lifetime / 4).min(Duration::from_secs(300));
    lifetime.saturating_sub(margin)
}

#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, Default)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

struct Cached {
    value: String,
    refresh_at: Instant,
}

/// Fetches and caches the app's access token.
pub struct TokenSource {
    http: reqwest::Client,
    tenant_name: String,
    token_url: String,
    client_id: String,
    credential: Credential,
    scope: String,
    policy: RetryPolicy,
    cached: Mutex<Option<Cached>>,
    fetched: AtomicU64,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // No token and no secret in debug output.
        f.debug_struct("TokenSource")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// The token endpoint for a tenant.
pub fn token_url(config: &TenantConfig) -> String {
    format!(
        "{}/{}/oauth2/v2.0/token",
        config.login_url.trim_end_matches('/'),
        config.tenant_id
    )
}

/// The scope asking for the app's Graph application permissions.
pub fn scope(config: &TenantConfig) -> String {
    format!("{}/.default", config.graph_url.trim_end_matches('/'))
}

impl TokenSource {
    pub fn new(http: reqwest::Client, config: &TenantConfig, policy: RetryPolicy) -> Self {
        TokenSource {
            http,
            tenant_name: config.name.clone(),
            token_url: token_url(config),
            client_id: config.client_id.clone(),
            credential: config.credential.clone(),
            scope: scope(config),
            policy,
            cached: Mutex::new(None),
            fetched: AtomicU64::new(0),
        }
    }

    /// How many tokens were fetched from the login endpoint so far.
    pub fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }

    /// A valid token: the cached one unless it is due for refresh.
    pub async fn token(&self) -> DeviceResult<String> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.value.clone());
        }
        let fresh = self.fetch().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    /// Forgets `rejected` (Graph answered 401 to it) so the next `token()` fetches anew.
    /// A token another task already replaced is left alone.
    pub async fn reject(&self, rejected: &str) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|c| c.value == rejected) {
            *cached = None;
        }
    }

    async fn fetch(&self) -> DeviceResult<Cached> {
        // Read at each request; dropped with the form when the request is done.
        let credential = match &self.credential {
            Credential::ClientSecret(secret) => ("client_secret", resolve_secret(secret)?),
            Credential::Certificate { certificate, key } => (
                "client_assertion",
                client_assertion(&self.client_id, &self.token_url, certificate, key)?,
            ),
        };
        let mut form = vec![
            ("client_id", self.client_id.as_str()),
            (credential.0, credential.1.as_str()),
            ("scope", self.scope.as_str()),
            ("grant_type", "client_credentials"),
        ];
        if credential.0 == "client_assertion" {
            form.push(("client_assertion_type", ASSERTION_TYPE));
        }
        let what = format!("get a token for tenant {}", self.tenant_name);
        let started = Instant::now();
        let response = send_retrying(&self.policy, &what, &self.token_url, true, || {
            self.http.post(&self.token_url).form(&form)
        })
        .await
        .map_err(|e| {
            e.with_hint(format!(
                "check that the login endpoint {} is reachable from the lab host",
                self.token_url
            ))
        })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(self.refused(status, &body));
        }
        let parsed: TokenResponse = serde_json::from_str(&body).map_err(|e| {
            DeviceError::infrastructure(format!(
                "the login endpoint {} answered something that is not a token: {e}",
                self.token_url
            ))
            .with_hint("check login_url for this tenant: it should be the Entra ID login host")
        })?;
        let lifetime = parsed
            .expires_in
            .as_ref()
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(3600));
        self.fetched.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(tenant = %self.tenant_name, lifetime_s = lifetime.as_secs(), "fetched a Graph token");
        Ok(Cached {
            value: parsed.access_token,
            refresh_at: started + refresh_after(lifetime),
        })
    }

    /// The login endpoint refused: almost always the inventory's credentials.
    fn refused(&self, status: reqwest::StatusCode, body: &str) -> DeviceError {
        let parsed: TokenError = serde_json::from_str(body).unwrap_or_default();
        // The first line of the description carries the AADSTS code and the reason.
        let reason = parsed.error_description.lines().next().unwrap_or("").trim();
        let aadsts = reason
            .split(|c: char| !c.is_ascii_alphanumeric())
            .find(|w| w.starts_with("AADSTS"))
            .unwrap_or("");
        let hint = match (parsed.error.as_str(), aadsts) {
            (_, "AADSTS90002") | (_, "AADSTS900023") => {
                "check tenant_id: no such tenant on this login host (sovereign cloud? set login_url)"
            }
            (_, "AADSTS700016") | ("unauthorized_client", _) => {
                "check client_id: no such application in this tenant"
            }
            (_, "AADSTS7000222") => "the client secret has expired: create a new one",
            (_, "AADSTS700027") | (_, "AADSTS700024") => {
                "check the certificate: it must be the one uploaded to the app registration, \
                 its key must match, and the lab host's clock must be right"
            }
            ("invalid_client", _) => {
                "check the client secret or certificate (wrong or expired) and client_id for this tenant"
            }
            _ => "check tenant_id, client_id and the client secret for this tenant",
        };
        let code = if parsed.error.is_empty() {
            format!("HTTP {}", status.as_u16())
        } else {
            parsed.error.clone()
        };
        DeviceError::config(format!(
            "tenant {}: the login endpoint refused the app's credentials (HTTP {}{}{})",
            self.tenant_name,
            status.as_u16(),
            if reason.is_empty() { "" } else { ": " },
            reason
        ))
        .with_hint(hint)
        .with_code(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3300)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(60)),
            Duration::from_secs(45)
        );
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn roles_are_read_from_jwt_tokens_only() {
        // {"alg":"none"} . {"roles":["A.Read.All","B.ReadWrite.All"]} . (empty)
        let jwt = "eyJhbGciOiJub25lIn0.eyJyb2xlcyI6WyJBLlJlYWQuQWxsIiwiQi5SZWFkV3JpdGUuQWxsIl19.";
        assert_eq!(
            token_roles(jwt).unwrap(),
            vec!["A.Read.All".to_string(), "B.ReadWrite.All".to_string()]
        );
        assert_eq!(token_roles("opaque-token"), None);
        assert_eq!(token_roles("a.!!!.c"), None);
    }

    #[test]
    fn a_thumbprint_needs_a_certificate_block() {
        assert!(certificate_thumbprint("not pem").is_err());
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(
            certificate_thumbprint(key_only)
                .unwrap_err()
                .contains("CERTIFICATE")
        );
        let cert = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        // SHA-256 of the three bytes 00 00 00, base64url without padding.
        assert_eq!(
            certificate_thumbprint(cert).unwrap(),
            "cJ6AyISHokEeHuTfufIqhhSS0gxHZRUMDHlKvXD4FHw"
        );
    }

    #[test]
    fn secret_files_lose_their_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cr3t\r\n").unwrap();
        assert_eq!(resolve_secret(&SecretRef::File(path)).unwrap(), "s3cr3t");
        let missing = resolve_secret(&SecretRef::Env("APLAB_TEST_NO_SUCH_VAR_42".into()));
        assert!(
            missing
                .unwrap_err()
                .message
                .contains("APLAB_TEST_NO_SUCH_VAR_42")
        );
    }
}
