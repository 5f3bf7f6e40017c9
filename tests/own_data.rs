//! A user's own task end to end: a three-class TSV with string labels that is not GLUE, a
//! teacher fine-tuned on it, a recipe whose `[data]` describes the files and adds unlabeled
//! text, the student reloaded by `kd eval` and `kd predict` with the same flags, its labels
//! round-tripping; unlabeled examples never reach the hard-label loss.

mod common;

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
