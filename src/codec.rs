//! How ids and payloads are written to the durable log.
//!
//! A small trait instead of serde: the log needs only bytes in and bytes out,
//! and an id or payload that cannot be decoded must be a clear error at open,
//! never a panic. Implementations must round-trip: `decode(encode(x)) == x`.

use std::fmt;

/// Encodes a value to bytes and back, for the durable log.
///
/// Implemented for the integer types, `String`, `Vec<u8>` and `()`.
/// Implement it for your own id or payload type to use
/// [`Builder::durable`](crate::Builder::durable):
///
/// ```
/// use duewheel::{Codec, DecodeError};
///
/// #[derive(Debug, PartialEq)]
/// struct Order { sku: u32, qty: u32 }
///
/// impl Codec for Order {
///     fn encode(&self, out: &mut Vec<u8>) {
///         self.sku.encode(out);
///         self.qty.encode(out);
///     }
///     fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
///         let (sku, qty) = bytes.split_at_checked(4).ok_or(DecodeError::new("order: short"))?;
///         Ok(Order { sku: u32::decode(sku)?, qty: u32::decode(qty)? })
///     }
/// }
///
/// let mut bytes = Vec::new();
/// Order { sku: 7, qty: 2 }.encode(&mut bytes);
/// assert_eq!(Order::decode(&bytes)?, Order { sku: 7, qty: 2 });
/// # Ok::<(), DecodeError>(())
/// ```
pub trait Codec: Sized {
    /// Appends the value's bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Rebuilds a value from exactly the bytes `encode` wrote.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError>;
}

/// Bytes that do not decode to a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode: {0}")]
pub struct DecodeError(String);

impl DecodeError {
    /// An error with a message naming what was wrong.
    pub fn new(message: impl fmt::Display) -> Self {
        Self(message.to_string())
    }
}

macro_rules! int_codec {
    ($($t:ty),*) => {$(
        impl Codec for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
                bytes
                    .try_into()
                    .map(<$t>::from_le_bytes)
                    .map_err(|_| DecodeError::new(format_args!(
                        "{} needs {} bytes, got {}",
                        stringify!($t),
                        size_of::<$t>(),
                        bytes.len()
                    )))
            }
        }
    )*};
}

int_codec!(u8, u16, u32, u64, u128, i8, i16, i32, i64, i128);

impl Codec for String {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| DecodeError::new(format_args!("string: {e}")))
    }
}

impl Codec for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Ok(bytes.to_vec())
    }
}

impl Codec for () {
    fn encode(&self, _: &mut Vec<u8>) {}
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::new("() takes no bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Codec + PartialEq + fmt::Debug>(value: T) {
        let mut bytes = Vec::new();
        value.encode(&mut bytes);
        assert_eq!(T::decode(&bytes).unwrap(), value);
    }

    #[test]
    fn values_round_trip() {
        round_trip(0u64);
        round_trip(u64::MAX);
        round_trip(-5i32);
        round_trip(String::from("order-42 ✓"));
        round_trip(vec![0u8, 255, 7]);
        round_trip(());
    }

    #[test]
    fn wrong_lengths_and_bad_utf8_are_errors_not_panics() {
        assert!(u64::decode(&[1, 2, 3]).is_err());
        assert!(String::decode(&[0xff, 0xfe]).is_err());
        assert!(<()>::decode(&[1]).is_err());
    }
}
