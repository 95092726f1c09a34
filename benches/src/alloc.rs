//! A global allocator wrapper that counts the bytes in use and their peak,
//! so a bench can tell live data from what the allocator keeps (RSS).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Counting<A> {
    inner: A,
    live: AtomicUsize,
    peak: AtomicUsize,
    /// Live bytes by size class: sizes in `[2^k, 2^(k+1))` count in `k`.
    by_class: [AtomicUsize; CLASSES],
    /// `by_class` when the peak was reached (approximately: copied as the
    /// peak grows, racing with other threads).
    at_peak: [AtomicUsize; CLASSES],
    /// The live bytes when `at_peak` was copied.
    copied_at: AtomicUsize,
}

const CLASSES: usize = 40;

impl<A> Counting<A> {
    pub const fn new(inner: A) -> Counting<A> {
        Counting {
            inner,
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            by_class: [const { AtomicUsize::new(0) }; CLASSES],
            at_peak: [const { AtomicUsize::new(0) }; CLASSES],
            copied_at: AtomicUsize::new(0),
        }
    }

    /// Bytes allocated and not yet freed.
    pub fn live_bytes(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// The most bytes in use at once since the last [`Counting::reset_peak`].
    pub fn peak_bytes(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn reset_peak(&self) {
        self.peak.store(self.live_bytes(), Ordering::Relaxed);
        self.copied_at.store(self.live_bytes(), Ordering::Relaxed);
    }

    /// Live bytes by allocation size class, largest share first:
    /// `(smallest size of the class, bytes)`, the classes over 1% only.
    pub fn live_by_size(&self) -> Vec<(usize, usize)> {
        Self::largest(&self.by_class, self.live_bytes())
    }

    /// [`Counting::live_by_size`] as it was at the peak.
    pub fn peak_by_size(&self) -> Vec<(usize, usize)> {
        Self::largest(&self.at_peak, self.peak_bytes())
    }

    fn largest(by_class: &[AtomicUsize; CLASSES], total: usize) -> Vec<(usize, usize)> {
        let total = total.max(1);
        let mut classes: Vec<(usize, usize)> = (0..CLASSES)
            .map(|k| (1usize << k, by_class[k].load(Ordering::Relaxed)))
            .filter(|(_, bytes)| *bytes * 100 >= total)
            .collect();
        classes.sort_by_key(|c| std::cmp::Reverse(c.1));
        classes
    }

    fn class(size: usize) -> usize {
        (usize::BITS - 1 - size.max(1).leading_zeros()).min(CLASSES as u32 - 1) as usize
    }

    fn grew(&self, by: usize) {
        self.by_class[Self::class(by)].fetch_add(by, Ordering::Relaxed);
        let live = self.live.fetch_add(by, Ordering::Relaxed) + by;
        self.peak.fetch_max(live, Ordering::Relaxed);
        // A new peak by 1 MB since the last copy: remember its make-up.
        let copied_at = self.copied_at.load(Ordering::Relaxed);
        if live > copied_at + (1 << 20)
            && self.copied_at.compare_exchange(copied_at, live, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            for (at, now) in self.at_peak.iter().zip(&self.by_class) {
                at.store(now.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    fn shrank(&self, by: usize) {
        self.live.fetch_sub(by, Ordering::Relaxed);
        self.by_class[Self::class(by)].fetch_sub(by, Ordering::Relaxed);
    }
}

/// `(size class, bytes)` pairs as `512+: 12.5 MB, 1024+: 7.2 MB, ...`.
pub fn by_size_text(classes: &[(usize, usize)]) -> String {
    let parts: Vec<String> =
        classes.iter().map(|(size, bytes)| format!("{size}+: {:.2} MB", *bytes as f64 / 1e6)).collect();
    parts.join(", ")
}

// SAFETY: every call is passed unchanged to `inner`, which upholds the
// `GlobalAlloc` contract; the counters only observe sizes.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout contract is forwarded as is.
        let p = unsafe { self.inner.alloc(layout) };
        if !p.is_null() {
            self.grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { self.inner.dealloc(ptr, layout) };
        self.shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`.
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            self.shrank(layout.size());
            self.grew(new_size);
        }
        p
    }
}
