//! The worker pool process, `gantry-pool`: one per block.
//!
//! A pool connects back to its UEP, proves it holds the UEP's secret (and checks that the
//! UEP holds it too), receives its configuration, starts its Python workers and then
//! relays tasks to them and results back. It exits when the UEP says so, when its
//! connection closes or falls silent, or on SIGTERM, stopping its workers first.
//!
//! All of it lives here, so the `gantry-pool` binary shipped with `gantry-endpoint` is
//! only `fn main() -> ExitCode { gantry_engine::pool_main(std::env::args_os()) }`.

mod connect;
mod run;
pub(crate) mod sizing;
pub(crate) mod workers;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use uuid::Uuid;

/// A pool's command line: where its UEP is and how to prove it belongs to it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolArgs {
    /// The UEP's pool listener, `host:port`.
    pub uep: String,
    /// The UEP's id, part of what is signed.
    pub uep_id: Uuid,
    /// This pool's block.
    pub block: u64,
    /// The file holding the UEP's secret (mode 0600).
    pub secret_file: PathBuf,
    /// A directory the pool may write to (it puts the worker script there).
    pub run_dir: PathBuf,
}

const USAGE: &str = "usage: gantry-pool --uep HOST:PORT --uep-id UUID --block N \
                     --secret-file PATH --run-dir DIR\n\
                     A Gantry worker pool; the UEP's engine starts it, people do not.";

impl PoolArgs {
    /// The arguments that [`PoolArgs::parse`] reads back, for the engine to launch a pool.
    pub fn to_args(&self) -> Vec<OsString> {
        vec![
            "--uep".into(),
            self.uep.clone().into(),
            "--uep-id".into(),
            self.uep_id.to_string().into(),
            "--block".into(),
            self.block.to_string().into(),
            "--secret-file".into(),
            self.secret_file.clone().into_os_string(),
            "--run-dir".into(),
            self.run_dir.clone().into_os_string(),
        ]
    }

    /// Reads the arguments after the program name.
    pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<PoolArgs, String> {
        let (mut uep, mut uep_id, mut block, mut secret_file, mut run_dir) =
            (None, None, None, None, None);
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let flag = flag.to_string_lossy().into_owned();
            if flag == "--help" || flag == "-h" {
                return Err(USAGE.to_owned());
            }
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
            let text = || {
                value
                    .to_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{flag} must be UTF-8"))
            };
            match flag.as_str() {
                "--uep" => uep = Some(text()?),
                "--uep-id" => {
                    uep_id = Some(
                        Uuid::parse_str(&text()?)
                            .map_err(|e| format!("--uep-id is not a UUID: {e}"))?,
                    )
                }
                "--block" => {
                    block = Some(
                        text()?
                            .parse()
                            .map_err(|e| format!("--block is not a number: {e}"))?,
                    )
                }
                "--secret-file" => secret_file = Some(PathBuf::from(value)),
                "--run-dir" => run_dir = Some(PathBuf::from(value)),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        let missing = |name: &str| format!("{name} is required\n{USAGE}");
        Ok(PoolArgs {
            uep: uep.ok_or_else(|| missing("--uep"))?,
            uep_id: uep_id.ok_or_else(|| missing("--uep-id"))?,
            block: block.ok_or_else(|| missing("--block"))?,
            secret_file: secret_file.ok_or_else(|| missing("--secret-file"))?,
            run_dir: run_dir.ok_or_else(|| missing("--run-dir"))?,
        })
    }
}

/// The whole `gantry-pool` program: `args` is the full command line, program name first.
/// Logs go to stderr, which the provider points at the block's log file.
pub fn pool_main<I: IntoIterator<Item = OsString>>(args: I) -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANTRY_POOL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let args = match PoolArgs::parse(args.into_iter().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    // One thread: workers get the parent-death signal, which the kernel ties to the
    // thread that forked them, so every spawn must happen on a thread that lives as
    // long as the pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the pool's runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(%message, "the worker pool stops");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let args = PoolArgs {
            uep: "127.0.0.1:4000".into(),
            uep_id: Uuid::new_v4(),
            block: 7,
            secret_file: "/home/a b/secret".into(),
            run_dir: "/home/a b/engine".into(),
        };
        assert_eq!(PoolArgs::parse(args.to_args()).unwrap(), args);
        let error = PoolArgs::parse(["--uep".into()]).unwrap_err();
        assert!(error.contains("needs a value"), "{error}");
        let error = PoolArgs::parse(["--bogus".into(), "1".into()]).unwrap_err();
        assert!(error.contains("unknown argument"), "{error}");
    }
}
