//! SQLite's own page cache, less one scan of all of it at every commit.
//!
//! At the end of each transaction SQLite asks its page cache to drop the
//! pages past the end of the file. The default cache (pcache1) keeps the
//! largest page number it has seen and, when that is far past the end,
//! walks its whole hash table. When a b-tree page splits, SQLite swaps the
//! numbers of the new sibling pages through a temporary one, the locking
//! page (number 262,145 with 4 KiB pages), so after nearly every batch of
//! random index inserts that largest number is the locking page's, and the
//! commit walks thousands of cached pages to drop none: 2.5% of the
//! service's CPU under webhook load (perf, 2026-12-03).
//!
//! This wraps the default cache and passes every call through, except a
//! truncation that cannot drop a page: it keeps its own bound on the page
//! numbers in the cache, in which a page only passing through the locking
//! page's number does not count. Any doubt (a page still there, a page
//! fetched at that number) passes the call through, as without the wrapper.

use std::cell::Cell;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::{Once, OnceLock};

use rusqlite::ffi;

/// SQLite's `PENDING_BYTE`: the locking page holds the file's byte 2^30.
const PENDING_BYTE: u32 = 0x4000_0000;

/// The default cache's methods, read before ours replace them.
struct DefaultCache(ffi::sqlite3_pcache_methods2);

// SAFETY: the methods are plain function pointers and a `pArg` that SQLite's
// default cache does not use (null); SQLite calls them from any thread.
unsafe impl Send for DefaultCache {}
unsafe impl Sync for DefaultCache {}

static DEFAULT: OnceLock<DefaultCache> = OnceLock::new();

thread_local! {
    /// Truncations skipped on this thread's connections that would have
    /// walked the default cache's table: what the wrapper is for, counted
    /// so that a test sees it still happens. Per thread, so that a test
    /// counts its own connection's alone.
    static SCANS_SAVED: Cell<u64> = const { Cell::new(0) };
}

#[cfg(test)]
pub(super) fn scans_saved() -> u64 {
    SCANS_SAVED.get()
}

/// Puts the wrapper in place, once per process, before SQLite is first
/// used; every connection this store opens calls it first. Where SQLite
/// was already started (by other code in the process), the default cache
/// stays, which is correct, only slower.
pub(super) fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let mut default = std::mem::MaybeUninit::<ffi::sqlite3_pcache_methods2>::zeroed();
        // SAFETY: GETPCACHE2 writes the current methods into the struct it
        // is given. `sqlite3_config` must not run beside any other SQLite
        // call in the process: the `Once` holds back every opener of this
        // store (all go through `open`), and nothing else in the process
        // uses SQLite before this store does; if something had started
        // SQLite already, both calls answer SQLITE_MISUSE and change nothing.
        let read =
            unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, default.as_mut_ptr()) };
        if read != ffi::SQLITE_OK {
            tracing::debug!(
                code = read,
                "SQLite already started; its default page cache stays"
            );
            return;
        }
        // SAFETY: written by the successful call above.
        let default = unsafe { default.assume_init() };
        let m = &default;
        let complete = m.xCreate.is_some()
            && m.xCachesize.is_some()
            && m.xPagecount.is_some()
            && m.xFetch.is_some()
            && m.xUnpin.is_some()
            && m.xRekey.is_some()
            && m.xTruncate.is_some()
            && m.xDestroy.is_some()
            && m.xShrink.is_some();
        if !complete {
            tracing::debug!("SQLite's page cache lacks a method; it stays unwrapped");
            return;
        }
        let default = DEFAULT.get_or_init(|| DefaultCache(default));
        let ours = Box::leak(Box::new(ffi::sqlite3_pcache_methods2 {
            iVersion: default.0.iVersion,
            pArg: std::ptr::null_mut(),
            xInit: Some(init),
            xShutdown: Some(shutdown),
            xCreate: Some(create),
            xCachesize: Some(cache_size),
            xPagecount: Some(page_count),
            xFetch: Some(fetch),
            xUnpin: Some(unpin),
            xRekey: Some(rekey),
            xTruncate: Some(truncate),
            xDestroy: Some(destroy),
            xShrink: Some(shrink),
        }));
        // SAFETY: SQLite copies the struct; ours stays valid regardless.
        let set = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_PCACHE2, ours as *const _) };
        if set != ffi::SQLITE_OK {
            tracing::debug!(
                code = set,
                "SQLite already started; its default page cache stays"
            );
        }
    });
}

/// The bookkeeping the skip rests on, beside the default cache it wraps.
#[derive(Debug)]
struct Bound {
    /// The locking page's number at this cache's page size.
    locking_page: u32,
    /// No page in the cache has a larger number, but for those counted in
    /// `passing_through`.
    max_key: u32,
    /// Pages renumbered to the locking page and not yet renumbered away.
    passing_through: u32,
    /// The default cache's own bound (every number seen, the locking page's
    /// too): a truncation at or under it walks that cache.
    default_max_key: u32,
}

impl Bound {
    fn new(page_size: u32) -> Self {
        Self {
            locking_page: PENDING_BYTE / page_size.max(1) + 1,
            max_key: 0,
            passing_through: 0,
            default_max_key: 0,
        }
    }

    fn fetched(&mut self, key: u32) {
        self.max_key = self.max_key.max(key);
        self.default_max_key = self.default_max_key.max(key);
    }

    fn renumbered(&mut self, old: u32, new: u32) {
        if old == self.locking_page && self.passing_through > 0 {
            self.passing_through -= 1;
        }
        if new == self.locking_page {
            self.passing_through += 1;
        } else {
            self.max_key = self.max_key.max(new);
        }
        self.default_max_key = self.default_max_key.max(new);
    }

