//! Compact exports of kd's models (task models and backbones alike), written as HF directories:
//! weights in f16 or bf16, the dense layers' weights quantized to int8 (weight-only, one scale
//! per output channel), and the vocabulary pruned to the tokens a corpus uses, with the
//! embedding matrix and the tokenizer rewritten together; or a task model as an ONNX graph.
//! kd loads every safetensors export it writes; transformers loads the f32, f16 and bf16 ones;
//! ONNX Runtime and tract run the ONNX ones.

pub mod onnx;
mod vocab;
mod weights;

pub use vocab::kept_token_ids;
pub use weights::{Precision, Quantization};

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Device, Tensor};
use kd_bert::{BertConfig, Family};
use kd_teacher::ModelFiles;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The file format of an export.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// An HF directory with `model.safetensors`.
    #[default]
    Safetensors,
    /// `model.onnx` (a task model's graph, f32) beside the config and tokenizer.
    Onnx,
}

/// What to make of a model.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    pub format: Format,
    pub precision: Precision,
    /// Store these weights as int8 (weight-only, one scale per row).
    pub quantize: Option<Quantization>,
    /// Keep only the tokens these texts use (plus the special and single-character tokens).
    pub prune_vocab: Vec<PathBuf>,
    /// Write a model with pruned attention heads at full shape, those heads zero (see
    /// [`kd_bert::restore_heads`]), for tools that do not prune heads.
    pub restore_heads: bool,
}

/// What an export wrote, for the command's report.
#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub weights_bytes_before: u64,
    pub weights_bytes_after: u64,
    pub vocab_before: usize,
    pub vocab_after: usize,
    pub quantized_tensors: usize,
    pub precision: Precision,
    pub format: Format,
}

/// Whether `model` can be exported as `options` say, checked before anything is written.
pub fn check(model: &ModelFiles, options: &ExportOptions) -> Result<()> {
    BertConfig::from_file(&model.config)?;
    if options.format == Format::Onnx {
        onnx::check_options(options)?;
    }
    // An export is for other tools to load, and none loads a model without its tokenizer.
    match options.prune_vocab.is_empty() {
        true => kd_data::TextTokenizer::from_dir(&model.dir, usize::MAX).map(drop),
        false => vocab::prunable_tokenizer(&model.dir).map(drop),
    }
}

/// Writes `model` into `out` (which must not hold a model already) as `options` say.
pub fn export(model: &ModelFiles, out: &Path, options: &ExportOptions) -> Result<ExportReport> {
    if options.format == Format::Onnx {
        return export_onnx(model, out, options);
    }
    let mut config = BertConfig::from_file(&model.config)?;
    let mut tensors: BTreeMap<String, Tensor> =
        candle_core::safetensors::load(&model.weights, &Device::Cpu)
            .with_context(|| {
                format!(
                    "cannot read {} (an int8 export cannot be exported again)",
                    model.weights.display()
                )
            })?
            .into_iter()
            .collect();
    if options.restore_heads {
        let parameters: Vec<(String, Tensor)> = tensors.into_iter().collect();
        let (restored, parameters) = kd_bert::restore_heads(&config, &parameters)?;
        (config, tensors) = (restored, parameters.into_iter().collect());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let vocab_before = config.vocab_size;
    if options.prune_vocab.is_empty() {
        kd_teacher::copy_tokenizer_files(&model.dir, out)?;
    } else {
        let kept = kept_token_ids(&model.dir, &options.prune_vocab)?;
        prune_rows(&mut tensors, &kept, vocab_before, config.family())?;
        vocab::write_pruned_tokenizer(&model.dir, out, &kept)?;
        config.pad_token_id = kept
            .iter()
            .position(|&id| id as usize == config.pad_token_id)
            .unwrap_or(0);
        config.vocab_size = kept.len();
    }
    let quantized_tensors = weights::write(
        &tensors,
        options.precision,
        options.quantize,
        &out.join("model.safetensors"),
    )?;
    config
        .extra
        .insert("torch_dtype".into(), options.precision.torch_name().into());
    if let Some(quantization) = options.quantize {
        config.extra.insert(
            kd_bert::INT8_KEY.into(),
            serde_json::json!({"weights": quantization, "scales": "per row", "scale_suffix": "_scale"}),
        );
    }
    config.write(&out.join("config.json"))?;
    Ok(ExportReport {
        weights_bytes_before: std::fs::metadata(&model.weights)?.len(),
        weights_bytes_after: std::fs::metadata(out.join("model.safetensors"))?.len(),
        vocab_before,
        vocab_after: config.vocab_size,
        quantized_tensors,
        precision: options.precision,
        format: Format::Safetensors,
    })
}

/// The ONNX graph with the model's weights in f32, beside its config and tokenizer.
fn export_onnx(model: &ModelFiles, out: &Path, options: &ExportOptions) -> Result<ExportReport> {
    onnx::check_options(options)?;
    let mut config = BertConfig::from_file(&model.config)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    kd_teacher::copy_tokenizer_files(&model.dir, out)?;
    let (weights_bytes_after, quantized_tensors) = onnx::write(model, out, options.quantize)?;
    config.extra.remove(kd_bert::INT8_KEY);
    config
        .extra
        .insert("torch_dtype".into(), Precision::F32.torch_name().into());
    // What the graph holds, for whoever reads the directory (kd itself runs safetensors).
    config.extra.insert(
        "kd_onnx".into(),
        serde_json::json!({"file": onnx::ONNX_FILE, "opset": onnx::OPSET, "int8": options.quantize}),
    );
    config.write(&out.join("config.json"))?;
    Ok(ExportReport {
        weights_bytes_before: std::fs::metadata(&model.weights)?.len(),
        weights_bytes_after,
        vocab_before: config.vocab_size,
        vocab_after: config.vocab_size,
        quantized_tensors,
        precision: Precision::F32,
        format: Format::Onnx,
    })
}

/// Keeps the rows of `kept` ids in every tensor indexed by token: the word embeddings and a
/// masked-LM head's output bias (and decoder, when stored untied), by `family`'s names.
fn prune_rows(
    tensors: &mut BTreeMap<String, Tensor>,
    kept: &[u32],
    vocab: usize,
    family: Family,
) -> Result<()> {
    let head: Vec<String> = ["bias", "decoder.weight", "decoder.bias"]
        .iter()
        .map(|part| family.checkpoint_name(&format!("cls.predictions.{part}")))
        .collect();
    let rows = Tensor::new(kept, &Device::Cpu)?;
    let mut pruned = 0;
    for (name, tensor) in tensors.iter_mut() {
        let by_token = name.ends_with("word_embeddings.weight")
            || head.contains(name) && tensor.dim(0)? == vocab;
        if by_token && tensor.dtype() != DType::U8 {
            *tensor = tensor.index_select(&rows, 0)?;
            pruned += 1;
        }
    }
    ensure!(
        pruned > 0,
        "the weights have no word embedding matrix to prune"
    );
    Ok(())
}
