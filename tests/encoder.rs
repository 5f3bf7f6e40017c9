//! The encoder against PyTorch transformers (reference numbers made by
//! tests/fixtures/make_bert_reference.py), its gradients, and sentence embeddings through the
//! hub cache.

mod common;

use candle_core::{DType, Device, Tensor};
use kd_bert::{
    AttentionMaps, BertConfig, BertForSequenceClassification, BertInput, BertModel, FrozenWeights,
    LastLayer, Mode, Params, Precision,
};
use kd_data::TextTokenizer;
use std::collections::HashMap;
use std::path::PathBuf;

const TOLERANCE: f32 = 1e-4;

fn fixture() -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/minilm_reference.safetensors");
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn minilm() -> BertModel {
    let dir = common::minilm_dir();
    let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
    let params = Params::new(&Device::Cpu);
    let model = BertModel::new(&config, params.var_builder(), true).unwrap();
    let report = params
        .load(&dir.join("model.safetensors"), |_| false)
        .unwrap();
    assert_eq!(report.unused, vec!["embeddings.position_ids".to_string()]);
    model
}

fn input(fixture: &HashMap<String, Tensor>, case: &str) -> BertInput {
    let ids = |name: &str| {
        fixture[&format!("{case}.{name}")]
            .to_dtype(DType::U32)
            .unwrap()
    };
    BertInput {
        input_ids: ids("input_ids"),
        token_type_ids: ids("token_type_ids"),
        attention_mask: ids("attention_mask"),
    }
}

#[test]
fn every_intermediate_matches_pytorch_on_both_paths() {
    let model = minilm();
    let mut frozen = minilm();
    frozen.freeze(FrozenWeights::F32).unwrap();
    let fixture = fixture();
    for case in ["single", "pair", "batch"] {
        let input = input(&fixture, case);
        let runs = [
            (&model, Mode::Inference),
            (&model, Mode::Train { dropout: false }),
            (&frozen, Mode::Inference),
        ];
        for (model, mode) in runs {
            let output = model.forward(&input, mode).unwrap();
            let check = |name: String, ours: &Tensor| {
                let diff = common::max_abs_diff(ours, &fixture[&name]);
                assert!(diff <= TOLERANCE, "{name} ({mode:?}): max abs diff {diff}");
            };
            // Hidden states are compared at real tokens: the states of padding positions are
            // never used, and their values drift by up to 1.2e-4 between implementations.
            let real = input
                .attention_mask
                .to_dtype(DType::F32)
                .unwrap()
                .unsqueeze(2)
                .unwrap();
            let check_tokens = |name: String, ours: &Tensor| {
                let ours = ours.broadcast_mul(&real).unwrap();
                let theirs = fixture[&name].broadcast_mul(&real).unwrap();
                let diff = common::max_abs_diff(&ours, &theirs);
                assert!(diff <= TOLERANCE, "{name} ({mode:?}): max abs diff {diff}");
            };
            check_tokens(format!("{case}.hidden.0"), &output.embeddings);
            for (layer, hidden) in output.hidden_states.iter().enumerate() {
                check_tokens(format!("{case}.hidden.{}", layer + 1), hidden);
            }
            assert_eq!(output.attention_probs.len(), 6);
            for (layer, probs) in output.attention_probs.iter().enumerate() {
                check(format!("{case}.attention.{layer}"), probs);
            }
            check(format!("{case}.pooler"), output.pooled.as_ref().unwrap());
            check(
                format!("{case}.mean_pooled"),
                &output.mean_pooled(&input.attention_mask).unwrap(),
            );
            // Without the attention maps, each head's attention fused: the same states.
            let fused = model
                .forward_with(&input, mode, AttentionMaps::Skip)
                .unwrap();
            assert!(fused.attention_scores.is_empty() && fused.attention_probs.is_empty());
            for (layer, hidden) in fused.hidden_states.iter().enumerate() {
                check_tokens(format!("{case}.hidden.{}", layer + 1), hidden);
            }
            check(format!("{case}.pooler"), fused.pooled.as_ref().unwrap());
            // The last layer at [CLS] alone: the same [CLS] state and pooled output.
            let cls_only = model
                .forward_masked(
                    &input,
                    Default::default(),
                    mode,
                    LastLayer::ClsOnly,
                    AttentionMaps::Skip,
                )
                .unwrap();
            let last = cls_only.last_hidden_state();
            assert_eq!(last.dim(1).unwrap(), 1);
            let expected = fixture[&format!("{case}.hidden.6")]
                .narrow(1, 0, 1)
                .unwrap();
            let diff = common::max_abs_diff(last, &expected);
            assert!(diff <= TOLERANCE, "{case} [CLS] only ({mode:?}): {diff}");
            check(format!("{case}.pooler"), cls_only.pooled.as_ref().unwrap());
        }
    }
}

