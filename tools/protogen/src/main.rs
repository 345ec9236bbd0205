//! Compiles the .proto files with protox (pure Rust) and writes tonic/prost code into the
//! crates that use it. Run from the repository root after changing a .proto file:
//! `cargo run --manifest-path tools/protogen/Cargo.toml`

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let proto_root = root.join("crates/chainfire/proto");
    let out = root.join("crates/chainfire/src/etcdpb");
    std::fs::create_dir_all(&out).unwrap();
    let files = [
        "etcd/etcdserverpb/rpc.proto",
        "etcd/mvccpb/kv.proto",
        "etcd/authpb/auth.proto",
    ];
    let fds = protox::compile(files, [&proto_root]).expect("compile protos");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .out_dir(&out)
        .compile_fds(fds)
        .expect("generate code");
    println!("generated into {}", out.display());
}
