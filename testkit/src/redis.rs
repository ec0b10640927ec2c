//! A Redis key prefix of the test's own, and deleting its keys afterwards.

/// A fresh prefix, `test-<random>`.
pub fn test_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// Deletes every key under `prefix` (from `Drop`: runs to completion on its own runtime).
pub fn delete_keys_after(prefix: String) {
    crate::cleanup::run_to_completion(async move {
        let _ = delete_keys(&prefix).await;
    });
}

/// Deletes every key under `prefix` now; returns how many there were. What a Redis restart
/// without persistence (or a flush) does to one test's system, leaving other tests alone.
pub async fn delete_keys(prefix: &str) -> redis::RedisResult<usize> {
    let client = redis::Client::open(platform::settings::redis_url())?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await?;
    }
    Ok(keys.len())
}
