//! Attention in one pass per head: scaled scores, mask, softmax, dropout and the context
//! product on a block that stays in cache. The unfused path ([`crate::attention`]) writes a
//! `[batch, heads, seq, seq]` tensor out to memory three times and reads it back as often, and
//! its per-head products ran at half the dense layers' rate, waiting on memory. In training
//! the probabilities are written out once, for the backward pass; without gradients, never.
//! Used wherever no loss reads the attention maps.

use crate::attention::hidden_dims;
use crate::math::{exp, max, sum, sum_of, vectorised};
use crate::ops::{dropout_in_place, f32_slice, product};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// The attention's output `[batch, seq_q, heads * head_dim]` from `q` `[batch, seq_q, heads *
/// head_dim]`, `k` and `v` `[batch, seq_k, heads * head_dim]` and `mask_bias` `[batch, seq_k]`
/// or `[batch, heads, seq_q, seq_k]` (a position bias in it; it gets no gradient): per head, `dropout(softmax(scale * q_h k_h^T + mask_bias)) v_h`. `dropout` is `(p, seed)`,
/// and drops what [`crate::ops::dropout`] with that seed drops from the probabilities tensor.
/// `differentiable`: keep the probabilities for the backward pass.
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
    let op = Attention {
        mask_bias: mask_bias.contiguous()?,
        heads,
        scale,
        dropout,
        probs: differentiable.then(Arc::default),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[derive(Clone)]
struct Attention {
    mask_bias: Tensor,
    heads: usize,
    scale: f32,
    dropout: Option<(f32, u64)>,
    /// The probabilities before dropout, `[batch, heads, seq_q, seq_k]`, written by the
    /// forward pass for the backward pass when gradients are wanted.
    probs: Option<Arc<OnceLock<Vec<f32>>>>,
}

/// The shapes of one call, with the offsets of a head's matrices.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    seq_q: usize,
    seq_k: usize,
    head_dim: usize,
}

impl Dims {
    fn hidden(&self) -> usize {
        self.heads * self.head_dim
    }

    fn block(&self) -> usize {
        self.seq_q * self.seq_k
    }

    /// Head `h` of example `b`, task `b * heads + h`.
    fn split(&self, task: usize) -> (usize, usize) {
        (task / self.heads, task % self.heads)
    }

    /// Where head `task`'s `[seq, head_dim]` matrix starts in a `[batch, seq, hidden]` buffer.
    fn head(&self, task: usize, seq: usize) -> usize {
        let (b, h) = self.split(task);
        b * seq * self.hidden() + h * self.head_dim
    }
}

const NAME: &str = "kd-fused-attention";

impl Attention {
    fn dims(&self, q: &Layout, k: &Layout, v: &Layout) -> Result<Dims> {
        let (batch, seq_q, head_dim) = hidden_dims(q, self.heads)?;
        let (k_batch, seq_k, k_head_dim) = hidden_dims(k, self.heads)?;
        if (k_batch, k_head_dim) != (batch, head_dim)
            || v.dims() != k.dims()
            || (self.mask_bias.dims() != [batch, seq_k]
                && self.mask_bias.dims() != [batch, self.heads, seq_q, seq_k])
        {
            candle_core::bail!(
                "{NAME}: queries {:?}, keys {:?}, values {:?}, mask {:?}",
                q.dims(),
                k.dims(),
                v.dims(),
                self.mask_bias.dims()
            );
        }
        Ok(Dims {
            batch,
            heads: self.heads,
            seq_q,
            seq_k,
            head_dim,
        })
    }

