//! Prediction-layer losses: the student's logits against the teacher's distribution or against
//! gold labels. Logits are `[rows..., classes]`: `[batch, classes]` for a sequence classifier,
//! `[batch, seq, vocab]` for a masked-LM head, where an optional u32 `mask` over the rows
//! (`[batch, seq]`) says which count.

use crate::mean::masked_mean;
use anyhow::{Result, ensure};
use candle_core::{D, Tensor};
use candle_nn::ops::softmax;

/// The teacher's distribution at temperature `T`, softmax(logits / T), as a constant.
pub fn soft_targets(teacher_logits: &Tensor, temperature: f64) -> Result<Tensor> {
    Ok(softmax(
        &(teacher_logits.detach() / temperature)?,
        D::Minus1,
    )?)
}

/// Checks weights for an average of `count` tensors: one each, none negative, some positive.
pub(crate) fn check_weights(weights: &[f64], count: usize) -> Result<()> {
    ensure!(
        weights.len() == count,
        "{} weights for {count} teachers",
        weights.len()
    );
    ensure!(
        weights.iter().all(|w| *w >= 0.0) && weights.iter().sum::<f64>() > 0.0,
        "teacher weights {weights:?} must be non-negative with a positive sum"
    );
    Ok(())
}

/// The weighted average of tensors of one shape: MT-DNN's ensemble of several teachers' soft
/// targets (or of their logits, for regression). The weights are normalised to sum to 1.
pub fn weighted_average(tensors: &[Tensor], weights: &[f64]) -> Result<Tensor> {
    check_weights(weights, tensors.len())?;
    if let [only] = tensors {
        return Ok(only.clone());
    }
    let stacked = Tensor::stack(tensors, 0)?;
    let total: f64 = weights.iter().sum();
    let mut shape = vec![1; stacked.rank()];
    shape[0] = weights.len();
    let weights = Tensor::from_iter(weights.iter().map(|w| w / total), stacked.device())?
        .to_dtype(stacked.dtype())?
        .reshape(shape)?;
    Ok(stacked.broadcast_mul(&weights)?.sum(0)?)
}

/// Hinton et al.'s soft cross-entropy, as DistilBERT trains with it:
/// `T² · mean over rows of −Σ targets · log softmax(student / T)`. The `T²` keeps the
/// gradient's size independent of `T`. Its minimum, where the student's distribution equals the
/// targets, is `T²` times their entropy.
pub fn soft_cross_entropy(
    student_logits: &Tensor,
    targets: &Tensor,
    temperature: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let rows = cross_entropy_rows(student_logits, targets, temperature)?;
    Ok((masked_mean(&rows, mask)? * temperature.powi(2))?)
}

/// `T² · mean over rows of KL(targets ‖ softmax(student / T))`: the soft cross-entropy less the
/// targets' entropy, so zero when the student matches, with the same gradient.
pub fn kl_divergence(
    student_logits: &Tensor,
    targets: &Tensor,
    temperature: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let rows = kl_rows(student_logits, targets, temperature)?;
    Ok((masked_mean(&rows, mask)? * temperature.powi(2))?)
}

/// Cross-entropy with gold class ids (u32, `[rows...]`), averaged over the rows `mask` keeps
/// (for masked-LM, the masked positions). Ignored rows may hold any id, even an invalid one.
pub fn hard_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let labels = match mask {
        Some(mask) => mask.where_cond(labels, &labels.zeros_like()?)?,
        None => labels.clone(),
    };
    let log_probs = log_softmax_rows(logits)?;
    let picked = log_probs
        .gather(&labels.unsqueeze(D::Minus1)?.contiguous()?, D::Minus1)?
        .squeeze(D::Minus1)?;
    masked_mean(&picked.neg()?, mask)
}

/// Per row, `KL(targets ‖ softmax(student / T))`.
pub(crate) fn kl_rows(
    student_logits: &Tensor,
    targets: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    Ok((cross_entropy_rows(student_logits, targets, temperature)? - entropy_rows(targets)?)?)
}

/// Per row, `−Σ targets · log softmax(student / T)`.
fn cross_entropy_rows(
    student_logits: &Tensor,
    targets: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
    let log_probs = log_softmax_rows(&(student_logits / temperature)?)?;
    Ok((targets.detach() * log_probs)?.sum(D::Minus1)?.neg()?)
}

