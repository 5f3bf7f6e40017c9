//! MiniLM's self-attention relation losses, on a layer's query, key or value projections
//! `[batch, seq, width]` (the heads side by side, as `kd_bert::AttentionProjections` holds
//! them), with the u32 attention mask `[batch, seq]` saying which tokens are real: MiniLM's
//! value relation (Wang et al. 2020) and MiniLMv2's query, key and value relations with any
//! number of relation heads (Wang et al. 2021).

use crate::intermediate::attention_kl;
use anyhow::{Result, ensure};
use candle_core::Tensor;

/// The score padded keys get before the softmax: finite, as [`attention_kl`] needs, and low
/// enough that their probability is exactly 0 on both sides.
const MASKED_KEY_SCORE: f64 = f32::MIN as f64;

/// `KL(R_teacher ‖ R_student)` between the two models' relations of one kind of projection,
/// averaged over relation heads and real query tokens. Each model's projections are split
/// along the width into `relation_heads` equal chunks `X_r`, and
/// `R_r = softmax(X_r X_r^T / √(width / relation_heads))` over the real keys. With as many
/// relation heads as attention heads and the value projections, this is MiniLM's value
/// relation; summed over the queries, keys and values, MiniLMv2's attention relations. The
/// widths may differ, as long as each divides into `relation_heads` chunks. Only the student
/// gets a gradient.
pub fn relation_kl(
    student: &Tensor,
    teacher: &Tensor,
    relation_heads: usize,
    mask: &Tensor,
) -> Result<Tensor> {
    attention_kl(
        &relation_scores(student, relation_heads, mask)?,
        &relation_scores(teacher, relation_heads, mask)?,
        mask,
    )
}

