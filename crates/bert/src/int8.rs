//! Int8 dense layers for inference, as dynamic quantization computes them: the weight in int8
//! with one scale per output channel, each input row (token) quantized per call to uint8 with
//! its own scale and zero point (ONNX Runtime uses one for the whole tensor; a row's own range
//! loses less), the products summed in int32 by AVX-512 VNNI (`vpdpbusd`, four multiply-adds
//! per byte lane: 64 an instruction where f32 FMA does 16), then scaled back to f32. On CPUs
//! without VNNI, [`Int8Weight::new`] declines and the layer stays f32.

use crate::ops::{f32_slice, last_dim, with_last_dim};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Output features per block: four 16-lane registers of int32 sums.
const BLOCK: usize = 64;
/// Inputs per `vpdpbusd` lane.
const GROUP: usize = 4;
/// Rows (tokens) per tile: 6 rows x 4 registers of sums, 4 of weights and a broadcast fit in
/// the 32 vector registers.
const TILE_ROWS: usize = 6;

/// A dense layer's weight `[out, in]` as int8, laid out for the kernel: for each block of
/// [`BLOCK`] outputs and each group of [`GROUP`] inputs, 256 contiguous bytes (output-major,
/// the group's four inputs adjacent), so that the kernel streams each block in order.
#[derive(Debug)]
pub struct Int8Weight {
    packed: Vec<i8>,
    /// One per output: the weight is `levels * scale`.
    scales: Vec<f32>,
    /// Each output's sum of levels, to take the input's zero point back out.
    level_sums: Vec<i32>,
    in_dim: usize,
    out_dim: usize,
}

/// Whether this CPU has the instructions the int8 kernel needs.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Symmetric int8 per row of a 2-D weight: the row's largest magnitude maps to 127 (a row of
/// zeros keeps a scale of 1). Returns the levels, row-major, and one scale per row; kd's int8
/// exports store weights so, and [`Int8Weight::new`] re-quantizes those to their own levels.
pub fn quantize_rows(weight: &Tensor) -> Result<(Vec<i8>, Vec<f32>)> {
    let rows = weight.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
    let mut levels = Vec::with_capacity(weight.elem_count());
    let mut scales = Vec::with_capacity(rows.len());
    for row in &rows {
        let largest = row.iter().fold(0f32, |m, w| m.max(w.abs()));
        let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
        levels.extend(
            row.iter()
                .map(|&w| (w / scale).round().clamp(-127.0, 127.0) as i8),
        );
        scales.push(scale);
    }
    Ok((levels, scales))
}

impl Int8Weight {
    /// Quantizes an HF weight `[out, in]` by [`quantize_rows`] and packs it; `None` where the
    /// CPU lacks AVX-512 VNNI.
    pub fn new(weight: &Tensor) -> Result<Option<Arc<Self>>> {
        if !supported() {
            return Ok(None);
        }
        let (out_dim, in_dim) = weight.dims2()?;
        let (levels, scales) = quantize_rows(weight)?;
        let groups = in_dim.div_ceil(GROUP);
        let blocks = out_dim.div_ceil(BLOCK);
        let mut packed = vec![0i8; blocks * groups * BLOCK * GROUP];
        let mut level_sums = Vec::with_capacity(out_dim);
        for (out, row) in levels.chunks(in_dim.max(1)).enumerate() {
            let (block, lane) = (out / BLOCK, out % BLOCK);
            for (input, &level) in row.iter().enumerate() {
                let (group, within) = (input / GROUP, input % GROUP);
                packed[((block * groups + group) * BLOCK + lane) * GROUP + within] = level;
            }
            level_sums.push(row.iter().map(|&level| level as i32).sum());
        }
        Ok(Some(Arc::new(Self {
            packed,
            scales,
            level_sums,
            in_dim,
            out_dim,
        })))
    }
}

/// `xs W^T + b` through an [`Int8Weight`], without a gradient.
pub fn dense_int8(xs: &Tensor, weight: &Arc<Int8Weight>, bias: &Tensor) -> Result<Tensor> {
    let bias = bias.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    xs.contiguous()?.apply_op1_no_bwd(&DenseInt8 {
        weight: weight.clone(),
        bias,
    })
}

struct DenseInt8 {
    weight: Arc<Int8Weight>,
    bias: Vec<f32>,
}

/// An input quantized to uint8 row by row, rows padded to whole groups:
/// `x ≈ (level - zero) * scale` with the row's zero and scale.
struct QuantizedInput {
    levels: Vec<u8>,
    row_len: usize,
    scales: Vec<f32>,
    zeros: Vec<i32>,
}