#[test]
fn attention_scores_are_masked_before_the_softmax() {
    let model = minilm();
    let fixture = fixture();
    let input = input(&fixture, "batch");
    let output = model.forward(&input, Mode::Inference).unwrap();
    let mask = input.attention_mask.to_vec2::<u32>().unwrap();
    let scores = output.attention_scores[0].to_dtype(DType::F32).unwrap();
    let scores: Vec<Vec<Vec<Vec<f32>>>> = (0..3)
        .map(|b| scores.get(b).unwrap().to_vec3().unwrap())
        .collect();
    for (b, row) in mask.iter().enumerate() {
        for (key, &m) in row.iter().enumerate() {
            let score = scores[b][0][0][key];
            if m == 0 {
                assert!(
                    score < -1e30,
                    "padding key {key} of example {b} has score {score}"
                );
            } else {
                assert!(
                    score.abs() < 100.0,
                    "real key {key} of example {b} has score {score}"
                );
            }
        }
    }
    // Softmax of the scores gives the probabilities.
    let probs = candle_nn::ops::softmax_last_dim(&output.attention_scores[2]).unwrap();
    assert!(common::max_abs_diff(&probs, &output.attention_probs[2]) < 1e-6);
}

#[test]
fn tokenizer_matches_hf() {
    let fixture = fixture();
    let tokenizer = TextTokenizer::from_dir(&common::minilm_dir(), 128).unwrap();
    let single = tokenizer
        .encode("The quick brown fox jumps over the lazy dog.", None)
        .unwrap();
    let expected: Vec<u32> = fixture["single.input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(single.ids, expected);
    let pair = tokenizer
        .encode(
            "A man is playing a guitar.",
            Some("Someone plays an instrument on a stage."),
        )
        .unwrap();
    let row = |name: &str| -> Vec<u32> {
        fixture[&format!("pair.{name}")]
            .to_dtype(DType::U32)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(pair.ids, row("input_ids"));
    assert_eq!(pair.type_ids, row("token_type_ids"));
    // Truncation keeps [CLS] ... [SEP] within the limit.
    let short = TextTokenizer::from_dir(&common::minilm_dir(), 6).unwrap();
    let truncated = short
        .encode("one two three four five six seven", None)
        .unwrap();
    assert_eq!(truncated.ids.len(), 6);
    assert_eq!(truncated.ids[0], 101);
    assert_eq!(truncated.ids[5], 102);
}

/// A small random BERT with a classification head.
fn tiny_classifier() -> (Params, BertForSequenceClassification) {
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 16,
        "type_vocab_size": 2,
    }))
    .unwrap();
    let params = Params::new(&Device::Cpu);
    let model = BertForSequenceClassification::new(&config, 3, params.var_builder()).unwrap();
    params.init_bert(0.2, 7).unwrap();
    (params, model)
}

