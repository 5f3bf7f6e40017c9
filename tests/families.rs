//! The encoder families against transformers: a tiny random model of each family
//! (tests/fixtures/families, made by tests/fixtures/make_family_reference.py) gives every
//! layer's states, the attention probabilities and the logits within 1e-5 of transformers on
//! every path (fused, frozen, generic kernels, logits at [CLS] only), and each masked-LM head
//! its logits; every parameter gets a gradient; pruned heads answer as masked ones; and what kd
//! writes back has the family's tensor names and config keys. Through the command line, each
//! family fine-tunes, distils (DistilBERT- and TinyBERT-style, and general distillation from a
//! masked-LM teacher), exports (int8 safetensors, ONNX that ONNX Runtime runs with kd's
//! logits) and is looked inside (heads, pruning, attention); bad input is refused before
//! anything is written.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use kd_bert::{
    BertConfig, BertForSequenceClassification, BertInput, BertModel, Family, FrozenWeights,
    MaskedLmHead, Mode, Params,
};
use kd_teacher::{Backbone, ModelFiles, TaskModel};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

const TOLERANCE: f32 = 1e-5;

fn fixture_dir(family: Family) -> PathBuf {
    common::workspace_root()
        .join("tests/fixtures/families")
        .join(family.model_type())
}

struct Loaded {
    config: BertConfig,
    params: Params,
    model: BertForSequenceClassification,
}

fn load(family: Family) -> Loaded {
    let dir = fixture_dir(family);
    let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
    assert_eq!(config.family(), family);
    let params = Params::new(&Device::Cpu).in_family(family);
    let model = BertForSequenceClassification::new(&config, 3, params.var_builder()).unwrap();
    let report = params
        .load(&dir.join("model.safetensors"), |_| false)
        .unwrap();
    assert!(
        report.unused.is_empty(),
        "{family:?}: unused {:?}",
        report.unused
    );
    Loaded {
        config,
        params,
        model,
    }
}

fn expected(family: Family) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixture_dir(family).join("expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn input(expected: &HashMap<String, Tensor>) -> BertInput {
    let ids = |name: &str| expected[name].to_dtype(DType::U32).unwrap();
    BertInput {
        input_ids: ids("input_ids"),
        token_type_ids: ids("token_type_ids"),
        attention_mask: ids("attention_mask"),
    }
}

/// The largest difference between `ours` and `theirs` at real tokens (dimension 1 of a
/// `[batch, seq, ...]` tensor), or everywhere when `mask` is `None`.
fn difference(ours: &Tensor, theirs: &Tensor, mask: Option<&Tensor>) -> f32 {
    match mask {
        Some(mask) => {
            let mask = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
            common::max_abs_diff(
                &ours.broadcast_mul(&mask).unwrap(),
                &theirs.broadcast_mul(&mask).unwrap(),
            )
        }
        None => common::max_abs_diff(ours, theirs),
    }
}

#[test]
fn every_family_matches_transformers_on_every_path() {
    for family in Family::ALL {
        let expected = expected(family);
        let input = input(&expected);
        let loaded = load(family);
        let mut frozen = load(family).model;
        frozen.freeze(FrozenWeights::F32).unwrap();
        let generic =
            |mode| kd_bert::kernels::force_generic(|| loaded.model.forward(&input, mode).unwrap());
        let runs = [
            (
                "fused",
                loaded.model.forward(&input, Mode::Inference).unwrap(),
            ),
            (
                "fused, training",
                loaded
                    .model
                    .forward(&input, Mode::Train { dropout: false })
                    .unwrap(),
            ),
            ("frozen", frozen.forward(&input, Mode::Inference).unwrap()),
            ("generic", generic(Mode::Inference)),
            ("generic, training", generic(Mode::Train { dropout: false })),
        ];
        for (path, (logits, output)) in runs {
            let check = |name: &str, ours: &Tensor, mask: Option<&Tensor>| {
                let diff = difference(ours, &expected[name], mask);
                assert!(
                    diff <= TOLERANCE,
                    "{family:?} {path}: {name} differs by {diff}"
                );
            };
            check("logits", &logits, None);
            for layer in 0..=loaded.config.num_hidden_layers {
                check(
                    &format!("hidden.{layer}"),
                    output.layer(layer),
                    Some(&input.attention_mask),
                );
            }
            for (layer, probs) in output.attention_probs.iter().enumerate() {
                check(&format!("attention.{layer}"), probs, None);
            }
            assert_eq!(output.attention_probs.len(), 2, "{family:?} {path}");
        }
        // The logits alone: the last layer at [CLS] only, the fused attention.
        for model in [&loaded.model, &frozen] {
            let logits = model.logits(&input, None, Mode::Inference).unwrap();
            let diff = difference(&logits, &expected["logits"], None);
            assert!(diff <= TOLERANCE, "{family:?} logits at [CLS]: {diff}");
        }
    }
}