    /// The call's shapes, checked, and the data of `q`, `k` and `v`, for either pass.
    fn inputs<'a>(
        &self,
        (q, q_layout): (&'a CpuStorage, &Layout),
        (k, k_layout): (&'a CpuStorage, &Layout),
        (v, v_layout): (&'a CpuStorage, &Layout),
    ) -> Result<(Dims, [&'a [f32]; 3])> {
        Ok((
            self.dims(q_layout, k_layout, v_layout)?,
            [
                f32_slice(q, q_layout, NAME)?,
                f32_slice(k, k_layout, NAME)?,
                f32_slice(v, v_layout, NAME)?,
            ],
        ))
    }

    /// Head `task`'s attention probabilities into `probs`, `[seq_q, seq_k]`, before dropout.
    fn probabilities(
        &self,
        d: Dims,
        task: usize,
        q: &[f32],
        k: &[f32],
        mask: &[f32],
        probs: &mut [f32],
    ) {
        if mask.len() == d.batch * d.seq_k {
            let (b, _) = d.split(task);
            let mask_row = &mask[b * d.seq_k..(b + 1) * d.seq_k];
            for row in probs.chunks_exact_mut(d.seq_k) {
                row.copy_from_slice(mask_row);
            }
        } else {
            probs.copy_from_slice(&mask[task * d.block()..][..d.block()]);
        }
        // SAFETY: `probs` holds `seq_q x seq_k`; the heads lie inside `q` and `k`, whose shapes
        // `dims` checked.
        unsafe {
            product(
                (d.seq_q, d.seq_k, d.head_dim),
                (probs.as_mut_ptr(), d.seq_k, 1),
                true,
                (q.as_ptr().add(d.head(task, d.seq_q)), d.hidden(), 1),
                (k.as_ptr().add(d.head(task, d.seq_k)), 1, d.hidden()),
                self.scale,
                gemm::Parallelism::None,
            )
        }
        softmax_rows(probs, d.seq_k);
    }

    /// Dropout on head `task`'s block, as the unfused path drops that block of the tensor.
    fn drop(&self, d: Dims, task: usize, block: &mut [f32]) {
        if let Some((p, seed)) = self.dropout {
            dropout_in_place(block, task * d.block(), p, seed);
        }
    }
}

/// Calls `f` with the data of `tensor`, one the op holds rather than takes as an input.
fn with_f32<R>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("{NAME}: only CPU tensors are supported")
    };
    f(f32_slice(storage, layout, NAME)?)
}

/// The softmax of each `width`-long row of `block`, in place.
fn softmax_rows(block: &mut [f32], width: usize) {
    vectorised(
        #[inline(always)]
        || {
            for row in block.chunks_exact_mut(width) {
                let max = max(row);
                row.iter_mut().for_each(|x| *x = exp(*x - max));
                let scale = 1.0 / sum(row);
                row.iter_mut().for_each(|x| *x *= scale);
            }
        },
    )
}

/// Runs `task` for each (example, head) in parallel, each with `blocks` scratch blocks of its
/// own, and returns `out`, which the tasks fill through the pointer they are given.
fn per_head(
    d: Dims,
    blocks: usize,
    len: usize,
    task: impl Fn(usize, &mut [f32], *mut f32) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    let out_ptr = out.as_mut_ptr() as usize;
    (0..d.batch * d.heads).into_par_iter().for_each_init(
        || vec![0f32; blocks * d.block()],
        |scratch, index| task(index, scratch, out_ptr as *mut f32),
    );
    // SAFETY: the tasks' outputs tile the buffer's length, each written once.
    unsafe { out.set_len(len) };
    out
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        NAME
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (d, [q, k, v]) = self.inputs((q, q_layout), (k, k_layout), (v, v_layout))?;
        let len = d.batch * d.seq_q * d.hidden();
        let probs_len = d.batch * d.heads * d.block();
        let mut saved = Vec::with_capacity(if self.probs.is_some() { probs_len } else { 0 });
        let saved_ptr = saved.as_mut_ptr() as usize;
        let out = with_f32(&self.mask_bias, |mask| {
            Ok(per_head(d, 1, len, |task, probs, out| {
                self.probabilities(d, task, q, k, mask, probs);
                if self.probs.is_some() {
                    // SAFETY: each task writes its own block of the buffer's capacity.
                    unsafe {
                        let block = (saved_ptr as *mut f32).add(task * d.block());
                        std::ptr::copy_nonoverlapping(probs.as_ptr(), block, d.block());
                    }
                }
                self.drop(d, task, probs);
                // SAFETY: each task writes its own head's columns of the output; the heads
                // lie inside `v` and `out`.
                unsafe {
                    product(
                        (d.seq_q, d.head_dim, d.seq_k),
                        (out.add(d.head(task, d.seq_q)), d.hidden(), 1),
                        false,
                        (probs.as_ptr(), d.seq_k, 1),
                        (v.as_ptr().add(d.head(task, d.seq_k)), d.hidden(), 1),
                        1.0,
                        gemm::Parallelism::None,
                    )
                }
            }))
        })?;
        if let Some(probs) = &self.probs {
            // SAFETY: the tasks wrote every block.
            unsafe { saved.set_len(probs_len) };
            probs
                .set(saved)
                .map_err(|_| candle_core::Error::Msg(format!("{NAME}: run twice")))?;
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((d.batch, d.seq_q, d.hidden())),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grads = q.apply_op3_no_bwd(
            k,
            v,
            &AttentionBackward {
                forward: self.clone(),
                grad: grad.contiguous()?,
            },
        )?;
        // One buffer: the queries' gradient, then the keys', then the values'.
        let (q_len, kv_len) = (q.elem_count(), k.elem_count());
        Ok((
            Some(grads.narrow(0, 0, q_len)?.reshape(q.shape())?),
            Some(grads.narrow(0, q_len, kv_len)?.reshape(k.shape())?),
            Some(
                grads
                    .narrow(0, q_len + kv_len, kv_len)?
                    .reshape(v.shape())?,
            ),
        ))
    }
}

/// The gradients of [`attention`] with respect to `q`, `k` and `v`, flat and one after the
/// other, from the output's gradient `grad`.
struct AttentionBackward {
    forward: Attention,
    grad: Tensor,
}

/// One call's inputs and output buffer, as [`AttentionBackward::head`] reads them.
struct BackwardData<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    grad: &'a [f32],
    probs: &'a [f32],
}