fn tiny_batch() -> (BertInput, Tensor) {
    let device = Device::Cpu;
    let input = BertInput {
        input_ids: Tensor::new(&[[1u32, 5, 9, 2, 0], [1, 7, 2, 8, 2]], &device).unwrap(),
        token_type_ids: Tensor::new(&[[0u32, 0, 0, 0, 0], [0, 0, 0, 1, 1]], &device).unwrap(),
        attention_mask: Tensor::new(&[[1u32, 1, 1, 1, 0], [1, 1, 1, 1, 1]], &device).unwrap(),
    };
    (input, Tensor::new(&[2u32, 0], &device).unwrap())
}

/// A tiny random encoder of `model_type` ("mpnet" adds its relative-position bias) whose
/// first layer lost head 1 of its 4 to pruning.
fn tiny_pruned_encoder(model_type: &str) -> (Params, BertModel) {
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "model_type": model_type, "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 32, "max_position_embeddings": 16,
        "type_vocab_size": 2, "pruned_heads": { "0": [1] },
    }))
    .unwrap();
    let params = Params::new(&Device::Cpu);
    let model = BertModel::new(&config, params.var_builder(), false).unwrap();
    params.init_bert(0.2, 7).unwrap();
    (params, model)
}

/// MiniLM's relation losses read each layer's query, key and value projections: on both
/// kernel paths, in both modes, with and without MPNet's relative bias, they are the layer's
/// dense layers applied to its input (the remaining heads only where some were pruned), kept
/// only when asked for, and keeping them changes nothing else.
#[test]
fn kept_projections_are_each_layers_query_key_and_value_of_its_input() {
    use kd_bert::kernels::force_generic;
    let (input, _) = tiny_batch();
    for model_type in ["bert", "mpnet"] {
        let (params, model) = tiny_pruned_encoder(model_type);
        for (generic, mode) in [false, true].into_iter().flat_map(|generic| {
            [Mode::Inference, Mode::Train { dropout: false }].map(|mode| (generic, mode))
        }) {
            let case = format!("{model_type}, generic {generic}, {mode:?}");
            let pass = |maps| {
                let pass = || model.forward_with(&input, mode, maps).unwrap();
                if generic { force_generic(pass) } else { pass() }
            };
            let (kept, with_maps) = (
                pass(AttentionMaps::Projections),
                pass(AttentionMaps::KeepWithProjections),
            );
            assert!(kept.attention_scores.is_empty(), "{case}");
            assert_eq!(with_maps.attention_scores.len(), 2, "{case}");
            assert!(pass(AttentionMaps::Keep).attention_projections.is_empty());
            assert!(pass(AttentionMaps::Skip).attention_projections.is_empty());
            let skipped = pass(AttentionMaps::Skip);
            let diff = common::max_abs_diff(kept.last_hidden_state(), skipped.last_hidden_state());
            assert!(diff <= 1e-6, "{case}: {diff}");
            assert_eq!(kept.attention_projections.len(), 2, "{case}");
            for (layer, projections) in kept.attention_projections.iter().enumerate() {
                let layer_input = kept.layer(layer);
                let both = &with_maps.attention_projections[layer];
                for (name, kept, both) in [
                    ("query", &projections.query, &both.query),
                    ("key", &projections.key, &both.key),
                    ("value", &projections.value, &both.value),
                ] {
                    let dense = format!("encoder.layer.{layer}.attention.self.{name}");
                    let weight = params.get(&format!("{dense}.weight")).unwrap();
                    let bias = params.get(&format!("{dense}.bias")).unwrap();
                    let expected = layer_input
                        .broadcast_matmul(&weight.as_tensor().t().unwrap())
                        .unwrap()
                        .broadcast_add(bias.as_tensor())
                        .unwrap();
                    // Four heads of 4, three left in the first layer.
                    let width = if layer == 0 { 12 } else { 16 };
                    assert_eq!(kept.dims(), [2, 5, width], "{case}: {dense}");
                    let diff = common::max_abs_diff(kept, &expected);
                    assert!(diff <= 1e-5, "{case}: {dense}: {diff}");
                    assert_eq!(common::max_abs_diff(kept, both), 0.0, "{case}: {dense}");
                }
            }
        }
    }
}

