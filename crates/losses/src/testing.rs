//! Test helpers: seeded f64 tensors, padding masks, and the finite-difference gradient check
//! every loss goes through.

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// Values drawn uniformly from [-2, 2), reproducibly.
pub(crate) fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = StdRng::seed_from_u64(seed);
    let count = shape.iter().product();
    let values: Vec<f64> = (0..count).map(|_| rng.random_range(-2.0..2.0)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// `xs` with `extra` more positions along `dim`, holding large garbage (as padded positions
/// may), reproducibly.
pub(crate) fn padded_with_garbage(xs: &Tensor, dim: usize, extra: usize, seed: u64) -> Tensor {
    let mut shape = xs.dims().to_vec();
    shape[dim] = extra;
    Tensor::cat(&[xs, &(random(&shape, seed) * 50.0).unwrap()], dim).unwrap()
}

/// A `[batch, seq]` attention mask whose rows have the given numbers of real tokens.
pub(crate) fn padding_mask(real_lengths: &[usize], seq: usize) -> Tensor {
    let values: Vec<u32> = real_lengths
        .iter()
        .flat_map(|&real| (0..seq).map(move |i| u32::from(i < real)))
        .collect();
    Tensor::from_vec(values, (real_lengths.len(), seq), &Device::Cpu).unwrap()
}

pub(crate) fn scalar(loss: &Tensor) -> f64 {
    loss.to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

pub(crate) fn assert_close(actual: f64, expected: f64, tolerance: f64) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "got {actual}, expected {expected} (tolerance {tolerance})"
    );
}

/// Checks the gradient `backward()` gives `loss` with respect to `input` (an f64 tensor)
/// against central differences, element by element, and that it is not zero throughout (a cut
/// graph would give zeros on both sides only at a minimum).
pub(crate) fn check_gradient(input: &Tensor, loss: impl Fn(&Tensor) -> Result<Tensor>) {
    const STEP: f64 = 1e-6;
    let var = Var::from_tensor(input).unwrap();
    let grads = loss(var.as_tensor()).unwrap().backward().unwrap();
    let analytic: Vec<f64> = match grads.get(var.as_tensor()) {
        Some(grad) => grad.flatten_all().unwrap().to_vec1().unwrap(),
        None => vec![0.0; input.elem_count()],
    };
    let values: Vec<f64> = input.flatten_all().unwrap().to_vec1().unwrap();
    let loss_at = |index: usize, delta: f64| {
        let mut shifted = values.clone();
        shifted[index] += delta;
        let shifted = Tensor::from_vec(shifted, input.shape(), input.device()).unwrap();
        scalar(&loss(&shifted).unwrap())
    };
    for (index, &analytic) in analytic.iter().enumerate() {
        let numeric = (loss_at(index, STEP) - loss_at(index, -STEP)) / (2.0 * STEP);
        assert!(
            (numeric - analytic).abs() <= 1e-6 + 1e-5 * numeric.abs(),
            "element {index}: backward gives {analytic}, finite differences {numeric}"
        );
    }
    assert!(
        analytic.iter().any(|g| g.abs() > 1e-6),
        "the gradient is zero everywhere"
    );
}
