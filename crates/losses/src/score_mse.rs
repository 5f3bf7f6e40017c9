//! TinyBERT's attention-score MSE as one fused operation. Composed of tensor operations it
//! makes about ten passes over `[batch, heads, seq, seq]` scores (per layer pair, forward and
//! backward), each allocating a full-size buffer, which cost general distillation more than
//! the student's own attention; fused, the forward pass is one read of both inputs and the
//! backward pass one write of the student's gradient.

use anyhow::{Result, ensure};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, WithDType};
use kd_bert::kernels::generic_forced;
use rayon::prelude::*;

/// Scores at or below this count as 0 on both sides, as in TinyBERT (the padded keys' among
/// them).
const MASKED_SCORE: f64 = -1e2;
/// Rows of scores summed by one task; fixed, so that the sum has the same bits on every run.
const ROWS_PER_TASK: usize = 64;

/// TinyBERT's attention loss: the MSE between attention scores (`[batch, heads, seq, seq]`,
/// f32 or f64), averaged over heads and real (query, key) pairs of the `[batch, seq]` mask.
/// As in TinyBERT, scores at or below −100 (the padded keys' among them) count as 0 on both
/// sides. Only the student gets a gradient.
pub fn attention_score_mse(student: &Tensor, teacher: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (batch, heads, seq, keys) = student.dims4()?;
    ensure!(
        seq == keys && teacher.dims() == student.dims() && mask.dims() == [batch, seq],
        "attention scores {:?} and {:?} with mask {:?}",
        student.dims(),
        teacher.dims(),
        mask.dims()
    );
    let real: Vec<bool> = mask
        .flatten_all()?
        .to_dtype(DType::U32)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|m| m != 0)
        .collect();
    let pairs: usize = real
        .chunks(seq)
        .map(|row| row.iter().filter(|&&r| r).count().pow(2))
        .sum();
    let count = crate::mean::mean_count((pairs * heads) as f64).max(1.0);
    // The fused kernel serves f32 and f64 on the CPU.
    if !student.device().is_cpu() || generic_forced() {
        return composed(student, &teacher.detach(), mask, count);
    }
    let op = ScoreMse {
        real,
        heads,
        seq,
        count,
    };
    Ok(student
        .contiguous()?
        .apply_op2(&teacher.detach().contiguous()?, op)?)
}

/// The same loss from candle's tensor ops, for devices and dtypes the fused kernel does not
/// serve: the squared differences of the unmasked scores, kept at real (query, key) pairs.
fn composed(student: &Tensor, teacher: &Tensor, mask: &Tensor, count: f64) -> Result<Tensor> {
    let unmasked = |scores: &Tensor| -> Result<Tensor> {
        let zeros = scores.zeros_like()?;
        Ok(scores.gt(MASKED_SCORE)?.where_cond(scores, &zeros)?)
    };
    let real = mask.to_dtype(student.dtype())?;
    let (batch, seq) = real.dims2()?;
    let pairs = real
        .reshape((batch, 1, seq, 1))?
        .broadcast_mul(&real.reshape((batch, 1, 1, seq))?)?;
    let squares = (unmasked(student)? - unmasked(teacher)?)?.sqr()?;
    Ok((squares.broadcast_mul(&pairs)?.sum_all()? / count)?)
}

struct ScoreMse {
    /// `[batch * seq]`: which tokens are real.
    real: Vec<bool>,
    heads: usize,
    seq: usize,
    /// Real pairs times heads: the mean's denominator.
    count: f64,
}

impl ScoreMse {
    /// Whether the row `row` of `[batch * heads * seq]` query rows is a real query, and the
    /// real-key flags of its example.
    fn row(&self, row: usize) -> (bool, &[bool]) {
        let example = row / (self.heads * self.seq);
        let keys = &self.real[example * self.seq..(example + 1) * self.seq];
        (keys[row % self.seq], keys)
    }

