//! `ultracloud`: the one binary. CLI parsing and wiring only; the work is in the component
//! crates and uc-runtime.

mod chainfire_cli;
mod cli;
mod coronafs_cli;
mod flaredb_cli;
mod iam_cli;
mod node;
mod node_config;
mod output;
mod plasmavmc_cli;
mod prismnet_cli;
mod proof;
mod secrets;
mod up;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// What went wrong, decided once, so the exit code is right everywhere.
#[derive(Debug)]
pub enum Failure {
    /// Bad usage or configuration: exit 2, nothing changed.
    Config(String),
    /// Failed while running: exit 1.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Runtime(e)
    }
}

impl From<uc_runtime::config::ConfigError> for Failure {
    fn from(e: uc_runtime::config::ConfigError) -> Self {
        Self::Config(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => output::print_version(cli.output),
        Command::Up(args) => run_async(up::up(args, cli.output)),
        Command::Serve(args) => run_async(up::serve(args)),
        Command::Chainfire(args) => run_async(chainfire_cli::run(args.command, cli.output)),
        Command::Flaredb(args) => run_async(flaredb_cli::run(args, cli.output)),
        Command::Iam(args) => run_async(iam_cli::run(args, cli.output)),
        Command::Vm(args) => run_async(plasmavmc_cli::run_vm(args, cli.output)),
        Command::Image(args) => run_async(plasmavmc_cli::run_image(args, cli.output)),
        Command::Worker(args) => run_async(plasmavmc_cli::run_worker(args, cli.output)),
        Command::Proof(args) => run_async(proof::run(args, cli.output)),
        Command::Volume(args) => run_async(coronafs_cli::run(args, cli.output)),
        Command::Net(args) => run_async(prismnet_cli::run(args, cli.output)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn run_async(fut: impl Future<Output = Result<(), Failure>>) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(e.into()))?;
    runtime.block_on(fut)
}
