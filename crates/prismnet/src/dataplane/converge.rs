//! `Dataplane::converge`: read the live state, fix what differs from the plan, remove what the
//! plan no longer mentions. Cheap when nothing changed: one `ip -j -d addr show` of the host,
//! one `nft list`, one `bridge fdb` per VXLAN device, and the pid files. The inside of the DHCP,
//! router and workload namespaces is re-read ("deep" pass) when that object's part of the plan
//! changed (all of them when subnets or routers were removed), after `full_verify_every`, or
//! when something it lives on had to be recreated.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::dhcp::{self, DhcpConfig, DhcpFiles};
use super::names;
use super::nft::{self, NetRules, PortRules};
use super::plan::{ConvergeReport, HostPlan};
use super::resolve::{self, Dhcp, Net, Port, Resolved, Router, VXLAN_PORT};
use super::sys::{self, Link, Tools};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DataplaneError(pub String);

/// What was applied to an nftables table and what the kernel listed right after; the table
/// is re-applied only when either side changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NftApplied {
    rendered: String,
    live: String,
}

#[derive(Debug)]
struct LastPass {
    plan: HostPlan,
    deep_at: Instant,
    /// The pass reported no errors. After errors the next deep pass comes sooner (a failed
    /// step inside a namespace is only retried by a deep pass).
    clean: bool,
}

const RETRY_DEEP_AFTER: Duration = Duration::from_secs(1);

/// The dataplane of one host (the network namespace of the calling thread).
#[derive(Debug)]
pub struct Dataplane {
    pub tools: Tools,
    state_dir: PathBuf,
    /// How often an unchanged plan still gets a deep pass (inner namespaces re-read).
    pub full_verify_every: Duration,
    last: Option<LastPass>,
    nft_applied: BTreeMap<String, NftApplied>,
}

impl Dataplane {
    /// `state_dir` holds dnsmasq's files and the record of applied rulesets, under one
    /// directory per prefix. A relative path is made absolute here: dnsmasq changes to `/`
    /// when it daemonizes, so the paths in its config must not depend on our cwd.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        Self {
            tools: Tools::default(),
            state_dir: std::path::absolute(&state_dir).unwrap_or(state_dir),
            full_verify_every: Duration::from_secs(10),
            last: None,
            nft_applied: BTreeMap::new(),
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Makes the live dataplane match `plan`. Problems with single objects end up in
    /// `errors` (the rest is still applied); Err only when the live state cannot be read.
    pub fn converge(&mut self, plan: &HostPlan) -> Result<ConvergeReport, DataplaneError> {
        if !resolve::valid_prefix(&plan.prefix) {
            return Err(DataplaneError(format!(
                "prefix {:?} must be 1-16 of [a-z0-9-]",
                plan.prefix
            )));
        }
        let depth = match &self.last {
            Some(last) => {
                let since = last.deep_at.elapsed();
                if since >= self.full_verify_every || (!last.clean && since >= RETRY_DEEP_AFTER) {
                    Depth::All
                } else {
                    Depth::changed_between(&last.plan, plan)
                }
            }
            None => Depth::All,
        };
        let deep = matches!(depth, Depth::All);
        let prefix_dir = self.state_dir.join(&plan.prefix);
        fs::create_dir_all(&prefix_dir)
            .map_err(|e| DataplaneError(format!("creating {}: {e}", prefix_dir.display())))?;
        let mut pass = Pass {
            tools: &self.tools,
            prefix: &plan.prefix,
            prefix_dir: &prefix_dir,
            depth,
            links: BTreeMap::new(),
            netns: BTreeSet::new(),
            report: ConvergeReport::default(),
            nft_applied: &mut self.nft_applied,
        };
        pass.read_host().map_err(DataplaneError)?;
        let resolved = resolve::resolve(plan, &prefix_dir, &mut pass.report.errors);
        if !resolved.nets.is_empty() {
            pass.ensure_br_netfilter();
        }
        for net in &resolved.nets {
            pass.network(net);
        }
        for router in &resolved.routers {
            pass.router(router, plan.external_bridge.as_deref());
        }
        pass.host_nft(&resolved);
        pass.cleanup(&resolved, plan.external_bridge.as_deref());
        pass.ports_ready(&resolved);
        let report = pass.report;
        let deep_at = match (&self.last, deep) {
            (Some(last), false) => last.deep_at,
            _ => Instant::now(),
        };
        self.last = Some(LastPass {
            plan: plan.clone(),
            deep_at,
            clean: report.errors.is_empty(),
        });
        Ok(report)
    }

    /// Removes everything the agent with this prefix created (devices, namespaces, dnsmasq
    /// processes, nftables tables) and its state directory.
    pub fn teardown_all(&mut self, prefix: &str) -> Result<ConvergeReport, DataplaneError> {
        let mut report = self.converge(&HostPlan::empty("teardown", prefix))?;
        let prefix_dir = self.state_dir.join(prefix);
        for (pid, conf) in dhcp::pids_under(&prefix_dir) {
            dhcp::stop(pid, &conf);
            report.changed.push(format!("stop orphan dnsmasq {pid}"));
        }
        if prefix_dir.exists() {
            fs::remove_dir_all(&prefix_dir)
                .map_err(|e| DataplaneError(format!("removing {}: {e}", prefix_dir.display())))?;
        }
        self.last = None;
        self.nft_applied.clear();
        Ok(report)
    }
}

