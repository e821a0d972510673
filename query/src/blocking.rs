//! CPU-heavy work (rendering a large trace, evaluating TraceQL over many spans) kept from stalling the async
//! workers that serve every other request.

/// Spans from which work counts as heavy.
pub(crate) const HEAVY_SPANS: usize = 1000;

/// Runs `work`, over `spans` spans. When heavy and on a multi-threaded runtime, the worker first hands its other
/// tasks to another thread (`tokio::task::block_in_place`), so they keep being served; otherwise (light work,
/// or a current-thread runtime, where that is not possible) it runs inline.
pub(crate) fn cpu_heavy<T>(spans: usize, work: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if spans >= HEAVY_SPANS && multi_thread {
        tokio::task::block_in_place(work)
    } else {
        work()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// With one worker, heavy work that waits on another task can only finish if that task runs elsewhere.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn heavy_work_leaves_the_worker_to_other_tasks() {
        let outcome = tokio::spawn(async {
            let (sender, receiver) = mpsc::channel();
            tokio::spawn(async move { sender.send(42).expect("send") });
            cpu_heavy(HEAVY_SPANS, || receiver.recv_timeout(Duration::from_secs(10)))
        })
        .await
        .expect("task");
        assert_eq!(outcome, Ok(42));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_current_thread_runtime_heavy_work_runs_inline() {
        assert_eq!(cpu_heavy(HEAVY_SPANS * 10, || 7), 7);
        assert_eq!(cpu_heavy(1, || 8), 8);
    }
}
