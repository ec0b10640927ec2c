//! Stripe behind the payment port, over its documented HTTP API (form-encoded requests, JSON
//! answers, amounts in minor units, currencies in lower case):
//!
//! - a charge is a PaymentIntent created and confirmed at once with the payment id as its
//!   `Idempotency-Key` (a retried call never charges twice): `succeeded` is captured,
//!   `requires_payment_method` (or a 402 card error) declined, `processing` and
//!   `requires_action` pending until a webhook or the reconciliation says how it ended;
//! - a refund is a Refund of the PaymentIntent with the refund id as its idempotency key;
//! - webhooks are verified ([`verify_signature`]: HMAC-SHA256 over `timestamp.payload`, every
//!   `v1` signature against every configured secret, constant-time, five minutes' tolerance)
//!   and read into what they say about one of our payments ([`read_webhook`]).

use std::time::Duration;

use domain::values::{Money, PaymentId, RefundId};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::provider::{ChargeOutcome, PaymentProvider, ProviderError};

/// Where Stripe is and how to talk to it.
#[derive(Clone)]
pub struct StripeSettings {
    /// `https://api.stripe.com` (or a local fake of it, in tests).
    pub api_base: String,
    pub api_key: String,
    /// Webhook signing secrets: more than one while rotating.
    pub webhook_secrets: Vec<String>,
}

impl std::fmt::Debug for StripeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeSettings")
            .field("api_base", &self.api_base)
            .field("api_key", &"***")
            .field("webhook_secrets", &self.webhook_secrets.len())
            .finish()
    }
}

/// Stripe's default API address.
pub const STRIPE_API: &str = "https://api.stripe.com";

/// How old (or how far ahead) a webhook's signed timestamp may be.
pub const WEBHOOK_TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone)]
pub struct StripeProvider {
    settings: StripeSettings,
    http: reqwest::Client,
}

impl StripeProvider {
    pub fn new(settings: StripeSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self { settings, http }
    }

    async fn post(
        &self,
        path: &str,
        idempotency_key: &str,
        form: &[(&str, String)],
    ) -> Result<(u16, serde_json::Value), ProviderError> {
        let reply = self
            .http
            .post(format!("{}{path}", self.settings.api_base))
            .bearer_auth(&self.settings.api_key)
            .header("Idempotency-Key", idempotency_key)
            .form(form)
            .send()
            .await
            .map_err(|e| ProviderError::Transient(format!("Stripe unreachable: {e}")))?;
        let status = reply.status().as_u16();
        let body = reply
            .json()
            .await
            .map_err(|e| ProviderError::Transient(format!("Stripe answered no JSON: {e}")))?;
        Ok((status, body))
    }

    /// Where a PaymentIntent stands now (for the reconciliation of pending payments).
    pub async fn payment_status(&self, reference: &str) -> Result<ChargeOutcome, ProviderError> {
        let reply = self
            .http
            .get(format!(
                "{}/v1/payment_intents/{reference}",
                self.settings.api_base
            ))
            .bearer_auth(&self.settings.api_key)
            .send()
            .await
            .map_err(|e| ProviderError::Transient(format!("Stripe unreachable: {e}")))?;
        if !reply.status().is_success() {
            return Err(ProviderError::Transient(format!(
                "Stripe answered {} for {reference}",
                reply.status()
            )));
        }
        let intent: PaymentIntent = reply
            .json()
            .await
            .map_err(|e| ProviderError::Transient(format!("Stripe answered no intent: {e}")))?;
        Ok(intent.outcome())
    }
}

/// The part of a PaymentIntent we read.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub metadata: std::collections::HashMap<String, String>,
    #[serde(default)]
    pub last_payment_error: Option<StripeError>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StripeError {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
}

impl PaymentIntent {
    /// What the intent's status means for the payment.
    pub fn outcome(&self) -> ChargeOutcome {
        let reference = self.id.clone();
        match self.status.as_str() {
            "succeeded" => ChargeOutcome::Captured { reference },
            "requires_payment_method" | "canceled" => ChargeOutcome::Declined {
                reason: self
                    .last_payment_error
                    .as_ref()
                    .and_then(|e| e.message.clone())
                    .unwrap_or_else(|| "the card was declined".to_owned()),
            },
            "requires_action" => ChargeOutcome::Pending {
                reference,
                action_required: true,
            },
            // processing, requires_confirmation, requires_capture: Stripe decides later.
            _ => ChargeOutcome::Pending {
                reference,
                action_required: false,
            },
        }
    }
}

