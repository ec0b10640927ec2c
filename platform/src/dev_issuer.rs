//! The local development issuer: an RSA key of its own, a JWKS served over HTTP and tokens
//! signed with RS256, so development and tests run exactly the verification path production
//! runs against Entra ID. Nothing here is used when a real issuer is configured.
//!
//! The key is generated once and kept in a PEM file (`TILL_DEV_KEY`, default
//! `~/.local/share/tillstream/dev-issuer.pem`) so `till token` and a running `till up` agree.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::RsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::identity::{DEV_AUDIENCE, DEV_ISSUER};

/// A development issuer with its signing key.
#[derive(Clone)]
pub struct DevIssuer {
    issuer: String,
    audience: String,
    kid: String,
    encoding_key: EncodingKey,
    public_pem: String,
    jwks: Value,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Where the development key lives.
pub fn default_key_path() -> PathBuf {
    if let Ok(path) = std::env::var("TILL_DEV_KEY")
        && !path.trim().is_empty()
    {
        return PathBuf::from(path);
    }
    let base = std::env::var("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|_| std::env::temp_dir());
    base.join("tillstream").join("dev-issuer.pem")
}

impl DevIssuer {
    /// The issuer with the default names and the key at [`default_key_path`].
    pub fn load_default() -> anyhow::Result<Self> {
        Self::load_or_create(&default_key_path(), DEV_ISSUER, DEV_AUDIENCE)
    }

    /// Loads the key at `path`, generating and saving a new one (mode 0600) if there is none.
    pub fn load_or_create(path: &Path, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let key = match std::fs::read_to_string(path) {
            Ok(pem) => RsaPrivateKey::from_pkcs8_pem(&pem)
                .with_context(|| format!("reading the development key {}", path.display()))?,
            Err(_) => {
                let key = generate_key()?;
                save_key(path, &key)?;
                tracing::info!(path = %path.display(), "generated a development signing key");
                key
            }
        };
        Self::from_key(&key, issuer, audience)
    }

    /// An issuer with a fresh key that is never written anywhere (tests).
    pub fn ephemeral(issuer: &str, audience: &str) -> anyhow::Result<Self> {
        Self::from_key(&generate_key()?, issuer, audience)
    }

    fn from_key(key: &RsaPrivateKey, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let n = key.n().to_bytes_be();
        let e = key.e().to_bytes_be();
        // RFC 7638-style thumbprint: stable for the key, unique enough for a kid.
        let thumbprint = Sha256::digest(
            json!({ "e": URL_SAFE_NO_PAD.encode(&e), "kty": "RSA", "n": URL_SAFE_NO_PAD.encode(&n) })
                .to_string(),
        );
        let kid = URL_SAFE_NO_PAD.encode(&thumbprint[..12]);
        let private_pem = key.to_pkcs8_pem(LineEnding::LF)?;
        let public_pem = key.to_public_key().to_public_key_pem(LineEnding::LF)?;
        let encoding_key = EncodingKey::from_rsa_pem(private_pem.as_bytes())?;
        let jwks = json!({
            "keys": [{
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(&n),
                "e": URL_SAFE_NO_PAD.encode(&e),
            }]
        });
        Ok(Self {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            kid,
            encoding_key,
            public_pem,
            jwks,
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn encoding_key(&self) -> &EncodingKey {
        &self.encoding_key
    }

    /// The public key as SPKI PEM (for tests of key-confusion attacks).
    pub fn public_key_pem(&self) -> &str {
        &self.public_pem
    }

    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// The claims a token for `sub` with `roles` carries, valid for `ttl` from now.
    pub fn claims(&self, sub: &str, roles: &[&str], ttl: Duration) -> Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "roles": roles,
            "iat": now,
            "nbf": now,
            "exp": now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        })
    }

    /// Signs arbitrary claims with this issuer's key and kid (tests use it for bad tokens).
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding_key)?)
    }

    /// A valid token for `sub` with `roles`.
    pub fn token(&self, sub: &str, roles: &[&str], ttl: Duration) -> anyhow::Result<String> {
        self.sign(&self.claims(sub, roles, ttl))
    }

    /// Serves the discovery document, the JWKS, and `POST /token` — `{"sub": "alice",
    /// "roles": ["admin"]}` → `{"access_token": …, "token_type": "Bearer", "expires_in": …}` —
    /// the storefront's and console's local sign-in (through the gateway's `/auth/token`). Like
    /// `till token`, it hands any name any role: it exists only where the development issuer
    /// does, never beside a real one.
    pub fn router(&self) -> Router {
        let minter = self.clone();
        let jwks = self.jwks.clone();
        let discovery = json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}.well-known/jwks.json", with_slash(&self.issuer)),
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        Router::new()
            .route(
                "/.well-known/jwks.json",
                get(move || async move { axum::Json(jwks) }),
            )
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/token",
                post(move |request: axum::Json<TokenRequest>| async move { minter.mint(&request) }),
            )
    }

    fn mint(&self, request: &TokenRequest) -> axum::response::Response {
        use axum::response::IntoResponse;
        let valid_sub = (1..=64).contains(&request.sub.len())
            && request
                .sub
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c));
        let valid_roles = request.roles.iter().all(|r| r == "admin");
        if !valid_sub || !valid_roles {
            return crate::problem::Problem::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid-sign-in",
                "Invalid sign-in",
            )
            .with_detail("sub must be 1–64 letters, digits or . _ - @; the only role is admin")
            .into_response();
        }
        let roles: Vec<&str> = request.roles.iter().map(String::as_str).collect();
        match self.token(&request.sub, &roles, SIGN_IN_TTL) {
            Ok(token) => axum::Json(json!({
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": SIGN_IN_TTL.as_secs(),
            }))
            .into_response(),
            Err(error) => crate::problem::Problem::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "signing-failed",
                "Signing failed",
            )
            .with_detail(error.to_string())
            .into_response(),
        }
    }
}

/// How long a token from `POST /token` lasts.
const SIGN_IN_TTL: Duration = Duration::from_secs(8 * 3600);

/// The body of `POST /token`.
#[derive(Debug, serde::Deserialize)]
pub struct TokenRequest {
    pub sub: String,
    #[serde(default)]
    pub roles: Vec<String>,
}

fn with_slash(url: &str) -> String {
    if url.ends_with('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    }
}

fn generate_key() -> anyhow::Result<RsaPrivateKey> {
    Ok(RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)?)
}

fn save_key(path: &Path, key: &RsaPrivateKey) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let pem = key.to_pkcs8_pem(LineEnding::LF)?;
    std::fs::write(path, pem.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn mint(issuer: &DevIssuer, body: &str) -> (StatusCode, Value) {
        let request = Request::post("/token")
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let response = issuer.router().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn token_signs_the_name_and_roles_it_is_given_and_refuses_others() {
        let issuer = DevIssuer::ephemeral("http://127.0.0.1:1/", "api://test").unwrap();
        let (status, body) = mint(&issuer, r#"{"sub":"alice","roles":["admin"]}"#).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let token = body["access_token"].as_str().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(
            (claims["sub"].as_str(), claims["roles"][0].as_str()),
            (Some("alice"), Some("admin"))
        );
        assert_eq!(claims["aud"], "api://test");
        for bad in [
            r#"{"sub":""}"#,
            r#"{"sub":"<script>"}"#,
            r#"{"sub":"bob","roles":["superuser"]}"#,
        ] {
            let (status, body) = mint(&issuer, bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
            assert_eq!(
                body["type"]
                    .as_str()
                    .map(|t| t.ends_with("invalid-sign-in")),
                Some(true),
                "{body}"
            );
        }
    }
}
