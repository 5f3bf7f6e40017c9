//! A user's own task end to end: a three-class TSV with string labels that is not GLUE, a
//! teacher fine-tuned on it, a recipe whose `[data]` describes the files and adds unlabeled
//! text, the student reloaded by `kd eval` and `kd predict` with the same flags, its labels
//! round-tripping; unlabeled examples never reach the hard-label loss.

mod common;

use arrow_array::cast::AsArray;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Plain text, several sentences a line, one line far longer than the maximum length.
fn unlabeled_text() -> String {
    let mut text = String::new();
    for i in 0..40 {
        let (_, words) = common::TOPICS[i % 3];
        text += &format!(
            "The {} came early. Everyone spoke of {} and {}.\n",
            words[i % 6],
            words[(i + 2) % 6],
            words[(i + 4) % 6]
        );
    }
    text += &"rain and snow and wind ".repeat(30);
    text + "\n"
}

/// Writes a recipe `name.toml` in `dir`: a DistilBERT-style student of `teacher`.
fn recipe(dir: &Path, name: &str, teacher: &Path, data: &str, stage: &str) -> PathBuf {
    recipe_with_batch(dir, name, teacher, data, stage, 16)
}

fn recipe_with_batch(
    dir: &Path,
    name: &str,
    teacher: &Path,
    data: &str,
    stage: &str,
    batch_size: usize,
) -> PathBuf {
    let text = format!(
        "name = \"{name}\"\n[teacher]\nmodel = \"{}\"\n[student]\nkind = \"distilbert\"\n\
         [data]\n{data}\n[training]\nlr = 1e-4\nbatch_size = {batch_size}\nseed = 7\n{stage}\n",
        teacher.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_string_labelled_tsv_task_distils_with_unlabeled_text_and_round_trips() {
    let root = tempfile::tempdir().unwrap();
    let (data, flags) = common::topic_task(root.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let corpus = root.path().join("corpus.txt");
    std::fs::write(&corpus, unlabeled_text()).unwrap();

    let teacher = root.path().join("teacher");
    let mut args = vec!["finetune", "--model", common::MINILM, "--out"];
    args.push(teacher.to_str().unwrap());
    args.extend(["--epochs", "3", "--lr", "1e-4", "--batch-size", "16"]);
    args.extend(&flags);
    let report: Value = serde_json::from_str(common::kd_ok(&args).trim()).unwrap();
    assert!(report["value"].as_f64().unwrap() > 0.9, "{report}");

    // The recipe's [data] says what the flags said, plus unlabeled text for the teacher.
    let data_block = format!(
        "task = \"topics\"\ndata_dir = \"{}\"\ntext_column = \"text\"\nlabel_column = \"topic\"\n\
         max_seq_len = 32\nunlabeled = [\"{}\"]",
        data.display(),
        corpus.display()
    );
    let stage = "[[stages]]\nname = \"distill\"\nepochs = 2\n[stages.objective]\ncomponents = \
                 [{ kind = \"soft_ce\", weight = 5.0 }, { kind = \"hard\", weight = 2.0 }]";
    let student = root.path().join("student");
    let cache = root.path().join("cache");
    let summary = common::distill_recipe(
        &recipe(root.path(), "topics", &teacher, &data_block, stage),
        &student,
        &cache,
    );
    assert_eq!(summary["task"], "topics");
    assert_eq!(summary["train_examples"], 240);
    // 40 lines of two sentences, and a 150-word line split into 5 pieces that fit 32 tokens.
    let unlabeled = summary["unlabeled_examples"].as_u64().unwrap();
    assert!((84..=90).contains(&unlabeled), "{unlabeled} unlabeled");
    assert_eq!(
        summary["stages"][0]["teacher_cache"],
        serde_json::json!(["computed"])
    );
    let accuracy = summary["student"]["dev"]["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.9, "student accuracy {accuracy}");

    // String labels round-trip: the student's config names the teacher's classes.
    let config = |dir: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
    };
    assert_eq!(config(&student)["id2label"], config(&teacher)["id2label"]);
    assert_eq!(
        config(&teacher)["id2label"],
        serde_json::json!({"0": "food", "1": "sport", "2": "weather"})
    );

    // `kd eval` with the same flags reproduces the accuracy; `kd predict` reads the TSV.
    let mut args = vec!["eval", "--model", student.to_str().unwrap()];
    args.extend(&flags);
    let eval: Value = serde_json::from_str(common::kd_ok(&args).trim()).unwrap();
    assert_eq!(eval["examples"], 60);
    assert_eq!(eval["metrics"]["accuracy"].as_f64().unwrap(), accuracy);
    let dev = data.join("dev.tsv");
    let predictions = common::kd_ok(&[
        "predict",
        "--model",
        student.to_str().unwrap(),
        "--input",
        dev.to_str().unwrap(),
        "--text-column",
        "text",
    ]);
    let gold: Vec<String> = std::fs::read_to_string(&dev)
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| line.rsplit('\t').next().unwrap().to_string())
        .collect();
    let predicted: Vec<Value> = predictions
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(predicted.len(), 60);
    let right = predicted
        .iter()
        .zip(&gold)
        .filter(|(p, g)| p["label"] == g.as_str())
        .count();
    assert_eq!(right as f64 / 60.0, accuracy);

    // A label the teacher does not know is an error naming the file, line and label.
    let bad = root.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("train.tsv"), common::topic_tsv(30, 0)).unwrap();
    std::fs::write(
        bad.join("dev.tsv"),
        common::topic_tsv(3, 0) + "9\tthe news at nine\tnews\n",
    )
    .unwrap();
    let bad_block = data_block.replace(data.to_str().unwrap(), bad.to_str().unwrap());
    let error = common::kd_err(&[
        "distill",
        "--recipe",
        recipe(root.path(), "bad", &teacher, &bad_block, stage)
            .to_str()
            .unwrap(),
        "--out",
        root.path().join("never").to_str().unwrap(),
    ]);
    assert!(
        error.contains("dev.tsv:5") && error.contains("unknown label \"news\""),
        "{error}"
    );

    // Unlabeled examples are masked out of the hard loss: with 8 labelled examples among the
    // 85 unlabeled ones in batches of 4, the batches of unlabeled text alone (at least 16 of
    // the 24) log a hard loss of exactly zero.
    let few = format!("{data_block}\nmax_train_examples = 8");
    let masked = root.path().join("masked");
    let stage_one_epoch = stage.replace("epochs = 2", "epochs = 1");
    let few_recipe = recipe_with_batch(root.path(), "few", &teacher, &few, &stage_one_epoch, 4);
    common::distill_recipe(&few_recipe, &masked, &cache);
    let hard = common::logged(&masked.join("1-distill/log.jsonl"), "hard");
    let zero = hard.iter().filter(|&&h| h == 0.0).count();
    assert_eq!(hard.len(), 24);
    assert!((16..24).contains(&zero), "hard losses {hard:?}");

    // A labels-only stage trains on the labelled examples alone: 240 / 16 = 15 steps.
    let hard_only = "[[stages]]\nname = \"labels\"\nepochs = 1\n[stages.objective]\ncomponents = \
                     [{ kind = \"hard\" }]";
    let summary = common::distill_recipe(
        &recipe(root.path(), "labels", &teacher, &data_block, hard_only),
        &root.path().join("labels-only"),
        &cache,
    );
    assert_eq!(summary["stages"][0]["steps"], 15);
    assert_eq!(summary["stages"][0]["teacher_cache"], serde_json::json!([]));
}

/// The fixtures of `tests/fixtures/make_table_fixtures.py`.
fn table_fixture(name: &str) -> PathBuf {
    common::workspace_root()
        .join("tests/fixtures/tables")
        .join(name)
}

/// The files users have: a model fine-tuned on HF `datasets`' Parquet layout (a ClassLabel
/// column, read as its ids); the same task read from TSV, CSV (pandas), JSON Lines (pandas) and
/// Parquet (pyarrow) gives the same examples and metrics; `kd predict` writes Parquet that
/// pyarrow reads with the JSON Lines' predictions; bad files are refused naming the file and
/// the line (or row), with no output written.
#[test]
fn csv_json_lines_and_parquet_read_as_their_tsv() {
    let root = tempfile::tempdir().unwrap();
    let tiny = root.path().join("tiny");
    common::write_tiny_model(&tiny);
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let tiny_dir = path(&tiny);

    // HF datasets' layout: string and ClassLabel columns, splits named train and validation.
    let sentiment = root.path().join("sentiment");
    let args = [
        "finetune",
        "--model",
        &tiny_dir,
        "--out",
        &path(&sentiment),
        "--epochs",
        "1",
        "--task",
        "sentiment",
        "--train",
        &path(&table_fixture("hf/train.parquet")),
        "--dev",
        &path(&table_fixture("hf/validation.parquet")),
        "--text-column",
        "sentence",
        "--label-column",
        "label",
    ];
    let report: Value = serde_json::from_str(common::kd_ok(&args).trim()).unwrap();
    assert!(report["value"].is_number(), "{report}");
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(sentiment.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["id2label"],
        serde_json::json!({ "0": "0", "1": "1" })
    );

    // One task, four files: the same examples (the model trained on one, evaluated on each).
    let topics = root.path().join("topics");
    let columns = ["--text-column", "text", "--label-column", "topic"];
    let train = path(&table_fixture("topics.parquet"));
    let dev = path(&table_fixture("topics.csv"));
    let topics_dir = path(&topics);
    let args = [
        &["finetune", "--model", &tiny_dir, "--out", &topics_dir][..],
        &["--epochs", "2", "--lr", "1e-3", "--task", "topics"],
        &["--train", &train, "--dev", &dev],
        &columns,
    ]
    .concat();
    common::kd_ok(&args);
    let eval = |file: &str| -> Value {
        let dev = path(&table_fixture(file));
        let args = [
            &[
                "eval",
                "--model",
                &topics_dir,
                "--task",
                "topics",
                "--dev",
                &dev,
            ][..],
            &columns,
        ]
        .concat();
        let mut report: Value = serde_json::from_str(common::kd_ok(&args).trim()).unwrap();
        report.as_object_mut().unwrap().remove("data");
        report
    };
    let tsv = eval("topics.tsv");
    assert_eq!(tsv["examples"], 30, "{tsv}");
    for file in ["topics.csv", "topics.jsonl", "topics.parquet"] {
        assert_eq!(eval(file), tsv, "{file}");
    }

    // Predictions as Parquet: pyarrow reads the JSON Lines' labels and probabilities.
    let predict = |input: &str, output: &Path| {
        let output = path(output);
        let args = [
            &["predict", "--model", &topics_dir, "--input", input][..],
            &["--output", &output, "--text-column", "text"],
        ]
        .concat();
        common::kd_ok(&args);
    };
    let (jsonl, parquet) = (root.path().join("p.jsonl"), root.path().join("p.parquet"));
    let input = path(&table_fixture("topics.jsonl"));
    predict(&input, &jsonl);
    predict(&input, &parquet);
    let expected: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(expected.len(), 30);
    assert_eq!(expected[0]["text"], "rain, \"heavy\" rain");
    // The texts of every format, and so their probabilities, are the JSON Lines' (line
    // numbers aside: TSV and CSV count the header).
    let without_lines = |predictions: &[Value]| -> Vec<Value> {
        let strip = |p: &Value| {
            let mut p = p.clone();
            p.as_object_mut().unwrap().remove("line");
            p
        };
        predictions.iter().map(strip).collect()
    };
    for file in ["topics.tsv", "topics.csv", "topics.parquet"] {
        let out = root.path().join(format!("{file}.jsonl"));
        predict(&path(&table_fixture(file)), &out);
        let theirs: Vec<Value> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(without_lines(&theirs), without_lines(&expected), "{file}");
    }
    let file = std::fs::File::open(&parquet).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut rows = 0;
    for batch in reader {
        let batch = batch.unwrap();
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let (lines, texts, labels) = (column("line"), column("text"), column("label"));
        let lines = lines.as_primitive::<arrow_array::types::UInt64Type>();
        let (texts, labels) = (texts.as_string::<i32>(), labels.as_string::<i32>());
        let probabilities = column("probabilities");
        let probabilities = probabilities.as_struct();
        for i in 0..batch.num_rows() {
            let want = &expected[rows];
            assert_eq!(lines.value(i), want["line"].as_u64().unwrap());
            assert_eq!(texts.value(i), want["text"].as_str().unwrap());
            assert_eq!(labels.value(i), want["label"].as_str().unwrap());
            for (label, p) in want["probabilities"].as_object().unwrap() {
                let column = probabilities.column_by_name(label).unwrap();
                let ours = column
                    .as_primitive::<arrow_array::types::Float32Type>()
                    .value(i);
                assert!((ours as f64 - p.as_f64().unwrap()).abs() < 1e-6, "{label}");
            }
            rows += 1;
        }
    }
    assert_eq!(rows, 30);
    if let Some(python) = common::onnx_python("reading kd's Parquet with pyarrow") {
        let script = "import json, sys, pyarrow.parquet as pq\n\
                      t = pq.read_table(sys.argv[1]).to_pylist()\n\
                      print(json.dumps([[r['line'], r['label']] for r in t]))";
        let output = std::process::Command::new(python)
            .args(["-c", script, &path(&parquet)])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let theirs: Vec<(u64, String)> = serde_json::from_slice(&output.stdout).unwrap();
        let ours: Vec<(u64, String)> = expected
            .iter()
            .map(|p| {
                (
                    p["line"].as_u64().unwrap(),
                    p["label"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(theirs, ours);
    }

    // Bad files: the file and the line (or the column's type) named, nothing written.
    let refused = root.path().join("refused");
    let unknown = root.path().join("dev.xlsx");
    std::fs::write(&unknown, "text\ttopic\n").unwrap();
    for (file, message) in [
        (
            table_fixture("wrong-type.parquet"),
            "column \"topic\" holds List(Int64",
        ),
        (
            table_fixture("ragged.csv"),
            "ragged.csv:3: expected 2 comma-separated fields, found 1",
        ),
        (
            table_fixture("missing-key.jsonl"),
            "missing-key.jsonl:2: no value for key \"topic\"",
        ),
        (
            unknown,
            "dev.xlsx: unknown file type; kd reads .tsv, .csv, .jsonl, .parquet",
        ),
    ] {
        let (refused_dir, file_path) = (path(&refused), path(&file));
        let args = [
            &["finetune", "--model", &tiny_dir, "--out", &refused_dir][..],
            &["--task", "topics", "--train", &train, "--dev", &file_path],
            &columns,
        ]
        .concat();
        let error = common::kd_err(&args);
        assert!(error.contains(message), "{file:?}: {error}");
        assert!(!refused.exists(), "{file:?}");
    }
}
