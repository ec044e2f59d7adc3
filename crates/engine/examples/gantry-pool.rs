//! The `gantry-pool` program, for this crate's tests: the shipped one lives with
//! `gantry-endpoint` and is these same lines.

fn main() -> std::process::ExitCode {
    gantry_engine::pool_main(std::env::args_os())
}
