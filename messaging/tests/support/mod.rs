//! Shared by the messaging integration tests: a random topology per test (deleted again on drop,
//! even when the test panics — tests hold their relay and consumer tasks in `AbortOnDropHandle`s
//! declared after the `TestBus`, so a panicking test stops them before the clean-up and they
//! cannot redeclare what it deletes), a probe queue that records what the relay published, concurrent
//! writers, a TCP proxy that can cut connections, and waiting with a deadline.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventstore::{EventStore, ExpectedVersion, Metadata, NewEvent};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use messaging::Envelope;
use serde_json::json;
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use testkit::bus::amqp;
// Each test binary uses some of these.
#[allow(unused_imports)]
pub use testkit::{
    PATIENCE, TestBus, eventually, eventually_explained, stall_report, wait_for_log_horizon,
    within, within_explained,
};

pub fn amqp_url() -> String {
    platform::settings::amqp_url()
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,messaging=info,relay=info,consumer=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// One message as the probe received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub routing_key: String,
    pub properties: BasicProperties,
    pub envelope: Envelope,
}

/// A queue bound with `#` that records every message the relay publishes.
#[derive(Debug)]
pub struct Probe {
    _channel: lapin::Channel,
    consumer: lapin::Consumer,
    pub seen: HashMap<Uuid, u32>,
    pub messages: Vec<Received>,
}

impl Probe {
    /// Declares and binds the probe queue: start it before the relay publishes.
    pub async fn start(conn: &Connection, bus: &TestBus) -> Self {
        let name = bus.consumer("probe");
        let channel = conn.create_channel().await.unwrap();
        bus.topology
            .declare_consumer(&channel, &name, &["#".to_owned()])
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                &bus.topology.queue(&name),
                "probe",
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _channel: channel,
            consumer,
            seen: HashMap::new(),
            messages: Vec::new(),
        }
    }

    /// Receives until `done(self)` holds; false if `within` passed first.
    pub async fn until(&mut self, within: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !done(self) {
            let next = tokio::time::timeout_at(deadline, self.consumer.next()).await;
            let Ok(Some(delivery)) = next else {
                return false;
            };
            let delivery = delivery.expect("probe delivery");
            let envelope = Envelope::from_body(&delivery.data).expect("an envelope");
            *self.seen.entry(envelope.event_id).or_default() += 1;
            self.messages.push(Received {
                routing_key: delivery.routing_key.to_string(),
                properties: delivery.properties,
                envelope,
            });
        }
        true
    }

    /// Receives until every id of `expected` was seen; panics with the number missing and the
    /// state of the global-log horizon if not.
    pub async fn until_all(&mut self, expected: &HashSet<Uuid>, pool: &PgPool) {
        let arrived = self
            .until(PATIENCE, |p| {
                expected.iter().all(|id| p.seen.contains_key(id))
            })
            .await;
        if !arrived {
            let missing = expected
                .iter()
                .filter(|id| !self.seen.contains_key(id))
                .count();
            panic!(
                "{missing} of {} events never arrived within {PATIENCE:?}; {}",
                expected.len(),
                stall_report(pool).await
            );
        }
    }

    pub fn ids(&self) -> HashSet<Uuid> {
        self.seen.keys().copied().collect()
    }

    /// Deliveries beyond the first of each event.
    pub fn duplicates(&self) -> u32 {
        self.seen.values().map(|n| n - 1).sum()
    }
}

pub fn event(event_type: &str) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event_type.to_owned(),
        data: json!({ "note": "hello" }),
        metadata: Metadata {
            correlation_id: Some(Uuid::new_v4()),
            causation_id: Some(Uuid::new_v4()),
            actor: Some("tests".into()),
            idempotency_key: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        },
    }
}

pub fn stream() -> String {
    format!("test-{}", Uuid::new_v4())
}

/// `writers` concurrent writers append `per_writer` events each, one to three per append, to
/// streams of their own (a new one every ten events). Returns the appended ids.
pub async fn append_concurrently(
    store: &EventStore,
    writers: usize,
    per_writer: usize,
    event_type: &str,
) -> Vec<Uuid> {
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = store.clone();
        let event_type = event_type.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(per_writer);
            let mut stream_id = stream();
            while ids.len() < per_writer {
                if ids.len() % 10 == 0 {
                    stream_id = stream();
                }
                let n = (1 + ids.len() % 3).min(per_writer - ids.len());
                let events: Vec<NewEvent> = (0..n).map(|_| event(&event_type)).collect();
                store
                    .append(&stream_id, ExpectedVersion::Any, &events)
                    .await
                    .expect("append");
                ids.extend(events.iter().map(|e| e.event_id));
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids
}

/// Appends `count` events to one stream, one append each.
pub async fn append_to(
    store: &EventStore,
    stream_id: &str,
    count: usize,
    event_type: &str,
) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let e = event(event_type);
        store
            .append(stream_id, ExpectedVersion::Any, std::slice::from_ref(&e))
            .await
            .expect("append");
        ids.push(e.event_id);
    }
    ids
}

pub async fn stored_ids(pool: &PgPool) -> HashSet<Uuid> {
    sqlx::query_scalar("SELECT event_id FROM eventstore.events")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// Publishes `body` straight to `queue` and waits for the confirm.
pub async fn publish_to_queue(
    conn: &Connection,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) {
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish("", queue, BasicPublishOptions::default(), body, properties)
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
    let _ = channel.close(200, "published").await;
}

/// A loopback TCP proxy to RabbitMQ whose open connections can be cut, to play "the broker went
/// away" without touching the shared broker.
#[derive(Debug, Clone)]
pub struct CuttableProxy {
    pub url: String,
    cut: Arc<Mutex<CancellationToken>>,
    pub stop: CancellationToken,
}

impl CuttableProxy {
    /// Proxies to the host and port of `AMQP_URL` (default: the local RabbitMQ).
    pub async fn start() -> Self {
        let real = amqp_url();
        let after_scheme = real
            .split_once("://")
            .map_or(real.as_str(), |(_, rest)| rest);
        let after_user = after_scheme
            .rsplit_once('@')
            .map_or(after_scheme, |(_, host)| host);
        let upstream = after_user.split('/').next().unwrap_or(after_user);
        let upstream = if upstream.contains(':') {
            upstream.to_owned()
        } else {
            format!("{upstream}:5672")
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = real.replacen(
            after_user.split('/').next().unwrap_or(""),
            &format!("127.0.0.1:{port}"),
            1,
        );
        let proxy = Self {
            url,
            cut: Arc::new(Mutex::new(CancellationToken::new())),
            stop: CancellationToken::new(),
        };
        let (cut, stop) = (proxy.cut.clone(), proxy.stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else {
                    continue;
                };
                let token = cut.lock().unwrap().clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        proxy
    }

    /// Drops every connection open through the proxy; new ones are accepted as before.
    pub fn cut(&self) {
        let mut token = self.cut.lock().unwrap();
        token.cancel();
        *token = CancellationToken::new();
    }
}
