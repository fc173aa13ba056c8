//! The `duewheel` command. The `simulate` subcommand (a flash sale end to end)
//! is not built yet; until then `cargo run --release --example demo` shows the
//! wheel at work.

fn main() {
    eprintln!("duewheel: no subcommands yet; try `cargo run --release --example demo`");
    std::process::exit(2);
}
