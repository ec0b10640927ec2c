//! JWT verification: RS256 access tokens checked against the issuer's JWKS.
//!
//! What is checked, and why each check is there:
//! - the algorithm is pinned (RS256): `alg: none` and HS256 "signed with the public key" tokens
//!   are refused before any key is touched;
//! - the key comes from the issuer's JWKS by `kid`; an unknown `kid` refreshes the cached set at
//!   most once per refresh interval, so garbage tokens cannot make us hammer the issuer;
//! - `iss` must equal the configured issuer exactly, `aud` must be present and equal the API's
//!   client id, `exp` and `nbf` hold with at most 60 s leeway;
//! - the user is `oid` (Entra ID) or `sub`; roles come from `roles`; names and emails are never
//!   used for authorisation.
//!
//! [`Principal`] is an axum extractor: a handler that takes one only runs for a valid token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use tokio::sync::RwLock;

use domain::values::is_exact_user_id;

use crate::problem::Problem;
use crate::settings::{Env, SettingError};

/// The only algorithm accepted.
pub const ALGORITHMS: [Algorithm; 1] = [Algorithm::RS256];
/// The most clock skew tolerated on `exp` and `nbf`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(60);
/// The role that may manage the catalog, ship orders and see everything.
pub const ADMIN_ROLE: &str = "admin";
/// The longest user id accepted (the domain's `CustomerId`).
const MAX_USER_ID: usize = domain::values::CustomerId::MAX_LEN;

/// Who issues tokens and for which audience.
#[derive(Debug, Clone)]
pub struct IdentitySettings {
    pub issuer: String,
    pub audience: String,
    pub jwks_url: String,
    pub leeway: Duration,
    /// Least time between two JWKS fetches caused by unknown key ids.
    pub refresh_interval: Duration,
}

/// The local development issuer's defaults (`till up` serves it).
pub const DEV_ISSUER: &str = "http://127.0.0.1:8079/";
pub const DEV_AUDIENCE: &str = "api://tillstream-dev";
pub const DEV_JWKS_URL: &str = "http://127.0.0.1:8079/.well-known/jwks.json";

impl IdentitySettings {
    /// From the environment:
    /// - Entra ID: `TILL_ENTRA_TENANT_ID` and `TILL_ENTRA_CLIENT_ID` (the API's application id;
    ///   tokens must carry it as `aud`);
    /// - any other issuer: `TILL_JWT_ISSUER`, `TILL_JWT_AUDIENCE`, `TILL_JWKS_URL`;
    /// - nothing set: the local development issuer.
    ///
    /// A half-configured issuer (one Entra variable, or some of the `TILL_JWT_*` ones) is an
    /// error, never a silent fall-back to the development issuer.
    /// `TILL_JWT_LEEWAY_SECS` (default 30, at most 60).
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        let max = MAX_LEEWAY.as_secs();
        let leeway = env.parsed(
            "TILL_JWT_LEEWAY_SECS",
            Duration::from_secs(30),
            &format!("a whole number of seconds from 0 to {max}"),
            |v| {
                v.parse()
                    .ok()
                    .filter(|s| *s <= max)
                    .map(Duration::from_secs)
            },
        )?;
        let entra = ["TILL_ENTRA_TENANT_ID", "TILL_ENTRA_CLIENT_ID"].map(|n| env.get(n));
        let generic = ["TILL_JWT_ISSUER", "TILL_JWT_AUDIENCE", "TILL_JWKS_URL"].map(|n| env.get(n));
        let (issuer, audience, jwks_url) = match (entra, generic) {
            ([Some(tenant), Some(client_id)], _) => (
                format!("https://login.microsoftonline.com/{tenant}/v2.0"),
                client_id.to_owned(),
                format!("https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys"),
            ),
            ([None, None], [Some(issuer), Some(audience), Some(jwks)]) => {
                (issuer.to_owned(), audience.to_owned(), jwks.to_owned())
            }
            ([None, None], [None, None, None]) => (
                DEV_ISSUER.to_owned(),
                DEV_AUDIENCE.to_owned(),
                DEV_JWKS_URL.to_owned(),
            ),
            ([Some(tenant), None], _) => {
                return Err(SettingError::new(
                    "TILL_ENTRA_TENANT_ID",
                    tenant,
                    "usable without TILL_ENTRA_CLIENT_ID (set both for Entra ID)",
                ));
            }
            ([None, Some(client)], _) => {
                return Err(SettingError::new(
                    "TILL_ENTRA_CLIENT_ID",
                    client,
                    "usable without TILL_ENTRA_TENANT_ID (set both for Entra ID)",
                ));
            }
            (_, generic) => {
                let names = ["TILL_JWT_ISSUER", "TILL_JWT_AUDIENCE", "TILL_JWKS_URL"];
                let (set, value) = names
                    .iter()
                    .zip(generic)
                    .find_map(|(name, value)| Some((*name, value?)))
                    .unwrap_or(("TILL_JWT_ISSUER", ""));
                return Err(SettingError::new(
                    set,
                    value,
                    "usable alone: set TILL_JWT_ISSUER, TILL_JWT_AUDIENCE and TILL_JWKS_URL \
                     together (or TILL_ENTRA_TENANT_ID and TILL_ENTRA_CLIENT_ID)",
                ));
            }
        };
        Ok(Self {
            issuer,
            audience,
            jwks_url,
            leeway,
            refresh_interval: Duration::from_secs(30),
        })
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub roles: Vec<String>,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == ADMIN_ROLE)
    }
}

