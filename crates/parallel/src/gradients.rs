//! Gradients summed over the ranks after each backward pass, so that every rank's optimizer
//! takes the same step. kd's losses divide by the whole global batch's count on every rank
//! (see `kd_losses::global_means`), so the sum, not the mean, is the single-process gradient.

use crate::world;
use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Storage, Tensor, Var};

thread_local! {
    /// The packed gradients and their sums.
    static BUFFERS: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
        std::cell::RefCell::new((Vec::new(), Vec::new()))
    };
}

/// Replaces each parameter's gradient in `grads` by its sum over the ranks. A parameter that
/// got no gradient on any rank (one the loss never reaches) stays without one, as in a
/// single process, where the optimizer leaves it alone; one that got a gradient on some ranks
/// only gets the sum of those.
pub fn sum_gradients(grads: &mut GradStore, parameters: &[(String, Var)]) -> Result<()> {
    let world = world();
    if !world.is_parallel() {
        return Ok(());
    }
    let mut present: Vec<u32> = parameters
        .iter()
        .map(|(_, var)| u32::from(grads.get(var.as_tensor()).is_some()))
        .collect();
    world.sum(&mut present);
    #[cfg(feature = "nccl")]
    if parameters.iter().any(|(_, var)| var.device().is_cuda()) {
        return crate::nccl::sum_gradients(grads, parameters, &present);
    }
    // Through host memory: the CPU's gradients, or a GPU's in a build without NCCL.
    let total: usize = parameters
        .iter()
        .zip(&present)
        .filter(|&(_, &present)| present != 0)
        .map(|((_, var), _)| var.elem_count())
        .sum();
    // Buffers kept from step to step: a fresh 70 MB each step costs more in page faults than
    // the copy.
    BUFFERS.with_borrow_mut(|(flat, sums)| -> Result<()> {
        flat.clear();
        flat.reserve(total);
        for ((_, var), &present) in parameters.iter().zip(&present) {
            if present == 0 {
                continue;
            }
            match grads.get(var.as_tensor()) {
                Some(grad) => append(flat, grad)?,
                None => flat.resize(flat.len() + var.elem_count(), 0.0),
            }
        }
        sums.resize(total, 0.0);
        world.sum_into(flat, sums);
        let mut offset = 0;
        for ((_, var), &present) in parameters.iter().zip(&present) {
            if present == 0 {
                continue;
            }
            let n = var.elem_count();
            let summed = Tensor::from_slice(&sums[offset..offset + n], var.shape(), var.device())?
                .to_dtype(var.dtype())?;
            grads.insert(var.as_tensor(), summed);
            offset += n;
        }
        Ok(())
    })?;
    Ok(())
}

/// Appends `grad`'s values to `flat`: straight from the buffer of a contiguous f32 gradient on
/// the CPU (most of a step's all-reduce time is copying), through a conversion otherwise.
fn append(flat: &mut Vec<f32>, grad: &Tensor) -> Result<()> {
    if grad.dtype() == DType::F32 {
        let (storage, layout) = grad.storage_and_layout();
        if let (Storage::Cpu(storage), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            flat.extend_from_slice(&storage.as_slice::<f32>()?[start..end]);
            return Ok(());
        }
    }
    flat.extend(grad.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
    Ok(())
}
