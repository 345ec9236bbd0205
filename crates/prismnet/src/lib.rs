//! prismnet: tenant networks (VPCs, subnets, IPAM, ports, routers, security groups, floating
//! IPs, service IP pools) kept in prismnet's flaredb namespace, and the host agent that makes
//! each host's Linux dataplane match them.
//!
//! - [`api`]: request/response types and the OpenAPI description;
//! - [`service`]: the domain core (validation, IPAM, idempotency) over [`store`];
//! - [`planner`]: the model → one [`dataplane::plan::HostPlan`] per host (pure);
//! - [`server`]: thin HTTP handlers and start-up; [`client`]: the typed client;
//! - [`agent`]: the per-host loop (fetch plan, converge, report port status);
//! - [`dataplane`]: `converge(&HostPlan)` over ip/nft/dnsmasq.

pub mod agent;
pub mod api;
pub mod client;
pub mod config;
pub mod dataplane;
pub mod net;
pub mod planner;
pub mod server;
pub mod service;
pub mod store;

pub use config::{AgentConfig, PrismnetConfig};
