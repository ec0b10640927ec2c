//! `till dead-letters list | redrive | drop <consumer>`: the messages a consumer gave up on.

use anyhow::Context;
use clap::Subcommand;
use till::settings::SystemConfig;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show up to `limit` dead letters without removing them.
    List {
        consumer: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Send every dead letter back to the consumer's queue.
    Redrive { consumer: String },
    /// Delete every dead letter.
    Drop { consumer: String },
}

pub async fn run(command: Command, config: &SystemConfig) -> anyhow::Result<()> {
    let url = &config.amqp_url;
    let connection = messaging::connect(url, "till dead-letters")
        .await
        .with_context(|| {
            format!(
                "RabbitMQ is not reachable at {}",
                platform::settings::redact(url)
            )
        })?;
    let topology = config.topology.clone();
    let known = |consumer: &str| -> anyhow::Result<()> {
        let names: Vec<&str> = till::services::consumers()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        anyhow::ensure!(
            names.contains(&consumer),
            "no consumer named {consumer}; known: {}",
            names.join(", ")
        );
        Ok(())
    };
    match command {
        Command::List { consumer, limit } => {
            known(&consumer)?;
            let letters =
                messaging::dead_letters::list(&connection, &topology, &consumer, limit).await?;
            println!("{} dead letter(s) of {consumer}", letters.len());
            for letter in letters {
                println!("{letter:?}");
            }
        }
        Command::Redrive { consumer } => {
            known(&consumer)?;
            let n = messaging::dead_letters::redrive(&connection, &topology, &consumer).await?;
            println!("redrove {n} dead letter(s) to {consumer}");
        }
        Command::Drop { consumer } => {
            known(&consumer)?;
            let n = messaging::dead_letters::drop_all(&connection, &topology, &consumer).await?;
            println!("dropped {n} dead letter(s) of {consumer}");
        }
    }
    let _ = connection.close(200, "done").await;
    Ok(())
}