fn transient(status: u16, body: &serde_json::Value) -> ProviderError {
    ProviderError::Transient(format!("Stripe answered {status}: {}", body["error"]))
}

impl PaymentProvider for StripeProvider {
    fn name(&self) -> &'static str {
        "stripe"
    }

    async fn charge(
        &self,
        payment_id: PaymentId,
        amount: Money,
        token: &str,
    ) -> Result<ChargeOutcome, ProviderError> {
        let form = [
            ("amount", amount.amount.to_string()),
            ("currency", amount.currency.as_str().to_ascii_lowercase()),
            ("payment_method", token.to_owned()),
            ("confirm", "true".to_owned()),
            ("automatic_payment_methods[enabled]", "true".to_owned()),
            (
                "automatic_payment_methods[allow_redirects]",
                "never".to_owned(),
            ),
            ("metadata[payment_id]", payment_id.to_string()),
        ];
        let (status, body) = self
            .post("/v1/payment_intents", &payment_id.to_string(), &form)
            .await?;
        match status {
            200..=299 => {
                let intent: PaymentIntent = serde_json::from_value(body)
                    .map_err(|e| ProviderError::Transient(format!("not an intent: {e}")))?;
                Ok(intent.outcome())
            }
            // A card error: the intent exists, and was declined.
            402 => Ok(ChargeOutcome::Declined {
                reason: body["error"]["message"]
                    .as_str()
                    .unwrap_or("the card was declined")
                    .to_owned(),
            }),
            // A malformed request (a payment method Stripe does not know) is a decline too:
            // asking again cannot help.
            400 if body["error"]["type"] == "invalid_request_error" => {
                Ok(ChargeOutcome::Declined {
                    reason: body["error"]["message"]
                        .as_str()
                        .unwrap_or("the payment was refused")
                        .to_owned(),
                })
            }
            _ => Err(transient(status, &body)),
        }
    }

    async fn refund(
        &self,
        payment_id: PaymentId,
        reference: &str,
        refund_id: RefundId,
        amount: Money,
    ) -> Result<String, ProviderError> {
        let form = [
            ("payment_intent", reference.to_owned()),
            ("amount", amount.amount.to_string()),
            ("metadata[refund_id]", refund_id.to_string()),
            ("metadata[payment_id]", payment_id.to_string()),
        ];
        let (status, body) = self
            .post("/v1/refunds", &refund_id.to_string(), &form)
            .await?;
        match status {
            200..=299 => Ok(body["id"].as_str().unwrap_or_default().to_owned()),
            400 => Err(ProviderError::Refused(
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("refund refused")
                    .to_owned(),
            )),
            _ => Err(transient(status, &body)),
        }
    }
}

/// Why a webhook was not accepted as Stripe's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Stripe-Signature header")]
    Missing,
    #[error("the Stripe-Signature header has no timestamp or no v1 signature")]
    Malformed,
    #[error("the signed timestamp is more than five minutes from now")]
    Stale,
    #[error("no signature matches the payload")]
    Mismatch,
}

/// Checks a `Stripe-Signature` header (`t=<unix seconds>,v1=<hex>[,v1=<hex>…]`) over the raw
/// payload: the timestamp within [`WEBHOOK_TOLERANCE_SECS`] of `now`, and one `v1` signature
/// equal (in constant time) to HMAC-SHA256 of `t.payload` under one of `secrets`.
pub fn verify_signature(
    payload: &[u8],
    header: Option<&str>,
    secrets: &[String],
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", hex)) => signatures.extend(decode_hex(hex)),
            _ => {}
        }
    }
    let (Some(timestamp), false) = (timestamp, signatures.is_empty()) else {
        return Err(SignatureError::Malformed);
    };
    if (now - timestamp).abs() > WEBHOOK_TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    let matches = |secret: &String, signature: &Vec<u8>| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
            return false;
        };
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(payload);
        mac.verify_slice(signature).is_ok()
    };
    if secrets.iter().any(|secret| {
        signatures
            .iter()
            .any(|signature| matches(secret, signature))
    }) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The `Stripe-Signature` header for `payload` at `timestamp` under `secret` (for the fake
/// Stripe of tests, and to document the scheme).
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    let digest: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={timestamp},v1={digest}")
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A Stripe event, as much of it as we read.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: EventData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: serde_json::Value,
}

