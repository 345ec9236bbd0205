//! The [`Store`]: key index, revision log, leases, and the applier on top of them.
//!
//! Layout (mirroring etcd's in-memory `treeIndex` + bolt `key` bucket):
//! - `log`: every retained revision `(main, sub)` → the KeyValue written there (or a tombstone),
//!   in revision order — etcd's `key` bucket;
//! - `index`: key → its retained revisions in increasing order — etcd's `keyIndex`
//!   (generations are implicit: a tombstone ends one);
//! - `leases`: lease id → granted TTL and attached keys — etcd's lessor, minus time.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::hash::{Crc32c, encode_kv, encode_tombstone, rev_bytes};
use super::types::{
    Command, CommandResult, Compare, CompareResult, CompareTarget, DeleteRangeRequest,
    DeleteRangeResponse, Event, EventKind, KeyValue, Lease, MvccError, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseOp, SortOrder, SortTarget, TxnRequest,
    TxnResponse,
};
use super::validate::{is_txn_read_only, validate_command, validate_range, validate_txn};

/// etcd's `MaxLeaseTTL` (about 285 years, in seconds).
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// One retained revision of a key, as the key index holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct IdxRev {
    main: i64,
    sub: i64,
    tombstone: bool,
}

/// What was written at a revision. For a tombstone `kv` is `{key, mod_revision}` only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    kv: KeyValue,
    tombstone: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct LeaseState {
    ttl: i64,
    keys: BTreeSet<Vec<u8>>,
}

/// The replicated MVCC key-value state (see the module docs). Serialize it for a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Store {
    /// The revision of the last completed write (1 for an empty store, as etcd).
    current_rev: i64,
    /// etcd's `compactMainRev`: -1 until the first compaction.
    compact_rev: i64,
    index: BTreeMap<Vec<u8>, Vec<IdxRev>>,
    log: BTreeMap<(i64, i64), Record>,
    leases: BTreeMap<i64, LeaseState>,
    live_keys: usize,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

/// A key range in etcd's encoding, decoded (`mkGteRange` + the index's `visit`).
#[derive(Clone, Copy, Debug)]
enum KeyRange<'a> {
    /// `range_end` sorts at or before `key`: nothing.
    Empty,
    /// `range_end` empty: exactly `key`.
    Single(&'a [u8]),
    /// `range_end == [0]`: every key >= `key`.
    From(&'a [u8]),
    /// `[key, range_end)`.
    Between(&'a [u8], &'a [u8]),
}

impl<'a> KeyRange<'a> {
    fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        if range_end.is_empty() {
            KeyRange::Single(key)
        } else if range_end == [0] {
            KeyRange::From(key)
        } else if range_end <= key {
            KeyRange::Empty
        } else {
            KeyRange::Between(key, range_end)
        }
    }

    fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Empty => false,
            KeyRange::Single(key) => k == key,
            KeyRange::From(key) => k >= key,
            KeyRange::Between(key, end) => k >= key && k < end,
        }
    }
}

/// Whether `key` lies in etcd's range `[start, range_end)` (empty end: just `start`; `\0`:
/// every key from `start`). Watchers filter events with the same rule ranges use.
pub fn key_in_range(key: &[u8], start: &[u8], range_end: &[u8]) -> bool {
    KeyRange::new(start, range_end).contains(key)
}

/// The newest retained revision of a key at or before `at` (tombstone or not).
fn latest_at(revs: &[IdxRev], at: i64) -> Option<IdxRev> {
    let n = revs.partition_point(|r| r.main <= at);
    n.checked_sub(1).map(|i| revs[i])
}

/// The revision holding the key's value at `at`, if the key exists then.
fn live_at(revs: &[IdxRev], at: i64) -> Option<IdxRev> {
    latest_at(revs, at).filter(|r| !r.tombstone)
}

/// Which branch each txn (the top one, then nested ones in the chosen branch, in order) takes;
/// computed up front against the pre-txn state, as etcd's `compareToPath`.
struct TxnPath {
    succeeded: bool,
    nested: Vec<TxnPath>,
}

