//! Attention heads: `kd heads` scores every head (masked out, alone in its layer, Michel et
//! al.'s gradient) as JSON and heatmaps; `kd prune` removes heads physically, and the pruned
//! model gives the masked model's logits in kd and in transformers. `kd prune --ffn-size`
//! (or `--ffn-keep-ratio`) removes the least important feed-forward neurons, alone or with
//! heads, and the smaller model gives the logits of the full one with those neurons masked.

mod common;

use candle_core::{Device, Tensor};
use kd_bert::{AttentionMaps, LastLayer, Masks, Mode};
use kd_teacher::{ModelFiles, TaskModel};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const TEXTS: [&str; 3] = [
    "rain and snow all week",
    "the coach and the referee",
    "pizza again",
];

fn load(dir: &Path) -> TaskModel {
    TaskModel::load(
        &ModelFiles::resolve(dir.to_str().unwrap()).unwrap(),
        32,
        &candle_core::Device::Cpu,
    )
    .unwrap()
}

/// A tiny model fine-tuned on the topics task, everything in its own temporary directory.
struct Finetuned {
    root: tempfile::TempDir,
    /// The model before fine-tuning (`root/tiny`).
    model: PathBuf,
    /// The fine-tuned model (`root/teacher`).
    teacher: PathBuf,
    /// The task's folder and its data flags.
    data: PathBuf,
    flags: Vec<String>,
}

/// The tiny model `write` writes, fine-tuned for `epochs` on the topics task.
fn finetuned(write: impl FnOnce(&Path), epochs: usize) -> Finetuned {
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("tiny");
    write(&model);
    let (data, flags) = common::topic_task(root.path());
    let teacher = root.path().join("teacher");
    let epochs = epochs.to_string();
    let args = [
        "finetune",
        "--model",
        model.to_str().unwrap(),
        "--out",
        teacher.to_str().unwrap(),
        "--epochs",
        &epochs,
        "--lr",
        "1e-3",
    ];
    let data_flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    common::kd_ok(&[&args[..], &data_flags].concat());
    Finetuned {
        root,
        model,
        teacher,
        data,
        flags,
    }
}

/// The JSON report kd prints for the arguments `parts` make in turn.
fn kd_report(parts: &[&[&str]]) -> Value {
    serde_json::from_str(common::kd_ok(&parts.concat()).trim()).unwrap()
}

/// The logits of `model` on [`TEXTS`], heads scaled by `mask` when given.
fn logits(model: &TaskModel, mask: Option<&[Tensor]>) -> Tensor {
    outputs(model, mask).0
}

/// The logits and the last hidden states of `model` on [`TEXTS`], heads scaled by `mask`.
fn outputs(model: &TaskModel, mask: Option<&[Tensor]>) -> (Tensor, Tensor) {
    masked_outputs(model, Masks::heads(mask))
}

/// The logits and the last hidden states of `model` on [`TEXTS`], heads and feed-forward
/// neurons scaled by `masks`.
fn masked_outputs(model: &TaskModel, masks: Masks) -> (Tensor, Tensor) {
    let batch = common::text_batch(model, &TEXTS, None);
    let (logits, states) = model
        .model
        .forward_masked(
            &batch.input,
            masks,
            Mode::Inference,
            LastLayer::AllPositions,
            AttentionMaps::Keep,
        )
        .unwrap();
    (logits, states.last_hidden_state().clone())
}

