# Generates the Grafana dashboards in deploy/grafana/dashboards (run it after editing a panel
# here; the JSON is committed). Every metric a panel names must be exported by the running
# system: till/tests/observability.rs checks.
import json
PROM={"type":"prometheus","uid":"prometheus"}
def panel(i, title, exprs, unit="short", kind="timeseries", w=12, h=8, desc=""):
    x=(i%2)*12 if w==12 else 0
    y=(i//2)*8 if w==12 else i*8
    return {
        "id": i+1, "type": kind, "title": title, "description": desc, "datasource": PROM,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(65+n), "datasource": PROM, "expr": e, "legendFormat": l, "exemplar": True}
                    for n,(e,l) in enumerate(exprs)],
    }
def dashboard(uid, title, desc, panels):
    return {
        "uid": uid, "title": title, "description": desc, "tags": ["tillstream"],
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"}, "timezone": "browser",
        "templating": {"list": []}, "annotations": {"list": []},
        "panels": [panel(i, *p) for i,p in enumerate(panels)],
    }
overview = dashboard("tillstream-overview", "Tillstream — overview",
  "Requests, errors and latency per service and route (RED), appends, conflicts and replays.", [
  ("Requests per second by route", [('sum by (service, route) (rate(http_requests_total[1m]))', "{{service}} {{route}}")], "reqps"),
  ("Server errors (5xx) ratio", [('sum by (service) (rate(http_requests_total{status=~"5.."}[5m])) / sum by (service) (rate(http_requests_total[5m]))', "{{service}}")], "percentunit"),
  ("Latency p99 by route", [('histogram_quantile(0.99, sum by (le, service, route) (rate(http_request_duration_seconds_bucket[5m])))', "{{service}} {{route}}")], "s"),
  ("Answers by status", [('sum by (status) (rate(http_requests_total[1m]))', "{{status}}")], "reqps"),
  ("Events appended per second by type", [('sum by (type) (rate(events_appended_total[1m]))', "{{type}}")], "ops"),
  ("Version conflicts (retried) and given up", [
      ('sum by (stream_type) (rate(command_conflicts_total[5m]))', "retried {{stream_type}}"),
      ('sum(rate(command_conflicts_exhausted_total[5m]))', "gave up")], "ops"),
  ("Idempotent replays and rate limiting", [
      ('sum(rate(idempotent_replays_total[5m]))', "replayed"),
      ('sum by (scope) (rate(gateway_rate_limited_total[5m]))', "rate limited ({{scope}})")], "ops"),
  ("Dependency outages answered 503", [('sum by (job, instance) (rate(http_dependency_unavailable_total[5m]))', "{{instance}}")], "ops"),
  ("Postgres pool connections", [('sum by (pool, state) (db_pool_connections)', "{{pool}} {{state}}")], "short"),
  ("Read-your-writes waits p99", [('histogram_quantile(0.99, sum by (le) (rate(consistency_wait_seconds_bucket[5m])))', "p99")], "s"),
])
pipeline = dashboard("tillstream-pipeline", "Tillstream — pipeline",
  "From the event store to the read models: the relay, the consumers, projection lag and freshness, dead letters.", [
  ("Relay: events behind the log", [('max(relay_lag_events)', "events not yet published")], "short"),
  ("Relay: published per second", [('sum(rate(relay_events_published_total[1m]))', "published")], "ops"),
  ("Relay: active instances", [('sum(relay_active)', "active")], "short"),
  ("Consumers: messages per second", [('sum by (consumer, outcome) (rate(consumer_messages_total[1m]))', "{{consumer}} {{outcome}}")], "ops"),
  ("Consumers: redeliveries", [('sum by (consumer) (rate(consumer_redeliveries_total[5m]))', "{{consumer}}")], "ops"),
  ("Dead letters (last hour)", [('sum by (consumer) (increase(consumer_messages_total{outcome="dead_lettered"}[1h]))', "{{consumer}}")], "short"),
  ("Projection lag (events)", [('max by (projection) (projection_lag_events)', "{{projection}}")], "short"),
  ("Projection lag (seconds)", [('max by (projection) (projection_lag_seconds)', "{{projection}}")], "s"),
  ("Freshness: append → visible, p50 and p99", [
      ('histogram_quantile(0.5, sum by (le, projection) (rate(projection_freshness_seconds_bucket[5m])))', "p50 {{projection}}"),
      ('histogram_quantile(0.99, sum by (le, projection) (rate(projection_freshness_seconds_bucket[5m])))', "p99 {{projection}}")], "s"),
  ("Gaps filled from the store", [('sum(rate(projection_gaps_filled_total[5m]))', "gaps filled")], "ops"),
  ("Rebuild progress (events per second)", [('sum by (projection) (rate(projection_rebuild_events_total[1m]))', "{{projection}}")], "ops"),
  ("Read models healed after Redis lost them", [
      ('sum by (projection) (increase(read_model_heals_total[1h]))', "healed {{projection}}"),
      ('sum(increase(cart_read_repairs_total[1h]))', "carts repaired on read")], "short"),
])
orders = dashboard("tillstream-orders", "Tillstream — order process",
  "Orders through their life, payment outcomes, expiries and the deadline worker.", [
  ("Orders by status change (per minute)", [('60 * sum by (type) (rate(events_appended_total{type=~"OrderPlaced|OrderPaid|OrderShipped|OrderDelivered|OrderCancelled|OrderExpired|OrderRefunded"}[5m]))', "{{type}}")], "short"),
  ("Payment outcomes (per minute)", [('60 * sum by (type) (rate(events_appended_total{type=~"PaymentCaptured|PaymentDeclined|PaymentRefunded|OrderPaymentDeclined"}[5m]))', "{{type}}")], "short"),
  ("Orders expired (last hour)", [('sum(increase(events_appended_total{type="OrderExpired"}[1h]))', "expired")], "short"),
  ("Payment deadlines overdue", [('max(order_deadlines_overdue)', "overdue")], "short"),
  ("Payment provider webhooks", [
      ('sum by (outcome) (rate(payment_webhooks_total[5m]))', "{{outcome}}"),
      ('sum(rate(payment_webhooks_refused_total[5m]))', "refused")], "ops"),
  ("Payments settled by reconciliation", [('sum(increase(payments_reconciled_total[1h]))', "reconciled")], "short"),
  ("Order process: messages per second", [('sum by (outcome) (rate(consumer_messages_total{consumer="process.orders"}[1m]))', "{{outcome}}")], "ops"),
  ("Order process: freshness of the orders view p99", [('histogram_quantile(0.99, sum by (le) (rate(projection_freshness_seconds_bucket{projection="orders"}[5m])))', "p99")], "s"),
])
for name, d in [("overview", overview), ("pipeline", pipeline), ("orders", orders)]:
    with open(f"deploy/grafana/dashboards/{name}.json","w") as f:
        json.dump(d, f, indent=2); f.write("\n")
print("ok")
