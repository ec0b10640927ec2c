//! Rate limits with several gateways: their state is in Redis, so two gateways enforce one
//! limit, not one each; and when Redis does not answer, requests go through (the limits guard
//! the services; Redis being away must not take the API down).

use std::net::SocketAddr;
use std::time::Duration;

use gateway::{GatewaySettings, RateLimits};
use platform::identity::JwtVerifier;
use reqwest::StatusCode;
use testkit::TcpProxy;

// A port nothing listens on: forwarded requests answer 503, after the limits are checked.
use testkit::free_port as closed_port;

/// A gateway on a free port with these limits; its upstreams are down.
async fn gateway(limits: RateLimits) -> (String, tokio::task::JoinHandle<()>) {
    let upstream = format!("http://127.0.0.1:{}", closed_port());
    let settings = GatewaySettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        ops_listen: "127.0.0.1:0".parse().unwrap(),
        command_api: upstream.clone(),
        query_api: upstream,
        per_user: (5, 5),
        per_ip: (5, 5),
        upstream_timeout: Duration::from_secs(2),
        cors_origins: vec![],
        sign_in_url: None,
    };
    let verifier = JwtVerifier::new(testkit::system::identity());
    let routers = gateway::router(settings, verifier, limits).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let _ = platform::http::serve(
            listener,
            routers.public,
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
    });
    (format!("http://{addr}"), server)
}

/// Sends `n` catalog reads, alternating between `gateways`; returns how many were let through.
async fn let_through(gateways: &[String], n: usize) -> usize {
    let http = reqwest::Client::new();
    let mut through = 0;
    for i in 0..n {
        let reply = http
            .get(format!("{}/v1/products", gateways[i % gateways.len()]))
            .send()
            .await
            .unwrap();
        match reply.status() {
            StatusCode::TOO_MANY_REQUESTS => {
                assert!(reply.headers().contains_key("retry-after"));
            }
            StatusCode::SERVICE_UNAVAILABLE => through += 1,
            other => panic!("unexpected {other}"),
        }
    }
    through
}

fn shared(redis: redis::aio::ConnectionManager, prefix: &str) -> RateLimits {
    RateLimits::shared(redis, prefix, (5, 5), (5, 5))
}

#[tokio::test]
async fn two_gateways_sharing_redis_enforce_one_limit() {
    let prefix = testkit::redis::test_prefix();
    let redis = till::services::connect_redis(&platform::settings::redis_url())
        .await
        .unwrap();
    let (first, _a) = gateway(shared(redis.clone(), &prefix)).await;
    let (second, _b) = gateway(shared(redis.clone(), &prefix)).await;
    // 5 per second with a burst of 5: twenty requests in a moment get 5 through (6 if a
    // token refills meanwhile), whichever gateway they reach.
    let through = let_through(&[first.clone(), second.clone()], 20).await;
    assert!((5..=6).contains(&through), "{through} let through");

    // Two gateways with limits of their own (other prefixes) let 5 through each: sharing one
    // is what held the total to 5.
    let (other_prefix, another_prefix) =
        (testkit::redis::test_prefix(), testkit::redis::test_prefix());
    let (lone_a, _c) = gateway(shared(redis.clone(), &other_prefix)).await;
    let (lone_b, _d) = gateway(shared(redis, &another_prefix)).await;
    let through = let_through(&[lone_a, lone_b], 20).await;
    assert!(
        through >= 10,
        "{through} let through by two separate limits"
    );
    for prefix in [prefix, other_prefix, another_prefix] {
        let _ = testkit::redis::delete_keys(&prefix).await;
    }
}

#[tokio::test]
async fn requests_go_through_when_redis_does_not_answer() {
    let prefix = testkit::redis::test_prefix();
    let proxy = TcpProxy::in_front_of(&platform::settings::redis_url()).await;
    let redis = till::services::connect_redis(&proxy.redirect(&platform::settings::redis_url()))
        .await
        .unwrap();
    let (gateway, _server) = gateway(shared(redis, &prefix)).await;
    proxy.cut();
    let started = std::time::Instant::now();
    let through = let_through(&[gateway], 8).await;
    assert_eq!(through, 8, "every request let through while Redis is away");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "each waited {:?}",
        started.elapsed() / 8
    );
    let _ = testkit::redis::delete_keys(&prefix).await;
}
