//! What a struct payload costs per log record through [`Serde`] (postcard)
//! against a hand-written [`Codec`], encode + decode, and how many bytes.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use duewheel::{Codec, DecodeError, Serde};
use serde::{Deserialize, Serialize};
use std::hint::black_box;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Order {
    order_id: u64,
    buyer: String,
    amount_minor: i64,
    currency: [u8; 3],
    sku: u32,
    qty: u16,
}

/// The same struct, coded by hand as a user would without the feature.
#[derive(Clone, Debug, PartialEq)]
struct Manual(Order);

impl Codec for Manual {
    fn encode(&self, out: &mut Vec<u8>) {
        let o = &self.0;
        out.extend_from_slice(&o.order_id.to_le_bytes());
        out.extend_from_slice(&o.amount_minor.to_le_bytes());
        out.extend_from_slice(&o.currency);
        out.extend_from_slice(&o.sku.to_le_bytes());
        out.extend_from_slice(&o.qty.to_le_bytes());
        out.extend_from_slice(o.buyer.as_bytes());
    }
    fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        let fixed = 8 + 8 + 3 + 4 + 2;
        if b.len() < fixed {
            return Err(DecodeError::new("order: short"));
        }
        Ok(Self(Order {
            order_id: u64::from_le_bytes(field(b, 0)),
            amount_minor: i64::from_le_bytes(field(b, 8)),
            currency: field(b, 16),
            sku: u32::from_le_bytes(field(b, 19)),
            qty: u16::from_le_bytes(field(b, 23)),
            buyer: String::decode(&b[fixed..])?,
        }))
    }
}

/// `N` bytes at `at`; the caller checked the length.
fn field<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N].try_into().expect("length checked")
}

fn orders() -> Vec<Order> {
    (0..10_000u64)
        .map(|i| Order {
            order_id: i * 7919 + 1_000_000,
            buyer: format!("buyer-{}", i % 5_000),
            amount_minor: (i % 100_000) as i64 * 99,
            currency: *b"EUR",
            sku: (i % 5000) as u32,
            qty: (i % 4 + 1) as u16,
        })
        .collect()
}

fn round_trip<C: Codec>(values: &[C], buf: &mut Vec<u8>) -> usize {
    let mut bytes = 0;
    for v in values {
        buf.clear();
        v.encode(buf);
        bytes += buf.len();
        black_box(C::decode(buf).expect("round-trips"));
    }
    bytes
}

fn codec(c: &mut Criterion) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let serde: Vec<Serde<Order>> = orders().into_iter().map(Serde).collect();
    let manual: Vec<Manual> = orders().into_iter().map(Manual).collect();
    let mut buf = Vec::with_capacity(256);
    let n = serde.len() as f64;
    println!(
        "bytes per record: serde (postcard) {:.1}, hand-written {:.1}; load {}",
        round_trip(&serde, &mut buf) as f64 / n,
        round_trip(&manual, &mut buf) as f64 / n,
        load.trim()
    );
    let mut group = c.benchmark_group("codec_order_encode_decode");
    group.throughput(Throughput::Elements(serde.len() as u64));
    group.bench_function("serde_postcard", |b| {
        b.iter(|| round_trip(&serde, &mut buf))
    });
    group.bench_function("hand_written", |b| b.iter(|| round_trip(&manual, &mut buf)));
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
