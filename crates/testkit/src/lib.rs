//! uc-testkit: real multi-process clusters for tests.
//!
//! [`Cluster`] starts N processes of the built `ultracloud` binary, each with its own generated
//! config, data directory, 127.0.0.x address and free ports; waits until each is ready; and lets
//! a test kill (-9), pause (SIGSTOP), resume and restart them with the same data directory.
//! Every process's output goes to a log file, printed when the test fails. Everything is
//! cleaned up when the [`Cluster`] drops, also when the test panics, and the kernel kills the
//! processes if the test process itself dies (`PR_SET_PDEATHSIG`).
//!
//! ```no_run
//! # async fn demo() {
//! use uc_testkit::{Cluster, Ready};
//! let mut cluster = Cluster::builder(3)
//!     .ports(&["http"])
//!     .config(|node, _all| format!("[node]\nname = \"{}\"\nbind = \"{}\"\n", node.name, node.ip))
//!     .args(|node| vec!["serve".into(), "node".into(), "--config".into(), node.config_path.display().to_string()])
//!     .ready(Ready::http("http", "/readyz"))
//!     .start()
//!     .await
//!     .unwrap();
//! cluster.node_mut(1).kill();
//! cluster.restart(1).await.unwrap();
//! # }
//! ```

#![allow(unsafe_code)] // pre_exec, to tie child lifetimes to the test process

pub mod linearizability;
pub mod pki;

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How long [`Cluster::start`] and [`Cluster::restart`] wait for readiness by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The built `ultracloud` binary: `$UC_BIN`, then `$CARGO_BIN_EXE_ultracloud` (set by nextest
/// at run time), then `target/<profile>/ultracloud` beside the running test executable.
pub fn ultracloud_binary() -> PathBuf {
    for var in [
        "UC_BIN",
        "CARGO_BIN_EXE_ultracloud",
        "NEXTEST_BIN_EXE_ultracloud",
    ] {
        if let Some(path) = std::env::var_os(var) {
            return PathBuf::from(path);
        }
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/ultracloud
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("ultracloud"));
    match candidate {
        Some(path) if path.exists() => path,
        _ => panic!(
            "cannot find the ultracloud binary next to {}; build it first \
             (`cargo build -p ultracloud`) or set UC_BIN",
            exe.display()
        ),
    }
}

/// A port no one listens on now, on `ip`, and that no other test process of this machine has
/// claimed: nextest runs every test in its own process, and many start clouds on the same
/// 127.0.0.x at once. Ports come from below the kernel's ephemeral range (so no outgoing
/// connection or `bind(0)` elsewhere takes them between our check and the server's bind),
/// and each is claimed with a lock file held until this process exits.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    const RANGE: std::ops::Range<u16> = 20000..32000;
    /// Ports claimed by this process, and their lock files (held open until exit).
    type Claims = (HashSet<(Ipv4Addr, u16)>, Vec<File>);
    static CLAIMED: OnceLock<Mutex<Claims>> = OnceLock::new();
    let claimed = CLAIMED.get_or_init(Default::default);
    let dir = std::env::temp_dir().join("uc-testkit-ports");
    fs::create_dir_all(&dir).expect("create the port claim directory");
    // Start at a random offset so concurrent processes rarely probe the same ports.
    let span = u32::from(RANGE.end - RANGE.start);
    let start = u32::from_str_radix(&random_token()[..8], 16).expect("hex") % span;
    let mut guard = claimed.lock().unwrap_or_else(|e| e.into_inner());
    for step in 0..span {
        let port = RANGE.start + ((start + step * 7) % span) as u16;
        if guard.0.contains(&(ip, port)) || TcpListener::bind((ip, port)).is_err() {
            continue;
        }
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{ip}-{port}")))
        else {
            continue;
        };
        if file.try_lock().is_ok() {
            guard.0.insert((ip, port));
            guard.1.push(file);
            return port;
        }
    }
    panic!("no free port left on {ip} in {RANGE:?}");
}

/// What a node looks like from the test: its address, ports and paths.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub index: usize,
    /// `node-<index>`
    pub name: String,
    /// `127.0.0.<10 + index>`
    pub ip: Ipv4Addr,
    /// Named ports chosen free on `ip`.
    pub ports: BTreeMap<String, u16>,
    /// The node's own directory (config, log); `data_dir` is inside it.
    pub dir: PathBuf,
    pub data_dir: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// A 0600 file holding the cluster's admin token.
    pub admin_token_file: PathBuf,
}

