//! A fixed number of tasks working through numbered jobs, each task taking
//! the next job when done with its last: the concurrency of the load, the
//! checks and the baseline, without a task per job.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Runs `job(i)` for every `i` in `0..jobs` on `workers` tasks; an error if
/// a task panicked (the others still finish first).
pub async fn run_jobs<F, Fut>(
    workers: usize,
    jobs: usize,
    job: F,
) -> Result<(), tokio::task::JoinError>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (job, next) = (job.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= jobs {
                        break;
                    }
                    job(i).await;
                }
            })
        })
        .collect();
    let mut outcome = Ok(());
    for task in tasks {
        if let Err(e) = task.await {
            outcome = Err(e);
        }
    }
    outcome
}
