//! `gantry-endpoint`: Gantry's multi-user endpoint and user endpoint. A thin CLI over
//! the `gantry_endpoint` library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Gantry's endpoint: a multi-user endpoint (MEP) that starts a user endpoint (UEP) per
/// user and configuration, as the mapped local account.
#[derive(Parser)]
#[command(name = "gantry-endpoint", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes ~/.gantry/NAME/ (config.yaml, template, schema, identity mapping,
    /// user_environment.yaml), readable by you only.
    Configure {
        /// The endpoint's name (letters, digits, '-', '_', '.').
        name: String,
        /// A multi-user endpoint (run it as root to serve several local accounts).
        #[arg(long)]
        multi_user: bool,
        /// The Gantry service (default http://localhost:5000).
        #[arg(long)]
        service_url: Option<String>,
    },
    /// Starts the endpoint; credentials from GANTRY_CLIENT_ID/GANTRY_CLIENT_SECRET,
    /// GLOBUS_COMPUTE_CLIENT_ID/_SECRET or ~/.gantry/NAME/credentials.json.
    Start {
        /// The endpoint's name.
        name: String,
        /// Run in the background, logging to ~/.gantry/NAME/endpoint.log.
        #[arg(long)]
        detach: bool,
    },
    /// Stops a running endpoint and every user endpoint it started.
    Stop {
        /// The endpoint's name.
        name: String,
    },
    /// Stops the endpoint and starts it again in the background.
    Restart {
        /// The endpoint's name.
        name: String,
    },
    /// Lists endpoints and, for running MEPs, their user endpoints.
    List,
    /// Stops the endpoint and removes its folder.
    Delete {
        /// The endpoint's name.
        name: String,
        /// Do not ask.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Renders the user endpoint template as the MEP would, and prints the result or
    /// the exact reason it would be refused.
    RenderUserConfig {
        /// The endpoint's name.
        name: String,
        /// The user's variables, as the SDK's user_endpoint_config (JSON object).
        #[arg(long)]
        user_config: String,
        /// A Globus-style username to map with the identity mapping (default: render
        /// for your own local account).
        #[arg(long)]
        identity: Option<String>,
        /// The submitter's runtime (JSON), as the SDK sends it.
        #[arg(long)]
        user_runtime: Option<String>,
    },
    /// (internal) The MEP's privileged spawn helper.
    #[command(name = "__spawn-uep", hide = true)]
    SpawnUep,
    /// (internal) A user endpoint, as the MEP's helper starts it.
    #[command(hide = true)]
    Uep {
        /// Room for the process title.
        #[arg(hide = true, trailing_var_arg = true, allow_hyphen_values = true)]
        room: Vec<String>,
    },
}

fn init_logs() {
    // The AMQP client logs a returned message with its whole body (a task's result) and
    // every frame at TRACE: it speaks only of errors, whatever GANTRY_LOG says.
    let mut filter =
        tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG").unwrap_or_else(|_| "info".into());
    for quiet in ["lapin=error", "amq_protocol=error"] {
        if let Ok(directive) = quiet.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::SpawnUep = cli.command {
        // A fresh, single-threaded, privileged process: no runtime, no logger threads.
        gantry_spawner::helper::run();
    }
    init_logs();
    let result = match cli.command {
        Command::Configure { name, multi_user, service_url } => {
            gantry_endpoint::commands::configure(&name, multi_user, service_url.as_deref()).map(|path| {
                println!("configured endpoint {name} in {}", path.display());
                if multi_user {
                    println!("edit identity_mapping.json and user_config_template.yaml.j2 there, then: gantry-endpoint start {name}");
                }
            })
        }
        Command::Start { name, detach } => gantry_endpoint::commands::start(&name, detach),
        Command::Stop { name } => gantry_endpoint::commands::stop(&name),
        Command::Restart { name } => gantry_endpoint::commands::stop(&name)
            .and_then(|()| gantry_endpoint::commands::start(&name, true)),
        Command::List => gantry_endpoint::commands::list().map(|text| print!("{text}")),
        Command::Delete { name, yes } => {
            if !yes {
                eprint!("delete endpoint {name} and its folder? [y/N] ");
                let mut answer = String::new();
                let _ = std::io::stdin().read_line(&mut answer);
                if !answer.trim().eq_ignore_ascii_case("y") {
                    return ExitCode::from(1);
                }
            }
            gantry_endpoint::commands::delete(&name)
        }
        Command::RenderUserConfig { name, user_config, identity, user_runtime } => {
            gantry_endpoint::commands::render_user_config(&name, &user_config, identity.as_deref(), user_runtime.as_deref())
                .map(|text| println!("{}", text.trim_end()))
        }
        Command::Uep { .. } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(gantry_endpoint::uep::main())),
        Command::SpawnUep => unreachable!("handled above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