    fn sum<T: WithDType>(&self, student: &[T], teacher: &[T]) -> f64 {
        let seq = self.seq;
        let rows = student.len() / seq;
        let partial: Vec<f64> = (0..rows.div_ceil(ROWS_PER_TASK))
            .into_par_iter()
            .map(|task| {
                let mut sum = 0.0;
                for row in task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(rows) {
                    let (real_query, real_keys) = self.row(row);
                    if !real_query {
                        continue;
                    }
                    let s = &student[row * seq..(row + 1) * seq];
                    let t = &teacher[row * seq..(row + 1) * seq];
                    for ((&s, &t), &real) in s.iter().zip(t).zip(real_keys) {
                        if real {
                            let difference = unmasked(s.to_f64()) - unmasked(t.to_f64());
                            sum += difference * difference;
                        }
                    }
                }
                sum
            })
            .collect();
        partial.iter().sum()
    }

    /// `d loss / d student`, scaled by `scale` (the gradient reaching the loss over `count`).
    fn gradient<T: WithDType>(&self, student: &[T], teacher: &[T], scale: f64) -> Vec<T> {
        let seq = self.seq;
        let mut grad = vec![T::zero(); student.len()];
        grad.par_chunks_mut(seq)
            .enumerate()
            .for_each(|(row, grad)| {
                let (real_query, real_keys) = self.row(row);
                if !real_query {
                    return;
                }
                let s = &student[row * seq..(row + 1) * seq];
                let t = &teacher[row * seq..(row + 1) * seq];
                for (((g, &s), &t), &real) in grad.iter_mut().zip(s).zip(t).zip(real_keys) {
                    let score = s.to_f64();
                    if real && score > MASKED_SCORE {
                        *g = T::from_f64(2.0 * scale * (score - unmasked(t.to_f64())));
                    }
                }
            });
        grad
    }
}

fn unmasked(score: f64) -> f64 {
    if score > MASKED_SCORE { score } else { 0.0 }
}

/// The contiguous data of a storage as `T`.
fn slice<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [T]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("attention scores must be contiguous");
    };
    Ok(&storage.as_slice::<T>()?[start..end])
}

impl ScoreMse {
    /// The mean as a one-element storage of `T`.
    fn mean<T: WithDType>(
        &self,
        student: (&CpuStorage, &Layout),
        teacher: (&CpuStorage, &Layout),
    ) -> candle_core::Result<CpuStorage> {
        let sum = self.sum(
            slice::<T>(student.0, student.1)?,
            slice::<T>(teacher.0, teacher.1)?,
        );
        Ok(T::to_cpu_storage(&[T::from_f64(sum / self.count)]))
    }

    /// The student's gradient as a tensor of `T`.
    fn gradient_tensor<T: WithDType>(
        &self,
        student: &Tensor,
        teacher: &Tensor,
        scale: f64,
    ) -> candle_core::Result<Tensor> {
        let (student_storage, student_layout) = student.storage_and_layout();
        let (teacher_storage, teacher_layout) = teacher.storage_and_layout();
        let (candle_core::Storage::Cpu(s), candle_core::Storage::Cpu(t)) =
            (&*student_storage, &*teacher_storage)
        else {
            candle_core::bail!("the attention-score MSE runs on the CPU");
        };
        let grad = self.gradient(
            slice::<T>(s, student_layout)?,
            slice::<T>(t, teacher_layout)?,
            scale,
        );
        Tensor::from_vec(grad, student.shape(), student.device())
    }
}

impl CustomOp2 for ScoreMse {
    fn name(&self) -> &'static str {
        "kd-attention-score-mse"
    }

    fn cpu_fwd(
        &self,
        student: &CpuStorage,
        student_layout: &Layout,
        teacher: &CpuStorage,
        teacher_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let inputs = ((student, student_layout), (teacher, teacher_layout));
        let storage = match student.dtype() {
            DType::F32 => self.mean::<f32>(inputs.0, inputs.1)?,
            DType::F64 => self.mean::<f64>(inputs.0, inputs.1)?,
            other => candle_core::bail!("attention scores in {other:?}"),
        };
        Ok((storage, Shape::from(())))
    }

    fn bwd(
        &self,
        student: &Tensor,
        teacher: &Tensor,
        _loss: &Tensor,
        grad_loss: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let scale = grad_loss.to_dtype(DType::F64)?.to_scalar::<f64>()? / self.count;
        let grad = match student.dtype() {
            DType::F32 => self.gradient_tensor::<f32>(student, teacher, scale)?,
            _ => self.gradient_tensor::<f64>(student, teacher, scale)?,
        };
        Ok((Some(grad), None))
    }
}
