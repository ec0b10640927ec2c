//! A local OTLP/HTTP trace receiver: `POST /v1/traces` with the protobuf body an OpenTelemetry
//! exporter sends (decoded with `opentelemetry-proto`), keeping every span. The end-to-end
//! trace test reads what the services exported from it (`testkit` re-exports it), and `till
//! bench write --tracing` exports to it to measure what exporting costs.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use prost::Message;
use tokio::net::TcpListener;

/// One received span, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub name: String,
    /// Hex, as in a `traceparent`.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root.
    pub parent_span_id: String,
    /// `(trace id, span id)` of each link.
    pub links: Vec<(String, String)>,
    /// Attributes with string, integer and boolean values, as text.
    pub attributes: BTreeMap<String, String>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A running receiver; stops when dropped. Requests are checked (protobuf, decodable) as they
/// come, but flattened only when asked for, so a benchmark's receiver costs little while the
/// load runs.
#[derive(Debug)]
pub struct OtlpReceiver {
    /// The base URL to give as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    requests: Received,
    task: tokio::task::JoinHandle<()>,
}

type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    /// Listens on a free local port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let requests = Received::default();
        let router = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(requests.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self {
            endpoint,
            requests,
            task,
        })
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let requests = self.requests.lock().map(|r| r.clone()).unwrap_or_default();
        requests.into_iter().flat_map(flatten).collect()
    }

    /// How many spans arrived.
    pub fn count(&self) -> usize {
        let requests = self.requests.lock();
        requests.map_or(0, |r| {
            r.iter()
                .flat_map(|r| &r.resource_spans)
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum()
        })
    }

    /// The spans of trace `trace_id`, and the traces linked to it (a batch handled for several
    /// traces at once starts its own, linked to each).
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let spans = self.spans();
        let linked: std::collections::HashSet<String> = spans
            .iter()
            .filter(|s| s.links.iter().any(|(t, _)| t == trace_id))
            .map(|s| s.trace_id.clone())
            .collect();
        spans
            .into_iter()
            .filter(|s| s.trace_id == trace_id || linked.contains(&s.trace_id))
            .collect()
    }
}

async fn receive(
    State(requests): State<Received>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/x-protobuf"));
    let request = match protobuf
        .then(|| ExportTraceServiceRequest::decode(body))
        .transpose()
    {
        Ok(Some(request)) => request,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "text/plain")],
                b"expected an OTLP ExportTraceServiceRequest in protobuf".to_vec(),
            );
        }
    };
    if let Ok(mut requests) = requests.lock() {
        requests.push(request);
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource: HashMap<String, String> = resource_spans
            .resource
            .map(|r| r.attributes.iter().filter_map(text_pair).collect())
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                    attributes: span.attributes.iter().filter_map(text_pair).collect(),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                });
            }
        }
    }
    out
}

fn text_pair(kv: &KeyValue) -> Option<(String, String)> {
    let value = match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        _ => return None,
    };
    Some((kv.key.clone(), value))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The spans of one trace as an indented tree (children under parents; linked spans under
/// the span they link to, marked `~>`), one line per span: `service: name`.
pub fn render_tree(spans: &[ReceivedSpan]) -> String {
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let parent_of = |s: &ReceivedSpan| -> Option<(String, bool)> {
        if ids.contains(s.parent_span_id.as_str()) {
            return Some((s.parent_span_id.clone(), false));
        }
        s.links
            .iter()
            .find(|(_, span)| ids.contains(span.as_str()))
            .map(|(_, span)| (span.clone(), true))
    };
    let mut children: HashMap<String, Vec<(&ReceivedSpan, bool)>> = HashMap::new();
    let mut roots = Vec::new();
    for span in spans {
        match parent_of(span) {
            Some((parent, linked)) => children.entry(parent).or_default().push((span, linked)),
            None => roots.push(span),
        }
    }
    for list in children.values_mut() {
        list.sort_by_key(|(s, _)| s.start_unix_nanos);
    }
    roots.sort_by_key(|s| s.start_unix_nanos);
    let mut out = String::new();
    fn walk(
        out: &mut String,
        span: &ReceivedSpan,
        linked: bool,
        depth: usize,
        children: &HashMap<String, Vec<(&ReceivedSpan, bool)>>,
    ) {
        let micros = span.end_unix_nanos.saturating_sub(span.start_unix_nanos) / 1000;
        let _ = writeln!(
            out,
            "{}{}{}: {} ({micros} µs)",
            "  ".repeat(depth),
            if linked { "~> " } else { "" },
            span.service,
            span.name
        );
        for (child, linked) in children.get(&span.span_id).into_iter().flatten() {
            walk(out, child, *linked, depth + 1, children);
        }
    }
    for root in roots {
        walk(&mut out, root, false, 0, &children);
    }
    out
}
