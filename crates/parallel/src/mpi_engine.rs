//! The collectives on MPI's world communicator (the `mpi` crate over Open MPI or another MPI).

use crate::{Summable, World};
use anyhow::{Context, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Threading;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

pub use mpi::environment::Universe;

/// MPI's counts are C ints: larger buffers go in pieces of this many elements.
const PIECE: usize = 1 << 24;

/// Starts MPI. kd calls MPI from one thread at a time, but not always the one that started it
/// (its work runs on a thread pool's worker), hence "serialized".
pub fn start() -> Result<(Universe, World)> {
    let (universe, _) = mpi::initialize_with_threading(Threading::Serialized)
        .context("MPI could not start (or was started twice)")?;
    let world = universe.world();
    // The ranks that share this machine's memory, in world order: the rank among them picks
    // the GPU.
    let local = world.split_shared(world.rank());
    let world = World {
        rank: world.rank() as usize,
        size: world.size() as usize,
        local_rank: local.rank() as usize,
    };
    Ok((universe, world))
}

fn comm() -> SimpleCommunicator {
    SimpleCommunicator::world()
}

pub fn sum<T: Summable>(values: &mut [T]) {
    let comm = comm();
    for piece in values.chunks_mut(PIECE) {
        let send = piece.to_vec();
        comm.all_reduce_into(&send[..], piece, SystemOperation::sum());
    }
}

pub fn sum_into<T: Summable>(values: &[T], sums: &mut [T]) {
    let comm = comm();
    for (values, sums) in values.chunks(PIECE).zip(sums.chunks_mut(PIECE)) {
        comm.all_reduce_into(values, sums, SystemOperation::sum());
    }
}

pub fn broadcast(mut bytes: Vec<u8>) -> Vec<u8> {
    let comm = comm();
    let root = comm.process_at_rank(0);
    let mut len = bytes.len() as u64;
    root.broadcast_into(&mut len);
    bytes.resize(len as usize, 0);
    for piece in bytes.chunks_mut(PIECE) {
        root.broadcast_into(piece);
    }
    bytes
}

pub fn gather(value: u64) -> Vec<u64> {
    let comm = comm();
    let mut all = vec![0u64; comm.size() as usize];
    comm.all_gather_into(&value, &mut all[..]);
    all
}

pub fn barrier() {
    comm().barrier();
}

pub fn abort(code: i32) -> ! {
    comm().abort(code)
}