/// In f32 and in bf16 (products in bf16, the parameters f32), on every path: the bf16
/// gradients reach the f32 parameters and follow the f32 ones.
#[test]
fn every_parameter_gets_a_finite_nonzero_gradient() {
    let (params, mut model) = tiny_classifier();
    let (input, labels) = tiny_batch();
    // With the attention maps, without them (fused attention), and [CLS] only.
    for (dropout, pass) in [
        (false, "maps"),
        (true, "maps"),
        (true, "fused"),
        (true, "cls"),
    ] {
        let mut by_precision = Vec::new();
        for precision in [Precision::F32, Precision::Bf16] {
            model.bert.set_precision(precision);
            model.bert.dropout_rng().reseed(3);
            let mode = Mode::Train { dropout };
            let logits = match pass {
                "maps" => model.forward(&input, mode).unwrap().0,
                "fused" => {
                    let (logits, output) = model
                        .forward_with(&input, mode, AttentionMaps::Skip)
                        .unwrap();
                    assert!(output.attention_scores.is_empty());
                    logits
                }
                _ => model.logits(&input, None, mode).unwrap(),
            };
            assert_eq!(logits.dtype(), DType::F32, "{precision}");
            let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
            let grads = loss.backward().unwrap();
            let vars = params.vars();
            assert_eq!(
                vars.len(),
                2 * 16 + 5 + 2 + 2,
                "every tensor of the model is a parameter"
            );
            let mut gradients = Vec::new();
            for (name, var) in vars {
                assert_eq!(var.dtype(), DType::F32, "{name}: master weights are f32");
                let grad = grads.get(var.as_tensor()).unwrap_or_else(|| {
                    panic!("{name} has no gradient ({dropout}, {pass}, {precision})")
                });
                let values = grad.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(
                    values.iter().all(|v| v.is_finite()),
                    "{name}: non-finite gradient ({precision})"
                );
                assert!(
                    values.iter().any(|&v| v != 0.0),
                    "{name}: zero gradient ({precision})"
                );
                gradients.push((name, values));
            }
            by_precision.push(gradients);
        }
        let norm = |xs: &[f32]| xs.iter().map(|x| x * x).sum::<f32>().sqrt();
        let mut bf16_differs = false;
        for ((name, f32_grad), (_, bf16_grad)) in by_precision[0].iter().zip(&by_precision[1]) {
            // The key bias adds the same amount to each of a query's scores, which the
            // softmax cancels: its gradient is rounding noise on both sides.
            if name.ends_with("key.bias") {
                continue;
            }
            let difference: Vec<f32> = f32_grad.iter().zip(bf16_grad).map(|(a, b)| a - b).collect();
            let relative = norm(&difference) / norm(f32_grad);
            assert!(
                relative < 0.05,
                "{name}: bf16 gradient off by {relative} ({pass})"
            );
            bf16_differs |= relative > 0.0;
        }
        assert!(bf16_differs, "the bf16 pass computed in f32 ({pass})");
    }
}

/// One mask variable a layer, holding `rows`.
fn mask_variables(rows: &[impl AsRef<[f32]>]) -> Vec<Tensor> {
    rows.iter()
        .map(|row| {
            candle_core::Var::new(row.as_ref(), &Device::Cpu)
                .unwrap()
                .as_tensor()
                .clone()
        })
        .collect()
}