/// An in-progress write at revision `rev` (etcd's `storeTxnWrite`). Writes go straight into the
/// store, so later operations of the same txn see them; `rollback` undoes them if the txn fails.
struct WriteTxn {
    rev: i64,
    /// (key, is tombstone) per sub-revision.
    changes: Vec<(Vec<u8>, bool)>,
    /// (lease, key, attached?) — lease set mutations to undo on rollback.
    lease_undo: Vec<(i64, Vec<u8>, bool)>,
    live_before: usize,
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ord = match &c.target {
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Create(r) => kv.create_revision.cmp(r),
        CompareTarget::Mod(r) => kv.mod_revision.cmp(r),
        CompareTarget::Version(r) => kv.version.cmp(r),
        CompareTarget::Lease(r) => kv.lease.cmp(r),
    };
    match c.result {
        CompareResult::Equal => ord.is_eq(),
        CompareResult::NotEqual => ord.is_ne(),
        CompareResult::Greater => ord.is_gt(),
        CompareResult::Less => ord.is_lt(),
    }
}

fn cmp_by_target(a: &KeyValue, b: &KeyValue, target: SortTarget) -> std::cmp::Ordering {
    match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    }
}

impl Store {
    /// An empty store at revision 1, never compacted, without leases.
    pub fn new() -> Self {
        Store {
            current_rev: 1,
            compact_rev: -1,
            index: BTreeMap::new(),
            log: BTreeMap::new(),
            leases: BTreeMap::new(),
            live_keys: 0,
        }
    }

    /// The revision of the last write (1 for an empty store, as etcd).
    pub fn current_revision(&self) -> i64 {
        self.current_rev
    }

    /// The revision of the last compaction; 0 if never compacted.
    pub fn compacted_revision(&self) -> i64 {
        self.compact_rev.max(0)
    }

    /// Number of keys that exist at the current revision.
    pub fn key_count(&self) -> usize {
        self.live_keys
    }

    /// A lease by id: its granted TTL and attached keys.
    pub fn lease(&self, id: i64) -> Option<Lease> {
        self.leases.get(&id).map(|l| Lease {
            id,
            ttl: l.ttl,
            keys: l.keys.iter().cloned().collect(),
        })
    }

    /// All leases, sorted by id.
    pub fn leases(&self) -> Vec<Lease> {
        self.leases
            .iter()
            .map(|(&id, l)| Lease {
                id,
                ttl: l.ttl,
                keys: l.keys.iter().cloned().collect(),
            })
            .collect()
    }

