//! Fused CPU kernels with hand-written backward passes: softmax over the last dimension,
//! layer normalisation and erf-GELU. candle 0.11's fused softmax and layer norm have no
//! backward, and composing them from tensor ops allocates and walks an intermediate per step
//! (and keeps each for the backward pass); these make one parallel pass each way.
//! The backward kernels are themselves ops without a backward (no second derivatives).

use crate::math::{erf, exp, max, sum, sum_of, vectorised};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// Elements per parallel task: enough work to amortise waking a thread.
pub(crate) const CHUNK: usize = 1 << 14;

/// Rows of `width` elements per parallel task.
pub(crate) fn rows_per_task(width: usize) -> usize {
    (CHUNK / width.max(1)).max(1)
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    Rows::<Softmax>::apply(xs)
}

/// Log-softmax over the last dimension, as the cross-entropy losses take it: one pass each way,
/// where candle_nn's composition made six forward and as many backward, with libm's scalar
/// `expf` (a masked-LM loss runs it over the whole vocabulary at every masked position).
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    Rows::<LogSoftmax>::apply(xs)
}

/// Layer normalisation over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    xs.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        LayerNorm { eps },
    )
}

/// A dense layer, `xs W^T + b` over the last dimension, with `xs` `[..., in]`, `weight` HF's
/// `[out, in]` and `bias` `[out]`. Each output row starts as the bias and gemm adds the product
/// to it: no zero-filled buffer, no second pass for the bias; and one node in the graph, where
/// reshapes and a transposed view would each cost the backward pass a zero-filled gradient
/// and an addition.
pub fn dense(xs: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    xs.contiguous()?
        .apply_op3(weight, &bias.contiguous()?, Dense)
}

/// GELU with the exact (erf) formulation, as BERT's `hidden_act = "gelu"`.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(GeluErf)
}

/// Inverted dropout: each element zeroed with probability `p`, the rest scaled by `1/(1-p)`,
/// the mask drawn from `seed` alone. The backward pass draws the mask again instead of keeping
/// it, and no gradient is made for the mask (candle's product would make one).
pub fn dropout(xs: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    xs.contiguous()?.apply_op1(Dropout { p, seed })
}

/// Elements per mask chunk; each chunk's key is drawn from the seed and the chunk's index, so
/// that the mask is drawn in parallel and depends on the seed alone.
const MASK_CHUNK: usize = 1 << 14;
/// Spreads chunk indices over the seed's bits (the golden-ratio constant of splitmix64).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// Element `i`'s draw in a chunk with `key`: a Weyl sequence through Wellons's `lowbias32`
/// hash. Each element's draw is independent of the others', so the loop vectorises, where a
/// generator stepped element by element (as before) was 7% of a training step.
#[inline(always)]
fn mask_draw(key: u32, i: u32) -> u32 {
    let mut x = key.wrapping_add(i.wrapping_mul(0x9E37_79B9));
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

/// The key of a dropout mask's chunk `chunk`, drawn from the seed.
fn chunk_key(seed: u64, chunk: usize) -> u32 {
    use rand::{RngCore, SeedableRng, rngs::SmallRng};
    SmallRng::seed_from_u64(seed ^ (chunk as u64).wrapping_mul(GOLDEN)).next_u32()
}

/// What a dropout of probability `p` does to one element: the one rule behind [`dropout`]
/// and [`dropout_in_place`], so that the two draw the same masks.
#[derive(Clone, Copy)]
struct DropoutRule {
    /// The draw below which an element is dropped.
    threshold: u32,
    /// The scale of the elements kept.
    keep_scale: f32,
}

impl DropoutRule {
    fn new(p: f32) -> Self {
        Self {
            threshold: (p as f64 * 2f64.powi(32)).min(u32::MAX as f64) as u32,
            keep_scale: 1.0 / (1.0 - p),
        }
    }

    /// `x`, element `i` of the chunk with `key`, after the dropout.
    #[inline(always)]
    fn apply(self, key: u32, i: u32, x: f32) -> f32 {
        if mask_draw(key, i) >= self.threshold {
            x * self.keep_scale
        } else {
            0.0
        }
    }
}

/// [`dropout`] in place on `xs`, elements `offset..offset + xs.len()` of a flat tensor: the
/// same mask as `dropout(tensor, p, seed)` draws for those elements.
pub(crate) fn dropout_in_place(xs: &mut [f32], offset: usize, p: f32, seed: u64) {
    let rule = DropoutRule::new(p);
    let mut start = 0;
    while start < xs.len() {
        let (chunk, first) = ((offset + start) / MASK_CHUNK, (offset + start) % MASK_CHUNK);
        let len = (MASK_CHUNK - first).min(xs.len() - start);
        let key = chunk_key(seed, chunk);
        let segment = &mut xs[start..start + len];
        vectorised(
            #[inline(always)]
            || {
                for (i, x) in segment.iter_mut().enumerate() {
                    *x = rule.apply(key, (first + i) as u32, *x);
                }
            },
        );
        start += len;
    }
}

#[derive(Clone, Copy)]
struct Dropout {
    p: f32,
    seed: u64,
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "kd-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(storage, layout, self.name())?;
        let rule = DropoutRule::new(self.p);
        let mut out = Vec::with_capacity(xs.len());
        out.spare_capacity_mut()
            .par_chunks_mut(MASK_CHUNK)
            .zip(xs.par_chunks(MASK_CHUNK))
            .enumerate()
            .for_each(|(chunk, (out, xs))| {
                let key = chunk_key(self.seed, chunk);
                vectorised(
                    #[inline(always)]
                    || {
                        for (i, (out, &x)) in out.iter_mut().zip(xs).enumerate() {
                            out.write(rule.apply(key, i as u32, x));
                        }
                    },
                )
            });
        // SAFETY: every element was just written.
        unsafe { out.set_len(xs.len()) };
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _xs: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // The same mask over the gradient.
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(self)?))
    }
}

