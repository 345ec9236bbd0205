//! The command line (clap). Usage errors exit 2.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "ultracloud",
    version,
    about = "UltraCloud: a self-hosted cloud in one binary",
    propagate_version = true
)]
pub struct Cli {
    /// Output format for commands that print results.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole single-node cloud in this process.
    Up(UpArgs),
    /// Run one component (for multi-node deployments).
    Serve(ServeArgs),
    /// Print version information.
    Version,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Node config file (optional; every key has a default).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where state and generated secrets live [config: node.data_dir, default ./.ultracloud].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address every listener binds to [config: node.bind, default 127.0.0.1].
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The component to run.
    #[arg(value_enum)]
    pub component: Component,
    /// Node config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Components `serve` can run. Each later component adds itself here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Component {
    /// The node's own health, metrics and status server.
    Node,
}
