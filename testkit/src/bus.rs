//! A RabbitMQ topology of the test's own: a random prefix names its exchange and queues, which
//! are deleted when the [`TestBus`] is dropped.

use std::sync::Mutex;

use lapin::Connection;
use messaging::Topology;

/// A connection to the broker of `AMQP_URL` (default: the local RabbitMQ), or a panic that says
/// how to start it.
pub async fn amqp() -> Connection {
    let url = platform::settings::amqp_url();
    messaging::connect(&url, "tests").await.unwrap_or_else(|e| {
        panic!(
            "RabbitMQ is not reachable at {} ({e}); start it with `scripts/services` \
             or `docker compose up -d rabbitmq`",
            platform::settings::redact(&url)
        )
    })
}

/// A topology with a random prefix: no other test's exchange or queues share its names.
fn unique_topology() -> Topology {
    Topology::new(format!("test-{}", uuid::Uuid::new_v4().simple()))
}

/// A topology with a random prefix, whose exchange and the named consumers' queues are deleted
/// when this is dropped.
#[derive(Debug)]
pub struct TestBus {
    pub topology: Topology,
    consumers: Mutex<Vec<String>>,
}

impl Default for TestBus {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBus {
    pub fn new() -> Self {
        Self::with_topology(unique_topology())
    }

    /// A bus of its own whose consumers' work is split into `partitions` partitions.
    pub fn partitioned(partitions: u16) -> Self {
        Self::with_topology(unique_topology().with_partitions(partitions))
    }

    /// Cleans up after `topology` (the test chose its name).
    pub fn with_topology(topology: Topology) -> Self {
        Self {
            topology,
            consumers: Mutex::new(Vec::new()),
        }
    }

    /// Remembers `consumer` for deletion and returns its name.
    pub fn consumer(&self, consumer: &str) -> String {
        self.consumers
            .lock()
            .expect("not poisoned")
            .push(consumer.to_owned());
        consumer.to_owned()
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        let consumers =
            std::mem::take(&mut *self.consumers.lock().unwrap_or_else(|e| e.into_inner()));
        crate::cleanup::run_to_completion(async move {
            let url = platform::settings::amqp_url();
            let Ok(conn) = messaging::connect(&url, "tests cleanup").await else {
                return;
            };
            if let Ok(channel) = conn.create_channel().await {
                for consumer in &consumers {
                    let _ = topology.delete_consumer(&channel, consumer).await;
                }
                let _ = topology.delete_exchange(&channel).await;
                let _ = channel.close(200, "cleaned up").await;
            }
            let _ = conn.close(200, "cleaned up").await;
        });
    }
}
