//! Bad requests get etcd's clean errors, change nothing, and leave the server healthy.

mod common;

use common::*;
use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, SortOrder, SortTarget, Txn, TxnOp};
use uc_testkit::http_status;

fn message(e: etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

#[tokio::test]
async fn bad_requests_are_clean_errors_that_change_nothing() {
    let cluster = chainfire_cluster(1, "").start().await.unwrap();
    let n = cluster.node(0).info.clone();
    let mut kv = client(&cluster, &[&n]).await;
    kv.put("keep", "me", None).await.unwrap();
    let revision = || async {
        let mut c = client(&cluster, &[&n]).await;
        c.get("keep", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision()
    };
    let start = revision().await;

    // Larger than --max-request-bytes (1.5 MiB) but within gRPC framing: etcd's own error.
    let e = message(
        kv.put("big", vec![b'x'; 1_600_000], None)
            .await
            .unwrap_err(),
    );
    assert_eq!(e, "InvalidArgument: etcdserver: request is too large");
    // Beyond the gRPC limit: refused before decoding.
    let e = message(
        kv.put("huge", vec![b'x'; 3_000_000], None)
            .await
            .unwrap_err(),
    );
    assert!(
        e.starts_with("OutOfRange") || e.starts_with("ResourceExhausted"),
        "{e}"
    );

    // A transaction over the operation limit (128).
    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("t{i}"), "v", None))
        .collect();
    let e = message(kv.txn(Txn::new().and_then(ops)).await.unwrap_err());
    assert_eq!(
        e,
        "InvalidArgument: etcdserver: too many operations in txn request"
    );
    // The same key twice in one transaction.
    let e = message(
        kv.txn(Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        "InvalidArgument: etcdserver: duplicate key given in txn request"
    );

    // Unknown leases.
    let e = message(
        kv.put("k", "v", Some(PutOptions::new().with_lease(0x1234)))
            .await
            .unwrap_err(),
    );
    assert_eq!(e, "NotFound: etcdserver: requested lease not found");
    let e = message(kv.lease_revoke(0x1234).await.unwrap_err());
    assert_eq!(e, "NotFound: etcdserver: requested lease not found");
    let ttl = kv.lease_time_to_live(0x1234, None).await.unwrap();
    assert_eq!(ttl.ttl(), -1, "unknown lease: TTL -1 as etcd answers");
    // The server answers a keep-alive for an unknown lease with TTL 0, which the client
    // reports as a missing lease.
    let answer = async {
        let (mut keeper, mut responses) = kv.lease_keep_alive(0x1234).await?;
        keeper.keep_alive().await?;
        responses.message().await
    }
    .await;
    assert!(
        matches!(&answer, Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found")),
        "{answer:?}"
    );

    // Invalid ranges and empty keys.
    let e = message(
        kv.get("keep", Some(GetOptions::new().with_revision(start + 1000)))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        e,
        "OutOfRange: etcdserver: mvcc: required revision is a future revision"
    );
    let e = message(kv.put("", "v", None).await.unwrap_err());
    assert_eq!(e, "InvalidArgument: etcdserver: key is not provided");
    let e = message(kv.get("", None).await.unwrap_err());
    assert_eq!(e, "InvalidArgument: etcdserver: key is not provided");
    let e = message(kv.compact(start + 1000, None).await.unwrap_err());
    assert_eq!(
        e,
        "OutOfRange: etcdserver: mvcc: required revision is a future revision"
    );
    // A range_end before the key is simply empty, as in etcd.
    let r = kv
        .get(
            "z",
            Some(
                GetOptions::new()
                    .with_range("a")
                    .with_sort(SortTarget::Key, SortOrder::Descend),
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.count(), 0);
    // A failed compare is not an error; nothing is written.
    let t = kv
        .txn(
            Txn::new()
                .when([Compare::value("keep", CompareOp::Equal, "other")])
                .and_then([TxnOp::put("keep", "changed", None)]),
        )
        .await
        .unwrap();
    assert!(!t.succeeded());

    // A malformed gRPC message (valid framing, garbage protobuf).
    uc_runtime::tls::ensure_crypto_provider();
    let raw = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let response = raw
        .post(format!(
            "http://{}/etcdserverpb.KV/Put",
            client_endpoint(&n)
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("token", cluster.admin_token())
        .body(vec![0u8, 0, 0, 0, 6, 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f])
        .send()
        .await
        .unwrap();
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    // tonic answers a decode failure "trailers-only": the status is in the headers.
    assert_eq!(
        status.as_deref(),
        Some("13"),
        "INTERNAL: the message could not be decoded"
    );

    // Without a token, or with a wrong one: etcd's auth errors.
    let mut anon = etcd_client::Client::connect([format!("http://{}", client_endpoint(&n))], None)
        .await
        .unwrap();
    let e = message(anon.get("keep", None).await.unwrap_err());
    assert_eq!(e, "InvalidArgument: etcdserver: user name is empty");
    let wrong = etcd_client::Client::connect(
        [format!("http://{}", client_endpoint(&n))],
        Some(etcd_client::ConnectOptions::new().with_user("root", "not-the-token")),
    )
    .await;
    let e = match wrong {
        Ok(_) => panic!("authenticated with a wrong password"),
        Err(e) => message(e),
    };
    assert!(
        e.contains("authentication failed, invalid user ID or password"),
        "{e}"
    );

    // Nothing changed, and the server is fine.
    assert_eq!(revision().await, start, "no bad request wrote anything");
    assert_eq!(kv.get("keep", None).await.unwrap().kvs()[0].value(), b"me");
    assert_eq!(http_status(n.addr("admin"), "/healthz").await, Some(200));
    assert_eq!(http_status(n.addr("client"), "/healthz").await, Some(200));
    kv.put("still", "writable", None).await.unwrap();
}
