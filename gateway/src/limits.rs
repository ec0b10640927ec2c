//! The gateway's rate limits, per client IP and per signed-in user, shared by every gateway:
//! GCRA (the generic cell rate algorithm: a key's "theoretical arrival time" moves one emission
//! interval per request, and a request that would move it more than the burst ahead is
//! refused), its state in Redis and each verdict one Lua script run against Redis's clock.
//!
//! - A signed-in caller counts against its user's limit, an anonymous one against its IP's: one
//!   round trip per request ([`RateLimits::admit`]).
//! - Each gateway also keeps the per-IP limit in its own memory ([`RateLimits::guard_ip`]), so a
//!   flood is turned away before its tokens are verified.
//! - If Redis does not answer within [`REDIS_PATIENCE`], the request is let through (counted in
//!   `gateway_rate_limit_errors_total`): the limits protect the services, and Redis being down
//!   must not take the API down.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use platform::problem::Problem;

/// GCRA over KEYS[1], holding a theoretical arrival time in microseconds of Redis's clock;
/// ARGV: the emission interval (µs) and the burst. Returns 0 when admitted, else the
/// microseconds to wait.
const GCRA: &str = r"
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now_us
if tat < now_us then tat = now_us end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now_us < allow_at then return allow_at - now_us end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now_us) / 1000) + 1)
return 0
";

/// How long a request waits for Redis's verdict before it is let through.
pub const REDIS_PATIENCE: Duration = Duration::from_millis(250);

/// The per-IP and per-user limits, `(rate per second, burst)` each.
#[derive(Clone)]
pub struct RateLimits {
    redis: redis::aio::ConnectionManager,
    script: Arc<redis::Script>,
    /// `<prefix>:ratelimit`
    prefix: String,
    per_ip: (u32, u32),
    per_user: (u32, u32),
    /// This gateway's own copy of the per-IP limit.
    local_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("prefix", &self.prefix)
            .field("per_ip", &self.per_ip)
            .field("per_user", &self.per_user)
            .finish_non_exhaustive()
    }
}

fn quota((rate, burst): (u32, u32)) -> Quota {
    let rate = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

impl RateLimits {
    /// Limits shared by every gateway using the same Redis and `prefix`.
    pub fn shared(
        redis: redis::aio::ConnectionManager,
        prefix: &str,
        per_ip: (u32, u32),
        per_user: (u32, u32),
    ) -> Self {
        metrics::counter!("gateway_rate_limit_errors_total").increment(0);
        let limits = Self {
            redis,
            script: Arc::new(redis::Script::new(GCRA)),
            prefix: format!("{prefix}:ratelimit"),
            per_ip,
            per_user,
            local_ip: Arc::new(RateLimiter::keyed(quota(per_ip))),
        };
        forget_idle_ips(&limits.local_ip);
        limits
    }

    /// The cheap first check, before a token is verified: the caller's IP against this
    /// gateway's own copy of the per-IP limit.
    pub fn guard_ip(&self, ip: IpAddr) -> Result<(), Problem> {
        match self.local_ip.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(not_until) => refused(
                "ip",
                not_until.wait_time_from(DefaultClock::default().now()),
            ),
        }
    }

    /// Admits a request from `ip`, by `user` when signed in, against the shared limits; else
    /// 429 with `Retry-After`.
    pub async fn admit(&self, ip: IpAddr, user: Option<&str>) -> Result<(), Problem> {
        let ip = ip.to_string();
        let (scope, key, (rate, burst)) = match user {
            Some(user) => ("user", user, self.per_user),
            None => ("ip", ip.as_str(), self.per_ip),
        };
        let interval_us = (1_000_000 / u64::from(rate.max(1))).max(1);
        let mut invocation = self.script.key(format!("{}:{scope}:{key}", self.prefix));
        invocation.arg(interval_us).arg(burst.max(1));
        let mut redis = self.redis.clone();
        let verdict =
            tokio::time::timeout(REDIS_PATIENCE, invocation.invoke_async::<u64>(&mut redis)).await;
        match verdict {
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(wait_us)) => refused(scope, Duration::from_micros(wait_us)),
            Ok(Err(e)) => {
                metrics::counter!("gateway_rate_limit_errors_total").increment(1);
                tracing::warn!(error = %e, "rate limit not checked: Redis failed");
                Ok(())
            }
            Err(_) => {
                metrics::counter!("gateway_rate_limit_errors_total").increment(1);
                tracing::warn!("rate limit not checked: Redis did not answer in time");
                Ok(())
            }
        }
    }
}

fn refused(scope: &'static str, wait: Duration) -> Result<(), Problem> {
    metrics::counter!("gateway_rate_limited_total", "scope" => scope).increment(1);
    Err(Problem::too_many_requests(wait.as_secs().max(1)))
}

/// Forgets idle IPs of the local limit now and then, so memory stays bounded by active callers.
fn forget_idle_ips(limiter: &Arc<DefaultKeyedRateLimiter<IpAddr>>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let limiter = Arc::downgrade(limiter);
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(limiter) = limiter.upgrade() else {
                return;
            };
            limiter.retain_recent();
        }
    });
}
