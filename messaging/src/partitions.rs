//! Partitioned consumers: a consumer's work split by stream id over `P` queues, shared by any
//! number of workers, each stream still handled in order.
//!
//! The layout is in [`crate::topology`]: a consistent-hash exchange sends each event to the
//! partition of its stream; each partition is a single-active-consumer queue. Every worker (a
//! projectors or processes process) runs a [`ConsumerRunner`] on every partition, so the broker
//! always has a standby: when a worker dies, its partitions pass to the next worker in line at
//! once, and no partition ever has two active consumers (so no stream is applied out of order
//! by two workers racing).
//!
//! The broker makes the first worker to subscribe active on every partition, so on its own it
//! would never share. The [`Balancer`] of each worker counts the workers (the consumers of a
//! partition queue) and, when it is busy on more than its share (`⌈P / workers⌉`), gives the
//! excess partitions up: their runners finish the batch in hand and subscribe again, behind the
//! others, and the next worker in line takes over. "Busy on" means "received a delivery lately"
//! — only the broker knows who is active, and this is the one sign of it a consumer gets.
//!
//! [`ConsumerGroup`] builds the runners and the balancer for one consumer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument};

use crate::amqp::{close_connection, connect};
use crate::consumer::{ConsumerRunner, ConsumerSettings, Handler};
use crate::error::MessagingError;
use crate::topology::Topology;

/// One partition of a consumer's work, as this worker sees it.
#[derive(Debug)]
pub struct Partition {
    index: u16,
    /// Milliseconds since `epoch` at its last delivery (0: none since it was last given up).
    last_delivery: AtomicU64,
    epoch: Instant,
    give_up: Notify,
}

impl Partition {
    fn new(index: u16) -> Self {
        Self {
            index,
            last_delivery: AtomicU64::new(0),
            epoch: Instant::now(),
            give_up: Notify::new(),
        }
    }

    pub fn index(&self) -> u16 {
        self.index
    }

    /// Called by its runner for every delivery.
    pub(crate) fn delivered(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last_delivery.store(now.max(1), Ordering::Relaxed);
    }

    /// Whether it had a delivery within `window`: this worker is its active consumer.
    fn busy_within(&self, window: Duration) -> bool {
        let last = self.last_delivery.load(Ordering::Relaxed);
        last > 0 && self.epoch.elapsed().as_millis() as u64 <= last + window.as_millis() as u64
    }

    /// Asks its runner to let the next worker in line have it.
    pub fn give_up(&self) {
        self.last_delivery.store(0, Ordering::Relaxed);
        // A stored permit: a runner busy with a batch sees it as soon as it is done.
        self.give_up.notify_one();
    }

    pub(crate) async fn given_up(&self) {
        self.give_up.notified().await;
    }
}

/// The runners of one consumer in this worker — one, or one per partition — and, with
/// partitions, the balancer that shares them with the other workers.
#[derive(Debug)]
pub struct ConsumerGroup<H> {
    pub runners: Vec<ConsumerRunner<H>>,
    pub balancer: Option<Balancer>,
}

impl<H: Handler> ConsumerGroup<H> {
    /// The runners of consumer `settings.name`, each with the handler `handler(partition)`
    /// makes (partition 0 without partitions).
    pub fn new(
        topology: &Topology,
        settings: ConsumerSettings,
        mut handler: impl FnMut(u16) -> H,
    ) -> Self {
        let mut runner =
            |index| ConsumerRunner::new(topology.clone(), settings.clone(), handler(index));
        if topology.partitions() <= 1 {
            return Self {
                runners: vec![runner(0)],
                balancer: None,
            };
        }
        let partitions: Vec<Arc<Partition>> = (0..topology.partitions())
            .map(|index| Arc::new(Partition::new(index)))
            .collect();
        Self {
            runners: partitions
                .iter()
                .map(|partition| runner(partition.index()).for_partition(partition.clone()))
                .collect(),
            balancer: Some(Balancer {
                topology: topology.clone(),
                consumer: settings.name.clone(),
                amqp_url: settings.amqp_url.clone(),
                partitions,
                interval: Duration::from_secs(1),
            }),
        }
    }
}

/// Keeps this worker to its share of a consumer's partitions (see the module docs).
#[derive(Debug)]
pub struct Balancer {
    topology: Topology,
    consumer: String,
    amqp_url: String,
    partitions: Vec<Arc<Partition>>,
    /// Between two looks; a partition is busy if it had a delivery within two of them.
    interval: Duration,
}

impl Balancer {
    /// Runs until `shutdown` is cancelled. A failure (the broker away) skips a look.
    #[instrument(name = "balancer", skip_all, fields(consumer = %self.consumer))]
    pub async fn run(self, shutdown: CancellationToken) {
        let mut connection: Option<Connection> = None;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while shutdown.run_until_cancelled(tick.tick()).await.is_some() {
            if let Err(error) = self.balance(&mut connection).await {
                debug!(%error, "balancing skipped");
                if let Some(lost) = connection.take() {
                    close_connection(&lost, "balancer reconnecting").await;
                }
            }
        }
        if let Some(connection) = connection {
            close_connection(&connection, "balancer stopping").await;
        }
    }

    async fn balance(&self, connection: &mut Option<Connection>) -> Result<(), MessagingError> {
        let connection = match connection {
            Some(connection) if connection.status().connected() => connection,
            slot => slot.insert(
                connect(
                    &self.amqp_url,
                    &format!("tillstream balancer {}", self.consumer),
                )
                .await?,
            ),
        };
        let workers = self.workers(connection).await?;
        let share = self.partitions.len().div_ceil(workers.max(1));
        let busy: Vec<&Arc<Partition>> = self
            .partitions
            .iter()
            .filter(|p| p.busy_within(self.interval * 2))
            .collect();
        if busy.len() <= share {
            return Ok(());
        }
        let excess = &busy[share..];
        info!(
            workers,
            share,
            busy = busy.len(),
            giving_up = ?excess.iter().map(|p| p.index()).collect::<Vec<_>>(),
            "busy on more than this worker's share of the partitions"
        );
        for partition in excess {
            partition.give_up();
        }
        Ok(())
    }

    /// How many workers share the partitions: every worker consumes every partition, so the
    /// consumers of the first one.
    async fn workers(&self, connection: &Connection) -> Result<usize, MessagingError> {
        let channel = connection.create_channel().await?;
        let queue = channel
            .queue_declare(
                &self.topology.partition_queue(&self.consumer, 0),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "counted").await;
        Ok(queue.consumer_count() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_busy_only_after_a_recent_delivery() {
        let partition = Partition::new(3);
        assert!(!partition.busy_within(Duration::from_secs(2)));
        partition.delivered();
        assert!(partition.busy_within(Duration::from_secs(2)));
        partition.give_up();
        assert!(!partition.busy_within(Duration::from_secs(2)));
    }
}
