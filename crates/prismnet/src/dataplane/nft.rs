//! Renders the nftables rulesets. The host gets two tables:
//!
//! * `ip ultracloud`: bridged IPv4 reaches the ip hooks because every subnet bridge has
//!   `nf_call_iptables` on. Here each bridge gets its own conntrack zone (so overlapping CIDRs
//!   of different VPCs never share connection state), and the connection state is copied into
//!   two packet-mark bits. This kernel has no bridge-family conntrack (`nf_conntrack_bridge`),
//!   so `ct` cannot be matched in the bridge table itself.
//! * `bridge ultracloud`: per-port chains keyed by the host-side ifname (anti-spoofing, then
//!   security-group rules). Its forward chain has priority 100 so it runs after br_netfilter
//!   has passed the packet through the ip forward hook, i.e. after the mark bits are set.
//!
//! A router namespace gets `ip ultracloud` with SNAT/DNAT and a forward filter that only lets
//! the outside in for established connections and floating IPs.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::Ipv4Addr;

use super::names;
use super::plan::{Direction, ExternalGateway, FloatingIpPlan, Protocol, Remote, RulePlan};

pub const TABLE: &str = "ultracloud";
const MARK_ESTABLISHED: &str = "0x00010000";
const MARK_INVALID: &str = "0x00020000";
const MARK_KEEP: &str = "0xfffcffff";

/// A subnet as the host ruleset sees it.
#[derive(Debug, Clone)]
pub struct NetRules {
    pub bridge: String,
    pub vxlan: Option<String>,
    pub zone: u16,
    /// DHCP server MAC, if the subnet has DHCP on this host.
    pub dhcp_mac: Option<String>,
    pub ports: Vec<PortRules>,
}