#[test]
fn heads_are_scored_and_pruned_heads_answer_as_masked_ones() {
    let Finetuned {
        root,
        teacher,
        flags,
        ..
    } = finetuned(common::write_tiny_model, 2);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();

    // Every head of the 2 x 2 is scored three ways; each layer's gradient scores have unit
    // norm; the heatmaps are drawn.
    let scored = root.path().join("heads");
    let args = [
        "heads",
        "--curve",
        "--model",
        teacher.to_str().unwrap(),
        "--out",
    ];
    let report = kd_report(&[&args[..], &[scored.to_str().unwrap()], &flags]);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(scored.join("heads.json")).unwrap()).unwrap();
    assert_eq!(report, written);
    let matrix = |name: &str| -> Vec<Vec<f64>> {
        serde_json::from_value(report[name].clone()).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let (masked, gradient) = (matrix("masked"), matrix("gradient"));
    let report_baseline = report["baseline"].as_f64().unwrap();
    assert_eq!((masked.len(), masked[0].len()), (2, 2));
    assert_eq!(matrix("alone").len(), 2);
    for row in &gradient {
        let norm = row.iter().map(|g| g * g).sum::<f64>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-6 && row.iter().all(|&g| g > 0.0),
            "{row:?}"
        );
    }
    // The curve prunes a head a step (10% of 4, rounded up) until each layer has one.
    let curve: Value =
        serde_json::from_str(&std::fs::read_to_string(scored.join("curve.json")).unwrap()).unwrap();
    let heads: Vec<u64> = curve
        .as_array()
        .unwrap()
        .iter()
        .map(|point| point["heads"].as_u64().unwrap())
        .collect();
    assert_eq!(heads, [4, 3, 2]);
    assert_eq!(curve[0]["metric"], report["baseline"]);
    assert_eq!(curve[2]["pruned_share"], 0.5);
    assert!(curve[2]["latency_ms"].as_f64().unwrap() > 0.0);
    for chart in ["heads-masked", "heads-alone", "heads-gradient", "curve"] {
        for ext in ["png", "svg"] {
            let path = scored.join(format!("{chart}.{ext}"));
            assert!(
                std::fs::metadata(&path).unwrap().len() > 1000,
                "{}",
                path.display()
            );
        }
    }

    // The masking heatmap draws points lost, all heads minus masked: redrawn from scores where
    // masking one head costs 2 points and another's gains 1, they read 2.00 and -1.00 under a
    // caption that says dark blue is the important end.
    let drawn = root.path().join("drawn");
    std::fs::create_dir(&drawn).unwrap();
    let mut scores = report.clone();
    scores["baseline"] = serde_json::json!(0.9);
    scores["masked"] = serde_json::json!([[0.88, 0.9], [0.91, 0.9]]);
    std::fs::write(drawn.join("heads.json"), scores.to_string()).unwrap();
    common::kd_ok(&["heads", "--redraw", "--out", drawn.to_str().unwrap()]);
    let svg = std::fs::read_to_string(drawn.join("heads-masked.svg")).unwrap();
    let metric = report["metric"].as_str().unwrap();
    for text in [
        &format!("{metric} points lost with the head masked out (all heads: 90.00)"),
        "dark blue loses most (important)",
        "\n2.00\n",
        "\n-1.00\n",
    ] {
        assert!(svg.contains(text), "{text:?} missing from the heatmap");
    }
    assert!(!svg.contains("-2.00"));

    // Pruning head 1 of layer 0: smaller attention matrices, HF's pruned_heads, the masked
    // model's logits, and the masked model's dev metric.
    let pruned = root.path().join("pruned");
    let args = [
        "prune",
        "--model",
        teacher.to_str().unwrap(),
        "--heads",
        "0:1",
        "--out",
    ];
    let output = common::kd(&[&args[..], &[pruned.to_str().unwrap()], &flags].concat());
    let error = common::stderr(&output);
    assert!(output.status.success(), "{error}");
    // transformers 5 reads no pruned_heads: kd says which export it loads.
    let hint = format!("kd export --model {} --restore-heads", pruned.display());
    assert!(error.contains(&hint), "{error}");
    let report: Value = serde_json::from_str(common::stdout(&output).trim()).unwrap();
    assert_eq!(
        report["heads"],
        serde_json::json!({ "before": 4, "after": 3 })
    );
    let after = report["dev"]["after"]["accuracy"].as_f64().unwrap();
    assert!(
        (after - masked[0][1]).abs() < 1e-9,
        "{after} against {}",
        masked[0][1]
    );
    let (full, small) = (load(&teacher), load(&pruned));
    assert_eq!(
        small.config.pruned_heads,
        [("0".to_string(), vec![1])].into()
    );
    let query = small
        .params
        .get("bert.encoder.layer.0.attention.self.query.weight")
        .unwrap();
    assert_eq!(query.dims(), [4, 8]);
    let mask = [
        Tensor::new(&[1f32, 0.0], &Device::Cpu).unwrap(),
        Tensor::new(&[1f32, 1.0], &Device::Cpu).unwrap(),
    ];
    // The tiny model's logits hardly move (1e-5); its hidden states do (7e-3).
    let (expected, expected_states) = outputs(&full, Some(&mask));
    let (ours, our_states) = outputs(&small, None);
    assert!(common::max_abs_diff(&ours, &expected) < 1e-6);
    assert!(common::max_abs_diff(&our_states, &expected_states) < 1e-5);
    let effect = common::max_abs_diff(&outputs(&full, None).1, &expected_states);
    assert!(
        effect > 1e-3,
        "masking the head changed the states by {effect} only"
    );

    // Pruning again adds to pruned_heads; a pruned head, or a layer's last head, is refused.
    let twice = root.path().join("twice");
    let args = ["prune", "--model", pruned.to_str().unwrap(), "--out"];
    common::kd_ok(&[&args[..], &[twice.to_str().unwrap(), "--heads", "1:0"]].concat());
    let twice_model = load(&twice);
    assert_eq!(
        twice_model.config.pruned_heads,
        [("0".to_string(), vec![1]), ("1".to_string(), vec![0])].into()
    );
    let refused = root.path().join("refused");
    for (heads, message) in [("0:1", "layer 0 has no head 1"), ("0:0", "without a head")] {
        let error =
            common::kd_err(&[&args[..], &[refused.to_str().unwrap(), "--heads", heads]].concat());
        assert!(error.contains(message), "{error}");
    }
    assert!(!refused.exists());
    // Transformers 5 dropped head pruning: `kd export --restore-heads` writes the model at
    // full shape, those heads zero, with the same logits in kd and in transformers (where the
    // reference environment exists).
    let restored = root.path().join("restored");
    let args = [
        "export",
        "--model",
        twice.to_str().unwrap(),
        "--restore-heads",
        "--out",
    ];
    common::kd_ok(&[&args[..], &[restored.to_str().unwrap()]].concat());
    let full_shape = load(&restored);
    assert!(full_shape.config.pruned_heads.is_empty());
    let ours = logits(&twice_model, None);
    assert!(common::max_abs_diff(&logits(&full_shape, None), &ours) < 1e-6);
    if let Some(theirs) = common::transformers_logits(&restored, &TEXTS) {
        for (theirs, ours) in theirs.iter().zip(ours.to_vec2::<f32>().unwrap()) {
            for (theirs, ours) in theirs.iter().zip(ours) {
                assert!(
                    (theirs - ours as f64).abs() < 1e-4,
                    "{theirs} against {ours}"
                );
            }
        }
    }

    // Attention maps: a grid of a layer's heads, or one head; a pruned head is named as such.
    let maps = root.path().join("maps");
    let args = [
        "attention",
        "--model",
        twice.to_str().unwrap(),
        "rain and snow",
        "--out",
    ];
    let attention = |flags: &[&'static str]| [&args[..], &[maps.to_str().unwrap()], flags].concat();
    common::kd_ok(&attention(&["--layer", "0"]));
    common::kd_ok(&attention(&["--force", "--layer", "1", "--head", "1"]));
    for map in [
        "layer-0.png",
        "layer-0.svg",
        "layer-1-head-1.png",
        "layer-1-head-1.svg",
    ] {
        assert!(maps.join(map).is_file(), "{map}");
    }
    let unwritten = root.path().join("unwritten");
    let error = common::kd_err(
        &[
            &args[..],
            &[unwritten.to_str().unwrap(), "--layer", "1", "--head", "0"],
        ]
        .concat(),
    );
    assert!(error.contains("layer 1 has no head 0"), "{error}");
    assert!(!unwritten.exists(), "nothing written");

    // --keep-ratio 0.5 keeps one head a layer, the one with the higher gradient score.
    let half = root.path().join("half");
    let args = [
        "prune",
        "--model",
        teacher.to_str().unwrap(),
        "--keep-ratio",
        "0.5",
    ];
    common::kd_ok(&[&args[..], &["--out", half.to_str().unwrap()], &flags].concat());
    let lower = |row: &[f64]| vec![usize::from(row[1] < row[0])];
    let expected = [
        ("0".to_string(), lower(&gradient[0])),
        ("1".to_string(), lower(&gradient[1])),
    ];
    assert_eq!(load(&half).config.pruned_heads, expected.into());
    // By the masking scores kd heads wrote: the head whose masking loses less goes.
    let by_mask = root.path().join("by-mask");
    let scores = scored.join("heads.json");
    let more = [
        "--by",
        "mask",
        "--scores",
        scores.to_str().unwrap(),
        "--out",
    ];
    common::kd_ok(&[&args[..], &more, &[by_mask.to_str().unwrap()]].concat());
    let drop = |layer: usize, head: usize| report_baseline - masked[layer][head];
    let lower = |layer: usize| vec![usize::from(drop(layer, 1) < drop(layer, 0))];
    let expected = [("0".to_string(), lower(0)), ("1".to_string(), lower(1))];
    assert_eq!(load(&by_mask).config.pruned_heads, expected.into());
    // The scores of the model before a pruning are refused on the pruned one.
    let again = root.path().join("again");
    let error = common::kd_err(&[
        "prune",
        "--model",
        half.to_str().unwrap(),
        "--heads-per-layer",
        "1",
        "--scores",
        scores.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]);
    assert!(error.contains("scores other heads than"), "{error}");
    assert!(!again.exists());
}

