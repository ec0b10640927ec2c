//! The gateway's rate limits, per client IP and per signed-in user: GCRA (the generic cell rate
//! algorithm: a key's "theoretical arrival time" moves one emission interval per request, and a
//! request that would move it more than the burst ahead is refused).
//!
//! - [`RateLimits::shared`]: the state lives in Redis and one Lua script decides each request
//!   atomically against Redis's clock, so any number of gateways enforce one limit. If Redis
//!   does not answer, a request is let through (counted in `gateway_rate_limit_errors_total`):
//!   the limits protect the services, and Redis being down must not take the API down.
//! - [`RateLimits::local`]: in this process only (governor), for a single gateway without Redis.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use platform::problem::Problem;

/// Which limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ip,
    User,
}

impl Scope {
    fn label(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::User => "user",
        }
    }
}

/// GCRA over a Redis key holding the theoretical arrival time in microseconds of Redis's clock.
/// ARGV: emission interval (µs), burst. Returns 0 when allowed, else the microseconds to wait.
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
const REDIS_PATIENCE: Duration = Duration::from_millis(250);

/// The per-IP and per-user limits.
#[derive(Clone)]
pub enum RateLimits {
    Local {
        per_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
        per_user: Arc<DefaultKeyedRateLimiter<String>>,
    },
    Shared {
        redis: redis::aio::ConnectionManager,
        script: Arc<redis::Script>,
        /// `<prefix>:ratelimit`
        prefix: String,
        per_ip: (u32, u32),
        per_user: (u32, u32),
    },
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local { .. } => f.write_str("RateLimits::Local"),
            Self::Shared { prefix, .. } => write!(f, "RateLimits::Shared({prefix})"),
        }
    }
}

fn quota((rate, burst): (u32, u32)) -> Quota {
    let rate = NonZeroU32::new(rate.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rate).allow_burst(burst)
}

impl RateLimits {
    /// Limits kept in this process: `(rate per second, burst)` per IP and per user.
    pub fn local(per_ip: (u32, u32), per_user: (u32, u32)) -> Self {
        let limits = Self::Local {
            per_ip: Arc::new(RateLimiter::keyed(quota(per_ip))),
            per_user: Arc::new(RateLimiter::keyed(quota(per_user))),
        };
        limits.forget_idle_keys();
        limits
    }

    /// Limits shared by every gateway using the same Redis and `prefix`.
    pub fn shared(
        redis: redis::aio::ConnectionManager,
        prefix: &str,
        per_ip: (u32, u32),
        per_user: (u32, u32),
    ) -> Self {
        metrics::counter!("gateway_rate_limit_errors_total").increment(0);
        Self::Shared {
            redis,
            script: Arc::new(redis::Script::new(GCRA)),
            prefix: format!("{prefix}:ratelimit"),
            per_ip,
            per_user,
        }
    }

    /// `Ok` if `key` may make a request now; else 429 with `Retry-After`.
    pub async fn check(&self, scope: Scope, key: &str) -> Result<(), Problem> {
        let wait = match self {
            Self::Local { per_ip, per_user } => {
                let verdict = match (scope, key.parse::<IpAddr>()) {
                    (Scope::Ip, Ok(ip)) => per_ip.check_key(&ip),
                    _ => per_user.check_key(&key.to_owned()),
                };
                verdict
                    .err()
                    .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
            }
            Self::Shared {
                redis,
                script,
                prefix,
                per_ip,
                per_user,
            } => {
                let (rate, burst) = match scope {
                    Scope::Ip => *per_ip,
                    Scope::User => *per_user,
                };
                let interval_us = 1_000_000 / u64::from(rate.max(1));
                let mut redis = redis.clone();
                let mut invocation = script.key(format!("{prefix}:{}:{key}", scope.label()));
                invocation.arg(interval_us.max(1)).arg(burst.max(1));
                let decided = tokio::time::timeout(
                    REDIS_PATIENCE,
                    invocation.invoke_async::<u64>(&mut redis),
                )
                .await;
                match decided {
                    Ok(Ok(0)) => None,
                    Ok(Ok(wait_us)) => Some(Duration::from_micros(wait_us)),
                    Ok(Err(e)) => {
                        metrics::counter!("gateway_rate_limit_errors_total").increment(1);
                        tracing::warn!(error = %e, "rate limit not checked: Redis failed");
                        None
                    }
                    Err(_) => {
                        metrics::counter!("gateway_rate_limit_errors_total").increment(1);
                        tracing::warn!("rate limit not checked: Redis did not answer in time");
                        None
                    }
                }
            }
        };
        match wait {
            None => Ok(()),
            Some(wait) => {
                metrics::counter!("gateway_rate_limited_total", "scope" => scope.label())
                    .increment(1);
                Err(Problem::too_many_requests(wait.as_secs().max(1)))
            }
        }
    }

    /// Forgets idle keys of local limits now and then, so memory stays bounded by active
    /// callers.
    fn forget_idle_keys(&self) {
        let Self::Local { per_ip, per_user } = self else {
            return;
        };
        let (per_ip, per_user) = (Arc::downgrade(per_ip), Arc::downgrade(per_user));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let (Some(ip), Some(user)) = (per_ip.upgrade(), per_user.upgrade()) else {
                    return;
                };
                ip.retain_recent();
                user.retain_recent();
            }
        });
    }
}
