//! Keeping the thread pool's workers awake through a run of small inference calls.
//!
//! One sentence through a small student is dozens of parallel sections of a few microseconds
//! each. Between them rayon's idle workers yield and then sleep, and every section then pays
//! a futex wake-up and a context switch (a fifth of a batch-1 answer's time in `perf`). ONNX
//! Runtime's intra-op threads spin instead; [`with_busy_workers`] does the same for the
//! duration of a closure.

use std::sync::atomic::{AtomicBool, Ordering};

/// Pause instructions between two looks for work.
const IDLE_PAUSES: usize = 64;

/// Runs `work` on the calling pool worker while every other worker of the pool spins,
/// taking the caller's parallel work as soon as it is offered. The other cores are busy for
/// as long as `work` runs: meant for serving loops, where latency is what counts.
pub fn with_busy_workers<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    let Some(caller) = rayon::current_thread_index() else {
        return work();
    };
    if rayon::current_num_threads() == 1 {
        return work();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        scope.spawn_broadcast(|_, context| {
            // The caller's own copy of the broadcast returns at once: spinning there would
            // never let `work` go on.
            if context.index() == caller {
                return;
            }
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    // Polling the caller's queue without a pause slows the caller's own
                    // pushes and pops on it.
                    for _ in 0..IDLE_PAUSES {
                        std::hint::spin_loop();
                    }
                }
            }
        });
        // Set even when `work` panics, or the scope would wait for the spinners forever.
        let _stop = StopOnDrop(&done);
        work()
    })
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// CPU time each worker of `pool` has used so far.
    fn worker_cpu_times(pool: &rayon::ThreadPool) -> Vec<Duration> {
        pool.broadcast(|_| {
            let mut time = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `time` is a valid timespec to write.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
            Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
        })
    }

    /// The most CPU time any worker of a 2-thread pool uses while `run` sleeps on one.
    fn busiest_worker_while_sleeping(run: fn(Box<dyn FnOnce() + Send>)) -> Duration {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let before = worker_cpu_times(&pool);
        pool.install(|| run(Box::new(|| std::thread::sleep(Duration::from_millis(200)))));
        let after = worker_cpu_times(&pool);
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| *a - *b)
            .max()
            .unwrap()
    }

    #[test]
    fn other_workers_spin_only_while_the_work_runs() {
        let idle = busiest_worker_while_sleeping(|work| work());
        let busy = busiest_worker_while_sleeping(with_busy_workers);
        assert!(idle < Duration::from_millis(40), "idle pool used {idle:?}");
        // A spinner gets all of a free core (about 200 ms) but much less of a loaded one (50
        // ms beside two busy processes on 2 cores); an idle worker gets next to nothing.
        assert!(
            busy > Duration::from_millis(20),
            "spinning worker used {busy:?}"
        );
        // Whatever the load, a spinner uses several times what an idle worker does.
        assert!(busy > idle * 4, "spinning {busy:?} against idle {idle:?}");
    }

    #[test]
    fn returns_the_result_and_runs_parallel_work() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let sum = pool.install(|| {
            with_busy_workers(|| {
                use rayon::prelude::*;
                (0..10_000u32)
                    .into_par_iter()
                    .with_min_len(1)
                    .map(u64::from)
                    .sum::<u64>()
            })
        });
        assert_eq!(sum, 10_000 * 9_999 / 2);
        // Outside any pool it simply runs the work.
        assert_eq!(with_busy_workers(|| 7), 7);
    }

    #[test]
    fn a_panic_in_the_work_stops_the_spinners() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let outcome = pool
            .install(|| std::panic::catch_unwind(|| with_busy_workers(|| panic!("work failed"))));
        assert!(outcome.is_err());
        // The pool is free again: a broadcast reaches both workers.
        assert_eq!(pool.broadcast(|_| 1).len(), 2);
    }
}
