//! Losses on the encoder's intermediates: hidden states `[batch, seq, hidden]` and attention
//! scores `[batch, heads, seq, seq]` (before the softmax, padded keys holding a very negative
//! value, as `kd_bert::BertOutput` has them), with the u32 attention mask `[batch, seq]`
//! saying which tokens are real. TinyBERT's embedding and hidden-state losses are
//! [`crate::mse`] on states projected to the teacher's width by the objective.

use crate::mean::{masked_mean, mse};
use crate::prediction::kl_rows;
use anyhow::Result;
use candle_core::{D, Tensor};
use candle_nn::ops::softmax;

/// DistilBERT's cosine loss: the mean over real tokens of `1 − cos(student, teacher)`, which
/// aligns the directions of the two models' hidden states.
pub fn cosine_loss(student: &Tensor, teacher: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let cosine = (l2_normalize(student)? * l2_normalize(&teacher.detach())?)?.sum(D::Minus1)?;
    masked_mean(&cosine.affine(-1.0, 1.0)?, Some(mask))
}

/// BERT-PKD's patient loss for one pair of layers: the MSE between the L2-normalised `[CLS]`
/// states, `[batch, hidden]` (mean over batch and width, as PKD's code computes it).
pub fn pkd_loss(student_cls: &Tensor, teacher_cls: &Tensor) -> Result<Tensor> {
    mse(
        &l2_normalize(student_cls)?,
        &l2_normalize(&teacher_cls.detach())?,
        None,
    )
}

/// MiniLM's attention-distribution loss: `KL(teacher ‖ student)` between the attention
/// probabilities of each head and real query token, averaged over both. It takes the scores
/// rather than the probabilities because a log-softmax of scores stays finite where a
/// probability underflows to 0. Padded keys must hold a finite, very negative score (the
/// encoder's `f32::MIN`, not −∞): their probability is then exactly 0 on both sides.
pub fn attention_kl(student: &Tensor, teacher: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let teacher_probs = softmax(&teacher.detach(), D::Minus1)?;
    let per_query = kl_rows(student, &teacher_probs, 1.0)?;
    masked_mean(&per_query, Some(&mask.unsqueeze(1)?))
}