    /// A Range at the current revision (etcd's `applierV3backend.Range` on a read txn).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, MvccError> {
        validate_range(req)?;
        self.range_at(req, self.current_rev)
    }

    /// Runs a read-only txn (see [`super::is_txn_read_only`]) against the current state, as etcd
    /// serves one without a write txn. Returns `None` if the txn contains a write anywhere — such
    /// a txn must go through [`Store::apply`].
    pub fn txn_read(&self, t: &TxnRequest) -> Option<Result<TxnResponse, MvccError>> {
        if !is_txn_read_only(t) {
            return None;
        }
        Some((|| {
            validate_txn(t)?;
            let path = self.compare_path(t);
            self.check_requests(t, &path, &|s: &Self, op: &RequestOp| s.check_range_op(op))?;
            self.exec_read_txn(t, &path)
        })())
    }

    /// Applies one command. Returns the result and the events it produced (all at the new
    /// revision, in sub-revision order, `prev_kv` filled as etcd's watch does). A command that
    /// fails changes nothing and produces no events.
    pub fn apply(&mut self, cmd: &Command) -> (Result<CommandResult, MvccError>, Vec<Event>) {
        if let Err(e) = validate_command(cmd) {
            return (Err(e), Vec::new());
        }
        match cmd {
            Command::Put(p) => {
                // etcd checks the lease before opening the write txn (applierV3backend.Put).
                if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                    return (Err(MvccError::LeaseNotFound), Vec::new());
                }
                let (r, ev) = self.write(|s, w| s.exec_put(w, p));
                (r.map(CommandResult::Put), ev)
            }
            Command::DeleteRange(d) => {
                let (r, ev) = self.write(|s, w| Ok(s.exec_delete(w, d)));
                (r.map(CommandResult::DeleteRange), ev)
            }
            Command::Txn(t) => {
                let (r, ev) = self.apply_txn(t);
                (r.map(CommandResult::Txn), ev)
            }
            Command::Compact { revision } => (
                self.compact(*revision).map(|()| CommandResult::Compact),
                Vec::new(),
            ),
            Command::LeaseGrant { id, ttl } => (self.lease_grant(*id, *ttl), Vec::new()),
            Command::LeaseRevoke { id } => self.lease_revoke(*id),
        }
    }

    /// Every event with revision >= `start_revision` on keys in `[key, range_end)` (etcd range
    /// encoding), in revision order, each with `prev_kv` as etcd's watch fills it. This is what
    /// an etcd watcher created at `start_revision` receives from history.
    ///
    /// - `Err(Compacted)` if `start_revision < compacted revision` (etcd's `chooseAll`:
    ///   `minRev < compactRev`); starting exactly at the compacted revision is allowed and
    ///   yields what compaction retained there (puts at that revision; a delete at exactly the
    ///   compaction revision is dropped by compaction, as in etcd).
    /// - `start_revision <= 0` means "from now" (etcd watch semantics): no events.
    /// - `prev_kv` is the key's value at `revision - 1`; absent for a create, or when
    ///   `revision - 1` is below the compaction point (etcd's watch server gets
    ///   `ErrCompacted` there and sends no prev_kv).
    pub fn events_since(
        &self,
        start_revision: i64,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<Vec<Event>, MvccError> {
        self.events_since_bounded(start_revision, key, range_end, 0)
            .map(|(events, _)| events)
    }

    /// [`Store::events_since`] bounded to the events of at most `max_revisions` distinct
    /// revisions (0 = unbounded; etcd batches 1000). Returns the events and the revision to
    /// resume from: the first revision not returned, or `current_revision() + 1` when caught up
    /// (or `start_revision` if that is later).
    pub fn events_since_bounded(
        &self,
        start_revision: i64,
        key: &[u8],
        range_end: &[u8],
        max_revisions: usize,
    ) -> Result<(Vec<Event>, i64), MvccError> {
        let caught_up = self.current_rev + 1;
        if start_revision <= 0 {
            return Ok((Vec::new(), caught_up));
        }
        if start_revision < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if start_revision > self.current_rev {
            return Ok((Vec::new(), start_revision));
        }
        let range = KeyRange::new(key, range_end);
        let records: Box<dyn Iterator<Item = (i64, &Record)> + '_> = match range {
            KeyRange::Empty => Box::new(std::iter::empty()),
            KeyRange::Single(k) => match self.index.get(k) {
                Some(revs) => {
                    let from = revs.partition_point(|r| r.main < start_revision);
                    Box::new(revs[from..].iter().filter_map(move |r| {
                        self.log.get(&(r.main, r.sub)).map(|rec| (r.main, rec))
                    }))
                }
                None => Box::new(std::iter::empty()),
            },
            KeyRange::From(_) | KeyRange::Between(..) => Box::new(
                self.log
                    .range((start_revision, 0)..)
                    .filter(move |(_, rec)| range.contains(&rec.kv.key))
                    .map(|(&(main, _), rec)| (main, rec)),
            ),
        };
        let mut events = Vec::new();
        let mut revisions = 0usize;
        let mut last_main = None;
        for (main, rec) in records {
            if last_main != Some(main) {
                if max_revisions != 0 && revisions == max_revisions {
                    return Ok((events, main));
                }
                revisions += 1;
                last_main = Some(main);
            }
            events.push(self.event_for(main, rec));
        }
        Ok((events, caught_up))
    }

    /// etcd's `HashByRev`: CRC-32C over every retained revision <= `revision` (0 = current),
    /// skipping revisions at or below the compaction point that a compaction at `revision`
    /// would not keep. Byte-compatible with etcd for the same history. Returns the hash and
    /// the compact revision as etcd reports it in `HashKVResponse` (-1 if never compacted).
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64), MvccError> {
        if revision > 0 && revision <= self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if revision > 0 && revision > self.current_rev {
            return Err(MvccError::FutureRevision);
        }
        let rev = if revision == 0 {
            self.current_rev
        } else {
            revision
        };
        let mut h = Crc32c::new();
        h.write(b"key");
        // etcd: "don't skip if there isn't one" — when the keep set is empty nothing is skipped.
        let mut keep_nonempty: Option<bool> = None;
        for (&(main, sub), rec) in self.log.range(..=(rev, i64::MAX)) {
            if main <= self.compact_rev {
                let nonempty = *keep_nonempty.get_or_insert_with(|| {
                    self.index.values().any(|revs| live_at(revs, rev).is_some())
                });
                if nonempty {
                    let kept = !rec.tombstone
                        && self
                            .index
                            .get(&rec.kv.key)
                            .and_then(|revs| latest_at(revs, rev))
                            .is_some_and(|r| r.main == main && r.sub == sub);
                    if !kept {
                        continue;
                    }
                }
            }
            h.write(&rev_bytes(main, sub, rec.tombstone));
            if rec.tombstone {
                h.write(&encode_tombstone(&rec.kv.key));
            } else {
                h.write(&encode_kv(&rec.kv));
            }
        }
        Ok((h.sum(), self.compact_rev))
    }

    // ----- reads -------------------------------------------------------------------------

    fn index_range<'a>(
        &'a self,
        range: KeyRange<'a>,
    ) -> Box<dyn Iterator<Item = (&'a Vec<u8>, &'a Vec<IdxRev>)> + 'a> {
        match range {
            KeyRange::Empty => Box::new(std::iter::empty()),
            KeyRange::Single(k) => Box::new(self.index.get_key_value(k).into_iter()),
            KeyRange::From(k) => Box::new(
                self.index
                    .range::<[u8], _>((Bound::Included(k), Bound::Unbounded)),
            ),
            KeyRange::Between(k, end) => Box::new(
                self.index
                    .range::<[u8], _>((Bound::Included(k), Bound::Excluded(end))),
            ),
        }
    }

    /// Revisions holding the values of the keys in `range` that exist at `at`, in key order.
    fn live_revs<'a>(&'a self, range: KeyRange<'a>, at: i64) -> impl Iterator<Item = IdxRev> + 'a {
        self.index_range(range)
            .filter_map(move |(_, revs)| live_at(revs, at))
    }

    fn kv_of(&self, r: IdxRev) -> Option<&KeyValue> {
        self.log.get(&(r.main, r.sub)).map(|rec| &rec.kv)
    }

    /// The keys in `range` that exist at `at`, in key order.
    fn live_kvs<'a>(
        &'a self,
        range: KeyRange<'a>,
        at: i64,
    ) -> impl Iterator<Item = &'a KeyValue> + 'a {
        self.live_revs(range, at).filter_map(|r| self.kv_of(r))
    }

    /// The key's value at revision `at`, if it exists then.
    fn kv_at(&self, key: &[u8], at: i64) -> Option<&KeyValue> {
        self.index
            .get(key)
            .and_then(|revs| live_at(revs, at))
            .and_then(|r| self.kv_of(r))
    }

    /// The watch event for a retained record (etcd's `kvsToEvents` + the prev_kv lookup of
    /// `v3rpc/watch.go`'s sendLoop).
    fn event_for(&self, main: i64, rec: &Record) -> Event {
        let is_create = !rec.tombstone && rec.kv.create_revision == rec.kv.mod_revision;
        let prev_kv = if is_create || main - 1 < self.compact_rev {
            None
        } else {
            self.kv_at(&rec.kv.key, main - 1).cloned()
        };
        Event {
            kind: if rec.tombstone {
                EventKind::Delete
            } else {
                EventKind::Put
            },
            kv: rec.kv.clone(),
            prev_kv,
        }
    }

    /// etcd's `applierV3backend.Range` over `rangeKeys`, reading as of `cur_rev` (the read
    /// txn's revision; inside a write txn with changes, the txn's own revision).
    fn range_at(&self, req: &RangeRequest, cur_rev: i64) -> Result<RangeResponse, MvccError> {
        let filtered = req.min_mod_revision != 0
            || req.max_mod_revision != 0
            || req.min_create_revision != 0
            || req.max_create_revision != 0;
        // Fetch everything when sorting or filtering; else one extra for `more`. Note etcd
        // looks at sort_order only here, not at the implied ascend of a non-key target.
        let mut limit = req.limit;
        if req.sort_order != SortOrder::None || filtered {
            limit = 0;
        }
        if limit > 0 {
            limit = limit.saturating_add(1);
        }

        let mut rev = req.revision;
        if rev > cur_rev {
            return Err(MvccError::FutureRevision);
        }
        if rev <= 0 {
            rev = cur_rev;
        }
        if rev < self.compact_rev {
            return Err(MvccError::Compacted);
        }
        let range = KeyRange::new(&req.key, &req.range_end);
        if req.count_only {
            let count = self.live_revs(range, rev).count();
            return Ok(RangeResponse {
                kvs: Vec::new(),
                more: false,
                count: count as i64,
            });
        }

        let mut sort_order = req.sort_order;
        if req.sort_target != SortTarget::Key && sort_order == SortOrder::None {
            sort_order = SortOrder::Ascend;
        }
        // Values are dropped for keys_only after sorting; skip copying them unless the sort
        // needs them.
        let strip_values = req.keys_only
            && !(sort_order != SortOrder::None && req.sort_target == SortTarget::Value);

        let mut total: i64 = 0;
        let mut kvs: Vec<KeyValue> = Vec::new();
        for r in self.live_revs(range, rev) {
            total += 1;
            if (limit <= 0 || (kvs.len() as i64) < limit)
                && let Some(kv) = self.kv_of(r)
            {
                kvs.push(if strip_values {
                    KeyValue {
                        key: kv.key.clone(),
                        create_revision: kv.create_revision,
                        mod_revision: kv.mod_revision,
                        version: kv.version,
                        value: Vec::new(),
                        lease: kv.lease,
                    }
                } else {
                    kv.clone()
                });
            }
        }

        if req.max_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision <= req.max_mod_revision);
        }
        if req.min_mod_revision != 0 {
            kvs.retain(|kv| kv.mod_revision >= req.min_mod_revision);
        }
        if req.max_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision <= req.max_create_revision);
        }
        if req.min_create_revision != 0 {
            kvs.retain(|kv| kv.create_revision >= req.min_create_revision);
        }

        // Stable sorts: ties keep key order (etcd's sort.Sort is unstable; for small inputs it
        // is an insertion sort and agrees with this).
        match sort_order {
            SortOrder::None => {}
            SortOrder::Ascend => kvs.sort_by(|a, b| cmp_by_target(a, b, req.sort_target)),
            SortOrder::Descend => kvs.sort_by(|a, b| cmp_by_target(b, a, req.sort_target)),
        }

        let mut more = false;
        if req.limit > 0 && kvs.len() as i64 > req.limit {
            kvs.truncate(req.limit as usize);
            more = true;
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value = Vec::new();
            }
        }
        Ok(RangeResponse {
            kvs,
            more,
            count: total,
        })
    }

    // ----- writes ------------------------------------------------------------------------

    fn write<T>(
        &mut self,
        f: impl FnOnce(&mut Self, &mut WriteTxn) -> Result<T, MvccError>,
    ) -> (Result<T, MvccError>, Vec<Event>) {
        let mut w = WriteTxn {
            rev: self.current_rev + 1,
            changes: Vec::new(),
            lease_undo: Vec::new(),
            live_before: self.live_keys,
        };
        match f(self, &mut w) {
            Ok(v) => {
                let events = self.commit(&w);
                (Ok(v), events)
            }
            Err(e) => {
                self.rollback(w);
                (Err(e), Vec::new())
            }
        }
    }

    /// The revision reads inside a write txn see: the txn's own once it has written.
    fn read_rev(&self, w: &WriteTxn) -> i64 {
        if w.changes.is_empty() {
            self.current_rev
        } else {
            w.rev
        }
    }

    fn commit(&mut self, w: &WriteTxn) -> Vec<Event> {
        if w.changes.is_empty() {
            return Vec::new();
        }
        self.current_rev = w.rev;
        (0..w.changes.len() as i64)
            .filter_map(|sub| self.log.get(&(w.rev, sub)))
            .map(|rec| self.event_for(w.rev, rec))
            .collect()
    }

    fn rollback(&mut self, w: WriteTxn) {
        for (sub, (key, _)) in w.changes.iter().enumerate().rev() {
            self.log.remove(&(w.rev, sub as i64));
            if let Some(revs) = self.index.get_mut(key) {
                revs.pop();
                if revs.is_empty() {
                    self.index.remove(key);
                }
            }
        }
        for (id, key, attached) in w.lease_undo.into_iter().rev() {
            if let Some(l) = self.leases.get_mut(&id) {
                if attached {
                    l.keys.remove(&key);
                } else {
                    l.keys.insert(key);
                }
            }
        }
        self.live_keys = w.live_before;
    }

    fn push_rev(&mut self, key: &[u8], r: IdxRev) {
        if let Some(revs) = self.index.get_mut(key) {
            revs.push(r);
        } else {
            self.index.insert(key.to_vec(), vec![r]);
        }
    }

    fn detach(&mut self, w: &mut WriteTxn, lease: i64, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&lease)
            && l.keys.remove(key)
        {
            w.lease_undo.push((lease, key.to_vec(), false));
        }
    }

    /// etcd's `storeTxnWrite.put`.
    fn w_put(
        &mut self,
        w: &mut WriteTxn,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
    ) -> Result<(), MvccError> {
        let rev = w.rev;
        let prev = self
            .kv_at(key, rev)
            .map(|kv| (kv.create_revision, kv.version, kv.lease));
        let (create_revision, version, old_lease) = prev.unwrap_or((rev, 0, 0));
        if lease != 0 && lease != old_lease && !self.leases.contains_key(&lease) {
            // Checked before applying in etcd; cannot happen after those checks.
            return Err(MvccError::LeaseNotFound);
        }
        let sub = w.changes.len() as i64;
        self.log.insert(
            (rev, sub),
            Record {
                kv: KeyValue {
                    key: key.to_vec(),
                    create_revision,
                    mod_revision: rev,
                    version: version + 1,
                    value,
                    lease,
                },
                tombstone: false,
            },
        );
        self.push_rev(
            key,
            IdxRev {
                main: rev,
                sub,
                tombstone: false,
            },
        );
        if prev.is_none() {
            self.live_keys += 1;
        }
        w.changes.push((key.to_vec(), false));
        if old_lease != lease {
            if old_lease != 0 {
                self.detach(w, old_lease, key);
            }
            if lease != 0
                && let Some(l) = self.leases.get_mut(&lease)
                && l.keys.insert(key.to_vec())
            {
                w.lease_undo.push((lease, key.to_vec(), true));
            }
        }
        Ok(())
    }

    /// etcd's `storeTxnWrite.delete` of a key that exists.
    fn w_delete(&mut self, w: &mut WriteTxn, key: &[u8]) {
        let rev = w.rev;
        let Some(old_lease) = self.kv_at(key, rev).map(|kv| kv.lease) else {
            return;
        };
        let sub = w.changes.len() as i64;
        self.log.insert(
            (rev, sub),
            Record {
                kv: KeyValue {
                    key: key.to_vec(),
                    mod_revision: rev,
                    ..KeyValue::default()
                },
                tombstone: true,
            },
        );
        self.push_rev(
            key,
            IdxRev {
                main: rev,
                sub,
                tombstone: true,
            },
        );
        self.live_keys -= 1;
        w.changes.push((key.to_vec(), true));
        if old_lease != 0 {
            self.detach(w, old_lease, key);
        }
    }

    /// etcd's `storeTxnWrite.deleteRange`: deletes the keys existing in the range.
    fn w_delete_range(&mut self, w: &mut WriteTxn, key: &[u8], range_end: &[u8]) -> i64 {
        let at = self.read_rev(w);
        let keys: Vec<Vec<u8>> = self
            .index_range(KeyRange::new(key, range_end))
            .filter(|(_, revs)| live_at(revs, at).is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for k in &keys {
            self.w_delete(w, k);
        }
        keys.len() as i64
    }

    /// etcd's `applierV3backend.Put` inside a write txn.
    fn exec_put(&mut self, w: &mut WriteTxn, p: &PutRequest) -> Result<PutResponse, MvccError> {
        let prev = if p.ignore_value || p.ignore_lease || p.prev_kv {
            self.kv_at(&p.key, self.read_rev(w)).cloned()
        } else {
            None
        };
        let (value, lease) = if p.ignore_value || p.ignore_lease {
            let Some(prev) = &prev else {
                return Err(MvccError::KeyNotFound);
            };
            (
                if p.ignore_value {
                    prev.value.clone()
                } else {
                    p.value.clone()
                },
                if p.ignore_lease { prev.lease } else { p.lease },
            )
        } else {
            (p.value.clone(), p.lease)
        };
        self.w_put(w, &p.key, value, lease)?;
        Ok(PutResponse {
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    /// etcd's `applierV3backend.DeleteRange` inside a write txn.
    fn exec_delete(&mut self, w: &mut WriteTxn, d: &DeleteRangeRequest) -> DeleteRangeResponse {
        let prev_kvs = if d.prev_kv {
            self.live_kvs(KeyRange::new(&d.key, &d.range_end), self.read_rev(w))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let deleted = self.w_delete_range(w, &d.key, &d.range_end);
        DeleteRangeResponse { deleted, prev_kvs }
    }

    // ----- txn ---------------------------------------------------------------------------

    /// etcd's `applyCompare`, at the current (pre-txn) revision.
    fn eval_compare(&self, c: &Compare) -> bool {
        let mut any = false;
        for kv in self.live_kvs(KeyRange::new(&c.key, &c.range_end), self.current_rev) {
            any = true;
            if !compare_kv(c, kv) {
                return false;
            }
        }
        if any {
            return true;
        }
        // A missing key: a value compare always fails (no way to represent a missing value);
        // everything else compares against the zero KeyValue.
        if matches!(c.target, CompareTarget::Value(_)) {
            return false;
        }
        compare_kv(c, &KeyValue::default())
    }

    /// etcd's `compareToPath`: all compares, nested ones included, against the pre-txn state.
    fn compare_path(&self, t: &TxnRequest) -> TxnPath {
        let succeeded = t.compare.iter().all(|c| self.eval_compare(c));
        let ops = if succeeded { &t.success } else { &t.failure };
        let nested = ops
            .iter()
            .filter_map(|op| match op {
                RequestOp::Txn(n) => Some(self.compare_path(n)),
                _ => None,
            })
            .collect();
        TxnPath { succeeded, nested }
    }

    /// etcd's `checkRequests`: runs `f` on every non-txn op along the chosen path.
    fn check_requests(
        &self,
        t: &TxnRequest,
        path: &TxnPath,
        f: &dyn Fn(&Self, &RequestOp) -> Result<(), MvccError>,
    ) -> Result<(), MvccError> {
        let ops = if path.succeeded {
            &t.success
        } else {
            &t.failure
        };
        let mut nested = path.nested.iter();
        for op in ops {
            if let RequestOp::Txn(n) = op {
                let p = nested.next().expect("txn path built from this request");
                self.check_requests(n, p, f)?;
            } else {
                f(self, op)?;
            }
        }
        Ok(())
    }

    /// etcd's `checkRequestPut`, against the pre-txn state.
    fn check_put_op(&self, op: &RequestOp) -> Result<(), MvccError> {
        let RequestOp::Put(p) = op else {
            return Ok(());
        };
        if (p.ignore_value || p.ignore_lease) && self.kv_at(&p.key, self.current_rev).is_none() {
            return Err(MvccError::KeyNotFound);
        }
        if p.lease != 0 && !self.leases.contains_key(&p.lease) {
            return Err(MvccError::LeaseNotFound);
        }
        Ok(())
    }

    /// etcd's `checkRequestRange`, against the pre-txn state.
    fn check_range_op(&self, op: &RequestOp) -> Result<(), MvccError> {
        let RequestOp::Range(r) = op else {
            return Ok(());
        };
        if r.revision == 0 {
            Ok(())
        } else if r.revision > self.current_rev {
            Err(MvccError::FutureRevision)
        } else if r.revision < self.compact_rev {
            Err(MvccError::Compacted)
        } else {
            Ok(())
        }
    }

    /// The checks etcd's `applierV3backend.Txn` runs before writing: puts (if the txn writes at
    /// all), then ranges, each along the chosen path.
    fn check_txn(&self, t: &TxnRequest, path: &TxnPath) -> Result<(), MvccError> {
        if !is_txn_read_only(t) {
            self.check_requests(t, path, &|s: &Self, op: &RequestOp| s.check_put_op(op))?;
        }
        self.check_requests(t, path, &|s: &Self, op: &RequestOp| s.check_range_op(op))
    }

    /// etcd's `applierV3backend.Txn`.
    fn apply_txn(&mut self, t: &TxnRequest) -> (Result<TxnResponse, MvccError>, Vec<Event>) {
        let path = self.compare_path(t);
        if let Err(e) = self.check_txn(t, &path) {
            return (Err(e), Vec::new());
        }
        // etcd panics if an op fails past the checks (only reachable through put-after-delete
        // of the same key, which checkIntervals lets through for `range_end == [0]` deletes);
        // here the whole txn is rolled back instead.
        self.write(|s, w| s.exec_txn(w, t, &path))
    }

    /// etcd's `applyTxn`.
    fn exec_txn(
        &mut self,
        w: &mut WriteTxn,
        t: &TxnRequest,
        path: &TxnPath,
    ) -> Result<TxnResponse, MvccError> {
        let ops = if path.succeeded {
            &t.success
        } else {
            &t.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                RequestOp::Range(r) => {
                    let at = self.read_rev(w);
                    ResponseOp::Range(self.range_at(r, at)?)
                }
                RequestOp::Put(p) => ResponseOp::Put(self.exec_put(w, p)?),
                RequestOp::DeleteRange(d) => ResponseOp::DeleteRange(self.exec_delete(w, d)),
                RequestOp::Txn(n) => {
                    let p = nested.next().expect("txn path built from this request");
                    ResponseOp::Txn(self.exec_txn(w, n, p)?)
                }
            });
        }
        Ok(TxnResponse {
            succeeded: path.succeeded,
            responses,
        })
    }

    /// `exec_txn` for a txn without writes, on a shared reference.
    fn exec_read_txn(&self, t: &TxnRequest, path: &TxnPath) -> Result<TxnResponse, MvccError> {
        let ops = if path.succeeded {
            &t.success
        } else {
            &t.failure
        };
        let mut nested = path.nested.iter();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                RequestOp::Range(r) => {
                    responses.push(ResponseOp::Range(self.range_at(r, self.current_rev)?));
                }
                RequestOp::Txn(n) => {
                    let p = nested.next().expect("txn path built from this request");
                    responses.push(ResponseOp::Txn(self.exec_read_txn(n, p)?));
                }
                // Excluded by `is_txn_read_only`.
                RequestOp::Put(_) | RequestOp::DeleteRange(_) => {}
            }
        }
        Ok(TxnResponse {
            succeeded: path.succeeded,
            responses,
        })
    }

    // ----- compaction and leases ---------------------------------------------------------

    /// etcd's `store.Compact` (`updateCompactRev` + `keyIndex.compact` + the backend deletes):
    /// keeps, for every key, the newest revision at or before `rev` unless it is a tombstone,
    /// and drops everything else at or before `rev`.
    fn compact(&mut self, rev: i64) -> Result<(), MvccError> {
        if rev <= self.compact_rev {
            return Err(MvccError::Compacted);
        }
        if rev > self.current_rev {
            return Err(MvccError::FutureRevision);
        }
        let from = self.compact_rev + 1;
        self.compact_rev = rev;
        // Keys untouched since the previous compaction are already in compacted form.
        let keys: BTreeSet<Vec<u8>> = self
            .log
            .range((from, 0)..=(rev, i64::MAX))
            .map(|(_, rec)| rec.kv.key.clone())
            .collect();
        for key in keys {
            let Some(revs) = self.index.get_mut(&key) else {
                continue;
            };
            let n = revs.partition_point(|r| r.main <= rev);
            if n == 0 {
                continue;
            }
            let drop = if revs[n - 1].tombstone { n } else { n - 1 };
            for r in revs.drain(..drop) {
                self.log.remove(&(r.main, r.sub));
            }
            if revs.is_empty() {
                self.index.remove(&key);
            }
        }
        Ok(())
    }

    /// etcd's `lessor.Grant` (without the minimum-TTL clamp, which is configuration).
    fn lease_grant(&mut self, id: i64, ttl: i64) -> Result<CommandResult, MvccError> {
        if id == 0 {
            return Err(MvccError::LeaseNotFound);
        }
        if ttl > MAX_LEASE_TTL {
            return Err(MvccError::LeaseTtlTooLarge);
        }
        if self.leases.contains_key(&id) {
            return Err(MvccError::LeaseExists);
        }
        self.leases.insert(
            id,
            LeaseState {
                ttl,
                keys: BTreeSet::new(),
            },
        );
        Ok(CommandResult::LeaseGrant { id, ttl })
    }

    /// etcd's `lessor.Revoke`: deletes the attached keys in sorted order in one write txn
    /// (one revision, none if there are no keys), then removes the lease.
    fn lease_revoke(&mut self, id: i64) -> (Result<CommandResult, MvccError>, Vec<Event>) {
        let Some(lease) = self.leases.get(&id) else {
            return (Err(MvccError::LeaseNotFound), Vec::new());
        };
        let keys: Vec<Vec<u8>> = lease.keys.iter().cloned().collect();
        let (r, events) = self.write(|s, w| {
            for k in &keys {
                s.w_delete_range(w, k, &[]);
            }
            Ok(())
        });
        if r.is_ok() {
            self.leases.remove(&id);
        }
        (r.map(|()| CommandResult::LeaseRevoke), events)
    }
}

#[cfg(test)]
impl Store {
    /// Whether the key index still has an entry for `key` (test introspection).
    pub(super) fn index_contains(&self, key: &[u8]) -> bool {
        self.index.contains_key(key)
    }

    /// Every retained `(main, sub)` revision (test introspection).
    pub(super) fn retained_revisions(&self) -> Vec<(i64, i64)> {
        self.log.keys().copied().collect()
    }
}