#[test]
fn a_head_mask_gets_the_gradient_finite_differences_give() {
    let (_, model) = tiny_classifier();
    let (input, labels) = tiny_batch();
    // The gradient through the logits alone (the last layer at [CLS] only) against finite
    // differences of the whole forward pass.
    let loss = |mask: &[Tensor], cls_only: bool| {
        let mode = Mode::Train { dropout: false };
        let logits = if cls_only {
            model.logits(&input, Some(mask), mode).unwrap()
        } else {
            model
                .forward_with_head_mask(&input, Some(mask), mode)
                .unwrap()
                .0
        };
        candle_nn::loss::cross_entropy(&logits, &labels).unwrap()
    };
    let values = [[1f32, 0.5, 1.0, 0.0], [1.0, 1.0, 0.25, 1.0]];
    let mask = |values: [[f32; 4]; 2]| mask_variables(&values);
    let variables = mask(values);
    let grads = loss(&variables, true).backward().unwrap();
    let step = 1e-2;
    for layer in 0..2 {
        let grad = grads
            .get(&variables[layer])
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for head in 0..4 {
            let shifted = |delta: f32| {
                let mut moved = values;
                moved[layer][head] += delta;
                loss(&mask(moved), false).to_scalar::<f32>().unwrap()
            };
            let numeric = (shifted(step) - shifted(-step)) / (2.0 * step);
            let difference = (numeric - grad[head]).abs();
            assert!(
                difference < 1e-3 + 1e-2 * numeric.abs(),
                "layer {layer} head {head}: {} against {numeric}",
                grad[head]
            );
            assert!(grad[head] != 0.0);
        }
    }
}

/// A feed-forward neuron mask (on the activation, the input of `output.dense`) gets the
/// gradient finite differences give, on the fused kernels and on the generic ones; a neuron
/// masked to 0 changes the loss.
#[test]
fn a_neuron_mask_gets_the_gradient_finite_differences_give() {
    let (_, model) = tiny_classifier();
    let (input, labels) = tiny_batch();
    let loss = |mask: &[Tensor], cls_only: bool| {
        let mode = Mode::Train { dropout: false };
        let masks = kd_bert::Masks {
            heads: None,
            neurons: Some(mask),
        };
        let logits = if cls_only {
            model.logits_masked(&input, masks, mode).unwrap()
        } else {
            model
                .forward_masked(
                    &input,
                    masks,
                    mode,
                    LastLayer::AllPositions,
                    AttentionMaps::Keep,
                )
                .unwrap()
                .0
        };
        candle_nn::loss::cross_entropy(&logits, &labels).unwrap()
    };
    // Every value different, some neurons half masked and one out.
    let values: Vec<Vec<f32>> = (0..2)
        .map(|layer| {
            (0..32)
                .map(|n| match (layer + n) % 5 {
                    0 => 0.5,
                    3 if n == 7 => 0.0,
                    _ => 1.0,
                })
                .collect()
        })
        .collect();
    let mask = |values: &[Vec<f32>]| mask_variables(values);
    for generic in [false, true] {
        let check = || {
            let variables = mask(&values);
            let grads = loss(&variables, true).backward().unwrap();
            let step = 1e-2;
            let mut moved_most = 0f32;
            for (layer, variable) in variables.iter().enumerate() {
                let grad = grads.get(variable).unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(grad.len(), 32);
                for (neuron, &analytic) in grad.iter().enumerate() {
                    let shifted = |delta: f32| {
                        let mut moved = values.clone();
                        moved[layer][neuron] += delta;
                        loss(&mask(&moved), false).to_scalar::<f32>().unwrap()
                    };
                    let numeric = (shifted(step) - shifted(-step)) / (2.0 * step);
                    let difference = (numeric - analytic).abs();
                    assert!(
                        difference < 1e-3 + 1e-2 * numeric.abs(),
                        "layer {layer} neuron {neuron} (generic {generic}): {analytic} \
                         against {numeric}"
                    );
                    assert!(analytic.is_finite() && analytic != 0.0);
                    moved_most = moved_most.max(numeric.abs());
                }
            }
            assert!(moved_most > 1e-3, "the loss hardly depends on the neurons");
            // Masking a neuron out changes the loss.
            let mut out = values.clone();
            out[0][1] = 0.0;
            let (full, masked) = (
                loss(&mask(&values), false).to_scalar::<f32>().unwrap(),
                loss(&mask(&out), false).to_scalar::<f32>().unwrap(),
            );
            assert!((full - masked).abs() > 1e-6, "{full} against {masked}");
        };
        if generic {
            kd_bert::kernels::force_generic(check)
        } else {
            check()
        }
    }
}

