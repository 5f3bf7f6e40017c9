//! `kd`: knowledge distillation for BERT models, on the command line.

mod bench;
mod cli;
mod distill;
mod predict;
mod recipe;

fn main() {
    keep_freed_memory();
    if let Err(error) = cli::run() {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

/// By default glibc's malloc hands large freed tensor buffers back to the kernel (mmap and
/// heap trimming) and faults fresh zeroed pages in on the next step, which costs a CPU
/// training step a third to a half of its time. Serving every allocation from the heap and
/// never trimming it keeps freed buffers for reuse.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