/// `X_r X_r^T / √d` for each of `relation_heads` chunks `X_r` of width `d`: `[batch,
/// relation_heads, seq, seq]`, padded keys holding [`MASKED_KEY_SCORE`]. The padded keys' scores
/// are selected out rather than offset, so that garbage there cannot overflow.
fn relation_scores(projections: &Tensor, relation_heads: usize, mask: &Tensor) -> Result<Tensor> {
    let (batch, seq, width) = projections.dims3()?;
    ensure!(
        relation_heads > 0 && width % relation_heads == 0,
        "a width of {width} does not split into {relation_heads} relation heads"
    );
    let head_width = width / relation_heads;
    let heads = projections
        .reshape((batch, seq, relation_heads, head_width))?
        .transpose(1, 2)?
        .contiguous()?;
    let scores = heads
        .matmul(&heads.t()?)?
        .affine(1.0 / (head_width as f64).sqrt(), 0.0)?;
    let real_keys = mask
        .reshape((batch, 1, 1, seq))?
        .broadcast_as(scores.shape())?;
    let masked = Tensor::full(MASKED_KEY_SCORE, scores.shape(), scores.device())?
        .to_dtype(scores.dtype())?;
    Ok(real_keys.where_cond(&scores, &masked)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        assert_close, check_gradient, padded_with_garbage, padding_mask, random, scalar,
    };
    use candle_core::Device;

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    #[test]
    fn relation_kl_matches_hand_computed_values() -> Result<()> {
        let device = &Device::Cpu;
        // One example of two real tokens and a padded third holding garbage; width 2 in one
        // relation head, so the scale is 1/√2. Student rows a = [1, 0], b = [0, 1]: relation
        // scores [[1, 0], [0, 1]] / √2. Teacher rows a = [1, 1], b = [1, -1]: [[2, 0], [0, 2]]
        // / √2. Each real query's distribution over the two real keys: the student's
        // p = [σ, 1 − σ] with σ = 1 / (1 + e^{−1/√2}), the teacher's q = [τ, 1 − τ] with
        // τ = 1 / (1 + e^{−√2}); both queries alike by symmetry.
        let student = Tensor::new(&[[[1.0f64, 0.0], [0.0, 1.0], [30.0, -40.0]]], device)?;
        let teacher = Tensor::new(&[[[1.0f64, 1.0], [1.0, -1.0], [-50.0, 20.0]]], device)?;
        let mask = padding_mask(&[2], 3);
        let (p, q) = (sigmoid(0.5f64.sqrt()), sigmoid(2f64.sqrt()));
        let kl = q * (q / p).ln() + (1.0 - q) * ((1.0 - q) / (1.0 - p)).ln();
        assert_close(
            scalar(&relation_kl(&student, &teacher, 1, &mask)?),
            kl,
            1e-9,
        );

        // Two relation heads over a 2-wide student (heads of width 1, scale 1) and a 4-wide
        // teacher (width 2), whose second example has one real token. Student rows a = [1, 0],
        // b = [0, 1]: head 1 scores [[1, 0], [0, 0]], head 2 [[0, 0], [0, 1]], so query a of
        // head 1 and query b of head 2 get [s, 1 − s] (in some order) with s = σ(1), the other
        // two [1/2, 1/2]. The teacher's two real rows are equal, so its distributions are
        // uniform: two KLs of k = ln(1/2) − ln(s(1 − s)) / 2, two of 0. The second example's
        // query, with one real key, has a zero KL: the mean is over 2 heads × 3 real queries.
        let student = Tensor::new(
            &[
                [[1.0f64, 0.0], [0.0, 1.0], [30.0, -40.0]],
                [[3.0, -1.0], [-20.0, 10.0], [5.0, 60.0]],
            ],
            device,
        )?;
        let teacher = Tensor::new(
            &[
                [
                    [0.0f64, 0.0, 1.0, 1.0],
                    [0.0, 0.0, 1.0, 1.0],
                    [9.0, -9.0, 9.0, 9.0],
                ],
                [
                    [1.0, 2.0, 3.0, 4.0],
                    [40.0, 0.0, 0.0, 0.0],
                    [0.0, 0.0, -30.0, 0.0],
                ],
            ],
            device,
        )?;
        let mask = padding_mask(&[2, 1], 3);
        let s = sigmoid(1.0);
        let k = 0.5f64.ln() - 0.5 * (s * (1.0 - s)).ln();
        assert_close(
            scalar(&relation_kl(&student, &teacher, 2, &mask)?),
            2.0 * k / 6.0,
            1e-9,
        );
        Ok(())
    }

    #[test]
    fn relation_kl_is_zero_when_the_student_matches() -> Result<()> {
        let mask = padding_mask(&[4, 2], 4);
        let projections = random(&[2, 4, 6], 1);
        let loss = relation_kl(&projections, &projections, 3, &mask)?;
        assert_close(scalar(&loss), 0.0, 1e-12);
        Ok(())
    }

    #[test]
    fn padded_positions_do_not_change_relation_kl() -> Result<()> {
        // The second example has two real tokens of three; padded to five, the padded
        // positions hold large garbage (as padded queries and keys).
        let (short, long) = (padding_mask(&[3, 2], 3), padding_mask(&[3, 2], 5));
        let (student, teacher) = (random(&[2, 3, 4], 1), random(&[2, 3, 6], 2));
        let (padded_student, padded_teacher) = (
            padded_with_garbage(&student, 1, 2, 3),
            padded_with_garbage(&teacher, 1, 2, 4),
        );
        let short_loss = scalar(&relation_kl(&student, &teacher, 2, &short)?);
        let long_loss = scalar(&relation_kl(&padded_student, &padded_teacher, 2, &long)?);
        assert!(short_loss > 0.01, "{short_loss}");
        assert_close(long_loss, short_loss, 1e-9);
        Ok(())
    }

    #[test]
    fn relation_kl_gradient_matches_finite_differences() {
        // A 4-wide student against a 6-wide teacher, in two relation heads, with padding.
        let mask = padding_mask(&[4, 2], 4);
        let teacher = random(&[2, 4, 6], 1);
        check_gradient(&random(&[2, 4, 4], 2), |student| {
            relation_kl(student, &teacher, 2, &mask)
        });
    }

    #[test]
    fn a_width_that_does_not_split_into_the_relation_heads_is_an_error() {
        let mask = padding_mask(&[3], 3);
        let projections = random(&[1, 3, 4], 1);
        let error = relation_kl(&projections, &projections, 3, &mask).unwrap_err();
        assert!(error.to_string().contains("does not split"), "{error}");
    }
}
