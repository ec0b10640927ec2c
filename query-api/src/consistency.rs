//! Read-your-writes. A command answers with `X-Consistency-Token: <stream>@<version>` (several
//! joined by `;`); a read that sends it back waits, bounded, until the view it serves holds each
//! of those streams at that version or later. Streams the view does not hold are ignored.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, header};
use platform::problem::Problem;

pub const HEADER: &str = "x-consistency-token";

/// One stream at a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaited {
    pub stream_type: String,
    pub id: uuid::Uuid,
    pub version: u64,
}

/// Parses the header; a malformed token is the client's mistake (400).
pub fn parse(headers: &HeaderMap) -> Result<Vec<Awaited>, Problem> {
    let Some(raw) = headers.get(HEADER) else {
        return Ok(Vec::new());
    };
    let bad = || {
        Problem::bad_request(
            "invalid-consistency-token",
            "X-Consistency-Token must be what a command answered, e.g. cart-<uuid>@3",
        )
    };
    let text = raw.to_str().map_err(|_| bad())?;
    text.split(';')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|token| {
            let (stream, version) = token.rsplit_once('@').ok_or_else(bad)?;
            let (stream_type, id) = stream.split_once('-').ok_or_else(bad)?;
            Ok(Awaited {
                stream_type: stream_type.to_owned(),
                id: uuid::Uuid::parse_str(id).map_err(|_| bad())?,
                version: version.parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

/// Waits until `current(awaited)` reports a version at or past each awaited one, polling until
/// `limit`. `current` returns the version the view holds (0 = not there yet).
pub async fn wait_for<F, Fut>(
    awaited: &[Awaited],
    stream_type: &str,
    limit: Duration,
    mut current: F,
) -> Result<(), Problem>
where
    F: FnMut(uuid::Uuid) -> Fut,
    Fut: Future<Output = Result<u64, Problem>>,
{
    let started = Instant::now();
    for wanted in awaited.iter().filter(|a| a.stream_type == stream_type) {
        let mut pause = Duration::from_millis(2);
        loop {
            if current(wanted.id).await? >= wanted.version {
                break;
            }
            if started.elapsed() >= limit {
                metrics::counter!("consistency_wait_timeouts_total").increment(1);
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "consistency-timeout",
                    "Not consistent yet",
                )
                .with_detail(format!(
                    "the read model has not caught up with {}-{}@{} within {} ms; retry",
                    wanted.stream_type,
                    wanted.id,
                    wanted.version,
                    limit.as_millis()
                ))
                .with_header(header::RETRY_AFTER, "1"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }
    metrics::histogram!("consistency_wait_seconds").record(started.elapsed().as_secs_f64());
    Ok(())
}

/// The serving schema of a Postgres projection, after waiting for the request's consistency
/// token on it: `table` holds one row per stream, keyed by `id_column`, with its `version`.
pub async fn serving_schema(
    state: &crate::AppState,
    headers: &HeaderMap,
    projection: &str,
    stream_type: &str,
    table: &str,
    id_column: &str,
) -> Result<String, Problem> {
    let awaited = parse(headers)?;
    let version = platform::read_models::serving_version(&state.pool, projection)
        .await
        .map_err(crate::db_problem)?;
    let schema = platform::read_models::schema(projection, version);
    let sql = format!("SELECT version FROM \"{schema}\".{table} WHERE {id_column} = $1");
    wait_for(&awaited, stream_type, state.consistency_wait, |id| {
        let (pool, sql) = (state.pool.clone(), sql.clone());
        async move {
            let version: Option<i64> = sqlx::query_scalar(&sql)
                .bind(id)
                .fetch_optional(&pool)
                .await
                .map_err(crate::db_problem)?;
            Ok(version.unwrap_or(0) as u64)
        }
    })
    .await?;
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_parse_and_garbage_is_refused() {
        let mut h = HeaderMap::new();
        assert!(parse(&h).unwrap().is_empty());
        let id = uuid::Uuid::new_v4();
        let other = uuid::Uuid::new_v4();
        h.insert(
            HEADER,
            HeaderValue::from_str(&format!("cart-{id}@3; order-{other}@1")).unwrap(),
        );
        let parsed = parse(&h).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            (
                parsed[0].stream_type.as_str(),
                parsed[0].id,
                parsed[0].version
            ),
            ("cart", id, 3)
        );
        for bad in ["cart", "cart-x@1", "cart-{id}@", "@3"] {
            h.insert(HEADER, HeaderValue::from_static(bad));
            assert_eq!(parse(&h).unwrap_err().status, 400, "{bad}");
        }
    }
}