/// Why a token was refused. Everything but [`AuthError::KeysUnavailable`] is the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("tokens must be signed with RS256")]
    UnsupportedAlgorithm,
    #[error("the token's signing key is not one of the issuer's keys")]
    UnknownKey,
    #[error("the token is not valid: {0}")]
    Invalid(String),
    #[error("the issuer's keys cannot be fetched")]
    KeysUnavailable(#[source] reqwest::Error),
}

impl AuthError {
    pub fn to_problem(&self) -> Problem {
        match self {
            AuthError::Missing => Problem::unauthorized(None, "a bearer token is required"),
            AuthError::KeysUnavailable(e) => {
                tracing::error!(error = %e, "JWKS fetch failed");
                Problem::service_unavailable(
                    "identity-unavailable",
                    "the identity provider's keys cannot be fetched; try again shortly",
                )
            }
            other => Problem::unauthorized(Some("invalid_token"), other.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    exp: i64,
    sub: Option<String>,
    oid: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

/// Most verified tokens remembered; past it the memory is cleared and starts again.
const VERIFIED_CAPACITY: usize = 10_000;

/// Verifies bearer tokens. Share one per process (`Arc`).
pub struct JwtVerifier {
    settings: IdentitySettings,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    /// Tokens that passed every check, with their expiry: a client sends the same token with
    /// every request, and an RSA verification per request is the largest CPU cost of a command.
    /// A remembered token is still refused once it expires.
    verified: std::sync::Mutex<HashMap<String, (Principal, i64)>>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    pub fn new(settings: IdentitySettings) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            settings,
            http,
            cache: RwLock::new(KeyCache::default()),
            verified: std::sync::Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> &IdentitySettings {
        &self.settings
    }

    /// Checks a token and returns who it belongs to.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let now = chrono::Utc::now().timestamp();
        let leeway = self.settings.leeway.min(MAX_LEEWAY).as_secs() as i64;
        if let Ok(verified) = self.verified.lock()
            && let Some((principal, exp)) = verified.get(token)
            && now <= exp + leeway
        {
            return Ok(principal.clone());
        }
        let (principal, exp) = self.verify_signed(token).await?;
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
            verified.insert(token.to_owned(), (principal.clone(), exp));
        }
        Ok(principal)
    }

    async fn verify_signed(&self, token: &str) -> Result<(Principal, i64), AuthError> {
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let kid = header.kid.ok_or(AuthError::UnknownKey)?;
        let key = self.key(&kid).await?;

        let mut validation = Validation::new(Algorithm::RS256);
        validation.algorithms = ALGORITHMS.to_vec();
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.settings.leeway.min(MAX_LEEWAY).as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let data = decode::<Claims>(token, &key, &validation)
            .map_err(|e| AuthError::Invalid(describe(e.kind())))?;
        let user_id = data
            .claims
            .oid
            .or(data.claims.sub)
            .ok_or_else(|| AuthError::Invalid("the token names no user (oid or sub)".into()))?;
        // Compared byte for byte everywhere: an id that only looks like another user's (spaces
        // around it, control characters) is refused rather than trimmed into that user.
        if user_id.is_empty() || user_id.len() > MAX_USER_ID || !is_exact_user_id(&user_id) {
            return Err(AuthError::Invalid(format!(
                "the token's user id must be 1 to {MAX_USER_ID} bytes, without surrounding \
                 whitespace or control characters"
            )));
        }
        let principal = Principal {
            user_id,
            roles: data.claims.roles,
        };
        Ok((principal, data.claims.exp))
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, AuthError> {
        if let Some(key) = self.cache.read().await.keys.get(kid) {
            return Ok(key.clone());
        }
        let mut cache = self.cache.write().await;
        if let Some(key) = cache.keys.get(kid) {
            return Ok(key.clone());
        }
        let may_refresh = cache
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.settings.refresh_interval);
        if !may_refresh {
            return Err(AuthError::UnknownKey);
        }
        cache.fetched_at = Some(Instant::now());
        cache.keys = self.fetch_keys().await?;
        cache.keys.get(kid).cloned().ok_or(AuthError::UnknownKey)
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, DecodingKey>, AuthError> {
        let set: JwkSet = self
            .http
            .get(&self.settings.jwks_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(AuthError::KeysUnavailable)?
            .json()
            .await
            .map_err(AuthError::KeysUnavailable)?;
        let keys: HashMap<String, DecodingKey> = set
            .keys
            .iter()
            .filter(|jwk| matches!(jwk.algorithm, AlgorithmParameters::RSA(_)))
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
            })
            .collect();
        tracing::info!(keys = keys.len(), url = %self.settings.jwks_url, "fetched signing keys");
        Ok(keys)
    }
}

fn describe(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidIssuer => "the token was issued by someone else (iss)".into(),
        K::InvalidAudience => "the token is for another audience (aud)".into(),
        K::MissingRequiredClaim(claim) => format!("the token has no {claim} claim"),
        K::InvalidSignature => "the signature does not match".into(),
        K::InvalidAlgorithm => "tokens must be signed with RS256".into(),
        _ => "the token cannot be decoded".into(),
    }
}

/// Extracts the bearer token from a request's `Authorization` header.
pub fn bearer_token(parts: &Parts) -> Result<&str, AuthError> {
    bearer_token_from(&parts.headers)
}

/// Extracts the bearer token from an `Authorization` header.
pub fn bearer_token_from(headers: &axum::http::HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

impl<S> FromRequestParts<S> for Principal
where
    S: Send + Sync,
    Arc<JwtVerifier>: FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        let verifier = Arc::<JwtVerifier>::from_ref(state);
        let token = bearer_token(parts).map_err(|e| e.to_problem())?;
        let principal = verifier.verify(token).await.map_err(|e| e.to_problem())?;
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// The caller if a token was sent; an invalid token is still an error (never silently anonymous).
#[derive(Debug, Clone)]
pub struct MaybePrincipal(pub Option<Principal>);

impl<S> FromRequestParts<S> for MaybePrincipal
where
    S: Send + Sync,
    Arc<JwtVerifier>: FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if !parts.headers.contains_key(AUTHORIZATION) {
            return Ok(Self(None));
        }
        Principal::from_request_parts(parts, state)
            .await
            .map(|p| Self(Some(p)))
    }
}

/// Route guard for admin-only routes: the caller must be authenticated and hold `admin`.
#[derive(Debug, Clone)]
pub struct Admin(pub Principal);

impl<S> FromRequestParts<S> for Admin
where
    S: Send + Sync,
    Arc<JwtVerifier>: FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if !principal.is_admin() {
            return Err(Problem::forbidden("this route needs the admin role"));
        }
        Ok(Self(principal))
    }
}
