//! Averages over what counts: real tokens, labelled positions, real attention pairs.

use anyhow::Result;
use candle_core::{D, DType, Tensor};
use std::cell::RefCell;

/// From a rank's own count to the global batch's (a sum over the ranks).
type GlobalCount = Box<dyn Fn(f64) -> f64>;

thread_local! {
    static GLOBAL_COUNT: RefCell<Option<GlobalCount>> = const { RefCell::new(None) };
}

/// While the returned guard lives, every mean of this thread divides by the count over the
/// whole global batch, `global(local count)`, instead of its own count. In data-parallel
/// training each rank holds a share of a batch: with each mean so divided, the ranks' losses add
/// up to the single-process loss and their gradients to its gradient, whatever share of the
/// tokens (or labelled positions) each rank got. `global` is a collective: every rank computes
/// the same means in the same order.
pub fn global_means(global: impl Fn(f64) -> f64 + 'static) -> GlobalMeans {
    GLOBAL_COUNT.with(|count| *count.borrow_mut() = Some(Box::new(global)));
    GlobalMeans(())
}

/// Restores means over this process's own elements when dropped.
pub struct GlobalMeans(());

impl Drop for GlobalMeans {
    fn drop(&mut self) {
        GLOBAL_COUNT.with(|count| *count.borrow_mut() = None);
    }
}

/// What a mean over `local` elements divides by: `local`, or the global batch's count under
/// [`global_means`].
pub fn mean_count(local: f64) -> f64 {
    GLOBAL_COUNT.with(|count| match &*count.borrow() {
        Some(global) => global(local),
        None => local,
    })
}

/// Whether means divide by a global batch's count ([`global_means`]).
fn means_are_global() -> bool {
    GLOBAL_COUNT.with(|count| count.borrow().is_some())
}

/// The mean of `values` over the elements where `mask` (u8 or u32, broadcastable to `values`)
/// is non-zero, or over all of them without a mask; zero when the mask keeps nothing (a batch
/// without masked-LM targets). Masked elements are selected out rather than multiplied by zero,
/// so that an overflow there (from a padded key's score) cannot make the mean NaN.
pub fn masked_mean(values: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let Some(mask) = mask else {
        if means_are_global() {
            let count = mean_count(values.elem_count() as f64);
            return Ok(values.sum_all()?.affine(1.0 / count.max(1.0), 0.0)?);
        }
        return Ok(values.mean_all()?);
    };
    let mask = mask.broadcast_as(values.shape())?;
    let count = mean_count(mask.to_dtype(DType::F64)?.sum_all()?.to_scalar()?);
    let kept = mask.where_cond(values, &values.zeros_like()?)?;
    Ok(kept.sum_all()?.affine(1.0 / count.max(1.0), 0.0)?)
}

/// Mean squared error between `student` and the constant `target`, both `[rows..., width]`:
/// the mean over the last axis, then over the rows `mask` (`[rows...]`) keeps. The loss on
/// logits (STS-B), on regression labels, and TinyBERT's embedding and hidden-state losses.
pub fn mse(student: &Tensor, target: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let per_row = (student - target.detach())?.sqr()?.mean(D::Minus1)?;
    masked_mean(&per_row, mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradient, padding_mask, random, scalar};
    use candle_core::Device;

    #[test]
    fn mse_matches_hand_computed_values() -> Result<()> {
        let student = Tensor::new(&[[1.0f64, 2.0], [3.0, 4.0]], &Device::Cpu)?;
        let target = Tensor::new(&[[1.0f64, 0.0], [0.0, 4.0]], &Device::Cpu)?;
        // Rows: (0 + 4) / 2 = 2 and (9 + 0) / 2 = 4.5.
        assert_close(scalar(&mse(&student, &target, None)?), 3.25, 1e-12);
        let first_only = Tensor::new(&[1u32, 0], &Device::Cpu)?;
        assert_close(
            scalar(&mse(&student, &target, Some(&first_only))?),
            2.0,
            1e-12,
        );
        Ok(())
    }

    #[test]
    fn masked_mean_of_nothing_is_zero() -> Result<()> {
        let values = random(&[2, 3], 1);
        let nothing = padding_mask(&[0, 0], 3);
        assert_eq!(scalar(&masked_mean(&values, Some(&nothing))?), 0.0);
        Ok(())
    }

    #[test]
    fn global_means_divide_by_the_whole_batch() -> Result<()> {
        // Two ranks' shares of one batch: rows [1, 2] and [3] of a batch of three.
        let share = |rows: &[f64], global: f64| -> Result<f64> {
            let _means = global_means(move |_| global);
            let values = Tensor::new(rows, &candle_core::Device::Cpu)?;
            let unmasked = scalar(&masked_mean(&values, None)?);
            let all = Tensor::ones(rows.len(), DType::U8, &candle_core::Device::Cpu)?;
            assert_eq!(scalar(&masked_mean(&values, Some(&all))?), unmasked);
            Ok(unmasked)
        };
        assert_close(share(&[1.0, 2.0], 3.0)? + share(&[3.0], 3.0)?, 2.0, 1e-12);
        // The guard gone, a mean is over its own elements again.
        let values = Tensor::new(&[1.0f64, 2.0], &candle_core::Device::Cpu)?;
        assert_close(scalar(&masked_mean(&values, None)?), 1.5, 1e-12);
        Ok(())
    }

    #[test]
    fn mse_gradient_matches_finite_differences() {
        let target = random(&[2, 4, 3], 2);
        let mask = padding_mask(&[4, 2], 4);
        check_gradient(&random(&[2, 4, 3], 3), |student| {
            mse(student, &target, Some(&mask))
        });
    }
}