/// Heads pruned for good answer as the same heads masked out, in every family: MPNet's pruned
/// layers take their remaining heads' rows of the shared relative-position bias.
#[test]
fn pruned_heads_answer_as_masked_ones_in_every_family() {
    for family in Family::ALL {
        let expected = expected(family);
        let input = input(&expected);
        let full = load(family);
        let mask = [
            Tensor::new(&[1f32, 0.0, 1.0, 0.0], &Device::Cpu).unwrap(),
            Tensor::new(&[0f32, 1.0, 1.0, 1.0], &Device::Cpu).unwrap(),
        ];
        let (masked, _) = full
            .model
            .forward_with_head_mask(&input, Some(&mask), Mode::Inference)
            .unwrap();
        let parameters: Vec<(String, Tensor)> = full
            .params
            .vars()
            .into_iter()
            .map(|(name, var)| (name, var.as_tensor().clone()))
            .collect();
        let remove = [(0, [1, 3].into()), (1, [0].into())].into();
        let (config, pruned) = kd_bert::prune_heads(&full.config, &parameters, &remove).unwrap();
        let params = Params::new(&Device::Cpu).in_family(family);
        for (name, tensor) in pruned {
            params.insert(name, Var::from_tensor(&tensor).unwrap());
        }
        let small = BertForSequenceClassification::new(&config, 3, params.var_builder()).unwrap();
        assert_eq!(
            params.num_parameters(),
            full.params.num_parameters() - 3 * 4 * 8 * 32 - 3 * 3 * 8
        );
        let (logits, _) = small.forward(&input, Mode::Inference).unwrap();
        let diff = difference(&logits, &masked, None);
        assert!(
            diff <= TOLERANCE,
            "{family:?}: pruned against masked {diff}"
        );
        let (unmasked, _) = full.model.forward(&input, Mode::Inference).unwrap();
        assert!(
            difference(&unmasked, &masked, None) > 1e-4,
            "{family:?}: masking did nothing"
        );
    }
}

/// Each family's masked-LM head (every family's but ELECTRA's discriminator, which has none and
/// is refused) gives transformers' logits over the vocabulary at every real token.
#[test]
fn every_familys_masked_lm_head_matches_transformers() {
    for family in Family::ALL {
        if family.masked_lm_architecture().is_none() {
            let mut config = load(family).config;
            config.vocab_size = 30522;
            let minilm = common::minilm_dir();
            let error = Backbone::initialised(config, &minilm, true, 1, 32, &Device::Cpu)
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("no masked-LM head"), "{family:?}: {error}");
            continue;
        }
        let dir = fixture_dir(family).join("mlm");
        let expected =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        let input = input(&expected);
        let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
        let params = Params::new(&Device::Cpu).in_family(family);
        let vb = params.var_builder();
        let model = BertModel::new(&config, vb.pp("bert"), false).unwrap();
        let head = MaskedLmHead::new(&config, vb.pp("cls").pp("predictions")).unwrap();
        let report = params
            .load(&dir.join("model.safetensors"), |_| false)
            .unwrap();
        assert!(report.unused.is_empty(), "{family:?}: {report:?}");
        let output = model.forward(&input, Mode::Inference).unwrap();
        let mask: Vec<u32> = input
            .attention_mask
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let real: Vec<u32> = (0..mask.len() as u32)
            .filter(|&i| mask[i as usize] == 1)
            .collect();
        let positions = Tensor::new(real, &Device::Cpu).unwrap();
        let ours = head
            .forward(
                output.last_hidden_state(),
                &positions,
                model.word_embeddings(),
            )
            .unwrap();
        let theirs = expected["mlm_logits"]
            .reshape((mask.len(), config.vocab_size))
            .unwrap()
            .index_select(&positions, 0)
            .unwrap();
        let diff = difference(&ours, &theirs, None);
        assert!(
            diff <= TOLERANCE,
            "{family:?}: masked-LM logits differ by {diff}"
        );
    }
}