/// Which inner namespaces (DHCP, router, workload) a pass re-reads. Reading one costs a few
/// process spawns, so a plan change re-reads only the namespaces of what changed: with 100
/// ports on a host, adding the 101st must not re-read the other 100.
#[derive(Debug)]
enum Depth {
    /// First pass, the periodic full verification, or a retry after errors.
    All,
    /// The plan changed (or not) within the same subnets and routers: only these.
    Changed {
        /// Port ids whose plan is new or different.
        ports: BTreeSet<String>,
        /// Subnet ids whose DHCP plan is new or different.
        dhcp: BTreeSet<String>,
        /// Router ids whose plan is new or different.
        routers: BTreeSet<String>,
    },
}

impl Depth {
    fn changed_between(old: &HostPlan, new: &HostPlan) -> Self {
        if old == new {
            return Depth::Changed {
                ports: BTreeSet::new(),
                dhcp: BTreeSet::new(),
                routers: BTreeSet::new(),
            };
        }
        // Removed subnets or routers (and host-wide settings) go through cleanup's deep
        // scan, so anything but additions and edits within the same objects reads all.
        let ids = |p: &HostPlan| {
            (
                p.networks
                    .iter()
                    .map(|n| n.subnet_id.clone())
                    .collect::<BTreeSet<_>>(),
                p.routers
                    .iter()
                    .map(|r| r.router_id.clone())
                    .collect::<BTreeSet<_>>(),
            )
        };
        let (old_nets, old_routers) = ids(old);
        let (new_nets, new_routers) = ids(new);
        if !old_nets.is_subset(&new_nets)
            || !old_routers.is_subset(&new_routers)
            || old.prefix != new.prefix
            || old.underlay_ip != new.underlay_ip
            || old.external_bridge != new.external_bridge
        {
            return Depth::All;
        }
        // A port may be there twice: its binding and its migration binding.
        let old_ports: BTreeMap<(&str, bool), _> = old
            .networks
            .iter()
            .flat_map(|n| {
                n.ports
                    .iter()
                    .map(|p| ((p.port_id.as_str(), p.migration_target), p))
            })
            .collect();
        let old_dhcp: BTreeMap<&str, _> = old
            .networks
            .iter()
            .map(|n| (n.subnet_id.as_str(), &n.dhcp))
            .collect();
        let old_router: BTreeMap<&str, _> = old
            .routers
            .iter()
            .map(|r| (r.router_id.as_str(), r))
            .collect();
        Depth::Changed {
            ports: new
                .networks
                .iter()
                .flat_map(|n| n.ports.iter())
                .filter(|p| old_ports.get(&(p.port_id.as_str(), p.migration_target)) != Some(p))
                .map(|p| p.port_id.clone())
                .collect(),
            dhcp: new
                .networks
                .iter()
                .filter(|n| old_dhcp.get(n.subnet_id.as_str()) != Some(&&n.dhcp))
                .map(|n| n.subnet_id.clone())
                .collect(),
            routers: new
                .routers
                .iter()
                .filter(|r| old_router.get(r.router_id.as_str()) != Some(r))
                .map(|r| r.router_id.clone())
                .collect(),
        }
    }

    fn all(&self) -> bool {
        matches!(self, Depth::All)
    }

    fn port(&self, id: &str) -> bool {
        match self {
            Depth::All => true,
            Depth::Changed { ports, .. } => ports.contains(id),
        }
    }

    fn dhcp(&self, subnet_id: &str) -> bool {
        match self {
            Depth::All => true,
            Depth::Changed { dhcp, .. } => dhcp.contains(subnet_id),
        }
    }

    fn router(&self, id: &str) -> bool {
        match self {
            Depth::All => true,
            Depth::Changed { routers, .. } => routers.contains(id),
        }
    }
}

struct Pass<'a> {
    tools: &'a Tools,
    prefix: &'a str,
    prefix_dir: &'a Path,
    depth: Depth,
    links: BTreeMap<String, Link>,
    netns: BTreeSet<String>,
    report: ConvergeReport,
    nft_applied: &'a mut BTreeMap<String, NftApplied>,
}