/// Asymmetric uint8 per row, each row's range widened to hold 0 (so padding stays exact).
fn quantize_input(xs: &[f32], in_dim: usize) -> QuantizedInput {
    let row_len = in_dim.div_ceil(GROUP) * GROUP;
    let rows = xs.len() / in_dim.max(1);
    let mut input = QuantizedInput {
        levels: vec![0; rows * row_len],
        row_len,
        scales: Vec::with_capacity(rows),
        zeros: Vec::with_capacity(rows),
    };
    crate::math::vectorised(
        #[inline(always)]
        || {
            for (levels, values) in input.levels.chunks_mut(row_len).zip(xs.chunks(in_dim)) {
                let (low, high) = range(values);
                let scale = if high > low {
                    (high - low) / 255.0
                } else {
                    1.0
                };
                let inverse = 1.0 / scale;
                // Adding 0.5 then truncating rounds the (non-negative) levels.
                let zero = (-low * inverse + 0.5).clamp(0.0, 255.0) as u8;
                let offset = zero as f32 + 0.5;
                for (level, &x) in levels.iter_mut().zip(values) {
                    *level = (x * inverse + offset).clamp(0.0, 255.0) as u8;
                }
                levels[values.len()..].fill(zero);
                input.scales.push(scale);
                input.zeros.push(zero as i32);
            }
        },
    );
    input
}

/// The smallest and largest of `values` and 0, in sixteen lanes so that the loop vectorises.
#[inline(always)]
fn range(values: &[f32]) -> (f32, f32) {
    let (mut low, mut high) = ([0f32; 16], [0f32; 16]);
    let chunks = values.chunks_exact(16);
    let tail = chunks.remainder();
    for chunk in chunks {
        for ((lo, hi), &x) in low.iter_mut().zip(high.iter_mut()).zip(chunk) {
            *lo = if x < *lo { x } else { *lo };
            *hi = if x > *hi { x } else { *hi };
        }
    }
    let low = low.iter().chain(tail).fold(0f32, |m, &x| m.min(x));
    let high = high.iter().chain(tail).fold(0f32, |m, &x| m.max(x));
    (low, high)
}

impl CustomOp1 for DenseInt8 {
    fn name(&self) -> &'static str {
        "kd-dense-int8"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let xs = f32_slice(storage, layout, self.name())?;
        let weight = &self.weight;
        if last_dim(layout) != weight.in_dim || self.bias.len() != weight.out_dim {
            candle_core::bail!(
                "kd-dense-int8: rows of {} through a weight of {} inputs",
                last_dim(layout),
                weight.in_dim
            );
        }
        let input = quantize_input(xs, weight.in_dim);
        let rows = xs.len() / weight.in_dim.max(1);
        let out_dim = weight.out_dim;
        let mut out = vec![0f32; rows * out_dim];
        let dst = out.as_mut_ptr() as usize;
        (0..out_dim.div_ceil(BLOCK))
            .into_par_iter()
            .for_each(|block| {
                // SAFETY: the kernel needs AVX-512 VNNI, which `Int8Weight::new` checked; each
                // block writes only its own columns of `out` ([rows, out_dim]).
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    block_product(weight, &input, &self.bias, block, rows, dst as *mut f32)
                }
            });
        Ok((CpuStorage::F32(out), with_last_dim(layout, out_dim)))
    }
}

/// One block of [`BLOCK`] outputs for every row, [`TILE_ROWS`] rows at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block_product(
    weight: &Int8Weight,
    input: &QuantizedInput,
    bias: &[f32],
    block: usize,
    rows: usize,
    out: *mut f32,
) {
    let mut row = 0;
    while row < rows {
        let tile = TILE_ROWS.min(rows - row);
        // SAFETY: the caller's contract; `tile` rows from `row` exist.
        unsafe {
            match tile {
                6 => tile_product::<6>(weight, input, bias, block, row, out),
                5 => tile_product::<5>(weight, input, bias, block, row, out),
                4 => tile_product::<4>(weight, input, bias, block, row, out),
                3 => tile_product::<3>(weight, input, bias, block, row, out),
                2 => tile_product::<2>(weight, input, bias, block, row, out),
                _ => tile_product::<1>(weight, input, bias, block, row, out),
            }
        }
        row += tile;
    }
}