/// An op input's `f32` storage, whatever its layout.
fn f32_storage<'a>(storage: &'a CpuStorage, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 tensors are supported")
    };
    Ok(data)
}

/// The contiguous `f32` data of an op's input.
pub fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let data = f32_storage(storage, op)?;
    let (start, end) = contiguous_range(layout, op)?;
    Ok(&data[start..end])
}

/// The contiguous `f32` data of an in-place op's destination.
pub fn f32_slice_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: only f32 tensors are supported")
    };
    let (start, end) = contiguous_range(layout, op)?;
    Ok(&mut data[start..end])
}

fn contiguous_range(layout: &Layout, op: &str) -> Result<(usize, usize)> {
    match layout.contiguous_offsets() {
        Some(range) => Ok(range),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// A matrix operand of [`product`]: its first element, row stride and column stride.
pub(crate) type Strided<P> = (P, usize, usize);

/// gemm's `dst = beta * lhs rhs` (`m x k` by `k x n`), added to what `dst` holds when
/// `accumulate`.
///
/// # Safety
/// Each pointer with its strides must describe a matrix of its size inside a live buffer, and
/// nothing else may write `dst`'s elements meanwhile.
pub(crate) unsafe fn product(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, dst_cs): Strided<*mut f32>,
    accumulate: bool,
    (lhs, lhs_rs, lhs_cs): Strided<*const f32>,
    (rhs, rhs_rs, rhs_cs): Strided<*const f32>,
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// A 2-D input of an op as a [`product`] operand: its first element and strides.
fn matrix(storage: &CpuStorage, layout: &Layout, op: &str) -> Result<Strided<*const f32>> {
    let data = f32_storage(storage, op)?;
    let [rows, cols] = layout.stride()[..] else {
        candle_core::bail!("{op}: expected a matrix, got {:?}", layout.dims())
    };
    Ok((data[layout.start_offset()..].as_ptr(), rows, cols))
}

/// gemm on every thread of the pool (none beside the caller's when it has one).
fn pool_parallelism() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        1 => gemm::Parallelism::None,
        threads => gemm::Parallelism::Rayon(threads),
    }
}

/// `rows` rows of `width` elements, row `r` a copy of `source(r)`, written in parallel: the
/// starting values that gemm then adds a product to (no zero-filled buffer first).
pub(crate) fn filled_rows<'a>(
    rows: usize,
    width: usize,
    source: impl Fn(usize) -> &'a [f32] + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * width);
    out.spare_capacity_mut()
        .par_chunks_mut(width.max(1))
        .with_min_len(rows_per_task(width))
        .enumerate()
        .for_each(|(row, out)| {
            for (out, &value) in out.iter_mut().zip(source(row)) {
                out.write(value);
            }
        });
    // SAFETY: every row was just initialised from its source, `width` elements long.
    unsafe { out.set_len(rows * width) };
    out
}

pub(crate) fn last_dim(layout: &Layout) -> usize {
    layout.dims().last().copied().unwrap_or(1)
}

