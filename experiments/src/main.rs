//! `kd`: knowledge distillation for BERT models, on the command line.

mod bench;
mod bench_args;
mod cli;

use std::io::Write;

fn main() {
    keep_freed_memory();
    // A write past a file-size limit (`ulimit -f`, a quota) then fails with an error that
    // names the file, as a full disk does, instead of the signal killing kd mid-checkpoint.
    // SAFETY: setting a signal's disposition before any other thread starts.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    fix_thread_count();
    // Shuts MPI down when main returns.
    let _engine = match kd_parallel::start() {
        Ok(engine) => engine,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(1);
        }
    };
    let errors = announce_rank();
    // Everything runs on a worker of candle's thread pool: the parallel sections of each
    // operation (ours, gemm's) then start from a pool thread instead of waking one from
    // outside and waiting for it, which costs more than the work in small batches.
    if let Err(error) = candle_core::Device::Cpu.with_context(cli::run) {
        let world = kd_parallel::world();
        let rank = match world.is_parallel() {
            true => format!(" (rank {} of {})", world.rank(), world.size()),
            false => String::new(),
        };
        let _ = (&errors).write_all(format!("error{rank}: {error:#}\n").as_bytes());
        // The other ranks may wait for this one in a collective: end them all.
        world.abort(1);
    }
}

/// In a data-parallel job, every rank says which it is; then the ranks after the first fall
/// silent (rank 0 prints the run's progress and results), keeping a way to report their own
/// errors. Returns where errors go.
fn announce_rank() -> std::fs::File {
    use std::os::fd::{FromRawFd, OwnedFd};
    let world = kd_parallel::world();
    // SAFETY: dup of standard error, an open descriptor; the new one is owned by the File.
    let errors = unsafe { std::fs::File::from(OwnedFd::from_raw_fd(libc::dup(2))) };
    if world.is_parallel() {
        // One write, so that the ranks' lines do not interleave.
        let line = format!(
            "rank {} of {} (local rank {}, pid {}): data-parallel\n",
            world.rank(),
            world.size(),
            world.local_rank(),
            std::process::id()
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
        if !world.is_leader()
            && let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null")
        {
            use std::os::fd::AsRawFd;
            // SAFETY: replacing standard output and error by /dev/null, both valid descriptors.
            unsafe {
                libc::dup2(null.as_raw_fd(), 1);
                libc::dup2(null.as_raw_fd(), 2);
            }
        }
    }
    errors
}

/// candle decides how many threads a matrix product uses on every product, from
/// `RAYON_NUM_THREADS` or else by counting the physical cores in `/proc/cpuinfo`: decide once.
/// The ranks of a data-parallel job on one machine share its cores.
fn fix_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let ranks_here = kd_parallel::launched_here().unwrap_or(1).max(1);
        let threads = (candle_core::utils::get_num_threads() / ranks_here).max(1);
        // SAFETY: called before any other thread starts.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}

/// By default glibc's malloc hands large freed tensor buffers back to the kernel (mmap and
/// heap trimming) and faults fresh zeroed pages in on the next step, which costs a CPU
/// training step a third to a half of its time. Serving every allocation from the heap and
/// never trimming it keeps freed buffers for reuse. Not all: a thread other than the main one
/// (kd runs on a pool thread) still maps afresh any buffer over its arena's 64 MiB heap size,
/// such as BERT-base's embedding gradient. Four fixes were tried, a cache of those buffers
/// among them; none paid for itself (`experiments/results/bench.md`, sessions 20 and 21).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
