//! The precision a run computes in (`training.precision` in a recipe, `--precision` on
//! `kd finetune`). In bf16 the encoder's products run in bf16 while everything that
//! accumulates stays f32: the parameters themselves (master weights, cast to bf16 as each
//! product reads them, their gradients cast back), layer norm and softmax (widened to f32 and
//! narrowed again), the intermediates the model hands out (the losses' inputs) and the
//! optimizer's state.

use anyhow::{Result, bail};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What the encoder's products compute in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// bf16 products, f32 master weights, reductions and optimizer state.
    Bf16,
}

impl Precision {
    /// The dtype of the encoder's activations between layers.
    pub fn compute_dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
        }
    }

    /// For serde's `skip_serializing_if`: settings written before precision existed say
    /// nothing of it, and must still match (`--resume` compares them).
    pub fn is_f32(&self) -> bool {
        *self == Self::F32
    }

    /// Refuses a precision the device cannot compute in, before a run starts: a bf16
    /// product, cast and softmax tried on `device` (GPUs before Ampere, or a kd built for
    /// another GPU generation, fail them).
    pub fn check(self, device: &Device) -> Result<()> {
        if self == Self::F32 {
            return Ok(());
        }
        let dtype = self.compute_dtype();
        let probe = || -> candle_core::Result<Tensor> {
            let xs = Tensor::ones((2, 2), DType::F32, device)?.to_dtype(dtype)?;
            let product = xs.matmul(&xs)?;
            candle_nn::ops::softmax_last_dim(&product.to_dtype(DType::F32)?)
        };
        if let Err(error) = probe() {
            bail!(
                "precision {self}: {} cannot compute in {dtype:?} ({error}); use f32",
                crate::DeviceName::of(device)
            );
        }
        Ok(())
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => bail!("unknown precision {name:?}: expected f32 or bf16"),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Self::F32 => write!(f, "f32"),
            Self::Bf16 => write!(f, "bf16"),
        }
    }
}

/// The dtype an accumulation over `dtype` runs in: f32 for the 16-bit floats, else `dtype`.
pub fn widened(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}

/// The most negative finite value of `dtype`, the score a padded key gets: a finite value,
/// so that the softmax gives it exactly zero and differences of masked scores stay finite.
pub fn most_negative(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => half::bf16::MIN.to_f64(),
        DType::F16 => half::f16::MIN.to_f64(),
        _ => f32::MIN as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_print_and_check_on_the_cpu() {
        for (text, precision) in [("f32", Precision::F32), ("bf16", Precision::Bf16)] {
            assert_eq!(text.parse::<Precision>().unwrap(), precision);
            assert_eq!(precision.to_string(), text);
            precision.check(&Device::Cpu).unwrap();
        }
        assert!("fp16".parse::<Precision>().is_err());
    }

    #[test]
    fn the_mask_value_is_finite_in_its_dtype() {
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let value = Tensor::new(most_negative(dtype) as f32, &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(value.is_finite() && value < -6e4, "{dtype:?}: {value}");
        }
    }
}
