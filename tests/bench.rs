//! `kd bench` runs each case in its own process and reports what it measured; the timings
//! themselves are for people to read, never asserted.

mod common;

#[test]
fn bench_reports_every_case_and_round_it_was_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let args = [
        "bench",
        "--shapes",
        "small",
        "--cases",
        "gemm,inference,train",
        "--seq-len",
        "8",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--rounds",
        "2",
        "--json",
        json.to_str().unwrap(),
    ];
    let table = common::kd_ok(&args);
    assert!(table.starts_with("CPU: "), "{table}");
    assert_eq!(
        table.lines().count(),
        8,
        "the CPU, a header and a row per case and round:\n{table}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let cases: Vec<(&str, u64)> = results
        .iter()
        .map(|r| {
            (
                r["kd"]["case"].as_str().unwrap(),
                r["round"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cases,
        [
            ("gemm", 1),
            ("gemm", 2),
            ("inference", 1),
            ("inference", 2),
            ("train", 1),
            ("train", 2)
        ]
    );
    for result in results {
        let kd = &result["kd"];
        assert_eq!(kd["times_ms"].as_array().unwrap().len(), 2);
        assert!(kd["min_ms"].as_f64().unwrap() > 0.0);
        assert!(kd["median_ms"].as_f64().unwrap() >= kd["min_ms"].as_f64().unwrap());
        assert!(kd["peak_rss_mb"].as_f64().unwrap() > 50.0);
        assert!(kd["gflop_per_s"].as_f64().unwrap() > 0.0);
        assert!(result["pytorch"].is_null());
    }
}

#[test]
fn latency_times_every_dev_sentence_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (tiny, model) = (dir.path().join("tiny"), dir.path().join("model"));
    common::write_tiny_model(&tiny);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let rows = "text\tlabel\na fine film\tgood\na dull one\tbad\nsee it\tgood\nskip it\tbad\n";
    for file in ["train.tsv", "dev.tsv"] {
        std::fs::write(data.join(file), rows).unwrap();
    }
    let data_flags = [
        "--task",
        "mine",
        "--data-dir",
        data.to_str().unwrap(),
        "--text-column",
        "text",
        "--label-column",
        "label",
    ];
    let mut finetune = vec![
        "finetune",
        "--model",
        tiny.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
        "--epochs",
        "1",
    ];
    finetune.extend(data_flags);
    common::kd_ok(&finetune);
    let json = dir.path().join("latency.json");
    let mut bench = vec![
        "bench",
        "--cases",
        "latency",
        "--model",
        model.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ];
    bench.extend(data_flags);
    let table = common::kd_ok(&bench);
    assert!(
        table
            .lines()
            .any(|line| line.ends_with("kd") || line.contains(" kd ")),
        "{table}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let [row] = &report["results"].as_array().unwrap()[..] else {
        panic!("one model, one runtime: {report}")
    };
    assert_eq!(row["runtime"], "kd");
    assert_eq!(row["sentences"], 4);
    assert!(row["mean_tokens"].as_f64().unwrap() > 3.0);
    let (p50, p95) = (
        row["p50_ms"].as_f64().unwrap(),
        row["p95_ms"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p95, "{row}");
}
