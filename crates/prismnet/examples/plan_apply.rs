//! Converges a network namespace to a HostPlan read from a JSON file, for scripts (the
//! throughput bench) and for poking at the dataplane by hand:
//!
//!     plan_apply [--netns <host-netns>] <plan.json> <state-dir>
//!     plan_apply [--netns <host-netns>] --teardown <prefix> <state-dir>
//!
//! `--netns` joins that namespace first (use it rather than `ip netns exec`, whose private
//! mount namespace would hide the namespaces converge creates from later runs). Prints the
//! ConvergeReport as JSON; exits 1 if it has errors.

use std::fs::File;

use nix::sched::{CloneFlags, setns};
use prismnet::dataplane::Dataplane;
use prismnet::dataplane::plan::HostPlan;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--netns") && args.len() > 1 {
        let ns = args[1].clone();
        args.drain(..2);
        let fd =
            File::open(format!("/run/netns/{ns}")).unwrap_or_else(|e| fail(&format!("{ns}: {e}")));
        setns(&fd, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| fail(&format!("setns {ns}: {e}")));
    }
    let report = match args.as_slice() {
        [flag, prefix, state] if flag == "--teardown" => Dataplane::new(state)
            .teardown_all(prefix)
            .unwrap_or_else(|e| fail(&e.to_string())),
        [plan, state] => {
            let text =
                std::fs::read_to_string(plan).unwrap_or_else(|e| fail(&format!("{plan}: {e}")));
            let plan: HostPlan =
                serde_json::from_str(&text).unwrap_or_else(|e| fail(&format!("{plan}: {e}")));
            Dataplane::new(state)
                .converge(&plan)
                .unwrap_or_else(|e| fail(&e.to_string()))
        }
        _ => fail(
            "usage: plan_apply [--netns <ns>] <plan.json> <state-dir> | plan_apply [--netns <ns>] --teardown <prefix> <state-dir>",
        ),
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&report).expect("serializable")
    );
    if !report.errors.is_empty() {
        std::process::exit(1);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("plan_apply: {msg}");
    std::process::exit(2);
}
