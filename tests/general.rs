//! General distillation on unlabeled text: the masked-LM head (gradients through its tied
//! decoder, HF's `BertForMaskedLM` layout), DistilBERT's objective from a teacher with a
//! masked-LM head, resuming mid-epoch, and the errors that stop a recipe before training.

mod common;

use candle_core::{Device, Tensor};
use kd_bert::{BertConfig, BertInput, Mode};
use kd_teacher::{Backbone, ModelFiles};
use serde_json::Value;
use std::path::Path;
use std::process::Stdio;

/// A randomly initialised BERT with a masked-LM head and MiniLM's tokenizer, saved in `dir`.
fn tiny_masked_lm(dir: &Path, hidden: usize, seed: u64) -> Backbone {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        common::minilm_dir().join("tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "model_type": "bert", "vocab_size": 30522, "hidden_size": hidden,
        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 2 * hidden,
        "max_position_embeddings": 64, "type_vocab_size": 2, "hidden_act": "gelu",
    }))
    .unwrap();
    let model =
        Backbone::initialised(config, dir, true, seed, 64, &candle_core::Device::Cpu).unwrap();
    model.save(dir).unwrap();
    model
}

/// `[CLS] the cat sat on [MASK] mat . [SEP]` in MiniLM's vocabulary.
const IDS: [u32; 9] = [101, 1996, 4937, 2938, 2006, 103, 13523, 1012, 102];

fn input(ids: &[u32]) -> BertInput {
    let ids = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    BertInput {
        token_type_ids: ids.zeros_like().unwrap(),
        attention_mask: ids.ones_like().unwrap(),
        input_ids: ids,
    }
}

fn all_positions(count: usize) -> Tensor {
    Tensor::arange(0u32, count as u32, &Device::Cpu).unwrap()
}

#[test]
fn the_masked_lm_head_trains_through_its_tied_decoder_and_round_trips_as_hf_bert_for_masked_lm() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("mlm");
    let model = tiny_masked_lm(&dir, 16, 3);
    let positions = Tensor::new(&[5u32, 2], &Device::Cpu).unwrap();
    let output = model
        .model
        .forward(&input(&IDS), Mode::Train { dropout: true })
        .unwrap();
    let logits = model.mlm_logits(&output, &positions).unwrap();
    assert_eq!(logits.dims(), [2, 30522]);
    let labels = Tensor::new(&[1996u32, 4937], &Device::Cpu).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
    let grads = loss.backward().unwrap();
    let vars = model.params.vars();
    assert_eq!(
        vars.len(),
        2 * 16 + 5 + 5,
        "encoder, transform, layer norm and bias"
    );
    for (name, var) in &vars {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        let values = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{name}");
        assert!(values.iter().any(|&v| v != 0.0), "{name}: zero gradient");
    }
    // The decoder is the word embedding matrix: a word absent from the input still gets a
    // gradient, through the output side alone.
    let embeddings = model
        .params
        .get("bert.embeddings.word_embeddings.weight")
        .unwrap();
    let absent_word = grads
        .get(embeddings.as_tensor())
        .unwrap()
        .get(7592)
        .unwrap();
    assert!(
        absent_word
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );

    // Saved with HF's names and reloaded with its head: the same logits.
    let config: Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForMaskedLM");
    let every = all_positions(IDS.len());
    let logits_of = |model: &Backbone| {
        let output = model.model.forward(&input(&IDS), Mode::Inference).unwrap();
        model.mlm_logits(&output, &every).unwrap()
    };
    let ours = logits_of(&model);
    let reloaded = Backbone::load(
        &ModelFiles::from_dir(&dir).unwrap(),
        64,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(reloaded.mlm_head.is_some());
    let difference = (&ours - logits_of(&reloaded)).unwrap().abs().unwrap();
    assert_eq!(
        difference.max_all().unwrap().to_scalar::<f32>().unwrap(),
        0.0
    );

    // transformers loads it as BertForMaskedLM with no missing or unexpected weight, and
    // computes the same logits (where the reference environment exists).
    let Some(python) = common::reference_python("transformers reading a masked-LM backbone") else {
        return;
    };
    let output = std::process::Command::new(python)
        .arg(common::workspace_root().join("tests/fixtures/hf_mlm_logits.py"))
        .arg(&dir)
        .arg(serde_json::to_string(&[IDS]).unwrap())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(output.status.success(), "transformers could not load it");
    let hf: Value = serde_json::from_slice(&output.stdout).unwrap();
    let ours = ours.to_vec2::<f32>().unwrap();
    for (position, row) in hf["logits"][0].as_array().unwrap().iter().enumerate() {
        for (token, value) in row.as_array().unwrap().iter().enumerate() {
            let difference = (value.as_f64().unwrap() - ours[position][token] as f64).abs();
            assert!(
                difference < 1e-4,
                "position {position} token {token}: {difference}"
            );
        }
    }
}

fn write_recipe(path: &Path, teacher: &Path, corpus: &Path, components: &str) {
    let recipe = format!(
        r#"name = "general-test"
[teacher]
model = "{}"
[student]
kind = "distilbert"
layers = [1]
[data]
corpus = ["{}/*.txt"]
max_seq_len = 32
[training]
lr = 1e-3
batch_size = 8
eval_every = 10
seed = 7
[[stages]]
name = "general"
epochs = 1
[stages.objective]
temperature = 2.0
components = {components}
"#,
        teacher.display(),
        corpus.display()
    );
    std::fs::write(path, recipe).unwrap();
}

