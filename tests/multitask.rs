//! MT-DNN's multi-task student: one encoder with a head per task (a user's three-class TSV and
//! STS-B's regression), trained on batches from both tasks against each task's own teacher;
//! per-task metrics and their mean; each task's export answers as the whole model does.

mod common;

use candle_core::Device;

use kd_teacher::{ModelFiles, MultiTaskModel, TaskModel};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

const TOPIC_FLAGS: [&str; 6] = [
    "--task",
    "topics",
    "--text-column",
    "text",
    "--label-column",
    "topic",
];

/// Fine-tunes the tiny encoder at `tiny` into `out` on the data `flags` describe.
fn tiny_teacher(tiny: &Path, out: &Path, flags: &[&str]) {
    let mut args = vec!["finetune", "--model", tiny.to_str().unwrap()];
    args.extend([
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "1",
        "--lr",
        "1e-3",
    ]);
    args.extend(["--batch-size", "16", "--max-seq-len", "32"]);
    args.extend(flags);
    common::kd_ok(&args);
}

#[test]
fn a_two_task_student_trains_on_both_tasks_and_each_export_answers_as_the_whole() {
    let root = tempfile::tempdir().unwrap();
    let tiny = root.path().join("tiny");
    common::write_tiny_model(&tiny);
    let topics = root.path().join("topics");
    std::fs::create_dir_all(&topics).unwrap();
    std::fs::write(topics.join("train.tsv"), common::topic_tsv(240, 0)).unwrap();
    std::fs::write(topics.join("dev.tsv"), common::topic_tsv(60, 1000)).unwrap();
    let topic_flags = [&TOPIC_FLAGS[..], &["--data-dir", topics.to_str().unwrap()]].concat();
    let topic_teacher = root.path().join("teacher-topics");
    tiny_teacher(&tiny, &topic_teacher, &topic_flags);
    let stsb_teacher = root.path().join("teacher-stsb");
    let stsb_flags = ["--task", "STS-B", "--max-train-examples", "160"];
    tiny_teacher(&tiny, &stsb_teacher, &stsb_flags);

    let tasks = format!(
        "[[tasks]]\n[tasks.teacher]\nmodel = \"{}\"\n[tasks.data]\ntask = \"topics\"\n\
         data_dir = \"{}\"\ntext_column = \"text\"\nlabel_column = \"topic\"\nmax_seq_len = 32\n\
         [[tasks]]\n[tasks.teacher]\nmodel = \"{}\"\n[tasks.data]\ntask = \"STS-B\"\n\
         max_seq_len = 32\nmax_train_examples = 160\n",
        topic_teacher.display(),
        topics.display(),
        stsb_teacher.display()
    );
    let rest = "[training]\nlr = 1e-3\nbatch_size = 16\nseed = 3\neval_every = 10\n\
                [[stages]]\nname = \"distill\"\nepochs = 1\n[stages.objective]\n\
                temperature = 2.0\ncomponents = [{ kind = \"soft_ce\", weight = 1.0 }, \
                { kind = \"hard\", weight = 1.0 }]\n";
    let recipe = root.path().join("two-tasks.toml");
    let student = "[student]\nkind = \"distilbert\"\n";
    std::fs::write(
        &recipe,
        format!("name = \"two-tasks\"\n{student}{tasks}{rest}"),
    )
    .unwrap();
    let out = root.path().join("student");
    let cache = root.path().join("cache");
    let summary = common::distill_recipe(&recipe, &out, &cache);

    // Each task's metrics, their mean, each teacher's logits cached.
    let tasks = summary["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["topics", "STS-B"]);
    let firsts: Vec<f64> = tasks
        .iter()
        .map(|t| {
            t["student_dev"][t["metric"].as_str().unwrap()]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(tasks[0]["metric"], "accuracy");
    let mean = summary["student_mean"].as_f64().unwrap();
    assert!(
        (mean - (firsts[0] + firsts[1]) / 2.0).abs() < 1e-9,
        "{summary}"
    );
    assert_eq!(
        summary["stages"][0]["teacher_cache"],
        serde_json::json!(["topics: computed", "STS-B: computed"])
    );
    // 15 + 10 batches, every one from one task: both tasks' losses are logged, STS-B's
    // soft_ce as an MSE on the teacher's scores; evaluations report every task and the mean.
    let log = std::fs::read_to_string(out.join("1-distill/log.jsonl")).unwrap();
    let mut components = BTreeSet::new();
    let mut steps = 0;
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line).unwrap();
        if let Some(logged) = entry["components"].as_object() {
            steps += 1;
            components.extend(logged.keys().cloned());
        } else {
            let dev = &entry["evaluation"]["dev"];
            assert!(
                dev["mean"].is_f64() && dev["topics.accuracy"].is_f64(),
                "{dev}"
            );
        }
    }
    assert_eq!(steps, 25);
    let expected = [
        "STS-B.hard",
        "STS-B.logits_mse",
        "topics.hard",
        "topics.soft_ce",
    ];
    assert_eq!(components, expected.map(String::from).into());

    // The optimizer trained the shared encoder and both heads.
    let checkpoint = common::checkpoint_params(&out.join("1-distill/checkpoint"));
    let trained = candle_core::safetensors::load(&checkpoint, &Device::Cpu).unwrap();
    for name in [
        "bert.encoder.layer.0.attention.self.query.weight",
        "tasks.topics.classifier.weight",
        "tasks.STS-B.classifier.weight",
    ] {
        assert!(trained.contains_key(name), "{name}");
    }

    // The whole model holds the encoder once: the per-task models' parameters less the
    // topics model's encoder, which the STS-B model shares.
    let whole = MultiTaskModel::load(&out, 32, &candle_core::Device::Cpu).unwrap();
    let load = |name: &str| {
        TaskModel::load(
            &ModelFiles::resolve(out.join("tasks").join(name).to_str().unwrap()).unwrap(),
            32,
            &candle_core::Device::Cpu,
        )
        .unwrap()
    };
    let (topic_model, stsb_model) = (load("topics"), load("STS-B"));
    let head =
        |model: &TaskModel| model.config.hidden_size * model.labels.len() + model.labels.len();
    assert_eq!(
        whole.num_parameters(),
        topic_model.params.num_parameters() + head(&stsb_model)
    );
    assert_eq!(summary["student"]["params"], whole.num_parameters());
    // Each export gives the whole model's logits to the bit, and the two heads differ.
    let texts = [
        "rain and snow all week",
        "the coach and the referee",
        "pizza again",
    ];
    for ((name, part), export) in whole.tasks.iter().zip([&topic_model, &stsb_model]) {
        let batch = common::text_batch(part, &texts, Some("more cheese"));
        let logits = |model: &TaskModel| {
            let (logits, _) = model
                .model
                .forward(&batch.input, kd_bert::Mode::Inference)
                .unwrap();
            logits
        };
        assert_eq!(
            common::max_abs_diff(&logits(part), &logits(export)),
            0.0,
            "{name}"
        );
        assert_eq!(logits(part).dim(1).unwrap(), export.labels.len());
    }

    // `kd eval` of each export gives the metrics the run reported (its inference path fuses
    // operations: the same to float rounding).
    let eval = |task: &Value, flags: &[&str]| {
        let model = out.join("tasks").join(task["name"].as_str().unwrap());
        let args = [
            &[
                "eval",
                "--model",
                model.to_str().unwrap(),
                "--max-seq-len",
                "32",
            ],
            flags,
        ]
        .concat();
        let report: Value = serde_json::from_str(common::kd_ok(&args).trim()).unwrap();
        let reported = task["student_dev"].as_object().unwrap();
        assert_eq!(report["metrics"].as_object().unwrap().len(), reported.len());
        for (metric, value) in reported {
            let evaluated = report["metrics"][metric].as_f64().unwrap();
            assert!(
                (evaluated - value.as_f64().unwrap()).abs() < 1e-4,
                "{metric}: {report}"
            );
        }
    };
    eval(&tasks[0], &topic_flags);
    eval(&tasks[1], &["--task", "STS-B"]);
    // The whole model is kd's: `kd eval` points at the per-task folders.
    let error = common::kd_err(&["eval", "--model", out.to_str().unwrap(), "--task", "STS-B"]);
    assert!(error.contains("multi-task model"), "{error}");
}

#[test]
fn a_multi_task_recipe_names_its_teachers_and_data_per_task() {
    let root = tempfile::tempdir().unwrap();
    let recipe = root.path().join("mixed.toml");
    let text = "name = \"mixed\"\n[teacher]\nmodel = \"t\"\n[student]\nkind = \"distilbert\"\n\
                [[tasks]]\n[tasks.teacher]\nmodel = \"t\"\n[tasks.data]\ntask = \"SST-2\"\n\
                [training]\nlr = 1e-4\n[[stages]]\nname = \"s\"\nepochs = 1\n\
                [stages.objective]\ncomponents = [{ kind = \"hard\" }]\n";
    std::fs::write(&recipe, text).unwrap();
    let out = root.path().join("out");
    let args = ["distill", "--recipe", recipe.to_str().unwrap(), "--out"];
    let error = common::kd_err(&[&args[..], &[out.to_str().unwrap()]].concat());
    assert!(
        error.contains("each task names its teachers and data"),
        "{error}"
    );
    let no_teacher = text
        .replace("[teacher]\nmodel = \"t\"\n", "")
        .replace("[tasks.teacher]\nmodel = \"t\"\n", "");
    std::fs::write(&recipe, no_teacher).unwrap();
    let error = common::kd_err(&[&args[..], &[out.to_str().unwrap()]].concat());
    assert!(error.contains("task 1: no teacher named"), "{error}");
    assert!(!out.exists());
}
