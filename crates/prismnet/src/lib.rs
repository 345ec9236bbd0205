//! prismnet: tenant networks (VPCs, subnets, IPAM, ports, routers, security groups, floating IPs) and the Linux dataplane agent.
pub mod dataplane;