/// Each layer's `intermediate.dense` weight (`ffn.lin1` in DistilBERT) in the
/// `model.safetensors` of `dir`, as rows.
fn ffn_rows(dir: &Path, layers: usize) -> Vec<Vec<Vec<f32>>> {
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    (0..layers)
        .map(|layer| {
            let suffixes = [
                format!("layer.{layer}.intermediate.dense.weight"),
                format!("layer.{layer}.ffn.lin1.weight"),
            ];
            let (_, weight) = tensors
                .iter()
                .find(|(name, _)| suffixes.iter().any(|s| name.ends_with(s.as_str())))
                .unwrap_or_else(|| panic!("no feed-forward weight of layer {layer}"));
            weight.to_vec2::<f32>().unwrap()
        })
        .collect()
}

/// The neurons of each layer of the model in `full` that the FFN-pruned model in `pruned`
/// kept: those whose `intermediate.dense` row it still has, in order.
fn kept_neurons(full: &Path, pruned: &Path, layers: usize) -> Vec<BTreeSet<usize>> {
    let (full, pruned) = (ffn_rows(full, layers), ffn_rows(pruned, layers));
    full.iter()
        .zip(&pruned)
        .map(|(full, pruned)| {
            let kept: Vec<usize> = pruned
                .iter()
                .map(|row| {
                    full.iter()
                        .position(|r| r == row)
                        .expect("a row not in the full model")
                })
                .collect();
            assert!(kept.windows(2).all(|w| w[0] < w[1]), "{kept:?}");
            kept.into_iter().collect()
        })
        .collect()
}

