//! Building blocks whose forward pass depends on [`Mode`]: the inference path may use candle's
//! fused kernels, the training path must stay differentiable (candle 0.11's fused softmax and
//! layer norm silently cut the gradient graph).

use anyhow::Result;
use candle_core::{D, Tensor};
use candle_nn::{Init, Linear, VarBuilder};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::sync::{Arc, Mutex};

/// How a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No gradient needed: fused kernels, no dropout.
    Inference,
    /// Differentiable composition of every op; dropout when asked.
    Train { dropout: bool },
}

impl Mode {
    fn differentiable(self) -> bool {
        matches!(self, Mode::Train { .. })
    }

    fn dropout(self) -> bool {
        matches!(self, Mode::Train { dropout: true })
    }
}

/// Softmax over the last dimension.
pub(crate) fn softmax(xs: &Tensor, mode: Mode) -> Result<Tensor> {
    Ok(if mode.differentiable() {
        candle_nn::ops::softmax(xs, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(xs)?
    })
}

/// Layer normalisation over the last dimension, with HF's parameter names.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(size, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }

    pub(crate) fn forward(&self, xs: &Tensor, mode: Mode) -> Result<Tensor> {
        let eps = self.eps as f32;
        Ok(if mode.differentiable() {
            candle_nn::ops::layer_norm_slow(xs, &self.weight, &self.bias, eps)?
        } else {
            candle_nn::ops::layer_norm(&xs.contiguous()?, &self.weight, &self.bias, eps)?
        })
    }
}

/// A linear layer created with BERT's initialisation (the values are reset by
/// [`crate::Params::init_bert`] from a seeded generator).
pub(crate) fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", Init::Const(0.0))?;
    let bias = vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
    Ok(Linear::new(weight, Some(bias)))
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
        if !mode.dropout() || self.p <= 0.0 {
            return Ok(xs.clone());
        }
        let keep_scale = 1.0 / (1.0 - self.p);
        let mask: Vec<f32> = {
            let mut rng = self.rng.0.lock().unwrap();
            (0..xs.elem_count())
                .map(|_| {
                    if rng.random::<f32>() < self.p {
                        0.0
                    } else {
                        keep_scale
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        Ok(xs.mul(&mask)?)
    }
}
