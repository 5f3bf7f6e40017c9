//! Losses between similarity (Gram) matrices of hidden states `[batch, seq, hidden]`, as
//! TextBrewer defines them: FSP's width-by-width matrices between two layers (Yim et al.
//! 2017) and NST's token-by-token matrices within a layer (Huang & Wang 2017). The u32
//! attention mask `[batch, seq]` says which tokens are real.

use crate::mean::{masked_mean, mse};
use anyhow::Result;
use candle_core::{D, Tensor};

/// The FSP loss of TextBrewer's `fsp_loss` (a variant of Yim et al.'s "flow of solution
/// procedure"): for each model, the matrix `G = first^T · second / n` of two layers' states
/// over the `n` real tokens of each example (`[batch, hidden, hidden]`), then the mean squared
/// difference between the student's and the teacher's `G` over every element. The student's
/// states must have the teacher's width (the objective projects them).
pub fn fsp_loss(student: [&Tensor; 2], teacher: [&Tensor; 2], mask: &Tensor) -> Result<Tensor> {
    let [student_first, student_second] = student;
    let [teacher_first, teacher_second] = teacher;
    mse(
        &flow_matrix(student_first, student_second, mask)?,
        &flow_matrix(teacher_first, teacher_second, mask)?,
        None,
    )
}

/// The NST loss of TextBrewer's `mmd_loss` (its variant of Huang & Wang's neuron selectivity
/// transfer): for each model, the token similarities `G = states · states^T / hidden`
/// (`[batch, seq, seq]`), then the mean squared difference between the student's and the
/// teacher's `G` over every pair of real tokens of an example. The widths may differ: the
/// products contract over each model's own width.
pub fn mmd_loss(student: &Tensor, teacher: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let difference = (token_similarities(student)? - token_similarities(&teacher.detach())?)?;
    let real = mask.unsqueeze(2)?.broadcast_mul(&mask.unsqueeze(1)?)?;
    masked_mean(&difference.sqr()?, Some(&real))
}

/// `first^T · second / n` per example, over its `n` real tokens: `[batch, hidden, hidden]`.
/// Padded rows are selected out before the product, which sums over the tokens.
fn flow_matrix(first: &Tensor, second: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let real = mask.unsqueeze(D::Minus1)?;
    let real_rows = |states: &Tensor| -> Result<Tensor> {
        let real = real.broadcast_as(states.shape())?;
        Ok(real.where_cond(states, &states.zeros_like()?)?)
    };
    let products = real_rows(first)?.t()?.matmul(&real_rows(second)?)?;
    let tokens = mask.to_dtype(first.dtype())?.sum_keepdim(1)?.unsqueeze(2)?;
    Ok(products.broadcast_div(&tokens)?)
}

