//! Attention's per-head products, read from and written to the hidden layout `[batch, seq,
//! heads * head_dim]` in place: one gemm per (example, head) on strided views, where splitting
//! the heads out (`reshape`, `transpose`, `contiguous`) copied the queries, keys, values and
//! context once each way, and the scaling and the mask were passes of their own, each with a
//! zero-filled gradient and an addition in the backward pass. These ops give the scores and
//! probabilities as tensors, for the passes that keep the attention maps; the others run
//! [`crate::fused_attention`].

use crate::ops::{f32_slice, product};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Scaled attention scores plus the mask, `[batch, heads, seq_q, seq_k]`:
/// `scale * q_h k_h^T + mask_bias` per head, with `q` and `k` `[batch, seq, heads * head_dim]`
/// and `mask_bias` `[batch, seq_k]` (0 for real keys, very negative for padding) or, with a
/// position bias in it, `[batch, heads, seq_q, seq_k]` (then it gets its gradient).
pub fn scores(
    q: &Tensor,
    k: &Tensor,
    mask_bias: &Tensor,
    heads: usize,
    scale: f32,
) -> Result<Tensor> {
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &mask_bias.contiguous()?,
        Scores { heads, scale },
    )
}

/// The attention's output `[batch, seq_q, heads * head_dim]`: `probs_h v_h` per head, with
/// `probs` `[batch, heads, seq_q, seq_k]` and `v` `[batch, seq_k, heads * head_dim]`.
pub fn context(probs: &Tensor, v: &Tensor) -> Result<Tensor> {
    probs.contiguous()?.apply_op2(&v.contiguous()?, Context)
}

/// Where one head's matrix lies in a buffer: offset, row stride and column stride.
#[derive(Clone, Copy)]
struct View(usize, usize, usize);

/// How each block of a [`per_head`] output starts.
enum Start<'a> {
    /// Written by the product alone.
    Empty,
    /// Every row of example `b`'s blocks set to `row(b)` first (in the task that then adds
    /// the product to it, while the block is in cache); the blocks' rows must be contiguous.
    Rows(&'a (dyn Fn(usize) -> &'a [f32] + Sync)),
    /// Block (`b`, `h`) set to `block(b, h)` first, `m x n` contiguous like the block.
    Blocks(&'a (dyn Fn(usize, usize) -> &'a [f32] + Sync)),
}

/// `m x n` products, one per (example, head) in parallel, into a new buffer of `len`
/// elements that the blocks at `dst_at(example, head)` tile: `beta * lhs rhs`, added to the
/// block's [`Start`], each operand placed by a function of (example, head).
#[allow(clippy::too_many_arguments)]
fn per_head(
    (batch, heads): (usize, usize),
    (m, n, k): (usize, usize, usize),
    len: usize,
    dst_at: impl Fn(usize, usize) -> View + Sync,
    start: Start,
    lhs: (&[f32], &(dyn Fn(usize, usize) -> View + Sync)),
    rhs: (&[f32], &(dyn Fn(usize, usize) -> View + Sync)),
    beta: f32,
) -> Vec<f32> {
    let mut dst = Vec::<f32>::with_capacity(len);
    let dst_ptr = dst.as_mut_ptr() as usize;
    (0..batch * heads).into_par_iter().for_each(|task| {
        let (b, h) = (task / heads, task % heads);
        let (View(d, d_rs, d_cs), View(l, l_rs, l_cs), View(r, r_rs, r_cs)) =
            (dst_at(b, h), (lhs.1)(b, h), (rhs.1)(b, h));
        let dst = (dst_ptr as *mut f32).wrapping_add(d);
        match &start {
            Start::Empty => {}
            Start::Rows(row) => {
                let row = &row(b)[..n];
                assert_eq!(
                    d_cs, 1,
                    "rows of a block must be contiguous to start from a row"
                );
                for i in 0..m {
                    // SAFETY: row `i` of this task's block, inside the buffer's capacity.
                    unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), dst.add(i * d_rs), n) };
                }
            }
            Start::Blocks(block) => {
                let block = &block(b, h)[..m * n];
                assert_eq!(
                    (d_rs, d_cs),
                    (n, 1),
                    "a block must be contiguous to start from one"
                );
                // SAFETY: this task's block, inside the buffer's capacity.
                unsafe { std::ptr::copy_nonoverlapping(block.as_ptr(), dst, m * n) };
            }
        }
        // SAFETY: each (example, head) writes its own block of `dst`; every view lies within
        // its buffer, as the callers' shapes (checked on entry) guarantee.
        unsafe {
            product(
                (m, n, k),
                (dst, d_rs, d_cs),
                !matches!(start, Start::Empty),
                (lhs.0.as_ptr().add(l), l_rs, l_cs),
                (rhs.0.as_ptr().add(r), r_rs, r_cs),
                beta,
                gemm::Parallelism::None,
            )
        }
    });
    // SAFETY: the blocks tile the buffer and each was written, by gemm or by its start rows
    // and then gemm.
    unsafe { dst.set_len(len) };
    dst
}

