//! IPv4 networks and MAC addresses: parsing and the arithmetic IPAM needs.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network in canonical form (host bits zero), e.g. `10.0.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n`; host bits must be zero (so a typo is caught, not silently masked).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, len) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not a CIDR (expected a.b.c.d/len)"))?;
        let addr = Ipv4Addr::from_str(addr.trim())
            .map_err(|_| format!("`{text}`: `{addr}` is not an IPv4 address"))?;
        let prefix_len: u8 = len
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("`{text}`: prefix length must be 0..=32"))?;
        let cidr = Self {
            network: addr,
            prefix_len,
        };
        if u32::from(addr) & !cidr.mask() != 0 {
            return Err(format!(
                "`{text}` has host bits set; did you mean {}/{prefix_len}?",
                Ipv4Addr::from(u32::from(addr) & cidr.mask())
            ));
        }
        Ok(cidr)
    }

    pub fn mask(&self) -> u32 {
        if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix_len)
        }
    }

    pub fn first(&self) -> u32 {
        u32::from(self.network)
    }

    pub fn last(&self) -> u32 {
        self.first() | !self.mask()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == self.first()
    }

    /// Whether `other` lies entirely inside this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix_len >= self.prefix_len && self.contains(other.network)
    }

    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// Addresses a host may use: all but the network and broadcast addresses (/31 and /32
    /// have no such addresses).
    pub fn usable(&self) -> (u32, u32) {
        if self.prefix_len >= 31 {
            (self.first(), self.last())
        } else {
            (self.first() + 1, self.last() - 1)
        }
    }

    pub fn is_usable(&self, ip: Ipv4Addr) -> bool {
        let (lo, hi) = self.usable();
        (lo..=hi).contains(&u32::from(ip))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

pub fn parse_ip(what: &str, text: &str) -> Result<Ipv4Addr, String> {
    Ipv4Addr::from_str(text.trim()).map_err(|_| format!("{what}: `{text}` is not an IPv4 address"))
}

/// Normalizes a MAC to lowercase `aa:bb:cc:dd:ee:ff`; rejects multicast and all-zero MACs,
/// which a port can never own.
pub fn parse_mac(text: &str) -> Result<String, String> {
    let parts: Vec<&str> = text.trim().split([':', '-']).collect();
    let bytes: Option<Vec<u8>> = (parts.len() == 6)
        .then(|| {
            parts
                .iter()
                .map(|p| {
                    (p.len() == 2)
                        .then(|| u8::from_str_radix(p, 16).ok())
                        .flatten()
                })
                .collect()
        })
        .flatten();
    let bytes =
        bytes.ok_or_else(|| format!("`{text}` is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
    if bytes[0] & 1 == 1 {
        return Err(format!(
            "`{text}` is a multicast MAC; a port needs a unicast one"
        ));
    }
    if bytes.iter().all(|b| *b == 0) {
        return Err(format!("`{text}` is the all-zero MAC"));
    }
    Ok(format_mac(&bytes))
}

pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A random locally administered unicast MAC (`fa:16:3e` is OpenStack's; ours starts `02:`
/// with the locally-administered bit set and the multicast bit clear).
pub fn random_mac() -> String {
    let tail: [u8; 5] = rand::random();
    let mut bytes = vec![0x02];
    bytes.extend_from_slice(&tail);
    format_mac(&bytes)
}

/// A MAC derived from an id (stable across calls), for router legs and DHCP servers.
pub fn derived_mac(seed: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    format_mac(&[0x02, b[0], b[1], b[2], b[3], b[4]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_and_math() {
        let c = Cidr::parse("10.0.0.0/24").unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/24");
        assert_eq!(
            c.usable(),
            (
                u32::from(Ipv4Addr::new(10, 0, 0, 1)),
                u32::from(Ipv4Addr::new(10, 0, 0, 254))
            )
        );
        assert!(
            Cidr::parse("10.0.0.1/24")
                .unwrap_err()
                .contains("host bits")
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0/24").is_err());
        assert!(Cidr::parse("banana").is_err());
        let vpc = Cidr::parse("10.0.0.0/16").unwrap();
        assert!(vpc.covers(&c));
        assert!(!c.covers(&vpc));
        assert!(!vpc.covers(&Cidr::parse("10.1.0.0/24").unwrap()));
        assert!(c.overlaps(&Cidr::parse("10.0.0.128/25").unwrap()));
        assert!(!c.overlaps(&Cidr::parse("10.0.1.0/24").unwrap()));
        assert!(c.is_usable(Ipv4Addr::new(10, 0, 0, 9)));
        assert!(!c.is_usable(Ipv4Addr::new(10, 0, 0, 255)));
        assert!(!c.is_usable(Ipv4Addr::new(10, 0, 0, 0)));
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("AA-bb-CC-dd-EE-f0").unwrap(), "aa:bb:cc:dd:ee:f0");
        assert!(parse_mac("01:00:5e:00:00:01").is_err());
        assert!(parse_mac("00:00:00:00:00:00").is_err());
        assert!(parse_mac("zz:00:00:00:00:01").is_err());
        let m = random_mac();
        assert_eq!(parse_mac(&m).unwrap(), m);
        assert_eq!(derived_mac("x"), derived_mac("x"));
        assert_ne!(derived_mac("x"), derived_mac("y"));
    }
}
