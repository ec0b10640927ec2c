//! The settings tree: everything the services are started with, read from the environment once
//! ([`SystemConfig::from_env`]) and handed down. Every variable is parsed here or by the part it
//! belongs to (`IdentitySettings::from_env`, `GatewaySettings::from_env`), all through
//! [`Env`]'s typed getters, so a bad value stops the start with an error that names the
//! variable and what was expected. `till config` prints the effective settings
//! ([`SystemConfig::effective`]), secrets redacted.

use std::net::SocketAddr;
use std::time::Duration;

use messaging::Topology;
use platform::identity::{DEV_ISSUER, IdentitySettings};
use platform::read_models::{CartKeys, DEFAULT_REDIS_PREFIX};
use platform::settings::{
    DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, Env, SettingError, redact,
};

/// Each pool's largest size by default. Measured with `till bench write` (32 shoppers, one
/// command API, 2 cores), alternating in one sitting: 4 → 26% and 26% of the raw-INSERT rate,
/// 8 → 24–36%, 32 → 24% and 27%. Postgres on a few cores runs only a few statements at once;
/// more connections only queue there. See "Connection budget" in the README.
pub const DEFAULT_DATABASE_CONNECTIONS: u32 = 4;

/// Everything the services are started with. [`SystemConfig::from_env`] is what `till` uses;
/// tests build one with their own database, bus prefix, key prefix and free ports.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    pub database_url: String,
    pub database_connections: u32,
    /// Appends committed together at most (`TILL_APPEND_BATCH`; 1: each on its own). See
    /// `eventstore::group`.
    pub append_batch: usize,
    pub amqp_url: String,
    pub redis_url: String,
    pub identity: IdentitySettings,
    /// Where the development issuer listens, when tokens come from it (`None` otherwise).
    pub dev_issuer_addr: Option<SocketAddr>,
    pub topology: Topology,
    pub cart_keys: CartKeys,
    pub command_api_addr: SocketAddr,
    pub query_api_addr: SocketAddr,
    pub consistency_wait: Duration,
    pub relay_poll_interval: Duration,
    /// Where the relay and the projectors serve `/livez`, `/readyz` and `/metrics`.
    pub relay_ops_addr: SocketAddr,
    pub projectors_ops_addr: SocketAddr,
    pub processes_ops_addr: SocketAddr,
    /// How long an order with stock held waits for payment (`TILL_PAYMENT_WINDOW_SECS`).
    pub payment_window: Duration,
    /// How often due payment deadlines are looked for.
    pub deadline_interval: Duration,
    /// How often the projectors check that Redis still holds the carts view
    /// (`TILL_REDIS_CHECK_INTERVAL_MS`).
    pub redis_check_interval: Duration,
    /// How long the simulated provider takes for `tok_slow`.
    pub provider_slow: Duration,
    /// Who takes the money: the simulator, or Stripe (`TILL_PAYMENT_PROVIDER`).
    pub payments: Payments,
    /// How long a payment the provider has not decided may wait for its webhook before it is
    /// looked up (`TILL_PAYMENT_RECONCILE_AFTER_SECS`).
    pub reconcile_after: Duration,
    /// The gateway's settings; with `link_gateway`, its upstream URLs are set to where the
    /// command and query APIs of this start actually listen.
    pub gateway: gateway::GatewaySettings,
    pub link_gateway: bool,
}

/// Where the development issuer listens (must match `identity::DEV_JWKS_URL`).
pub const DEV_ISSUER_ADDR: SocketAddr = local(8079);

const fn local(port: u16) -> SocketAddr {
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port)
}

