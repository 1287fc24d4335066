//! How the kernel schedules the threads that pass work along the pipeline,
//! and what it calls them.
//!
//! An org arbiter is woken by an HTTP worker for nearly every webhook, and
//! the SQLite writer by the PersistenceActor for every batch. Under Linux's
//! default policy a woken thread may preempt whatever runs on its CPU,
//! often an HTTP worker halfway through a request: on two cores the two
//! HTTP workers were switched out involuntarily 11,800 times in a loadtest
//! run of 79,000 webhooks (about once every seven), and 3,500 times with
//! this.
//!
//! `SCHED_BATCH` keeps the thread's priority and share of the CPU and gives
//! up only that wakeup preemption: a woken hand-off thread runs at once on
//! an idle CPU, and otherwise when the running thread yields or its time
//! slice ends, by which time more work has queued for it. In four
//! alternated pairs (2026-12-03): a median 37.0k against 34.5k webhooks a
//! second (+7%), at 37.7 against 42.2 µs of CPU each.
//!
//! Everything that runs on those threads shares the policy (the
//! PersistenceActor lives on the first org arbiter), and so do threads they
//! start: an arbiter's own blocking pool, which serves an org actor's reads
//! of its recent actions.

/// Marks the calling thread as one that takes work handed to it by others
/// (`SCHED_BATCH`), and returns whether the kernel took it. Where it does
/// not (no such policy, or a sandbox that refuses the call) the thread
/// stays as it was: only speed depends on it.
pub fn hand_off_thread() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `pthread_self()` is the calling thread, alive during the
        // call, and `param` outlives the call, which only reads it.
        let error =
            unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_BATCH, &param) };
        if error == 0 {
            return true;
        }
        tracing::debug!(
            error = %std::io::Error::from_raw_os_error(error),
            "SCHED_BATCH refused; the thread keeps its policy"
        );
    }
    false
}

/// A new arbiter (a thread with its own event loop) named `name` and
/// marked as a hand-off thread, before any actor starts on it: the org
/// threads, and the durable floor's PersistenceActor in the benchmark.
pub fn hand_off_arbiter(name: String) -> actix::ArbiterHandle {
    let arbiter = actix::Arbiter::new().handle();
    arbiter.spawn_fn(move || {
        name_thread(&name);
        hand_off_thread();
    });
    arbiter
}

/// Names the calling thread as `/proc/<pid>/task/*/comm`, `top -H` and
/// the benchmark's CPU per thread show it (at most 15 bytes are kept).
/// actix calls every arbiter `actix-rt|system`: without a name of their
/// own, the org arbiters could not be told from the HTTP workers.
pub fn name_thread(name: &str) {
    #[cfg(not(target_os = "linux"))]
    let _ = name;
    #[cfg(target_os = "linux")]
    {
        // Cut at a character, so that the name stays UTF-8.
        let mut kept = String::new();
        for c in name.chars().filter(|c| *c != '\0') {
            if kept.len() + c.len_utf8() > 15 {
                break;
            }
            kept.push(c);
        }
        let name = std::ffi::CString::new(kept).expect("NUL characters were filtered out");
        // SAFETY: `pthread_self()` is the calling thread, alive during the
        // call, and `name` is a NUL-terminated string of at most 16 bytes
        // that outlives the call, which copies it.
        let error = unsafe { libc::pthread_setname_np(libc::pthread_self(), name.as_ptr()) };
        if error != 0 {
            tracing::debug!(
                error = %std::io::Error::from_raw_os_error(error),
                "the thread keeps its name"
            );
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn policy() -> i32 {
        let mut policy = 0;
        let mut param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `pthread_self()` is the calling thread; both out-pointers
        // are valid for the call.
        let error =
            unsafe { libc::pthread_getschedparam(libc::pthread_self(), &mut policy, &mut param) };
        assert_eq!(error, 0, "pthread_getschedparam");
        policy
    }

    #[test]
    fn only_the_calling_thread_takes_the_batch_policy() {
        let before = policy();
        assert_ne!(
            before,
            libc::SCHED_BATCH,
            "run the tests under the default policy"
        );
        let taken = std::thread::spawn(|| {
            let taken = hand_off_thread();
            if taken {
                assert_eq!(policy(), libc::SCHED_BATCH);
            }
            taken
        })
        .join()
        .unwrap();
        if !taken {
            eprintln!("the kernel refused SCHED_BATCH here; nothing more to check");
            return;
        }
        assert_eq!(policy(), before, "the thread that spawned it keeps its own");
    }

    /// The calling thread's name, as /proc shows it.
    fn own_name() -> String {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
            .expect("read the thread's comm")
            .trim_end()
            .to_owned()
    }

    /// The name a fresh thread ends up with after `name_thread(name)`.
    fn name_taken(name: &'static str) -> String {
        std::thread::spawn(move || {
            name_thread(name);
            own_name()
        })
        .join()
        .unwrap()
    }

    #[actix::test]
    async fn a_hand_off_arbiter_is_named_before_its_first_task() {
        let arbiter = hand_off_arbiter("probe-arbiter".into());
        let (tx, rx) = std::sync::mpsc::channel();
        arbiter.spawn_fn(move || tx.send(own_name()).unwrap());
        let name = rx.recv().expect("the arbiter ran the task");
        arbiter.stop();
        assert_eq!(name, "probe-arbiter");
    }

    #[test]
    fn a_thread_takes_its_name_cut_to_what_the_kernel_keeps() {
        assert_eq!(name_taken("org-arbiter-12345"), "org-arbiter-123");
        // Cut before a character that would not fit whole.
        assert_eq!(name_taken("org-arbiter-\u{e9}\u{e9}"), "org-arbiter-\u{e9}");
    }
}
