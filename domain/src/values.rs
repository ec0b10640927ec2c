//! Value objects: small types that can only hold valid values.
//!
//! Each one has a `parse` (or `new`) that is the single place its rule lives, so a handler that
//! holds a `Quantity` never re-checks the range. Parsing errors are [`InvalidValue`], which names
//! the field so the HTTP layer can point at it.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A value that failed its rule; `field` is the name the client used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidValue {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidValue {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The stream type, the part of the stream id before the dash.
            pub const STREAM_TYPE: &'static str = $prefix;

            /// The event stream that holds this aggregate: `<type>-<uuid>`.
            pub fn stream_id(&self) -> String {
                format!(concat!($prefix, "-{}"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

uuid_id!(
    /// Identifies a product in the catalog.
    ProductId,
    "product"
);
uuid_id!(
    /// Identifies a shopper's cart.
    CartId,
    "cart"
);
uuid_id!(
    /// Identifies an order; the order placed from a cart's checkout gets the id chosen at checkout.
    OrderId,
    "order"
);
uuid_id!(
    /// Identifies one payment attempt for an order; it is also the provider's idempotency key.
    PaymentId,
    "payment"
);

/// Identifies one refund of a payment; it is the provider's idempotency key for that refund, so
/// a refund is given back once however often it is asked for. Refunds live in the payment's
/// and the order's streams, not in a stream of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RefundId(pub Uuid);

impl fmt::Display for RefundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl ProductId {
    /// The id of the product with this SKU. Deriving the id from the SKU makes "one product per
    /// SKU" an optimistic-concurrency fact: creating a second product with the same SKU targets
    /// the same stream, which already exists.
    pub fn for_sku(sku: &Sku) -> Self {
        const NAMESPACE: Uuid = Uuid::from_u128(0x5c1d_8a0e_3f47_4b2a_9d6e_71c0_2a8f_e4b3);
        Self(Uuid::new_v5(&NAMESPACE, sku.as_str().as_bytes()))
    }
}

/// The id of a signed-in user, taken from the token (`oid`, or `sub`). Opaque to the domain and
/// compared byte for byte: it is never trimmed or normalised, so `"alice "` is not `"alice"` —
/// and since no such look-alike is accepted at all, one user can never pass for another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CustomerId(String);

impl CustomerId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(InvalidValue::new(
                "customer_id",
                format!("must be 1 to {} bytes", Self::MAX_LEN),
            ));
        }
        if !is_exact_user_id(raw) {
            return Err(InvalidValue::new(
                "customer_id",
                "must not start or end with whitespace or hold control characters",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `id` can name a user as it is: no surrounding whitespace (Unicode's, not only ASCII's)
/// and no control characters anywhere. Identity providers issue no such ids; a token that
/// carries one is a look-alike of another user's or cannot be stored.
pub fn is_exact_user_id(id: &str) -> bool {
    let surrounded = id.starts_with(char::is_whitespace) || id.ends_with(char::is_whitespace);
    !surrounded && !id.chars().any(char::is_control)
}

/// Who sends a command. Authorisation rules that belong to the business (a cart is its owner's)
/// live in `decide`, so they are tested with the rest of the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub id: CustomerId,
    pub is_admin: bool,
}

impl Actor {
    pub fn customer(id: CustomerId) -> Self {
        Self {
            id,
            is_admin: false,
        }
    }

    pub fn admin(id: CustomerId) -> Self {
        Self { id, is_admin: true }
    }
}

/// How many units of one product a cart line holds: 1 to 99.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Quantity(u8);

impl Quantity {
    pub const MIN: u32 = 1;
    pub const MAX: u32 = 99;

    pub fn parse(n: impl TryInto<i64>) -> Result<Self, InvalidValue> {
        let n: i64 = n.try_into().unwrap_or(i64::MAX);
        if !(i64::from(Self::MIN)..=i64::from(Self::MAX)).contains(&n) {
            return Err(InvalidValue::new(
                "quantity",
                format!("must be between {} and {}", Self::MIN, Self::MAX),
            ));
        }
        Ok(Self(n as u8))
    }

    pub fn get(self) -> u32 {
        u32::from(self.0)
    }
}

impl TryFrom<u32> for Quantity {
    type Error = InvalidValue;
    fn try_from(n: u32) -> Result<Self, Self::Error> {
        Self::parse(n)
    }
}

impl From<Quantity> for u32 {
    fn from(q: Quantity) -> Self {
        q.get()
    }
}

/// An ISO 4217 currency code (active codes only), e.g. `EUR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

// By hand rather than through `String`: every amount in every event and view is one of these,
// and a rebuild decodes and writes millions; borrowing the text allocates nothing.
impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Code;
        impl serde::de::Visitor<'_> for Code {
            type Value = Currency;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an ISO 4217 currency code")
            }
            fn visit_str<E: serde::de::Error>(self, code: &str) -> Result<Currency, E> {
                Currency::parse(code).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Code)
    }
}

/// Active ISO 4217 codes. Funds codes and precious metals are left out: nobody sells for them.
const ISO_4217: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB \
BRL BSD BTN BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD \
FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR \
KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR \
MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK \
SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES \
VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG";

/// The codes of [`ISO_4217`] as a set: every stored event with money in it is checked against
/// it when it is decoded, so the lookup must not walk the list.
static ACTIVE_CURRENCIES: std::sync::LazyLock<std::collections::HashSet<&'static str>> =
    std::sync::LazyLock::new(|| ISO_4217.split_ascii_whitespace().collect());

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let valid = raw.len() == 3
            && raw.bytes().all(|b| b.is_ascii_uppercase())
            && ACTIVE_CURRENCIES.contains(raw);
        if !valid {
            return Err(InvalidValue::new(
                "currency",
                "must be an active ISO 4217 code in upper case, e.g. EUR",
            ));
        }
        let b = raw.as_bytes();
        Ok(Self([b[0], b[1], b[2]]))
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from validated ASCII.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.as_str().to_owned()
    }
}

