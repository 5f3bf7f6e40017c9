//! Which kernels the encoder's operations run on, chosen per call from the input tensor: kd's
//! fused CPU kernels ([`crate::ops`], [`crate::attention`], [`crate::fused_attention`], with
//! hand-written backward passes) for f32 tensors on the CPU, and compositions of candle's own
//! tensor ops ([`generic`], differentiable through candle's backward pass) on any other device
//! or dtype. The model calls these functions, never a kernel set directly, so one definition
//! serves both.
//!
//! The generic path can be forced on the CPU, to compare the two or to tell a fused kernel's
//! bug in the field from the model's: `KD_KERNELS=generic` in the environment (read once, at
//! the first operation), or [`force_generic`] for the calling thread (tests).

use crate::{attention, fused_attention, ops};
use candle_core::{DType, Result, Tensor};
use std::cell::Cell;
use std::sync::OnceLock;

/// A kernel set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// kd's fused CPU kernels (f32 on the CPU only).
    Fused,
    /// candle's tensor ops, on any device and dtype.
    Generic,
}

thread_local! {
    static FORCED: Cell<bool> = const { Cell::new(false) };
}

/// Whether `KD_KERNELS=generic` is set (any other value is refused at the first operation).
fn generic_from_environment() -> bool {
    static GENERIC: OnceLock<bool> = OnceLock::new();
    *GENERIC.get_or_init(|| match std::env::var("KD_KERNELS") {
        Err(_) => false,
        Ok(value) if value == "generic" => true,
        Ok(value) if value == "fused" || value.is_empty() => false,
        Ok(value) => panic!("KD_KERNELS={value:?}: expected \"generic\" or \"fused\""),
    })
}

/// Runs `f` with the generic kernels forced in this thread (the operations `f` builds keep
/// their kernels in the backward pass, wherever it runs).
pub fn force_generic<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCED.with(|forced| forced.set(self.0));
        }
    }
    let _restore = Restore(FORCED.with(|forced| forced.replace(true)));
    f()
}

/// Whether the generic kernels are forced here (by [`force_generic`] or `KD_KERNELS`): a fused
/// kernel outside this module that serves other dtypes than f32 asks this.
pub fn generic_forced() -> bool {
    FORCED.with(Cell::get) || generic_from_environment()
}

/// The kernels an operation on `xs` runs on.
pub fn kernels_for(xs: &Tensor) -> Kernels {
    let fused_capable = xs.device().is_cpu() && xs.dtype() == DType::F32;
    if fused_capable && !generic_forced() {
        Kernels::Fused
    } else {
        Kernels::Generic
    }
}

fn fused(xs: &Tensor) -> bool {
    kernels_for(xs) == Kernels::Fused
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    match fused(xs) {
        true => ops::softmax_last_dim(xs),
        false => generic::widening(xs, |xs| candle_nn::ops::softmax(xs, candle_core::D::Minus1)),
    }
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    match fused(xs) {
        true => ops::log_softmax_last_dim(xs),
        false => generic::widening(xs, |xs| {
            candle_nn::ops::log_softmax(xs, candle_core::D::Minus1)
        }),
    }
}

/// Layer normalisation over the last dimension.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    match fused(xs) {
        true => ops::layer_norm(xs, weight, bias, eps),
        false => generic::layer_norm(xs, weight, bias, eps),
    }
}

/// `xs W^T + b` over the last dimension, `weight` HF's `[out, in]`.
pub fn dense(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    match fused(xs) {
        true => ops::dense(xs, weight, bias),
        false => generic::dense(xs, weight, bias),
    }
}

/// GELU, erf formulation.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    match fused(xs) {
        true => ops::gelu_erf(xs),
        false => xs.gelu_erf(),
    }
}

/// Inverted dropout with the mask drawn from `seed` alone: the same mask on either path.
pub fn dropout(xs: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    match fused(xs) {
        true => ops::dropout(xs, p, seed),
        false => generic::dropout(xs, p, seed),
    }
}