/// A hidden-layout tensor's dimensions: batch, sequence, heads, head size.
pub(crate) fn hidden_dims(layout: &Layout, heads: usize) -> Result<(usize, usize, usize)> {
    let (batch, seq, hidden) = layout.shape().dims3()?;
    if heads == 0 || hidden % heads != 0 {
        candle_core::bail!("{hidden} features do not split into {heads} heads");
    }
    Ok((batch, seq, hidden / heads))
}

/// Head `h` of example `b` in a `[batch, seq, heads * head_dim]` buffer, as `[seq, head_dim]`.
fn head_of(seq: usize, heads: usize, head_dim: usize) -> impl Fn(usize, usize) -> View + Sync {
    let hidden = heads * head_dim;
    move |b, h| View(b * seq * hidden + h * head_dim, hidden, 1)
}

/// Head `h` of example `b` in a `[batch, heads, rows, cols]` buffer, as `[rows, cols]`
/// (`transposed`: as `[cols, rows]`).
fn block_of(
    heads: usize,
    rows: usize,
    cols: usize,
    transposed: bool,
) -> impl Fn(usize, usize) -> View + Sync {
    move |b, h| {
        let offset = (b * heads + h) * rows * cols;
        if transposed {
            View(offset, 1, cols)
        } else {
            View(offset, cols, 1)
        }
    }
}

/// A head's `[seq, head_dim]` view read transposed, as `[head_dim, seq]`.
fn transposed(view: impl Fn(usize, usize) -> View + Sync) -> impl Fn(usize, usize) -> View + Sync {
    move |b, h| {
        let View(offset, rs, cs) = view(b, h);
        View(offset, cs, rs)
    }
}

struct Scores {
    heads: usize,
    scale: f32,
}

impl CustomOp3 for Scores {
    fn name(&self) -> &'static str {
        "kd-attention-scores"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        mask: &CpuStorage,
        mask_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, mask) = (
            f32_slice(q, q_layout, self.name())?,
            f32_slice(k, k_layout, self.name())?,
            f32_slice(mask, mask_layout, self.name())?,
        );
        let heads = self.heads;
        let (batch, seq_q, head_dim) = hidden_dims(q_layout, heads)?;
        let (k_batch, seq_k, k_head_dim) = hidden_dims(k_layout, heads)?;
        let whole = [batch, heads, seq_q, seq_k];
        if (k_batch, k_head_dim) != (batch, head_dim)
            || (mask_layout.dims() != [batch, seq_k] && mask_layout.dims() != whole)
        {
            candle_core::bail!(
                "kd-attention-scores: queries {:?}, keys {:?}, mask {:?}",
                q_layout.dims(),
                k_layout.dims(),
                mask_layout.dims()
            );
        }
        // Every row of a block starts as its example's mask (or the block as its bias); gemm
        // adds the scaled product.
        let mask_row = |b: usize| &mask[b * seq_k..(b + 1) * seq_k];
        let block = seq_q * seq_k;
        let bias_block = |b: usize, h: usize| &mask[(b * heads + h) * block..][..block];
        let out = per_head(
            (batch, heads),
            (seq_q, seq_k, head_dim),
            batch * heads * seq_q * seq_k,
            block_of(heads, seq_q, seq_k, false),
            match mask_layout.dims().len() {
                2 => Start::Rows(&mask_row),
                _ => Start::Blocks(&bias_block),
            },
            (q, &head_of(seq_q, heads, head_dim)),
            (k, &transposed(head_of(seq_k, heads, head_dim))),
            self.scale,
        );
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, heads, seq_q, seq_k)),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        mask: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // A whole-score bias passes its gradient through as it is; a padding mask has none.
        let bias_grad = (mask.rank() == 4).then(|| grad.clone());
        let grad = grad.contiguous()?;
        let backward = |operand: Operand, other: &Tensor| {
            grad.apply_op2_no_bwd(
                other,
                &ScoresBackward {
                    operand,
                    heads: self.heads,
                    scale: self.scale,
                },
            )
        };
        Ok((
            Some(backward(Operand::Query, k)?),
            Some(backward(Operand::Key, q)?),
            bias_grad,
        ))
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Operand {
    Query,
    Key,
}

