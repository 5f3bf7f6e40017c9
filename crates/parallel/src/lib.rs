//! Data parallelism over processes: which process this is (its rank) in a job of how many (the
//! world size), and the collective operations data-parallel training needs: sums across the
//! processes, a broadcast from the first, a barrier. Under `mpirun` (built with the `mpi`
//! feature) they run on MPI; gradients on GPUs are summed by NCCL (the `nccl` feature), its
//! communicator set up from the MPI world. Started any other way, kd is a world of one, where
//! every collective is the identity and nothing of MPI is touched.
//!
//! The rule the rest of kd follows: every rank holds the whole model and takes its share of
//! each global batch; the first rank (the leader) alone evaluates, prints and writes files.

mod gradients;
#[cfg(feature = "mpi")]
mod mpi_engine;
#[cfg(feature = "nccl")]
mod nccl;

use anyhow::{Result, bail};
use std::sync::OnceLock;

pub use gradients::sum_gradients;

/// This process's place in the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    rank: usize,
    size: usize,
    /// The rank among the job's processes on this machine (which GPU to take).
    local_rank: usize,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The world this process belongs to: the one [`start`] joined, or a world of one.
pub fn world() -> World {
    *WORLD.get_or_init(|| World::SINGLE)
}

/// What keeps the parallel engine running; dropping it shuts MPI down.
pub struct Engine {
    #[cfg(feature = "mpi")]
    _mpi: Option<mpi_engine::Universe>,
}

/// Joins the job kd was launched into: MPI's world under `mpirun` (or another MPI launcher),
/// else a world of one. Call once, before any other thread uses [`world`].
pub fn start() -> Result<Engine> {
    let launched = launched_size();
    if launched.is_some_and(|size| size > 1) && !cfg!(feature = "mpi") {
        bail!(
            "kd was launched as one of {} processes (mpirun), but this kd was built without MPI: \
             each process would run the whole job alone. Build it with `cargo build --release \
             --features mpi` (Open MPI's headers and libclang needed: Debian's libopenmpi-dev \
             and libclang-dev), or run kd without mpirun",
            launched.unwrap_or(1)
        );
    }
    #[cfg(feature = "mpi")]
    if launched.is_some() {
        let (universe, world) = mpi_engine::start()?;
        let _ = WORLD.set(world);
        return Ok(Engine {
            _mpi: Some(universe),
        });
    }
    let _ = WORLD.set(World::SINGLE);
    Ok(Engine {
        #[cfg(feature = "mpi")]
        _mpi: None,
    })
}

/// The world size an MPI launcher announced in the environment (Open MPI's, or the PMI
/// variables of MPICH and Slurm), if kd was started by one.
fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse().ok())
}

/// How many ranks of the job an MPI launcher started on this machine (Open MPI's and MPICH's
/// variables), read before MPI starts: they share its cores.
pub fn launched_here() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse().ok())
}

/// Numbers that MPI sums element-wise.
pub trait Summable: Copy + Default + 'static + sealed::Element {}
impl Summable for f32 {}
impl Summable for f64 {}
impl Summable for u16 {}
impl Summable for u32 {}

mod sealed {
    #[cfg(feature = "mpi")]
    pub trait Element: mpi::datatype::Equivalence {}
    #[cfg(not(feature = "mpi"))]
    pub trait Element {}
    impl Element for f32 {}
    impl Element for f64 {}
    impl Element for u16 {}
    impl Element for u32 {}
}

impl World {
    const SINGLE: World = World {
        rank: 0,
        size: 1,
        local_rank: 0,
    };

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn local_rank(&self) -> usize {
        self.local_rank
    }

    /// The first rank: it evaluates, prints and writes files.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// More than one process.
    pub fn is_parallel(&self) -> bool {
        self.size > 1
    }

    /// Replaces `values` on every rank by their element-wise sum over the ranks.
    pub fn sum<T: Summable>(&self, values: &mut [T]) {
        #[cfg(feature = "mpi")]
        if self.is_parallel() {
            mpi_engine::sum(values);
        }
        // A world of one: each sum is the value.
        #[cfg(not(feature = "mpi"))]
        let _ = values;
    }

    /// Writes into `sums` the element-wise sum over the ranks of `values` (of the same length):
    /// [`World::sum`] without its copy of the values, for the large buffers a caller keeps.
    pub fn sum_into<T: Summable>(&self, values: &[T], sums: &mut [T]) {
        assert_eq!(
            values.len(),
            sums.len(),
            "sum_into: buffers of different lengths"
        );
        #[cfg(feature = "mpi")]
        if self.is_parallel() {
            mpi_engine::sum_into(values, sums);
            return;
        }
        sums.copy_from_slice(values);
    }

    /// The sum over the ranks of one number.
    pub fn sum_one(&self, value: f64) -> f64 {
        let mut values = [value];
        self.sum(&mut values);
        values[0]
    }

    /// The leader's `bytes`, on every rank.
    pub fn broadcast(&self, bytes: Vec<u8>) -> Vec<u8> {
        #[cfg(feature = "mpi")]
        if self.is_parallel() {
            return mpi_engine::broadcast(bytes);
        }
        bytes
    }

    /// Every rank's `value`, in rank order.
    pub fn gather(&self, value: u64) -> Vec<u64> {
        #[cfg(feature = "mpi")]
        if self.is_parallel() {
            return mpi_engine::gather(value);
        }
        vec![value]
    }

    /// Waits until every rank has come here.
    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if self.is_parallel() {
            mpi_engine::barrier();
        }
    }

    /// Ends the whole job with `code` (every rank: a rank that failed alone would leave the
    /// others waiting in a collective).
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if self.is_parallel() {
            mpi_engine::abort(code);
        }
        std::process::exit(code)
    }

    /// Checks that every rank runs the same job: `fingerprint` (a hash of the settings and the
    /// data) must agree on all ranks.
    pub fn check_same(&self, what: &str, fingerprint: u64) -> Result<()> {
        let all = self.gather(fingerprint);
        let differing: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|&(_, &value)| value != all[0])
            .map(|(rank, _)| rank.to_string())
            .collect();
        if !differing.is_empty() {
            bail!(
                "the ranks of this job differ in {what}: rank(s) {} read other settings or data \
                 than rank 0 (every rank must run the same command on the same files)",
                differing.join(", ")
            );
        }
        Ok(())
    }

    /// Rank `rank`'s part of `items`, split into `size` contiguous parts of sizes that differ
    /// by at most one (the first ones larger).
    pub fn share<'a, T>(&self, items: &'a [T]) -> &'a [T] {
        let (base, extra) = (items.len() / self.size, items.len() % self.size);
        let start = self.rank * base + self.rank.min(extra);
        let len = base + usize::from(self.rank < extra);
        &items[start..start + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_in_order() {
        let batch: Vec<usize> = (0..7).collect();
        let parts: Vec<Vec<usize>> = (0..3)
            .map(|rank| {
                World {
                    rank,
                    size: 3,
                    local_rank: rank,
                }
                .share(&batch)
                .to_vec()
            })
            .collect();
        assert_eq!(parts, [vec![0, 1, 2], vec![3, 4], vec![5, 6]]);
    }

    #[test]
    fn a_world_of_one_keeps_values() {
        let world = World::SINGLE;
        let mut values = [1.5f32, -2.0];
        world.sum(&mut values);
        assert_eq!(values, [1.5, -2.0]);
        assert_eq!(world.broadcast(vec![1, 2]), [1, 2]);
        assert_eq!(world.gather(7), [7]);
        assert!(world.check_same("settings", 3).is_ok());
    }
}
