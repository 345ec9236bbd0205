//! `ultracloud net …`: VPCs, subnets, ports, security groups, routers, floating IPs and
//! address pools over prismnet's API.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use prismnet::client::PrismnetClient;
use serde_json::{Value, json};
use uc_runtime::client::ClientOptions;
use uc_runtime::secret::read_secret_file;

use crate::Failure;
use crate::cli::{ClientArgs, OutputFormat};
use crate::output;

#[derive(Debug, Args)]
pub struct NetArgs {
    /// prismnet's URL.
    #[arg(long, default_value = "http://127.0.0.1:8084", global = true)]
    pub endpoint: String,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Makes a create safe to repeat: the same key returns the first result.
    #[arg(long, global = true)]
    pub idempotency_key: Option<String>,
    #[command(subcommand)]
    pub command: NetCommand,
}

#[derive(Debug, Subcommand)]
pub enum NetCommand {
    /// Virtual private clouds (an IPv4 range holding subnets).
    Vpc {
        #[command(subcommand)]
        command: VpcCommand,
    },
    Subnet {
        #[command(subcommand)]
        command: SubnetCommand,
    },
    Port {
        #[command(subcommand)]
        command: PortCommand,
    },
    /// Security groups and their rules.
    Sg {
        #[command(subcommand)]
        command: SgCommand,
    },
    Router {
        #[command(subcommand)]
        command: RouterCommand,
    },
    /// Floating IPs (DNAT from an external pool to a port).
    Fip {
        #[command(subcommand)]
        command: FipCommand,
    },
    /// Address pools (operator): external (gateways, floating IPs) and service (VIPs).
    Pool {
        #[command(subcommand)]
        command: PoolCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum VpcCommand {
    Create {
        name: String,
        #[arg(long)]
        cidr: String,
    },
    List,
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubnetCommand {
    Create {
        name: String,
        #[arg(long)]
        vpc: String,
        #[arg(long)]
        cidr: String,
        /// Default: the first usable address; `none`: no gateway.
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long)]
        no_dhcp: bool,
        /// DNS server handed out by DHCP (repeatable).
        #[arg(long = "dns")]
        dns: Vec<String>,
    },
    List {
        #[arg(long)]
        vpc: Option<String>,
    },
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PortCommand {
    Create {
        #[arg(long)]
        subnet: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        mac: Option<String>,
        /// Fixed address (repeatable); default: one from IPAM.
        #[arg(long = "ip")]
        ips: Vec<String>,
        /// Security group (repeatable); default: the VPC's default group.
        #[arg(long = "sg")]
        sgs: Vec<String>,
        #[arg(long)]
        no_port_security: bool,
        /// Bind to this host ...
        #[arg(long, requires = "attach")]
        host: Option<String>,
        /// ... as `tap` or `netns:<name>`.
        #[arg(long, requires = "host")]
        attach: Option<String>,
        #[arg(long)]
        device_owner: Option<String>,
        #[arg(long)]
        device_id: Option<String>,
    },
    List {
        #[arg(long)]
        subnet: Option<String>,
        #[arg(long)]
        host: Option<String>,
    },
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Bind a port to a host and attachment (`tap` or `netns:<name>`).
    Bind {
        id: String,
        #[arg(long)]
        host: String,
        #[arg(long)]
        attach: String,
    },
    Unbind {
        id: String,
    },
    /// Replace a port's security groups (none given: no groups).
    SetSg {
        id: String,
        #[arg(long = "sg")]
        sgs: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SgCommand {
    Create {
        name: String,
        #[arg(long)]
        vpc: String,
    },
    List {
        #[arg(long)]
        vpc: Option<String>,
    },
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Add a rule: `--direction ingress --protocol tcp --port 80` or `--port 8000-8100`.
    RuleAdd {
        sg: String,
        #[arg(long)]
        direction: String,
        #[arg(long, default_value = "any")]
        protocol: String,
        #[arg(long)]
        port: Option<String>,
        #[arg(long, conflicts_with = "remote_group")]
        remote_cidr: Option<String>,
        #[arg(long)]
        remote_group: Option<String>,
    },
    RuleDelete {
        sg: String,
        rule: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RouterCommand {
    Create {
        name: String,
        #[arg(long)]
        vpc: String,
        /// Host running the router; default: the configured network host.
        #[arg(long)]
        host: Option<String>,
        /// External pool for the gateway address.
        #[arg(long)]
        external_pool: Option<String>,
        #[arg(long)]
        no_snat: bool,
    },
    List,
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    AddInterface {
        id: String,
        #[arg(long)]
        subnet: String,
    },
    RemoveInterface {
        id: String,
        #[arg(long)]
        subnet: String,
    },
    /// Set (or move) the external gateway.
    SetGateway {
        id: String,
        #[arg(long)]
        pool: String,
        #[arg(long)]
        no_snat: bool,
    },
    ClearGateway {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum FipCommand {
    Create {
        #[arg(long)]
        pool: String,
        #[arg(long)]
        port: Option<String>,
    },
    List,
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    Associate {
        id: String,
        #[arg(long)]
        port: String,
    },
    Disassociate {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    Create {
        name: String,
        #[arg(long)]
        cidr: String,
        /// `external` or `service`.
        #[arg(long)]
        kind: String,
        #[arg(long)]
        gateway: Option<String>,
    },
    List,
    Get {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Allocate a VIP from a service pool.
    Allocate {
        pool: String,
        #[arg(long)]
        ip: Option<String>,
        #[arg(long)]
        owner: Option<String>,
    },
    Allocations {
        pool: String,
    },
    Release {
        pool: String,
        ip: String,
    },
}

fn runtime(e: uc_runtime::client::ClientError) -> Failure {
    Failure::Runtime(anyhow!(e))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(_) => match (v.get("host"), v.get("attachment")) {
            (Some(h), Some(a)) => format!("{}@{}", cell(a), cell(h)),
            _ => v.to_string(),
        },
        other => other.to_string(),
    }
}

/// Prints one object or a list (`items`) with the given columns.
fn show(format: OutputFormat, value: &Value, columns: &[&str]) {
    let items: Vec<&Value> = match value.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![value],
    };
    let rows = items
        .iter()
        .map(|item| columns.iter().map(|c| cell(&item[*c])).collect())
        .collect();
    output::print(format, value, columns, rows);
}

/// Every page of a list, as one `{"items": [...]}`.
async fn list(api: &PrismnetClient, path: &str) -> Result<Value, Failure> {
    let items: Vec<Value> = api.list_all(path).await.map_err(runtime)?;
    Ok(json!({ "items": items }))
}

fn port_range(text: &Option<String>) -> Result<(Option<u16>, Option<u16>), Failure> {
    let Some(t) = text else {
        return Ok((None, None));
    };
    let parse = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| Failure::Config(format!("--port {t}: not a port or range")))
    };
    match t.split_once('-') {
        Some((a, b)) => Ok((Some(parse(a)?), Some(parse(b)?))),
        None => {
            let p = parse(t)?;
            Ok((Some(p), Some(p)))
        }
    }
}

pub async fn run(args: NetArgs, format: OutputFormat) -> Result<(), Failure> {
    let token =
        read_secret_file(&args.client.token_file).map_err(|e| Failure::Config(e.to_string()))?;
    let api = PrismnetClient::new(
        &args.endpoint,
        ClientOptions {
            token: Some(token),
            ca_file: args.client.ca_file.clone(),
            ..Default::default()
        },
    )
    .map_err(|e| Failure::Config(e.to_string()))?;
    let key = args.idempotency_key.as_deref();
    let deleted = |id: &str| json!({ "deleted": id });
    match args.command {
        NetCommand::Vpc { command } => {
            let v = match command {
                VpcCommand::Create { name, cidr } => api
                    .create("/v1/vpcs", &json!({"name": name, "cidr": cidr}), key)
                    .await
                    .map_err(runtime)?,
                VpcCommand::List => list(&api, "/v1/vpcs").await?,
                VpcCommand::Get { id } => {
                    api.get(&format!("/v1/vpcs/{id}")).await.map_err(runtime)?
                }
                VpcCommand::Delete { id } => {
                    api.delete(&format!("/v1/vpcs/{id}"))
                        .await
                        .map_err(runtime)?;
                    deleted(&id)
                }
            };
            show(
                format,
                &v,
                &["id", "name", "cidr", "default_security_group", "deleted"],
            );
        }
        NetCommand::Subnet { command } => {
            let v = match command {
                SubnetCommand::Create {
                    name,
                    vpc,
                    cidr,
                    gateway,
                    no_dhcp,
                    dns,
                } => api
                    .create(
                        "/v1/subnets",
                        &json!({"name": name, "vpc_id": vpc, "cidr": cidr, "gateway": gateway,
                                "dhcp": !no_dhcp, "dns_servers": dns}),
                        key,
                    )
                    .await
                    .map_err(runtime)?,
                SubnetCommand::List { vpc } => {
                    let path = match vpc {
                        Some(v) => format!("/v1/subnets?vpc_id={v}"),
                        None => "/v1/subnets".into(),
                    };
                    list(&api, &path).await?
                }
                SubnetCommand::Get { id } => api
                    .get(&format!("/v1/subnets/{id}"))
                    .await
                    .map_err(runtime)?,
                SubnetCommand::Delete { id } => {
                    api.delete(&format!("/v1/subnets/{id}"))
                        .await
                        .map_err(runtime)?;
                    deleted(&id)
                }
            };
            show(
                format,
                &v,
                &[
                    "id", "name", "vpc_id", "cidr", "gateway", "dhcp", "vni", "deleted",
                ],
            );
        }
        NetCommand::Port { command } => {
            let v = match command {
                PortCommand::Create {
                    subnet,
                    name,
                    mac,
                    ips,
                    sgs,
                    no_port_security,
                    host,
                    attach,
                    device_owner,
                    device_id,
                } => {
                    let mut body = json!({"subnet_id": subnet, "name": name, "mac": mac,
                        "port_security": !no_port_security, "device_owner": device_owner,
                        "device_id": device_id});
                    if !ips.is_empty() {
                        body["ips"] = json!(ips);
                    }
                    if !sgs.is_empty() {
                        body["security_groups"] = json!(sgs);
                    }
                    if let (Some(h), Some(a)) = (host, attach) {
                        body["binding"] = json!({"host": h, "attachment": a});
                    }
                    api.create("/v1/ports", &body, key).await.map_err(runtime)?
                }
                PortCommand::List { subnet, host } => {
                    let mut q = Vec::new();
                    if let Some(s) = subnet {
                        q.push(format!("subnet_id={s}"));
                    }
                    if let Some(h) = host {
                        q.push(format!("host={h}"));
                    }
                    let path = if q.is_empty() {
                        "/v1/ports".to_owned()
                    } else {
                        format!("/v1/ports?{}", q.join("&"))
                    };
                    list(&api, &path).await?
                }
                PortCommand::Get { id } => {
                    api.get(&format!("/v1/ports/{id}")).await.map_err(runtime)?
                }
                PortCommand::Delete { id } => {
                    api.delete(&format!("/v1/ports/{id}"))
                        .await
                        .map_err(runtime)?;
                    deleted(&id)
                }
                PortCommand::Bind { id, host, attach } => api
                    .put(
                        &format!("/v1/ports/{id}"),
                        &json!({"binding": {"host": host, "attachment": attach}}),
                    )
                    .await
                    .map_err(runtime)?,
                PortCommand::Unbind { id } => api
                    .put(&format!("/v1/ports/{id}"), &json!({"unbind": true}))
                    .await
                    .map_err(runtime)?,
                PortCommand::SetSg { id, sgs } => api
                    .put(&format!("/v1/ports/{id}"), &json!({"security_groups": sgs}))
                    .await
                    .map_err(runtime)?,
            };
            show(
                format,
                &v,
                &[
                    "id",
                    "name",
                    "subnet_id",
                    "mac",
                    "ips",
                    "binding",
                    "status",
                    "device",
                    "deleted",
                ],
            );
        }
        NetCommand::Sg { command } => {
            let v = match command {
                SgCommand::Create { name, vpc } => api
                    .create(
                        "/v1/security-groups",
                        &json!({"name": name, "vpc_id": vpc}),
                        key,
                    )
                    .await
                    .map_err(runtime)?,
                SgCommand::List { vpc } => {
                    let path = match vpc {
                        Some(v) => format!("/v1/security-groups?vpc_id={v}"),
                        None => "/v1/security-groups".into(),
                    };
                    list(&api, &path).await?
                }
                SgCommand::Get { id } => {
                    let sg: Value = api
                        .get(&format!("/v1/security-groups/{id}"))
                        .await
                        .map_err(runtime)?;
                    if format == OutputFormat::Table {
                        // The rules are what one looks at.
                        show(
                            format,
                            &json!({"items": sg["rules"]}),
                            &[
                                "id",
                                "direction",
                                "protocol",
                                "port_min",
                                "port_max",
                                "remote_cidr",
                                "remote_group",
                            ],
                        );
                        return Ok(());
                    }
                    sg
                }
                SgCommand::Delete { id } => {
                    api.delete(&format!("/v1/security-groups/{id}"))
                        .await
                        .map_err(runtime)?;
                    deleted(&id)
                }
                SgCommand::RuleAdd {
                    sg,
                    direction,
                    protocol,
                    port,
                    remote_cidr,
                    remote_group,
                } => {
                    let (lo, hi) = port_range(&port)?;
                    let rule: Value = api
                        .create(
                            &format!("/v1/security-groups/{sg}/rules"),
                            &json!({"direction": direction, "protocol": protocol, "port_min": lo,
                                    "port_max": hi, "remote_cidr": remote_cidr, "remote_group": remote_group}),
                            None,
                        )
                        .await
                        .map_err(runtime)?;
                    show(
                        format,
                        &rule,
                        &[
                            "id",
                            "direction",
                            "protocol",
                            "port_min",
                            "port_max",
                            "remote_cidr",
                            "remote_group",
                        ],
                    );
                    return Ok(());
                }
                SgCommand::RuleDelete { sg, rule } => {
                    api.delete(&format!("/v1/security-groups/{sg}/rules/{rule}"))
                        .await
                        .map_err(runtime)?;
                    deleted(&rule)
                }
            };
            show(
                format,
                &v,
                &["id", "name", "vpc_id", "is_default", "deleted"],
            );
        }
        NetCommand::Router { command } => {
            let v = match command {
                RouterCommand::Create {
                    name,
                    vpc,
                    host,
                    external_pool,
                    no_snat,
                } => {
                    let external = external_pool.map(|p| json!({"pool": p, "snat": !no_snat}));
                    api.create(
                        "/v1/routers",
                        &json!({"name": name, "vpc_id": vpc, "host": host, "external": external}),
                        key,
                    )
                    .await
                    .map_err(runtime)?
                }
                RouterCommand::List => list(&api, "/v1/routers").await?,
                RouterCommand::Get { id } => api
                    .get(&format!("/v1/routers/{id}"))
                    .await
                    .map_err(runtime)?,
                RouterCommand::Delete { id } => {
                    api.delete(&format!("/v1/routers/{id}"))
                        .await
                        .map_err(runtime)?;
                    deleted(&id)
                }
                RouterCommand::AddInterface { id, subnet } => api
                    .create(
                        &format!("/v1/routers/{id}/interfaces"),
                        &json!({"subnet_id": subnet}),
                        None,
                    )
                    .await
                    .map_err(runtime)?,
                RouterCommand::RemoveInterface { id, subnet } => api
                    .api()
                    .delete(&format!("/v1/routers/{id}/interfaces/{subnet}"))
                    .await
                    .map_err(runtime)?,
                RouterCommand::SetGateway { id, pool, no_snat } => api
                    .put(
                        &format!("/v1/routers/{id}"),
                        &json!({"external": {"pool": pool, "snat": !no_snat}}),
                    )
                    .await
                    .map_err(runtime)?,
                RouterCommand::ClearGateway { id } => api
                    .put(
                        &format!("/v1/routers/{id}"),
                        &json!({"clear_external": true}),
                    )
                    .await
                    .map_err(runtime)?,
            };
            // Flatten what a table shows: the gateway address and the attached subnets.
            let flatten = |r: &mut Value| {
                if let Some(ext) = r.get("external").cloned()
                    && !ext.is_null()
                {
                    r["external_ip"] = ext["ip"].clone();
                    r["snat"] = ext["snat"].clone();
                }
                if let Some(i) = r.get("interfaces").and_then(Value::as_array).cloned() {
                    r["subnets"] =
                        json!(i.iter().map(|x| x["subnet_id"].clone()).collect::<Vec<_>>());
                }
            };
            let mut v = v;
            if format == OutputFormat::Table {
                match v.get_mut("items").and_then(Value::as_array_mut) {
                    Some(items) => items.iter_mut().for_each(flatten),
                    None => flatten(&mut v),
                }
            }
            show(
                format,
                &v,
                &[
                    "id",
                    "name",
                    "vpc_id",
                    "host",
                    "external_ip",
                    "snat",
                    "subnets",
                    "deleted",
                ],
            );
        }
        NetCommand::Fip { command } => {
            let v = match command {
                FipCommand::Create { pool, port } => api
                    .create(
                        "/v1/floating-ips",
                        &json!({"pool": pool, "port_id": port}),
                        key,
                    )
                    .await
                    .map_err(runtime)?,
                FipCommand::List => list(&api, "/v1/floating-ips").await?,
                FipCommand::Get { id } => api
                    .get(&format!("/v1/floating-ips/{id}"))
                    .await
                    .map_err(runtime)?,
                FipCommand::Delete { id } => {
                    api.delete(&format!("/v1/floating-ips/{id}"))
                        .await
                        .map_err(runtime)?;
                    deleted(&id)
                }
                FipCommand::Associate { id, port } => api
                    .put(&format!("/v1/floating-ips/{id}"), &json!({"port_id": port}))
                    .await
                    .map_err(runtime)?,
                FipCommand::Disassociate { id } => api
                    .put(&format!("/v1/floating-ips/{id}"), &json!({"port_id": null}))
                    .await
                    .map_err(runtime)?,
            };
            show(format, &v, &["id", "ip", "pool_id", "port_id", "deleted"]);
        }
        NetCommand::Pool { command } => {
            let v = match command {
                PoolCommand::Create {
                    name,
                    cidr,
                    kind,
                    gateway,
                } => api
                    .create(
                        "/v1/pools",
                        &json!({"name": name, "cidr": cidr, "kind": kind, "gateway": gateway}),
                        key,
                    )
                    .await
                    .map_err(runtime)?,
                PoolCommand::List => list(&api, "/v1/pools").await?,
                PoolCommand::Get { id } => {
                    api.get(&format!("/v1/pools/{id}")).await.map_err(runtime)?
                }
                PoolCommand::Delete { id } => {
                    api.delete(&format!("/v1/pools/{id}"))
                        .await
                        .map_err(runtime)?;
                    deleted(&id)
                }
                PoolCommand::Allocate { pool, ip, owner } => api
                    .create(
                        &format!("/v1/pools/{pool}/allocations"),
                        &json!({"ip": ip, "owner": owner}),
                        key,
                    )
                    .await
                    .map_err(runtime)?,
                PoolCommand::Allocations { pool } => {
                    list(&api, &format!("/v1/pools/{pool}/allocations")).await?
                }
                PoolCommand::Release { pool, ip } => {
                    api.delete(&format!("/v1/pools/{pool}/allocations/{ip}"))
                        .await
                        .map_err(runtime)?;
                    deleted(&ip)
                }
            };
            show(
                format,
                &v,
                &[
                    "id",
                    "name",
                    "cidr",
                    "kind",
                    "gateway",
                    "ip",
                    "owner_kind",
                    "owner_id",
                    "deleted",
                ],
            );
        }
    }
    Ok(())
}
