#!/usr/bin/env python3
"""Copies etcd's published v3 API .proto files, dropping only what needs other proto packages
(grpc-gateway HTTP annotations, openapiv2 options, etcd's versionpb option extensions).
Messages, fields, numbers, enums and services are kept unchanged: they are the wire contract.

usage: strip_etcd_protos.py <etcd proto root (containing etcd/api/...)> <output dir>
"""
import re
import sys
from pathlib import Path

src, out = Path(sys.argv[1]), Path(sys.argv[2])
FILES = {
    "etcd/api/etcdserverpb/rpc.proto": "etcd/etcdserverpb/rpc.proto",
    "etcd/api/mvccpb/kv.proto": "etcd/mvccpb/kv.proto",
    "etcd/api/authpb/auth.proto": "etcd/authpb/auth.proto",
}


def drop_option_blocks(text: str) -> str:
    """Removes `option (x.y) = { ... };` blocks (balanced braces) and `option (x.y) = "...";`."""
    result, i = [], 0
    pattern = re.compile(r"option\s*\((google\.api\.http|grpc\.gateway\.[\w.]+|versionpb\.[\w]+)\)\s*=\s*")
    while True:
        m = pattern.search(text, i)
        if not m:
            result.append(text[i:])
            break
        result.append(text[i : m.start()])
        j = m.end()
        if text[j] == "{":
            depth = 0
            while True:
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            j += 1
        else:
            j = text.index(";", j)
        if j < len(text) and text[j] == ";":
            j += 1
        i = j
    return "".join(result)


for rel, dest in FILES.items():
    text = (src / rel).read_text()
    text = re.sub(r'import "(google|protoc-gen-openapiv2|etcd/api/versionpb)/[^"]*";\n', "", text)
    text = drop_option_blocks(text)
    # field options like [(versionpb.etcd_version_field)="3.5"]
    text = re.sub(r"\s*\[\(versionpb\.[\w]+\)\s*=\s*\"[^\"]*\"\]", "", text)
    text = text.replace('import "etcd/api/mvccpb/kv.proto"', 'import "etcd/mvccpb/kv.proto"')
    text = text.replace('import "etcd/api/authpb/auth.proto"', 'import "etcd/authpb/auth.proto"')
    # rpc Foo(A) returns (B) {\n   \n  }  ->  rpc Foo(A) returns (B) {}
    text = re.sub(r"\)\s*\{\s*\}", ") {}", text)
    header = (
        f"// Copied from etcd's published API definitions ({rel}, Apache-2.0) by\n"
        "// tools/protogen/strip_etcd_protos.py: gateway/openapi/version annotations removed,\n"
        "// everything on the wire unchanged.\n"
    )
    (out / dest).parent.mkdir(parents=True, exist_ok=True)
    (out / dest).write_text(header + text)
    print("wrote", out / dest)
