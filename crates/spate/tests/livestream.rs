//! The live-streaming scenario (`examples/livestream/run.sh`) end to end, as a user runs it: a
//! KafkaSource, a Broker with CEL triggers, two Python AI functions and a compiled one scaled on
//! their backlog, results written back to Kafka by a KafkaSink, and the report. Needs the Kafka
//! broker `.ci/run` starts and PyPI (the example installs its Python environment on first run).

mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn the_livestream_example_answers_every_comment_scales_out_and_reports() {
    let Some(kafka) = common::kafka_addr() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = tempfile::tempdir().unwrap();
    let status = Command::new("bash")
        .arg(root.join("examples/livestream/run.sh"))
        .args(["--seconds", "20", "--out"])
        .arg(out.path())
        .env("SPATE_BIN", env!("CARGO_BIN_EXE_spate"))
        .env("SPATE_KAFKA", &kafka)
        .status()
        .expect("running examples/livestream/run.sh");
    if !status.success() {
        let log = std::fs::read_to_string(out.path().join("spate.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "run.sh failed ({status}); the end of Spate's log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    let summary: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("summary.json")).expect("summary.json")).unwrap();
    let comments = summary["comments_in"].as_u64().expect("comments_in");
    assert!(comments > 0, "{summary:#}");
    assert_eq!(summary["results_out"].as_u64(), Some(2 * comments), "every comment moderated and scored: {summary:#}");
    assert_eq!(summary["highlights_out"], summary["big_gifts_in"], "{summary:#}");
    for svc in ["moderation", "sentiment"] {
        let n = summary["max_instances"][svc].as_u64().unwrap_or(0);
        assert!(n > 1, "{svc} scaled out on its backlog (max {n} instances): {summary:#}");
    }
    assert!(summary["seconds_back_to_zero"].is_number(), "every Service back to zero: {summary:#}");
    let png = std::fs::read(out.path().join("report.png")).expect("report.png");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR", "report.png is a PNG");
    let html = std::fs::read_to_string(out.path().join("report.html")).expect("report.html");
    assert!(html.contains("data:image/png;base64,") && html.contains("comments_in"), "report.html embeds the chart");
}