impl Pass<'_> {
    fn changed(&mut self, what: String) {
        tracing::info!(change = %what, "dataplane");
        self.report.changed.push(what);
    }

    fn error(&mut self, what: String) {
        tracing::warn!(error = %what, "dataplane");
        self.report.errors.push(what);
    }

    fn ip(&self, args: &[&str]) -> Result<String, String> {
        sys::run(&self.tools.ip, args)
    }

    fn ip_in(&self, netns: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", netns];
        all.extend_from_slice(args);
        sys::run(&self.tools.ip, &all)
    }

    fn nft_in(&self, netns: Option<&str>, script: &str) -> Result<String, String> {
        match netns {
            None => sys::run_with_input(&self.tools.nft, &["-f", "-"], Some(script)),
            Some(ns) => sys::run_with_input(
                &self.tools.ip,
                &["netns", "exec", ns, &self.tools.nft, "-f", "-"],
                Some(script),
            ),
        }
    }

    fn nft_cli(&self, netns: Option<&str>, args: &[&str]) -> Result<String, String> {
        match netns {
            None => sys::run(&self.tools.nft, args),
            Some(ns) => {
                let mut all = vec!["netns", "exec", ns, self.tools.nft.as_str()];
                all.extend_from_slice(args);
                sys::run(&self.tools.ip, &all)
            }
        }
    }

    /// The live text of our tables, None if any is missing or nft fails.
    fn nft_list(&self, netns: Option<&str>, families: &[&str]) -> Option<String> {
        let ruleset = self.nft_cli(netns, &["list", "ruleset"]).ok()?;
        nft::extract_tables(&ruleset, families)
    }

    fn nft_list_tables(&self, netns: Option<&str>) -> Result<String, String> {
        self.nft_cli(netns, &["list", "tables"])
    }

    fn read_host(&mut self) -> Result<(), String> {
        self.links = sys::parse_links(&self.ip(&["-j", "-d", "addr", "show"])?)?;
        self.netns = match fs::read_dir("/run/netns") {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(format!("listing /run/netns: {e}")),
        };
        Ok(())
    }

    /// Bridged IPv4 must pass the ip hooks (for conntrack); each bridge turns that on for
    /// itself, but the br_netfilter module has to be there.
    fn ensure_br_netfilter(&mut self) {
        let knob = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
        if knob.exists() {
            return;
        }
        let _ = sys::run("modprobe", &["br_netfilter"]);
        if !knob.exists() {
            self.error(
                "br_netfilter is not available: security groups will drop established traffic"
                    .into(),
            );
        }
    }

    fn delete_link(&mut self, name: &str) {
        match self.ip(&["link", "del", "dev", name]) {
            Ok(_) => {
                self.links.remove(name);
                self.changed(format!("delete device {name}"));
            }
            Err(e) => self.error(e),
        }
    }

    /// Adds a device the caller just created to the in-memory view so later steps see it.
    fn created(&mut self, name: &str, kind: &str, mtu: u32) {
        self.links.insert(
            name.to_string(),
            Link {
                name: name.to_string(),
                kind: kind.to_string(),
                mtu,
                ..Link::default()
            },
        );
    }

    /// Enslaves, sizes and brings up a host-side device in one `ip link set`.
    fn ensure_slave(&mut self, dev: &str, master: &str, mtu: Option<u32>) -> bool {
        let Some(link) = self.links.get(dev) else {
            return false;
        };
        let mut args: Vec<String> = vec!["link".into(), "set".into(), "dev".into(), dev.into()];
        let mut what = Vec::new();
        if let Some(mtu) = mtu
            && link.mtu != mtu
        {
            args.extend(["mtu".into(), mtu.to_string()]);
            what.push(format!("mtu {mtu}"));
        }
        if link.master.as_deref() != Some(master) {
            args.extend(["master".into(), master.into()]);
            what.push(format!("master {master}"));
        }
        if !link.up {
            args.push("up".into());
            what.push("up".into());
        }
        if what.is_empty() {
            return true;
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        match self.ip(&argv) {
            Ok(_) => {
                if let Some(l) = self.links.get_mut(dev) {
                    l.master = Some(master.to_string());
                    l.up = true;
                    l.mtu = mtu.unwrap_or(l.mtu);
                }
                self.changed(format!("set {dev} {}", what.join(" ")));
                true
            }
            Err(e) => {
                self.error(e);
                false
            }
        }
    }

    fn ensure_netns(&mut self, name: &str) -> Result<bool, String> {
        if self.netns.contains(name) {
            return Ok(false);
        }
        self.ip(&["netns", "add", name])?;
        self.netns.insert(name.to_string());
        self.changed(format!("create netns {name}"));
        self.ip_in(name, &["link", "set", "lo", "up"])?;
        Ok(true)
    }

    /// A name in /run/netns that cannot be entered (e.g. left from a mount namespace that is
    /// gone) is removed, so the next pass creates the namespace afresh.
    fn drop_unusable_netns(&mut self, name: &str, error: String) {
        // Only iproute2's "cannot enter" failure; any other error leaves the namespace alone.
        let unusable = error.contains("setting the network namespace");
        self.error(error);
        if unusable && self.ip(&["netns", "del", name]).is_ok() {
            self.netns.remove(name);
            self.changed(format!("delete unusable netns {name}"));
        }
    }

    fn network(&mut self, net: &Net) {
        if !self.ensure_bridge(net) {
            return;
        }
        if let Some((vx, local)) = &net.vxlan {
            self.ensure_vxlan(net, vx, *local);
        }
        if let Some(dhcp) = &net.dhcp {
            self.ensure_dhcp(net, dhcp);
        }
        for port in &net.ports {
            self.ensure_port(net, port);
        }
    }

    fn ensure_bridge(&mut self, net: &Net) -> bool {
        let name = &net.bridge;
        let mtu = net.mtu.to_string();
        match self.links.get(name).cloned() {
            Some(l) if l.kind == "bridge" => {
                let mut args = vec!["link", "set", "dev", name];
                let mut what = Vec::new();
                if l.mtu != net.mtu {
                    args.extend(["mtu", &mtu]);
                    what.push(format!("mtu {mtu}"));
                }
                if !l.up {
                    args.push("up");
                    what.push("up".to_string());
                }
                if l.nf_call_iptables != Some(true) {
                    args.extend(["type", "bridge", "nf_call_iptables", "1"]);
                    what.push("nf_call_iptables 1".to_string());
                }
                if !what.is_empty() {
                    match self.ip(&args) {
                        Ok(_) => self.changed(format!("set bridge {name} {}", what.join(" "))),
                        Err(e) => {
                            self.error(e);
                            return false;
                        }
                    }
                }
                true
            }
            other => {
                if other.is_some() {
                    self.delete_link(name);
                }
                let created = self
                    .ip(&[
                        "link",
                        "add",
                        name,
                        "mtu",
                        &mtu,
                        "type",
                        "bridge",
                        "nf_call_iptables",
                        "1",
                    ])
                    .and_then(|_| self.ip(&["link", "set", "dev", name, "up"]));
                match created {
                    Ok(_) => {
                        self.created(name, "bridge", net.mtu);
                        self.changed(format!("create bridge {name} for subnet {}", net.subnet_id));
                        true
                    }
                    Err(e) => {
                        self.error(e);
                        false
                    }
                }
            }
        }
    }

    fn ensure_vxlan(&mut self, net: &Net, dev: &str, local: Ipv4Addr) {
        let want = sys::VxlanInfo {
            id: net.vni,
            local: Some(local),
            port: VXLAN_PORT,
            learning: false,
        };
        let existing = self.links.get(dev).cloned();
        if existing.as_ref().and_then(|l| l.vxlan.as_ref()) != Some(&want) {
            if existing.is_some() {
                self.delete_link(dev);
            }
            let (vni, mtu, local, port) = (
                net.vni.to_string(),
                net.mtu.to_string(),
                local.to_string(),
                VXLAN_PORT.to_string(),
            );
            match self.ip(&[
                "link",
                "add",
                dev,
                "mtu",
                &mtu,
                "type",
                "vxlan",
                "id",
                &vni,
                "local",
                &local,
                "dstport",
                &port,
                "nolearning",
            ]) {
                Ok(_) => {
                    self.created(dev, "vxlan", net.mtu);
                    self.changed(format!("create vxlan {dev} vni {vni}"));
                }
                Err(e) => return self.error(e),
            }
        }
        self.ensure_slave(dev, &net.bridge, Some(net.mtu));

        let live = match sys::run(&self.tools.bridge, &["-j", "fdb", "show", "dev", dev])
            .and_then(|out| sys::parse_vxlan_fdb(&out))
        {
            Ok(live) => live,
            Err(e) => return self.error(e),
        };
        let zero = "00:00:00:00:00:00".to_string();
        let mut want: Vec<(String, Ipv4Addr)> = net
            .remote_vteps
            .iter()
            .map(|v| (zero.clone(), *v))
            .collect();
        want.extend(net.remote_macs.iter().cloned());
        for (mac, vtep) in live.iter().filter(|e| !want.contains(e)) {
            let vtep = vtep.to_string();
            match sys::run(
                &self.tools.bridge,
                &["fdb", "del", mac, "dev", dev, "dst", &vtep],
            ) {
                Ok(_) => self.changed(format!("remove fdb {mac} -> {vtep} on {dev}")),
                Err(e) => self.error(e),
            }
        }
        for (mac, vtep) in want.iter().filter(|e| !live.contains(e)) {
            let verb = if *mac == zero { "append" } else { "replace" };
            let vtep = vtep.to_string();
            match sys::run(
                &self.tools.bridge,
                &["fdb", verb, mac, "dev", dev, "dst", &vtep],
            ) {
                Ok(_) => self.changed(format!("add fdb {mac} -> {vtep} on {dev}")),
                Err(e) => self.error(e),
            }
        }
    }

    fn read_netns_links(
        &self,
        netns: &str,
        dev: Option<&str>,
    ) -> Result<BTreeMap<String, Link>, String> {
        let mut args = vec!["-j", "-d", "addr", "show"];
        if let Some(dev) = dev {
            args.extend(["dev", dev]);
        }
        sys::parse_links(&self.ip_in(netns, &args)?)
    }

    /// Fixes MAC, MTU, addresses (when given) and up-state of a device inside a namespace.
    fn fix_inner(
        &mut self,
        netns: &str,
        live: &Link,
        mac: Option<&str>,
        addrs: Option<&[(Ipv4Addr, u8)]>,
        mtu: Option<u32>,
    ) {
        let name = live.name.as_str();
        let mut steps: Vec<Vec<String>> = Vec::new();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
        if let Some(mac) = mac
            && live.mac != mac
        {
            steps.push(s(&["link", "set", "dev", name, "address", mac]));
        }
        if let Some(mtu) = mtu
            && live.mtu != mtu
        {
            steps.push(s(&["link", "set", "dev", name, "mtu", &mtu.to_string()]));
        }
        if let Some(addrs) = addrs {
            for (ip, len) in addrs.iter().filter(|a| !live.addrs.contains(a)) {
                steps.push(s(&["addr", "add", &format!("{ip}/{len}"), "dev", name]));
            }
            for (ip, len) in live.addrs.iter().filter(|a| !addrs.contains(a)) {
                steps.push(s(&["addr", "del", &format!("{ip}/{len}"), "dev", name]));
            }
        }
        if !live.up {
            steps.push(s(&["link", "set", "dev", name, "up"]));
        }
        for step in steps {
            let argv: Vec<&str> = step.iter().map(String::as_str).collect();
            match self.ip_in(netns, &argv) {
                Ok(_) => self.changed(format!("in {netns}: {}", step.join(" "))),
                Err(e) => self.error(e),
            }
        }
    }

    /// A veth whose host end `leg` joins `master` and whose other end `inner` lives in
    /// `netns` with the given MAC/addresses. Returns whether it was (re)created.
    #[allow(clippy::too_many_arguments)]
    fn ensure_leg(
        &mut self,
        netns: &str,
        netns_fresh: bool,
        inner_links: Option<&BTreeMap<String, Link>>,
        leg: &str,
        inner: &str,
        mac: Option<&str>,
        addrs: &[(Ipv4Addr, u8)],
        mtu: Option<u32>,
        master: &str,
    ) -> bool {
        let exists = self.links.get(leg).is_some_and(|l| l.kind == "veth");
        // A fresh namespace means the old peer (if any) went away with the old namespace.
        let mut create = !exists || netns_fresh;
        if !create && let Some(inner_links) = inner_links {
            match inner_links.get(inner) {
                Some(live) => {
                    let live = live.clone();
                    self.fix_inner(netns, &live, mac, Some(addrs), mtu);
                }
                None => create = true,
            }
        }
        if create {
            if self.links.contains_key(leg) {
                self.delete_link(leg);
            }
            let mtu_s = mtu.map(|m| m.to_string());
            let mut args = vec!["link", "add", leg];
            if let Some(m) = &mtu_s {
                args.extend(["mtu", m]);
            }
            args.extend(["type", "veth", "peer", "name", inner]);
            if let Some(m) = &mtu_s {
                args.extend(["mtu", m]);
            }
            if let Some(mac) = mac {
                args.extend(["address", mac]);
            }
            args.extend(["netns", netns]);
            let mut result = self.ip(&args);
            for (ip, len) in addrs {
                if result.is_ok() {
                    result = self.ip_in(
                        netns,
                        &["addr", "add", &format!("{ip}/{len}"), "dev", inner],
                    );
                }
            }
            if result.is_ok() {
                result = self.ip_in(netns, &["link", "set", "dev", inner, "up"]);
            }
            match result {
                Ok(_) => {
                    self.created(leg, "veth", mtu.unwrap_or(1500));
                    self.changed(format!("create veth {leg} <-> {netns}/{inner}"));
                }
                Err(e) => {
                    self.error(e);
                    return false;
                }
            }
        }
        self.ensure_slave(leg, master, mtu);
        create
    }

    fn ensure_dhcp(&mut self, net: &Net, d: &Dhcp) {
        let fresh = match self.ensure_netns(&d.netns) {
            Ok(fresh) => fresh,
            Err(e) => return self.error(e),
        };
        let inner = if self.depth.dhcp(&net.subnet_id) && !fresh {
            match self.read_netns_links(&d.netns, None) {
                Ok(links) => Some(links),
                Err(e) => return self.drop_unusable_netns(&d.netns, e),
            }
        } else {
            None
        };
        let addrs = [(d.server_ip, net.cidr.1)];
        let recreated = self.ensure_leg(
            &d.netns,
            fresh,
            inner.as_ref(),
            &d.leg,
            names::DHCP_IFNAME,
            Some(&d.server_mac),
            &addrs,
            Some(net.mtu),
            &net.bridge,
        );
        self.ensure_dnsmasq(net, d, recreated);
    }

    fn ensure_dnsmasq(&mut self, net: &Net, d: &Dhcp, force_restart: bool) {
        let files = &d.files;
        if let Err(e) = fs::create_dir_all(&files.dir) {
            return self.error(format!("creating {}: {e}", files.dir.display()));
        }
        let conf = dhcp::render_conf(
            files,
            &DhcpConfig {
                cidr: net.cidr,
                router: d.router,
                dns_servers: &d.dns_servers,
                lease_secs: d.lease_secs,
                mtu: net.mtu,
            },
        );
        let hosts = dhcp::render_hosts(&d.hosts);
        let pid = dhcp::running_pid(files);
        let live_conf = fs::read_to_string(files.conf()).ok();
        if force_restart || pid.is_none() || live_conf.as_deref() != Some(conf.as_str()) {
            if let Some(pid) = pid {
                dhcp::stop(pid, &files.conf());
            }
            let started = dhcp::write_atomic(&files.hosts(), &hosts)
                .and_then(|_| dhcp::write_atomic(&files.conf(), &conf))
                .and_then(|_| dhcp::start(&self.tools.ip, &self.tools.dnsmasq, &d.netns, files));
            match started {
                Ok(()) => self.changed(format!("start dnsmasq in {}", d.netns)),
                Err(e) => self.error(e),
            }
        } else if fs::read_to_string(files.hosts()).ok().as_deref() != Some(hosts.as_str()) {
            let reloaded = dhcp::write_atomic(&files.hosts(), &hosts)
                .and_then(|_| dhcp::reload(pid.expect("checked above")));
            match reloaded {
                Ok(()) => self.changed(format!("reload dnsmasq static leases in {}", d.netns)),
                Err(e) => self.error(e),
            }
        }
    }

    fn ensure_port(&mut self, net: &Net, port: &Port) {
        let dev = port.dev.as_str();
        let existing = self.links.get(dev).cloned();
        match &port.netns {
            None => {
                let ok = existing
                    .as_ref()
                    .is_some_and(|l| l.kind == "tun" && l.tun_type.as_deref() == Some("tap"));
                if !ok {
                    if existing.is_some() {
                        self.delete_link(dev);
                    }
                    match self.ip(&["tuntap", "add", "dev", dev, "mode", "tap"]) {
                        Ok(_) => {
                            self.created(dev, "tun", 0);
                            self.changed(format!("create tap {dev} for port {}", port.port_id));
                        }
                        Err(e) => return self.error(e),
                    }
                }
            }
            Some((workload, ifname)) => {
                if !self.netns.contains(workload) {
                    return self.error(format!(
                        "port {}: workload netns {workload} does not exist",
                        port.port_id
                    ));
                }
                let mut create = existing.as_ref().is_none_or(|l| l.kind != "veth");
                if !create && self.depth.port(&port.port_id) {
                    match self.read_netns_links(workload, Some(ifname)) {
                        Ok(links) if links.contains_key(ifname) => {
                            let live = links[ifname].clone();
                            self.fix_inner(workload, &live, Some(&port.mac), None, Some(net.mtu));
                        }
                        Ok(_) => create = true,
                        // Only a missing peer justifies recreating a working port.
                        Err(e) if e.contains("does not exist") => create = true,
                        Err(e) => self.error(e),
                    }
                }
                if create {
                    if existing.is_some() {
                        self.delete_link(dev);
                    }
                    let mtu = net.mtu.to_string();
                    let result = self
                        .ip(&[
                            "link", "add", dev, "mtu", &mtu, "type", "veth", "peer", "name",
                            ifname, "mtu", &mtu, "address", &port.mac, "netns", workload,
                        ])
                        .and_then(|_| self.ip_in(workload, &["link", "set", "dev", ifname, "up"]))
                        .and_then(|_| self.ip_in(workload, &["link", "set", "dev", "lo", "up"]));
                    match result {
                        Ok(_) => {
                            self.created(dev, "veth", net.mtu);
                            self.changed(format!(
                                "create veth {dev} <-> {workload}/{ifname} for port {}",
                                port.port_id
                            ));
                        }
                        Err(e) => return self.error(e),
                    }
                }
            }
        }
        self.ensure_slave(dev, &net.bridge, Some(net.mtu));
    }

    fn router(&mut self, r: &Router, external_bridge: Option<&str>) {
        let ns = r.netns.as_str();
        let fresh = match self.ensure_netns(ns) {
            Ok(fresh) => fresh,
            Err(e) => return self.error(e),
        };
        let deep = self.depth.router(&r.router_id);
        if fresh || deep {
            let forwarding = sys::run(
                &self.tools.ip,
                &["netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"],
            );
            if forwarding.as_deref().map(str::trim) != Ok("1") {
                match sys::run(
                    &self.tools.ip,
                    &[
                        "netns",
                        "exec",
                        ns,
                        "sh",
                        "-c",
                        "echo 1 > /proc/sys/net/ipv4/ip_forward",
                    ],
                ) {
                    Ok(_) => self.changed(format!("enable ip_forward in {ns}")),
                    Err(e) => self.error(e),
                }
            }
        }
        let inner = if deep && !fresh {
            match self.read_netns_links(ns, None) {
                Ok(links) => Some(links),
                Err(e) => return self.drop_unusable_netns(ns, e),
            }
        } else {
            None
        };
        let mut wanted_inner: BTreeSet<String> = BTreeSet::new();
        for iface in &r.interfaces {
            wanted_inner.insert(iface.inner.clone());
            self.ensure_leg(
                ns,
                fresh,
                inner.as_ref(),
                &iface.leg,
                &iface.inner,
                Some(&iface.mac),
                &[(iface.ip, iface.prefix_len)],
                Some(iface.mtu),
                &iface.bridge,
            );
        }
        if let Some((ext, leg)) = &r.external {
            let bridge = external_bridge.unwrap_or_default();
            if self.links.get(bridge).is_none_or(|l| l.kind != "bridge") {
                self.error(format!(
                    "router {}: external bridge {bridge:?} does not exist on this host",
                    r.router_id
                ));
            } else {
                wanted_inner.insert(names::ROUTER_EXTERNAL_IFNAME.to_string());
                let mut addrs = vec![(ext.ip, ext.prefix_len)];
                addrs.extend(
                    r.floating_ips
                        .iter()
                        .map(|f| (f.external_ip, 32))
                        .filter(|a| a.0 != ext.ip),
                );
                addrs.dedup();
                let created = self.ensure_leg(
                    ns,
                    fresh,
                    inner.as_ref(),
                    leg,
                    names::ROUTER_EXTERNAL_IFNAME,
                    None,
                    &addrs,
                    None,
                    bridge,
                );
                if created || fresh || deep {
                    self.ensure_default_route(ns, ext.gateway);
                }
            }
        }
        if let Some(inner) = &inner {
            for name in inner.keys() {
                let ours = name.starts_with(names::ROUTER_INTERFACE_PREFIX)
                    || name == names::ROUTER_EXTERNAL_IFNAME;
                if ours && !wanted_inner.contains(name) {
                    match self.ip_in(ns, &["link", "del", "dev", name]) {
                        Ok(_) => self.changed(format!("delete {ns}/{name}")),
                        Err(e) => self.error(e),
                    }
                }
            }
        }
        let internal: Vec<(Ipv4Addr, u8)> = r.interfaces.iter().map(|i| i.cidr).collect();
        let rendered = nft::render_router(
            &internal,
            r.external.as_ref().map(|(e, _)| e),
            &r.floating_ips,
        );
        let check_live = fresh || deep;
        self.apply_nft(ns, Some(ns), &["ip"], rendered, check_live);
    }

    fn ensure_default_route(&mut self, ns: &str, gateway: Option<Ipv4Addr>) {
        let live = self
            .ip_in(ns, &["-j", "route", "show", "default"])
            .ok()
            .and_then(|out| sys::parse_default_gateway(&out));
        if live == gateway {
            return;
        }
        let result = match gateway {
            Some(gw) => self.ip_in(
                ns,
                &[
                    "route",
                    "replace",
                    "default",
                    "via",
                    &gw.to_string(),
                    "dev",
                    names::ROUTER_EXTERNAL_IFNAME,
                ],
            ),
            None => self.ip_in(ns, &["route", "del", "default"]),
        };
        match result {
            Ok(_) => self.changed(format!("set default route in {ns} via {gateway:?}")),
            Err(e) => self.error(e),
        }
    }

    fn applied_path(&self, key: &str) -> PathBuf {
        self.prefix_dir.join(format!("nft-{key}.json"))
    }

    fn load_applied(&mut self, key: &str) -> Option<NftApplied> {
        if let Some(a) = self.nft_applied.get(key) {
            return Some(a.clone());
        }
        let text = fs::read_to_string(self.applied_path(key)).ok()?;
        let applied: NftApplied = serde_json::from_str(&text).ok()?;
        self.nft_applied.insert(key.to_string(), applied.clone());
        Some(applied)
    }

    fn store_applied(&mut self, key: &str, applied: Option<NftApplied>) {
        let path = self.applied_path(key);
        match applied {
            Some(a) => {
                let json = serde_json::to_string(&a).expect("serializable");
                if let Err(e) = dhcp::write_atomic(&path, &json) {
                    self.error(e);
                }
                self.nft_applied.insert(key.to_string(), a);
            }
            None => {
                let _ = fs::remove_file(path);
                self.nft_applied.remove(key);
            }
        }
    }

    /// Replaces our tables in one transaction when the rendered ruleset or the live listing
    /// differs from what was applied last; otherwise leaves them alone.
    fn apply_nft(
        &mut self,
        key: &str,
        netns: Option<&str>,
        families: &[&str],
        rendered: Option<String>,
        check_live: bool,
    ) {
        let stored = self.load_applied(key);
        let live = if check_live {
            self.nft_list(netns, families)
        } else {
            stored.as_ref().map(|s| s.live.clone())
        };
        let where_ = netns.unwrap_or("host");
        match rendered {
            None => {
                let any_left = if check_live {
                    self.nft_list_tables(netns).is_ok_and(|out| {
                        families.iter().any(|f| {
                            out.lines()
                                .any(|l| l == format!("table {f} {}", nft::TABLE))
                        })
                    })
                } else {
                    stored.is_some()
                };
                if any_left {
                    match self.nft_in(netns, &nft::replace_script(families, None)) {
                        Ok(_) => self.changed(format!("remove nftables tables in {where_}")),
                        Err(e) => self.error(e),
                    }
                }
                if stored.is_some() {
                    self.store_applied(key, None);
                }
            }
            Some(rendered) => {
                let up_to_date = matches!((&stored, &live),
                    (Some(s), Some(l)) if s.rendered == rendered && s.live == *l);
                if up_to_date {
                    return;
                }
                match self.nft_in(netns, &nft::replace_script(families, Some(&rendered))) {
                    Ok(_) => {
                        let live = self.nft_list(netns, families).unwrap_or_default();
                        self.store_applied(key, Some(NftApplied { rendered, live }));
                        self.changed(format!("apply nftables ruleset in {where_}"));
                    }
                    Err(e) => self.error(e),
                }
            }
        }
    }

    fn host_nft(&mut self, resolved: &Resolved) {
        let nets: Vec<NetRules> = resolved
            .nets
            .iter()
            .map(|n| NetRules {
                bridge: n.bridge.clone(),
                vxlan: n.vxlan.as_ref().map(|(dev, _)| dev.clone()),
                zone: n.zone,
                dhcp_mac: n.dhcp.as_ref().map(|d| d.server_mac.clone()),
                ports: n
                    .ports
                    .iter()
                    .filter(|p| p.port_security)
                    .map(|p| PortRules {
                        port_id: p.port_id.clone(),
                        dev: p.dev.clone(),
                        mac: p.mac.clone(),
                        ips: p.ips.clone(),
                        security_groups: p.security_groups.clone(),
                    })
                    .collect(),
            })
            .collect();
        let mut errors = Vec::new();
        let rendered = nft::render_host(&nets, &resolved.groups, &mut errors);
        for e in errors {
            self.error(e);
        }
        self.apply_nft("host", None, &["ip", "bridge"], rendered, true);
    }

    fn cleanup(&mut self, resolved: &Resolved, external_bridge: Option<&str>) {
        let mut devices: BTreeSet<&str> = BTreeSet::new();
        let mut namespaces: BTreeSet<&str> = BTreeSet::new();
        let mut dhcp_dirs: BTreeSet<PathBuf> = BTreeSet::new();
        for n in &resolved.nets {
            devices.insert(&n.bridge);
            if let Some((vx, _)) = &n.vxlan {
                devices.insert(vx);
            }
            if let Some(d) = &n.dhcp {
                devices.insert(&d.leg);
                namespaces.insert(&d.netns);
                dhcp_dirs.insert(d.files.dir.clone());
            }
            for p in &n.ports {
                devices.insert(&p.dev);
            }
        }
        for r in &resolved.routers {
            namespaces.insert(&r.netns);
            for i in &r.interfaces {
                devices.insert(&i.leg);
            }
            if let Some((_, leg)) = &r.external {
                devices.insert(leg);
            }
        }
        let stale: Vec<String> = self
            .links
            .keys()
            .filter(|name| {
                names::is_managed_device(name)
                    && !devices.contains(name.as_str())
                    && Some(name.as_str()) != external_bridge
            })
            .cloned()
            .collect();
        for name in stale {
            // Deleting one end of a veth removes the other; it may already be gone.
            if self.links.contains_key(&name) {
                self.delete_link(&name);
            }
        }
        let dhcp_ns_prefix = format!("{}d-", self.prefix);
        let stale_ns: Vec<String> = self
            .netns
            .iter()
            .filter(|ns| {
                names::is_managed_netns(self.prefix, ns) && !namespaces.contains(ns.as_str())
            })
            .cloned()
            .collect();
        for ns in stale_ns {
            if let Some(id) = ns.strip_prefix(&dhcp_ns_prefix) {
                let files = DhcpFiles {
                    dir: self.prefix_dir.join(format!("dhcp-{id}")),
                };
                if let Some(pid) = dhcp::running_pid(&files) {
                    dhcp::stop(pid, &files.conf());
                    self.changed(format!("stop dnsmasq {pid}"));
                }
            }
            match self.ip(&["netns", "del", &ns]) {
                Ok(_) => {
                    self.netns.remove(&ns);
                    self.changed(format!("delete netns {ns}"));
                }
                Err(e) => self.error(e),
            }
        }
        if let Ok(entries) = fs::read_dir(self.prefix_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("dhcp-") && !dhcp_dirs.contains(&path) {
                    let files = DhcpFiles { dir: path.clone() };
                    if let Some(pid) = dhcp::running_pid(&files) {
                        dhcp::stop(pid, &files.conf());
                        self.changed(format!("stop dnsmasq {pid}"));
                    }
                    if let Err(e) = fs::remove_dir_all(&path) {
                        self.error(format!("removing {}: {e}", path.display()));
                    }
                }
            }
        }
        if self.depth.all() {
            for (pid, conf) in dhcp::pids_under(self.prefix_dir) {
                let dir = conf.parent().map(Path::to_path_buf).unwrap_or_default();
                if !dhcp_dirs.contains(&dir) {
                    dhcp::stop(pid, &conf);
                    self.changed(format!("stop orphan dnsmasq {pid}"));
                }
            }
        }
        let router_keys: Vec<String> = self
            .nft_applied
            .keys()
            .filter(|k| *k != "host" && !namespaces.contains(k.as_str()))
            .cloned()
            .collect();
        for key in router_keys {
            self.store_applied(&key, None);
        }
        if let Ok(entries) = fs::read_dir(self.prefix_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(key) = name
                    .strip_prefix("nft-")
                    .and_then(|n| n.strip_suffix(".json"))
                    && key != "host"
                    && !namespaces.contains(key)
                {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
    }

    fn ports_ready(&mut self, resolved: &Resolved) {
        if !self.report.changed.is_empty() {
            match self
                .ip(&["-j", "-d", "link", "show"])
                .and_then(|out| sys::parse_links(&out))
            {
                Ok(links) => self.links = links,
                Err(e) => return self.error(e),
            }
        }
        for net in &resolved.nets {
            for port in &net.ports {
                let ready = self
                    .links
                    .get(&port.dev)
                    .is_some_and(|l| l.up && l.master.as_deref() == Some(net.bridge.as_str()));
                if ready && port.migration_target {
                    self.report
                        .migration_targets_ready
                        .push(port.port_id.clone());
                } else if ready {
                    self.report.ports_ready.push(port.port_id.clone());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::plan::{Attachment, NetworkPlan, PortPlan};

    fn port(id: &str) -> PortPlan {
        PortPlan {
            port_id: id.into(),
            mac: "02:00:00:00:00:01".into(),
            ips: vec![],
            attachment: Attachment::Tap,
            security_groups: vec![],
            port_security: true,
            migration_target: false,
        }
    }

    fn plan(ports: &[&str], subnets: &[&str]) -> HostPlan {
        let mut p = HostPlan::empty("h", "uc");
        for (i, s) in subnets.iter().enumerate() {
            p.networks.push(NetworkPlan {
                subnet_id: (*s).into(),
                vni: i as u32 + 1,
                cidr: "10.0.0.0/24".into(),
                gateway: None,
                mtu: 1450,
                dhcp: None,
                ports: if i == 0 {
                    ports.iter().map(|id| port(id)).collect()
                } else {
                    vec![]
                },
                remote_vteps: vec![],
                remote_macs: vec![],
            });
        }
        p
    }

    #[test]
    fn a_new_port_re_reads_only_that_port() {
        let old = plan(&["a", "b"], &["s1"]);
        let new = plan(&["a", "b", "c"], &["s1"]);
        let depth = Depth::changed_between(&old, &new);
        assert!(depth.port("c"));
        assert!(!depth.port("a") && !depth.port("b"));
        assert!(!depth.dhcp("s1") && !depth.all());
    }

    #[test]
    fn a_removed_subnet_re_reads_everything() {
        let old = plan(&["a"], &["s1", "s2"]);
        let new = plan(&["a"], &["s1"]);
        assert!(Depth::changed_between(&old, &new).all());
        let same = Depth::changed_between(&old, &old);
        assert!(!same.all() && !same.port("a"));
    }
}