/// The gradient of the scores with respect to the queries (`scale * G_h k_h`) or the keys
/// (`scale * G_h^T q_h`), in the hidden layout; `other` is the operand not differentiated.
struct ScoresBackward {
    operand: Operand,
    heads: usize,
    scale: f32,
}

impl CustomOp2 for ScoresBackward {
    fn name(&self) -> &'static str {
        "kd-attention-scores-backward"
    }

    fn cpu_fwd(
        &self,
        grad: &CpuStorage,
        grad_layout: &Layout,
        other: &CpuStorage,
        other_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (grad, other) = (
            f32_slice(grad, grad_layout, self.name())?,
            f32_slice(other, other_layout, self.name())?,
        );
        let heads = self.heads;
        let (batch, _, seq_q, seq_k) = grad_layout.shape().dims4()?;
        let (_, other_seq, head_dim) = hidden_dims(other_layout, heads)?;
        let (seq, grad_view, contracted) = match self.operand {
            Operand::Query => (seq_q, block_of(heads, seq_q, seq_k, false), seq_k),
            Operand::Key => (seq_k, block_of(heads, seq_q, seq_k, true), seq_q),
        };
        if other_seq != contracted {
            candle_core::bail!("kd-attention-scores-backward: mismatched sequence lengths");
        }
        let out = per_head(
            (batch, heads),
            (seq, head_dim, contracted),
            batch * seq * heads * head_dim,
            head_of(seq, heads, head_dim),
            Start::Empty,
            (grad, &grad_view),
            (other, &head_of(contracted, heads, head_dim)),
            self.scale,
        );
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, seq, heads * head_dim)),
        ))
    }
}

struct Context;

impl CustomOp2 for Context {
    fn name(&self) -> &'static str {
        "kd-attention-context"
    }

    fn cpu_fwd(
        &self,
        probs: &CpuStorage,
        probs_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (probs, v) = (
            f32_slice(probs, probs_layout, self.name())?,
            f32_slice(v, v_layout, self.name())?,
        );
        let (batch, heads, seq_q, seq_k) = probs_layout.shape().dims4()?;
        let (v_batch, v_seq, head_dim) = hidden_dims(v_layout, heads)?;
        if (v_batch, v_seq) != (batch, seq_k) {
            candle_core::bail!(
                "kd-attention-context: probabilities {:?}, values {:?}",
                probs_layout.dims(),
                v_layout.dims()
            );
        }
        let out = per_head(
            (batch, heads),
            (seq_q, head_dim, seq_k),
            batch * seq_q * heads * head_dim,
            head_of(seq_q, heads, head_dim),
            Start::Empty,
            (probs, &block_of(heads, seq_q, seq_k, false)),
            (v, &head_of(seq_k, heads, head_dim)),
            1.0,
        );
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, seq_q, heads * head_dim)),
        ))
    }

    fn bwd(
        &self,
        probs: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_probs = grad.apply_op2_no_bwd(
            v,
            &ContextProbsGrad {
                probs_shape: probs.shape().clone(),
            },
        )?;
        let grad_v = probs.apply_op2_no_bwd(&grad, &ContextValuesGrad)?;
        Ok((Some(grad_probs), Some(grad_v)))
    }
}

