//! Running `ip`, `bridge`, `nft` as subprocesses and reading their JSON. Subprocesses inherit
//! the calling thread's network namespace, which is what makes a converge thread that joined a
//! "host" netns manage that host.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use serde_json::Value;

/// Paths of the tools the dataplane drives.
#[derive(Debug, Clone)]
pub struct Tools {
    pub ip: String,
    pub bridge: String,
    pub nft: String,
    pub dnsmasq: String,
}

impl Default for Tools {
    fn default() -> Self {
        Self {
            ip: "ip".into(),
            bridge: "bridge".into(),
            nft: "nft".into(),
            dnsmasq: "dnsmasq".into(),
        }
    }
}

/// Runs a program; Ok(stdout) on exit 0, Err("<command>: <stderr>") otherwise.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    run_with_input(program, args, None)
}

pub fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let describe = || format!("{program} {}", args.join(" "));
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", describe()))?;
    if let Some(input) = input {
        // Dropped at the end of the block so the child sees EOF.
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{}: writing stdin: {e}", describe()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", describe()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {} {}",
            describe(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One network device as `ip -j -d addr show` describes it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Link {
    pub name: String,
    /// linkinfo.info_kind: "bridge", "vxlan", "veth", "tun", ... ("" for plain devices).
    pub kind: String,
    /// For tun devices: "tap" or "tun".
    pub tun_type: Option<String>,
    pub master: Option<String>,
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    pub mac: String,
    pub vxlan: Option<VxlanInfo>,
    /// Bridges: whether bridged IPv4 goes through the ip hooks (conntrack) for this bridge.
    pub nf_call_iptables: Option<bool>,
    pub addrs: Vec<(Ipv4Addr, u8)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VxlanInfo {
    pub id: u32,
    pub local: Option<Ipv4Addr>,
    pub port: u16,
    pub learning: bool,
}

pub fn parse_links(json: &str) -> Result<BTreeMap<String, Link>, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| format!("ip -j output: {e}"))?;
    let mut links = BTreeMap::new();
    for item in value.as_array().into_iter().flatten() {
        let Some(name) = item.get("ifname").and_then(Value::as_str) else {
            continue;
        };
        let info = item.get("linkinfo");
        let kind = info
            .and_then(|i| i.get("info_kind"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let data = info.and_then(|i| i.get("info_data"));
        let tun_type = if kind == "tun" {
            data.and_then(|d| d.get("type"))
                .and_then(Value::as_str)
                .map(str::to_string)
        } else {
            None
        };
        let vxlan = if kind == "vxlan" {
            data.map(|d| VxlanInfo {
                id: d.get("id").and_then(Value::as_u64).unwrap_or(0) as u32,
                local: d
                    .get("local")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok()),
                port: d.get("port").and_then(Value::as_u64).unwrap_or(0) as u16,
                learning: d.get("learning").and_then(Value::as_bool).unwrap_or(true),
            })
        } else {
            None
        };
        let nf_call_iptables = if kind == "bridge" {
            data.and_then(|d| d.get("nf_call_iptables"))
                .and_then(Value::as_u64)
                .map(|v| v == 1)
        } else {
            None
        };
        let up = item
            .get("flags")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("UP")));
        let addrs = item
            .get("addr_info")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|a| a.get("family").and_then(Value::as_str) == Some("inet"))
            .filter_map(|a| {
                let ip = a.get("local")?.as_str()?.parse().ok()?;
                let len = a.get("prefixlen")?.as_u64()? as u8;
                Some((ip, len))
            })
            .collect();
        links.insert(
            name.to_string(),
            Link {
                name: name.to_string(),
                kind,
                tun_type,
                master: item
                    .get("master")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                mtu: item.get("mtu").and_then(Value::as_u64).unwrap_or(0) as u32,
                up,
                mac: item
                    .get("address")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_ascii_lowercase(),
                vxlan,
                nf_call_iptables,
                addrs,
            },
        );
    }
    Ok(links)
}

/// Static FDB entries of a VXLAN device that point at a remote VTEP: (mac, vtep).
pub fn parse_vxlan_fdb(json: &str) -> Result<Vec<(String, Ipv4Addr)>, String> {
    let value: Value = serde_json::from_str(json).map_err(|e| format!("bridge -j output: {e}"))?;
    Ok(value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let mac = e.get("mac")?.as_str()?.to_ascii_lowercase();
            let dst = e.get("dst")?.as_str()?.parse().ok()?;
            Some((mac, dst))
        })
        .collect())
}

/// The default route's gateway from `ip -j route show default`.
pub fn parse_default_gateway(json: &str) -> Option<Ipv4Addr> {
    let value: Value = serde_json::from_str(json).ok()?;
    value
        .as_array()?
        .iter()
        .find_map(|r| r.get("gateway")?.as_str()?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        let json = r#"[{"ifindex":2,"ifname":"ucxaaa","flags":["BROADCAST","MULTICAST","UP"],"mtu":1450,"master":"ucbaaa","address":"66:DB:df:ac:c7:02",
          "linkinfo":{"info_kind":"vxlan","info_data":{"id":42,"local":"10.1.1.1","port":4789,"learning":false}}},
          {"ifname":"uctaaa","flags":[],"mtu":1500,"address":"aa:bb:cc:dd:ee:ff","linkinfo":{"info_kind":"tun","info_data":{"type":"tap"}}},
          {"ifname":"eth0","flags":["UP"],"mtu":1500,"address":"02:00:00:00:00:01","addr_info":[{"family":"inet","local":"10.0.0.2","prefixlen":24},{"family":"inet6","local":"fe80::1","prefixlen":64}]}]"#;
        let links = parse_links(json).unwrap();
        let vx = &links["ucxaaa"];
        assert_eq!(vx.kind, "vxlan");
        assert!(vx.up);
        assert_eq!(vx.mac, "66:db:df:ac:c7:02");
        assert_eq!(vx.master.as_deref(), Some("ucbaaa"));
        assert_eq!(
            vx.vxlan,
            Some(VxlanInfo {
                id: 42,
                local: Some("10.1.1.1".parse().unwrap()),
                port: 4789,
                learning: false
            })
        );
        assert_eq!(links["uctaaa"].tun_type.as_deref(), Some("tap"));
        assert!(!links["uctaaa"].up);
        assert_eq!(links["eth0"].addrs, vec![("10.0.0.2".parse().unwrap(), 24)]);
    }
}
