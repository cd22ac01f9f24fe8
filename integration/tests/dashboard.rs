//! `grafana/kinesis-consumer.json` asks only for metrics the consumer exports (no server needed).

use kinesis_consumer::metrics::names;

#[test]
fn the_grafana_dashboard_queries_only_metrics_the_consumer_exports() {
    let exported = [
        names::RECORDS,
        names::CHECKPOINTS,
        names::MILLIS_BEHIND_LATEST,
        names::RETRIES,
        names::DEAGGREGATION_ERRORS,
        names::CHECKPOINTS_PAST_RETENTION,
        names::SHARDS_GONE,
        names::HANDLER_ERRORS,
        names::SKIPPED,
        names::DEAD_LETTERED,
        names::HANDLER_STALLS,
        names::LEASES_HELD,
        names::LEASES_TAKEN,
        names::LEASES_LOST,
        names::WORKERS,
    ];
    let text = include_str!("../../grafana/kinesis-consumer.json");
    let dashboard: serde_json::Value = serde_json::from_str(text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert_eq!(panels.len(), 6, "records/s, lag, retries, leases, checkpoint age, failures");
    let mut queried = Vec::new();
    for panel in panels {
        assert!(panel["description"].as_str().is_some_and(|d| !d.is_empty()), "{} has a description", panel["title"]);
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            // Every identifier that starts with the prefix is a metric name.
            let mut rest = expr;
            while let Some(at) = rest.find("kinesis_consumer_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                queried.push(name);
            }
        }
    }
    for name in &queried {
        assert!(exported.contains(&name.as_str()), "the dashboard queries {name}, which the consumer does not export");
    }
    for wanted in [names::RECORDS, names::MILLIS_BEHIND_LATEST, names::RETRIES, names::LEASES_HELD, names::CHECKPOINTS]
    {
        assert!(queried.iter().any(|q| q == wanted), "the dashboard shows {wanted}");
    }
}
