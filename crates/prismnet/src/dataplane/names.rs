//! Names of the kernel objects the dataplane owns. Linux ifnames are at most 15 bytes, so a
//! device is a 3-letter kind plus the first 10 alphanumerics of its resource id (13 bytes).
//! Network-namespace names are global (/run/netns) and carry the agent's prefix.

/// Bridge of a subnet.
pub const BRIDGE: &str = "ucb";
/// VXLAN device of a subnet that spans hosts.
pub const VXLAN: &str = "ucx";
/// Tap of a VM port.
pub const TAP: &str = "uct";
/// A VM port's second tap name (a live migration's destination; see `Attachment`).
pub const TAP_ALTERNATE: &str = "ucu";
/// Host end of a netns port's veth.
pub const PORT_VETH: &str = "ucp";
/// Host end of a subnet's DHCP server leg.
pub const DHCP_LEG: &str = "ucd";
/// Host end of a router's leg into a subnet (one router per subnet).
pub const ROUTER_LEG: &str = "ucg";
/// Host end of a router's external leg.
pub const EXTERNAL_LEG: &str = "uco";

const KINDS: [&str; 8] = [
    BRIDGE,
    VXLAN,
    TAP,
    TAP_ALTERNATE,
    PORT_VETH,
    DHCP_LEG,
    ROUTER_LEG,
    EXTERNAL_LEG,
];

/// Interface names inside the DHCP and router namespaces.
pub const DHCP_IFNAME: &str = "eth0";
pub const ROUTER_EXTERNAL_IFNAME: &str = "ext0";
pub const ROUTER_INTERFACE_PREFIX: &str = "ri";

/// The first 10 alphanumerics of an id, lowercased, padded with '0' so every device name we
/// own has the same length (which is what lets cleanup recognise them).
pub fn id10(id: &str) -> Option<String> {
    let mut s: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .take(10)
        .collect();
    if s.is_empty() {
        return None;
    }
    while s.len() < 10 {
        s.push('0');
    }
    Some(s)
}

pub fn device(kind: &str, id10: &str) -> String {
    format!("{kind}{id10}")
}

/// Whether a host-side device name is one of ours (kind + 10 lowercase alphanumerics).
pub fn is_managed_device(name: &str) -> bool {
    name.len() == 13
        && KINDS.iter().any(|k| name.starts_with(k))
        && name[3..]
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

pub fn dhcp_netns(prefix: &str, id10: &str) -> String {
    format!("{prefix}d-{id10}")
}

pub fn router_netns(prefix: &str, id10: &str) -> String {
    format!("{prefix}r-{id10}")
}

/// Whether a netns name is a DHCP or router namespace of the agent with this prefix.
pub fn is_managed_netns(prefix: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let Some(id) = rest.strip_prefix("d-").or_else(|| rest.strip_prefix("r-")) else {
        return false;
    };
    id.len() == 10
        && id
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
}

pub fn router_interface_ifname(subnet_id10: &str) -> String {
    format!("{ROUTER_INTERFACE_PREFIX}{subnet_id10}")
}

/// Normalised (lowercase) MAC if `s` is a unicast Ethernet address.
pub fn unicast_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return None;
    }
    let first = u8::from_str_radix(parts[0], 16).ok()?;
    if first & 1 == 1 {
        return None;
    }
    Some(s.to_ascii_lowercase())
}

/// Parses "a.b.c.d/n" into the network address and prefix length (host bits must be zero).
pub fn parse_cidr(s: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = prefix_mask(len);
    if u32::from(addr) & !mask != 0 {
        return None;
    }
    Some((addr, len))
}

pub fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

pub fn contains(net: (std::net::Ipv4Addr, u8), ip: std::net::Ipv4Addr) -> bool {
    let mask = prefix_mask(net.1);
    u32::from(ip) & mask == u32::from(net.0) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_limits_and_are_recognised() {
        let id = id10("3F2A1B4C-9d8e-4f00-a000-000000000001").unwrap();
        assert_eq!(id, "3f2a1b4c9d");
        let dev = device(BRIDGE, &id);
        assert!(dev.len() <= 15);
        assert!(is_managed_device(&dev));
        assert!(!is_managed_device("ucext"));
        assert!(!is_managed_device("ucbr0"));
        assert!(!is_managed_device("eth0"));
        assert_eq!(id10("ab").unwrap(), "ab00000000");
        assert!(id10("--").is_none());
        assert!(is_managed_netns("t1", &dhcp_netns("t1", &id)));
        assert!(is_managed_netns("t1", &router_netns("t1", &id)));
        assert!(!is_managed_netns("t1", &router_netns("t2", &id)));
        assert!(!is_managed_netns("t", &router_netns("t1", &id)));
    }

    #[test]
    fn cidrs_and_macs() {
        assert_eq!(
            parse_cidr("10.0.0.0/24"),
            Some(("10.0.0.0".parse().unwrap(), 24))
        );
        assert_eq!(parse_cidr("10.0.0.1/24"), None);
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert!(contains(
            parse_cidr("10.0.0.0/24").unwrap(),
            "10.0.0.7".parse().unwrap()
        ));
        assert!(!contains(
            parse_cidr("10.0.0.0/24").unwrap(),
            "10.0.1.7".parse().unwrap()
        ));
        assert_eq!(
            unicast_mac("02:AA:00:00:00:01").as_deref(),
            Some("02:aa:00:00:00:01")
        );
        assert_eq!(unicast_mac("01:00:00:00:00:01"), None);
        assert_eq!(unicast_mac("02:00:00:00:01"), None);
    }
}