#[derive(Debug, Clone)]
pub struct PortRules {
    pub port_id: String,
    pub dev: String,
    pub mac: String,
    pub ips: Vec<Ipv4Addr>,
    pub security_groups: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct GroupRules {
    pub set_name: String,
    pub rules: Vec<RulePlan>,
    pub members: Vec<Ipv4Addr>,
}

fn ip_list(ips: &[Ipv4Addr]) -> String {
    let items: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

/// One security-group rule as an nft statement ending in `return` (allowed: back to the
/// forward chain, which goes on to the destination port's ingress chain).
fn rule_statement(
    rule: &RulePlan,
    groups: &BTreeMap<String, GroupRules>,
) -> Result<String, String> {
    let mut s = String::new();
    let addr_dir = match rule.direction {
        Direction::Ingress => "saddr",
        Direction::Egress => "daddr",
    };
    match &rule.remote {
        Remote::Any => {}
        Remote::Cidr(cidr) => {
            let (net, len) =
                names::parse_cidr(cidr).ok_or_else(|| format!("bad remote CIDR {cidr:?}"))?;
            write!(s, "ip {addr_dir} {net}/{len} ").expect("string write");
        }
        Remote::Group(sg) => {
            let group = groups
                .get(sg)
                .ok_or_else(|| format!("remote group {sg} is not in the plan"))?;
            write!(s, "ip {addr_dir} @{} ", group.set_name).expect("string write");
        }
    }
    let ports = match (rule.port_min, rule.port_max) {
        (None, None) => None,
        (Some(a), None) | (None, Some(a)) => Some(a.to_string()),
        (Some(a), Some(b)) if a == b => Some(a.to_string()),
        (Some(a), Some(b)) if a < b => Some(format!("{a}-{b}")),
        (Some(a), Some(b)) => return Err(format!("port range {a}-{b} is empty")),
    };
    match (rule.protocol, ports) {
        (Protocol::Any, None) => {}
        (Protocol::Icmp, None) => s.push_str("meta l4proto icmp "),
        (Protocol::Any | Protocol::Icmp, Some(_)) => {
            return Err("a port range needs protocol tcp or udp".into());
        }
        (Protocol::Tcp, None) => s.push_str("meta l4proto tcp "),
        (Protocol::Udp, None) => s.push_str("meta l4proto udp "),
        (Protocol::Tcp, Some(p)) => write!(s, "tcp dport {p} ").expect("string write"),
        (Protocol::Udp, Some(p)) => write!(s, "udp dport {p} ").expect("string write"),
    }
    s.push_str("return");
    Ok(s)
}

/// The host's two tables, or None when there is nothing to filter (no subnets).
pub fn render_host(
    nets: &[NetRules],
    groups: &BTreeMap<String, GroupRules>,
    errors: &mut Vec<String>,
) -> Option<String> {
    if nets.is_empty() {
        return None;
    }
    let mut out = String::new();
    let w = &mut out;
    // Writing to a String cannot fail; the macro results are ignored through this helper.
    macro_rules! line {
        ($($arg:tt)*) => { let _ = writeln!(w, $($arg)*); };
    }
    line!("table ip {TABLE} {{");
    line!("  chain zone {{");
    line!("    type filter hook prerouting priority -300; policy accept;");
    let zones: Vec<String> = nets
        .iter()
        .map(|n| format!("\"{}\" : {}", n.bridge, n.zone))
        .collect();
    line!("    ct zone set iifname map {{ {} }}", zones.join(", "));
    line!("  }}");
    line!("  chain ctstate {{");
    line!("    type filter hook forward priority 0; policy accept;");
    line!(
        "    iifname \"{}*\" meta mark set meta mark & {MARK_KEEP}",
        names::BRIDGE
    );
    line!(
        "    iifname \"{}*\" ct state established,related meta mark set meta mark | {MARK_ESTABLISHED}",
        names::BRIDGE
    );
    line!(
        "    iifname \"{}*\" ct state invalid meta mark set meta mark | {MARK_INVALID}",
        names::BRIDGE
    );
    line!("  }}");
    line!("}}");

    line!("table bridge {TABLE} {{");
    for group in groups.values() {
        if group.members.is_empty() {
            line!("  set {} {{ type ipv4_addr; }}", group.set_name);
        } else {
            line!(
                "  set {} {{ type ipv4_addr; elements = {} }}",
                group.set_name,
                ip_list(&group.members)
            );
        }
    }
    let mut egress_dispatch = Vec::new();
    let mut ingress_dispatch = Vec::new();
    for net in nets {
        for port in &net.ports {
            let mut ingress = Vec::new();
            let mut egress = Vec::new();
            for sg in &port.security_groups {
                let Some(group) = groups.get(sg) else {
                    errors.push(format!(
                        "port {}: security group {sg} is not in the plan",
                        port.port_id
                    ));
                    continue;
                };
                for rule in &group.rules {
                    match rule_statement(rule, groups) {
                        Ok(stmt) => {
                            let list = match rule.direction {
                                Direction::Ingress => &mut ingress,
                                Direction::Egress => &mut egress,
                            };
                            if !list.contains(&stmt) {
                                list.push(stmt);
                            }
                        }
                        Err(e) => errors.push(format!("security group {sg}: rule skipped: {e}")),
                    }
                }
            }
            let dev = &port.dev;
            let mac = &port.mac;
            let mut arp_ips = vec![Ipv4Addr::UNSPECIFIED];
            arp_ips.extend(port.ips.iter().copied());
            // Egress: what the workload sends.
            line!("  chain e_{dev} {{");
            line!("    ether saddr != {mac} drop");
            line!("    ether type arp arp saddr ether != {mac} drop");
            line!(
                "    ether type arp arp saddr ip != {} drop",
                ip_list(&arp_ips)
            );
            line!("    ether type arp return");
            line!("    ether type != ip drop");
            line!(
                "    ip saddr {} udp sport 68 udp dport 67 return",
                ip_list(&arp_ips)
            );
            if port.ips.is_empty() {
                line!("    drop");
            } else {
                line!("    ip saddr != {} drop", ip_list(&port.ips));
            }
            // No tenant may act as a DHCP server.
            line!("    udp sport 67 drop");
            line!("    meta mark & {MARK_INVALID} != 0 drop");
            line!("    meta mark & {MARK_ESTABLISHED} != 0 return");
            for stmt in &egress {
                line!("    {stmt}");
            }
            line!("    drop");
            line!("  }}");
            // Ingress: what reaches the workload.
            line!("  chain i_{dev} {{");
            line!("    ether type arp return");
            line!("    ether type != ip drop");
            if let Some(dhcp_mac) = &net.dhcp_mac {
                line!("    ether saddr {dhcp_mac} udp sport 67 udp dport 68 return");
            }
            line!("    meta mark & {MARK_INVALID} != 0 drop");
            line!("    meta mark & {MARK_ESTABLISHED} != 0 return");
            for stmt in &ingress {
                line!("    {stmt}");
            }
            line!("    drop");
            line!("  }}");
            egress_dispatch.push(format!("\"{dev}\" : jump e_{dev}"));
            ingress_dispatch.push(format!("\"{dev}\" : jump i_{dev}"));
        }
    }
    line!("  chain forward {{");
    line!("    type filter hook forward priority 100; policy accept;");
    for net in nets {
        // Every host of a stretched subnet runs its own DHCP server (same IP and MAC) for its
        // own ports; keep each one off the tunnel so it never answers another host's clients
        // and the bridges never learn the server MAC behind the tunnel.
        if let (Some(vx), Some(dhcp_mac)) = (&net.vxlan, &net.dhcp_mac) {
            line!("    iifname \"{vx}\" ether saddr {dhcp_mac} drop");
            line!("    oifname \"{vx}\" ether saddr {dhcp_mac} drop");
            line!("    oifname \"{vx}\" udp dport 67 drop");
        }
    }
    // Verdict maps: one hash lookup per direction however many ports the host has.
    if !egress_dispatch.is_empty() {
        line!("    iifname vmap {{ {} }}", egress_dispatch.join(", "));
        line!("    oifname vmap {{ {} }}", ingress_dispatch.join(", "));
    }
    line!("  }}");
    line!("}}");
    Some(out)
}

/// The router namespace's NAT and edge filter, or None without an external gateway.
pub fn render_router(
    internal: &[(Ipv4Addr, u8)],
    external: Option<&ExternalGateway>,
    floating_ips: &[FloatingIpPlan],
) -> Option<String> {
    let ext = external?;
    let e = names::ROUTER_EXTERNAL_IFNAME;
    let mut out = String::new();
    let w = &mut out;
    macro_rules! line {
        ($($arg:tt)*) => { let _ = writeln!(w, $($arg)*); };
    }
    line!("table ip {TABLE} {{");
    line!("  chain prerouting {{");
    line!("    type nat hook prerouting priority -100; policy accept;");
    for fip in floating_ips {
        line!(
            "    iifname \"{e}\" ip daddr {} dnat to {}",
            fip.external_ip,
            fip.internal_ip
        );
    }
    line!("  }}");
    line!("  chain postrouting {{");
    line!("    type nat hook postrouting priority 100; policy accept;");
    for fip in floating_ips {
        line!(
            "    oifname \"{e}\" ip saddr {} snat to {}",
            fip.internal_ip,
            fip.external_ip
        );
    }
    if ext.snat && !internal.is_empty() {
        let nets: Vec<String> = internal.iter().map(|(n, l)| format!("{n}/{l}")).collect();
        line!(
            "    oifname \"{e}\" ip saddr {{ {} }} snat to {}",
            nets.join(", "),
            ext.ip
        );
    }
    line!("  }}");
    // Without this, anyone on the external network who routes a tenant CIDR via the router
    // would reach tenant ports directly.
    line!("  chain forward {{");
    line!("    type filter hook forward priority 0; policy accept;");
    line!("    iifname \"{e}\" ct state established,related accept");
    line!("    iifname \"{e}\" ct status dnat accept");
    line!("    iifname \"{e}\" drop");
    line!("  }}");
    line!("}}");
    Some(out)
}

/// An `nft -f` script that replaces `family TABLE` with `body` (or just removes it) in one
/// transaction.
pub fn replace_script(families: &[&str], body: Option<&str>) -> String {
    let mut s = String::new();
    for family in families {
        let _ = writeln!(s, "add table {family} {TABLE}");
        let _ = writeln!(s, "delete table {family} {TABLE}");
    }
    if let Some(body) = body {
        s.push_str(body);
    }
    s
}

/// Our tables' text out of `nft list ruleset` (in `families` order), or None if one is
/// missing. (`nft -f` with `list` commands fails on nftables 1.0.6, hence one full listing.)
pub fn extract_tables(ruleset: &str, families: &[&str]) -> Option<String> {
    let mut out = String::new();
    for family in families {
        let header = format!("table {family} {TABLE} {{");
        let start = ruleset.lines().position(|l| l == header)?;
        for line in ruleset.lines().skip(start) {
            out.push_str(line);
            out.push('\n');
            if line == "}" {
                break;
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        direction: Direction,
        protocol: Protocol,
        ports: Option<(u16, u16)>,
        remote: Remote,
    ) -> RulePlan {
        RulePlan {
            direction,
            protocol,
            port_min: ports.map(|p| p.0),
            port_max: ports.map(|p| p.1),
            remote,
        }
    }

    #[test]
    fn extracts_our_tables_from_a_listing() {
        let ruleset = "table inet other {\n}\ntable ip ultracloud {\n\tchain zone {\n\t}\n}\ntable bridge ultracloud {\n\tchain forward {\n\t}\n}\n";
        assert_eq!(
            extract_tables(ruleset, &["ip", "bridge"]).unwrap(),
            "table ip ultracloud {\n\tchain zone {\n\t}\n}\ntable bridge ultracloud {\n\tchain forward {\n\t}\n}\n"
        );
        assert_eq!(extract_tables(ruleset, &["inet"]), None);
    }

    #[test]
    fn rules_render_to_nft_statements() {
        let mut groups = BTreeMap::new();
        groups.insert(
            "web".to_string(),
            GroupRules {
                set_name: "sg_web0000000".into(),
                rules: vec![],
                members: vec![],
            },
        );
        let r = rule(
            Direction::Ingress,
            Protocol::Tcp,
            Some((80, 81)),
            Remote::Group("web".into()),
        );
        assert_eq!(
            rule_statement(&r, &groups).unwrap(),
            "ip saddr @sg_web0000000 tcp dport 80-81 return"
        );
        let r = rule(
            Direction::Egress,
            Protocol::Udp,
            Some((53, 53)),
            Remote::Cidr("10.0.0.0/8".into()),
        );
        assert_eq!(
            rule_statement(&r, &groups).unwrap(),
            "ip daddr 10.0.0.0/8 udp dport 53 return"
        );
        let r = rule(Direction::Egress, Protocol::Any, None, Remote::Any);
        assert_eq!(rule_statement(&r, &groups).unwrap(), "return");
        let r = rule(Direction::Ingress, Protocol::Icmp, None, Remote::Any);
        assert_eq!(
            rule_statement(&r, &groups).unwrap(),
            "meta l4proto icmp return"
        );
        assert!(
            rule_statement(
                &rule(Direction::Ingress, Protocol::Tcp, Some((9, 8)), Remote::Any),
                &groups
            )
            .is_err()
        );
        assert!(
            rule_statement(
                &rule(
                    Direction::Ingress,
                    Protocol::Icmp,
                    Some((9, 9)),
                    Remote::Any
                ),
                &groups
            )
            .is_err()
        );
        assert!(
            rule_statement(
                &rule(
                    Direction::Ingress,
                    Protocol::Any,
                    None,
                    Remote::Group("nope".into())
                ),
                &groups
            )
            .is_err()
        );
        assert!(
            rule_statement(
                &rule(
                    Direction::Ingress,
                    Protocol::Any,
                    None,
                    Remote::Cidr("10.0.0.1/8".into())
                ),
                &groups
            )
            .is_err()
        );
    }
}