    /// Whether truncating at `limit` (dropping pages numbered `limit` and
    /// up) must reach the default cache; if so, the bound after it has.
    fn truncate(&mut self, limit: u32) -> bool {
        if self.passing_through == 0 && self.max_key < limit {
            if limit <= self.default_max_key {
                SCANS_SAVED.set(SCANS_SAVED.get() + 1);
            }
            return false;
        }
        self.max_key = self.max_key.min(limit.saturating_sub(1));
        self.default_max_key = self.default_max_key.min(limit.saturating_sub(1));
        if limit <= self.locking_page {
            self.passing_through = 0;
        }
        true
    }
}

/// What SQLite holds as a `sqlite3_pcache`: the default cache and our bound.
struct Cache {
    inner: *mut ffi::sqlite3_pcache,
    bound: Bound,
}

/// The default cache's methods; every one but `xInit` and `xShutdown` is
/// there, checked before the wrapper is installed.
fn methods() -> &'static ffi::sqlite3_pcache_methods2 {
    &DEFAULT
        .get()
        .expect("set before the wrapper is installed")
        .0
}

/// # Safety
/// `cache` is a pointer `create` returned and `destroy` has not freed;
/// SQLite calls one cache's methods from one thread at a time.
unsafe fn ours<'a>(cache: *mut ffi::sqlite3_pcache) -> &'a mut Cache {
    &mut *(cache as *mut Cache)
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    let m = methods();
    match m.xInit {
        Some(f) => f(m.pArg),
        None => ffi::SQLITE_OK,
    }
}

unsafe extern "C" fn shutdown(_: *mut c_void) {
    let m = methods();
    if let Some(f) = m.xShutdown {
        f(m.pArg)
    }
}

unsafe extern "C" fn create(
    page_size: c_int,
    extra: c_int,
    purgeable: c_int,
) -> *mut ffi::sqlite3_pcache {
    let inner = (methods().xCreate.expect("pcache1 has xCreate"))(page_size, extra, purgeable);
    if inner.is_null() {
        return inner;
    }
    let bound = Bound::new(page_size.max(1) as u32);
    Box::into_raw(Box::new(Cache { inner, bound })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn cache_size(cache: *mut ffi::sqlite3_pcache, pages: c_int) {
    (methods().xCachesize.expect("pcache1 has xCachesize"))(ours(cache).inner, pages)
}

unsafe extern "C" fn page_count(cache: *mut ffi::sqlite3_pcache) -> c_int {
    (methods().xPagecount.expect("pcache1 has xPagecount"))(ours(cache).inner)
}

unsafe extern "C" fn fetch(
    cache: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let cache = ours(cache);
    let page = (methods().xFetch.expect("pcache1 has xFetch"))(cache.inner, key, create);
    if !page.is_null() {
        cache.bound.fetched(key);
    }
    page
}

unsafe extern "C" fn unpin(
    cache: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    discard: c_int,
) {
    (methods().xUnpin.expect("pcache1 has xUnpin"))(ours(cache).inner, page, discard)
}

unsafe extern "C" fn rekey(
    cache: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    let cache = ours(cache);
    (methods().xRekey.expect("pcache1 has xRekey"))(cache.inner, page, old, new);
    cache.bound.renumbered(old, new);
}

unsafe extern "C" fn truncate(cache: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let cache = ours(cache);
    if cache.bound.truncate(limit) {
        (methods().xTruncate.expect("pcache1 has xTruncate"))(cache.inner, limit)
    }
}

unsafe extern "C" fn destroy(cache: *mut ffi::sqlite3_pcache) {
    let cache = Box::from_raw(cache as *mut Cache);
    (methods().xDestroy.expect("pcache1 has xDestroy"))(cache.inner)
}

unsafe extern "C" fn shrink(cache: *mut ffi::sqlite3_pcache) {
    (methods().xShrink.expect("pcache1 has xShrink"))(ours(cache).inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCKING_4K: u32 = 262_145;

    #[test]
    fn the_locking_page_is_the_one_holding_byte_2_to_the_30() {
        assert_eq!(Bound::new(4096).locking_page, LOCKING_4K);
        assert_eq!(Bound::new(1024).locking_page, 1_048_577);
    }

    #[test]
    fn a_truncation_past_every_page_is_skipped() {
        let mut bound = Bound::new(4096);
        bound.fetched(10);
        bound.fetched(7);
        assert!(!bound.truncate(11));
        assert!(bound.truncate(10), "page 10 is there to drop");
        assert!(!bound.truncate(10), "nothing past 9 is left");
    }

    #[test]
    fn a_page_passing_through_the_locking_number_does_not_count_once_gone() {
        let mut bound = Bound::new(4096);
        bound.fetched(40);
        bound.fetched(41);
        // balance_nonroot's swap of pages 40 and 41 through the locking page.
        bound.renumbered(40, LOCKING_4K);
        assert!(bound.truncate(42), "a page sits at the locking number");
        bound.fetched(40);
        bound.fetched(41);
        bound.renumbered(40, LOCKING_4K);
        bound.renumbered(41, 40);
        bound.renumbered(LOCKING_4K, 41);
        assert!(!bound.truncate(42));
        assert!(bound.truncate(41));
    }

    #[test]
    fn a_page_fetched_at_the_locking_number_counts_as_any_page() {
        let mut bound = Bound::new(4096);
        bound.fetched(LOCKING_4K);
        bound.renumbered(LOCKING_4K, 5);
        assert!(bound.truncate(6), "the bound stays conservative");
        assert!(!bound.truncate(6));
    }

    #[test]
    fn renumbering_up_raises_the_bound() {
        let mut bound = Bound::new(4096);
        bound.fetched(3);
        bound.renumbered(3, 90);
        assert!(bound.truncate(50));
        assert!(!bound.truncate(50));
    }
}