impl AttentionBackward {
    /// Head `task`'s gradients, written to its columns of `dq`, `dk` and `dv`; `scratch`
    /// holds one block, two with dropout.
    ///
    /// # Safety
    /// `dq`, `dk` and `dv` hold the gradients of `q`, `k` and `v`, of the shapes in `d`.
    unsafe fn head(
        &self,
        d: Dims,
        task: usize,
        data: &BackwardData,
        scratch: &mut [f32],
        (dq, dk, dv): (*mut f32, *mut f32, *mut f32),
    ) {
        let op = &self.forward;
        let probs = &data.probs[task * d.block()..(task + 1) * d.block()];
        let (grad_probs, rest) = scratch.split_at_mut(d.block());
        let (q_head, kv_head) = (d.head(task, d.seq_q), d.head(task, d.seq_k));
        let hidden = d.hidden();
        let grad = data.grad.as_ptr().wrapping_add(q_head);
        let none = gemm::Parallelism::None;
        // SAFETY, for every product below: the blocks hold `seq_q x seq_k`; the heads lie
        // inside the inputs and the gradients (the caller's contract), and each task writes
        // its own head's columns.
        unsafe {
            // dP = dC v^T, then through the dropout.
            let v_head = data.v.as_ptr().add(kv_head);
            let (m, n, k) = (d.seq_q, d.seq_k, d.head_dim);
            let dst = (grad_probs.as_mut_ptr(), d.seq_k, 1);
            product(
                (m, n, k),
                dst,
                false,
                (grad, hidden, 1),
                (v_head, 1, hidden),
                1.0,
                none,
            );
            op.drop(d, task, grad_probs);
            // dV = dropout(P)^T dC.
            let dropped = match op.dropout {
                Some(_) => {
                    rest.copy_from_slice(probs);
                    op.drop(d, task, rest);
                    &*rest
                }
                None => probs,
            };
            let (m, n, k) = (d.seq_k, d.head_dim, d.seq_q);
            let lhs = (dropped.as_ptr(), 1, d.seq_k);
            product(
                (m, n, k),
                (dv.add(kv_head), hidden, 1),
                false,
                lhs,
                (grad, hidden, 1),
                1.0,
                none,
            );
        }
        // dS = P * (dP - sum(P * dP)), row by row: the softmax's backward.
        vectorised(
            #[inline(always)]
            || {
                let rows = probs
                    .chunks_exact(d.seq_k)
                    .zip(grad_probs.chunks_exact_mut(d.seq_k));
                for (p, g) in rows {
                    let dot = sum_of([p, &*g], |[p, g]| p * g);
                    g.iter_mut().zip(p).for_each(|(g, p)| *g = p * (*g - dot));
                }
            },
        );
        // dQ = scale dS k, dK = scale dS^T q.
        unsafe {
            let (q_head_ptr, k_head_ptr) =
                (data.q.as_ptr().add(q_head), data.k.as_ptr().add(kv_head));
            let dst = (dq.add(q_head), hidden, 1);
            let lhs = (grad_probs.as_ptr(), d.seq_k, 1);
            let (m, n, k) = (d.seq_q, d.head_dim, d.seq_k);
            product(
                (m, n, k),
                dst,
                false,
                lhs,
                (k_head_ptr, hidden, 1),
                op.scale,
                none,
            );
            let dst = (dk.add(kv_head), hidden, 1);
            let lhs = (grad_probs.as_ptr(), 1, d.seq_k);
            let (m, n, k) = (d.seq_k, d.head_dim, d.seq_q);
            product(
                (m, n, k),
                dst,
                false,
                lhs,
                (q_head_ptr, hidden, 1),
                op.scale,
                none,
            );
        }
    }
}