/// What a verified webhook says about one of our payments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookNews {
    Captured {
        payment_id: PaymentId,
        reference: String,
    },
    Declined {
        payment_id: PaymentId,
        reason: String,
    },
    /// Refunds Stripe made (ours carry our refund id): ours, the amount, Stripe's id.
    Refunded {
        payment_id: PaymentId,
        refunds: Vec<(RefundId, i64, String)>,
    },
    /// An event type we do not act on, or about a payment that is not ours.
    Ignored,
}

/// Reads an event into what it says about one of our payments (named by
/// `metadata.payment_id`).
pub fn read_webhook(event: &Event) -> WebhookNews {
    let object = &event.data.object;
    let payment_id = |metadata: &serde_json::Value| {
        metadata["payment_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .map(PaymentId)
    };
    match event.kind.as_str() {
        "payment_intent.succeeded" => match payment_id(&object["metadata"]) {
            Some(payment_id) => WebhookNews::Captured {
                payment_id,
                reference: object["id"].as_str().unwrap_or_default().to_owned(),
            },
            None => WebhookNews::Ignored,
        },
        "payment_intent.payment_failed" => match payment_id(&object["metadata"]) {
            Some(payment_id) => WebhookNews::Declined {
                payment_id,
                reason: object["last_payment_error"]["message"]
                    .as_str()
                    .unwrap_or("the card was declined")
                    .to_owned(),
            },
            None => WebhookNews::Ignored,
        },
        "charge.refunded" => {
            let refunds: Vec<(RefundId, i64, String)> = object["refunds"]["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|refund| {
                    let id = refund["metadata"]["refund_id"].as_str()?.parse().ok()?;
                    let stripe_id = refund["id"].as_str()?.to_owned();
                    Some((RefundId(id), refund["amount"].as_i64()?, stripe_id))
                })
                .collect();
            match payment_id(&object["metadata"]) {
                Some(payment_id) => WebhookNews::Refunded {
                    payment_id,
                    refunds,
                },
                None => WebhookNews::Ignored,
            }
        }
        _ => WebhookNews::Ignored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";

    #[test]
    fn a_signature_made_with_the_secret_verifies_and_anything_else_does_not() {
        let payload = br#"{"id":"evt_1"}"#;
        let now = 1_800_000_000;
        let header = sign(payload, SECRET, now);
        let secrets = vec![SECRET.to_owned()];
        assert_eq!(
            verify_signature(payload, Some(&header), &secrets, now),
            Ok(())
        );
        // Rotation: the old and the new secret both verify.
        let rotating = vec!["whsec_new".to_owned(), SECRET.to_owned()];
        assert_eq!(
            verify_signature(payload, Some(&header), &rotating, now),
            Ok(())
        );
        // Several v1 signatures: one matching is enough.
        let several = format!("{header},v1={}", "ab".repeat(32));
        assert_eq!(
            verify_signature(payload, Some(&several), &secrets, now),
            Ok(())
        );
        let wrong = vec!["whsec_other".to_owned()];
        assert_eq!(
            verify_signature(payload, Some(&header), &wrong, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(br#"{"id":"evt_2"}"#, Some(&header), &secrets, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(payload, Some(&header), &secrets, now + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(payload, None, &secrets, now),
            Err(SignatureError::Missing)
        );
        for malformed in ["", "t=abc,v1=00", &format!("t={now}"), "v1=zz"] {
            assert_eq!(
                verify_signature(payload, Some(malformed), &secrets, now),
                Err(SignatureError::Malformed),
                "{malformed}"
            );
        }
    }
}
