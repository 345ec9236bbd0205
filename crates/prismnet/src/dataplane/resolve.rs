//! Turns a `HostPlan` into the concrete objects to converge (device and namespace names,
//! parsed addresses), reporting what is invalid instead of applying it half-way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use super::dhcp::DhcpFiles;
use super::names::{self, device};
use super::nft::GroupRules;
use super::plan::{Attachment, ExternalGateway, FloatingIpPlan, HostPlan};

pub const VXLAN_PORT: u16 = 4789;

#[derive(Debug, Clone)]
pub struct Net {
    pub subnet_id: String,
    pub bridge: String,
    /// The VXLAN device and this host's tunnel endpoint address.
    pub vxlan: Option<(String, Ipv4Addr)>,
    pub vni: u32,
    pub cidr: (Ipv4Addr, u8),
    pub mtu: u32,
    pub zone: u16,
    pub dhcp: Option<Dhcp>,
    pub ports: Vec<Port>,
    pub remote_vteps: Vec<Ipv4Addr>,
    pub remote_macs: Vec<(String, Ipv4Addr)>,
}

#[derive(Debug, Clone)]
pub struct Dhcp {
    pub netns: String,
    pub leg: String,
    pub server_ip: Ipv4Addr,
    pub server_mac: String,
    pub router: Option<Ipv4Addr>,
    pub dns_servers: Vec<Ipv4Addr>,
    pub lease_secs: u32,
    pub hosts: Vec<(String, Ipv4Addr, Option<String>)>,
    pub files: DhcpFiles,
}

#[derive(Debug, Clone)]
pub struct Port {
    pub port_id: String,
    pub dev: String,
    pub mac: String,
    pub ips: Vec<Ipv4Addr>,
    /// None: a tap. Some((netns, ifname)): a veth whose peer lives in that workload netns.
    pub netns: Option<(String, String)>,
    pub security_groups: Vec<String>,
    pub port_security: bool,
    /// A migration binding (reported apart from the port's binding).
    pub migration_target: bool,
}

#[derive(Debug, Clone)]
pub struct Router {
    pub router_id: String,
    pub netns: String,
    pub interfaces: Vec<RouterIface>,
    pub external: Option<(ExternalGateway, String)>,
    pub floating_ips: Vec<FloatingIpPlan>,
}

#[derive(Debug, Clone)]
pub struct RouterIface {
    pub leg: String,
    pub inner: String,
    pub bridge: String,
    pub mtu: u32,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: String,
    pub cidr: (Ipv4Addr, u8),
}

#[derive(Debug, Default)]
pub struct Resolved {
    pub nets: Vec<Net>,
    pub routers: Vec<Router>,
    pub groups: BTreeMap<String, GroupRules>,
}

