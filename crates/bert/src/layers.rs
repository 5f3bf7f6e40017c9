//! The encoder's building blocks: layer norm and dense layers on kd's fused kernels, dropout,
//! and the [`Mode`] a forward pass runs in.

use crate::{int8, kernels, ops};
use anyhow::Result;
use candle_core::Tensor;
use candle_nn::{Init, VarBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};

/// How a forward pass runs. Both use the same kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No gradient: the graph is cut after each layer so that intermediates are freed as soon
    /// as the next layer has used them; no dropout.
    Inference,
    /// Every output differentiable; dropout when asked.
    Train { dropout: bool },
}

impl Mode {
    pub(crate) fn differentiable(self) -> bool {
        matches!(self, Mode::Train { .. })
    }

    fn dropout(self) -> bool {
        matches!(self, Mode::Train { dropout: true })
    }
}

/// Layer normalisation over the last dimension, with HF's parameter names.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub(crate) fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(size, "bias", Init::Const(0.0))?;
        let eps = eps as f32;
        Ok(Self { weight, bias, eps })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(kernels::layer_norm(xs, &self.weight, &self.bias, self.eps)?)
    }
}

/// Up to this many rows, a frozen layer multiplies through its packed weight; beyond, gemm's
/// own packing is amortised over the rows.
const PACKED_MAX_ROWS: usize = 256;
/// From this many inputs, a frozen layer multiplies through its packed weight whatever the
/// rows: gemm's own blocking of such a long inner dimension ran 20% slower (BERT-base's FFN
/// output, 3072 inputs: 270 against 325 GFLOP/s over 1024 rows).
const PACKED_MIN_INPUTS: usize = 2048;

/// How a frozen (inference-only) dense layer holds its weight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FrozenWeights {
    /// f32, packed for products with few rows.
    #[default]
    F32,
    /// int8 with a scale per output channel, times the input quantized per call (see
    /// [`crate::int8`]), where the CPU has AVX-512 VNNI; f32 elsewhere.
    Int8,
}

/// A dense layer, `xs W^T + b` over the last dimension, as one matrix product over every row
/// of every example: candle_nn's `Linear` broadcasts `W` over the batch instead, so that its
/// backward pass materialises and sums a weight gradient per example.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
    /// After [`Linear::freeze`]: the weight packed for products with few rows, where gemm
    /// would otherwise spend most of its time repacking or fetching the weight.
    packed: Option<ops::PackedWeight>,
    /// After [`Linear::freeze`] with [`FrozenWeights::Int8`] on a CPU that runs it.
    int8: Option<Arc<int8::Int8Weight>>,
}

impl Linear {
    /// Creates `weight` `[out_dim, in_dim]` and `bias` under `vb` (zero until the parameters
    /// are initialised, e.g. by [`crate::Params::init_bert`]).
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", Init::Const(0.0))?;
        let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            packed: None,
            int8: None,
        })
    }

    /// Packs a copy of the weight for inference: a snapshot that later changes to the
    /// parameter do not reach, and through which no gradient flows.
    pub fn freeze(&mut self, weights: FrozenWeights) -> Result<()> {
        // Packed and int8 weights feed the fused CPU kernels only.
        if !self.weight.device().is_cpu() {
            return Ok(());
        }
        if weights == FrozenWeights::Int8 {
            self.int8 = int8::Int8Weight::new(&self.weight)?;
        }
        if self.int8.is_none() {
            self.packed = Some(ops::PackedWeight::new(&self.weight)?);
        }
        Ok(())
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if kernels::kernels_for(xs) == kernels::Kernels::Generic {
            return Ok(kernels::dense(xs, &self.weight, &self.bias)?);
        }
        if let Some(weight) = &self.int8 {
            return Ok(int8::dense_int8(xs, weight, &self.bias)?);
        }
        let inputs = xs.dims().last().copied().unwrap_or(1).max(1);
        let rows = xs.elem_count() / inputs;
        Ok(match &self.packed {
            Some(packed) if rows <= PACKED_MAX_ROWS || inputs >= PACKED_MIN_INPUTS => {
                ops::dense_packed(xs, packed, &self.bias)?
            }
            _ => ops::dense(xs, &self.weight, &self.bias)?,
        })
    }
}

/// The random source shared by every dropout of a model, seedable for reproducible runs
/// (candle's CPU generator cannot be seeded).
#[derive(Debug, Clone)]
pub struct DropoutRng(Arc<Mutex<StdRng>>);

impl DropoutRng {
    pub fn new(seed: u64) -> Self {
        Self(Arc::new(Mutex::new(StdRng::seed_from_u64(seed))))
    }

    pub fn reseed(&self, seed: u64) {
        *self.0.lock().unwrap() = StdRng::seed_from_u64(seed);
    }
}

/// Inverted dropout: zeroes each element with probability `p` in training, scales the rest.
#[derive(Debug, Clone)]
pub(crate) struct Dropout {
    p: f32,
    rng: DropoutRng,
}

impl Dropout {
    pub(crate) fn new(p: f32, rng: &DropoutRng) -> Self {
        Self {
            p,
            rng: rng.clone(),
        }
    }

    pub(crate) fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(match self.draw(mode) {
            Some((p, seed)) => kernels::dropout(xs, p, seed)?,
            None => xs.clone(),
        })
    }

    /// The probability and the mask's seed of this dropout's next application, `None` when
    /// it keeps everything (in inference, or with `p` 0).
    pub(crate) fn draw(&self, mode: Mode) -> Option<(f32, u64)> {
        if !mode.dropout() || self.p <= 0.0 {
            return None;
        }
        // One draw from the model's generator seeds the mask.
        Some((self.p, self.rng.0.lock().unwrap().random()))
    }
}
