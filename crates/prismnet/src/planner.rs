//! The model → one host's [`HostPlan`]. Pure: a [`Snapshot`] in, a plan out.
//!
//! A subnet is present on a host when a port of it is bound there or a router placed there
//! has an interface on it. Hosts sharing a subnet list each other's VTEPs; the MACs of ports
//! (and router legs) behind other hosts become static FDB entries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use crate::dataplane::plan::*;
use crate::net::{Cidr, derived_mac};
use crate::store::{PortMigrationRow, PortRow, Snapshot};

/// Lease time handed to DHCP clients.
pub const LEASE_SECS: u32 = 3600;
/// VXLAN adds 50 bytes; every host of a subnet uses the same MTU.
pub const MTU: u32 = 1450;

/// The DHCP server's MAC in a subnet: the same on every host, so a renewal sent to the
/// server's address is answered by the local server whichever host the client is on.
pub fn dhcp_server_mac(subnet_id: &str) -> String {
    derived_mac(&format!("{subnet_id}/dhcp"))
}

pub fn attachment(text: &str) -> Option<Attachment> {
    match text {
        crate::service::TAP => return Some(Attachment::Tap),
        crate::service::TAP_ALTERNATE => return Some(Attachment::TapAlternate),
        _ => {}
    }
    text.strip_prefix("netns:").map(|ns| Attachment::Netns {
        netns: ns.to_owned(),
        ifname: default_ifname(),
    })
}

