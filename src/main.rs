//! The `duewheel` command.

fn main() {
    println!(
        "duewheel: the `simulate` command arrives with the engine; see `cargo run --example demo`."
    );
}
