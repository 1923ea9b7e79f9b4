//! Outbound calls on several threads at once (the worker's provider calls and
//! webhook deliveries). The closures must not touch PostgreSQL: they run on
//! threads PostgreSQL knows nothing of, with every signal blocked so that
//! its handlers keep running on the backend's own thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Every signal blocked on the current thread until dropped.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    fn new() -> Self {
        // SAFETY: plain libc calls on sigset_t values owned here.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            SignalsBlocked(old)
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved in new().
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// `call` for every item, `threads` at a time, results in the items' order.
/// A call that panics gives `on_panic(item)` instead: one panic must not
/// lose the others' results.
pub fn map<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    call: impl Fn(&T) -> R + Sync,
    on_panic: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.min(items.len()).max(1);
    if threads == 1 {
        return items.iter().map(&call).collect();
    }
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        // the threads are spawned with every signal blocked (they inherit
        // the mask), then this thread's mask is restored
        let blocked = SignalsBlocked::new();
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(item)))
                    .unwrap_or_else(|_| on_panic(item));
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
            });
        }
        drop(blocked);
    });
    results
        .into_iter()
        .zip(items)
        .map(|(r, item)| {
            r.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or_else(|| on_panic(item))
        })
        .collect()
}