#[test]
fn every_parameter_of_every_family_gets_a_gradient() {
    for family in Family::ALL {
        let expected = expected(family);
        let input = input(&expected);
        let loaded = load(family);
        let (logits, output) = loaded
            .model
            .forward(&input, Mode::Train { dropout: false })
            .unwrap();
        let weights = Tensor::randn(0f32, 1.0, logits.shape(), &Device::Cpu).unwrap();
        let states = output.last_hidden_state();
        let state_weights = Tensor::randn(0f32, 1.0, states.shape(), &Device::Cpu).unwrap();
        let loss = ((logits * weights).unwrap().sum_all().unwrap()
            + (states * state_weights).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in loaded.params.vars() {
            // A key bias adds the same to every score of a query: the softmax ignores it.
            if name.ends_with("attention.self.key.bias") {
                continue;
            }
            let grad = grads
                .get(Var::as_tensor(&var))
                .unwrap_or_else(|| panic!("{family:?}: no gradient reaches {name}"));
            let norm = grad
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm.is_finite() && norm > 0.0,
                "{family:?}: {name} gradient norm {norm}"
            );
        }
    }
}

#[test]
fn what_kd_writes_has_the_familys_names_and_keys() {
    let out = tempfile::tempdir().unwrap();
    for family in Family::ALL {
        let dir = fixture_dir(family);
        let loaded = load(family);
        let written = out
            .path()
            .join(format!("{}.safetensors", family.model_type()));
        loaded.params.save(&written).unwrap();
        let names = |path: &std::path::Path| -> BTreeSet<String> {
            candle_core::safetensors::load(path, &Device::Cpu)
                .unwrap()
                .into_keys()
                .collect()
        };
        assert_eq!(
            names(&written),
            names(&dir.join("model.safetensors")),
            "{family:?}"
        );
        let original: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let keys = |json: &serde_json::Value| -> BTreeSet<String> {
            json.as_object().unwrap().keys().cloned().collect()
        };
        let ours = loaded.config.to_json();
        assert_eq!(keys(&ours), keys(&original), "{family:?}");
        for key in [
            "hidden_size",
            "dim",
            "n_layers",
            "num_hidden_layers",
            "type_vocab_size",
        ] {
            assert_eq!(ours.get(key), original.get(key), "{family:?}: {key}");
        }
    }
}

/// all-mpnet-base-v2 as experiments/scripts/get_mpnet.sh installs it (`KD_MPNET_DIR`, else
/// runs/models/all-mpnet-base-v2), or `None` with a note; CI installs it.
fn mpnet_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("KD_MPNET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::workspace_root().join("runs/models/all-mpnet-base-v2"));
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI has no all-mpnet-base-v2 in {} (experiments/scripts/get_mpnet.sh installs it)",
        dir.display()
    );
    common::note("skipping the MPNet-base parity test: run experiments/scripts/get_mpnet.sh");
    None
}

