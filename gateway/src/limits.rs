//! The gateway's rate limits, per client IP and per signed-in user: GCRA (the generic cell rate
//! algorithm: a key's "theoretical arrival time" moves one emission interval per request, and a
//! request that would move it more than the burst ahead is refused).
//!
//! - [`RateLimits::shared`]: the state lives in Redis and one Lua script decides each request
//!   (a signed-in caller's user limit, an anonymous caller's IP limit; one round trip)
//!   atomically against Redis's clock, so any number of gateways enforce one limit. In front of
//!   it each gateway keeps the per-IP limit locally, so a flood is turned away before its
//!   tokens are verified. If
//!   Redis does not answer, a request is let through (counted in
//!   `gateway_rate_limit_errors_total`): the limits protect the services, and Redis being down
//!   must not take the API down.
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

/// GCRA over each of KEYS (one per limit), each holding a theoretical arrival time in
/// microseconds of Redis's clock; ARGV has each key's emission interval (µs) and burst, in
/// pairs. The request is admitted, and every key moved on, only if every limit admits it.
/// Returns 0 when admitted, else the microseconds to wait and the index (1-based) of the limit
/// that refused.
const GCRA: &str = r"
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local moved = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now_us
  if tat < now_us then tat = now_us end
  local new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if now_us < allow_at then return {allow_at - now_us, i} end
  moved[i] = new_tat
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, moved[i], 'PX', math.ceil((moved[i] - now_us) / 1000) + 1)
end
return {0, 0}
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
        /// The per-IP limit kept locally as well (see the module docs).
        local_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
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
        let limits = Self::Shared {
            redis,
            script: Arc::new(redis::Script::new(GCRA)),
            prefix: format!("{prefix}:ratelimit"),
            per_ip,
            per_user,
            local_ip: Arc::new(RateLimiter::keyed(quota(per_ip))),
        };
        limits.forget_idle_keys();
        limits
    }

    /// The cheap first check, before a token is verified: the caller's IP against this
    /// gateway's own per-IP limit.
    pub fn guard_ip(&self, ip: IpAddr) -> Result<(), Problem> {
        let limiter = match self {
            Self::Local { per_ip, .. } => per_ip,
            Self::Shared { local_ip, .. } => local_ip,
        };
        match limiter.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(not_until) => refused(
                Scope::Ip,
                not_until.wait_time_from(DefaultClock::default().now()),
            ),
        }
    }

    /// Admits a request from `ip`, by `user` when signed in; else 429 with `Retry-After`.
    /// Local limits checked the IP in [`RateLimits::guard_ip`] already.
    pub async fn admit(&self, ip: IpAddr, user: Option<&str>) -> Result<(), Problem> {
        match self {
            Self::Local { per_user, .. } => match user.map(|u| per_user.check_key(&u.to_owned())) {
                Some(Err(not_until)) => refused(
                    Scope::User,
                    not_until.wait_time_from(DefaultClock::default().now()),
                ),
                _ => Ok(()),
            },
            Self::Shared {
                redis,
                script,
                prefix,
                per_ip,
                per_user,
                ..
            } => {
                let mut invocation = script.prepare_invoke();
                let mut limit = |scope: Scope, key: &str, (rate, burst): (u32, u32)| {
                    let interval_us = (1_000_000 / u64::from(rate.max(1))).max(1);
                    invocation
                        .key(format!("{prefix}:{}:{key}", scope.label()))
                        .arg(interval_us)
                        .arg(burst.max(1));
                };
                // A signed-in caller is limited as a user (its IP was checked locally); an
                // anonymous one by its IP, shared.
                let scope = match user {
                    Some(user) => {
                        limit(Scope::User, user, *per_user);
                        Scope::User
                    }
                    None => {
                        limit(Scope::Ip, &ip.to_string(), *per_ip);
                        Scope::Ip
                    }
                };
                let mut redis = redis.clone();
                let decided = tokio::time::timeout(
                    REDIS_PATIENCE,
                    invocation.invoke_async::<(u64, usize)>(&mut redis),
                )
                .await;
                match decided {
                    Ok(Ok((0, _))) => Ok(()),
                    Ok(Ok((wait_us, _))) => refused(scope, Duration::from_micros(wait_us)),
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
    }

    /// Forgets idle keys of local limits now and then, so memory stays bounded by active
    /// callers.
    fn forget_idle_keys(&self) {
        let (per_ip, per_user) = match self {
            Self::Local { per_ip, per_user } => {
                (Arc::downgrade(per_ip), Some(Arc::downgrade(per_user)))
            }
            Self::Shared { local_ip, .. } => (Arc::downgrade(local_ip), None),
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(ip) = per_ip.upgrade() else { return };
                ip.retain_recent();
                if let Some(user) = per_user.as_ref().and_then(|u| u.upgrade()) {
                    user.retain_recent();
                }
            }
        });
    }
}

fn refused(scope: Scope, wait: Duration) -> Result<(), Problem> {
    metrics::counter!("gateway_rate_limited_total", "scope" => scope.label()).increment(1);
    Err(Problem::too_many_requests(wait.as_secs().max(1)))
}
