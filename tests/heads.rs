//! Attention heads: `kd heads` scores every head (masked out, alone in its layer, Michel et
//! al.'s gradient) as JSON and heatmaps; `kd prune` removes heads physically, and the pruned
//! model gives the masked model's logits in kd and in transformers.

mod common;

use candle_core::{Device, Tensor};
use kd_teacher::{ModelFiles, TaskModel};
use serde_json::Value;
use std::path::Path;

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

/// The logits of `model` on [`TEXTS`], heads scaled by `mask` when given.
fn logits(model: &TaskModel, mask: Option<&[Tensor]>) -> Tensor {
    outputs(model, mask).0
}

/// The logits and the last hidden states of `model` on [`TEXTS`], heads scaled by `mask`.
fn outputs(model: &TaskModel, mask: Option<&[Tensor]>) -> (Tensor, Tensor) {
    let batch = common::text_batch(model, &TEXTS, None);
    let (logits, states) = model
        .model
        .forward_with_head_mask(&batch.input, mask, kd_bert::Mode::Inference)
        .unwrap();
    (logits, states.last_hidden_state().clone())
}

#[test]
fn heads_are_scored_and_pruned_heads_answer_as_masked_ones() {
    let root = tempfile::tempdir().unwrap();
    let tiny = root.path().join("tiny");
    common::write_tiny_model(&tiny);
    let (_, flags) = common::topic_task(root.path());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let teacher = root.path().join("teacher");
    let mut args = vec!["finetune", "--model", tiny.to_str().unwrap(), "--out"];
    args.extend([teacher.to_str().unwrap(), "--epochs", "2", "--lr", "1e-3"]);
    common::kd_ok(&[&args[..], &flags].concat());

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
    let report: Value = serde_json::from_str(
        common::kd_ok(&[&args[..], &[scored.to_str().unwrap()], &flags].concat()).trim(),
    )
    .unwrap();
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
    let report: Value = serde_json::from_str(
        common::kd_ok(&[&args[..], &[pruned.to_str().unwrap()], &flags].concat()).trim(),
    )
    .unwrap();
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
    let error = common::kd_err(&attention(&["--force", "--layer", "1", "--head", "0"]));
    assert!(error.contains("layer 1 has no head 0"), "{error}");

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
}
