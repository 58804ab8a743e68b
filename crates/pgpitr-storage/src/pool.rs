//! Large buffers recycled instead of mapped afresh. With glibc's mmap
//! threshold low (the binary keeps its heap near the live buffers), every
//! buffer of megabytes is a new mapping whose pages fault in as they are
//! written; a writer that makes one per object pays that for every byte.

use bytes::Bytes;
use std::sync::{Arc, Mutex};

/// Recycles buffers of one size: handed out as `Vec<u8>` of exactly that
/// length, given back when the last view of the [`Bytes`] made from one
/// is dropped.
#[derive(Debug, Clone)]
pub struct BufPool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    free: Mutex<Vec<Vec<u8>>>,
    /// Length of every pooled buffer; larger requests are not pooled.
    buf_len: usize,
    max: usize,
}

/// Requests smaller than this come from the allocator: they are not mapped
/// afresh, so pooling them gains nothing and would pin memory.
pub const POOL_MIN: usize = 1 << 20;

impl BufPool {
    /// A pool keeping up to `max` idle buffers of `buf_len` bytes.
    pub fn new(max: usize, buf_len: usize) -> BufPool {
        BufPool { inner: Arc::new(PoolInner { free: Mutex::new(Vec::new()), buf_len, max }) }
    }

    /// The length of the pool's buffers.
    pub fn buf_len(&self) -> usize {
        self.inner.buf_len
    }

    /// Buffers held for reuse.
    pub fn idle(&self) -> usize {
        self.inner.free.lock().map_or(0, |f| f.len())
    }

    /// A buffer of the pool's length (at least `need`), or `None` when
    /// `need` is too small to be worth pooling or too large for the pool.
    pub fn take(&self, need: usize) -> Option<Vec<u8>> {
        if need < POOL_MIN || need > self.inner.buf_len {
            return None;
        }
        let reused = self.inner.free.lock().ok().and_then(|mut f| f.pop());
        // Zeroed allocations come from fresh mappings without a memset.
        Some(reused.unwrap_or_else(|| vec![0u8; self.inner.buf_len]))
    }

    /// The first `len` bytes of `buf` (from [`BufPool::take`]) as `Bytes`
    /// that give `buf` back to the pool once the last view is dropped.
    pub fn freeze(&self, buf: Vec<u8>, len: usize) -> Bytes {
        assert!(len <= buf.len(), "a pooled buffer holds {} bytes, not {len}", buf.len());
        Bytes::from_owner(Pooled { buf, len, pool: self.inner.clone() })
    }

    /// A buffer of at least `need` bytes (their content is unspecified:
    /// a recycled one holds an earlier object's): pooled when the pool
    /// serves that size.
    pub fn take_or_alloc(&self, need: usize) -> (Vec<u8>, bool) {
        match self.take(need) {
            Some(b) => (b, true),
            None => (vec![0u8; need], false),
        }
    }

    /// `buf`'s first `len` bytes as `Bytes`: back to the pool when `pooled`.
    pub fn finish(&self, mut buf: Vec<u8>, len: usize, pooled: bool) -> Bytes {
        if pooled {
            return self.freeze(buf, len);
        }
        buf.truncate(len);
        Bytes::from(buf)
    }
}

struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<PoolInner>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Ok(mut free) = self.pool.free.lock()
            && free.len() < self.pool.max
        {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_the_last_view_drops_and_the_pool_is_bounded() {
        let pool = BufPool::new(1, 2 << 20);
        assert!(pool.take(POOL_MIN - 1).is_none(), "small requests are not pooled");
        assert!(pool.take((2 << 20) + 1).is_none(), "nor ones larger than the pool's buffers");
        let (mut a, pooled) = pool.take_or_alloc(POOL_MIN);
        assert!(pooled);
        a[..3].copy_from_slice(b"abc");
        let ptr = a.as_ptr();
        let bytes = pool.finish(a, 3, true);
        let view = bytes.slice(1..);
        drop(bytes);
        assert_eq!(pool.idle(), 0, "a view still holds the buffer");
        assert_eq!(&view[..], b"bc");
        drop(view);
        assert_eq!(pool.idle(), 1);
        let again = pool.take(POOL_MIN).unwrap();
        assert_eq!(again.as_ptr(), ptr, "the same buffer is reused");
        let (b, _) = pool.take_or_alloc(POOL_MIN);
        drop(pool.freeze(again, 0));
        drop(pool.freeze(b, 0));
        assert_eq!(pool.idle(), 1, "at most `max` idle buffers are kept");
        let (c, pooled) = pool.take_or_alloc(10);
        assert!(!pooled);
        assert_eq!(&pool.finish(c, 4, false)[..], &[0, 0, 0, 0]);
    }
}
