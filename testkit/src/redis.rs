//! A Redis key prefix of the test's own, and deleting its keys afterwards.

/// A fresh prefix, `test-<random>`.
pub fn test_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// Deletes every key under `prefix` (from `Drop`: runs to completion on its own runtime).
pub fn delete_keys_after(prefix: String) {
    crate::cleanup::run_to_completion(async move {
        let Ok(client) = redis::Client::open(platform::settings::redis_url()) else {
            return;
        };
        let Ok(mut redis) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut redis)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut redis).await;
        }
    });
}
