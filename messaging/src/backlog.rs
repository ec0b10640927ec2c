//! What waits for each consumer, as the broker counts it: messages ready in its work queues (one
//! per partition), in its retry queue and in its dead letters, and how many workers are
//! subscribed. Backs `GET /v1/admin/consumers` and the console; [`BrokerLink`] is the connection
//! an API opens only when an operator asks.

use std::sync::Arc;

use lapin::{Channel, Connection};
use serde::Serialize;
use tokio::sync::Mutex;

use crate::error::MessagingError;
use crate::topology::Topology;

/// One queue's count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueDepth {
    pub queue: String,
    /// Messages ready for delivery (not those a worker holds unacknowledged).
    pub ready: u32,
    /// Workers subscribed (with partitions, one is active and the others stand by).
    pub consumers: u32,
}

/// A consumer's queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backlog {
    pub consumer: String,
    /// Its work queues: one, or one per partition.
    pub queues: Vec<QueueDepth>,
    /// Messages waiting for another attempt.
    pub retrying: u32,
    pub dead_letters: u32,
}

impl Backlog {
    /// Messages ready in all its work queues.
    pub fn ready(&self) -> u64 {
        self.queues.iter().map(|q| u64::from(q.ready)).sum()
    }
}

/// Counts `consumer`'s queues (declaring them first, so a consumer that never ran shows zeros).
pub async fn backlog(
    connection: &Connection,
    topology: &Topology,
    consumer: &str,
) -> Result<Backlog, MessagingError> {
    let channel = connection.create_channel().await?;
    topology.declare_queues(&channel, consumer).await?;
    let mut queues = Vec::new();
    for queue in topology.work_queues(consumer) {
        queues.push(depth(&channel, &queue).await?);
    }
    let retrying = depth(&channel, &topology.retry_queue(consumer))
        .await?
        .ready;
    let dead_letters = depth(&channel, &topology.dead_letter_queue(consumer))
        .await?
        .ready;
    channel.close(200, "counted").await?;
    Ok(Backlog {
        consumer: consumer.to_owned(),
        queues,
        retrying,
        dead_letters,
    })
}

async fn depth(channel: &Channel, queue: &str) -> Result<QueueDepth, MessagingError> {
    let declared = crate::dead_letters::passive_declare(channel, queue).await?;
    Ok(QueueDepth {
        queue: queue.to_owned(),
        ready: declared.message_count(),
        consumers: declared.consumer_count(),
    })
}

/// A connection [`BrokerLink`] hands out, shared by its callers.
pub type SharedConnection = Arc<Connection>;

/// A broker connection opened on first use and again after it broke: for services that only
/// need the broker when an operator asks (the query API's dead-letter and consumer routes), so
/// they neither hold a connection nor depend on the broker to start.
#[derive(Debug)]
pub struct BrokerLink {
    url: String,
    name: String,
    connection: Mutex<Option<Arc<Connection>>>,
}

impl BrokerLink {
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            name: name.into(),
            connection: Mutex::new(None),
        }
    }

    /// The open connection, or a new one.
    pub async fn connection(&self) -> Result<SharedConnection, MessagingError> {
        let mut held = self.connection.lock().await;
        if let Some(connection) = held.as_ref()
            && connection.status().connected()
        {
            return Ok(Arc::clone(connection));
        }
        let connection = Arc::new(crate::connect(&self.url, &self.name).await?);
        *held = Some(Arc::clone(&connection));
        Ok(connection)
    }
}