/// An amount in the currency's minor unit (cents for EUR). Never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub amount: i64,
    pub currency: Currency,
}

impl Money {
    /// Largest accepted price or total: ten billion major units of a two-decimal currency, far
    /// below where `i64` arithmetic on totals could overflow.
    pub const MAX_AMOUNT: i64 = 1_000_000_000_000;

    /// A price: zero or more minor units, not above [`Money::MAX_AMOUNT`].
    pub fn price(amount: i64, currency: &str) -> Result<Self, InvalidValue> {
        let currency = Currency::parse(currency)?;
        if !(0..=Self::MAX_AMOUNT).contains(&amount) {
            return Err(InvalidValue::new(
                "price.amount",
                format!(
                    "must be an integer number of minor units from 0 to {}",
                    Self::MAX_AMOUNT
                ),
            ));
        }
        Ok(Self { amount, currency })
    }

    pub fn zero(currency: Currency) -> Self {
        Self {
            amount: 0,
            currency,
        }
    }

    /// `self × quantity`; `None` on overflow.
    pub fn times(self, quantity: Quantity) -> Option<Self> {
        Some(Self {
            amount: self.amount.checked_mul(i64::from(quantity.get()))?,
            currency: self.currency,
        })
    }

    /// `self - other`; `None` on overflow or when the currencies differ.
    pub fn minus(self, other: Self) -> Option<Self> {
        if self.currency != other.currency {
            return None;
        }
        Some(Self {
            amount: self.amount.checked_sub(other.amount)?,
            currency: self.currency,
        })
    }

    /// `self + other`; `None` on overflow or when the currencies differ.
    pub fn plus(self, other: Self) -> Option<Self> {
        if self.currency != other.currency {
            return None;
        }
        Some(Self {
            amount: self.amount.checked_add(other.amount)?,
            currency: self.currency,
        })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (minor units)", self.amount, self.currency)
    }
}