#[test]
fn distilbert_objective_from_a_masked_lm_teacher_trains_and_resumes_to_the_same_student() {
    let root = tempfile::tempdir().unwrap();
    let teacher = root.path().join("teacher");
    tiny_masked_lm(&teacher, 32, 11);
    let corpus = root.path().join("corpus");
    common::write_corpus(&corpus);
    let recipe = root.path().join("general.toml");
    write_recipe(
        &recipe,
        &teacher,
        &corpus,
        r#"[{ kind = "soft_ce", weight = 5.0 }, { kind = "mlm", weight = 2.0 }, { kind = "cosine" }]"#,
    );
    let cache = root.path().join("cache");
    let args = |out: &Path| -> Vec<String> {
        [
            "distill",
            "--recipe",
            recipe.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .into_iter()
        .chain(["--cache-dir", cache.to_str().unwrap()])
        .map(String::from)
        .collect()
    };
    let straight = root.path().join("straight");
    let straight_args = args(&straight);
    let straight_args: Vec<&str> = straight_args.iter().map(String::as_str).collect();
    let summary: Value = serde_json::from_str(common::kd_ok(&straight_args).trim()).unwrap();

    assert_eq!(summary["student"]["layers"], 1);
    assert_eq!(summary["student"]["mlm_head"], true);
    let steps = summary["stages"][0]["steps"].as_u64().unwrap() as usize;
    assert!(steps >= 30, "{summary}");
    let held_out = &summary["stages"][0]["held_out"];
    for name in ["loss", "soft_ce", "mlm", "cosine", "mlm_accuracy"] {
        assert!(held_out[name].is_number(), "{name} missing from {held_out}");
    }
    // Every component is logged at every step, and the objective falls.
    let log = straight.join("1-general/log.jsonl");
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    for name in ["soft_ce", "mlm", "cosine"] {
        assert_eq!(common::logged(&log, name).len(), steps, "{name}");
    }
    let losses = common::logged(&log, "loss");
    let (first, last) = (mean(&losses[..5]), mean(&losses[steps - 5..]));
    assert!(last < first, "the loss did not fall: {first} -> {last}");
    // The student is a masked-LM backbone with the teacher's layer 1 as its start.
    let student = Backbone::load(
        &ModelFiles::from_dir(&straight).unwrap(),
        32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert!(student.mlm_head.is_some());
    assert_eq!(student.config.num_hidden_layers, 1);

    // `kd report` draws every component's curve.
    common::kd_ok(&["report", straight.to_str().unwrap()]);
    let svg = std::fs::read_to_string(straight.join("report/1-general.svg")).unwrap();
    for name in ["soft_ce", "mlm", "cosine", "mlm_accuracy"] {
        assert!(svg.contains(name), "{name} is not in the chart");
    }
    assert!(straight.join("report/1-general.png").is_file());

    // Interrupted mid-epoch and resumed: the same batches and masks, the same student.
    let out = root.path().join("resumed");
    let resumed_args = args(&out);
    let resumed_args: Vec<&str> = resumed_args.iter().map(String::as_str).collect();
    let mut command = common::kd_command(&resumed_args);
    command.stdout(Stdio::null());
    let output = common::interrupt_after(
        command,
        &out.join("1-general/log.jsonl"),
        steps / 2,
        libc::SIGINT,
    );
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        common::stderr(&output)
    );
    let mut resume = resumed_args.clone();
    resume.push("--resume");
    common::kd_ok(&resume);
    let read = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(read(&straight) == read(&out), "the resumed student differs");
}

#[test]
fn general_recipes_that_cannot_run_stop_before_training_and_say_why() {
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("corpus");
    common::write_corpus(&corpus);
    let recipe = root.path().join("general.toml");
    let minilm = common::minilm_dir();
    let out = root.path().join("out");
    let run = |components: &str| {
        write_recipe(&recipe, &minilm, &corpus, components);
        common::kd_err(&[
            "distill",
            "--recipe",
            recipe.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    // all-MiniLM-L6-v2 has no masked-LM head to compare predictions with.
    let error = run(r#"[{ kind = "soft_ce" }, { kind = "mlm" }]"#);
    assert!(error.contains("has no masked-LM head"), "{error}");
    let error = run(r#"[{ kind = "hard" }]"#);
    assert!(error.contains("no task labels"), "{error}");
    // A task model taken as it is (kind = "model") is a task distillation's student.
    write_recipe(&recipe, &minilm, &corpus, r#"[{ kind = "cosine" }]"#);
    let error = common::kd_err(&[
        "distill",
        "--recipe",
        recipe.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        &format!(
            "student={{ kind = \"model\", model = \"{}\" }}",
            minilm.display()
        ),
    ]);
    assert!(error.contains("kind = \"tinybert\" and `init`"), "{error}");
    assert!(!out.exists(), "nothing is written before the checks pass");

    std::fs::write(
        &recipe,
        std::fs::read_to_string(&recipe)
            .unwrap()
            .replace("max_seq_len = 32", "max_seq_len = 32\ntask = \"SST-2\""),
    )
    .unwrap();
    let error = common::kd_err(&["distill", "--recipe", recipe.to_str().unwrap()]);
    assert!(error.contains("remove task from [data]"), "{error}");
}