impl NodeInfo {
    pub fn port(&self, name: &str) -> u16 {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("node {} has no port named {name}", self.name))
    }

    pub fn addr(&self, port_name: &str) -> SocketAddr {
        SocketAddr::from((self.ip, self.port(port_name)))
    }

    /// `http://<ip>:<port>` for a named port.
    pub fn url(&self, port_name: &str) -> String {
        format!("http://{}", self.addr(port_name))
    }
}

/// When a process counts as ready.
#[derive(Debug, Clone)]
pub enum Ready {
    /// `GET path` on the named port answers 200.
    Http { port: String, path: String },
    /// The named port accepts TCP connections.
    Tcp { port: String },
    /// Ready as soon as it is spawned.
    Spawned,
}

impl Ready {
    pub fn http(port: &str, path: &str) -> Self {
        Self::Http {
            port: port.to_owned(),
            path: path.to_owned(),
        }
    }
}

type ConfigFn = Box<dyn FnMut(&NodeInfo, &[NodeInfo]) -> String>;
type ArgsFn = Box<dyn FnMut(&NodeInfo) -> Vec<String>>;

pub struct ClusterBuilder {
    nodes: usize,
    ports: Vec<String>,
    binary: Option<PathBuf>,
    config: ConfigFn,
    args: ArgsFn,
    env: Vec<(String, String)>,
    ready: Ready,
    ready_timeout: Duration,
    keep_on_failure: bool,
}

impl ClusterBuilder {
    /// Whether a failing test keeps the cluster's directory for inspection (default true).
    pub fn keep_on_failure(mut self, keep: bool) -> Self {
        self.keep_on_failure = keep;
        self
    }

    /// Names of the ports each node gets.
    pub fn ports(mut self, names: &[&str]) -> Self {
        self.ports = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The config file text for a node, given all nodes (to list peers).
    pub fn config(mut self, f: impl FnMut(&NodeInfo, &[NodeInfo]) -> String + 'static) -> Self {
        self.config = Box::new(f);
        self
    }

    /// The command-line arguments for a node.
    pub fn args(mut self, f: impl FnMut(&NodeInfo) -> Vec<String> + 'static) -> Self {
        self.args = Box::new(f);
        self
    }

    /// An environment variable for every node.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    pub fn ready(mut self, ready: Ready) -> Self {
        self.ready = ready;
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Writes every node's config and starts them all, then waits until all are ready.
    pub async fn start(self) -> io::Result<Cluster> {
        let mut cluster = self.prepare()?;
        for i in 0..cluster.nodes.len() {
            cluster.nodes[i].spawn(&cluster.binary, &cluster.env)?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    /// Writes configs and allocates everything, but starts nothing.
    pub fn prepare(mut self) -> io::Result<Cluster> {
        let root = tempfile::Builder::new().prefix("uc-testkit-").tempdir()?;
        let admin_token = random_token();
        let admin_token_file = root.path().join("admin-token");
        uc_runtime::secret::write_secret_file(&admin_token_file, admin_token.as_bytes())
            .map_err(io::Error::other)?;
        let infos: Vec<NodeInfo> = (0..self.nodes)
            .map(|index| {
                let ip = Ipv4Addr::new(127, 0, 0, 10 + index as u8);
                let dir = root.path().join(format!("node-{index}"));
                NodeInfo {
                    index,
                    name: format!("node-{index}"),
                    ip,
                    ports: self
                        .ports
                        .iter()
                        .map(|name| (name.clone(), free_port(ip)))
                        .collect(),
                    data_dir: dir.join("data"),
                    config_path: dir.join("config.toml"),
                    log_path: dir.join("output.log"),
                    admin_token_file: admin_token_file.clone(),
                    dir,
                }
            })
            .collect();
        let mut nodes = Vec::new();
        for info in &infos {
            fs::create_dir_all(&info.dir)?;
            fs::write(&info.config_path, (self.config)(info, &infos))?;
            nodes.push(Node {
                args: (self.args)(info),
                info: info.clone(),
                child: None,
                paused: false,
                starts: 0,
            });
        }
        Ok(Cluster {
            binary: self.binary.unwrap_or_else(ultracloud_binary),
            env: self.env,
            ready: self.ready,
            ready_timeout: self.ready_timeout,
            keep_on_failure: self.keep_on_failure,
            admin_token,
            nodes,
            root: Some(root),
        })
    }
}

/// One process of the cluster.
pub struct Node {
    pub info: NodeInfo,
    args: Vec<String>,
    child: Option<Child>,
    paused: bool,
    starts: u32,
}

impl Node {
    fn spawn(&mut self, binary: &Path, env: &[(String, String)]) -> io::Result<()> {
        assert!(
            self.child.is_none(),
            "{} is already running",
            self.info.name
        );
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.info.log_path)?;
        writeln!(
            log,
            "=== uc-testkit: start #{} of {}: {} {}",
            self.starts,
            self.info.name,
            binary.display(),
            self.args.join(" ")
        )?;
        let mut cmd = Command::new(binary);
        // Every UC_* variable is a config override; only the ones the test chose reach nodes.
        for (key, _) in std::env::vars_os() {
            if key
                .to_string_lossy()
                .starts_with(uc_runtime::config::ENV_PREFIX)
            {
                cmd.env_remove(key);
            }
        }
        cmd.args(&self.args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .current_dir(&self.info.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group, so cleanup also reaches anything the node starts.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)
            });
        }
        self.child = Some(cmd.spawn()?);
        self.paused = false;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive (not yet exited).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL the node's process group and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGTERM, then wait up to `timeout` for the exit; SIGKILL if it does not come.
    /// Returns the exit status if the process exited by itself.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = Pid::from_raw(child.id() as i32);
        if self.paused {
            let _ = kill(pid, Signal::SIGCONT);
        }
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// SIGSTOP: the process stays, frozen (a hung node, a long GC pause).
    pub fn pause(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGSTOP);
            self.paused = true;
        }
    }

    /// SIGCONT after [`Node::pause`].
    pub fn resume(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGCONT);
            self.paused = false;
        }
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.info.log_path) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

