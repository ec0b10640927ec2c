//! Where read models live, shared by the projectors that write them and the query API that
//! reads them: each projection version has a Postgres schema (`read_products_v3`) or a Redis
//! key prefix (`<prefix>:carts:v3:`), and `read.projections` names the serving version.
//!
//! [`PROJECTIONS`] is the one registry of projections: the live projectors, rebuilds, lag
//! status, queue declaration, the CLI, the admin API and the tests all iterate it.

use domain::values::{CartId, OrderId, ProductId};

/// Projection names as in `read.projections`.
pub const PRODUCTS: &str = "products";
pub const ORDERS: &str = "orders";
pub const CARTS: &str = "carts";

/// Where a projection's versions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// A schema per version, its progress in `read.progress` (same transaction as the rows).
    Postgres,
    /// A key prefix per version, its progress in a hash beside the views.
    Redis,
}

/// A read-side projection: a view of one stream type, replayable from the event store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projection {
    /// Its name in `read.projections` and on the command line.
    pub name: &'static str,
    /// The stream type whose events it folds (`<type>-<uuid>` streams).
    pub stream_type: &'static str,
    pub storage: Storage,
    /// The bus consumer (and queue) that feeds it live.
    pub consumer: &'static str,
}

impl Projection {
    /// The routing-key pattern of its queue: every event of its stream type.
    pub fn binding(&self) -> String {
        format!("{}.*", self.stream_type)
    }
}

/// Every projection. Adding one starts here.
pub const PROJECTIONS: [Projection; 3] = [
    Projection {
        name: PRODUCTS,
        stream_type: ProductId::STREAM_TYPE,
        storage: Storage::Postgres,
        consumer: "projector.products",
    },
    Projection {
        name: ORDERS,
        stream_type: OrderId::STREAM_TYPE,
        storage: Storage::Postgres,
        consumer: "projector.orders",
    },
    Projection {
        name: CARTS,
        stream_type: CartId::STREAM_TYPE,
        storage: Storage::Redis,
        consumer: "projector.carts",
    },
];

/// The projection called `name`.
pub fn projection(name: &str) -> Option<&'static Projection> {
    PROJECTIONS.iter().find(|p| p.name == name)
}

/// The projections' names, for messages: `products, orders, carts`.
pub fn projection_names() -> String {
    PROJECTIONS.map(|p| p.name).join(", ")
}

/// The schema of a Postgres projection's version.
pub fn schema(projection: &str, version: i32) -> String {
    format!("read_{projection}_v{version}")
}

/// The Redis key prefix of read models unless `TILL_REDIS_PREFIX` says otherwise.
pub const DEFAULT_REDIS_PREFIX: &str = "tillstream";

/// Keys of the cart projection: a hash per cart with fields `version`, `view` (JSON) and
/// `customer_id`, and a progress hash per version.
#[derive(Debug, Clone)]
pub struct CartKeys {
    pub prefix: String,
}

impl CartKeys {
    pub fn cart(&self, version: i32, cart_id: uuid::Uuid) -> String {
        format!("{}:carts:v{version}:{cart_id}", self.prefix)
    }

    pub fn progress(&self, version: i32) -> String {
        format!("{}:carts:v{version}:progress", self.prefix)
    }

    /// The marker of one version's data: gone when Redis lost it (see `read.redis_epochs`).
    pub fn epoch(&self, version: i32) -> String {
        format!("{}:carts:v{version}:epoch", self.prefix)
    }

    /// Every key of one version in the carts namespace: the cart hashes, the progress and
    /// the marker.
    pub fn pattern(&self, version: i32) -> String {
        format!("{}:carts:v{version}:*", self.prefix)
    }

    /// The set of one customer's cart ids in one version (`GET /v1/carts`).
    pub fn owner_carts(&self, version: i32, customer_id: &str) -> String {
        format!("{}:carts-by-owner:v{version}:{customer_id}", self.prefix)
    }

    /// Every key of one version, views and owner sets (for dropping an old version).
    pub fn version_patterns(&self, version: i32) -> [String; 2] {
        [
            self.pattern(version),
            format!("{}:carts-by-owner:v{version}:*", self.prefix),
        ]
    }

    /// The pub/sub channel on which the projector announces the cart views it has just
    /// written (see [`CartsApplied`]), so reads waiting for their own write are woken by it.
    pub fn applied_channel(&self) -> String {
        format!("{}:carts:applied", self.prefix)
    }
}

/// An announcement on [`CartKeys::applied_channel`]: in projection version `version`, each
/// listed cart's view is now at least at the listed stream version. Sent as text:
/// `v<version> <cart id>@<stream version> …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartsApplied {
    pub version: i32,
    pub carts: Vec<(uuid::Uuid, u64)>,
}

impl CartsApplied {
    pub fn to_message(&self) -> String {
        use std::fmt::Write;
        let mut message = format!("v{}", self.version);
        for (cart, version) in &self.carts {
            let _ = write!(message, " {cart}@{version}"); // writing to a String cannot fail
        }
        message
    }

    /// `None` for a message not in the format above.
    pub fn parse(message: &str) -> Option<Self> {
        let mut parts = message.split(' ');
        let version = parts.next()?.strip_prefix('v')?.parse().ok()?;
        let carts = parts
            .map(|part| {
                let (cart, at) = part.split_once('@')?;
                Some((uuid::Uuid::parse_str(cart).ok()?, at.parse().ok()?))
            })
            .collect::<Option<_>>()?;
        Some(Self { version, carts })
    }

    /// Whether `cart` is announced at `version` or later.
    pub fn covers(&self, cart: uuid::Uuid, version: u64) -> bool {
        self.carts.iter().any(|(c, v)| *c == cart && *v >= version)
    }
}

/// The Postgres channel a rebuild's switch notifies (with the projection's name) when a new
/// version starts serving.
pub const SWITCHED_CHANNEL: &str = "read_projection_switched";

/// Serving version of a projection.
pub async fn serving_version(
    executor: impl sqlx::PgExecutor<'_>,
    projection: &str,
) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT serving_version FROM read.projections WHERE name = $1")
        .bind(projection)
        .fetch_one(executor)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cart_announcements_round_trip_and_garbage_is_refused() {
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let applied = CartsApplied {
            version: 3,
            carts: vec![(a, 7), (b, 1)],
        };
        let parsed = CartsApplied::parse(&applied.to_message()).unwrap();
        assert_eq!(parsed, applied);
        assert!(parsed.covers(a, 7) && parsed.covers(a, 2));
        assert!(!parsed.covers(a, 8) && !parsed.covers(uuid::Uuid::new_v4(), 1));
        for bad in ["", "3 x@1", "v3 nope", "v3 {a}@", "vx"] {
            assert_eq!(CartsApplied::parse(bad), None, "{bad}");
        }
    }
}
