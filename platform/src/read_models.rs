//! Where read models live, shared by the projectors that write them and the query API that
//! reads them: each projection version has a Postgres schema (`read_products_v3`) or a Redis
//! key prefix (`<prefix>:carts:v3:`), and `read.projections` names the serving version.

/// Projection names as in `read.projections`.
pub const PRODUCTS: &str = "products";
pub const ORDERS: &str = "orders";
pub const CARTS: &str = "carts";

/// The schema of a Postgres projection's version.
pub fn schema(projection: &str, version: i32) -> String {
    format!("read_{projection}_v{version}")
}

/// The Redis key prefix of read models unless `TILL_REDIS_PREFIX` says otherwise.
pub fn redis_prefix() -> String {
    std::env::var("TILL_REDIS_PREFIX")
        .ok()
        .filter(|p| !p.trim().is_empty())
        .unwrap_or_else(|| "tillstream".to_owned())
}

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

    /// Every key of one version (for dropping an old version).
    pub fn pattern(&self, version: i32) -> String {
        format!("{}:carts:v{version}:*", self.prefix)
    }
}

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