pub struct Cluster {
    binary: PathBuf,
    env: Vec<(String, String)>,
    ready: Ready,
    ready_timeout: Duration,
    keep_on_failure: bool,
    admin_token: String,
    nodes: Vec<Node>,
    root: Option<tempfile::TempDir>,
}

impl Cluster {
    /// One `ultracloud up` (every component in one process) with every component's ports
    /// free, ready when the node's `/readyz` is (all components ready). `extra` is appended
    /// to the generated config. Port names: node, client, peer, admin (chainfire), rest, pg,
    /// fpeer (flaredb), iam, coronafs, prismnet, plasmavmc, plasmavmc-worker. The plasmavmc
    /// worker uses TCG without probing KVM (a probe guest per start would slow every test),
    /// unless `extra` configures plasmavmc itself. prismnet's host agent is off unless `extra`
    /// has a `[prismnet_agent]` table.
    pub fn all_in_one(extra: &'static str) -> ClusterBuilder {
        Self::builder(1)
            .ports(&[
                "node", "client", "peer", "admin", "rest", "pg", "fpeer", "iam", "coronafs",
                "prismnet", "plasmavmc", "plasmavmc-worker",
            ])
            .config(move |n, _| {
                format!(
                    "[node]\nbind = \"{}\"\nport = {}\n[http]\nshutdown_grace_secs = 2\n\
                     [chainfire]\nclient_port = {}\npeer_port = {}\nadmin_port = {}\n\
                     [flaredb]\nrest_port = {}\npg_port = {}\npeer_port = {}\n\
                     [iam]\nport = {}\n[coronafs]\nport = {}\n[prismnet]\nport = {}\n{}{extra}",
                    n.ip,
                    n.port("node"),
                    n.port("client"),
                    n.port("peer"),
                    n.port("admin"),
                    n.port("rest"),
                    n.port("pg"),
                    n.port("fpeer"),
                    n.port("iam"),
                    n.port("coronafs"),
                    n.port("prismnet"),
                    // Unless the caller configures plasmavmc itself (a TOML table may appear
                    // only once).
                    if extra.contains("[plasmavmc") {
                        String::new()
                    } else {
                        format!(
                            "[plasmavmc]\nport = {}\n[plasmavmc_worker]\nport = {}\naccel = \"tcg\"\n",
                            n.port("plasmavmc"),
                            n.port("plasmavmc-worker")
                        )
                    } + if extra.contains("[prismnet_agent]") {
                        ""
                    } else {
                        // prismnet's host agent manages every prismnet-looking device of the
                        // root network namespace: one per test cloud would remove each
                        // other's (and the tests' own) bridges and taps.
                        "[prismnet_agent]\nenabled = false\n"
                    },
                )
            })
            .args(|n| {
                vec![
                    "up".into(),
                    "--config".into(),
                    n.config_path.display().to_string(),
                    "--data-dir".into(),
                    n.data_dir.display().to_string(),
                ]
            })
            .ready(Ready::http("node", "/readyz"))
    }