/// Each vector along the last axis scaled to unit length; the small constant under the root
/// keeps a zero vector's gradient finite.
fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .affine(1.0, 1e-12)?
        .sqrt()?;
    Ok(xs.broadcast_div(&norm)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score_mse::attention_score_mse;
    use crate::testing::{
        assert_close, check_gradient, padded_with_garbage, padding_mask, random, scalar,
    };
    use candle_core::{Device, Module};
    use candle_nn::Linear;

    const MASKED: f64 = f32::MIN as f64;

    /// Attention scores as the encoder leaves them: padded keys hold `f32::MIN`.
    fn scores(shape: &[usize], mask: &Tensor, seed: u64) -> Tensor {
        let keys = mask.unsqueeze(1).unwrap().unsqueeze(1).unwrap();
        let keys = keys.broadcast_as(shape).unwrap();
        let masked = Tensor::full(MASKED, shape, &Device::Cpu).unwrap();
        keys.where_cond(&random(shape, seed), &masked).unwrap()
    }

    #[test]
    fn cosine_and_pkd_match_hand_computed_values() -> Result<()> {
        let device = &Device::Cpu;
        // Token 1: cos = 1/√2; token 2: cos = 1; token 3 is padding.
        let student = Tensor::new(&[[[1.0f64, 0.0], [0.0, 1.0], [5.0, -3.0]]], device)?;
        let teacher = Tensor::new(&[[[1.0f64, 1.0], [0.0, 2.0], [-1.0, 4.0]]], device)?;
        let mask = padding_mask(&[2], 3);
        let expected = (1.0 - 0.5f64.sqrt()) / 2.0;
        assert_close(
            scalar(&cosine_loss(&student, &teacher, &mask)?),
            expected,
            1e-12,
        );
        // [3, 4] normalises to [0.6, 0.8]; against [1, 0]: (0.16 + 0.64) / 2.
        let student = Tensor::new(&[[3.0f64, 4.0]], device)?;
        let teacher = Tensor::new(&[[2.0f64, 0.0]], device)?;
        assert_close(scalar(&pkd_loss(&student, &teacher)?), 0.4, 1e-12);
        Ok(())
    }

    #[test]
    fn attention_losses_match_hand_computed_values() -> Result<()> {
        let device = &Device::Cpu;
        let mask = padding_mask(&[2], 3);
        // One head; the padded key holds f32::MIN, the padded query row garbage.
        let student = Tensor::new(
            &[[[[1.0f64, 2.0, MASKED], [3.0, 4.0, MASKED], [9.0, -9.0, 7.0]]]],
            device,
        )?;
        let teacher = Tensor::new(
            &[[[
                [1.0f64, 0.0, MASKED],
                [3.0, -200.0, MASKED],
                [0.0, 5.0, 1.0],
            ]]],
            device,
        )?;
        // The teacher's −200 counts as 0: squares 0, 4, 0, 16 over four real pairs; the
        // fused kernel and the composition alike.
        let score_mse = || attention_score_mse(&student, &teacher, &mask);
        assert_close(scalar(&score_mse()?), 5.0, 1e-12);
        let composed = kd_bert::kernels::force_generic(score_mse)?;
        assert_close(scalar(&composed), 5.0, 1e-12);

        let ln3 = 3f64.ln();
        // Query 1: p = [1/4, 3/4] against q = [1/2, 1/2]; query 2: equal distributions.
        let student = Tensor::new(
            &[[[[0.0f64, 0.0, MASKED], [1.0, 2.0, MASKED], [9.0, -9.0, 7.0]]]],
            device,
        )?;
        let teacher = Tensor::new(
            &[[[[0.0f64, ln3, MASKED], [1.0, 2.0, MASKED], [0.0, 5.0, 1.0]]]],
            device,
        )?;
        let kl = 0.25 * 0.5f64.ln() + 0.75 * 1.5f64.ln();
        assert_close(
            scalar(&attention_kl(&student, &teacher, &mask)?),
            kl / 2.0,
            1e-12,
        );
        Ok(())
    }

    #[test]
    fn losses_are_zero_when_the_student_matches() -> Result<()> {
        let mask = padding_mask(&[4, 2], 4);
        let states = random(&[2, 4, 3], 1);
        assert_close(scalar(&cosine_loss(&states, &states, &mask)?), 0.0, 1e-12);
        assert_close(
            scalar(&pkd_loss(&random(&[2, 3], 2), &random(&[2, 3], 2))?),
            0.0,
            0.0,
        );
        let attention = scores(&[2, 2, 4, 4], &mask, 3);
        let mse = attention_score_mse(&attention, &attention, &mask)?;
        assert_close(scalar(&mse), 0.0, 0.0);
        let kl = attention_kl(&attention, &attention, &mask)?;
        assert_close(scalar(&kl), 0.0, 1e-12);
        Ok(())
    }

    #[test]
    fn padding_does_not_change_any_loss() -> Result<()> {
        // The second example has two real tokens of three; padded to five, the padded positions
        // hold garbage (and f32::MIN for padded keys, as the encoder leaves them).
        let short = padding_mask(&[3, 2], 3);
        let long = padding_mask(&[3, 2], 5);
        let pad = |xs: &Tensor, dim: usize, seed: u64| padded_with_garbage(xs, dim, 2, seed);
        let (student, teacher) = (random(&[2, 3, 4], 1), random(&[2, 3, 4], 2));
        let (padded_student, padded_teacher) = (pad(&student, 1, 3), pad(&teacher, 1, 4));
        let states = |s: &Tensor, t: &Tensor, mask: &Tensor| -> Result<[f64; 2]> {
            Ok([
                scalar(&cosine_loss(s, t, mask)?),
                scalar(&mse(s, t, Some(mask))?),
            ])
        };
        let short_losses = states(&student, &teacher, &short)?;
        let long_losses = states(&padded_student, &padded_teacher, &long)?;

        let (student, teacher) = (
            scores(&[2, 2, 3, 3], &short, 5),
            scores(&[2, 2, 3, 3], &short, 6),
        );
        // Two more keys, padded, then two more query rows of garbage.
        let extend = |xs: &Tensor, seed: u64| {
            let padded_keys = Tensor::full(MASKED, (2, 2, 3, 2), &Device::Cpu).unwrap();
            pad(&Tensor::cat(&[xs, &padded_keys], 3).unwrap(), 2, seed)
        };
        let attention = |s: &Tensor, t: &Tensor, mask: &Tensor| -> Result<[f64; 2]> {
            Ok([
                scalar(&attention_score_mse(s, t, mask)?),
                scalar(&attention_kl(s, t, mask)?),
            ])
        };
        let short_losses = [short_losses, attention(&student, &teacher, &short)?].concat();
        let long_losses = [
            long_losses,
            attention(&extend(&student, 7), &extend(&teacher, 8), &long)?,
        ]
        .concat();
        for (short, long) in short_losses.into_iter().zip(long_losses) {
            assert_close(long, short, 1e-12);
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mask = padding_mask(&[4, 2], 4);
        let teacher = random(&[2, 4, 3], 1);
        check_gradient(&random(&[2, 4, 3], 2), |student| {
            cosine_loss(student, &teacher, &mask)
        });
        let teacher_cls = random(&[2, 3], 3);
        check_gradient(&random(&[2, 3], 4), |student| {
            pkd_loss(student, &teacher_cls)
        });
        let teacher_scores = scores(&[2, 2, 4, 4], &mask, 5);
        check_gradient(&scores(&[2, 2, 4, 4], &mask, 6), |student| {
            attention_score_mse(student, &teacher_scores, &mask)
        });
        kd_bert::kernels::force_generic(|| {
            check_gradient(&scores(&[2, 2, 4, 4], &mask, 6), |student| {
                attention_score_mse(student, &teacher_scores, &mask)
            })
        });
        check_gradient(&scores(&[2, 2, 4, 4], &mask, 7), |student| {
            attention_kl(student, &teacher_scores, &mask)
        });
    }

    #[test]
    fn gradients_through_a_projection_match_finite_differences() {
        // A 2-wide student against a 3-wide teacher through W (3×2) and b (3).
        let mask = padding_mask(&[4, 2], 4);
        let student = random(&[2, 4, 2], 1);
        let teacher = random(&[2, 4, 3], 2);
        let (weight, bias) = (random(&[3, 2], 3), random(&[3], 4));
        let projected = |weight: &Tensor, bias: &Tensor| {
            Linear::new(weight.clone(), Some(bias.clone())).forward(&student)
        };
        check_gradient(&weight, |weight| {
            mse(&projected(weight, &bias)?, &teacher, Some(&mask))
        });
        check_gradient(&bias, |bias| {
            mse(&projected(&weight, bias)?, &teacher, Some(&mask))
        });
        check_gradient(&weight, |weight| {
            cosine_loss(&projected(weight, &bias)?, &teacher, &mask)
        });
        let cls = |xs: Tensor| xs.narrow(1, 0, 1)?.squeeze(1);
        check_gradient(&weight, |weight| {
            pkd_loss(&cls(projected(weight, &bias)?)?, &cls(teacher.clone())?)
        });
    }
}