/// Output rows computed row by row from rows of the inputs, in parallel tasks of about
/// [`CHUNK`] elements (a small tensor is one task: waking a thread costs more). `f` gets its
/// output row uninitialised (no zero fill of the whole output first) and returns it written,
/// through [`init_with`].
fn map_rows<const N: usize>(
    inputs: [&[f32]; N],
    dim: usize,
    f: impl for<'o> Fn(&'o mut [MaybeUninit<f32>], [&[f32]; N]) -> &'o mut [f32] + Sync,
) -> Vec<f32> {
    let len = inputs[0].len();
    let mut out = Vec::with_capacity(len);
    let rows_per_task = rows_per_task(dim);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(rows_per_task * dim.max(1))
        .enumerate()
        .for_each(|(task, out)| {
            vectorised(
                #[inline(always)]
                || {
                    for (row, out) in out.chunks_mut(dim).enumerate() {
                        let start = (task * rows_per_task + row) * dim;
                        let row_start = out.as_ptr();
                        let written = f(out, inputs.map(|input| &input[start..start + dim]));
                        assert!(written.as_ptr() == row_start.cast() && written.len() == dim);
                    }
                },
            )
        });
    // SAFETY: every row was written: `f` returned it initialised (checked above).
    unsafe { out.set_len(len) };
    out
}

/// Writes `value(i)` into every element of `out` and returns it, initialised.
#[inline(always)]
fn init_with(out: &mut [MaybeUninit<f32>], value: impl Fn(usize) -> f32) -> &mut [f32] {
    for (i, out) in out.iter_mut().enumerate() {
        out.write(value(i));
    }
    // SAFETY: every element was just written; `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `width` sums over `rows` rows, in parallel: `accumulate(sums, row)` adds one row's terms.
/// Rows are summed in fixed blocks whose sums are then added in order, so that the result has
/// the same bits on every run (a work-stealing reduction groups the terms differently each
/// time), and a resumed run trains exactly as an uninterrupted one.
fn sum_rows(rows: usize, width: usize, accumulate: impl Fn(&mut [f32], usize) + Sync) -> Vec<f32> {
    let block = rows_per_task(width);
    let partial: Vec<Vec<f32>> = (0..rows.div_ceil(block))
        .into_par_iter()
        .map(|index| {
            let mut sums = vec![0f32; width];
            for row in index * block..((index + 1) * block).min(rows) {
                accumulate(&mut sums, row);
            }
            sums
        })
        .collect();
    let mut total = vec![0f32; width];
    for sums in partial {
        total.iter_mut().zip(sums).for_each(|(a, b)| *a += b);
    }
    total
}

/// A function of one or two elements, applied by [`map_elements`].
trait ElementFn: Sync {
    /// Implementations are `#[inline(always)]`: a call left in the loop (as a closure of
    /// some size is) keeps it from vectorising.
    fn apply(&self, a: f32, b: f32) -> f32;
}

/// Elementwise `out[i] = f(a[i], b[i])` (`b` may be empty for a one-input `f`), vectorised,
/// in parallel chunks. (Zipped slices vectorise; indexing an array of inputs does not.)
fn map_elements(a: &[f32], b: &[f32], f: impl ElementFn) -> Vec<f32> {
    let mut out = Vec::with_capacity(a.len());
    out.spare_capacity_mut()
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let range = chunk * CHUNK..chunk * CHUNK + out.len();
            let a = &a[range.clone()];
            vectorised(
                #[inline(always)]
                || {
                    if b.is_empty() {
                        for (out, &a) in out.iter_mut().zip(a) {
                            out.write(f.apply(a, 0.0));
                        }
                    } else {
                        for ((out, &a), &b) in out.iter_mut().zip(a).zip(&b[range]) {
                            out.write(f.apply(a, b));
                        }
                    }
                },
            )
        });
    // SAFETY: every chunk wrote each of its elements.
    unsafe { out.set_len(a.len()) };
    out
}

/// A row-wise operation over the last dimension whose backward pass needs only its own output
/// and that output's gradient: softmax and log-softmax, each one pass a row each way.
trait RowKernel: Send + Sync + 'static {
    const NAME: &'static str;
    const BACKWARD_NAME: &'static str;
    /// Writes the output of row `xs` into `out` (as long as `xs`).
    fn forward<'o>(out: &'o mut [MaybeUninit<f32>], xs: &[f32]) -> &'o mut [f32];
    /// Writes the input's gradient from the row's output `ys` and the output's gradient `g`.
    fn backward<'o>(out: &'o mut [MaybeUninit<f32>], ys: &[f32], g: &[f32]) -> &'o mut [f32];
}

/// A [`RowKernel`] as a candle operation with its backward pass.
struct Rows<K>(PhantomData<K>);

impl<K: RowKernel> Rows<K> {
    fn apply(xs: &Tensor) -> Result<Tensor> {
        xs.contiguous()?.apply_op1(Self(PhantomData))
    }
}

impl<K: RowKernel> CustomOp1 for Rows<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(storage, layout, K::NAME)?;
        let out = map_rows(
            [xs],
            last_dim(layout),
            #[inline(always)]
            |out, [xs]| K::forward(out, xs),
        );
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _xs: &Tensor, ys: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(ys.apply_op2_no_bwd(
            &grad,
            &RowsBackward::<K>(PhantomData),
        )?))
    }
}

