//! etcd's v3 API types and services, generated from the .proto files in `proto/` by
//! `tools/protogen` (checked in, so building needs no protoc).

#![allow(clippy::all, missing_docs, rustdoc::all)]

pub mod authpb {
    include!("authpb.rs");
}
pub mod mvccpb {
    include!("mvccpb.rs");
}
pub mod etcdserverpb {
    include!("etcdserverpb.rs");
}