pub fn valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= 16
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_netns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub fn resolve(plan: &HostPlan, prefix_dir: &Path, errors: &mut Vec<String>) -> Resolved {
    let mut out = Resolved::default();
    let mut devices: BTreeSet<String> = BTreeSet::new();
    let mut claim = |dev: &str, what: &str, errors: &mut Vec<String>| -> bool {
        if devices.insert(dev.to_string()) {
            true
        } else {
            errors.push(format!(
                "{what}: device name {dev} is already used (ids share their first 10 characters)"
            ));
            false
        }
    };

    for sg in &plan.security_groups {
        let Some(id) = names::id10(&sg.sg_id) else {
            errors.push(format!("security group {:?}: unusable id", sg.sg_id));
            continue;
        };
        let set_name = format!("sg_{id}");
        if out.groups.values().any(|g| g.set_name == set_name) {
            errors.push(format!(
                "security group {}: id collides with another group",
                sg.sg_id
            ));
            continue;
        }
        let mut members = sg.members.clone();
        members.sort();
        members.dedup();
        out.groups.insert(
            sg.sg_id.clone(),
            GroupRules {
                set_name,
                rules: sg.rules.clone(),
                members,
            },
        );
    }

    for n in &plan.networks {
        let what = format!("subnet {}", n.subnet_id);
        let Some(id) = names::id10(&n.subnet_id) else {
            errors.push(format!("{what}: unusable id"));
            continue;
        };
        let Some(cidr) = names::parse_cidr(&n.cidr) else {
            errors.push(format!("{what}: bad CIDR {:?}", n.cidr));
            continue;
        };
        if !(576..=9000).contains(&n.mtu) {
            errors.push(format!("{what}: MTU {} outside 576..=9000", n.mtu));
            continue;
        }
        if n.vni == 0 || n.vni > 0x00ff_ffff {
            errors.push(format!("{what}: VNI {} outside 1..=16777215", n.vni));
            continue;
        }
        let bridge = device(names::BRIDGE, &id);
        if !claim(&bridge, &what, errors) {
            continue;
        }
        let vxlan = match (n.remote_vteps.is_empty(), plan.underlay_ip) {
            (true, _) => None,
            (false, None) => {
                errors.push(format!(
                    "{what}: has remote VTEPs but the host has no underlay_ip; no VXLAN device"
                ));
                None
            }
            (false, Some(local)) => {
                let dev = device(names::VXLAN, &id);
                claim(&dev, &what, errors).then_some((dev, local))
            }
        };
        let mut remote_macs = Vec::new();
        for rm in &n.remote_macs {
            match names::unicast_mac(&rm.mac) {
                Some(mac) => remote_macs.push((mac, rm.vtep)),
                None => errors.push(format!("{what}: bad remote MAC {:?}", rm.mac)),
            }
        }
        let gateway = match n.gateway {
            Some(gw) if !names::contains(cidr, gw) => {
                errors.push(format!("{what}: gateway {gw} is outside {}", n.cidr));
                None
            }
            other => other,
        };
        let dhcp = n.dhcp.as_ref().and_then(|d| {
            let Some(server_mac) = names::unicast_mac(&d.server_mac) else {
                errors.push(format!("{what}: bad DHCP server MAC {:?}", d.server_mac));
                return None;
            };
            if !names::contains(cidr, d.server_ip) {
                errors.push(format!(
                    "{what}: DHCP server IP {} is outside {}",
                    d.server_ip, n.cidr
                ));
                return None;
            }
            let leg = device(names::DHCP_LEG, &id);
            if !claim(&leg, &what, errors) {
                return None;
            }
            let mut hosts = Vec::new();
            for h in &d.hosts {
                match names::unicast_mac(&h.mac) {
                    Some(mac) if names::contains(cidr, h.ip) => {
                        let hostname = h.hostname.clone().filter(|s| {
                            !s.is_empty()
                                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        });
                        hosts.push((mac, h.ip, hostname));
                    }
                    _ => errors.push(format!(
                        "{what}: DHCP host {} {} skipped (bad MAC or IP outside the subnet)",
                        h.mac, h.ip
                    )),
                }
            }
            Some(Dhcp {
                netns: names::dhcp_netns(&plan.prefix, &id),
                leg,
                server_ip: d.server_ip,
                server_mac,
                router: gateway,
                dns_servers: d.dns_servers.clone(),
                lease_secs: d.lease_secs,
                hosts,
                files: DhcpFiles {
                    dir: prefix_dir.join(format!("dhcp-{id}")),
                },
            })
        });
        let mut ports = Vec::new();
        for p in &n.ports {
            let pwhat = format!("port {}", p.port_id);
            let Some(pid) = names::id10(&p.port_id) else {
                errors.push(format!("{pwhat}: unusable id"));
                continue;
            };
            let Some(mac) = names::unicast_mac(&p.mac) else {
                errors.push(format!("{pwhat}: bad MAC {:?}", p.mac));
                continue;
            };
            if let Some(ip) = p.ips.iter().find(|ip| !names::contains(cidr, **ip)) {
                errors.push(format!("{pwhat}: IP {ip} is outside {}", n.cidr));
                continue;
            }
            let (dev, netns) = match &p.attachment {
                Attachment::Tap => (device(names::TAP, &pid), None),
                Attachment::TapAlternate => (device(names::TAP_ALTERNATE, &pid), None),
                Attachment::Netns { netns, ifname } => {
                    if !valid_netns_name(netns) || !valid_ifname(ifname) {
                        errors.push(format!(
                            "{pwhat}: bad netns {netns:?} or interface name {ifname:?}"
                        ));
                        continue;
                    }
                    (
                        device(names::PORT_VETH, &pid),
                        Some((netns.clone(), ifname.clone())),
                    )
                }
            };
            if !claim(&dev, &pwhat, errors) {
                continue;
            }
            ports.push(Port {
                port_id: p.port_id.clone(),
                dev,
                mac,
                ips: p.ips.clone(),
                netns,
                security_groups: p.security_groups.clone(),
                port_security: p.port_security,
                migration_target: p.migration_target,
            });
        }
        out.nets.push(Net {
            subnet_id: n.subnet_id.clone(),
            bridge,
            vxlan,
            vni: n.vni,
            cidr,
            mtu: n.mtu,
            zone: (n.vni % 65535) as u16 + 1,
            dhcp,
            ports,
            remote_vteps: n.remote_vteps.clone(),
            remote_macs,
        });
    }

    for r in &plan.routers {
        let what = format!("router {}", r.router_id);
        let Some(id) = names::id10(&r.router_id) else {
            errors.push(format!("{what}: unusable id"));
            continue;
        };
        let mut interfaces = Vec::new();
        for i in &r.interfaces {
            let Some(net) = out.nets.iter().find(|n| n.subnet_id == i.subnet_id) else {
                errors.push(format!(
                    "{what}: interface on subnet {} which is not (validly) in the plan",
                    i.subnet_id
                ));
                continue;
            };
            let Some(mac) = names::unicast_mac(&i.mac) else {
                errors.push(format!("{what}: bad interface MAC {:?}", i.mac));
                continue;
            };
            if !names::contains(net.cidr, i.ip) || i.prefix_len != net.cidr.1 {
                errors.push(format!(
                    "{what}: interface {}/{} does not fit subnet {}",
                    i.ip, i.prefix_len, i.subnet_id
                ));
                continue;
            }
            let sid = &net.bridge[names::BRIDGE.len()..];
            let leg = device(names::ROUTER_LEG, sid);
            if !claim(&leg, &what, errors) {
                continue;
            }
            interfaces.push(RouterIface {
                leg,
                inner: names::router_interface_ifname(sid),
                bridge: net.bridge.clone(),
                mtu: net.mtu,
                ip: i.ip,
                prefix_len: i.prefix_len,
                mac,
                cidr: net.cidr,
            });
        }
        let external = match (&r.external, &plan.external_bridge) {
            (None, _) => None,
            (Some(_), None) => {
                errors.push(format!(
                    "{what}: has an external gateway but the host has no external_bridge"
                ));
                None
            }
            (Some(ext), Some(_)) if ext.prefix_len > 32 => {
                errors.push(format!("{what}: bad external prefix length"));
                None
            }
            (Some(ext), Some(_)) => {
                let leg = device(names::EXTERNAL_LEG, &id);
                claim(&leg, &what, errors).then(|| (ext.clone(), leg))
            }
        };
        let floating_ips = if external.is_some() {
            r.floating_ips.clone()
        } else {
            if !r.floating_ips.is_empty() {
                errors.push(format!(
                    "{what}: floating IPs need an external gateway; ignored"
                ));
            }
            Vec::new()
        };
        out.routers.push(Router {
            router_id: r.router_id.clone(),
            netns: names::router_netns(&plan.prefix, &id),
            interfaces,
            external,
            floating_ips,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::plan::{NetworkPlan, PortPlan, RouterInterface, RouterPlan};

    fn net(id: &str, cidr: &str) -> NetworkPlan {
        NetworkPlan {
            subnet_id: id.into(),
            vni: 7,
            cidr: cidr.into(),
            gateway: None,
            mtu: 1450,
            dhcp: None,
            ports: vec![],
            remote_vteps: vec![],
            remote_macs: vec![],
        }
    }

    fn tap(id: &str, ip: &str) -> PortPlan {
        PortPlan {
            port_id: id.into(),
            mac: "02:00:00:00:00:01".into(),
            ips: vec![ip.parse().unwrap()],
            attachment: Attachment::Tap,
            security_groups: vec![],
            port_security: true,
            migration_target: false,
        }
    }

    #[test]
    fn invalid_entries_are_reported_and_skipped() {
        let mut plan = HostPlan::empty("h", "uc");
        let mut a = net("subnet-aaaaaaaaaa-1", "10.0.0.0/24");
        a.gateway = Some("10.9.9.1".parse().unwrap());
        a.remote_vteps = vec!["192.0.2.1".parse().unwrap()];
        a.ports = vec![
            tap("port-1111111111-a", "10.0.0.5"),
            // Same first 10 alphanumerics: same device name.
            tap("port-1111111111-b", "10.0.0.6"),
        ];
        // Same first 10 alphanumerics as `a`: same bridge name.
        let b = net("subnet-aaaaaaaaaa-2", "10.1.0.0/24");
        plan.networks = vec![a, b];
        plan.routers = vec![RouterPlan {
            router_id: "router-1".into(),
            interfaces: vec![RouterInterface {
                subnet_id: "nope".into(),
                ip: "10.0.0.1".parse().unwrap(),
                prefix_len: 24,
                mac: "02:00:00:00:00:09".into(),
            }],
            external: None,
            floating_ips: vec![],
        }];
        let mut errors = Vec::new();
        let r = resolve(&plan, Path::new("/nonexistent"), &mut errors);
        assert_eq!(r.nets.len(), 1);
        let n = &r.nets[0];
        assert_eq!(n.bridge, "ucbsubnetaaaa");
        assert_eq!(n.ports.len(), 1);
        assert!(n.vxlan.is_none(), "no underlay_ip, no VXLAN");
        assert_eq!(r.routers.len(), 1);
        assert!(r.routers[0].interfaces.is_empty());
        let all = errors.join("\n");
        for needle in [
            "gateway 10.9.9.1",
            "underlay_ip",
            "already used",
            "not (validly)",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(errors.len(), 5, "{all}");
    }
}