struct RowsBackward<K>(PhantomData<K>);

impl<K: RowKernel> CustomOp2 for RowsBackward<K> {
    fn name(&self) -> &'static str {
        K::BACKWARD_NAME
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        ys_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ys = f32_slice(ys, ys_layout, K::BACKWARD_NAME)?;
        let grad = f32_slice(grad, grad_layout, K::BACKWARD_NAME)?;
        let out = map_rows(
            [ys, grad],
            last_dim(ys_layout),
            #[inline(always)]
            |out, [ys, g]| K::backward(out, ys, g),
        );
        Ok((CpuStorage::F32(out), ys_layout.shape().clone()))
    }
}

struct Softmax;

impl RowKernel for Softmax {
    const NAME: &'static str = "kd-softmax";
    const BACKWARD_NAME: &'static str = "kd-softmax-backward";

    #[inline(always)]
    fn forward<'o>(out: &'o mut [MaybeUninit<f32>], xs: &[f32]) -> &'o mut [f32] {
        // Slices of the output's length let the indexed loops drop bounds checks.
        let xs = &xs[..out.len()];
        let max = max(xs);
        let out = init_with(out, |i| exp(xs[i] - max));
        let scale = 1.0 / sum(out);
        out.iter_mut().for_each(|out| *out *= scale);
        out
    }

    /// `dx = p * (g - sum(g * p))`.
    #[inline(always)]
    fn backward<'o>(out: &'o mut [MaybeUninit<f32>], p: &[f32], g: &[f32]) -> &'o mut [f32] {
        let (p, g) = (&p[..out.len()], &g[..out.len()]);
        let dot = sum_of([p, g], |[p, g]| p * g);
        init_with(out, |i| p[i] * (g[i] - dot))
    }
}

struct LogSoftmax;

impl RowKernel for LogSoftmax {
    const NAME: &'static str = "kd-log-softmax";
    const BACKWARD_NAME: &'static str = "kd-log-softmax-backward";

    #[inline(always)]
    fn forward<'o>(out: &'o mut [MaybeUninit<f32>], xs: &[f32]) -> &'o mut [f32] {
        let xs = &xs[..out.len()];
        let max = max(xs);
        let log_total = sum_of([xs], |[x]| exp(x - max)).ln() + max;
        init_with(out, |i| xs[i] - log_total)
    }

    /// `dx = g - softmax(x) * sum(g)`, the probabilities read back as `exp(log_probs)`.
    #[inline(always)]
    fn backward<'o>(out: &'o mut [MaybeUninit<f32>], log_p: &[f32], g: &[f32]) -> &'o mut [f32] {
        let (log_p, g) = (&log_p[..out.len()], &g[..out.len()]);
        let total = sum(g);
        init_with(out, |i| g[i] - exp(log_p[i]) * total)
    }
}

struct Dense;

impl CustomOp3 for Dense {
    fn name(&self) -> &'static str {
        "kd-dense"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(xs, xs_layout, self.name())?;
        let bias = f32_slice(bias, bias_layout, self.name())?;
        let in_dim = last_dim(xs_layout);
        let rows = xs.len() / in_dim.max(1);
        let (out_dim, weight_in) = weight_layout.shape().dims2()?;
        if weight_in != in_dim || bias.len() != out_dim {
            candle_core::bail!(
                "kd-dense: rows of {in_dim} through a [{out_dim}, {weight_in}] weight and a bias of {}",
                bias.len()
            );
        }
        let (weight, weight_out_stride, weight_in_stride) =
            matrix(weight, weight_layout, self.name())?;
        let mut out = filled_rows(rows, out_dim, |_| bias);
        // SAFETY: `out` is [rows, out], `xs` [rows, in] (contiguous) and `W^T` [in, out] (the
        // weight's layout read transposed).
        unsafe {
            product(
                (rows, out_dim, in_dim),
                (out.as_mut_ptr(), out_dim, 1),
                true,
                (xs.as_ptr(), in_dim, 1),
                (weight, weight_in_stride, weight_out_stride),
                1.0,
                pool_parallelism(),
            )
        };
        Ok((CpuStorage::F32(out), with_last_dim(xs_layout, out_dim)))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (out_dim, in_dim) = weight.dims2()?;
        let grad = grad.contiguous()?.reshape(((), out_dim))?;
        let xs_rows = xs.reshape(((), in_dim))?;
        let grad_xs = grad
            .apply_op2_no_bwd(weight, &Product)?
            .reshape(xs.shape())?;
        let grad_weight = grad.t()?.apply_op2_no_bwd(&xs_rows, &Product)?;
        let grad_bias = grad.apply_op1_no_bwd(&SumRows)?;
        Ok((
            Some(grad_xs),
            Some(grad_weight),
            Some(grad_bias.reshape(bias.shape())?),
        ))
    }
}

