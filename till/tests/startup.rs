//! Start-up with a dependency down: a clear error that names the dependency, where it was
//! looked for (password hidden) and how to start it — never a hang or a panic.

use std::time::Duration;

use till::services::{self, Service};
use till::settings::SystemConfig;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use testkit::free_port as closed_port;

async fn start_error(service: Service, configure: impl FnOnce(&mut SystemConfig)) -> String {
    let mut config = SystemConfig::from_process_env().unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    config.command_api_addr = any;
    config.query_api_addr = any;
    config.relay_ops_addr = any;
    configure(&mut config);
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        services::start(&[service], &config, &mut tasks, &shutdown),
    )
    .await
    .expect("start-up gives up in time");
    shutdown.cancel();
    format!("{:#}", result.expect_err("start-up must fail"))
}

#[tokio::test]
async fn each_unreachable_dependency_is_named_with_its_address_and_how_to_start_it() {
    let port = closed_port();
    let postgres = start_error(Service::CommandApi, |c| {
        c.database_url = format!("postgres://postgres:secret@127.0.0.1:{port}/tillstream")
    })
    .await;
    assert!(
        postgres.contains(&format!(
            "Postgres is not reachable at postgres://postgres:***@127.0.0.1:{port}"
        )),
        "{postgres}"
    );
    assert!(
        postgres.contains("pg_ctlcluster") && !postgres.contains("secret"),
        "{postgres}"
    );

    let rabbit = start_error(Service::Relay, |c| {
        c.amqp_url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
    })
    .await;
    assert!(
        rabbit.contains(&format!(
            "RabbitMQ is not reachable at amqp://guest:***@127.0.0.1:{port}"
        )),
        "{rabbit}"
    );
    assert!(rabbit.contains("rabbitmq-server -detached"), "{rabbit}");

    let redis = start_error(Service::QueryApi, |c| {
        c.redis_url = format!("redis://127.0.0.1:{port}/")
    })
    .await;
    assert!(
        redis.contains(&format!(
            "Redis is not reachable at redis://127.0.0.1:{port}/"
        )),
        "{redis}"
    );
    assert!(redis.contains("redis-server"), "{redis}");
}

/// The gateway forwards plain HTTP; an upstream it cannot reach that way is refused at start-up,
/// naming the variable, instead of failing every request later.
#[tokio::test]
async fn the_gateway_refuses_upstream_urls_it_cannot_forward_to() {
    for (url, command_api) in [
        ("https://commands.example:8443", true),
        ("not a url", true),
        ("http://127.0.0.1:8082?x=1", false),
    ] {
        let error = start_error(Service::Gateway, |c| {
            c.link_gateway = false;
            match command_api {
                true => c.gateway.command_api = url.into(),
                false => c.gateway.query_api = url.into(),
            }
        })
        .await;
        let variable = match command_api {
            true => "TILL_COMMAND_API_URL",
            false => "TILL_QUERY_API_URL",
        };
        assert!(
            error.contains(&format!("{variable}={url} is not an http:// URL")),
            "{error}"
        );
    }
}

/// `till` with `vars` set (and nothing else of Tillstream's), as a newcomer would run it.
fn till(args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_till"));
    command.args(args);
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("TILL_")) {
        command.env_remove(name);
    }
    command.envs(vars.iter().copied());
    command.output().expect("till runs")
}

#[test]
fn a_bad_setting_stops_the_start_with_a_message_that_names_it() {
    for (variable, value) in [
        ("TILL_RATE_PER_USER", "abc"),
        ("TILL_PAYMENT_WINDOW_SECS", "-1"),
        ("TILL_GATEWAY_ADDR", "not-an-address"),
        ("TILL_DATABASE_CONNECTIONS", "0"),
    ] {
        for args in [&["config"][..], &["serve", "gateway"][..], &["migrate"][..]] {
            let output = till(args, &[(variable, value)]);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{args:?} with {variable}={value}");
            assert!(
                stderr.contains(&format!("{variable}={value:?} is not ")),
                "{args:?} with {variable}={value}: {stderr}"
            );
        }
    }
}

#[test]
fn till_config_prints_the_effective_settings_with_passwords_hidden() {
    let output = till(
        &["config"],
        &[
            ("AMQP_URL", "amqp://shop:s3cret@127.0.0.1:5672/%2f"),
            ("TILL_PAYMENT_WINDOW_SECS", "60"),
        ],
    );
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("amqp://shop:***@127.0.0.1:5672/%2f") && !stdout.contains("s3cret"),
        "{stdout}"
    );
    let window = stdout
        .lines()
        .find(|l| l.starts_with("TILL_PAYMENT_WINDOW_SECS"))
        .unwrap_or_default();
    assert!(window.ends_with(" 60"), "{stdout}");
}

#[tokio::test]
async fn till_probe_is_healthy_only_while_the_service_of_its_container_answers() {
    // A relay's operations port, as the container of a relay has it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let ops = platform::http::operational_routes(platform::http::Readiness::default());
    let server = tokio::spawn(async move { axum::serve(listener, ops).await });
    let elsewhere = format!("127.0.0.1:{}", closed_port());
    let vars: Vec<(String, String)> = [
        ("TILL_RELAY_ADDR", format!("0.0.0.0:{port}")),
        ("TILL_COMMAND_API_ADDR", elsewhere.clone()),
        ("TILL_QUERY_API_ADDR", elsewhere.clone()),
        ("TILL_PROJECTORS_ADDR", elsewhere.clone()),
        ("TILL_PROCESSES_ADDR", elsewhere.clone()),
        ("TILL_GATEWAY_OPS_ADDR", elsewhere.clone()),
        ("TILL_DEV_ISSUER_ADDR", elsewhere),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let probe = |vars: Vec<(String, String)>| {
        tokio::task::spawn_blocking(move || {
            let vars: Vec<(&str, &str)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            till(&["probe"], &vars)
        })
    };
    let healthy = probe(vars.clone()).await.unwrap();
    assert!(
        healthy.status.success(),
        "{}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    server.abort();
    let _ = server.await;
    let down = probe(vars).await.unwrap();
    assert!(!down.status.success(), "healthy with nothing answering");
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("no service answers here"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}