    pub fn builder(nodes: usize) -> ClusterBuilder {
        assert!((1..=200).contains(&nodes), "1..=200 nodes");
        ClusterBuilder {
            nodes,
            ports: vec!["http".to_owned()],
            binary: None,
            config: Box::new(|_, _| String::new()),
            args: Box::new(|_| Vec::new()),
            env: Vec::new(),
            ready: Ready::Spawned,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            keep_on_failure: true,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().map(|n| &n.info)
    }

    /// The admin token every node's `admin_token_file` holds.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn root(&self) -> &Path {
        self.root.as_ref().expect("root exists until drop").path()
    }

    /// Spawns a node that is not running without waiting for it to be ready (for members
    /// that only become ready together, like the founders of a Raft cluster).
    pub fn spawn_node(&mut self, i: usize) -> io::Result<()> {
        self.nodes[i].spawn(&self.binary, &self.env)
    }

    /// Starts a node that is not running (first start after [`ClusterBuilder::prepare`]).
    pub async fn start_node(&mut self, i: usize) -> io::Result<()> {
        self.nodes[i].spawn(&self.binary, &self.env)?;
        self.wait_ready(i).await
    }

    /// Kills node `i` if it runs, then starts it again with the same config and data directory
    /// and waits until it is ready.
    pub async fn restart(&mut self, i: usize) -> io::Result<()> {
        self.nodes[i].kill();
        self.start_node(i).await
    }

    /// Waits until node `i` is ready, or fails (with its log) if it exits or times out.
    pub async fn wait_ready(&mut self, i: usize) -> io::Result<()> {
        let deadline = Instant::now() + self.ready_timeout;
        let ready = self.ready.clone();
        loop {
            let node = &mut self.nodes[i];
            if !node.is_running() {
                return Err(io::Error::other(format!(
                    "{} exited before becoming ready; log:\n{}",
                    node.info.name,
                    tail(&node.log(), 60)
                )));
            }
            let ok = match &ready {
                Ready::Spawned => true,
                Ready::Tcp { port } => tokio::net::TcpStream::connect(node.info.addr(port))
                    .await
                    .is_ok(),
                Ready::Http { port, path } => {
                    http_status(node.info.addr(port), path).await == Some(200)
                }
            };
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} not ready after {:?}; log:\n{}",
                        node.info.name,
                        self.ready_timeout,
                        tail(&node.log(), 60)
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pids of processes still alive, for checks that nothing leaked.
    pub fn running_pids(&mut self) -> Vec<u32> {
        self.nodes
            .iter_mut()
            .filter_map(|n| if n.is_running() { n.pid() } else { None })
            .collect()
    }

    fn report_failure(&self) {
        let mut err = io::stderr().lock();
        for node in &self.nodes {
            let _ = writeln!(
                err,
                "\n----- uc-testkit: log of {} ({}) -----\n{}",
                node.info.name,
                node.info.log_path.display(),
                tail(&node.log(), 200)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        if std::thread::panicking() {
            self.report_failure();
            if let Some(root) = self.root.take().filter(|_| self.keep_on_failure) {
                let kept = root.keep();
                eprintln!("uc-testkit: kept {} for inspection", kept.display());
            }
        }
    }
}

/// One `GET` over a fresh connection; the status code, if an HTTP answer came.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let n = stream.read(&mut head).await.ok()?;
        let line = std::str::from_utf8(&head[..n]).ok()?;
        line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A plain HTTP(S) client for tests (no proxy, rustls provider installed).
pub fn http_client() -> reqwest::Client {
    uc_runtime::tls::ensure_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("build reqwest client")
}

/// Whether a process with this pid exists (zombies count as gone once reaped).
pub fn pid_alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}