/// `R` rows from `first` by one block: int32 sums by `vpdpbusd`, then
/// `bias + scale_row * scale_w * (sum - zero_row * level_sum)`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_product<const R: usize>(
    weight: &Int8Weight,
    input: &QuantizedInput,
    bias: &[f32],
    block: usize,
    first: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let groups = input.row_len / GROUP;
    let mut sums = [[_mm512_setzero_si512(); 4]; R];
    let panel = weight.packed[block * groups * BLOCK * GROUP..].as_ptr();
    let levels = input.levels.as_ptr();
    for group in 0..groups {
        // SAFETY: the block holds `groups` groups of 256 bytes; each row `row_len` bytes.
        unsafe {
            let w = panel.add(group * BLOCK * GROUP) as *const __m512i;
            let w = [
                _mm512_loadu_si512(w),
                _mm512_loadu_si512(w.add(1)),
                _mm512_loadu_si512(w.add(2)),
                _mm512_loadu_si512(w.add(3)),
            ];
            for (r, sums) in sums.iter_mut().enumerate() {
                let x = levels.add((first + r) * input.row_len + group * GROUP) as *const i32;
                let x = _mm512_set1_epi32(x.read_unaligned());
                for (sum, &w) in sums.iter_mut().zip(&w) {
                    *sum = _mm512_dpbusd_epi32(*sum, x, w);
                }
            }
        }
    }
    let out_dim = weight.out_dim;
    for (r, sums) in sums.iter().enumerate() {
        let mut lanes = [0i32; BLOCK];
        for (chunk, &sum) in lanes.chunks_exact_mut(16).zip(sums) {
            // SAFETY: 16 i32 lanes into a 16-element chunk.
            unsafe { _mm512_storeu_si512(chunk.as_mut_ptr() as *mut __m512i, sum) };
        }
        let row = first + r;
        let (scale, zero) = (input.scales[row], input.zeros[row]);
        for (lane, &sum) in lanes.iter().enumerate() {
            let column = block * BLOCK + lane;
            if column >= out_dim {
                break;
            }
            let exact = sum - zero * weight.level_sums[column];
            let value = bias[column] + scale * weight.scales[column] * exact as f32;
            // SAFETY: (row, column) lies inside `out`, and only this block writes the column.
            unsafe { *out.add(row * out_dim + column) = value };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::random;

    /// A product of awkward sizes (rows not a multiple of the tile, inputs not of the group,
    /// outputs not of the block): the input, weight, bias, the packed weight and the int8
    /// product; `None` on a CPU without AVX-512 VNNI. The operands are seeded: drawn afresh
    /// each run, they once put the quantization error past the bound of the test below.
    fn case() -> Option<(Tensor, Tensor, Tensor, Arc<Int8Weight>, Tensor)> {
        let xs = random(&[2, 13, 37], 1);
        let weight = (random(&[70, 37], 2) * 0.1).unwrap();
        let bias = random(&[70], 3);
        let Some(packed) = Int8Weight::new(&weight).unwrap() else {
            eprintln!("skipped: this CPU has no AVX-512 VNNI");
            return None;
        };
        let ours = dense_int8(&xs, &packed, &bias).unwrap();
        Some((xs, weight, bias, packed, ours))
    }

    #[test]
    fn the_kernel_computes_the_quantized_product_exactly() {
        let Some((xs, weight, bias, packed, ours)) = case() else {
            return;
        };
        // The same quantized operands multiplied in f64 by hand.
        let rows = xs.flatten_to(1).unwrap().to_vec2::<f32>().unwrap();
        let input = quantize_input(&rows.concat(), 37);
        let weight = weight.to_vec2::<f32>().unwrap();
        let bias = bias.to_vec1::<f32>().unwrap();
        let ours = ours.flatten_to(1).unwrap().to_vec2::<f32>().unwrap();
        for (r, row) in ours.iter().enumerate() {
            for (j, &value) in row.iter().enumerate() {
                let scale_w = packed.scales[j] as f64;
                let sum: f64 = (0..37)
                    .map(|k| {
                        let x = input.levels[r * input.row_len + k] as f64 - input.zeros[r] as f64;
                        let w = (weight[j][k] as f64 / scale_w).round();
                        x * w
                    })
                    .sum();
                let expected = bias[j] as f64 + input.scales[r] as f64 * scale_w * sum;
                assert!(
                    (value as f64 - expected).abs() < 1e-4,
                    "({r}, {j}): {value} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn the_int8_product_is_close_to_the_f32_one() {
        let Some((xs, weight, bias, _, ours)) = case() else {
            return;
        };
        let exact = crate::ops::dense(&xs, &weight, &bias).unwrap();
        let error = (ours - &exact).unwrap().abs().unwrap().max_all().unwrap();
        let scale = exact.abs().unwrap().max_all().unwrap();
        let relative = error.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap();
        // Over 300 seeds of these operands the relative error lay between 0.26% and 0.53%.
        assert!(relative < 1e-2, "relative error {relative}");
        assert!(relative > 0.0, "nothing was quantized");
    }
}
