//! `kd bench` runs each case in its own process and reports what it measured; the timings
//! themselves are for people to read, never asserted.

mod common;

#[test]
fn bench_reports_every_case_it_was_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let args = [
        "bench",
        "--shapes",
        "small",
        "--cases",
        "inference,train",
        "--seq-len",
        "8",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--json",
        json.to_str().unwrap(),
    ];
    let table = common::kd_ok(&args);
    assert_eq!(
        table.lines().count(),
        3,
        "a header and a row per case:\n{table}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let cases: Vec<&str> = results
        .iter()
        .map(|r| r["kd"]["case"].as_str().unwrap())
        .collect();
    assert_eq!(cases, ["inference", "train"]);
    for result in results {
        let kd = &result["kd"];
        assert_eq!(kd["times_ms"].as_array().unwrap().len(), 2);
        assert!(kd["min_ms"].as_f64().unwrap() > 0.0);
        assert!(kd["median_ms"].as_f64().unwrap() >= kd["min_ms"].as_f64().unwrap());
        assert!(kd["peak_rss_mb"].as_f64().unwrap() > 50.0);
        assert!(result["pytorch"].is_null());
    }
}
