//! The byte encodings etcd's `HashKV` hashes: CRC-32C (Castagnoli) over the key bucket's
//! name, then each `(revision bytes, protobuf KeyValue)` pair in revision order
//! (`server/storage/mvcc/hash.go`, `revision.go`). Reproducing them byte for byte makes our
//! hash equal to etcd's for the same history.

use super::types::KeyValue;

const CASTAGNOLI_REFLECTED: u32 = 0x82F6_3B78;

const fn make_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CASTAGNOLI_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}

static TABLE: [u32; 256] = make_table();

/// Incremental CRC-32C, as Go's `crc32.New(crc32.MakeTable(crc32.Castagnoli))`.
pub(super) struct Crc32c(u32);

impl Crc32c {
    pub(super) fn new() -> Self {
        Crc32c(!0)
    }

    pub(super) fn write(&mut self, data: &[u8]) {
        let mut crc = self.0;
        for &b in data {
            crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
        }
        self.0 = crc;
    }

    pub(super) fn sum(&self) -> u32 {
        !self.0
    }
}

/// etcd's revision key in the `key` bucket: 8-byte big-endian main, `_`, 8-byte big-endian
/// sub, and a trailing `t` for a tombstone.
pub(super) fn rev_bytes(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(18);
    b.extend_from_slice(&main.to_be_bytes());
    b.push(b'_');
    b.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        b.push(b't');
    }
    b
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes_field(out: &mut Vec<u8>, tag: u8, v: &[u8]) {
    if !v.is_empty() {
        out.push(tag);
        put_varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

fn put_int64_field(out: &mut Vec<u8>, tag: u8, v: i64) {
    if v != 0 {
        out.push(tag);
        // proto3 int64: two's complement as an unsigned varint.
        put_varint(out, v as u64);
    }
}

/// The protobuf (proto3) encoding of `mvccpb.KeyValue`, fields in number order, zero values
/// omitted — what etcd stores as the bucket value.
pub(super) fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(kv.key.len() + kv.value.len() + 40);
    put_bytes_field(&mut out, 0x0a, &kv.key);
    put_int64_field(&mut out, 0x10, kv.create_revision);
    put_int64_field(&mut out, 0x18, kv.mod_revision);
    put_int64_field(&mut out, 0x20, kv.version);
    put_bytes_field(&mut out, 0x2a, &kv.value);
    put_int64_field(&mut out, 0x30, kv.lease);
    out
}

/// What etcd stores for a tombstone: a KeyValue with only the key set.
pub(super) fn encode_tombstone(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 4);
    put_bytes_field(&mut out, 0x0a, key);
    out
}