/// The product of two matrices of any strides, into a buffer gemm writes without reading
/// (candle's `matmul` zero-fills its output first).
struct Product;

impl CustomOp2 for Product {
    fn name(&self) -> &'static str {
        "kd-product"
    }

    fn cpu_fwd(
        &self,
        lhs: &CpuStorage,
        lhs_layout: &Layout,
        rhs: &CpuStorage,
        rhs_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = lhs_layout.shape().dims2()?;
        let (rhs_k, n) = rhs_layout.shape().dims2()?;
        if rhs_k != k {
            candle_core::bail!("kd-product: [{m}, {k}] by [{rhs_k}, {n}]");
        }
        let mut out = Vec::with_capacity(m * n);
        // SAFETY: `out` has room for [m, n]; each operand's pointer and strides come from its
        // layout inside its storage.
        unsafe {
            product(
                (m, n, k),
                (out.as_mut_ptr(), n, 1),
                false,
                matrix(lhs, lhs_layout, self.name())?,
                matrix(rhs, rhs_layout, self.name())?,
                1.0,
                pool_parallelism(),
            );
            // gemm wrote every element (it does not read `dst` when not accumulating).
            out.set_len(m * n);
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// A layout's shape with its last dimension replaced.
pub(crate) fn with_last_dim(layout: &Layout, dim: usize) -> Shape {
    let mut dims = layout.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last = dim;
    }
    Shape::from(dims)
}

/// Output features per panel of a [`PackedWeight`]: one gemm microkernel's width.
const PANEL: usize = 64;

/// A dense layer's weight packed for inference on few rows: `W^T` cut into panels of
/// [`PANEL`] output features, each `[in, PANEL]` and contiguous. gemm then streams every panel
/// from memory in order, where reading `W^T` in place jumps a whole row of it between
/// consecutive inputs (defeating the prefetcher), and packing it costs a pass per call.
#[derive(Debug, Clone)]
pub struct PackedWeight {
    panels: Tensor,
    out_dim: usize,
}

impl PackedWeight {
    /// Packs an HF weight, `[out, in]`.
    pub fn new(weight: &Tensor) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        let padded = out_dim.div_ceil(PANEL) * PANEL;
        let weight_t = weight
            .detach()
            .t()?
            .pad_with_zeros(1, 0, padded - out_dim)?;
        let panels = weight_t
            .reshape((in_dim, padded / PANEL, PANEL))?
            .transpose(0, 1)?
            .contiguous()?;
        Ok(Self { panels, out_dim })
    }
}

/// [`dense`] through a [`PackedWeight`], without a gradient: one gemm per panel, the panels
/// shared out between threads.
pub fn dense_packed(xs: &Tensor, weight: &PackedWeight, bias: &Tensor) -> Result<Tensor> {
    xs.contiguous()?.apply_op3_no_bwd(
        &weight.panels,
        &bias.contiguous()?,
        &DensePacked {
            out_dim: weight.out_dim,
        },
    )
}

struct DensePacked {
    out_dim: usize,
}

impl CustomOp3 for DensePacked {
    fn name(&self) -> &'static str {
        "kd-dense-packed"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        panels: &CpuStorage,
        panels_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(xs, xs_layout, self.name())?;
        let panels = f32_slice(panels, panels_layout, self.name())?;
        let bias = f32_slice(bias, bias_layout, self.name())?;
        let in_dim = last_dim(xs_layout);
        let rows = xs.len() / in_dim.max(1);
        let (count, panel_in, _) = panels_layout.shape().dims3()?;
        let out_dim = self.out_dim;
        if panel_in != in_dim || bias.len() != out_dim {
            candle_core::bail!("kd-dense-packed: rows of {in_dim} through panels of {panel_in}");
        }
        let mut out = filled_rows(rows, out_dim, |_| bias);
        let dst = out.as_mut_ptr() as usize;
        (0..count).into_par_iter().for_each(|panel| {
            let width = PANEL.min(out_dim - panel * PANEL);
            // SAFETY: each panel writes its own columns of `out` ([rows, out_dim]); `xs` is
            // [rows, in] and the panel [in, PANEL], both contiguous.
            unsafe {
                product(
                    (rows, width, in_dim),
                    ((dst as *mut f32).add(panel * PANEL), out_dim, 1),
                    true,
                    (xs.as_ptr(), in_dim, 1),
                    (panels.as_ptr().add(panel * in_dim * PANEL), PANEL, 1),
                    1.0,
                    gemm::Parallelism::None,
                )
            }
        });
        Ok((CpuStorage::F32(out), with_last_dim(xs_layout, out_dim)))
    }
}

