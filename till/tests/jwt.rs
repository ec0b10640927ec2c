//! Tokens through the gateway: the negative list of JWT attacks and mistakes, each refused
//! with 401 and a `WWW-Authenticate` challenge, and the services checking tokens themselves.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::{TestSystem, issuer, token};

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims() -> Value {
    issuer().claims("alice", &[], std::time::Duration::from_secs(600))
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().map(|c| c.remove(key));
    claims
}

fn signed(claims: &Value) -> String {
    issuer().sign(claims).expect("sign")
}

fn segment(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Refused on a write and on a read alike.
async fn assert_refused(system: &TestSystem, name: &str, token: &str) {
    for (method, path) in [(Method::POST, "/v1/carts"), (Method::GET, "/v1/orders")] {
        let reply = system.send(method.clone(), path, Some(token), None).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{name}, {method} {path}: {reply:?}"
        );
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with("Bearer"),
            "{name}: challenge {challenge:?}"
        );
        assert_eq!(reply.problem_code(), "unauthorized", "{name}");
    }
}

#[tokio::test]
async fn the_jwt_negative_list_is_refused() {
    let system = TestSystem::start().await;
    let valid = signed(&claims());
    let parts: Vec<&str> = valid.split('.').collect();

    let alg_none = format!(
        "{}.{}.",
        segment(&json!({ "alg": "none", "typ": "JWT" })),
        parts[1]
    );
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(issuer().kid().to_owned());
    let hs256_with_public_key = jsonwebtoken::encode(
        &hs_header,
        &claims(),
        &EncodingKey::from_secret(issuer().public_key_pem().as_bytes()),
    )
    .expect("sign HS256");
    let mut unknown_kid_header = Header::new(Algorithm::RS256);
    unknown_kid_header.kid = Some("not-a-known-key".into());
    let unknown_kid = jsonwebtoken::encode(&unknown_kid_header, &claims(), issuer().encoding_key())
        .expect("sign");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        segment(&with(claims(), "roles", json!(["admin"]))),
        parts[2]
    );

    let cases: Vec<(&str, String)> = vec![
        ("alg none", alg_none),
        ("HS256 signed with the public key", hs256_with_public_key),
        (
            "wrong audience",
            signed(&with(claims(), "aud", json!("api://someone-else"))),
        ),
        ("missing audience", signed(&without(claims(), "aud"))),
        (
            "wrong issuer",
            signed(&with(claims(), "iss", json!("https://evil.example/"))),
        ),
        (
            "expired beyond leeway",
            signed(&with(claims(), "exp", json!(now() - 120))),
        ),
        (
            "not valid yet",
            signed(&with(claims(), "nbf", json!(now() + 300))),
        ),
        ("no expiry", signed(&without(claims(), "exp"))),
        ("no subject", signed(&without(claims(), "sub"))),
        // Look-alikes of alice, and ids no column can hold: refused, never trimmed into alice.
        (
            "subject with a trailing space",
            signed(&with(claims(), "sub", json!("alice "))),
        ),
        (
            "subject with a leading space",
            signed(&with(claims(), "sub", json!(" alice"))),
        ),
        (
            "subject with a no-break space",
            signed(&with(claims(), "sub", json!("\u{a0}alice"))),
        ),
        (
            "subject with a NUL",
            signed(&with(claims(), "sub", json!("al\u{0}ice"))),
        ),
        (
            "subject with a newline",
            signed(&with(claims(), "sub", json!("alice\n"))),
        ),
        ("empty subject", signed(&with(claims(), "sub", json!("")))),
        (
            "overlong subject",
            signed(&with(claims(), "sub", json!("a".repeat(129)))),
        ),
        ("unknown kid", unknown_kid),
        ("tampered payload", tampered),
        ("garbage", "not-a-jwt".into()),
        ("empty", String::new()),
    ];
    for (name, token) in &cases {
        assert_refused(&system, name, token).await;
    }

    // Wrong scheme, and no token at all.
    let basic = system
        .request(Method::POST, "/v1/carts", None)
        .header("authorization", "Basic YWxpY2U6c2VjcmV0")
        .send()
        .await
        .expect("answer");
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    let anonymous = system.send(Method::POST, "/v1/carts", None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Bearer realm=\"tillstream\"")
    );

    // Controls: the valid token, and one expired but within the leeway, are accepted — so the
    // refusals above are about what each case changed.
    for (name, token) in [
        ("valid", valid.clone()),
        (
            "expired within leeway",
            signed(&with(claims(), "exp", json!(now() - 10))),
        ),
    ] {
        let reply = system
            .send(Method::POST, "/v1/carts", Some(&token), None)
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{name}: {reply:?}");
    }
}

#[tokio::test]
async fn each_service_checks_the_token_itself() {
    let system = TestSystem::start().await;
    let direct = |token: Option<String>| {
        let mut request = system.http.post(format!("{}/v1/carts", system.command_api));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    // Nothing the gateway might have added makes the command API trust a caller.
    let spoofed = system
        .http
        .post(format!("{}/v1/carts", system.command_api))
        .header("x-user-id", "alice")
        .header("x-forwarded-user", "alice")
        .send()
        .await
        .expect("answer");
    assert_eq!(spoofed.status(), StatusCode::UNAUTHORIZED);
    let tampered = {
        let valid = token("alice", &[]);
        let parts: Vec<&str> = valid.split('.').collect();
        format!(
            "{}.{}.{}",
            parts[0],
            segment(&with(claims(), "sub", json!("mallory"))),
            parts[2]
        )
    };
    assert_eq!(
        direct(Some(tampered)).await.expect("answer").status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        direct(Some(token("alice", &[])))
            .await
            .expect("answer")
            .status(),
        StatusCode::CREATED
    );
}
