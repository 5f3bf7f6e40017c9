//! The GPU against the CPU, for a kd built with CUDA (`--features cuda`) on a machine with a
//! GPU: MiniLM with a task head gives the CPU's logits and intermediates, one training step's
//! gradients and the parameters after AdamW's update, in f32; in bf16 its logits follow f32's.
//! `experiments/scripts/gpu_check.sh` runs this with `KD_REQUIRE_GPU=1`, which turns a missing
//! GPU into a failure; elsewhere (CI: no CUDA) the test says it skipped.

mod common;

use candle_core::{Device, Tensor};
use kd_bert::{
    AttentionMaps, BertConfig, BertForSequenceClassification, BertInput, Mode, Params, Precision,
};
use kd_train::{AdamW, AdamWConfig};

/// The first GPU, or `None` (with a note) where there is none and none is required.
fn gpu() -> Option<Device> {
    let required = std::env::var_os("KD_REQUIRE_GPU").is_some();
    let why = match Device::new_cuda(0) {
        Ok(device) => return Some(device),
        Err(error) => error.to_string(),
    };
    assert!(!required, "KD_REQUIRE_GPU is set, and no GPU opens: {why}");
    eprintln!("note: the GPU parity check skipped: no GPU opens ({why})");
    None
}

struct Model {
    params: Params,
    model: BertForSequenceClassification,
}

/// MiniLM's encoder with a 2-label head drawn from seed 5, on `device`.
fn minilm_classifier(device: &Device) -> Model {
    let dir = common::minilm_dir();
    let config = BertConfig::from_file(&dir.join("config.json")).unwrap();
    let params = Params::new(device);
    let model = BertForSequenceClassification::new(&config, 2, params.var_builder()).unwrap();
    params.init_bert(0.02, 5).unwrap();
    params
        .load(&dir.join("model.safetensors"), |name| {
            name.starts_with("classifier.") || name.starts_with("bert.pooler.")
        })
        .unwrap();
    Model { params, model }
}

/// Two sentences of different lengths (padding included), their labels.
fn batch(device: &Device) -> (BertInput, Tensor) {
    let ids = [
        [101u32, 2023, 3185, 2001, 2307, 102, 0, 0],
        [101, 1996, 2143, 2001, 2200, 11771, 2000, 102],
    ];
    let mask = [[1u32, 1, 1, 1, 1, 1, 0, 0], [1; 8]];
    let input = BertInput {
        input_ids: Tensor::new(&ids, device).unwrap(),
        token_type_ids: Tensor::zeros((2, 8), candle_core::DType::U32, device).unwrap(),
        attention_mask: Tensor::new(&mask, device).unwrap(),
    };
    (input, Tensor::new(&[1u32, 0], device).unwrap())
}

/// The largest difference of `a` and `b` (on any devices) against `b`'s largest magnitude.
fn relative(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_device(&Device::Cpu).unwrap();
    let b = b.to_device(&Device::Cpu).unwrap();
    // Masked scores hold the dtype's most negative value, where a difference means nothing.
    let unmasked = |xs: &Tensor| {
        let zeros = xs.zeros_like().unwrap();
        xs.ge(-1e30).unwrap().where_cond(xs, &zeros).unwrap()
    };
    let (a, b) = (unmasked(&a), unmasked(&b));
    let scale: f32 = b.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
    common::max_abs_diff(&a, &b) / scale.max(1e-6)
}

/// One step: the loss (cross-entropy plus the last hidden state's mean square, so that the
/// gradient reaches the pooler-free path too), its gradients, then AdamW's update. Returns
/// the logits and every parameter's gradient and new value, by name.
fn step(model: &Model, device: &Device) -> (Tensor, Vec<(String, Tensor, Tensor)>) {
    let (input, labels) = batch(device);
    model.model.bert.dropout_rng().reseed(11);
    let (logits, output) = model
        .model
        .forward_with(&input, Mode::Train { dropout: true }, AttentionMaps::Keep)
        .unwrap();
    let loss = (candle_nn::loss::cross_entropy(&logits, &labels).unwrap()
        + output
            .last_hidden_state()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    let mut optimizer = AdamW::new(model.params.vars(), AdamWConfig::default()).unwrap();
    optimizer.step(&grads, 1e-3).unwrap();
    let rows = model
        .params
        .vars()
        .into_iter()
        .map(|(name, var)| {
            let grad = grads.get(var.as_tensor()).unwrap().clone();
            (name, grad, var.as_tensor().clone())
        })
        .collect();
    (logits, rows)
}

#[test]
fn the_gpu_gives_the_cpus_outputs_gradients_and_update() {
    let Some(gpu) = gpu() else { return };
    let (cpu_model, gpu_model) = (minilm_classifier(&Device::Cpu), minilm_classifier(&gpu));

    let (cpu_input, _) = batch(&Device::Cpu);
    let (gpu_input, _) = batch(&gpu);
    let (cpu_logits, cpu_out) = cpu_model
        .model
        .forward(&cpu_input, Mode::Inference)
        .unwrap();
    let (gpu_logits, gpu_out) = gpu_model
        .model
        .forward(&gpu_input, Mode::Inference)
        .unwrap();
    assert!(gpu_logits.device().is_cuda());
    let mut pairs = vec![
        (&gpu_logits, &cpu_logits),
        (&gpu_out.embeddings, &cpu_out.embeddings),
    ];
    pairs.extend(gpu_out.hidden_states.iter().zip(&cpu_out.hidden_states));
    pairs.extend(
        gpu_out
            .attention_scores
            .iter()
            .zip(&cpu_out.attention_scores),
    );
    pairs.extend(gpu_out.attention_probs.iter().zip(&cpu_out.attention_probs));
    assert_eq!(pairs.len(), 2 + 3 * 6);
    for (index, (gpu_value, cpu_value)) in pairs.into_iter().enumerate() {
        let off = relative(gpu_value, cpu_value);
        assert!(off < 1e-4, "intermediate {index}: off by {off}");
    }

    let (_, cpu_rows) = step(&cpu_model, &Device::Cpu);
    let (_, gpu_rows) = step(&gpu_model, &gpu);
    for ((name, cpu_grad, cpu_value), (_, gpu_grad, gpu_value)) in cpu_rows.iter().zip(&gpu_rows) {
        assert!(gpu_value.device().is_cuda(), "{name} left the GPU");
        // The key bias's gradient is rounding noise on both sides (the softmax cancels it).
        if !name.ends_with("key.bias") {
            let off = relative(gpu_grad, cpu_grad);
            assert!(off < 1e-3, "{name}: gradient off by {off}");
        }
        let off = relative(gpu_value, cpu_value);
        assert!(off < 1e-4, "{name}: updated value off by {off}");
    }

    let mut bf16_model = minilm_classifier(&gpu);
    bf16_model.model.bert.set_precision(Precision::Bf16);
    let (bf16_logits, _) = bf16_model
        .model
        .forward(&gpu_input, Mode::Inference)
        .unwrap();
    let off = relative(&bf16_logits, &cpu_logits);
    assert!(off < 5e-2, "bf16 logits off by {off}");
}