/// Parses bounded, trimmed text; `allow_empty` for optional free text.
fn bounded_text(
    field: &'static str,
    raw: &str,
    max_chars: usize,
    allow_empty: bool,
) -> Result<String, InvalidValue> {
    let text = raw.trim();
    let chars = text.chars().count();
    if (!allow_empty && chars == 0) || chars > max_chars {
        let min = if allow_empty { 0 } else { 1 };
        return Err(InvalidValue::new(
            field,
            format!("must be {min} to {max_chars} characters"),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(InvalidValue::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(text.to_owned())
}

macro_rules! text_value {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $allow_empty:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const MAX_CHARS: usize = $max;

            pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
                bounded_text($field, raw, Self::MAX_CHARS, $allow_empty).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_value!(
    /// A product's display name, 1 to 200 characters.
    ProductName,
    "name",
    200,
    false
);
text_value!(
    /// A product's description, up to 2,000 characters.
    Description,
    "description",
    2000,
    true
);

text_value!(
    /// Why something was done (an order cancelled), up to 500 characters.
    Reason,
    "reason",
    500,
    true
);

text_value!(
    /// Who carries a shipped order ("DHL", "La Poste"), 1 to 100 characters.
    Carrier,
    "carrier",
    100,
    false
);
text_value!(
    /// The carrier's tracking number of a shipped order, 1 to 100 characters.
    TrackingNumber,
    "tracking_number",
    100,
    false
);

/// A picture of a product: an absolute `https://` or `http://` URL of at most 2,048 bytes,
/// without whitespace or control characters. Stored as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ImageUrl(String);

impl ImageUrl {
    pub const MAX_LEN: usize = 2048;
    /// Most pictures one product has.
    pub const MAX_PER_PRODUCT: usize = 10;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let host = raw
            .strip_prefix("https://")
            .or_else(|| raw.strip_prefix("http://"))
            .and_then(|rest| rest.split(['/', '?', '#']).next())
            .unwrap_or_default();
        let valid = !host.is_empty()
            && raw.len() <= Self::MAX_LEN
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        if !valid {
            return Err(InvalidValue::new(
                "image_urls",
                "each must be an http:// or https:// URL with a host, at most 2048 bytes, without spaces",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Every URL of a list, at most [`ImageUrl::MAX_PER_PRODUCT`] of them.
    pub fn parse_all(raw: &[String]) -> Result<Vec<Self>, InvalidValue> {
        if raw.len() > Self::MAX_PER_PRODUCT {
            return Err(InvalidValue::new(
                "image_urls",
                format!("at most {} pictures", Self::MAX_PER_PRODUCT),
            ));
        }
        raw.iter().map(|url| Self::parse(url)).collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stock keeping unit: 1 to 64 of `A-Z 0-9 - _ .`, stored in upper case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let sku = raw.trim().to_ascii_uppercase();
        let valid = !sku.is_empty()
            && sku.len() <= Self::MAX_CHARS
            && sku
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            return Err(InvalidValue::new(
                "sku",
                "must be 1 to 64 characters of A-Z, 0-9, '-', '_' or '.'",
            ));
        }
        Ok(Self(sku))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A catalog category slug: 1 to 64 of `a-z 0-9 -`, stored in lower case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Category(String);

impl Category {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let slug = raw.trim().to_ascii_lowercase();
        let valid = !slug.is_empty()
            && slug.len() <= Self::MAX_CHARS
            && slug
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(InvalidValue::new(
                "category",
                "must be 1 to 64 characters of a-z, 0-9 or '-'",
            ));
        }
        Ok(Self(slug))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Units of a product on hand and free to reserve. Never negative by construction.
pub type Units = u32;

/// Largest stock level a product may hold; keeps every sum of units inside `u32`.
pub const MAX_UNITS: Units = 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_accepts_1_to_99_only() {
        assert!(Quantity::parse(0).is_err());
        assert_eq!(Quantity::parse(1).map(Quantity::get), Ok(1));
        assert_eq!(Quantity::parse(99).map(Quantity::get), Ok(99));
        assert!(Quantity::parse(100).is_err());
        assert!(Quantity::parse(-1).is_err());
        assert!(Quantity::parse(u64::MAX).is_err());
        assert_eq!(Quantity::parse(0).unwrap_err().field, "quantity");
    }

    #[test]
    fn quantity_deserialises_through_its_rule() {
        assert!(serde_json::from_str::<Quantity>("100").is_err());
        assert_eq!(
            serde_json::from_str::<Quantity>("3")
                .map(Quantity::get)
                .ok(),
            Some(3)
        );
    }

    #[test]
    fn currency_is_an_active_iso_code() {
        assert_eq!(
            Currency::parse("EUR").map(|c| c.to_string()).ok(),
            Some("EUR".into())
        );
        for bad in ["eur", "EURO", "", "XYZ", "E1R"] {
            assert!(Currency::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn currency_is_json_text_and_stored_codes_are_checked_again() {
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!(serde_json::to_string(&eur).unwrap(), r#""EUR""#);
        assert_eq!(serde_json::from_str::<Currency>(r#""EUR""#).unwrap(), eur);
        let refused = serde_json::from_str::<Currency>(r#""XYZ""#).unwrap_err();
        assert!(refused.to_string().contains("ISO 4217"), "{refused}");
        assert!(serde_json::from_str::<Currency>("7").is_err());
    }

    #[test]
    fn price_is_non_negative_minor_units() {
        assert!(Money::price(0, "EUR").is_ok());
        assert!(Money::price(-1, "EUR").is_err());
        assert!(Money::price(Money::MAX_AMOUNT + 1, "EUR").is_err());
        assert_eq!(Money::price(-1, "EUR").unwrap_err().field, "price.amount");
    }

    #[test]
    fn money_arithmetic_refuses_mixed_currencies_and_overflow() {
        let eur = Money::price(250, "EUR").unwrap();
        let usd = Money::price(250, "USD").unwrap();
        assert_eq!(eur.plus(usd), None);
        assert_eq!(eur.plus(eur).map(|m| m.amount), Some(500));
        let q = Quantity::parse(3).unwrap();
        assert_eq!(eur.times(q).map(|m| m.amount), Some(750));
        let huge = Money {
            amount: i64::MAX,
            currency: eur.currency,
        };
        assert_eq!(huge.times(q), None);
        assert_eq!(huge.plus(eur), None);
        assert_eq!(eur.minus(eur).map(|m| m.amount), Some(0));
        assert_eq!(eur.minus(usd), None);
    }

    #[test]
    fn sku_and_category_are_normalised() {
        assert_eq!(Sku::parse(" tee-01 ").unwrap().as_str(), "TEE-01");
        assert!(Sku::parse("tee 01").is_err());
        assert!(Sku::parse(&"A".repeat(65)).is_err());
        assert_eq!(Category::parse("T-Shirts").unwrap().as_str(), "t-shirts");
        assert!(Category::parse("t shirts").is_err());
    }

    #[test]
    fn text_is_trimmed_bounded_and_free_of_control_characters() {
        assert_eq!(ProductName::parse("  Mug ").unwrap().as_str(), "Mug");
        assert!(ProductName::parse("   ").is_err());
        assert!(ProductName::parse(&"é".repeat(201)).is_err());
        assert!(ProductName::parse(&"é".repeat(200)).is_ok());
        assert!(ProductName::parse("bad\u{0}name").is_err());
        assert!(Description::parse("").is_ok());
    }

    #[test]
    fn customer_ids_are_taken_exactly_or_refused() {
        assert_eq!(CustomerId::parse("alice").unwrap().as_str(), "alice");
        assert_eq!(CustomerId::parse("a b").unwrap().as_str(), "a b");
        for look_alike in [
            "alice ",
            " alice",
            "\u{a0}alice",
            "alice\u{2003}",
            "al\u{0}ice",
            "al\nice",
            "",
        ] {
            assert!(CustomerId::parse(look_alike).is_err(), "{look_alike:?}");
        }
        assert!(CustomerId::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn product_ids_follow_the_sku() {
        let sku = Sku::parse("mug-1").unwrap();
        assert_eq!(
            ProductId::for_sku(&sku),
            ProductId::for_sku(&Sku::parse("MUG-1").unwrap())
        );
        assert_ne!(
            ProductId::for_sku(&sku),
            ProductId::for_sku(&Sku::parse("MUG-2").unwrap())
        );
    }

    #[test]
    fn stream_ids_name_their_type() {
        let id = Uuid::nil();
        assert_eq!(
            CartId(id).stream_id(),
            "cart-00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(ProductId::STREAM_TYPE, "product");
    }
}
