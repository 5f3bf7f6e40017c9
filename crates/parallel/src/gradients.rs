//! Gradients summed over the ranks after each backward pass, so that every rank's optimizer
//! takes the same step. kd's losses divide by the whole global batch's count on every rank
//! (see `kd_losses::global_means`), so the sum, not the mean, is the single-process gradient.

use crate::world;
use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

/// Replaces each parameter's gradient in `grads` by its sum over the ranks. A parameter that
/// got no gradient on any rank (one the loss never reaches) stays without one, as in a
/// single process, where the optimizer leaves it alone; one that got a gradient on some ranks
/// only gets the sum of those.
pub fn sum_gradients(grads: &mut GradStore, parameters: &[(String, Var)]) -> Result<()> {
    let world = world();
    if !world.is_parallel() {
        return Ok(());
    }
    // Through host memory (a GPU's gradients too, until NCCL sums them on the devices).
    let mut present: Vec<u32> = parameters
        .iter()
        .map(|(_, var)| u32::from(grads.get(var.as_tensor()).is_some()))
        .collect();
    world.sum(&mut present);
    let mut flat: Vec<f32> = Vec::new();
    for ((_, var), &present) in parameters.iter().zip(&present) {
        if present == 0 {
            continue;
        }
        match grads.get(var.as_tensor()) {
            Some(grad) => flat.extend(grad.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => flat.resize(flat.len() + var.elem_count(), 0.0),
        }
    }
    world.sum(&mut flat);
    let mut offset = 0;
    for ((_, var), &present) in parameters.iter().zip(&present) {
        if present == 0 {
            continue;
        }
        let n = var.elem_count();
        let summed = Tensor::from_slice(&flat[offset..offset + n], var.shape(), var.device())?
            .to_dtype(var.dtype())?;
        grads.insert(var.as_tensor(), summed);
        offset += n;
    }
    Ok(())
}