#[test]
fn all_mpnet_base_matches_transformers_on_held_out_sentences() {
    let Some(dir) = mpnet_dir() else { return };
    let expected = candle_core::safetensors::load(
        common::workspace_root().join("tests/fixtures/mpnet_reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
    let params = Params::new(&Device::Cpu).in_family(Family::MpNet);
    let model = kd_bert::BertModel::new(&config, params.var_builder().pp("bert"), false).unwrap();
    let report = params
        .load(&dir.join("model.safetensors"), |_| false)
        .unwrap();
    assert_eq!(
        report.unused,
        [
            "embeddings.position_ids",
            "pooler.dense.bias",
            "pooler.dense.weight"
        ]
    );
    // kd's tokenizer gives transformers' ids.
    let tokenizer = kd_data::TextTokenizer::from_dir(&dir, 512).unwrap();
    let sentences = [
        "A small model keeps most of what the large one knew.",
        "Rain fell on the quiet town all night.",
        "Is distillation worth it?",
    ];
    let ids = expected["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = expected["attention_mask"].to_dtype(DType::U32).unwrap();
    for (row, sentence) in sentences.iter().enumerate() {
        let encoded = tokenizer.encode(sentence, None).unwrap();
        let real = mask
            .get(row)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<u32>()
            .unwrap() as usize;
        let theirs = ids
            .get(row)
            .unwrap()
            .narrow(0, 0, real)
            .unwrap()
            .to_vec1::<u32>()
            .unwrap();
        assert_eq!(encoded.ids, theirs, "{sentence}");
    }
    let input = BertInput {
        token_type_ids: ids.zeros_like().unwrap(),
        input_ids: ids,
        attention_mask: mask,
    };
    let output = model.forward(&input, Mode::Inference).unwrap();
    let check = |name: &str, ours: &Tensor, masked: bool| {
        let diff = difference(
            ours,
            &expected[name],
            masked.then_some(&input.attention_mask),
        );
        assert!(diff <= TOLERANCE, "{name} differs by {diff}");
    };
    for layer in [0, 6, 12] {
        check(&format!("hidden.{layer}"), output.layer(layer), true);
    }
    check("attention.0", &output.attention_probs[0], false);
    check("attention.11", &output.attention_probs[11], false);
    check(
        "mean_pooled",
        &output.mean_pooled(&input.attention_mask).unwrap(),
        false,
    );
}

/// The first `train` and `dev` sentences of SST-2, in `dir`.
fn sst2_subset(dir: &std::path::Path, train: usize, dev: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for (file, lines) in [("train.tsv", train + 1), ("dev.tsv", dev + 1)] {
        let text = std::fs::read_to_string(common::glue_dir("SST-2").join(file)).unwrap();
        let text: Vec<&str> = text.lines().take(lines).collect();
        std::fs::write(dir.join(file), text.join("\n") + "\n").unwrap();
    }
}

/// The tensor names in `dir`'s model.safetensors, whatever their dtypes (candle loads no int8).
fn tensor_names(dir: &std::path::Path) -> BTreeSet<String> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.names().into_iter().map(str::to_string).collect()
}

fn json_file(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `kd finetune` of `model` for `steps` updates on the SST-2 sentences in `data`, into `out`.
fn finetune(model: &str, data: &std::path::Path, steps: usize, out: &str) -> std::process::Output {
    let steps = steps.to_string();
    common::kd(&[
        "finetune",
        "--model",
        model,
        "--task",
        "sst2",
        "--data-dir",
        data.to_str().unwrap(),
        "--max-steps",
        &steps,
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--max-seq-len",
        "32",
        "--out",
        out,
    ])
}

/// Parameters in the `model.safetensors` of `dir`.
fn parameter_count(dir: &std::path::Path) -> usize {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .iter()
        .map(|(_, view)| view.shape().iter().product::<usize>())
        .sum()
}

/// The other commands that read a model, on the 2 x 2-head, 16-wide base encoder and the
/// teacher in `dir`: `embed` (16 finite numbers a text), `eval` (an accuracy over the 50 dev
/// sentences), `heads` (every head scored), `prune` (one head of 8 dimensions fewer: its query,
/// key and value rows with their biases and its columns of the attention output, 536
/// parameters in every family's names; then `predict` and `compare` with the pruned teacher,
/// and its export at full shape again) and `attention` (maps drawn).
fn looks_inside(dir: &std::path::Path, data: &std::path::Path, texts: &[&str]) {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let data = data.to_str().unwrap();
    let embedding: Vec<f32> =
        serde_json::from_str(common::kd_ok(&["embed", "--model", &path("base"), texts[0]]).trim())
            .unwrap();
    assert!(
        embedding.len() == 16 && embedding.iter().all(|x| x.is_finite()),
        "{embedding:?}"
    );
    let evaluated: serde_json::Value = serde_json::from_str(&common::kd_ok(&[
        "eval",
        "--model",
        &path("teacher"),
        "--task",
        "sst2",
        "--data-dir",
        data,
    ]))
    .unwrap();
    let accuracy = evaluated["metrics"]["accuracy"].as_f64().unwrap_or(-1.0);
    assert!(
        evaluated["examples"] == 50 && (0.0..=1.0).contains(&accuracy),
        "{evaluated}"
    );
    common::kd_ok(&[
        "heads",
        "--model",
        &path("teacher"),
        "--task",
        "sst2",
        "--data-dir",
        data,
        "--out",
        &path("heads"),
    ]);
    let scores = json_file(&dir.join("heads/heads.json"));
    let masked: Vec<Vec<f64>> = serde_json::from_value(scores["masked"].clone()).unwrap();
    assert_eq!((masked.len(), masked[0].len()), (2, 2), "{scores}");
    common::kd_ok(&[
        "prune",
        "--model",
        &path("teacher"),
        "--out",
        &path("pruned"),
        "--heads",
        "0:1",
    ]);
    assert_eq!(
        parameter_count(&dir.join("teacher")) - parameter_count(&dir.join("pruned")),
        536
    );
    // At full shape again, the pruned heads zero: the teacher's size, the pruned answers.
    common::kd_ok(&[
        "export",
        "--model",
        &path("pruned"),
        "--restore-heads",
        "--out",
        &path("restored"),
    ]);
    assert_eq!(
        parameter_count(&dir.join("restored")),
        parameter_count(&dir.join("teacher"))
    );
    let probabilities = |model: &str| -> Vec<f64> {
        let answer: serde_json::Value = serde_json::from_str(
            common::kd_ok(&["predict", "--model", &path(model), texts[0]]).trim(),
        )
        .unwrap();
        (0..2)
            .map(|label| answer["probabilities"][label.to_string()].as_f64().unwrap())
            .collect()
    };
    let (pruned, restored) = (probabilities("pruned"), probabilities("restored"));
    assert!(
        pruned
            .iter()
            .zip(&restored)
            .all(|(p, r)| (p - r).abs() < 1e-6),
        "{pruned:?} against {restored:?}"
    );
    common::kd_ok(&[
        "compare",
        "--models",
        &path("teacher"),
        &path("pruned"),
        "--task",
        "sst2",
        "--data-dir",
        data,
        "--bootstrap",
        "50",
        "--out",
        &path("compare"),
    ]);
    let rows = json_file(&dir.join("compare/compare.json"));
    let [teacher, pruned] = rows.as_array().unwrap().as_slice() else {
        panic!("{rows}");
    };
    assert_eq!(teacher["agreement"], 1.0, "{teacher}");
    assert_eq!(
        teacher["params"].as_u64().unwrap() - pruned["params"].as_u64().unwrap(),
        536,
        "{rows}"
    );
    common::kd_ok(&[
        "attention",
        "--model",
        &path("teacher"),
        texts[0],
        "--out",
        &path("attention"),
    ]);
    assert!(std::fs::read_dir(dir.join("attention")).unwrap().count() > 0);
}

/// `kd distill` of `recipe` into `out`, its teacher's outputs cached in `cache`.
fn distill(recipe: &std::path::Path, out: &str, cache: &str) -> std::process::Output {
    let recipe = recipe.to_str().unwrap();
    common::kd(&[
        "distill",
        "--recipe",
        recipe,
        "--out",
        out,
        "--cache-dir",
        cache,
    ])
}

/// The student in `dir` exported to ONNX, f32 and int8, run by ONNX Runtime (where a Python
/// has it; always in CI) on `texts` with kd's logits: within 1e-4, and for int8 (activations
/// quantized at run time) within 5% of the logits' scale.
fn onnx_answers_as_kd_does(dir: &std::path::Path, family: Family, texts: &[&str]) {
    let student = TaskModel::load(
        &ModelFiles::from_dir(&dir.join("student")).unwrap(),
        32,
        &Device::Cpu,
    )
    .unwrap();
    let batch = common::text_batch(&student, texts, None);
    let (ours, _) = student
        .model
        .forward(&batch.input, Mode::Inference)
        .unwrap();
    let scale = ours
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for (name, quantize, tolerance) in [
        ("onnx", None, 1e-4),
        ("onnx-int8", Some("int8"), 5e-2 * scale),
    ] {
        let (model, out) = (dir.join("student"), dir.join(name));
        let mut arguments = vec![
            "export",
            "--model",
            model.to_str().unwrap(),
            "--format",
            "onnx",
            "--out",
            out.to_str().unwrap(),
        ];
        arguments.extend(quantize.map(|q| ["--quantize", q]).into_iter().flatten());
        common::kd_ok(&arguments);
        let Some((theirs, _)) = common::onnx_runtime_logits(&out, &batch.input) else {
            return;
        };
        let difference = difference(&ours, &theirs, None);
        assert!(
            difference < tolerance,
            "{family:?} {name}: ONNX Runtime's logits {difference} from kd's"
        );
    }
}

/// Each family through the command line: `kd finetune` from a bare encoder, `kd distill` of a
/// DistilBERT-style student (the teacher's family, its first layer) and of a TinyBERT-style
/// one (BERT's architecture on the teacher's tokens), `kd export` to int8 and ONNX, and
/// `kd predict`; every model written in the family's names and config, which transformers
/// loads with kd's answers (where the reference environment exists), and ONNX Runtime runs the
/// ONNX exports with kd's logits.
#[test]
fn each_family_fine_tunes_distils_and_exports_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    sst2_subset(&data, 200, 50);
    let texts = ["a wonderful, moving film", "a dull and tedious mess"];
    for family in Family::ALL.into_iter().filter(|f| *f != Family::Bert) {
        let dir = root.path().join(family.model_type());
        let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
        common::write_tiny_family_model(&dir.join("base"), family);
        let output = finetune(&path("base"), &data, 8, &path("teacher"));
        assert!(output.status.success(), "{}", common::stderr(&output));
        looks_inside(&dir, &data, &texts);
        let recipe = dir.join("recipe.toml");
        std::fs::write(
            &recipe,
            format!(
                r#"name = "family"
[teacher]
model = "{teacher}"
[student]
kind = "distilbert"
layers = [1]
copy_head = true
[data]
task = "SST-2"
data_dir = "{data}"
max_seq_len = 32
[training]
lr = 1e-3
batch_size = 16
max_steps = 6
eval_every = 6
[[stages]]
name = "distill"
epochs = 1
[stages.objective]
temperature = 2.0
components = [{{ kind = "soft_ce", weight = 1.0 }}, {{ kind = "cosine", weight = 1.0 }}]
"#,
                teacher = path("teacher"),
                data = data.display()
            ),
        )
        .unwrap();
        let output = distill(&recipe, &path("student"), &path("cache"));
        assert!(output.status.success(), "{}", common::stderr(&output));
        // A TinyBERT-style student of this teacher: a BERT model reading the teacher's tokens.
        let tiny_recipe = dir.join("tiny.toml");
        let tiny = std::fs::read_to_string(&recipe).unwrap().replace(
            "kind = \"distilbert\"\nlayers = [1]\ncopy_head = true",
            "kind = \"tinybert\"\nshape = { layers = 1, hidden = 8, heads = 2, intermediate = 16 }",
        );
        let tiny = tiny.replace(
            "components = [{ kind = \"soft_ce\", weight = 1.0 }, { kind = \"cosine\", weight = 1.0 }]",
            "components = [{ kind = \"soft_ce\" }, { kind = \"hidden_mse\", layers = \"uniform\" }, { kind = \"attention_mse\", layers = \"uniform\" }]",
        );
        assert!(tiny.contains("tinybert") && tiny.contains("attention_mse"));
        std::fs::write(&tiny_recipe, tiny).unwrap();
        let output = distill(&tiny_recipe, &path("tiny"), &path("cache"));
        assert!(output.status.success(), "{}", common::stderr(&output));
        let tiny_config = json_file(&dir.join("tiny").join("config.json"));
        assert_eq!(tiny_config["model_type"], "bert", "{family:?}");
        let class = &tiny_config["architectures"][0];
        assert_eq!(class, "BertForSequenceClassification", "{family:?}");
        assert_eq!(tiny_config["vocab_size"], 30522, "{family:?}");
        common::kd_ok(&[
            "export",
            "--model",
            &path("student"),
            "--quantize",
            "int8",
            "--out",
            &path("int8"),
        ]);
        onnx_answers_as_kd_does(&dir, family, &texts);
        for model in ["teacher", "student", "int8"] {
            let config = json_file(&dir.join(model).join("config.json"));
            assert_eq!(config["model_type"], family.model_type(), "{model}");
            assert_eq!(
                config["architectures"][0],
                family.classification_architecture()
            );
            let names = tensor_names(&dir.join(model));
            let head = family.checkpoint_name("classifier.weight");
            assert!(names.contains(&head), "{family:?} {model}: {names:?}");
            let layers = if model == "teacher" { 2 } else { 1 };
            let layer_key = if family == Family::DistilBert {
                "n_layers"
            } else {
                "num_hidden_layers"
            };
            assert_eq!(config[layer_key], layers, "{family:?} {model}");
        }
        for model in ["student", "tiny", "int8"] {
            let mut arguments = vec!["predict", "--model"];
            let model_dir = path(model);
            arguments.push(&model_dir);
            arguments.extend(texts);
            let answers: Vec<serde_json::Value> = common::kd_ok(&arguments)
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            assert_eq!(answers.len(), 2);
            if model == "int8" {
                continue;
            }
            let Some(theirs) = common::transformers_logits(&dir.join(model), &texts) else {
                continue;
            };
            for (answer, logits) in answers.iter().zip(theirs) {
                let total: f64 = logits.iter().map(|l| l.exp()).sum();
                for (label, logit) in logits.iter().enumerate() {
                    let ours = answer["probabilities"][label.to_string()].as_f64().unwrap();
                    let difference = (ours - logit.exp() / total).abs();
                    assert!(
                        difference < 1e-5,
                        "{family:?}: {ours} against transformers' {}",
                        logit.exp() / total
                    );
                }
            }
        }
    }
}

/// General distillation (DistilBERT's objective: soft cross-entropy on the masked-LM
/// predictions, `mlm` and `cosine`) from a masked-LM teacher of each family but BERT
/// (tests/general.rs) and ELECTRA (none): the student is a masked-LM model of the teacher's
/// family, by its names, which transformers loads with kd's logits, and whose vocabulary
/// prunes with its head.
#[test]
fn each_familys_masked_lm_teacher_distils_a_masked_lm_student() {
    let root = tempfile::tempdir().unwrap();
    let corpus = root.path().join("corpus");
    common::write_corpus(&corpus);
    let ids = [101u32, 1996, 4937, 2938, 2006, 103, 13523, 1012, 102];
    for family in [
        Family::Roberta,
        Family::XlmRoberta,
        Family::DistilBert,
        Family::MpNet,
    ] {
        let dir = root.path().join(family.model_type());
        let teacher = dir.join("teacher");
        common::write_tiny_family_model(&teacher, family);
        let config = BertConfig::from_file(&teacher.join("config.json")).unwrap();
        Backbone::initialised(config, &teacher, true, 5, 32, &Device::Cpu)
            .unwrap()
            .save(&teacher)
            .unwrap();
        let recipe = dir.join("general.toml");
        std::fs::write(
            &recipe,
            format!(
                r#"name = "general-family"
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
max_steps = 4
[[stages]]
name = "general"
epochs = 1
[stages.objective]
temperature = 2.0
components = [{{ kind = "soft_ce", weight = 5.0 }}, {{ kind = "mlm", weight = 2.0 }}, {{ kind = "cosine" }}]
"#,
                teacher.display(),
                corpus.display()
            ),
        )
        .unwrap();
        let student = dir.join("student");
        let output = distill(
            &recipe,
            student.to_str().unwrap(),
            &format!("{}/cache", dir.display()),
        );
        assert!(
            output.status.success(),
            "{family:?}: {}",
            common::stderr(&output)
        );
        let config = json_file(&student.join("config.json"));
        assert_eq!(
            config["architectures"][0].as_str(),
            family.masked_lm_architecture().as_deref()
        );
        let names = tensor_names(&student);
        let head = family.checkpoint_name("cls.predictions.transform.dense.weight");
        assert!(names.contains(&head), "{family:?}: {names:?}");
        // Its vocabulary pruned to the corpus's tokens: the head's bias with the embeddings.
        let pruned = dir.join("pruned-vocabulary");
        common::kd_ok(&[
            "export",
            "--model",
            student.to_str().unwrap(),
            "--prune-vocab",
            corpus.join("brown.txt").to_str().unwrap(),
            "--out",
            pruned.to_str().unwrap(),
        ]);
        let smaller = Backbone::load(&ModelFiles::from_dir(&pruned).unwrap(), 32, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{family:?}: {e:#}"));
        assert!(smaller.mlm_head.is_some() && smaller.config.vocab_size < 30522);
        let model =
            Backbone::load(&ModelFiles::from_dir(&student).unwrap(), 32, &Device::Cpu).unwrap();
        let row = Tensor::new(&ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let input = BertInput {
            token_type_ids: row.zeros_like().unwrap(),
            attention_mask: row.ones_like().unwrap(),
            input_ids: row,
        };
        let output = model.model.forward(&input, Mode::Inference).unwrap();
        let every = Tensor::arange(0u32, ids.len() as u32, &Device::Cpu).unwrap();
        let ours = model.mlm_logits(&output, &every).unwrap();
        let Some(python) = common::reference_python("transformers reading a family's masked LM")
        else {
            continue;
        };
        let output = std::process::Command::new(python)
            .arg(common::workspace_root().join("tests/fixtures/hf_mlm_logits.py"))
            .arg(&student)
            .arg(serde_json::to_string(&[ids]).unwrap())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{family:?}: {}",
            common::stderr(&output)
        );
        let theirs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let theirs: Vec<Vec<f32>> = serde_json::from_value(theirs["logits"][0].clone()).unwrap();
        let theirs = Tensor::new(theirs, &Device::Cpu).unwrap();
        let diff = difference(&ours, &theirs, None);
        assert!(
            diff < 1e-4,
            "{family:?}: transformers' logits differ by {diff}"
        );
    }
}

/// A model whose tokenizer produces ids past its embedding matrix, and a TinyBERT-style student
/// started from a checkpoint with another vocabulary than its teacher's, are refused with
/// errors that say so before any output directory exists; so are an unsupported `model_type`
/// and pruning the vocabulary of a byte-level BPE tokenizer.
#[test]
fn bad_family_input_is_refused_before_anything_is_written() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    sst2_subset(&data, 40, 10);
    let path = |name: &str| root.path().join(name).to_str().unwrap().to_string();
    // A RoBERTa model with one config key changed, fine-tuned: the error.
    let changed = |name: &str, key: &str, value: serde_json::Value| {
        let dir = root.path().join(name);
        common::write_tiny_family_model(&dir, Family::Roberta);
        let mut config = json_file(&dir.join("config.json"));
        config[key] = value;
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let out = format!("{name}-out");
        let output = finetune(&path(name), &data, 2, &path(&out));
        let error = common::stderr(&output);
        assert!(
            !output.status.success() && !root.path().join(out).exists(),
            "{error}"
        );
        error
    };
    // Fewer embedding rows than MiniLM's tokenizer has ids.
    let error = changed("small", "vocab_size", 1000.into());
    assert!(
        error.contains("30522 tokens") && error.contains("1000 rows"),
        "{error}"
    );
    let error = changed("unknown", "model_type", "deberta-v2".into());
    assert!(
        error.contains("deberta-v2") && error.contains("mpnet"),
        "{error}"
    );

    // A RoBERTa teacher on MiniLM's vocabulary; a TinyBERT-shaped checkpoint on a WordPiece
    // vocabulary of its own.
    let base = root.path().join("base");
    common::write_tiny_family_model(&base, Family::Roberta);
    let output = finetune(&path("base"), &data, 1, &path("teacher"));
    assert!(output.status.success(), "{}", common::stderr(&output));
    let other = root.path().join("other");
    common::write_tiny_family_model(&other, Family::Bert);
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::remove_file(other.join(file)).unwrap();
    }
    std::fs::write(
        other.join("vocab.txt"),
        "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\ngood\nbad\n",
    )
    .unwrap();
    let recipe = root.path().join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            "name = \"other-vocabulary\"\n[teacher]\nmodel = \"{}\"\n[student]\nkind = \"tinybert\"\n\
             shape = {{ layers = 2, hidden = 16, heads = 2, intermediate = 32 }}\ninit = \"{}\"\n\
             [data]\ntask = \"SST-2\"\ndata_dir = \"{}\"\n[training]\nlr = 1e-3\nbatch_size = 8\nmax_steps = 1\n\
             [[stages]]\nname = \"distill\"\nepochs = 1\n[stages.objective]\ncomponents = [{{ kind = \"soft_ce\" }}]\n",
            path("teacher"),
            path("other"),
            data.display()
        ),
    )
    .unwrap();
    let output = distill(&recipe, &path("student"), &path("cache"));
    let error = common::stderr(&output);
    assert!(!output.status.success(), "{error}");
    assert!(
        error.contains("different vocabulary") && error.contains("other"),
        "{error}"
    );
    assert!(!root.path().join("student").exists());

    // A byte-level BPE tokenizer (RoBERTa's kind) has no vocabulary to prune.
    let bpe = root.path().join("bpe");
    std::fs::create_dir(&bpe).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(root.path().join("teacher").join(file), bpe.join(file)).unwrap();
    }
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "post_processor": null, "decoder": null,
        "pre_tokenizer": { "type": "ByteLevel", "add_prefix_space": false,
                           "trim_offsets": true, "use_regex": true },
        "model": { "type": "BPE", "dropout": null, "unk_token": null,
                   "continuing_subword_prefix": null, "end_of_word_suffix": null,
                   "fuse_unk": false, "byte_fallback": false,
                   "vocab": { "<s>": 0, "<pad>": 1, "</s>": 2, "g": 3, "o": 4, "d": 5 },
                   "merges": [] },
    });
    std::fs::write(bpe.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let texts = root.path().join("texts.txt");
    std::fs::write(&texts, "good\n").unwrap();
    let output = common::kd(&[
        "export",
        "--model",
        &path("bpe"),
        "--prune-vocab",
        texts.to_str().unwrap(),
        "--out",
        &path("bpe-pruned"),
    ]);
    let error = common::stderr(&output);
    assert!(
        !output.status.success() && error.contains("BPE tokenizer cannot be pruned"),
        "{error}"
    );
    assert!(!root.path().join("bpe-pruned").exists());
}