impl CustomOp3 for AttentionBackward {
    fn name(&self) -> &'static str {
        "kd-fused-attention-backward"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = &self.forward;
        let (d, [q, k, v]) = op.inputs((q, q_layout), (k, k_layout), (v, v_layout))?;
        let Some(probs) = op.probs.as_ref().and_then(|probs| probs.get()) else {
            candle_core::bail!("{}: the forward pass kept no probabilities", self.name())
        };
        let out = with_f32(&self.grad, |grad| {
            if grad.len() != q.len() {
                candle_core::bail!("{}: gradient {:?}", self.name(), self.grad.dims());
            }
            let data = BackwardData {
                q,
                k,
                v,
                grad,
                probs,
            };
            let (q_len, kv_len) = (q.len(), k.len());
            let blocks = if op.dropout.is_some() { 2 } else { 1 };
            Ok(per_head(
                d,
                blocks,
                q_len + 2 * kv_len,
                |task, scratch, out| {
                    // SAFETY: the buffer holds the three gradients, in this order.
                    unsafe {
                        let grads = (out, out.add(q_len), out.add(q_len + kv_len));
                        self.head(d, task, &data, scratch, grads)
                    }
                },
            ))
        })?;
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{context, scores};
    use crate::ops::tests::{check_gradients, max_diff, random};
    use crate::ops::{dropout, softmax_last_dim};
    use candle_core::Var;

    /// The unfused composition the fused op replaces.
    fn unfused(
        t: &[Tensor],
        mask: &Tensor,
        heads: usize,
        dropout_with: Option<(f32, u64)>,
    ) -> Tensor {
        let probs = softmax_last_dim(&scores(&t[0], &t[1], mask, heads, 0.5).unwrap()).unwrap();
        let probs = match dropout_with {
            Some((p, seed)) => dropout(&probs, p, seed).unwrap(),
            None => probs,
        };
        context(&probs, &t[2]).unwrap()
    }

    fn fused(t: &[Tensor], mask: &Tensor, heads: usize, dropout: Option<(f32, u64)>) -> Tensor {
        attention(&t[0], &t[1], &t[2], mask, heads, 0.5, dropout, true).unwrap()
    }

    /// Two examples, the second with its last key padded; `seq_q` queries over 5 keys.
    fn inputs(seq_q: usize) -> (Vec<Tensor>, Tensor) {
        let qkv = vec![
            random(&[2, seq_q, 8], 1),
            random(&[2, 5, 8], 2),
            random(&[2, 5, 8], 3),
        ];
        let mask = Tensor::new(
            &[[0f32, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, f32::MIN]],
            qkv[0].device(),
        )
        .unwrap();
        (qkv, mask)
    }

    #[test]
    fn matches_the_unfused_attention_and_its_gradients() {
        // All positions, and one query over every key (the [CLS]-only last layer); without
        // and with dropout, whose mask must be the unfused path's.
        for seq_q in [5, 1] {
            let (qkv, mask) = inputs(seq_q);
            for drop in [None, Some((0.3, 7))] {
                let (ours, reference) =
                    (fused(&qkv, &mask, 2, drop), unfused(&qkv, &mask, 2, drop));
                assert!(
                    max_diff(&ours, &reference) < 1e-5,
                    "{seq_q} queries, {drop:?}"
                );
                let vars: Vec<Var> = qkv.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
                let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
                let probe = random(ours.dims(), 9);
                let grads = |out: Tensor| {
                    (out * &probe)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .backward()
                        .unwrap()
                };
                let (ours, reference) = (
                    grads(fused(&tensors, &mask, 2, drop)),
                    grads(unfused(&tensors, &mask, 2, drop)),
                );
                for var in &vars {
                    let (a, b) = (ours.get(var).unwrap(), reference.get(var).unwrap());
                    assert!(max_diff(a, b) < 1e-5, "{seq_q} queries, {drop:?}");
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        // A mild mask: around f32::MIN the finite differences keep no digits.
        let (qkv, mask) = inputs(5);
        let mild = (mask.clamp(-1.0, 0.0)).unwrap();
        check_gradients(&|t| fused(t, &mild, 2, None), &qkv, 2e-3);
        check_gradients(&|t| fused(t, &mild, 2, Some((0.3, 7))), &qkv, 2e-3);
    }
}