/// Log-softmax over the last dimension: kd's fused op for f32 on the CPU, candle's composition
/// elsewhere (in f64, where the loss tests check their gradients; on a GPU).
fn log_softmax_rows(xs: &Tensor) -> Result<Tensor> {
    Ok(kd_bert::kernels::log_softmax_last_dim(xs)?)
}

/// Per row, `−Σ p log p` of a constant distribution, with `0 log 0 = 0`.
fn entropy_rows(probs: &Tensor) -> Result<Tensor> {
    let probs = probs.detach();
    let p_log_p = probs
        .gt(0.0)?
        .where_cond(&(&probs * probs.log()?)?, &probs.zeros_like()?)?;
    Ok(p_log_p.sum(D::Minus1)?.neg()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, check_gradient, padding_mask, random, scalar};
    use candle_core::Device;

    fn row(values: [f64; 2]) -> Tensor {
        Tensor::new(&[values], &Device::Cpu).unwrap()
    }

    #[test]
    fn soft_losses_match_hand_computed_values_at_temperature_two() -> Result<()> {
        let (ln2, ln3) = (2f64.ln(), 3f64.ln());
        // At T = 2 the teacher's [0, 2 ln 3] gives p = [1/4, 3/4] and the student's
        // [0, 2 ln 2] gives q = [1/3, 2/3].
        let targets = soft_targets(&row([0.0, 2.0 * ln3]), 2.0)?;
        let student = row([0.0, 2.0 * ln2]);
        let cross_entropy = -(0.25 * (1.0f64 / 3.0).ln() + 0.75 * (2.0f64 / 3.0).ln());
        let kl = 0.25 * (0.25f64 / (1.0 / 3.0)).ln() + 0.75 * (0.75f64 / (2.0 / 3.0)).ln();
        let soft = soft_cross_entropy(&student, &targets, 2.0, None)?;
        assert_close(scalar(&soft), 4.0 * cross_entropy, 1e-12);
        let divergence = kl_divergence(&student, &targets, 2.0, None)?;
        assert_close(scalar(&divergence), 4.0 * kl, 1e-12);
        Ok(())
    }

    #[test]
    fn temperature_scales_the_gradient_as_the_formula_says() -> Result<()> {
        // d/ds T² · CE(p, softmax(s / T)) = T (q − p), averaged over the rows.
        let (teacher, student) = (random(&[3, 4], 1), random(&[3, 4], 2));
        for temperature in [1.0, 2.0, 8.0] {
            let targets = soft_targets(&teacher, temperature)?;
            let student = candle_core::Var::from_tensor(&student)?;
            let loss = soft_cross_entropy(student.as_tensor(), &targets, temperature, None)?;
            let grad = loss.backward()?.get(student.as_tensor()).unwrap().clone();
            let q = softmax(&(student.as_tensor() / temperature)?, D::Minus1)?;
            let expected = ((q - &targets)? * (temperature / 3.0))?;
            let diff: f64 = (grad - expected)?.abs()?.max_all()?.to_scalar()?;
            assert!(diff < 1e-12, "T = {temperature}: gradient off by {diff}");
        }
        Ok(())
    }

    #[test]
    fn kl_is_zero_and_soft_cross_entropy_minimal_when_the_student_matches() -> Result<()> {
        let logits = random(&[3, 5], 3);
        let targets = soft_targets(&logits, 2.0)?;
        assert_close(
            scalar(&kl_divergence(&logits, &targets, 2.0, None)?),
            0.0,
            1e-12,
        );
        let entropy = scalar(&entropy_rows(&targets)?.mean_all()?);
        let student = candle_core::Var::from_tensor(&logits)?;
        let soft = soft_cross_entropy(student.as_tensor(), &targets, 2.0, None)?;
        assert_close(scalar(&soft), 4.0 * entropy, 1e-12);
        let grad = soft.backward()?.get(student.as_tensor()).unwrap().clone();
        assert!(grad.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
        Ok(())
    }

    #[test]
    fn hard_cross_entropy_counts_only_kept_rows() -> Result<()> {
        let ln3 = 3f64.ln();
        let logits = Tensor::new(&[[0.0f64, ln3], [ln3, 0.0]], &Device::Cpu)?;
        let labels = Tensor::new(&[1u32, 0], &Device::Cpu)?;
        // Both rows give p(label) = 3/4.
        let both = hard_cross_entropy(&logits, &labels, None)?;
        assert_close(scalar(&both), -(0.75f64.ln()), 1e-12);
        // An ignored row may hold an id that is no class at all.
        let labels = Tensor::new(&[0u32, 7], &Device::Cpu)?;
        let first = Tensor::new(&[1u32, 0], &Device::Cpu)?;
        let loss = hard_cross_entropy(&logits, &labels, Some(&first))?;
        assert_close(scalar(&loss), -(0.25f64.ln()), 1e-12);
        Ok(())
    }

    #[test]
    fn weighted_average_of_teachers_matches_hand_computed_targets() -> Result<()> {
        let first = soft_targets(&row([0.0, 3f64.ln()]), 1.0)?; // [1/4, 3/4]
        let second = soft_targets(&row([0.0, 0.0]), 1.0)?; // [1/2, 1/2]
        let average = weighted_average(&[first, second], &[1.0, 3.0])?;
        let values: Vec<f64> = average.flatten_all()?.to_vec1()?;
        assert_close(values[0], 7.0 / 16.0, 1e-12);
        assert_close(values[1], 9.0 / 16.0, 1e-12);
        assert!(weighted_average(&[row([0.0, 0.0])], &[1.0, 1.0]).is_err());
        assert!(weighted_average(&[row([0.0, 0.0])], &[0.0]).is_err());
        Ok(())
    }

    #[test]
    fn padded_rows_do_not_change_any_loss() -> Result<()> {
        // Per-token logits, [batch, seq, vocab]; the second example has one real token, so the
        // real rows are the first four of the flattened batch.
        let mask = padding_mask(&[3, 1], 3);
        let (student, teacher) = (random(&[2, 3, 5], 4), random(&[2, 3, 5], 5));
        let labels = Tensor::new(&[[1u32, 4, 0], [2, 3, 3]], &Device::Cpu)?;
        let losses = |student: &Tensor, teacher: &Tensor, labels: &Tensor, mask| -> Result<_> {
            let targets = soft_targets(teacher, 2.0)?;
            Ok([
                scalar(&soft_cross_entropy(student, &targets, 2.0, mask)?),
                scalar(&kl_divergence(student, &targets, 2.0, mask)?),
                scalar(&hard_cross_entropy(student, labels, mask)?),
            ])
        };
        let real_rows = |xs: &Tensor| xs.flatten_to(1).unwrap().narrow(0, 0, 4).unwrap();
        let unpadded = losses(
            &real_rows(&student),
            &real_rows(&teacher),
            &labels.flatten_all()?.narrow(0, 0, 4)?,
            None,
        )?;
        // Garbage at the padded positions of both models.
        let real = mask.unsqueeze(2)?.broadcast_as(student.shape())?;
        let garbage = (random(&[2, 3, 5], 6) * 100.0)?;
        let padded = losses(
            &real.where_cond(&student, &garbage)?,
            &real.where_cond(&teacher, &garbage)?,
            &labels,
            Some(&mask),
        )?;
        for (unpadded, padded) in unpadded.into_iter().zip(padded) {
            assert_close(padded, unpadded, 1e-12);
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let mask = padding_mask(&[3, 2], 3);
        let targets = soft_targets(&random(&[2, 3, 4], 7), 2.0)?;
        check_gradient(&random(&[2, 3, 4], 8), |student| {
            soft_cross_entropy(student, &targets, 2.0, Some(&mask))
        });
        check_gradient(&random(&[2, 3, 4], 9), |student| {
            kl_divergence(student, &targets, 2.0, Some(&mask))
        });
        let labels = Tensor::new(&[[1u32, 3, 0], [2, 0, 9]], &Device::Cpu)?;
        check_gradient(&random(&[2, 3, 4], 10), |student| {
            hard_cross_entropy(student, &labels, Some(&mask))
        });
        Ok(())
    }
}