/// A neuron mask of `size` neurons a layer keeping those `kept` lists.
fn neuron_mask(kept: &[BTreeSet<usize>], size: usize) -> Vec<Tensor> {
    kept.iter()
        .map(|kept| {
            let values: Vec<f32> = (0..size).map(|n| f32::from(kept.contains(&n))).collect();
            Tensor::new(values, &Device::Cpu).unwrap()
        })
        .collect()
}

/// The logits of `pruned` against those of `full` with the neurons `pruned` lacks (and the
/// heads `head_mask` masks) masked out: within 1e-6, hidden states within 1e-5; and masking
/// those neurons changes the full model's states (so that the comparison means something).
fn assert_answers_as_masked(
    full: &TaskModel,
    pruned: &TaskModel,
    kept: &[BTreeSet<usize>],
    head_mask: Option<&[Tensor]>,
) {
    let neurons = neuron_mask(kept, full.config.intermediate_size);
    let masks = Masks {
        heads: head_mask,
        neurons: Some(&neurons),
    };
    let (expected, expected_states) = masked_outputs(full, masks);
    let (ours, our_states) = outputs(pruned, None);
    let logits = common::max_abs_diff(&ours, &expected);
    let states = common::max_abs_diff(&our_states, &expected_states);
    assert!(logits < 1e-6, "logits differ by {logits}");
    assert!(states < 1e-5, "hidden states differ by {states}");
    let effect = common::max_abs_diff(&outputs(full, head_mask).1, &expected_states);
    assert!(
        effect > 1e-4,
        "masking the neurons changed the states by {effect} only"
    );
}

/// kd's logits of the model in `dir` on [`TEXTS`] against transformers', where the reference
/// environment exists.
fn assert_transformers_agree(dir: &Path) {
    let ours = logits(&load(dir), None);
    if let Some(theirs) = common::transformers_logits(dir, &TEXTS) {
        for (theirs, ours) in theirs.iter().zip(ours.to_vec2::<f32>().unwrap()) {
            for (theirs, ours) in theirs.iter().zip(ours) {
                assert!(
                    (theirs - ours as f64).abs() < 1e-4,
                    "{theirs} against {ours}"
                );
            }
        }
    }
}

