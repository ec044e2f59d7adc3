//! `gantry-pool`: a worker pool that connects back to its user endpoint and runs its
//! Python workers. Started by the UEP's engine (locally, or inside a batch job); all of
//! its logic is in `gantry-engine`.

fn main() -> std::process::ExitCode {
    gantry_engine::pool_main(std::env::args_os())
}
