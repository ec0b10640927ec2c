//! Commands on one stream take turns within a command API process.
//!
//! Without turns, concurrent commands on one aggregate (a shopper's tabs adding items to one
//! cart, a stock sale on a hot product) all decide on the same version and all but one lose
//! the append's version check; each loser reads again and retries, so `n` racing commands
//! cost about `n²/2` attempts and, under load, the last ones run out of attempts and answer
//! 409. Taking turns makes them queue instead: each decides on the state its predecessor
//! left (the aggregate cache has it), so they append on the first attempt. Only writers
//! outside this process (other replicas, process managers) still race, and the driver's
//! retries handle those.
//!
//! Turns are striped: a stream hashes to one of a fixed set of async mutexes, so memory is
//! bounded whatever the number of streams, at the price that two streams sharing a stripe
//! (rare with [`STRIPES`] against the commands in flight) wait for one another.

use std::hash::BuildHasher;

use tokio::sync::{Mutex, MutexGuard};

/// How many streams can be written at once without sharing a turn.
pub const STRIPES: usize = 4096;

/// The striped turns of one process; see the module docs.
#[derive(Debug)]
pub struct StreamTurns {
    stripes: Box<[Mutex<()>]>,
    hasher: std::hash::RandomState,
}

impl Default for StreamTurns {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl StreamTurns {
    /// Waits for `stream_id`'s turn; it lasts as long as the guard. Tokio's mutex is fair, so
    /// commands on one stream go in the order they arrived.
    pub async fn take(&self, stream_id: &str) -> MutexGuard<'_, ()> {
        let stripe = self.hasher.hash_one(stream_id) as usize % self.stripes.len();
        self.stripes[stripe].lock().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_stream_takes_turns_while_other_streams_go_at_once() {
        let turns = Arc::new(StreamTurns::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most_inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (turns, inside, most_inside) = (turns.clone(), inside.clone(), most_inside.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = turns.take("cart-1").await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most_inside.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(most_inside.load(Ordering::SeqCst), 1);

        // Holding one stream's turn does not stop a stream on another stripe.
        let held = turns.take("cart-1").await;
        let held_stripe = turns.hasher.hash_one("cart-1") as usize % STRIPES;
        let other = (2..)
            .map(|i| format!("cart-{i}"))
            .find(|s| turns.hasher.hash_one(s.as_str()) as usize % STRIPES != held_stripe)
            .unwrap();
        let other_turn = tokio::time::timeout(Duration::from_secs(1), turns.take(&other)).await;
        assert!(other_turn.is_ok(), "another stream is not blocked");
        drop(held);
    }

    #[tokio::test]
    async fn a_command_dropped_while_it_waits_or_runs_leaves_the_turn_free() {
        // A client that goes away drops its request's future, waiting for a turn or holding one.
        let turns = StreamTurns::default();
        let held = turns.take("cart-1").await;
        let gave_up = tokio::time::timeout(Duration::from_millis(20), turns.take("cart-1")).await;
        assert!(gave_up.is_err(), "the turn is held");
        drop(held);
        let running = turns.take("cart-1").await;
        drop(running);
        let next = tokio::time::timeout(Duration::from_secs(1), turns.take("cart-1")).await;
        assert!(next.is_ok(), "the stream's turn came round again");
    }
}