#[test]
fn ffn_neurons_are_pruned_by_gradient_importance_alone_and_with_heads() {
    let Finetuned {
        root,
        teacher,
        data,
        flags,
        ..
    } = finetuned(common::write_tiny_model, 2);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let prune = ["prune", "--model", teacher.to_str().unwrap(), "--out"];

    // Bad input: a clear error naming the flag, and no output directory.
    let refused = root.path().join("refused");
    let refused_args = [&prune[..], &[refused.to_str().unwrap()]].concat();
    for (bad, message) in [
        (
            &["--ffn-keep-ratio", "0"][..],
            "--ffn-keep-ratio 0 must lie in (0, 1]",
        ),
        (
            &["--ffn-keep-ratio", "1.5"],
            "--ffn-keep-ratio 1.5 must lie in (0, 1]",
        ),
        (&["--keep-ratio", "0"], "--keep-ratio 0 must lie in (0, 1]"),
        (
            &["--keep-ratio", "-0.5"],
            "--keep-ratio -0.5 must lie in (0, 1]",
        ),
        (&[], "<--heads <HEADS>|--keep-ratio <KEEP_RATIO>|"),
        (
            &["--keep-ratio", "1.2"],
            "--keep-ratio 1.2 must lie in (0, 1]",
        ),
        (&["--ffn-size", "0"], "--ffn-size 0 must lie between 1 and"),
        (
            &["--ffn-size", "17"],
            "--ffn-size 17 must lie between 1 and the model's intermediate size, 16",
        ),
        (
            &["--heads-per-layer", "3"],
            "--heads-per-layer 3 must lie between 1 and the heads a layer of the model has, 2",
        ),
        (
            &["--heads-per-layer", "0"],
            "--heads-per-layer 0 must lie between 1",
        ),
        (
            &["--heads-per-layer", "1", "--keep-ratio", "0.5"],
            "--heads-per-layer",
        ),
        (
            &["--ffn-size", "4", "--ffn-keep-ratio", "0.5"],
            "--ffn-size",
        ),
    ] {
        let error = common::kd_err(&[&refused_args[..], bad, &flags].concat());
        assert!(error.contains(message), "{bad:?}: {error}");
        assert!(!refused.exists(), "{bad:?} created the output directory");
    }
    let error = common::kd_err(&[&refused_args[..], &["--ffn-size", "8"]].concat());
    assert!(
        error.contains("--ffn-size rank the feed-forward neurons"),
        "{error}"
    );
    assert!(!refused.exists());

    // --ffn-size 10: every layer keeps 10 of its 16 neurons, the report says so, and the
    // smaller model answers as the full one with the other 6 masked out.
    let ffn = root.path().join("ffn");
    let args = [&prune[..], &[ffn.to_str().unwrap(), "--ffn-size", "10"]].concat();
    let report = kd_report(&[&args[..], &flags]);
    assert_eq!(
        report["ffn"],
        serde_json::json!({ "before": 16, "after": 10 })
    );
    let written = std::fs::read_to_string(ffn.join("prune.json")).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&written).unwrap(), report);
    assert_eq!(
        report["heads"],
        serde_json::json!({ "before": 4, "after": 4 })
    );
    let (before, after) = (
        report["params"]["before"].as_u64().unwrap(),
        report["params"]["after"].as_u64().unwrap(),
    );
    // Per layer and neuron: a row of 8 and a bias in, a column of 8 out.
    assert_eq!(before - after, 2 * 6 * 17);
    for when in ["before", "after"] {
        assert!(report["dev"][when]["accuracy"].is_number(), "{report}");
    }
    let (full, small) = (load(&teacher), load(&ffn));
    assert_eq!(small.config.intermediate_size, 10);
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(ffn.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["intermediate_size"], 10);
    let kept = kept_neurons(&teacher, &ffn, 2);
    assert!(kept.iter().all(|k| k.len() == 10));
    assert_answers_as_masked(&full, &small, &kept, None);
    // The same dev metric as the masked model.
    let after = report["dev"]["after"]["accuracy"].as_f64().unwrap();
    let spec = kd_data::TaskSpec::custom(
        "topics",
        "text",
        None,
        "topic",
        kd_data::TaskKind::Classification,
    );
    let mut labels = full.dataset_labels();
    let dev = full
        .encode(&spec.read(&data.join("dev.tsv"), &mut labels).unwrap())
        .unwrap();
    let indices: Vec<usize> = (0..dev.len()).collect();
    let batch = kd_data::collate(&dev, &indices, &Device::Cpu).unwrap();
    let masked_accuracy = {
        let neurons = neuron_mask(&kept, 16);
        let masks = Masks {
            heads: None,
            neurons: Some(&neurons),
        };
        let logits = full
            .model
            .logits_masked(&batch.input, masks, Mode::Inference)
            .unwrap();
        let predicted = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
        let gold = batch.labels.to_vec1::<u32>().unwrap();
        let right = predicted.iter().zip(&gold).filter(|(p, g)| p == g).count();
        right as f64 / gold.len() as f64
    };
    assert!(
        (after - masked_accuracy).abs() < 1e-9,
        "{after} against {masked_accuracy}"
    );
    // The neurons kept are those with the largest mean |d loss / d mask| on the dev set (one
    // batch of the 60 examples, as kd scored them).
    let variables: Vec<candle_core::Var> = (0..2)
        .map(|_| candle_core::Var::ones(16, candle_core::DType::F32, &Device::Cpu).unwrap())
        .collect();
    let tensors: Vec<Tensor> = variables.iter().map(|v| v.as_tensor().clone()).collect();
    let masks = Masks {
        heads: None,
        neurons: Some(&tensors),
    };
    let logits = full
        .model
        .logits_masked(&batch.input, masks, Mode::Train { dropout: false })
        .unwrap();
    let loss =
        kd_teacher::task_loss(kd_data::TaskKind::Classification, &logits, &batch.labels).unwrap();
    let grads = loss.backward().unwrap();
    for (layer, variable) in variables.iter().enumerate() {
        let scores: Vec<f32> = grads.get(variable).unwrap().to_vec1::<f32>().unwrap();
        let scores: Vec<f32> = scores.iter().map(|g| g.abs()).collect();
        let lowest_kept = kept[layer]
            .iter()
            .map(|&n| scores[n])
            .fold(f32::MAX, f32::min);
        let highest_removed = (0..16)
            .filter(|n| !kept[layer].contains(n))
            .map(|n| scores[n])
            .fold(0.0, f32::max);
        assert!(
            lowest_kept >= highest_removed * (1.0 - 1e-4),
            "layer {layer}: kept {:?} of {scores:?}",
            kept[layer]
        );
        assert!(lowest_kept > 0.0, "layer {layer}: {scores:?}");
    }
    // Transformers loads the smaller model (an ordinary config, intermediate_size 10) with
    // kd's logits; kd prunes it again.
    assert_transformers_agree(&ffn);
    let again = root.path().join("again");
    let args = [
        "prune",
        "--model",
        ffn.to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ];
    common::kd_ok(&[&args[..], &["--ffn-keep-ratio", "0.5"], &flags].concat());
    assert_eq!(load(&again).config.intermediate_size, 5);

    // Heads and neurons in one command: one head a layer (the higher gradient score, as
    // --keep-ratio 0.5 chooses) and half the neurons (as --ffn-keep-ratio 0.5 alone chooses).
    let both = root.path().join("both");
    let args = [
        &prune[..],
        &[
            both.to_str().unwrap(),
            "--heads-per-layer",
            "1",
            "--ffn-keep-ratio",
            "0.5",
        ],
    ]
    .concat();
    let report = kd_report(&[&args[..], &flags]);
    assert_eq!(
        report["heads"],
        serde_json::json!({ "before": 4, "after": 2 })
    );
    assert_eq!(
        report["ffn"],
        serde_json::json!({ "before": 16, "after": 8 })
    );
    let (heads_only, ffn_only) = (root.path().join("heads-only"), root.path().join("ffn-only"));
    let args = [
        &prune[..],
        &[heads_only.to_str().unwrap(), "--keep-ratio", "0.5"],
    ]
    .concat();
    common::kd_ok(&[&args[..], &flags].concat());
    let args = [
        &prune[..],
        &[ffn_only.to_str().unwrap(), "--ffn-keep-ratio", "0.5"],
    ]
    .concat();
    common::kd_ok(&[&args[..], &flags].concat());
    let combined = load(&both);
    assert_eq!(
        combined.config.pruned_heads,
        load(&heads_only).config.pruned_heads
    );
    assert_eq!(combined.config.pruned_heads.len(), 2);
    assert_eq!(combined.config.intermediate_size, 8);
    let kept = kept_neurons(&teacher, &both, 2);
    assert_eq!(kept, kept_neurons(&teacher, &ffn_only, 2));
    let head_mask: Vec<Tensor> = (0..2)
        .map(|layer| {
            let pruned = &combined.config.pruned_heads[&layer.to_string()];
            let values: Vec<f32> = (0..2).map(|h| f32::from(!pruned.contains(&h))).collect();
            Tensor::new(values, &Device::Cpu).unwrap()
        })
        .collect();
    assert_answers_as_masked(&full, &combined, &kept, Some(&head_mask));

    // Iterative: --steps 2 goes half way (12 neurons, still 2 heads a layer), ranks the rest
    // again, then goes the whole way; the same model as those two prunes run one after the
    // other, and prune.json gives each step.
    let error = common::kd_err(
        &[
            &refused_args[..],
            &["--ffn-size", "8", "--steps", "0"],
            &flags,
        ]
        .concat(),
    );
    assert!(error.contains("--steps 0 must be at least 1"), "{error}");
    let error = common::kd_err(
        &[
            &refused_args[..],
            &["--heads", "0:1", "--steps", "2"],
            &flags,
        ]
        .concat(),
    );
    assert!(error.contains("--steps"), "{error}");
    assert!(!refused.exists());
    let goal = ["--heads-per-layer", "1", "--ffn-size", "8"];
    let iterative = root.path().join("iterative");
    let args = [
        &prune[..],
        &[iterative.to_str().unwrap(), "--steps", "2"],
        &goal,
    ]
    .concat();
    let report = kd_report(&[&args[..], &flags]);
    let steps: Vec<(u64, u64)> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|step| {
            assert!(step["dev"]["accuracy"].is_number(), "{step}");
            (
                step["heads"].as_u64().unwrap(),
                step["ffn"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(steps, [(4, 12), (2, 8)]);
    let (half, rest) = (root.path().join("half"), root.path().join("rest"));
    let args = [&prune[..], &[half.to_str().unwrap(), "--ffn-size", "12"]].concat();
    common::kd_ok(&[&args[..], &flags].concat());
    let args = [
        &[
            "prune",
            "--model",
            half.to_str().unwrap(),
            "--out",
            rest.to_str().unwrap(),
        ],
        &goal[..],
    ]
    .concat();
    common::kd_ok(&[&args[..], &flags].concat());
    for file in ["model.safetensors", "config.json"] {
        let read = |dir: &Path| std::fs::read(dir.join(file)).unwrap();
        assert!(read(&iterative) == read(&rest), "{file} differs");
    }
    assert_eq!(load(&iterative).config.pruned_heads.len(), 2);
}

/// Another family than BERT: a DistilBERT task model loses half of its `ffn.lin1`/`ffn.lin2`
/// neurons, its config's `hidden_dim` shrinks, and it reloads (in kd and transformers) with
/// the masked model's logits.
#[test]
fn a_distilbert_model_prunes_its_feed_forward_neurons() {
    let distilbert = |dir: &Path| common::write_tiny_family_model(dir, kd_bert::Family::DistilBert);
    let Finetuned {
        root,
        teacher,
        flags,
        ..
    } = finetuned(distilbert, 1);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let pruned = root.path().join("pruned");
    let args = [
        "prune",
        "--model",
        teacher.to_str().unwrap(),
        "--ffn-keep-ratio",
        "0.5",
        "--out",
        pruned.to_str().unwrap(),
    ];
    let report = kd_report(&[&args[..], &flags]);
    assert_eq!(
        report["ffn"],
        serde_json::json!({ "before": 32, "after": 16 })
    );
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(pruned.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["hidden_dim"], 16, "{config}");
    let tensors =
        candle_core::safetensors::load(pruned.join("model.safetensors"), &Device::Cpu).unwrap();
    let lin2 = tensors
        .iter()
        .find(|(name, _)| name.ends_with("layer.1.ffn.lin2.weight"))
        .map(|(_, t)| t.dims().to_vec());
    assert_eq!(lin2, Some(vec![16, 16]));
    let (full, small) = (load(&teacher), load(&pruned));
    assert_eq!(small.config.intermediate_size, 16);
    let kept = kept_neurons(&teacher, &pruned, 2);
    assert_answers_as_masked(&full, &small, &kept, None);
    assert_transformers_agree(&pruned);
}

/// Writes a recipe into `path` that distils the task model in `student` as it is (`kind =
/// "model"`) from `teacher` on the topics task in `data`: one stage of soft targets (T = 2)
/// and every layer's hidden states.
fn write_recovery_recipe(path: &Path, teacher: &Path, student: &Path, data: &Path) {
    let recipe = format!(
        "name = \"recover\"\n[teacher]\nmodel = \"{}\"\n[student]\nkind = \"model\"\n\
         model = \"{}\"\n[data]\ntask = \"topics\"\ndata_dir = \"{}\"\ntext_column = \"text\"\n\
         label_column = \"topic\"\nmax_seq_len = 32\n[training]\nlr = 1e-3\nbatch_size = 4\n\
         [[stages]]\nname = \"recover\"\nepochs = 8\n[stages.objective]\ntemperature = 2.0\n\
         components = [{{ kind = \"soft_ce\" }}, {{ kind = \"hidden_mse\", layers = \"uniform\" }}]\n",
        teacher.display(),
        student.display(),
        data.display()
    );
    std::fs::write(path, recipe).unwrap();
}

/// `kd distill`'s arguments for `recipe` into `out`, with `--set` overrides.
fn distill_args(recipe: &Path, out: &Path, cache: &Path, overrides: &[&str]) -> Vec<String> {
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let mut args = vec![
        "distill".to_string(),
        "--recipe".into(),
        path(recipe),
        "--out".into(),
        path(out),
        "--cache-dir".into(),
        path(cache),
    ];
    for value in overrides {
        args.extend(["--set".to_string(), value.to_string()]);
    }
    args
}

/// Runs `kd distill` with `args` and returns the summary it prints.
fn distill(args: &[String]) -> Value {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    kd_report(&[&args])
}

/// Writes a copy of the model in `from` into `to` whose tokenizer gives two tokens each
/// other's ids: the same size of vocabulary, other words.
fn write_swapped_vocabulary(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
    let file = to.join("tokenizer.json");
    let mut tokenizer: Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let vocab = &mut tokenizer["model"]["vocab"];
    let (rain, snow) = (vocab["rain"].clone(), vocab["snow"].clone());
    assert!(rain.is_u64() && snow.is_u64(), "{rain} {snow}");
    vocab["rain"] = snow;
    vocab["snow"] = rain;
    std::fs::write(&file, tokenizer.to_string()).unwrap();
}

/// Recovery after pruning: a fine-tuned teacher pruned (a head and 6 of 16 FFN neurons a
/// layer) is the student as it is, distilled from the unpruned teacher on soft targets and
/// hidden states. It keeps its pruned heads, FFN size and parameter count through training,
/// an interrupted run's `--resume` and the saved model, which reloads in kd with the dev
/// metric the run reported. A student that cannot learn from the teacher (missing, another
/// vocabulary or labels, a layer mapping beyond its depth, attention compared between layers
/// with different head counts) is refused before the output directory exists.
#[test]
fn a_pruned_model_recovers_by_distillation_from_the_unpruned_one() {
    let Finetuned {
        root,
        model: tiny,
        teacher,
        data,
        flags,
    } = finetuned(common::write_tiny_model, 2);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let pruned = root.path().join("pruned");
    let args = [
        "prune",
        "--model",
        teacher.to_str().unwrap(),
        "--heads",
        "0:1",
        "--ffn-size",
        "10",
        "--out",
        pruned.to_str().unwrap(),
    ];
    let report = kd_report(&[&args[..], &flags]);
    let pruned_params = report["params"]["after"].as_u64().unwrap();
    assert!(pruned_params < report["params"]["before"].as_u64().unwrap());

    let recipe = root.path().join("recover.toml");
    write_recovery_recipe(&recipe, &teacher, &pruned, &data);
    let cache = root.path().join("cache");
    let out = root.path().join("recovered");
    let summary = distill(&distill_args(&recipe, &out, &cache, &[]));
    assert_eq!(summary["student"]["params"].as_u64(), Some(pruned_params));
    // 240 examples in batches of 4 for 8 epochs (long enough to interrupt below), each
    // step's loss and components logged.
    let log = out.join("1-recover/log.jsonl");
    let steps = summary["stages"][0]["steps"].as_u64().unwrap() as usize;
    assert_eq!(steps, 480);
    for name in ["loss", "soft_ce", "hidden_mse"] {
        let values = common::logged(&log, name);
        assert_eq!(values.len(), steps, "{name}");
        assert!(values.iter().all(|v| v.is_finite()), "{name}: {values:?}");
    }
    assert!(common::logged(&log, "hidden_mse")[0] > 0.0);

    // The saved student is the pruned model's shape, trained: its config keeps pruned_heads
    // and the smaller FFN, kd reloads it with the reported dev metric, and its logits moved.
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["pruned_heads"], serde_json::json!({ "0": [1] }));
    assert_eq!(config["intermediate_size"], 10);
    let recovered = load(&out);
    assert_eq!(recovered.params.num_parameters() as u64, pruned_params);
    assert_eq!(recovered.config.heads_in_layer(0), 1);
    let eval_args = ["eval", "--model", out.to_str().unwrap()];
    let eval = kd_report(&[&eval_args[..], &flags]);
    assert_eq!(
        eval["metrics"]["accuracy"], summary["student"]["dev"]["accuracy"],
        "{eval}"
    );
    let moved = common::max_abs_diff(&logits(&recovered, None), &logits(&load(&pruned), None));
    assert!(
        moved > 1e-4,
        "training left the logits as they were ({moved})"
    );
    // Transformers 5 has no pruned_heads: restored to full shape, it gives kd's logits.
    let restored = root.path().join("restored");
    let args = [
        "export",
        "--model",
        out.to_str().unwrap(),
        "--restore-heads",
    ];
    common::kd_ok(&[&args[..], &["--out", restored.to_str().unwrap()]].concat());
    let restored_logits = logits(&load(&restored), None);
    assert!(common::max_abs_diff(&restored_logits, &logits(&recovered, None)) < 1e-6);
    assert_transformers_agree(&restored);

    // Interrupted mid-stage and resumed: the same student as the straight run.
    let resumed = root.path().join("resumed");
    let run = distill_args(&recipe, &resumed, &cache, &[]);
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let mut command = common::kd_command(&run);
    command.stdout(std::process::Stdio::null());
    let resumed_log = resumed.join("1-recover/log.jsonl");
    let output = common::interrupt_after(command, &resumed_log, 10, libc::SIGINT);
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        common::stderr(&output)
    );
    assert!(common::logged_steps(&resumed_log) < steps);
    common::kd_ok(&[&run[..], &["--resume"]].concat());
    for file in ["config.json", "model.safetensors"] {
        let read = |dir: &Path| std::fs::read(dir.join(file)).unwrap();
        assert!(
            read(&out) == read(&resumed),
            "the resumed student's {file} differs"
        );
    }

    // Refused before anything is written, saying why.
    let two_labels = root.path().join("two-labels");
    std::fs::create_dir_all(&two_labels).unwrap();
    let labels = ["a".to_string(), "b".to_string()];
    let resolved = ModelFiles::resolve(tiny.to_str().unwrap()).unwrap();
    let classification = kd_data::TaskKind::Classification;
    TaskModel::from_backbone(&resolved, classification, &labels, 1, 32, &Device::Cpu)
        .unwrap()
        .save(&two_labels)
        .unwrap();
    let other_vocabulary = root.path().join("other-vocabulary");
    write_swapped_vocabulary(&pruned, &other_vocabulary);
    let nowhere = root.path().join("nowhere");
    let model = |dir: &Path| format!("student.model={}", dir.display());
    let components = |list: &str| format!("stages.0.objective.components={list}");
    let refused = root.path().join("refused");
    for (set, message) in [
        (
            model(&nowhere),
            format!("cannot take {}", nowhere.display()),
        ),
        (model(&two_labels), "answers with 2 labels".to_string()),
        (model(&other_vocabulary), "different vocabulary".to_string()),
        (
            components("[{ kind = \"hidden_mse\", layers = { explicit = [[7, 7]] } }]"),
            "names student layer 7, the student has 2".to_string(),
        ),
        (
            components("[{ kind = \"attention_mse\", layers = \"uniform\" }]"),
            "student layer 1 (heads: 1) with those of teacher layer 1 (heads: 2)".to_string(),
        ),
    ] {
        let args = distill_args(&recipe, &refused, &cache, &[&set]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let error = common::kd_err(&args);
        assert!(error.contains(&message), "{set}: {error}");
        assert!(!refused.exists(), "{set} created the output directory");
    }
}
