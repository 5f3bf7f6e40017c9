//! Writing weights in a chosen precision, the dense layers' (and optionally the embedding
//! tables') as int8: `W ≈ q · s` with `q` in [-127, 127] and one scale `s` per row (an output
//! channel of a dense layer, a token of an embedding table), stored as
//! `<name>` (I8) beside `<name>_scale` (f32), which `kd_bert::Params::load` dequantizes.

use anyhow::Result;
use candle_core::{DType, Tensor};
use safetensors::{Dtype, View};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The floating-point precision of exported weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }

    /// The name HF configs give it (`torch_dtype`).
    pub(crate) fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }
}

/// A tensor as safetensors stores it: candle's own, or int8 values (which candle lacks).
enum Stored {
    Tensor(Tensor),
    Int8 { shape: Vec<usize>, data: Vec<u8> },
}

impl View for &Stored {
    fn dtype(&self) -> Dtype {
        match self {
            Stored::Tensor(tensor) => View::dtype(tensor),
            Stored::Int8 { .. } => Dtype::I8,
        }
    }
    fn shape(&self) -> &[usize] {
        match self {
            Stored::Tensor(tensor) => tensor.dims(),
            Stored::Int8 { shape, .. } => shape,
        }
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            Stored::Tensor(tensor) => View::data(tensor),
            Stored::Int8 { data, .. } => Cow::Borrowed(data),
        }
    }
    fn data_len(&self) -> usize {
        match self {
            Stored::Tensor(tensor) => View::data_len(tensor),
            Stored::Int8 { data, .. } => data.len(),
        }
    }
}

/// Which weights become int8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Quantization {
    /// The dense layers' weights, one scale per output channel.
    Int8,
    /// The dense layers' weights and the word embeddings, one scale per token.
    Int8Embeddings,
}

impl Quantization {
    /// Whether it covers `name`: 2-D `.weight`s, of the embedding tables only the word
    /// embeddings (by far the largest) and only when asked; never MPNet's relative-position
    /// bias table, a bias rather than a product's weight.
    pub(crate) fn covers(self, name: &str, tensor: &Tensor) -> bool {
        let covered_embedding =
            self == Self::Int8Embeddings && name.ends_with("word_embeddings.weight");
        tensor.rank() == 2
            && name.ends_with(".weight")
            && !name.ends_with("relative_attention_bias.weight")
            && (!name.contains("embeddings") || covered_embedding)
    }
}

/// Writes `tensors` into `path` atomically, floats in `precision` and the weights that
/// `quantization` covers as int8; returns how many tensors were quantized.
pub(crate) fn write(
    tensors: &BTreeMap<String, Tensor>,
    precision: Precision,
    quantization: Option<Quantization>,
    path: &Path,
) -> Result<usize> {
    let mut stored = BTreeMap::new();
    let mut quantized = 0;
    for (name, tensor) in tensors {
        if quantization.is_some_and(|q| q.covers(name, tensor)) {
            let (data, scales) = kd_bert::int8::quantize_rows(tensor)?;
            let shape = tensor.dims().to_vec();
            let data = data.into_iter().map(|q| q as u8).collect();
            let scales = Tensor::new(scales, tensor.device())?;
            stored.insert(name.clone(), Stored::Int8 { shape, data });
            stored.insert(format!("{name}_scale"), Stored::Tensor(scales));
            quantized += 1;
        } else if tensor.dtype().is_float() {
            let converted = tensor.to_dtype(precision.dtype())?;
            stored.insert(name.clone(), Stored::Tensor(converted));
        } else {
            stored.insert(name.clone(), Stored::Tensor(tensor.clone()));
        }
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    kd_bert::write_atomically(path, |tmp| {
        let views = stored.iter().map(|(name, bytes)| (name.as_str(), bytes));
        safetensors::tensor::serialize_to_file(views, Some(metadata), tmp)?;
        Ok(())
    })?;
    Ok(quantized)
}