impl SystemConfig {
    /// The settings of `env` (see the README's configuration table).
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        let identity = IdentitySettings::from_env(env)?;
        let dev_issuer_addr = match identity.issuer == DEV_ISSUER {
            true => Some(env.addr("TILL_DEV_ISSUER_ADDR", DEV_ISSUER_ADDR)?),
            false => None,
        };
        let mut gateway = gateway::GatewaySettings::from_env(env)?;
        if gateway.sign_in_url.is_none() && identity.issuer == DEV_ISSUER {
            // The storefront's "pick a name" sign-in: the development issuer's /token, next to
            // the JWKS it serves (compose: http://dev-issuer:8079/token).
            let base = identity
                .jwks_url
                .strip_suffix(".well-known/jwks.json")
                .unwrap_or(&identity.issuer);
            gateway.sign_in_url = Some(format!("{base}token"));
        }
        Ok(Self {
            database_url: env.text("DATABASE_URL", DEFAULT_DATABASE_URL),
            database_connections: env
                .positive("TILL_DATABASE_CONNECTIONS", DEFAULT_DATABASE_CONNECTIONS)?,
            append_batch: env.parsed(
                "TILL_APPEND_BATCH",
                eventstore::GroupCommit::default().max_batch,
                "a whole number from 1 (no grouping) to 1000",
                |v| v.parse().ok().filter(|n| (1..=1000).contains(n)),
            )?,
            amqp_url: env.text("AMQP_URL", DEFAULT_AMQP_URL),
            redis_url: env.text("REDIS_URL", DEFAULT_REDIS_URL),
            identity,
            dev_issuer_addr,
            topology: Topology::new(env.text("TILL_BUS_PREFIX", Topology::DEFAULT_PREFIX))
                .with_partitions(env.parsed(
                    "TILL_PARTITIONS",
                    1,
                    "a whole number from 1 to 64",
                    |v| {
                        v.parse()
                            .ok()
                            .filter(|n| (1..=messaging::topology::MAX_PARTITIONS).contains(n))
                    },
                )?),
            cart_keys: CartKeys {
                prefix: env.text("TILL_REDIS_PREFIX", DEFAULT_REDIS_PREFIX),
            },
            command_api_addr: env.addr("TILL_COMMAND_API_ADDR", command_api::DEFAULT_ADDR)?,
            query_api_addr: env.addr("TILL_QUERY_API_ADDR", query_api::DEFAULT_ADDR)?,
            consistency_wait: env.millis(
                "TILL_CONSISTENCY_WAIT_MS",
                query_api::DEFAULT_CONSISTENCY_WAIT,
            )?,
            relay_poll_interval: Duration::from_millis(200),
            relay_ops_addr: env.addr("TILL_RELAY_ADDR", local(8083))?,
            projectors_ops_addr: env.addr("TILL_PROJECTORS_ADDR", local(8084))?,
            processes_ops_addr: env.addr("TILL_PROCESSES_ADDR", local(8085))?,
            payment_window: env.seconds("TILL_PAYMENT_WINDOW_SECS", Duration::from_secs(900))?,
            deadline_interval: Duration::from_millis(500),
            redis_check_interval: env
                .millis("TILL_REDIS_CHECK_INTERVAL_MS", Duration::from_secs(5))?,
            provider_slow: Duration::from_millis(1500),
            payments: Payments::from_env(env)?,
            reconcile_after: env.seconds(
                "TILL_PAYMENT_RECONCILE_AFTER_SECS",
                Duration::from_secs(300),
            )?,
            gateway,
            link_gateway: false,
        })
    }

    /// The settings of this process's environment.
    pub fn from_process_env() -> Result<Self, SettingError> {
        Self::from_env(&Env::from_process())
    }

    /// Each setting by its variable, as in effect, with passwords redacted: `till config`.
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        let addr = |a: &SocketAddr| a.to_string();
        let rate = |(r, b): (u32, u32)| format!("{r}/{b}");
        let mut settings = vec![
            ("DATABASE_URL", redact(&self.database_url)),
            (
                "TILL_DATABASE_CONNECTIONS",
                self.database_connections.to_string(),
            ),
            ("TILL_APPEND_BATCH", self.append_batch.to_string()),
            ("AMQP_URL", redact(&self.amqp_url)),
            ("REDIS_URL", redact(&self.redis_url)),
            ("TILL_REDIS_PREFIX", self.cart_keys.prefix.clone()),
            ("TILL_BUS_PREFIX", self.topology.prefix().to_owned()),
            ("TILL_PARTITIONS", self.topology.partitions().to_string()),
            ("TILL_GATEWAY_ADDR", addr(&self.gateway.listen)),
            (
                "TILL_SIGN_IN_URL",
                self.gateway.sign_in_url.clone().unwrap_or_default(),
            ),
            ("TILL_GATEWAY_OPS_ADDR", addr(&self.gateway.ops_listen)),
            ("TILL_COMMAND_API_ADDR", addr(&self.command_api_addr)),
            ("TILL_QUERY_API_ADDR", addr(&self.query_api_addr)),
            ("TILL_RELAY_ADDR", addr(&self.relay_ops_addr)),
            ("TILL_PROJECTORS_ADDR", addr(&self.projectors_ops_addr)),
            ("TILL_PROCESSES_ADDR", addr(&self.processes_ops_addr)),
        ];
        if let Some(dev_issuer) = &self.dev_issuer_addr {
            settings.push(("TILL_DEV_ISSUER_ADDR", addr(dev_issuer)));
        }
        settings.extend([
            ("TILL_COMMAND_API_URL", redact(&self.gateway.command_api)),
            ("TILL_QUERY_API_URL", redact(&self.gateway.query_api)),
            ("TILL_RATE_PER_USER", rate(self.gateway.per_user)),
            ("TILL_RATE_PER_IP", rate(self.gateway.per_ip)),
            (
                "TILL_UPSTREAM_TIMEOUT_MS",
                self.gateway.upstream_timeout.as_millis().to_string(),
            ),
            ("TILL_CORS_ORIGINS", self.gateway.cors_origins.join(",")),
            (
                "TILL_CONSISTENCY_WAIT_MS",
                self.consistency_wait.as_millis().to_string(),
            ),
            (
                "TILL_PAYMENT_WINDOW_SECS",
                self.payment_window.as_secs().to_string(),
            ),
            (
                "TILL_REDIS_CHECK_INTERVAL_MS",
                self.redis_check_interval.as_millis().to_string(),
            ),
            (
                "TILL_PAYMENT_PROVIDER",
                match &self.payments {
                    Payments::Simulated => "simulated".to_owned(),
                    Payments::Stripe(stripe) => format!("stripe ({})", stripe.api_base),
                },
            ),
            (
                "TILL_PAYMENT_RECONCILE_AFTER_SECS",
                self.reconcile_after.as_secs().to_string(),
            ),
            ("TILL_JWT_ISSUER", self.identity.issuer.clone()),
            ("TILL_JWT_AUDIENCE", self.identity.audience.clone()),
            ("TILL_JWKS_URL", self.identity.jwks_url.clone()),
            (
                "TILL_JWT_LEEWAY_SECS",
                self.identity.leeway.as_secs().to_string(),
            ),
        ]);
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<SystemConfig, SettingError> {
        SystemConfig::from_env(&Env::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn nothing_set_means_the_local_defaults() {
        let config = settings(&[]).unwrap();
        assert_eq!(config.database_url, DEFAULT_DATABASE_URL);
        assert_eq!(config.database_connections, 4, "the README documents 4");
        assert_eq!(config.gateway.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.command_api_addr.to_string(), "127.0.0.1:8081");
        assert_eq!(config.payment_window, Duration::from_secs(900));
        assert_eq!(config.consistency_wait, Duration::from_secs(3));
        assert_eq!(config.gateway.per_user, (200, 400));
        assert_eq!(config.identity.issuer, DEV_ISSUER);
        assert_eq!(config.dev_issuer_addr, Some(DEV_ISSUER_ADDR));
        assert_eq!(config.cart_keys.prefix, "tillstream");
    }

    #[test]
    fn values_are_taken() {
        let config = settings(&[
            ("TILL_DATABASE_CONNECTIONS", "8"),
            ("TILL_PAYMENT_WINDOW_SECS", "60"),
            ("TILL_RATE_PER_USER", "10/20"),
            ("TILL_CONSISTENCY_WAIT_MS", "500"),
            ("TILL_QUERY_API_ADDR", "0.0.0.0:9082"),
            ("TILL_REDIS_PREFIX", "shop"),
            ("TILL_CORS_ORIGINS", "https://a.example, https://b.example"),
        ])
        .unwrap();
        assert_eq!(config.database_connections, 8);
        assert_eq!(config.payment_window, Duration::from_secs(60));
        assert_eq!(config.gateway.per_user, (10, 20));
        assert_eq!(config.consistency_wait, Duration::from_millis(500));
        assert_eq!(config.query_api_addr.to_string(), "0.0.0.0:9082");
        assert_eq!(config.cart_keys.prefix, "shop");
        assert_eq!(config.gateway.cors_origins.len(), 2);
    }

    #[test]
    fn a_bad_value_of_any_variable_is_an_error_that_names_it() {
        for (variable, value) in [
            ("TILL_DATABASE_CONNECTIONS", "0"),
            ("TILL_DATABASE_CONNECTIONS", "many"),
            ("TILL_PAYMENT_WINDOW_SECS", "-1"),
            ("TILL_PAYMENT_WINDOW_SECS", "15m"),
            ("TILL_CONSISTENCY_WAIT_MS", "soon"),
            ("TILL_UPSTREAM_TIMEOUT_MS", "0"),
            ("TILL_RATE_PER_USER", "abc"),
            ("TILL_RATE_PER_IP", "100"),
            ("TILL_GATEWAY_ADDR", "8080"),
            ("TILL_COMMAND_API_ADDR", "localhost:8081"),
            ("TILL_QUERY_API_ADDR", "127.0.0.1"),
            ("TILL_RELAY_ADDR", "x"),
            ("TILL_PROJECTORS_ADDR", "127.0.0.1:port"),
            ("TILL_PROCESSES_ADDR", ":8085"),
            ("TILL_DEV_ISSUER_ADDR", "issuer"),
            ("TILL_COMMAND_API_URL", "https://commands.example"),
            ("TILL_QUERY_API_URL", "not a url"),
            ("TILL_JWT_LEEWAY_SECS", "120"),
            ("TILL_JWT_LEEWAY_SECS", "-5"),
            ("TILL_ENTRA_TENANT_ID", "contoso"),
            ("TILL_ENTRA_CLIENT_ID", "api"),
            ("TILL_JWT_ISSUER", "https://issuer.example/"),
            ("TILL_PAYMENT_PROVIDER", "paypal"),
            ("TILL_PAYMENT_RECONCILE_AFTER_SECS", "0"),
        ] {
            let error = settings(&[(variable, value)]).expect_err(variable);
            assert_eq!(error.variable, variable, "{error}");
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("{variable}={value:?} is not ")),
                "{message}"
            );
        }
    }

    #[test]
    fn stripe_needs_its_key_and_webhook_secret_from_the_environment_or_files() {
        let error = settings(&[("TILL_PAYMENT_PROVIDER", "stripe")]).expect_err("no key");
        assert_eq!(error.variable, "TILL_STRIPE_API_KEY");
        let dir = std::env::temp_dir().join(format!("till-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("stripe-key");
        std::fs::write(&key_file, "sk_test_from_file\n").unwrap();
        let config = settings(&[
            ("TILL_PAYMENT_PROVIDER", "stripe"),
            ("TILL_STRIPE_API_KEY_FILE", key_file.to_str().unwrap()),
            ("TILL_STRIPE_WEBHOOK_SECRET", "whsec_new, whsec_old"),
        ])
        .unwrap();
        let Payments::Stripe(stripe) = &config.payments else {
            panic!("not stripe: {:?}", config.payments);
        };
        assert_eq!(stripe.api_key, "sk_test_from_file");
        assert_eq!(stripe.webhook_secrets, ["whsec_new", "whsec_old"]);
        assert_eq!(stripe.api_base, "https://api.stripe.com");
        let shown = format!("{:?}", config.effective());
        assert!(!shown.contains("sk_test_from_file"), "{shown}");
        let missing = settings(&[
            ("TILL_PAYMENT_PROVIDER", "stripe"),
            ("TILL_STRIPE_API_KEY_FILE", "/nonexistent/key"),
        ])
        .expect_err("unreadable file");
        assert_eq!(missing.variable, "TILL_STRIPE_API_KEY_FILE");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_complete_issuer_replaces_the_development_one() {
        let config = settings(&[
            ("TILL_JWT_ISSUER", "https://issuer.example/"),
            ("TILL_JWT_AUDIENCE", "api://shop"),
            ("TILL_JWKS_URL", "https://issuer.example/jwks"),
        ])
        .unwrap();
        assert_eq!(config.identity.audience, "api://shop");
        assert_eq!(config.dev_issuer_addr, None);
        let entra = settings(&[
            ("TILL_ENTRA_TENANT_ID", "contoso"),
            ("TILL_ENTRA_CLIENT_ID", "api-id"),
        ])
        .unwrap();
        assert_eq!(
            entra.identity.issuer,
            "https://login.microsoftonline.com/contoso/v2.0"
        );
    }

    #[test]
    fn the_effective_settings_hide_passwords() {
        let config = settings(&[
            ("DATABASE_URL", "postgres://shop:hunter2@db:5432/shop"),
            ("AMQP_URL", "amqp://bus:s3cret@mq:5672/%2f"),
        ])
        .unwrap();
        let shown: Vec<String> = config
            .effective()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let text = shown.join("\n");
        assert!(
            text.contains("DATABASE_URL=postgres://shop:***@db:5432/shop"),
            "{text}"
        );
        assert!(
            text.contains("AMQP_URL=amqp://bus:***@mq:5672/%2f"),
            "{text}"
        );
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
        assert!(text.contains("TILL_PAYMENT_WINDOW_SECS=900"), "{text}");
    }
}

/// Who takes the money.
#[derive(Debug, Clone)]
pub enum Payments {
    /// The simulated provider (test tokens `tok_ok`, `tok_declined`, ...).
    Simulated,
    Stripe(processes::stripe::StripeSettings),
}

impl Payments {
    /// `TILL_PAYMENT_PROVIDER` = `simulated` (default) or `stripe`; for Stripe,
    /// `TILL_STRIPE_API_KEY` and `TILL_STRIPE_WEBHOOK_SECRET` (comma-separated while rotating;
    /// each also as `…_FILE`), and `TILL_STRIPE_API_BASE` (default Stripe's own).
    pub fn from_env(env: &Env) -> Result<Self, SettingError> {
        match env.text("TILL_PAYMENT_PROVIDER", "simulated").as_str() {
            "simulated" => Ok(Self::Simulated),
            "stripe" => {
                let required = |name: &str| {
                    env.secret(name)?.ok_or_else(|| {
                        SettingError::new(
                            name,
                            "",
                            "set (or its _FILE) when the provider is stripe",
                        )
                    })
                };
                let api_key = required("TILL_STRIPE_API_KEY")?;
                let webhook_secrets = required("TILL_STRIPE_WEBHOOK_SECRET")?
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect();
                Ok(Self::Stripe(processes::stripe::StripeSettings {
                    api_base: env.text("TILL_STRIPE_API_BASE", processes::stripe::STRIPE_API),
                    api_key,
                    webhook_secrets,
                }))
            }
            other => Err(SettingError::new(
                "TILL_PAYMENT_PROVIDER",
                other,
                "simulated or stripe",
            )),
        }
    }

    /// The webhook secrets the command API checks signatures with (none: no webhooks).
    pub fn stripe_webhook_secrets(&self) -> Vec<String> {
        match self {
            Self::Simulated => Vec::new(),
            Self::Stripe(stripe) => stripe.webhook_secrets.clone(),
        }
    }
}
