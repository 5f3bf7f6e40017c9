//! A real recipe end to end in the quick setting: the SST-2 DistilBERT recipe on a quickly
//! fine-tuned all-MiniLM-L6-v2 teacher; the student beats chance, the distillation loss falls,
//! the teacher's logits and compared states are cached across runs (and never computed for a
//! hard-label baseline), the student reloads with `kd eval`, and teacher ensembles average.

mod common;

use serde_json::Value;
use std::path::Path;

fn distill(recipe: &str, out: &Path, cache: &Path, overrides: &[&str]) -> Value {
    let args = distill_args(recipe, out, cache, overrides);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serde_json::from_str(common::kd_ok(&args).trim()).unwrap()
}

/// `kd distill`'s arguments for a shipped recipe in the quick setting.
fn distill_args(recipe: &str, out: &Path, cache: &Path, overrides: &[&str]) -> Vec<String> {
    let recipe = common::workspace_root()
        .join("experiments/recipes")
        .join(recipe);
    let mut args = vec![
        "distill".to_string(),
        "--recipe".into(),
        recipe.to_str().unwrap().into(),
        "--out".into(),
        out.to_str().unwrap().into(),
        "--cache-dir".into(),
        cache.to_str().unwrap().into(),
        "--max-train-examples".into(),
        "2000".into(),
    ];
    for value in overrides {
        args.push("--set".into());
        args.push(value.to_string());
    }
    args
}

