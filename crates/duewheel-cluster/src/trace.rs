//! The crate's `tracing` call sites, compiled out without feature `tracing`.
//!
//! Each macro takes `tracing`'s syntax (`name = value,` fields, then a
//! message) and forwards it when the feature is on. When it is off the
//! fields are only type-checked inside `if false`, so nothing runs and no
//! variable looks unused. Call sites are where an operator needs to look
//! (dispatcher batches and stalls, consumer backpressure, WAL commits,
//! checkpoints and recovery), never one per timer: a batch is at most
//! `batch_size` events, and a commit covers every record appended since the
//! last one.

#[cfg(feature = "tracing")]
macro_rules! trace {
    ($($arg:tt)*) => { ::tracing::trace!(target: "duewheel", $($arg)*) };
}
#[cfg(not(feature = "tracing"))]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::trace::off!($($arg)*) };
}

#[cfg(feature = "tracing")]
macro_rules! debug {
    ($($arg:tt)*) => { ::tracing::debug!(target: "duewheel", $($arg)*) };
}
#[cfg(not(feature = "tracing"))]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::trace::off!($($arg)*) };
}

#[cfg(feature = "tracing")]
macro_rules! info {
    ($($arg:tt)*) => { ::tracing::info!(target: "duewheel", $($arg)*) };
}
#[cfg(not(feature = "tracing"))]
macro_rules! info {
    ($($arg:tt)*) => { $crate::trace::off!($($arg)*) };
}

#[cfg(feature = "tracing")]
macro_rules! warning {
    ($($arg:tt)*) => { ::tracing::warn!(target: "duewheel", $($arg)*) };
}
#[cfg(not(feature = "tracing"))]
macro_rules! warning {
    ($($arg:tt)*) => { $crate::trace::off!($($arg)*) };
}

#[cfg(feature = "tracing")]
macro_rules! error {
    ($($arg:tt)*) => { ::tracing::error!(target: "duewheel", $($arg)*) };
}
#[cfg(not(feature = "tracing"))]
macro_rules! error {
    ($($arg:tt)*) => { $crate::trace::off!($($arg)*) };
}

/// Enters an `info`-level span for the rest of the enclosing scope.
#[cfg(feature = "tracing")]
macro_rules! span {
    ($($arg:tt)*) => {
        let _span = ::tracing::info_span!(target: "duewheel", $($arg)*).entered();
    };
}
#[cfg(not(feature = "tracing"))]
macro_rules! span {
    ($($arg:tt)*) => { $crate::trace::off!($($arg)*) };
}

/// The disabled form: type-checks the fields, runs nothing.
#[cfg(not(feature = "tracing"))]
macro_rules! off {
    ($($key:ident $(= $val:expr)?,)* $msg:literal) => {
        if false {
            $($crate::trace::off!(@use $key $(= $val)?);)*
        }
    };
    (@use $key:ident = $val:expr) => { let _ = &$val; };
    (@use $key:ident) => { let _ = &$key; };
}

#[cfg(not(feature = "tracing"))]
pub(crate) use off;
#[allow(unused_imports)]
pub(crate) use {debug, error, info, span, trace, warning};