/// `dP_h = dC_h v_h^T`, `[batch, heads, seq_q, seq_k]`, from the context's gradient `dC` and
/// the values, both in the hidden layout.
struct ContextProbsGrad {
    probs_shape: Shape,
}

impl CustomOp2 for ContextProbsGrad {
    fn name(&self) -> &'static str {
        "kd-attention-context-probs-grad"
    }

    fn cpu_fwd(
        &self,
        grad: &CpuStorage,
        grad_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (grad, v) = (
            f32_slice(grad, grad_layout, self.name())?,
            f32_slice(v, v_layout, self.name())?,
        );
        let (batch, heads, seq_q, seq_k) = self.probs_shape.dims4()?;
        let (_, _, head_dim) = hidden_dims(v_layout, heads)?;
        let out = per_head(
            (batch, heads),
            (seq_q, seq_k, head_dim),
            batch * heads * seq_q * seq_k,
            block_of(heads, seq_q, seq_k, false),
            Start::Empty,
            (grad, &head_of(seq_q, heads, head_dim)),
            (v, &transposed(head_of(seq_k, heads, head_dim))),
            1.0,
        );
        Ok((CpuStorage::F32(out), self.probs_shape.clone()))
    }
}

/// `dV_h = P_h^T dC_h`, in the hidden layout.
struct ContextValuesGrad;

impl CustomOp2 for ContextValuesGrad {
    fn name(&self) -> &'static str {
        "kd-attention-context-values-grad"
    }

    fn cpu_fwd(
        &self,
        probs: &CpuStorage,
        probs_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (probs, grad) = (
            f32_slice(probs, probs_layout, self.name())?,
            f32_slice(grad, grad_layout, self.name())?,
        );
        let (batch, heads, seq_q, seq_k) = probs_layout.shape().dims4()?;
        let (_, _, head_dim) = hidden_dims(grad_layout, heads)?;
        let out = per_head(
            (batch, heads),
            (seq_k, head_dim, seq_q),
            batch * seq_k * heads * head_dim,
            head_of(seq_k, heads, head_dim),
            Start::Empty,
            (probs, &block_of(heads, seq_q, seq_k, true)),
            (grad, &head_of(seq_q, heads, head_dim)),
            1.0,
        );
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, seq_k, heads * head_dim)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{check_gradients, max_diff, random};

    /// The reference: heads split out and multiplied with candle's ops.
    fn split(xs: &Tensor, heads: usize) -> Tensor {
        let (b, s, hidden) = xs.dims3().unwrap();
        xs.reshape((b, s, heads, hidden / heads))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    }

    #[test]
    fn scores_match_split_heads_and_finite_differences() {
        let (q, k) = (random(&[2, 3, 8], 1), random(&[2, 4, 8], 2));
        let mask =
            Tensor::new(&[[0f32, 0.0, -1e4, 0.0], [0.0, 0.0, 0.0, -1e4]], q.device()).unwrap();
        let reference = (split(&q, 2).matmul(&split(&k, 2).t().unwrap()).unwrap() * 0.5)
            .unwrap()
            .broadcast_add(&mask.unsqueeze(1).unwrap().unsqueeze(1).unwrap())
            .unwrap();
        let ours = scores(&q, &k, &mask, 2, 0.5).unwrap();
        assert_eq!(ours.dims(), [2, 2, 3, 4]);
        assert!(max_diff(&ours, &reference) < 1e-5);
        // A mild mask for the finite differences: around -1e4, f32 keeps too few digits.
        let mild = (mask * 1e-4).unwrap();
        check_gradients(
            &|t| scores(&t[0], &t[1], &mild, 2, 0.5).unwrap(),
            &[q, k],
            2e-3,
        );
    }

    #[test]
    fn context_matches_split_heads_and_finite_differences() {
        let (probs, v) = (random(&[2, 2, 3, 4], 3), random(&[2, 4, 8], 4));
        let reference = probs
            .matmul(&split(&v, 2))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((2, 3, 8))
            .unwrap();
        let ours = context(&probs, &v).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-5);
        check_gradients(&|t| context(&t[0], &t[1]).unwrap(), &[probs, v], 2e-3);
    }
}