#[test]
fn the_inference_path_has_no_gradient_and_agrees_with_training() {
    let (params, model) = tiny_classifier();
    let (input, _) = tiny_batch();
    let (train, _) = model
        .forward(&input, Mode::Train { dropout: false })
        .unwrap();
    let (infer, _) = model.forward(&input, Mode::Inference).unwrap();
    assert!(common::max_abs_diff(&train, &infer) < 1e-5);
    // Inference cuts the graph after each layer, so that intermediates are freed early.
    let grads = infer.sum_all().unwrap().backward().unwrap();
    let embedding = params
        .get("bert.embeddings.word_embeddings.weight")
        .unwrap();
    assert!(grads.get(embedding.as_tensor()).is_none());
    // Dropout changes the output in training mode only.
    let (dropped, _) = model
        .forward(&input, Mode::Train { dropout: true })
        .unwrap();
    assert!(common::max_abs_diff(&dropped, &train) > 1e-4);
}

#[test]
fn a_frozen_model_agrees_at_every_batch_size_and_refuses_to_train() {
    let (_, model) = tiny_classifier();
    let (_, mut frozen) = tiny_classifier();
    frozen.freeze(FrozenWeights::F32).unwrap();
    let (small, _) = tiny_batch();
    // 300 rows: beyond the packed weights' range, so both ways of multiplying are checked.
    let repeat = |t: &Tensor| Tensor::cat(&vec![t.clone(); 30], 0).unwrap();
    let large = BertInput {
        input_ids: repeat(&small.input_ids),
        token_type_ids: repeat(&small.token_type_ids),
        attention_mask: repeat(&small.attention_mask),
    };
    for input in [small, large] {
        let (expected, _) = model.forward(&input, Mode::Inference).unwrap();
        let (logits, _) = frozen.forward(&input, Mode::Inference).unwrap();
        assert!(common::max_abs_diff(&logits, &expected) < 1e-5);
        // The logits alone, the last layer at [CLS] only, on either model.
        for model in [&model, &frozen] {
            let logits = model.logits(&input, None, Mode::Inference).unwrap();
            assert!(common::max_abs_diff(&logits, &expected) < 1e-5);
        }
    }
    let (input, _) = tiny_batch();
    let error = frozen
        .forward(&input, Mode::Train { dropout: false })
        .expect_err("a frozen model refuses to train");
    assert!(error.to_string().contains("frozen"), "{error}");
}

#[test]
fn embed_resolves_the_hub_id_from_the_cache_and_matches_sentence_transformers() {
    let fixture = fixture();
    let out = common::kd_ok(&[
        "embed",
        "--model",
        common::MINILM,
        "--normalize",
        "Hello world.",
        "Distillation makes small models keep the accuracy of large ones.",
        "It rains.",
    ]);
    let rows: Vec<Vec<f32>> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let ours = Tensor::new(rows, &Device::Cpu).unwrap();
    let diff = common::max_abs_diff(&ours, &fixture["batch.mean_pooled_normalized"]);
    assert!(diff <= TOLERANCE, "max abs diff {diff}");
}