/// Attention scores with the mask, `[batch, heads, seq_q, seq_k]` (see [`attention::scores`]).
pub fn scores(
    q: &Tensor,
    k: &Tensor,
    mask_bias: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<Tensor> {
    match fused(q) {
        true => attention::scores(q, k, mask_bias, heads, scale),
        false => generic::scores(q, k, mask_bias, heads, scale),
    }
}

/// The attention's output from its probabilities (see [`attention::context`]).
pub fn context(probs: &Tensor, v: &Tensor) -> Result<Tensor> {
    match fused(probs) {
        true => attention::context(probs, v),
        false => generic::context(probs, v),
    }
}

/// The whole attention without its maps (see [`fused_attention::attention`]); on the generic
/// path, [`scores`], [`softmax_last_dim`], [`dropout`] and [`context`] in turn.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask_bias: &Tensor,
    heads: usize,
    scale: f32,
    dropout: Option<(f32, u64)>,
    differentiable: bool,
) -> Result<Tensor> {
    if fused(q) {
        return fused_attention::attention(
            q,
            k,
            v,
            mask_bias,
            heads,
            scale,
            dropout,
            differentiable,
        );
    }
    let probs = softmax_last_dim(&scores(q, k, mask_bias, heads, scale)?)?;
    let probs = match dropout {
        Some((p, seed)) => self::dropout(&probs, p, seed)?,
        None => probs,
    };
    context(&probs, v)
}

/// The compositions of candle's tensor ops behind the generic path. They serve any dtype:
/// 16-bit activations multiply in their own dtype (the parameters, f32 master weights, cast
/// to it as they are read) and normalise in f32 ([`crate::precision`]).
pub mod generic {
    use crate::precision::widened;
    use candle_core::{D, Result, Tensor};

    /// `f` of `xs` widened to f32 when it is a 16-bit float, narrowed back: sums of
    /// exponentials and variances lose too much in bf16.
    pub fn widening(xs: &Tensor, f: impl FnOnce(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let dtype = xs.dtype();
        f(&xs.to_dtype(widened(dtype))?)?.to_dtype(dtype)
    }

    /// `(x - mean) / sqrt(var + eps) * weight + bias`, the variance biased, as BERT's.
    pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        widening(xs, |xs| {
            let centered = xs.broadcast_sub(&xs.mean_keepdim(D::Minus1)?)?;
            let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
            let normed = centered.broadcast_div(&(variance + eps as f64)?.sqrt()?)?;
            let (weight, bias) = (weight.to_dtype(xs.dtype())?, bias.to_dtype(xs.dtype())?);
            normed.broadcast_mul(&weight)?.broadcast_add(&bias)
        })
    }

    /// One matrix product over every row of every example.
    pub fn dense(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (out_dim, in_dim) = weight.dims2()?;
        let mut dims = xs.dims().to_vec();
        let rows = xs.reshape(((), in_dim))?;
        let (weight, bias) = (weight.to_dtype(xs.dtype())?, bias.to_dtype(xs.dtype())?);
        let product = rows.matmul(&weight.t()?)?.broadcast_add(&bias)?;
        if let Some(last) = dims.last_mut() {
            *last = out_dim;
        }
        product.reshape(dims)
    }

    /// The fused kernel's mask, drawn on the CPU, times `xs`.
    pub fn dropout(xs: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
        let mut mask = vec![1f32; xs.elem_count()];
        crate::ops::dropout_in_place(&mut mask, 0, p, seed);
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        xs * mask
    }

    /// `[batch, seq, heads * head_dim]` as `[batch, heads, seq, head_dim]`.
    fn by_head(xs: &Tensor, heads: usize) -> Result<Tensor> {
        let (batch, seq, width) = xs.dims3()?;
        xs.reshape((batch, seq, heads, width / heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    pub fn scores(
        q: &Tensor,
        k: &Tensor,
        mask_bias: &Tensor,
        heads: usize,
        scale: f32,
    ) -> Result<Tensor> {
        let keys = by_head(k, heads)?.transpose(2, 3)?.contiguous()?;
        let products = by_head(q, heads)?.matmul(&keys)?;
        // The padding mask, `[batch, seq_k]`, or a whole bias `[batch, heads, seq_q, seq_k]`.
        let mask = match mask_bias.dims2() {
            Ok((batch, seq_k)) => mask_bias.reshape((batch, 1, 1, seq_k))?,
            Err(_) => mask_bias.clone(),
        }
        .to_dtype(products.dtype())?;
        (products * scale as f64)?.broadcast_add(&mask)
    }

    pub fn context(probs: &Tensor, v: &Tensor) -> Result<Tensor> {
        let heads = probs.dim(1)?;
        let context = probs.matmul(&by_head(v, heads)?)?;
        let (batch, _, seq_q, head_dim) = context.dims4()?;
        context
            .transpose(1, 2)?
            .reshape((batch, seq_q, heads * head_dim))
    }
}