/// `states · states^T / hidden`: `[batch, seq, seq]`.
fn token_similarities(states: &Tensor) -> Result<Tensor> {
    let width = states.dim(D::Minus1)? as f64;
    Ok(states.matmul(&states.t()?)?.affine(1.0 / width, 0.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        assert_close, check_gradient, padded_with_garbage, padding_mask, random, scalar,
    };
    use candle_core::{Device, Module};
    use candle_nn::Linear;

    /// Two examples of three 2-wide token states.
    fn tensor(values: &[[[f64; 2]; 3]; 2]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    #[test]
    fn fsp_matches_hand_computed_values() -> Result<()> {
        // Example 1 has two real tokens (the third row is padding holding garbage), example 2
        // three. Student, example 1: first^T second = [1,2]^T[0,1] + [3,0]^T[1,1]
        // = [[0,1],[0,2]] + [[3,3],[0,0]] = [[3,4],[0,2]], over 2 tokens [[1.5,2],[0,1]].
        // Example 2: every first row is [1,1], so first^T second = [1,1]^T (sum of second's
        // rows [4,1]) = [[4,1],[4,1]], over 3 tokens [[4/3,1/3],[4/3,1/3]].
        let student_first = tensor(&[
            [[1.0, 2.0], [3.0, 0.0], [9.0, 9.0]],
            [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]],
        ]);
        let student_second = tensor(&[
            [[0.0, 1.0], [1.0, 1.0], [7.0, 7.0]],
            [[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]],
        ]);
        // Teacher, example 1: [1,0]^T[2,0] + [0,1]^T[0,2] = [[2,0],[0,2]], over 2 tokens the
        // identity; example 2 is zero.
        let teacher_first = tensor(&[
            [[1.0, 0.0], [0.0, 1.0], [5.0, -5.0]],
            [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
        ]);
        let teacher_second = tensor(&[
            [[2.0, 0.0], [0.0, 2.0], [-4.0, 4.0]],
            [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
        ]);
        let mask = padding_mask(&[2, 3], 3);
        // Differences: example 1 [[0.5,2],[0,0]], squares summing to 4.25; example 2
        // [[4/3,1/3],[4/3,1/3]], squares summing to 34/9; the mean of the 8 elements.
        let expected = (4.25 + 34.0 / 9.0) / 8.0;
        let loss = fsp_loss(
            [&student_first, &student_second],
            [&teacher_first, &teacher_second],
            &mask,
        )?;
        assert_close(scalar(&loss), expected, 1e-9);
        Ok(())
    }

    #[test]
    fn mmd_matches_hand_computed_values_across_widths() -> Result<()> {
        let device = &Device::Cpu;
        // A 2-wide student against a 3-wide teacher. Example 1 has two real tokens: the
        // student's similarities s1·s1 = 5, s1·s2 = 3, s2·s2 = 9, over width 2
        // [[2.5,1.5],[1.5,4.5]]; the teacher's 3, 3, 9 over width 3 [[1,1],[1,3]]; squared
        // differences 2.25 + 0.25 + 0.25 + 2.25 = 5. Example 2 has one real token: 4/2 = 2
        // against 1/3, squared (5/3)² = 25/9. Five real pairs in all.
        let student = tensor(&[
            [[1.0, 2.0], [3.0, 0.0], [9.0, 9.0]],
            [[2.0, 0.0], [-8.0, 8.0], [6.0, 6.0]],
        ]);
        let teacher = Tensor::new(
            &[
                [[1.0f64, 1.0, 1.0], [0.0, 3.0, 0.0], [4.0, 4.0, 4.0]],
                [[1.0, 0.0, 0.0], [7.0, 7.0, 7.0], [-3.0, 2.0, 1.0]],
            ],
            device,
        )?;
        let mask = padding_mask(&[2, 1], 3);
        let expected = (5.0 + 25.0 / 9.0) / 5.0;
        assert_close(
            scalar(&mmd_loss(&student, &teacher, &mask)?),
            expected,
            1e-9,
        );
        Ok(())
    }

    #[test]
    fn losses_are_zero_when_the_student_matches() -> Result<()> {
        let mask = padding_mask(&[4, 2], 4);
        let (first, second) = (random(&[2, 4, 3], 1), random(&[2, 4, 3], 2));
        let fsp = fsp_loss([&first, &second], [&first, &second], &mask)?;
        assert_close(scalar(&fsp), 0.0, 0.0);
        assert_close(scalar(&mmd_loss(&first, &first, &mask)?), 0.0, 0.0);
        Ok(())
    }

    #[test]
    fn padded_positions_do_not_change_the_losses() -> Result<()> {
        // The second example has two real tokens of three; padded to five, the padded
        // positions hold large garbage.
        let (short, long) = (padding_mask(&[3, 2], 3), padding_mask(&[3, 2], 5));
        let states: Vec<Tensor> = (1..=4).map(|seed| random(&[2, 3, 4], seed)).collect();
        let padded: Vec<Tensor> = (states.iter().zip(5..))
            .map(|(xs, seed)| padded_with_garbage(xs, 1, 2, seed))
            .collect();
        let losses = |s: &[Tensor], mask: &Tensor| -> Result<[f64; 2]> {
            Ok([
                scalar(&fsp_loss([&s[0], &s[1]], [&s[2], &s[3]], mask)?),
                scalar(&mmd_loss(&s[0], &s[2], mask)?),
            ])
        };
        let (short_losses, long_losses) = (losses(&states, &short)?, losses(&padded, &long)?);
        for (short, long) in short_losses.into_iter().zip(long_losses) {
            assert!(short > 0.1, "{short}");
            assert_close(long, short, 1e-9);
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() {
        let mask = padding_mask(&[4, 2], 4);
        let (first, second) = (random(&[2, 4, 3], 1), random(&[2, 4, 3], 2));
        let teacher = [&random(&[2, 4, 3], 3), &random(&[2, 4, 3], 4)];
        check_gradient(&first, |first| fsp_loss([first, &second], teacher, &mask));
        check_gradient(&second, |second| fsp_loss([&first, second], teacher, &mask));
        // NST against a wider teacher.
        let wide_teacher = random(&[2, 4, 5], 5);
        check_gradient(&first, |student| mmd_loss(student, &wide_teacher, &mask));
    }

    #[test]
    fn fsp_gradients_through_a_projection_match_finite_differences() {
        // A 2-wide student's two layers against a 3-wide teacher through W (3×2) and b (3).
        let mask = padding_mask(&[4, 2], 4);
        let (first, second) = (random(&[2, 4, 2], 1), random(&[2, 4, 2], 2));
        let teacher = [&random(&[2, 4, 3], 3), &random(&[2, 4, 3], 4)];
        let (weight, bias) = (random(&[3, 2], 5), random(&[3], 6));
        let loss = |weight: &Tensor, bias: &Tensor| {
            let projection = Linear::new(weight.clone(), Some(bias.clone()));
            let student = [projection.forward(&first)?, projection.forward(&second)?];
            fsp_loss([&student[0], &student[1]], teacher, &mask)
        };
        check_gradient(&weight, |weight| loss(weight, &bias));
        check_gradient(&bias, |bias| loss(&weight, bias));
    }
}
