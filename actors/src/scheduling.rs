//! How the kernel schedules the threads that pass work along the pipeline.
//!
//! An org arbiter is woken by an HTTP worker for nearly every webhook, and
//! the SQLite writer by the PersistenceActor for every batch. Under Linux's
//! default policy a woken thread may preempt whatever runs on its CPU,
//! often an HTTP worker halfway through a request: on two cores
//! the HTTP workers were preempted about once every seven webhooks (11,800
//! times in a loadtest run of 79,000), and 3,500 times with this.
//!
//! `SCHED_BATCH` keeps the thread's priority and share of the CPU and gives
//! up only that wakeup preemption: a woken hand-off thread runs at once on
//! an idle CPU, and otherwise when the running thread yields or its time
//! slice ends, by which time more work has queued for it. In alternated
//! runs (README, How it is built): about 7% more webhooks a second at about
//! 10% less CPU each.

/// Marks the calling thread as one that takes work handed to it by others
/// (`SCHED_BATCH`). Where the kernel refuses or has no such policy the
/// thread stays as it was: only speed depends on it.
pub fn hand_off_thread() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` lives across the call, which only reads it; pid 0
        // is the calling thread.
        let refused = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0;
        if refused {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "SCHED_BATCH refused; the thread keeps the default policy"
            );
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy() -> i32 {
        // SAFETY: takes a plain integer (0: the calling thread) and touches
        // no memory of ours.
        unsafe { libc::sched_getscheduler(0) }
    }

    #[test]
    fn only_the_calling_thread_takes_the_batch_policy() {
        let before = policy();
        std::thread::spawn(|| {
            hand_off_thread();
            assert_eq!(policy(), libc::SCHED_BATCH);
        })
        .join()
        .unwrap();
        assert_eq!(policy(), before, "the thread that spawned it keeps its own");
    }
}