fn ips(p: &PortRow) -> Vec<Ipv4Addr> {
    serde_json::from_str::<Vec<String>>(&p.ips)
        .unwrap_or_default()
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

fn hostname(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-');
    ok.then(|| name.to_ascii_lowercase())
}

pub fn host_plan(s: &Snapshot, host: &str) -> HostPlan {
    let mut plan = HostPlan::empty(host, default_prefix());
    let vtep: HashMap<&str, Ipv4Addr> = s
        .hosts
        .iter()
        .filter_map(|h| Some((h.name.as_str(), h.underlay_ip.as_deref()?.parse().ok()?)))
        .collect();
    plan.underlay_ip = vtep.get(host).copied();
    let groups_of: BTreeMap<&str, Vec<String>> =
        s.port_sgs.iter().fold(BTreeMap::new(), |mut m, r| {
            m.entry(r.port_id.as_str())
                .or_default()
                .push(r.sg_id.clone());
            m
        });
    let router_host: HashMap<&str, &str> = s
        .routers
        .iter()
        .map(|r| (r.id.as_str(), r.host.as_str()))
        .collect();

    // Which hosts each subnet lives on, and the MACs to reach on each.
    let mut subnet_hosts: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut macs: BTreeMap<&str, Vec<(&str, String)>> = BTreeMap::new();
    for p in &s.ports {
        if let (Some(h), Some(_)) = (p.host.as_deref(), p.attachment.as_deref()) {
            subnet_hosts.entry(&p.subnet_id).or_default().insert(h);
            macs.entry(&p.subnet_id)
                .or_default()
                .push((h, p.mac.clone()));
        }
    }
    // A migration's destination host has the subnet too; the MAC stays where the port is
    // bound until the migration binding is activated.
    let bound: HashMap<&str, &PortRow> = s
        .ports
        .iter()
        .filter(|p| p.host.is_some())
        .map(|p| (p.id.as_str(), p))
        .collect();
    let migrations: Vec<(&PortRow, &PortMigrationRow)> = s
        .migrations
        .iter()
        .filter_map(|m| Some((*bound.get(m.port_id.as_str())?, m)))
        .collect();
    for (p, m) in &migrations {
        subnet_hosts
            .entry(&p.subnet_id)
            .or_default()
            .insert(&m.host);
    }
    for i in &s.ifaces {
        if let Some(h) = router_host.get(i.router_id.as_str()) {
            subnet_hosts.entry(&i.subnet_id).or_default().insert(h);
            macs.entry(&i.subnet_id)
                .or_default()
                .push((h, i.mac.clone()));
        }
    }

    for subnet in &s.subnets {
        let Some(hosts) = subnet_hosts.get(subnet.id.as_str()) else {
            continue;
        };
        if !hosts.contains(host) {
            continue;
        }
        // (port, attachment, migration target)
        let local: Vec<(&PortRow, &str, bool)> = s
            .ports
            .iter()
            .filter(|p| p.subnet_id == subnet.id && p.host.as_deref() == Some(host))
            .filter_map(|p| Some((p, p.attachment.as_deref()?, false)))
            .chain(
                migrations
                    .iter()
                    .filter(|(p, m)| p.subnet_id == subnet.id && m.host == host)
                    .map(|(p, m)| (*p, m.attachment.as_str(), true)),
            )
            .collect();
        let ports: Vec<PortPlan> = local
            .iter()
            .filter_map(|(p, a, migration_target)| {
                Some(PortPlan {
                    port_id: p.id.clone(),
                    mac: p.mac.clone(),
                    ips: ips(p),
                    attachment: attachment(a)?,
                    security_groups: groups_of.get(p.id.as_str()).cloned().unwrap_or_default(),
                    port_security: p.port_security != 0,
                    migration_target: *migration_target,
                })
            })
            .collect();
        let dhcp = match (&subnet.dhcp_ip, subnet.dhcp != 0 && !ports.is_empty()) {
            (Some(ip), true) => ip.parse().ok().map(|server_ip| DhcpPlan {
                server_ip,
                server_mac: dhcp_server_mac(&subnet.id),
                dns_servers: serde_json::from_str::<Vec<String>>(&subnet.dns)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|d| d.parse().ok())
                    .collect(),
                lease_secs: LEASE_SECS,
                hosts: local
                    .iter()
                    .filter(|(p, _, migration_target)| {
                        // One lease per MAC when both ends of a migration are here.
                        !migration_target || p.host.as_deref() != Some(host)
                    })
                    .filter_map(|(p, _, _)| {
                        Some(DhcpHost {
                            mac: p.mac.clone(),
                            ip: *ips(p).first()?,
                            hostname: hostname(&p.name),
                        })
                    })
                    .collect(),
            }),
            _ => None,
        };
        let remote_vteps: Vec<Ipv4Addr> = hosts
            .iter()
            .filter(|h| **h != host)
            .filter_map(|h| vtep.get(h).copied())
            .filter(|v| Some(*v) != plan.underlay_ip)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let remote_macs = macs
            .get(subnet.id.as_str())
            .into_iter()
            .flatten()
            .filter(|(h, _)| *h != host)
            .filter_map(|(h, mac)| {
                Some(RemoteMac {
                    mac: mac.clone(),
                    vtep: *vtep.get(h)?,
                })
            })
            .collect();
        plan.networks.push(NetworkPlan {
            subnet_id: subnet.id.clone(),
            vni: subnet.vni as u32,
            cidr: subnet.cidr.clone(),
            gateway: subnet.gateway.as_deref().and_then(|g| g.parse().ok()),
            mtu: MTU,
            dhcp,
            ports,
            remote_vteps,
            remote_macs,
        });
    }

    // Routers placed here.
    let subnet_cidr: HashMap<&str, Cidr> = s
        .subnets
        .iter()
        .filter_map(|x| Some((x.id.as_str(), Cidr::parse(&x.cidr).ok()?)))
        .collect();
    for r in s.routers.iter().filter(|r| r.host == host) {
        let interfaces: Vec<RouterInterface> = s
            .ifaces
            .iter()
            .filter(|i| i.router_id == r.id)
            .filter_map(|i| {
                Some(RouterInterface {
                    subnet_id: i.subnet_id.clone(),
                    ip: i.ip.parse().ok()?,
                    prefix_len: subnet_cidr.get(i.subnet_id.as_str())?.prefix_len,
                    mac: i.mac.clone(),
                })
            })
            .collect();
        let external = match (&r.ext_pool, &r.ext_ip) {
            (Some(pool), Some(ip)) => s.pools.iter().find(|p| &p.id == pool).and_then(|p| {
                Some(ExternalGateway {
                    ip: ip.parse().ok()?,
                    prefix_len: Cidr::parse(&p.cidr).ok()?.prefix_len,
                    gateway: p.gateway.as_deref().and_then(|g| g.parse().ok()),
                    snat: r.snat != 0,
                })
            }),
            _ => None,
        };
        let floating_ips = if external.is_some() {
            let behind: BTreeSet<&str> = interfaces.iter().map(|i| i.subnet_id.as_str()).collect();
            s.fips
                .iter()
                .filter_map(|f| {
                    let port = s.ports.iter().find(|p| Some(&p.id) == f.port_id.as_ref())?;
                    if !behind.contains(port.subnet_id.as_str()) {
                        return None;
                    }
                    Some(FloatingIpPlan {
                        external_ip: f.ip.parse().ok()?,
                        internal_ip: *ips(port).first()?,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        plan.routers.push(RouterPlan {
            router_id: r.id.clone(),
            interfaces,
            external,
            floating_ips,
        });
    }

    // Security groups the local ports use, and the groups their rules refer to.
    let mut wanted: BTreeSet<String> = plan
        .networks
        .iter()
        .flat_map(|n| n.ports.iter().flat_map(|p| p.security_groups.clone()))
        .collect();
    let referenced: Vec<String> = s
        .rules
        .iter()
        .filter(|r| wanted.contains(&r.sg_id))
        .filter_map(|r| r.remote_group.clone())
        .collect();
    wanted.extend(referenced);
    for sg in s.sgs.iter().filter(|g| wanted.contains(&g.id)) {
        let members: BTreeSet<Ipv4Addr> = s
            .port_sgs
            .iter()
            .filter(|m| m.sg_id == sg.id)
            .filter_map(|m| s.ports.iter().find(|p| p.id == m.port_id))
            .flat_map(ips)
            .collect();
        let rules = s
            .rules
            .iter()
            .filter(|r| r.sg_id == sg.id)
            .filter_map(|r| {
                Some(RulePlan {
                    direction: match r.direction.as_str() {
                        "ingress" => Direction::Ingress,
                        "egress" => Direction::Egress,
                        _ => return None,
                    },
                    protocol: match r.protocol.as_str() {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        "icmp" => Protocol::Icmp,
                        _ => Protocol::Any,
                    },
                    port_min: r.port_min.map(|p| p as u16),
                    port_max: r.port_max.map(|p| p as u16),
                    remote: match (&r.remote_cidr, &r.remote_group) {
                        (Some(c), _) => Remote::Cidr(c.clone()),
                        (None, Some(g)) => Remote::Group(g.clone()),
                        _ => Remote::Any,
                    },
                })
            })
            .collect();
        plan.security_groups.push(SecurityGroupPlan {
            sg_id: sg.id.clone(),
            rules,
            members: members.into_iter().collect(),
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::*;

    fn port(id: &str, subnet: &str, host: Option<&str>, mac: &str, ip: &str) -> PortRow {
        PortRow {
            id: id.into(),
            org: "o".into(),
            project: "p".into(),
            vpc_id: "v".into(),
            subnet_id: subnet.into(),
            name: id.into(),
            mac: mac.into(),
            ips: format!("[\"{ip}\"]"),
            port_security: 1,
            device_owner: None,
            device_id: None,
            host: host.map(Into::into),
            attachment: host.map(|_| format!("netns:ns-{id}")),
            status: "down".into(),
            device: None,
            created_at: 0,
            version: 1,
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            revision: 7,
            subnets: vec![SubnetRow {
                id: "s1".into(),
                org: "o".into(),
                project: "p".into(),
                vpc_id: "v".into(),
                name: "s1".into(),
                cidr: "10.0.0.0/24".into(),
                first: 0,
                last: 0,
                gateway: Some("10.0.0.1".into()),
                dhcp: 1,
                dhcp_ip: Some("10.0.0.2".into()),
                dns: "[\"9.9.9.9\"]".into(),
                vni: 5000,
                created_at: 0,
                version: 1,
            }],
            ports: vec![
                port("pa", "s1", Some("h1"), "02:00:00:00:00:0a", "10.0.0.10"),
                port("pb", "s1", Some("h2"), "02:00:00:00:00:0b", "10.0.0.11"),
                port("pc", "s1", None, "02:00:00:00:00:0c", "10.0.0.12"),
            ],
            port_sgs: vec![
                PortSgRow {
                    port_id: "pa".into(),
                    sg_id: "g1".into(),
                },
                PortSgRow {
                    port_id: "pb".into(),
                    sg_id: "g1".into(),
                },
            ],
            sgs: vec![SgRow {
                id: "g1".into(),
                org: "o".into(),
                project: "p".into(),
                vpc_id: "v".into(),
                name: "default".into(),
                is_default: 1,
                created_at: 0,
                version: 1,
            }],
            rules: vec![RuleRow {
                id: "r1".into(),
                sg_id: "g1".into(),
                direction: "ingress".into(),
                protocol: "tcp".into(),
                port_min: Some(80),
                port_max: Some(80),
                remote_cidr: None,
                remote_group: Some("g1".into()),
            }],
            hosts: vec![
                HostRow {
                    name: "h1".into(),
                    underlay_ip: Some("192.0.2.1".into()),
                    updated_at: 0,
                },
                HostRow {
                    name: "h2".into(),
                    underlay_ip: Some("192.0.2.2".into()),
                    updated_at: 0,
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn a_subnet_spanning_two_hosts() {
        let s = snapshot();
        let p = host_plan(&s, "h1");
        assert_eq!(p.underlay_ip, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(p.networks.len(), 1);
        let n = &p.networks[0];
        assert_eq!(n.vni, 5000);
        assert_eq!(n.ports.len(), 1, "only the port bound here");
        assert_eq!(n.ports[0].port_id, "pa");
        assert_eq!(
            n.ports[0].attachment,
            Attachment::Netns {
                netns: "ns-pa".into(),
                ifname: "eth0".into()
            }
        );
        assert_eq!(
            n.remote_vteps,
            vec!["192.0.2.2".parse::<Ipv4Addr>().unwrap()]
        );
        assert_eq!(n.remote_macs.len(), 1);
        assert_eq!(n.remote_macs[0].mac, "02:00:00:00:00:0b");
        let dhcp = n.dhcp.as_ref().unwrap();
        assert_eq!(dhcp.hosts.len(), 1);
        assert_eq!(dhcp.hosts[0].ip, "10.0.0.10".parse::<Ipv4Addr>().unwrap());
        assert_eq!(dhcp.server_ip, "10.0.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(
            dhcp.server_mac,
            host_plan(&s, "h2").networks[0]
                .dhcp
                .as_ref()
                .unwrap()
                .server_mac
        );
        // The group's members include the remote port's address.
        assert_eq!(p.security_groups.len(), 1);
        assert_eq!(p.security_groups[0].members.len(), 2);
        assert_eq!(
            p.security_groups[0].rules[0].remote,
            Remote::Group("g1".into())
        );
        // A host with nothing bound gets an empty plan.
        let empty = host_plan(&s, "h3");
        assert!(empty.networks.is_empty() && empty.security_groups.is_empty());
    }
}