#[test]
fn distilbert_recipe_trains_a_student_that_beats_chance() {
    let root = tempfile::tempdir().unwrap();
    let teacher = root.path().join("teacher");
    common::quick_sst2_teacher(&teacher);
    let teacher_set = format!("teacher.model={}", teacher.display());
    let cache = root.path().join("cache");

    // A stop raised while the teacher's outputs are computed (Ctrl-C before the first step)
    // ends the run there: nothing cached, no stage kept; a resumed run does the stage whole.
    let recipe = kd_runner::Recipe::load(
        &common::workspace_root().join("experiments/recipes/sst2-distilbert-l3.toml"),
        &[teacher_set.clone(), "training.max_steps=2".into()],
    )
    .unwrap();
    let stopped = root.path().join("stopped");
    let mut options = kd_runner::DistillOptions {
        device: candle_core::Device::Cpu,
        out: &stopped,
        force: false,
        resume: false,
        cache_dir: &cache,
        shared_dir: &common::shared_dir(),
        command: "test".into(),
    };
    let summary =
        kd_runner::distill::run(&recipe, &options, &std::sync::atomic::AtomicBool::new(true))
            .unwrap();
    assert!(summary.interrupted && summary.stages.is_empty());
    assert!(!cache.exists() && !stopped.join("model.safetensors").exists());
    options.resume = true;
    let summary = kd_runner::distill::run(
        &recipe,
        &options,
        &std::sync::atomic::AtomicBool::new(false),
    )
    .unwrap();
    assert!(!summary.interrupted && summary.stages[0].steps == 2);
    std::fs::remove_dir_all(&cache).unwrap();

    let out = root.path().join("student");
    let summary = distill(
        "sst2-distilbert-l3.toml",
        &out,
        &cache,
        &[&teacher_set, "stages.0.epochs=1", "training.eval_every=30"],
    );
    let accuracy = summary["student"]["dev"]["accuracy"].as_f64().unwrap();
    assert!(accuracy > 0.65, "student accuracy {accuracy}");
    assert_eq!(summary["student"]["layers"], 3);
    assert!(summary["student"]["params"].as_u64() < summary["teacher"]["params"].as_u64());
    // The soft cross-entropy is bounded below by the teacher's entropy, so the total falls
    // little from a student copied from the teacher (measured: 15.6 to 15.0); the hidden-state
    // cosine loss falls clearly (0.47 to 0.37).
    let log = out.join("1-distill/log.jsonl");
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let first_and_last = |name: &str| {
        let values = common::logged(&log, name);
        assert_eq!(values.len(), 63);
        (mean(&values[..10]), mean(&values[values.len() - 10..]))
    };
    let (first, last) = first_and_last("loss");
    assert!(last < first, "the loss did not fall: {first} -> {last}");
    let (first, last) = first_and_last("cosine");
    assert!(
        last < 0.85 * first,
        "the cosine loss did not fall: {first} -> {last}"
    );

    // The student is an HF directory that `kd eval` reloads to the same accuracy.
    let eval: Value = serde_json::from_str(
        common::kd_ok(&["eval", "--model", out.to_str().unwrap(), "--task", "sst2"]).trim(),
    )
    .unwrap();
    assert_eq!(eval["metrics"]["accuracy"].as_f64().unwrap(), accuracy);

    // The recipe's cosine loss reads only the teacher's last layer: its states are computed
    // once, its logits in the same pass, and the student trains without running the teacher.
    assert_eq!(
        summary["stages"][0]["teacher_cache"],
        serde_json::json!(["computed states", "loaded"])
    );

    // A logits-only objective reads the same cached logits.
    let logits_only = "stages.0.objective.components=[{ kind = \"soft_ce\" }]";
    let runs: Vec<Value> = (0..2)
        .map(|run| {
            let out = root.path().join(format!("cached-{run}"));
            let settings = [teacher_set.as_str(), logits_only, "training.max_steps=5"];
            distill("sst2-distilbert-l3.toml", &out, &cache, &settings)
        })
        .collect();
    for run in &runs {
        assert_eq!(
            run["stages"][0]["teacher_cache"],
            serde_json::json!(["loaded"])
        );
    }

    // A hard-label baseline never runs the teacher on the training set.
    let hard_only = distill(
        "sst2-distilbert-l3-nokd.toml",
        &root.path().join("nokd"),
        &root.path().join("nokd-cache"),
        &[&teacher_set, "training.max_steps=5"],
    );
    assert_eq!(
        hard_only["stages"][0]["teacher_cache"],
        serde_json::json!([])
    );
    assert!(!root.path().join("nokd-cache").exists());

    // An ensemble of the teacher and its copy, equal weights: its average is the teacher's
    // own distribution, so the student is the single-teacher one to the bit. Each teacher's
    // logits come from the cache (the copy's bytes key the same entry).
    let copy = root.path().join("teacher-copy");
    copy_dir(&teacher, &copy);
    let shipped = common::workspace_root().join("experiments/recipes/sst2-distilbert-l3.toml");
    let text = std::fs::read_to_string(shipped).unwrap();
    let single = "[teacher]\nmodel = \"runs/teachers/SST-2\"\n";
    assert!(text.contains(single));
    let ensemble_recipe = |members: &[&Path], extra: &str| {
        let teachers: String = members
            .iter()
            .map(|dir| format!("[[teachers]]\nmodel = \"{}\"\n", dir.display()))
            .collect();
        let path = root.path().join("ensemble.toml");
        std::fs::write(&path, format!("{extra}{}", text.replace(single, &teachers))).unwrap();
        path
    };
    let recipe = ensemble_recipe(&[&teacher, &copy], "");
    let out = root.path().join("ensemble");
    let settings = [logits_only, "training.max_steps=5"];
    let summary = distill(recipe.to_str().unwrap(), &out, &cache, &settings);
    assert_eq!(summary["ensemble"].as_array().unwrap().len(), 2);
    assert_eq!(summary["ensemble"][1]["weight"], 1.0);
    assert_eq!(
        summary["stages"][0]["teacher_cache"],
        serde_json::json!(["loaded", "loaded"])
    );
    let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(weights(&out) == weights(&root.path().join("cached-0")));
    // With the recipe's cosine loss too: the first teacher runs beside the student for its
    // layers, the copy gives cached logits, and again the student is the single-teacher one.
    let few = ["training.max_steps=3"];
    let full_single = root.path().join("single-full");
    distill(
        "sst2-distilbert-l3.toml",
        &full_single,
        &cache,
        &[&teacher_set, few[0]],
    );
    let full_ensemble = root.path().join("ensemble-full");
    distill(recipe.to_str().unwrap(), &full_ensemble, &cache, &few);
    assert!(weights(&full_ensemble) == weights(&full_single));

    // Teachers that answer in other terms, or a layers_from past the ensemble, stop the run
    // before it starts.
    let relabelled = root.path().join("teacher-relabelled");
    copy_dir(&teacher, &relabelled);
    let config_path = relabelled.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let config = config.replace("\"0\": \"0\"", "\"0\": \"neg\"");
    std::fs::write(&config_path, config).unwrap();
    let mismatched = ensemble_recipe(&[&teacher, &relabelled], "");
    let args = ["distill", "--recipe", mismatched.to_str().unwrap(), "--out"];
    let refused = root.path().join("refused");
    let error = common::kd_err(&[&args[..], &[refused.to_str().unwrap()]].concat());
    assert!(error.contains("answer differently"), "{error}");
    assert!(!refused.exists());
    let out_of_range = ensemble_recipe(&[&teacher, &copy], "layers_from = 2\n");
    let args = [
        "distill",
        "--recipe",
        out_of_range.to_str().unwrap(),
        "--out",
    ];
    let error = common::kd_err(&[&args[..], &[refused.to_str().unwrap()]].concat());
    assert!(
        error.contains("layers_from = 2 but there are 2 teachers"),
        "{error}"
    );

    // The shipped general recipes, a few steps on a few corpus lines, make backbones that the
    // task recipes start from: TinyBERT-style by `student.init`, DistilBERT-style by
    // `student.from`.
    let corpus = root.path().join("corpus");
    common::write_corpus(&corpus);
    let corpus = format!("data.corpus=[\"{}/*.txt\"]", corpus.display());
    let shape = "student.shape={ layers = 2, hidden = 48, heads = 12, intermediate = 96 }";
    let few_steps = "training.max_steps=4";
    let general_tiny = root.path().join("general-tinybert");
    let general = distill(
        "general-tinybert-l4.toml",
        &general_tiny,
        &cache,
        &[&corpus, shape, few_steps],
    );
    assert_eq!(general["stages"][0]["steps"], 4);
    assert_eq!(general["student"]["mlm_head"], false);
    // Resuming it with another learning rate is refused, naming the setting.
    let mut resume = distill_args(
        "general-tinybert-l4.toml",
        &general_tiny,
        &cache,
        &[&corpus, shape, few_steps, "training.lr=1e-3"],
    );
    resume.push("--resume".into());
    let resume: Vec<&str> = resume.iter().map(String::as_str).collect();
    let error = common::kd_err(&resume);
    assert!(
        error.contains("training.lr: was 0.0001, is now 0.001"),
        "{error}"
    );
    let init = format!("student.init={}", general_tiny.display());
    // Its intermediate stage with TextBrewer's Gram-matrix losses as well, on hidden states
    // only: the teacher's compared layers (fsp's embedding output among them) are cached.
    let intermediate = "stages.0.objective.components=[{ kind = \"embedding_mse\" }, \
        { kind = \"hidden_mse\" }, { kind = \"fsp\" }, { kind = \"mmd\" }]";
    let tinybert = root.path().join("tinybert");
    let task = distill(
        "sst2-tinybert-l4.toml",
        &tinybert,
        &cache,
        &[
            &teacher_set,
            &init,
            shape,
            intermediate,
            "training.max_steps=3",
            "training.eval_every=1",
        ],
    );
    assert_eq!(task["student"]["hidden"], 48);
    // The intermediate stage keeps its last model (`keep = "last"`): its summary gives that
    // model's dev accuracy beside the best one.
    let log = std::fs::read_to_string(tinybert.join("1-intermediate/log.jsonl")).unwrap();
    let accuracies: Vec<f64> = log
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter_map(|entry| entry["evaluation"]["dev"]["accuracy"].as_f64())
        .collect();
    assert!(accuracies.len() >= 3, "{accuracies:?}");
    let stage = &task["stages"][0];
    assert_eq!(stage["kept"].as_f64(), accuracies.last().copied());
    assert_eq!(
        stage["best"].as_f64(),
        accuracies.iter().copied().reduce(f64::max)
    );
    assert_eq!(
        task["stages"][0]["teacher_cache"],
        serde_json::json!(["computed states"])
    );
    // A checkpoint of another shape than the recipe's (its heads here) is refused, where it
    // would train under the recipe's description.
    let other_heads = "student.shape={ layers = 2, hidden = 48, heads = 6, intermediate = 96 }";
    let args = distill_args(
        "sst2-tinybert-l4.toml",
        &root.path().join("other-heads"),
        &cache,
        &[&teacher_set, &init, other_heads],
    );
    let error = common::kd_err(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        error.contains(
            "is 2 layers x 48, 12 heads, feed-forward 96; the recipe's shape says \
             2 layers x 48, 6 heads"
        ),
        "{error}"
    );
    for component in ["fsp", "mmd"] {
        let values = common::logged(&tinybert.join("1-intermediate/log.jsonl"), component);
        assert!(
            values.len() == 3 && values.iter().all(|v| v.is_finite() && *v > 0.0),
            "{component}: {values:?}"
        );
    }

    // The shipped MiniLM recipe: the last layer's attention distributions and value relation;
    // and MiniLMv2's relations, which a student with other head counts can learn (4 here).
    let minilm = root.path().join("minilm");
    distill(
        "sst2-minilm4.toml",
        &minilm,
        &cache,
        &[&teacher_set, shape, "training.max_steps=3"],
    );
    let minilm_v2 = root.path().join("minilm-v2");
    distill(
        "sst2-minilm4.toml",
        &minilm_v2,
        &cache,
        &[
            &teacher_set,
            "student.shape={ layers = 2, hidden = 48, heads = 4, intermediate = 96 }",
            "stages.0.objective.components=[{ kind = \"attention_relations\", relation_heads = 6 }]",
            "training.max_steps=3",
        ],
    );
    for (run, component) in [
        (&minilm, "attention_kl"),
        (&minilm, "value_relation"),
        (&minilm_v2, "attention_relations"),
    ] {
        let values = common::logged(&run.join("1-self-attention/log.jsonl"), component);
        assert!(
            values.len() == 3 && values.iter().all(|v| v.is_finite() && *v > 0.0),
            "{component}: {values:?}"
        );
    }

    // Mismatches are refused before any training, the output directory untouched: a student
    // checkpoint with another vocabulary, and a later stage's layer mapping outside the teacher.
    let other_vocabulary = root.path().join("other-vocabulary");
    copy_dir(&general_tiny, &other_vocabulary);
    for file in ["vocab.txt", "tokenizer.json"] {
        let path = other_vocabulary.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("[unused0]", "[unusedX]")).unwrap();
    }
    let recipe = common::workspace_root().join("experiments/recipes/sst2-tinybert-l4.toml");
    let refuse = |settings: &[&str]| {
        let mut args = vec!["distill", "--recipe", recipe.to_str().unwrap(), "--out"];
        args.push(refused.to_str().unwrap());
        for setting in settings {
            args.extend(["--set", setting]);
        }
        let error = common::kd_err(&args);
        assert!(!refused.exists(), "{error}");
        error
    };
    let init = format!("student.init={}", other_vocabulary.display());
    let error = refuse(&[&teacher_set, &init, shape]);
    assert!(
        error.contains("different vocabulary") && error.contains("first difference at id 1"),
        "{error}"
    );
    let error = refuse(&[
        &teacher_set,
        shape,
        "stages.1.objective.components=[{ kind = \"hidden_mse\", layers = { explicit = [[1, 9]] } }]",
    ]);
    assert!(
        error.contains("stage prediction") && error.contains("names teacher layer 9"),
        "{error}"
    );

    let general_distilbert = root.path().join("general-distilbert");
    let general = distill(
        "general-distilbert-l3.toml",
        &general_distilbert,
        &cache,
        &[&corpus, few_steps],
    );
    assert_eq!(general["student"]["mlm_head"], true);
    let held_out = &general["stages"][0]["held_out"];
    assert!(held_out["mlm_accuracy"].is_number(), "{held_out}");
    let from = format!("student.from={}", general_distilbert.display());
    let task = distill(
        "sst2-distilbert-l3-backbone.toml",
        &root.path().join("distilbert"),
        &cache,
        &[
            &teacher_set,
            &from,
            "student.layers=[0, 1, 2]",
            "training.max_steps=3",
        ],
    );
    assert_eq!(task["student"]["layers"], 3);
}

/// Copies a model directory's files.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}
