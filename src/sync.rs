//! The engine's locks: `std::sync` with the shape the engine uses (a lock
//! that cannot fail, a timed `try_lock_until`, condition variables that
//! wait on a `&mut` guard; a timed wait's caller re-checks its condition,
//! so it is not told whether the time ran out).
//!
//! Why not a lock crate: the core keeps its dependencies to what the
//! engine needs (issue #15: at most 12 crates with no features), and the
//! standard library's futex mutex is as fast uncontended. Poisoning is
//! ignored, as the lock crate used before this did: nothing in a critical
//! section panics on input, so a panic there is a bug, and refusing every
//! later caller would turn one bug into a stopped engine.

use std::ops::{Deref, DerefMut};
use std::sync::{self as std_sync, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// A mutual-exclusion lock whose `lock` cannot fail.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T: ?Sized>(std_sync::Mutex<T>);

/// Holds a [`Mutex`] until dropped.
pub(crate) struct MutexGuard<'a, T: ?Sized> {
    // `None` only while a condition variable waits with the lock released.
    inner: Option<std_sync::MutexGuard<'a, T>>,
}

impl<T> Mutex<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std_sync::Mutex::new(value))
    }
}

impl<T: ?Sized> Mutex<T> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        MutexGuard {
            inner: Some(self.0.lock().unwrap_or_else(PoisonError::into_inner)),
        }
    }

    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        match self.0.try_lock() {
            Ok(guard) => Some(MutexGuard { inner: Some(guard) }),
            Err(TryLockError::Poisoned(e)) => Some(MutexGuard {
                inner: Some(e.into_inner()),
            }),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Tries to take the lock until `deadline`. The standard library has
    /// no timed lock: spin briefly (the holders' critical sections are
    /// short), then back off in sleeps that grow to 100 µs.
    pub(crate) fn try_lock_until(&self, deadline: Instant) -> Option<MutexGuard<'_, T>> {
        let mut backoff = Duration::from_micros(1);
        for spin in 0u32.. {
            if let Some(guard) = self.try_lock() {
                return Some(guard);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            if spin < 64 {
                std::hint::spin_loop();
            } else if spin < 128 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(backoff.min(deadline - now));
                backoff = (backoff * 2).min(Duration::from_micros(100));
            }
        }
        None
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.inner.as_deref().expect("held outside a condvar wait")
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.inner
            .as_deref_mut()
            .expect("held outside a condvar wait")
    }
}

/// A reader-writer lock whose `read` and `write` cannot fail.
#[derive(Debug, Default)]
pub(crate) struct RwLock<T>(std_sync::RwLock<T>);

impl<T> RwLock<T> {
    pub(crate) const fn new(value: T) -> Self {
        Self(std_sync::RwLock::new(value))
    }

    pub(crate) fn read(&self) -> std_sync::RwLockReadGuard<'_, T> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> std_sync::RwLockWriteGuard<'_, T> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A condition variable that waits on a `&mut` [`MutexGuard`].
#[derive(Debug, Default)]
pub(crate) struct Condvar(std_sync::Condvar);

impl Condvar {
    pub(crate) const fn new() -> Self {
        Self(std_sync::Condvar::new())
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }

    pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
        let held = guard.inner.take().expect("a guard holds its lock");
        guard.inner = Some(self.0.wait(held).unwrap_or_else(PoisonError::into_inner));
    }

    pub(crate) fn wait_for<T>(&self, guard: &mut MutexGuard<'_, T>, timeout: Duration) {
        let held = guard.inner.take().expect("a guard holds its lock");
        let (held, _) = self
            .0
            .wait_timeout(held, timeout)
            .unwrap_or_else(PoisonError::into_inner);
        guard.inner = Some(held);
    }

    pub(crate) fn wait_until<T>(&self, guard: &mut MutexGuard<'_, T>, deadline: Instant) {
        let timeout = deadline.saturating_duration_since(Instant::now());
        if !timeout.is_zero() {
            self.wait_for(guard, timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_condvar_wait_releases_the_lock_and_takes_it_back() {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let other = pair.clone();
        let t = std::thread::spawn(move || {
            *other.0.lock() = true;
            other.1.notify_all();
        });
        let mut ready = pair.0.lock();
        while !*ready {
            pair.1.wait_for(&mut ready, Duration::from_secs(5));
        }
        drop(ready);
        t.join().unwrap();
    }

    #[test]
    fn try_lock_until_gives_up_at_its_deadline_and_a_panic_does_not_poison() {
        let m = Arc::new(Mutex::new(1));
        let held = m.lock();
        assert!(m.try_lock().is_none());
        let until = Instant::now() + Duration::from_millis(5);
        assert!(m.try_lock_until(until).is_none());
        assert!(Instant::now() >= until);
        drop(held);
        let other = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = other.lock();
            panic!("a holder panics");
        })
        .join();
        assert_eq!(*m.lock(), 1);
        assert!(m.try_lock_until(Instant::now()).is_some());
    }
}
