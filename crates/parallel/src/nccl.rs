//! Gradients summed on the GPUs by NCCL (cudarc's bindings), as candle's multi-process examples
//! do: one communicator for the job, its unique id made by rank 0 and broadcast over MPI, so
//! that `mpirun` launches NCCL jobs too. The gradients never leave the devices.

use crate::world;
use anyhow::{Result, anyhow};
use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CudaDevice, CudaStorage, CustomOp1, DType, Layout, Shape, Tensor};
use candle_core::{Device, Var};
use cudarc::nccl::safe::{Comm, Id, ReduceOp};
use std::sync::{Mutex, OnceLock};

/// The job's communicator.
struct Communicator(Comm);

// SAFETY: an NCCL communicator may be used from any thread as long as calls do not overlap,
// which the mutex around it ensures.
unsafe impl Send for Communicator {}

static COMMUNICATOR: OnceLock<Mutex<Communicator>> = OnceLock::new();

/// The communicator, set up at the first call on this rank's GPU: every rank must make that
/// call together (NCCL's initialisation is collective).
fn communicator(device: &CudaDevice) -> Result<&'static Mutex<Communicator>> {
    if let Some(communicator) = COMMUNICATOR.get() {
        return Ok(communicator);
    }
    let world = world();
    let id = match world.is_leader() {
        true => Id::new().map_err(|e| anyhow!("NCCL could not make a unique id: {e:?}"))?,
        false => Id::uninit([0; 128]),
    };
    let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
    let bytes = world.broadcast(bytes);
    let internal = std::array::from_fn(|i| bytes[i] as std::ffi::c_char);
    let comm = Comm::from_rank(
        device.cuda_stream(),
        world.rank(),
        world.size(),
        Id::uninit(internal),
    )
    .map_err(|e| {
        anyhow!(
            "NCCL could not join rank {} of {}: {e:?}",
            world.rank(),
            world.size()
        )
    })?;
    let _ = COMMUNICATOR.set(Mutex::new(Communicator(comm)));
    Ok(COMMUNICATOR.get().expect("set just now"))
}

/// An f32 tensor's sum over the ranks, on the GPU.
struct NcclSum(&'static Mutex<Communicator>);

impl CustomOp1 for NcclSum {
    fn name(&self) -> &'static str {
        "nccl-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL sums tensors on GPUs only")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("nccl-sum: the tensor is not contiguous")
        };
        let device = storage.device().clone();
        let values = storage.as_cuda_slice::<f32>()?.slice(start..end);
        let mut sums = device.alloc_zeros::<f32>(end - start)?;
        let communicator = self.0.lock().expect("an NCCL call panicked");
        communicator
            .0
            .all_reduce(&values, &mut sums, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce failed: {e:?}")))?;
        Ok((
            CudaStorage::wrap_cuda_slice(sums, device),
            layout.shape().clone(),
        ))
    }
}

/// [`crate::sum_gradients`] for parameters on a GPU: the gradients packed into one f32 buffer on
/// the device, summed by one NCCL all-reduce, and unpacked. `present` says which parameters
/// have a gradient on some rank.
pub fn sum_gradients(
    grads: &mut GradStore,
    parameters: &[(String, Var)],
    present: &[u32],
) -> Result<()> {
    let Device::Cuda(device) = parameters[0].1.device() else {
        return Err(anyhow!("NCCL: the parameters are not on a GPU"));
    };
    let communicator = communicator(device)?;
    let mut pieces = Vec::new();
    for ((_, var), &present) in parameters.iter().zip(present) {
        if present == 0 {
            continue;
        }
        pieces.push(match grads.get(var.as_tensor()) {
            Some(grad) => grad.flatten_all()?.to_dtype(DType::F32)?,
            None => Tensor::zeros(var.elem_count(), DType::F32, var.device())?,
        });
    }
    let sums = Tensor::cat(&pieces, 0)?.apply_op1_no_bwd(&NcclSum(communicator))?;
    let mut offset = 0;
    for ((_, var), &present) in parameters.iter().zip(present) {
        if present == 0 {
            continue;
        }
        let n = var.elem_count();
        let summed = sums
            .narrow(0, offset, n)?
            .reshape(var.shape())?
            .to_dtype(var.dtype())?;
        grads.insert(var.as_tensor(), summed);
        offset += n;
    }
    Ok(())
}
