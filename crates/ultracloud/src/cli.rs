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
    /// chainfire (the etcd-compatible coordination store): members and backups.
    Chainfire(ChainfireArgs),
    /// flaredb (the replicated SQL/KV store): SQL, namespaces, backups.
    Flaredb(FlaredbArgs),
    /// Identities, roles, bindings, credentials, tokens and signing keys.
    Iam(IamArgs),
    /// Virtual machines (plasmavmc): create, start, stop, console, migrate.
    Vm(crate::plasmavmc_cli::VmArgs),
    /// VM images (plasmavmc).
    Image(crate::plasmavmc_cli::ImageArgs),
    /// VM workers (plasmavmc, operator).
    Worker(crate::plasmavmc_cli::WorkerArgs),
    /// End-to-end proof lanes that leave result.json in a dated directory.
    Proof(crate::proof::ProofArgs),
    /// Volumes (coronafs): create, snapshot, clone, resize, attach, detach, delete.
    Volume(crate::coronafs_cli::VolumeArgs),
    /// Tenant networks (prismnet): VPCs, subnets, ports, security groups, routers, floating IPs, pools.
    Net(crate::prismnet_cli::NetArgs),
}

#[derive(Debug, Args)]
pub struct FlaredbArgs {
    /// flaredb REST endpoint of any member.
    #[arg(long, default_value = "http://127.0.0.1:8082", global = true)]
    pub endpoint: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: FlaredbCommand,
}

#[derive(Debug, Subcommand)]
pub enum FlaredbCommand {
    /// Run SQL statements (one transaction) in a namespace.
    Sql {
        #[arg(long, short = 'n')]
        namespace: String,
        /// Statements, each one argument.
        #[arg(required = true)]
        statements: Vec<String>,
    },
    /// Namespaces.
    Namespace {
        #[command(subcommand)]
        command: NamespaceCommand,
    },
    /// Save a namespace's backup to FILE.
    Backup {
        #[arg(long, short = 'n')]
        namespace: String,
        file: PathBuf,
    },
    /// Replace a namespace's contents with a backup.
    Restore {
        #[arg(long, short = 'n')]
        namespace: String,
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Create a namespace; prints its credential once.
    Create {
        name: String,
        #[arg(long, value_enum, default_value_t = NamespaceMode::Strong)]
        mode: NamespaceMode,
    },
    List,
    /// Drop a namespace and all its data.
    Drop {
        name: String,
    },
    /// Add a flaredb member (by node name) to a namespace: it catches up, then votes.
    AddMember {
        namespace: String,
        member: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NamespaceMode {
    Strong,
    Eventual,
}

/// How client commands reach a running cloud.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// File holding the bearer token (the admin credential `up` wrote).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "./.ultracloud/secrets/admin-token",
        global = true
    )]
    pub token_file: PathBuf,
    /// Extra CA certificate (PEM) to trust for https endpoints.
    #[arg(long, value_name = "FILE", global = true)]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ChainfireArgs {
    #[command(subcommand)]
    pub command: ChainfireCommand,
}

#[derive(Debug, Subcommand)]
pub enum ChainfireCommand {
    /// Cluster members.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Backups: save from a running cluster, restore into a new one.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List the cluster's members.
    List {
        /// etcd v3 endpoint of any member.
        #[arg(long, default_value = "http://127.0.0.1:2379")]
        endpoint: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a consistent backup of the whole keyspace to FILE.
    Save {
        file: PathBuf,
        /// etcd v3 endpoint of any member.
        #[arg(long, default_value = "http://127.0.0.1:2379")]
        endpoint: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Prepare a member of a new cluster from a backup (offline; run once per member).
    Restore {
        file: PathBuf,
        /// The new member's node data directory (its `node.data_dir`); must not hold chainfire state.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// This member's name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The new cluster's members, `name=peer-url,…` (default: this member alone).
        #[arg(long, value_delimiter = ',')]
        initial_cluster: Vec<String>,
        /// This member's peer URL (default: its entry in --initial-cluster, or http://127.0.0.1:2380).
        #[arg(long)]
        peer_url: Option<String>,
    },
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
    /// The etcd-compatible coordination store.
    Chainfire,
    /// The replicated SQL/KV store (needs a reachable chainfire).
    Flaredb,
    /// Identities, tokens and authorization (needs a reachable flaredb and its namespace).
    Iam,
    /// The VM control plane (needs flaredb and its namespace; prismnet/coronafs for NICs/volumes).
    Plasmavmc,
    /// The VM worker agent (QEMU on this host; needs a reachable control plane).
    PlasmavmcWorker,
    /// Volumes: the controller and/or the node service, as `[coronafs]` enables.
    Coronafs,
    /// Tenant networks API (needs flaredb and its namespace).
    Prismnet,
    /// The host network agent: converges this host's dataplane to prismnet (needs root).
    PrismnetAgent,
}

#[derive(Debug, Args)]
pub struct IamArgs {
    /// iam's URL.
    #[arg(long, default_value = "http://127.0.0.1:8083", global = true)]
    pub endpoint: String,
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: IamCommand,
}

#[derive(Debug, Subcommand)]
pub enum IamCommand {
    /// Organizations (tenants); creating and deleting is for the operator.
    Org {
        #[command(subcommand)]
        command: ObjectCommand,
    },
    Project {
        #[arg(long, global = true)]
        org: Option<String>,
        #[command(subcommand)]
        command: ObjectCommand,
    },
    User {
        #[arg(long, global = true)]
        org: Option<String>,
        #[command(subcommand)]
        command: ObjectCommand,
    },
    /// Service accounts.
    Sa {
        #[arg(long, global = true)]
        org: Option<String>,
        #[command(subcommand)]
        command: ObjectCommand,
    },
    Group {
        #[arg(long, global = true)]
        org: Option<String>,
        #[command(subcommand)]
        command: ObjectCommand,
    },
    /// List roles, or create one with --name and --permission (repeatable).
    Role {
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long = "permission")]
        permissions: Vec<String>,
    },
    /// List bindings, or bind --principal to --role (optionally in --project).
    Binding {
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        project: Option<String>,
    },
    /// List API keys, create one for --principal (shown once), or --revoke ID.
    Credential {
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        revoke: Option<String>,
    },
    /// Get an access token.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Signing keys (operator).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ObjectCommand {
    Create {
        name: String,
        /// Users: a file holding the initial password.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    List,
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    Password {
        #[arg(long)]
        org: String,
        #[arg(long)]
        username: String,
        #[arg(long)]
        password_file: PathBuf,
        #[arg(long)]
        project: Option<String>,
    },
    ApiKey {
        #[arg(long)]
        api_key_file: PathBuf,
        #[arg(long)]
        project: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    List,
    /// A new active signing key; the current one keeps verifying until retired.
    Rotate,
    Retire {
        kid: String,
        #[arg(long)]
        force: bool,
    },
}
