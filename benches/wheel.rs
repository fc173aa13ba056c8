//! Placeholder; the criterion benches arrive in the next commit.
fn main() {}