/// The generic kernels (candle's tensor ops: what runs off the CPU) against the fused CPU
/// kernels, on all-MiniLM-L6-v2 and the fixture's padded batch: every intermediate the losses
/// read within 1e-5, and, after a training pass with dropout (the same masks on both), every
/// parameter's gradient within 1e-4 of its largest element, with and without the attention
/// maps.
#[test]
fn the_generic_kernels_give_the_fused_kernels_outputs_and_gradients() {
    use kd_bert::kernels::force_generic;
    let dir = common::minilm_dir();
    let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
    let params = Params::new(&Device::Cpu);
    let model = BertModel::new(&config, params.var_builder(), true).unwrap();
    params
        .load(&dir.join("model.safetensors"), |_| false)
        .unwrap();
    let input = input(&fixture(), "batch");

    let fused = model.forward(&input, Mode::Inference).unwrap();
    let generic = force_generic(|| model.forward(&input, Mode::Inference).unwrap());
    let pairs = [
        (&fused.embeddings, &generic.embeddings),
        (
            fused.pooled.as_ref().unwrap(),
            generic.pooled.as_ref().unwrap(),
        ),
    ];
    let layers = (fused.hidden_states.iter()).zip(&generic.hidden_states);
    let scores = (fused.attention_scores.iter()).zip(&generic.attention_scores);
    let probs = (fused.attention_probs.iter()).zip(&generic.attention_probs);
    let all: Vec<_> = pairs
        .into_iter()
        .chain(layers)
        .chain(scores)
        .chain(probs)
        .collect();
    assert_eq!(all.len(), 2 + 3 * 6);
    for (i, (fused, generic)) in all.into_iter().enumerate() {
        // The scores hold -f32::MAX at masked keys, where a difference means nothing.
        let unmasked = |xs: &Tensor| {
            let zeros = xs.zeros_like().unwrap();
            xs.ge(-1e30).unwrap().where_cond(xs, &zeros).unwrap()
        };
        let (fused, generic) = (unmasked(fused), unmasked(generic));
        let diff = common::max_abs_diff(&fused, &generic);
        let scale = fused.abs().unwrap().max_all().unwrap();
        let scale = scale.to_scalar::<f32>().unwrap();
        assert!(
            diff <= 1e-5 * scale.max(1.0),
            "intermediate {i}: {diff} of {scale}"
        );
    }

    let mode = Mode::Train { dropout: true };
    for maps in [AttentionMaps::Keep, AttentionMaps::Skip] {
        let gradients = |generic: bool| {
            model.dropout_rng().reseed(7);
            let pass = || {
                let output = model.forward_with(&input, mode, maps).unwrap();
                let pooled = output.pooled.as_ref().unwrap();
                let mut loss = (pooled.sqr().unwrap().sum_all().unwrap()
                    + output.last_hidden_state().sum_all().unwrap())
                .unwrap();
                if let Some(probs) = output.attention_probs.get(2) {
                    loss = (loss + probs.sqr().unwrap().sum_all().unwrap()).unwrap();
                }
                loss.backward().unwrap()
            };
            if generic { force_generic(pass) } else { pass() }
        };
        let (fused, generic) = (gradients(false), gradients(true));
        let fused_of = |name: &str| {
            let var = params.get(name).unwrap();
            fused.get(var.as_tensor()).unwrap().clone()
        };
        for (name, var) in params.vars() {
            if name.starts_with("embeddings.position_ids") {
                continue;
            }
            let fused = fused.get(var.as_tensor());
            let fused = fused.unwrap_or_else(|| panic!("{name}: no fused gradient"));
            let generic = generic.get(var.as_tensor());
            let generic = generic.unwrap_or_else(|| panic!("{name}: no generic gradient"));
            // A key bias's true gradient is zero (a shift of every score of a query leaves
            // its softmax as it is): both paths leave rounding noise, measured against the
            // key weight's gradient.
            let scale_of = match name.strip_suffix("key.bias") {
                Some(layer) => fused_of(&format!("{layer}key.weight")),
                None => fused.clone(),
            };
            let scale = scale_of.abs().unwrap().max_all().unwrap();
            let scale = scale.to_scalar::<f32>().unwrap();
            assert!(scale > 0.0, "{name}: zero gradient ({maps:?})");
            let relative = common::max_abs_diff(fused, generic) / scale;
            assert!(relative <= 1e-4, "{name} ({maps:?}): {relative} of {scale}");
        }
    }
}
