//! `ultracloud net …` against `ultracloud up`'s own prismnet: the CLI a tenant or operator
//! types, tables and JSON, and its errors.

mod common;

use std::process::Command;

use serde_json::Value;
use uc_testkit::Cluster;

struct Cli {
    endpoint: String,
    token_file: String,
}

impl Cli {
    /// (exit code, stdout, stderr)
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(uc_testkit::ultracloud_binary())
            .arg("net")
            .args([
                "--endpoint",
                &self.endpoint,
                "--token-file",
                &self.token_file,
            ])
            .args(args)
            .output()
            .expect("ultracloud runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let (code, out, err) = self.run(&all);
        assert_eq!(code, 0, "net {args:?}: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("net {args:?}: {e}: {out}"))
    }

    fn table(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "net {args:?}: {err}");
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_net_cli_drives_prismnet() {
    let cluster = Cluster::all_in_one(common::UP_EXTRA)
        .start()
        .await
        .expect("ultracloud up starts");
    let info = cluster.node(0).info.clone();
    let cli = Cli {
        endpoint: info.url("prismnet"),
        token_file: info
            .data_dir
            .join("secrets/admin-token")
            .display()
            .to_string(),
    };

    let vpc = cli.json(&["vpc", "create", "prod", "--cidr", "10.5.0.0/16"]);
    let vpc_id = vpc["id"].as_str().unwrap();
    let subnet = cli.json(&[
        "subnet",
        "create",
        "web",
        "--vpc",
        vpc_id,
        "--cidr",
        "10.5.1.0/24",
        "--dns",
        "9.9.9.9",
    ]);
    let subnet_id = subnet["id"].as_str().unwrap();
    assert_eq!(subnet["dns_servers"][0], "9.9.9.9");
    let sg = cli.json(&["sg", "create", "web", "--vpc", vpc_id]);
    let sg_id = sg["id"].as_str().unwrap();
    let rule = cli.json(&[
        "sg",
        "rule-add",
        sg_id,
        "--direction",
        "ingress",
        "--protocol",
        "tcp",
        "--port",
        "8000-8100",
        "--remote-cidr",
        "10.0.0.0/8",
    ]);
    assert_eq!(
        (rule["port_min"].as_u64(), rule["port_max"].as_u64()),
        (Some(8000), Some(8100))
    );
    let rules = cli.table(&["sg", "get", sg_id]);
    assert!(
        rules.contains("8100") && rules.contains("10.0.0.0/8"),
        "{rules}"
    );

    let port = cli.json(&[
        "port",
        "create",
        "--subnet",
        subnet_id,
        "--name",
        "app",
        "--sg",
        sg_id,
        "--host",
        "h1",
        "--attach",
        "netns:app1",
    ]);
    let ip = port["ips"][0].as_str().unwrap();
    assert_eq!(port["binding"]["attachment"], "netns:app1");
    let table = cli.table(&["port", "list", "--subnet", subnet_id]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains(ip) && table.contains("netns:app1@h1") && table.contains("down"),
        "{table}"
    );

    // Idempotent create from the CLI.
    let a = cli.json(&[
        "--idempotency-key",
        "k1",
        "vpc",
        "create",
        "x",
        "--cidr",
        "10.6.0.0/16",
    ]);
    let b = cli.json(&[
        "--idempotency-key",
        "k1",
        "vpc",
        "create",
        "x",
        "--cidr",
        "10.6.0.0/16",
    ]);
    assert_eq!(a["id"], b["id"]);

    // Pools, routers, floating IPs.
    cli.json(&[
        "pool",
        "create",
        "ext",
        "--cidr",
        "198.51.100.0/28",
        "--kind",
        "external",
        "--gateway",
        "198.51.100.1",
    ]);
    let router = cli.json(&[
        "router",
        "create",
        "r1",
        "--vpc",
        vpc_id,
        "--external-pool",
        "ext",
    ]);
    let router_id = router["id"].as_str().unwrap();
    cli.json(&["router", "add-interface", router_id, "--subnet", subnet_id]);
    let fip = cli.json(&[
        "fip",
        "create",
        "--pool",
        "ext",
        "--port",
        port["id"].as_str().unwrap(),
    ]);
    assert!(fip["ip"].as_str().unwrap().starts_with("198.51.100."));
    let routers = cli.table(&["router", "list"]);
    assert!(
        routers.contains(router["external"]["ip"].as_str().unwrap()),
        "{routers}"
    );

    // Errors: exit 1 with the server's code and message.
    let (code, _, err) = cli.run(&["vpc", "create", "bad", "--cidr", "10.0.0.1/16"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("invalid_cidr") && err.contains("host bits"),
        "{err}"
    );
    let (code, _, err) = cli.run(&["subnet", "delete", subnet_id]);
    assert_eq!(code, 1);
    assert!(err.contains("subnet_in_use"), "{err}");
    let (code, _, err) = cli.run(&[
        "sg",
        "rule-add",
        sg_id,
        "--direction",
        "ingress",
        "--port",
        "x",
    ]);
    assert_eq!(code, 2, "{err}");

    // Teardown in order.
    cli.json(&["fip", "delete", fip["id"].as_str().unwrap()]);
    cli.json(&[
        "router",
        "remove-interface",
        router_id,
        "--subnet",
        subnet_id,
    ]);
    cli.json(&["router", "delete", router_id]);
    cli.json(&["port", "delete", port["id"].as_str().unwrap()]);
    cli.json(&["subnet", "delete", subnet_id]);
    cli.json(&["sg", "delete", sg_id]);
    cli.json(&["vpc", "delete", vpc_id]);
    let left = cli.json(&["vpc", "list"]);
    assert_eq!(
        left["items"].as_array().unwrap().len(),
        1,
        "only the idempotent one: {left}"
    );
}
