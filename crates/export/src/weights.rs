//! Writing weights in a chosen precision, the dense layers' optionally as int8: `W ≈ q · s`
//! with `q` in [-127, 127] and one scale `s` per output channel (row), stored as
//! `<name>` (I8) beside `<name>_scale` (f32), which `kd_bert::Params::load` dequantizes.

use anyhow::Result;
use candle_core::{D, DType, Tensor};
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

/// Whether a tensor is a dense layer's weight, which int8 quantization covers: every 2-D
/// `.weight` but the embedding matrices.
fn is_dense_weight(name: &str, tensor: &Tensor) -> bool {
    tensor.rank() == 2 && name.ends_with(".weight") && !name.contains("embeddings")
}

/// Writes `tensors` into `path` atomically, floats in `precision` and, with `int8`, the dense
/// weights quantized; returns how many tensors were quantized.
pub(crate) fn write(
    tensors: &BTreeMap<String, Tensor>,
    precision: Precision,
    int8: bool,
    path: &Path,
) -> Result<usize> {
    let mut stored = BTreeMap::new();
    let mut quantized = 0;
    for (name, tensor) in tensors {
        if int8 && is_dense_weight(name, tensor) {
            let (values, scales) = quantize(tensor)?;
            stored.insert(name.clone(), values);
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

/// Symmetric per-row int8: the row's largest magnitude maps to 127.
fn quantize(weight: &Tensor) -> Result<(Stored, Tensor)> {
    let weight = weight.to_dtype(DType::F32)?;
    let scales = (weight.abs()?.max_keepdim(D::Minus1)? / 127.0)?;
    // A row of zeros keeps a scale of 1 rather than dividing by zero.
    let safe = scales.eq(0.0)?.where_cond(&scales.ones_like()?, &scales)?;
    let levels = weight
        .broadcast_div(&safe)?
        .round()?
        .clamp(-127.0, 127.0)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let data = levels.iter().map(|&q| q as i8 as u8).collect();
    let shape = weight.dims().to_vec();
    Ok((Stored::Int8 { shape, data }, safe.squeeze(1)?))
}
