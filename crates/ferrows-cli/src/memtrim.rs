//! Giving freed heap back to the system after a burst of connections.
//!
//! glibc's malloc keeps memory that was freed in the middle of its heaps:
//! after 10 000 idle connections close, the server's RSS stayed at 78 % of
//! the peak (issue 9, defect 5), free heap that nothing else could use. A
//! thread of the servers looks at the heap every few seconds and, when much
//! of it is free, asks malloc to return the free pages (`malloc_trim`).
//! Measured against a global allocator (mimalloc) and doing nothing: see the
//! README. Elsewhere than glibc this is a no-op.
//!
//! `FERROWS_MALLOC_TRIM=0` turns it off.

use std::time::Duration;

/// How often the heap is looked at.
pub(crate) const INTERVAL: Duration = Duration::from_secs(2);

/// Trim only when at least this much of the heap is free.
const MIN_FREE: usize = 1 << 20;

/// After a trim, trim again once the heap has changed by this much.
const CHANGED: usize = 256 << 10;

/// The heap as malloc sees it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Heap {
    /// Handed out and not yet freed.
    pub(crate) in_use: usize,
    /// Free, but held by malloc.
    pub(crate) free: usize,
}

/// When to trim: the decision, apart from the system calls.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    /// The heap at the last trim, while it stays worth one.
    trimmed_at: Option<Heap>,
}

impl Policy {
    /// Whether to trim now. Worth it when at least 1 MiB is free and the
    /// free heap is at least half of what is in use (a burst that went
    /// away, not the churn of a steady load). Once trimmed, the next trim
    /// waits until the heap has changed by 256 KiB (the last connections
    /// of a storm are often freed after the first trim): an idle server is
    /// not trimmed over and over.
    pub(crate) fn due(&mut self, heap: Heap) -> bool {
        let worth = heap.free >= MIN_FREE && heap.free.saturating_mul(2) >= heap.in_use;
        if !worth {
            self.trimmed_at = None;
            return false;
        }
        if let Some(at) = self.trimmed_at {
            let changed = heap.free.abs_diff(at.free) >= CHANGED
                || heap.in_use.abs_diff(at.in_use) >= CHANGED;
            if !changed {
                return false;
            }
        }
        self.trimmed_at = Some(heap);
        true
    }
}

/// Starts the trimming thread, unless `FERROWS_MALLOC_TRIM` is `0`, `off`
/// or `false`, or the allocator is not glibc's.
pub(crate) fn start() {
    let off = std::env::var("FERROWS_MALLOC_TRIM")
        .is_ok_and(|v| matches!(v.trim(), "0" | "off" | "false"));
    if off || glibc::heap().is_none() {
        tracing::debug!("heap trimming off");
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("ferrows-trim".to_owned())
        .spawn(|| {
            let mut policy = Policy::default();
            loop {
                std::thread::sleep(INTERVAL);
                let Some(heap) = glibc::heap() else { return };
                if policy.due(heap) {
                    let released = glibc::trim();
                    tracing::debug!(
                        free_kib = heap.free >> 10,
                        in_use_kib = heap.in_use >> 10,
                        released,
                        "heap trimmed"
                    );
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the heap trimming thread");
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod glibc {
    use super::Heap;

    /// The heap of every malloc arena (`mallinfo2`, glibc 2.33+).
    pub(super) fn heap() -> Option<Heap> {
        // SAFETY: mallinfo2 takes no arguments, only reads malloc's own
        // state under its arena locks, and returns a plain struct by value.
        let info = unsafe { libc::mallinfo2() };
        Some(Heap {
            in_use: info.uordblks,
            free: info.fordblks,
        })
    }

    /// Returns the free pages of every arena to the system; whether any were.
    pub(super) fn trim() -> bool {
        // SAFETY: malloc_trim takes the arena locks itself and only releases
        // pages that hold no allocation; it is safe to call from any thread
        // at any time, and the argument is a plain size.
        unsafe { libc::malloc_trim(0) != 0 }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    use super::Heap;

    pub(super) fn heap() -> Option<Heap> {
        None
    }

    pub(super) fn trim() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn heap(in_use_mib: usize, free_kib: usize) -> Heap {
        Heap {
            in_use: in_use_mib * MIB,
            free: free_kib << 10,
        }
    }

    #[test]
    fn trims_after_a_burst_but_not_under_steady_load() {
        let mut p = Policy::default();
        // Loaded: 20 MiB in use, a little free.
        assert!(!p.due(heap(20, 512)));
        assert!(!p.due(heap(20, 4 * 1024)));
        // The burst is over: 6 MiB in use, 14 free.
        assert!(p.due(heap(6, 14 * 1024)));
        // Nothing much changed since: not again.
        assert!(!p.due(heap(6, 14 * 1024)));
        assert!(!p.due(heap(6, 14 * 1024 + 200)));
        // The last connections went: again.
        assert!(p.due(heap(5, 15 * 1024)));
        assert!(!p.due(heap(5, 15 * 1024)));
        // Busy again, then free again: again.
        assert!(!p.due(heap(30, 1024)));
        assert!(p.due(heap(6, 14 * 1024)));
    }

    #[test]
    fn small_heaps_are_left_alone() {
        let mut p = Policy::default();
        assert!(!p.due(heap(0, 1023)));
        assert!(p.due(heap(0, 1024)));
    }

    #[test]
    fn the_heap_of_this_process_is_readable() {
        let h = glibc::heap();
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            let h = h.unwrap_or(Heap { in_use: 0, free: 0 });
            assert!(h.in_use > 0, "{h:?}");
            glibc::trim();
        } else {
            assert_eq!(h, None);
        }
    }
}