/// The sum of a matrix's rows.
struct SumRows;

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "kd-sum-rows"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(storage, layout, self.name())?;
        let dim = last_dim(layout);
        let sums = sum_rows(xs.len() / dim, dim, |sums, row| {
            let row = &xs[row * dim..(row + 1) * dim];
            sums.iter_mut().zip(row).for_each(|(sum, x)| *sum += x);
        });
        Ok((CpuStorage::F32(sums), Shape::from(dim)))
    }
}

/// A row's mean and reciprocal standard deviation.
#[inline(always)]
fn moments(xs: &[f32], eps: f32) -> (f32, f32) {
    let n = xs.len() as f32;
    let mean = sum(xs) / n;
    let squares = sum_of([xs], |[x]| (x - mean) * (x - mean));
    (mean, 1.0 / (squares / n + eps).sqrt())
}

struct LayerNorm {
    eps: f32,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "kd-layer-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(xs, xs_layout, self.name())?;
        let weight = f32_slice(weight, weight_layout, self.name())?;
        let bias = f32_slice(bias, bias_layout, self.name())?;
        let dim = last_dim(xs_layout);
        if weight.len() != dim || bias.len() != dim {
            candle_core::bail!(
                "layer norm over {dim} features with {} weights",
                weight.len()
            );
        }
        let out = map_rows(
            [xs],
            dim,
            #[inline(always)]
            |out, [xs]| {
                let (xs, weight, bias) = (&xs[..dim], &weight[..dim], &bias[..dim]);
                let (mean, rstd) = moments(xs, self.eps);
                init_with(out, |i| (xs[i] - mean) * rstd * weight[i] + bias[i])
            },
        );
        Ok((CpuStorage::F32(out), xs_layout.shape().clone()))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let eps = self.eps;
        let grad_xs = xs.apply_op3_no_bwd(weight, &grad, &LayerNormInputGrad { eps })?;
        let param_grads = xs.apply_op2_no_bwd(&grad, &LayerNormParamGrads { eps })?;
        Ok((
            Some(grad_xs),
            Some(param_grads.get(0)?),
            Some(param_grads.get(1)?),
        ))
    }
}

/// `dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat))` with `gw = g * weight`.
struct LayerNormInputGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormInputGrad {
    fn name(&self) -> &'static str {
        "kd-layer-norm-input-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(xs, xs_layout, self.name())?;
        let weight = f32_slice(weight, weight_layout, self.name())?;
        let grad = f32_slice(grad, grad_layout, self.name())?;
        let dim = last_dim(xs_layout);
        let out = map_rows(
            [xs, grad],
            dim,
            #[inline(always)]
            |out, [xs, grad]| {
                let (xs, grad, weight) = (&xs[..dim], &grad[..dim], &weight[..dim]);
                let (mean, rstd) = moments(xs, self.eps);
                let sum_gw = sum_of([grad, weight], |[g, w]| g * w);
                let sum_gw_xhat = sum_of([grad, weight, xs], |[g, w, x]| g * w * (x - mean)) * rstd;
                let (mean_gw, mean_gw_xhat) = (sum_gw / dim as f32, sum_gw_xhat / dim as f32);
                init_with(out, |i| {
                    let xhat = (xs[i] - mean) * rstd;
                    rstd * (grad[i] * weight[i] - mean_gw - xhat * mean_gw_xhat)
                })
            },
        );
        Ok((CpuStorage::F32(out), xs_layout.shape().clone()))
    }
}

/// `[2, dim]`: the weight's gradient `sum(g * xhat)` and the bias's `sum(g)` over all rows.
struct LayerNormParamGrads {
    eps: f32,
}

impl CustomOp2 for LayerNormParamGrads {
    fn name(&self) -> &'static str {
        "kd-layer-norm-param-grads"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(xs, xs_layout, self.name())?;
        let grad = f32_slice(grad, grad_layout, self.name())?;
        let dim = last_dim(xs_layout);
        let sums = sum_rows(xs.len() / dim, 2 * dim, |sums, row| {
            let (xs, grad) = (
                &xs[row * dim..(row + 1) * dim],
                &grad[row * dim..(row + 1) * dim],
            );
            let (mean, rstd) = moments(xs, self.eps);
            let (weight, bias) = sums.split_at_mut(dim);
            for i in 0..dim {
                weight[i] += grad[i] * (xs[i] - mean) * rstd;
                bias[i] += grad[i];
            }
        });
        Ok((CpuStorage::F32(sums), Shape::from((2, dim))))
    }
}

const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `x * cdf(x)`.
struct Gelu;

impl ElementFn for Gelu {
    #[inline(always)]
    fn apply(&self, x: f32, _: f32) -> f32 {
        x * normal_cdf(x)
    }
}

/// `dx = g * (cdf(x) + x * pdf(x))`.
struct GeluGrad;

