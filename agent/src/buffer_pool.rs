//! Reusable chunk buffers with a hard limit on how many are lent at once.

use std::sync::{Condvar, Mutex};

/// The chunk buffers of one disk's export: reused (a fresh 4 MiB buffer costs a thousand page
/// faults) and limited in number, so their memory is bounded whatever the disk size and however
/// far the hashing thread lags. A buffer goes back to the pool when its last holder (worker or
/// hashing thread) drops it, on success, error and unwinding alike.
pub struct BufferPool {
    state: Mutex<PoolState>,
    freed: Condvar,
    limit: usize,
}

struct PoolState {
    free: Vec<Vec<u8>>,
    outstanding: usize,
}

/// A buffer on loan from a [`BufferPool`].
pub struct PooledBuf<'a> {
    buf: Vec<u8>,
    pool: &'a BufferPool,
}

impl BufferPool {
    /// A pool lending at most `limit` buffers at once.
    pub fn new(limit: usize) -> Self {
        BufferPool { state: Mutex::new(PoolState { free: Vec::new(), outstanding: 0 }), freed: Condvar::new(), limit: limit.max(1) }
    }

    /// A buffer of `len` bytes; waits while `limit` buffers are out.
    pub fn take(&self, len: usize) -> PooledBuf<'_> {
        let mut state = self.state.lock().expect("buffer pool lock");
        let mut buf = loop {
            if let Some(b) = state.free.pop() {
                break b;
            }
            if state.outstanding < self.limit {
                break Vec::new();
            }
            state = self.freed.wait(state).expect("buffer pool lock");
        };
        state.outstanding += 1;
        drop(state);
        buf.resize(len, 0);
        PooledBuf { buf, pool: self }
    }
}

impl PooledBuf<'_> {
    /// The buffer's bytes, to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl std::ops::Deref for PooledBuf<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.outstanding -= 1;
        state.free.push(std::mem::take(&mut self.buf));
        self.pool.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_pool_lends_at_most_its_limit_and_reuses_buffers() {
        let pool = BufferPool::new(2);
        let a = pool.take(10);
        let b = pool.take(10);
        let ptr = a.buf.as_ptr();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pool.take(10).buf.as_ptr() as usize);
            std::thread::sleep(Duration::from_millis(50));
            assert!(!waiter.is_finished(), "a third buffer was lent beyond the limit");
            drop(a);
            assert_eq!(waiter.join().unwrap(), ptr as usize, "the returned buffer is reused");
        });
        drop(b);
        assert_eq!(pool.state.lock().unwrap().outstanding, 0);
    }
}
