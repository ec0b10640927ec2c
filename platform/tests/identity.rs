//! The verifier against a real JWKS endpoint: remembered tokens still expire, keys rotate.

use std::time::Duration;

use platform::dev_issuer::DevIssuer;
use platform::identity::{AuthError, IdentitySettings, JwtVerifier};
use serde_json::json;

async fn serve_jwks(issuer: &DevIssuer, listener: tokio::net::TcpListener) {
    let router = issuer.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
}

#[tokio::test]
async fn a_remembered_token_is_refused_once_it_expires() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let issuer = DevIssuer::ephemeral(&url, "api://test").unwrap();
    serve_jwks(&issuer, listener).await;
    let verifier = JwtVerifier::new(IdentitySettings {
        issuer: url.clone(),
        audience: "api://test".into(),
        jwks_url: format!("{url}.well-known/jwks.json"),
        leeway: Duration::ZERO,
        refresh_interval: Duration::from_secs(30),
    });
    let now = chrono::Utc::now().timestamp();
    let mut claims = issuer.claims("alice", &["admin"], Duration::from_secs(60));
    claims["exp"] = json!(now + 1);
    let token = issuer.sign(&claims).unwrap();

    let first = verifier.verify(&token).await.unwrap();
    assert_eq!(first.user_id, "alice");
    assert!(first.is_admin());
    // Answered from memory the second time, with the same result.
    assert_eq!(verifier.verify(&token).await.unwrap(), first);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = verifier.verify(&token).await.unwrap_err();
    assert!(
        matches!(expired, AuthError::Invalid(ref reason) if reason.contains("expired")),
        "{expired:?}"
    );
}