impl ElementFn for GeluGrad {
    #[inline(always)]
    fn apply(&self, x: f32, g: f32) -> f32 {
        g * (normal_cdf(x) + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x))
    }
}

/// The standard normal's cumulative distribution.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "kd-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(storage, layout, self.name())?;
        let out = map_elements(xs, &[], Gelu);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, xs: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            xs.apply_op2_no_bwd(&grad.contiguous()?, &GeluErfBackward)?,
        ))
    }
}

/// GELU's backward pass, [`GeluGrad`] element by element.
struct GeluErfBackward;

impl CustomOp2 for GeluErfBackward {
    fn name(&self) -> &'static str {
        "kd-gelu-erf-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(xs, xs_layout, self.name())?;
        let grad = f32_slice(grad, grad_layout, self.name())?;
        let out = map_elements(xs, grad, GeluGrad);
        Ok((CpuStorage::F32(out), xs_layout.shape().clone()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{D, Device, Var};

    pub(crate) fn random(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(seed);
        let n = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The gradient of `sum(f(inputs) * probe)` with respect to `inputs[which]` by central
    /// differences, in f64 arithmetic on the f32 function.
    fn numeric_grad(
        f: &dyn Fn(&[Tensor]) -> Tensor,
        inputs: &[Tensor],
        which: usize,
        probe: &Tensor,
    ) -> Vec<f32> {
        let h = 1e-2f32;
        let base: Vec<f32> = inputs[which].flatten_all().unwrap().to_vec1().unwrap();
        let objective = |values: &[f32]| -> f64 {
            let mut moved = inputs.to_vec();
            moved[which] = Tensor::from_slice(values, inputs[which].shape(), &Device::Cpu).unwrap();
            let out = f(&moved).broadcast_mul(probe).unwrap();
            let out: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
            out.iter().map(|&v| v as f64).sum()
        };
        (0..base.len())
            .map(|i| {
                let mut up = base.clone();
                up[i] += h;
                let mut down = base.clone();
                down[i] -= h;
                ((objective(&up) - objective(&down)) / (2.0 * h as f64)) as f32
            })
            .collect()
    }

    /// Checks the op's analytic gradients for every input against finite differences.
    pub(crate) fn check_gradients(
        f: &dyn Fn(&[Tensor]) -> Tensor,
        inputs: &[Tensor],
        tolerance: f32,
    ) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = f(&tensors);
        let probe = random(out.dims(), 99);
        let grads = (out * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (which, var) in vars.iter().enumerate() {
            let analytic: Vec<f32> = grads
                .get(var.as_tensor())
                .expect("every input gets a gradient")
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let numeric = numeric_grad(f, inputs, which, &probe);
            for (a, n) in analytic.iter().zip(&numeric) {
                assert!(
                    (a - n).abs() <= tolerance * (1.0 + n.abs()),
                    "input {which}: analytic {a} vs numeric {n}"
                );
            }
        }
    }

    #[test]
    fn dropout_keeps_or_zeroes_each_element_and_its_gradient_alike() {
        let xs = Var::from_tensor(&random(&[40, 1000], 3)).unwrap();
        let weights = random(&[40, 1000], 4);
        let out = dropout(xs.as_tensor(), 0.25, 9).unwrap();
        // The mask, from the same seed over ones.
        let mask_of = |seed| {
            let ones = Tensor::ones((40, 1000), candle_core::DType::F32, &Device::Cpu).unwrap();
            dropout(&ones, 0.25, seed).unwrap()
        };
        let mask = mask_of(9);
        let mask_values: Vec<f32> = mask.flatten_all().unwrap().to_vec1().unwrap();
        let dropped = mask_values.iter().filter(|&&m| m == 0.0).count() as f64 / 40_000.0;
        assert!((dropped - 0.25).abs() < 0.01, "{dropped}");
        assert!(mask_values.iter().all(|&m| m == 0.0 || m == 1.0 / 0.75));
        assert_eq!(max_diff(&out, &(xs.as_tensor() * &mask).unwrap()), 0.0);
        let grads = (out * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let grad = grads.get(xs.as_tensor()).unwrap();
        assert_eq!(max_diff(grad, &(weights * &mask).unwrap()), 0.0);
        // Neighbours are drawn independently: both dropped about p^2 of the time.
        let both = mask_values
            .windows(2)
            .filter(|pair| pair[0] == 0.0 && pair[1] == 0.0)
            .count() as f64
            / 39_999.0;
        assert!((both - 0.0625).abs() < 0.01, "{both}");
        // Another seed, another mask.
        let other = mask_of(10);
        assert!(max_diff(&other, &mask) > 0.0);
    }

    #[test]
    fn softmax_matches_candle_and_finite_differences() {
        let xs = random(&[3, 4, 7], 1);
        let reference = candle_nn::ops::softmax(&xs, D::Minus1).unwrap();
        assert!(max_diff(&softmax_last_dim(&xs).unwrap(), &reference) < 1e-6);
        check_gradients(&|t| softmax_last_dim(&t[0]).unwrap(), &[xs], 2e-3);
    }

    #[test]
    fn log_softmax_matches_candle_and_finite_differences() {
        let xs = random(&[3, 4, 7], 2);
        let reference = candle_nn::ops::log_softmax(&xs, D::Minus1).unwrap();
        assert!(max_diff(&log_softmax_last_dim(&xs).unwrap(), &reference) < 1e-5);
        // Rows far from zero: the maximum is taken out before the exponential.
        let large = (random(&[2, 5], 3) * 1000.0).unwrap();
        let reference = candle_nn::ops::log_softmax(&large, D::Minus1).unwrap();
        assert!(max_diff(&log_softmax_last_dim(&large).unwrap(), &reference) < 1e-3);
        check_gradients(&|t| log_softmax_last_dim(&t[0]).unwrap(), &[xs], 2e-3);
    }

    #[test]
    fn softmax_gives_masked_keys_zero_probability() {
        let xs = Tensor::new(&[[1.0f32, f32::MIN + 1.0, 2.0]], &Device::Cpu).unwrap();
        let probs: Vec<f32> = softmax_last_dim(&xs)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(probs[1], 0.0);
        assert!((probs[0] + probs[2] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_matches_candle_and_finite_differences() {
        let xs = (random(&[2, 5, 8], 2) * 3.0).unwrap();
        let weight = (random(&[8], 3) + 1.0).unwrap();
        let bias = random(&[8], 4);
        let reference = candle_nn::ops::layer_norm_slow(&xs, &weight, &bias, 1e-12).unwrap();
        let fused = layer_norm(&xs, &weight, &bias, 1e-12).unwrap();
        assert!(max_diff(&fused, &reference) < 1e-5);
        check_gradients(
            &|t| layer_norm(&t[0], &t[1], &t[2], 1e-12).unwrap(),
            &[xs, weight, bias],
            2e-3,
        );
    }

    #[test]
    fn dense_matches_matmul_and_finite_differences() {
        let (xs, weight, bias) = (random(&[6, 5], 6), random(&[4, 5], 7), random(&[4], 8));
        let reference = xs
            .matmul(&weight.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        assert!(max_diff(&dense(&xs, &weight, &bias).unwrap(), &reference) < 1e-6);
        // A weight in any layout: here stored as [in, out] and viewed transposed.
        let strided = weight.t().unwrap().contiguous().unwrap().t().unwrap();
        assert!(max_diff(&dense(&xs, &strided, &bias).unwrap(), &reference) < 1e-6);
        let packed = PackedWeight::new(&weight).unwrap();
        assert!(max_diff(&dense_packed(&xs, &packed, &bias).unwrap(), &reference) < 1e-6);
        // As frozen layers with long inputs use it: many rows, a last panel partly filled.
        let (xs_long, weight_long, bias_long) = (
            random(&[300, 2100], 9),
            random(&[70, 2100], 10),
            random(&[70], 11),
        );
        let packed_long = PackedWeight::new(&weight_long).unwrap();
        let expected = dense(&xs_long, &weight_long, &bias_long).unwrap();
        let diff = max_diff(
            &dense_packed(&xs_long, &packed_long, &bias_long).unwrap(),
            &expected,
        );
        assert!(diff < 1e-4, "{diff}");
        // Leading dimensions are rows too.
        let batched = dense(&xs.reshape((2, 3, 5)).unwrap(), &weight, &bias).unwrap();
        assert_eq!(batched.dims(), [2, 3, 4]);
        assert!(max_diff(&batched.reshape((6, 4)).unwrap(), &reference) < 1e-6);
        check_gradients(
            &|t| dense(&t[0], &t[1], &t[2]).unwrap(),
            &[xs.reshape((2, 3, 5)).unwrap(), weight, bias],
            2e-3,
        );
        // Large enough for gemm to split the work between threads.
        let (xs, weight, bias) = (
            random(&[200, 96], 9),
            random(&[80, 96], 10),
            random(&[80], 11),
        );
        let reference = xs
            .matmul(&weight.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        assert!(max_diff(&dense(&xs, &weight, &bias).unwrap(), &reference) < 1e-4);
    }

    #[test]
    fn gelu_matches_candle_and_finite_differences() {
        let xs = (random(&[4, 33], 5) * 3.0).unwrap();
        let reference = xs.gelu_erf().unwrap();
        assert!(max_diff(&gelu_erf(&xs).unwrap(), &reference) < 1e-6);
        check_gradients(&|t| gelu_erf(&t[0]).unwrap(), &[xs], 2e-3);
    }
}
