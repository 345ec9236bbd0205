//! A linearizability checker for histories recorded from concurrent clients.
//!
//! Tests of replicated stores run several clients against a cluster while nodes are killed and
//! paused, record every operation in a [`Recorder`], then ask [`check`] (or
//! [`check_with_timeout`]) whether the history is linearizable: whether there is one order of
//! the operations that respects real time (an operation that returned before another was
//! invoked comes first) and in which every operation's observed output is what a sequential
//! [`Model`] of the store answers.
//!
//! ```
//! use uc_testkit::linearizability::{check, KvOp, KvOutput, KvRegister, Operation};
//! let history = vec![
//!     // client 1 writes "a" between t=0 and t=10 (nanoseconds)
//!     Operation::ok(1, 0, 10, KvOp::put("a"), KvOutput::Done),
//!     // client 2 reads after that write returned, and sees nothing: a stale read
//!     Operation::ok(2, 20, 30, KvOp::Get, KvOutput::Value(None)),
//! ];
//! let result = check::<KvRegister>(&history);
//! assert!(result.is_violation(), "{result}");
//! ```
//!
//! # Histories
//!
//! An [`Operation`] has a client id (only used in reports: the checker does not assume that a
//! client's operations are sequential), an invocation time `call` and a response time `ret`,
//! both **`u64` nanoseconds read from one monotonic clock** (the [`Recorder`] uses
//! [`std::time::Instant`], counted from its creation), the input, and an [`Outcome`]:
//!
//! - [`Outcome::Ok`]`(output)`: the client got an answer; the operation took effect exactly
//!   once, at some instant in `[call, ret]`.
//! - [`Outcome::Unknown`]: the client timed out, the connection broke, the node it talked to
//!   was killed: the operation may or may not have taken effect, at any instant after `call`.
//!   Its `ret` is informational only (when the client gave up); the checker treats the response
//!   as coming at +infinity and does not compare any output.
//!
//! An operation that **definitely failed** (the server rejected it before doing anything, the
//! request could not be sent) must **not be recorded** ([`Recorder::discard`]): it has no
//! effect to place. When in doubt (etcd's "request timed out" may well have committed), record
//! it as unknown; that is always sound, only slower to check.
//!
//! Real-time order is strict: `a` precedes `b` only if `a.ret < b.call`. Equal timestamps count
//! as concurrent, which can only make more histories linearizable, never fewer.
//!
//! # The algorithm
//!
//! Wing & Gong's search with Lowe's improvements (G. Lowe, "Testing for linearizability",
//! 2017), the "WGL" algorithm Porcupine and Knossos use. Invocation and response events are
//! sorted by time into a doubly linked list. The search walks the list from the front: every
//! call event before the first response event belongs to an operation that may take effect
//! next; it tries them in turn, stepping the model and comparing outputs, and on success
//! removes ("lifts") the operation's two events from the list and starts again at the front.
//! Reaching a response event means that operation should already have taken effect: the search
//! backtracks (pops the last linearized operation, restores its events and the model state, and
//! tries the next candidate). A cache of (set of linearized operations, model state) pairs
//! already reached prunes the search: reaching the same pair along another path cannot end
//! differently. Before checking, the model's [`Model::partition`] hook splits the history into
//! independent sub-histories (one per key for a key-value store) which are checked separately:
//! linearizability is compositional (Herlihy & Wing's locality; Horn & Kroening's
//! P-compositionality), and per-key checking is what makes large histories feasible.
//!
//! Three sound refinements on top, each argued where it is implemented:
//!
//! - **Read-only operations go first.** An operation the model declares read-only by its
//!   observed output ([`Model::read_only`]: a get, a compare-and-set that answered `false`)
//!   that can go next and fits is linearized at once, without trying alternatives: in any
//!   linearization it could be moved there. Only concurrent *writes* make the search branch.
//! - **Dominance for unknown operations.** The cache keys configurations by (linearized
//!   operations with a known outcome, state) and keeps the minimal sets of linearized unknown
//!   operations: a configuration reached with more unknown operations applied than an earlier
//!   one, and otherwise equal, is pruned (having fewer of them applied leaves strictly more
//!   options).
//! - **Unknown operations last.** Candidates with a known outcome are tried before unknown
//!   ones, and unknown ones newest first, so that a timed-out write is made to take effect only
//!   when a later operation needs it.
//!
//! ## Unknown outcomes
//!
//! The response event of an unknown operation is placed at the very end of the list (after
//! every response), so the search may linearize it at any point after its invocation — which is
//! how a later read can observe a write whose client timed out. It must also be possible that
//! it **never took effect**; that needs no separate case. The model's `step` is total (every
//! input is accepted in every state) and an unknown operation's output is not compared, so an
//! unknown operation can always be linearized *after every other operation*, where it changes
//! nothing but the final state, and no operation observes the final state (a final read is just
//! another operation in the history). "Took effect after everything else" and "never took
//! effect" are therefore indistinguishable, and the search succeeds as soon as every operation
//! with a known outcome has been linearized; the unknown operations left over are the ones that
//! took effect at the end or never. (This is exactly Knossos' and Porcupine's treatment of
//! crashed / `:info` operations.) The tests check this against a brute-force search that
//! drops unknown operations explicitly.
//!
//! # Limitations
//!
//! Checking linearizability is NP-complete: the worst case is exponential in the number of
//! writes concurrent with each other within one partition, and an unknown operation stays a
//! candidate until the end of its partition, so each one adds branches everywhere after its
//! invocation. Measured (release build, registers, clients issuing one operation at a time):
//! 20 000 operations of 10–20 clients over 10 keys with 1–3 % unknown outcomes are checked in
//! well under a second either way, linearizable or not; one key with 10 000 operations and
//! ~100 unknown outcomes is found linearizable in a fraction of a second, but *proving* such a
//! history non-linearizable needs an exhaustive search that may take minutes; 50 clients
//! writing one key concurrently is out of reach. So: spread the workload over several keys,
//! keep client timeouts short, and use [`check_with_timeout`], which answers
//! [`CheckResult::Unknown`] instead of hanging (the budget is checked every 1024 search steps;
//! freeing a huge search's memory afterwards adds about a second per two million cached
//! configurations). Memory grows with the configurations reached. Partitions are checked one
//! after another on the calling thread. The key-value model [`Kv`] only partitions single-key
//! operations; a multi-key transaction needs a model of its own whose state holds every key
//! and whose partition hook keeps together the keys a transaction touches.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Debug};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How an operation ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome<O> {
    /// The client got this answer: the operation took effect between `call` and `ret`.
    Ok(O),
    /// The client never learned the outcome (timeout, broken connection, killed node): the
    /// operation may have taken effect at any time after `call`, or never.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Operation<I, O> {
    /// Who issued it; only used in reports.
    pub client: u64,
    /// Invocation time: monotonic nanoseconds, taken before the request was sent.
    pub call: u64,
    /// Response time: monotonic nanoseconds, taken after the answer arrived. For
    /// [`Outcome::Unknown`] it is informational only (when the client gave up); the checker
    /// treats it as +infinity.
    pub ret: u64,
    pub input: I,
    pub outcome: Outcome<O>,
}

impl<I, O> Operation<I, O> {
    /// An operation that returned `output`.
    pub fn ok(client: u64, call: u64, ret: u64, input: I, output: O) -> Self {
        Self {
            client,
            call,
            ret,
            input,
            outcome: Outcome::Ok(output),
        }
    }

    /// An operation whose outcome is unknown (`ret` is set to `u64::MAX`).
    pub fn unknown(client: u64, call: u64, input: I) -> Self {
        Self {
            client,
            call,
            ret: u64::MAX,
            input,
            outcome: Outcome::Unknown,
        }
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self.outcome, Outcome::Unknown)
    }
}

/// A sub-history checked on its own: indices into the history, and a label for reports (the
/// key, for the key-value model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub label: String,
    pub ops: Vec<usize>,
}

impl Partition {
    /// The whole history of `len` operations as one partition, labelled `""`.
    pub fn whole(len: usize) -> Self {
        Self {
            label: String::new(),
            ops: (0..len).collect(),
        }
    }
}

/// A sequential specification of the object under test.
///
/// `step` must be total and deterministic: every input is accepted in every state.
/// (Reject-style outcomes are outputs: a compare-and-set answers `false`.)
pub trait Model {
    /// The object's state; cloned, hashed and compared by the search cache, so keep it small.
    type State: Clone + Eq + Hash + Debug;
    type Input: Debug;
    type Output: PartialEq + Debug;

    fn init() -> Self::State;

    /// Applies `input` to `state`: the next state and the output a client would see.
    fn step(state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output);

    /// Splits the history into sub-histories that can be checked independently (each starts
    /// from [`Model::init`]): an operation in one partition never affects or observes the
    /// state of another. Every operation should be in exactly one partition. The default is
    /// the whole history as one partition.
    fn partition(history: &[Operation<Self::Input, Self::Output>]) -> Vec<Partition> {
        vec![Partition::whole(history.len())]
    }

    /// Whether an operation that answered `output` left the state unchanged, whatever the
    /// state was: for every state `s` where `step(s, input).1 == *output`, also
    /// `step(s, input).0 == s` (a read; a compare-and-set that answered `false`). The search
    /// then linearizes it as soon as it fits and tries no alternative, which keeps concurrent
    /// reads from multiplying the search. Answering `false` is always correct, only slower
    /// (the default); answering `true` wrongly can make the checker report violations that
    /// are not there.
    fn read_only(input: &Self::Input, output: &Self::Output) -> bool {
        let _ = (input, output);
        false
    }
}

/// The verdict of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    Linearizable,
    NotLinearizable(Violation),
    /// The time budget of [`check_with_timeout`] ran out before a verdict.
    Unknown {
        reason: String,
    },
}

impl CheckResult {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Self::Linearizable)
    }

    /// Whether the history was shown not to be linearizable.
    pub fn is_violation(&self) -> bool {
        matches!(self, Self::NotLinearizable(_))
    }

    pub fn violation(&self) -> Option<&Violation> {
        match self {
            Self::NotLinearizable(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Linearizable => f.write_str("linearizable"),
            Self::NotLinearizable(v) => f.write_str(&v.explanation),
            Self::Unknown { reason } => write!(f, "linearizability unknown: {reason}"),
        }
    }
}

/// Why a history is not linearizable. Operation numbers are indices into the checked history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The label of the partition that failed (the key, for [`Kv`]; `""` without partitions).
    pub partition: String,
    /// The partition's operations.
    pub operations: Vec<usize>,
    /// The longest linearizable prefix of the partition the search reached, in linearization
    /// order: where the history stops making sense. (Pruned branches are not counted, so a
    /// prefix with more unknown operations in it may exist.)
    pub longest_prefix: Vec<usize>,
    /// The operations that could be next after that prefix (invoked before the first
    /// remaining response); none of them leads to a complete linearization.
    pub stuck: Vec<usize>,
    /// A human-readable account of the above.
    pub explanation: String,
}

/// Checks `history` against model `M`, however long it takes.
pub fn check<M: Model>(history: &[Operation<M::Input, M::Output>]) -> CheckResult {
    run::<M>(history, None)
}

/// Checks `history` against model `M`, giving up with [`CheckResult::Unknown`] after
/// `timeout`.
pub fn check_with_timeout<M: Model>(
    history: &[Operation<M::Input, M::Output>],
    timeout: Duration,
) -> CheckResult {
    run::<M>(history, Some(Instant::now().checked_add(timeout)).flatten())
}

/// Panics with the explanation if `history` is not linearizable. If the check runs out of
/// time the verdict is only printed: tests do not fail on timing.
pub fn assert_linearizable<M: Model>(
    history: &[Operation<M::Input, M::Output>],
    timeout: Duration,
) -> CheckResult {
    let result = check_with_timeout::<M>(history, timeout);
    match &result {
        CheckResult::NotLinearizable(v) => panic!("{}", v.explanation),
        CheckResult::Unknown { reason } => {
            eprintln!("linearizability check gave no verdict: {reason}")
        }
        CheckResult::Linearizable => {}
    }
    result
}

fn run<M: Model>(
    history: &[Operation<M::Input, M::Output>],
    deadline: Option<Instant>,
) -> CheckResult {
    for (i, op) in history.iter().enumerate() {
        if !op.is_unknown() {
            assert!(
                op.call <= op.ret,
                "operation #{i}: response time {} is before its invocation time {}",
                op.ret,
                op.call
            );
        }
    }
    let partitions = M::partition(history);
    for part in &partitions {
        if let Some(&bad) = part.ops.iter().find(|&&i| i >= history.len()) {
            panic!(
                "partition {:?} names operation #{bad}, but the history has {}",
                part.label,
                history.len()
            );
        }
    }
    for (done, part) in partitions.iter().enumerate() {
        let ops: Vec<&Operation<M::Input, M::Output>> =
            part.ops.iter().map(|&i| &history[i]).collect();
        match search::<M>(&ops, deadline) {
            Search::Linearizable => {}
            Search::TimedOut => {
                return CheckResult::Unknown {
                    reason: format!(
                        "time budget exhausted while checking partition {:?} ({} operations); \
                         {done} of {} partitions were linearizable",
                        part.label,
                        part.ops.len(),
                        partitions.len()
                    ),
                };
            }
            Search::Stuck { prefix, stuck } => {
                return CheckResult::NotLinearizable(explain::<M>(history, part, &prefix, &stuck));
            }
        }
    }
    CheckResult::Linearizable
}

enum Search {
    Linearizable,
    TimedOut,
    /// Local operation indices.
    Stuck {
        prefix: Vec<usize>,
        stuck: Vec<usize>,
    },
}

const NIL: usize = usize::MAX;

/// A doubly linked list over event nodes `1..`, with node 0 as its head sentinel, from which
/// nodes are removed and restored in stack order (dancing links).
struct List {
    next: Vec<usize>,
    prev: Vec<usize>,
}

impl List {
    /// A list of `nodes` (ascending), over node numbers below `len`.
    fn new(len: usize, nodes: impl Iterator<Item = usize>) -> Self {
        let mut list = Self {
            next: vec![NIL; len],
            prev: vec![NIL; len],
        };
        let mut last = 0;
        for node in nodes {
            list.next[last] = node;
            list.prev[node] = last;
            last = node;
        }
        list
    }

    fn remove(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    /// Undoes [`List::remove`]; removals are undone in reverse order.
    fn restore(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }
}

/// One linearized operation on the search stack.
struct Frame<S> {
    /// Its call node.
    call: usize,
    /// The state before it.
    before: S,
    /// The known set's `(lo, hi)` before it.
    bounds: (usize, usize),
    /// Whether it was linearized with no alternatives (see `Scan::Fresh`).
    forced: bool,
}

/// Where the search is in the scan of the candidates that may be linearized next.
#[derive(Clone, Copy)]
enum Scan {
    /// Looking for an operation to linearize with no alternatives, in a new configuration.
    Fresh,
    /// Walking the main list: operations with a known outcome, up to the first response.
    Known(usize),
    /// Walking the unknown operations invoked before that response, newest first.
    Unknown(usize),
}

fn search<M: Model>(ops: &[&Operation<M::Input, M::Output>], deadline: Option<Instant>) -> Search {
    let n = ops.len();
    // (response at infinity, time, is a response, operation): at equal times calls sort before
    // responses, so operations touching in time count as concurrent. Node k + 1 is event k, so
    // comparing nodes compares times.
    let mut sorted: Vec<(bool, u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        sorted.push((false, op.call, false, i));
        sorted.push(match op.outcome {
            Outcome::Ok(_) => (false, op.ret, true, i),
            Outcome::Unknown => (true, 0, true, i),
        });
    }
    sorted.sort_unstable();
    let len = 2 * n + 1;
    let mut node_op = vec![0; len];
    let mut call_node = vec![0; n];
    let mut ret_node = vec![0; n];
    for (pos, &(_, _, is_ret, op)) in sorted.iter().enumerate() {
        node_op[pos + 1] = op;
        if is_ret {
            ret_node[op] = pos + 1;
        } else {
            call_node[op] = pos + 1;
        }
    }
    let unknown = |op: usize| ops[op].is_unknown();
    // The main list holds the calls and responses of operations with a known outcome. Unknown
    // operations respond at infinity, after every known response, so their responses are
    // never reached and are left out, and their calls get a list of their own: they stay
    // candidates to the end, and the main scan need not step over them again and again.
    let mut main = List::new(len, (1..len).filter(|&node| !unknown(node_op[node])));
    let mut pending = List::new(
        len,
        (1..len).filter(|&node| unknown(node_op[node]) && node == call_node[node_op[node]]),
    );

    // Linearized operations, as two bit sets: known outcomes and unknown outcomes, each
    // operation numbered within its kind in invocation order.
    let mut class_index = vec![0; n];
    let (mut known_count, mut unknown_count) = (0usize, 0usize);
    for &(_, _, is_ret, op) in &sorted {
        if !is_ret {
            let count = if unknown(op) {
                &mut unknown_count
            } else {
                &mut known_count
            };
            class_index[op] = *count;
            *count += 1;
        }
    }
    let mut known_set = KnownSet {
        words: vec![0; known_count.div_ceil(64)],
        lo: 0,
        hi: 0,
    };
    let mut unknown_set = vec![0u64; unknown_count.div_ceil(64)];
    let mut cache = Cache::default();
    let mut calls: Vec<Frame<M::State>> = Vec::new();
    let mut state = M::init();
    let mut known_left = known_count;
    let mut best: Vec<usize> = Vec::new();
    // Each scan of the candidates (the calls before the first response) makes two passes:
    // operations with a known outcome first, then unknown ones from the most recently invoked,
    // so that an unknown operation is only made to take effect when nothing else works, and
    // as late as possible. Any order of candidates is complete; this one finds linearizations
    // sooner.
    let mut scan = Scan::Fresh;
    let mut steps: u64 = 0;
    loop {
        // Unknown operations left over take effect at the end, or never (see the module docs).
        if known_left == 0 {
            return Search::Linearizable;
        }
        if let Some(deadline) = deadline
            && steps.is_multiple_of(1024)
            && Instant::now() >= deadline
        {
            return Search::TimedOut;
        }
        steps += 1;
        let (entry, forced) = match scan {
            Scan::Fresh => {
                // A candidate that is read-only by its observed output (`Model::read_only`: a
                // read, a failed compare-and-set) and fits goes next, and nothing else is
                // tried here: in any linearization of the rest it can be moved to the front,
                // as it may go now, answers the same now, and changes the state nowhere. This
                // keeps concurrent reads from multiplying the search.
                let mut node = main.next[0];
                let mut found = None;
                while node != ret_node[node_op[node]] {
                    let op = &ops[node_op[node]];
                    if let Outcome::Ok(observed) = &op.outcome
                        && M::read_only(&op.input, observed)
                        && M::step(&state, &op.input).1 == *observed
                    {
                        found = Some(node);
                        break;
                    }
                    node = main.next[node];
                }
                match found {
                    Some(node) => (node, true),
                    None => {
                        scan = Scan::Known(main.next[0]);
                        continue;
                    }
                }
            }
            Scan::Known(node) if node == ret_node[node_op[node]] => {
                // The first response: on to the unknown operations invoked before it. (The
                // main list always ends with a response, as some known operation is left.)
                let mut last = 0;
                while pending.next[last] != NIL && pending.next[last] < node {
                    last = pending.next[last];
                }
                scan = Scan::Unknown(last);
                continue;
            }
            Scan::Known(node) => (node, false),
            Scan::Unknown(0) => {
                // No candidate works: backtrack.
                if calls.len() > best.len() {
                    best = calls.iter().map(|frame| node_op[frame.call]).collect();
                }
                let Some(Frame {
                    call,
                    before,
                    bounds,
                    forced,
                }) = calls.pop()
                else {
                    let stuck = stuck_after(&best, &call_node, &ret_node);
                    return Search::Stuck {
                        prefix: best,
                        stuck,
                    };
                };
                let op = node_op[call];
                state = before;
                if unknown(op) {
                    clear_bit(&mut unknown_set, class_index[op]);
                    pending.restore(call);
                    scan = Scan::Unknown(pending.prev[call]);
                } else {
                    known_set.clear(class_index[op], bounds);
                    known_left += 1;
                    main.restore(ret_node[op]);
                    main.restore(call);
                    scan = if forced {
                        Scan::Unknown(0) // no alternatives: backtrack further
                    } else {
                        Scan::Known(main.next[call])
                    };
                }
                continue;
            }
            Scan::Unknown(node) => (node, false),
        };
        let op = node_op[entry];
        let advance = |scan: Scan| match scan {
            Scan::Known(node) => Scan::Known(main.next[node]),
            Scan::Unknown(node) => Scan::Unknown(pending.prev[node]),
            // A forced operation whose configuration was reached before: backtrack.
            Scan::Fresh => Scan::Unknown(0),
        };
        let (next_state, output) = M::step(&state, &ops[op].input);
        let fits = match &ops[op].outcome {
            Outcome::Ok(observed) => *observed == output,
            // An unknown operation that changes nothing here is as good as one that never
            // takes effect, which needs no branch of its own. And when the last operation
            // linearized was unknown too, and this one leads to the same state from the state
            // before that one, the configuration is dominated (see `Cache`) by linearizing
            // only this one there, which the search tries too.
            Outcome::Unknown => {
                next_state != state
                    && !calls.last().is_some_and(|last| {
                        unknown(node_op[last.call])
                            && M::step(&last.before, &ops[op].input).0 == next_state
                    })
            }
        };
        if !fits {
            scan = advance(scan);
            continue;
        }
        let bit = class_index[op];
        let bounds = (known_set.lo, known_set.hi);
        let fresh = if unknown(op) {
            cache.insert(&known_set, &next_state, &unknown_set, Some(bit))
        } else {
            known_set.set(bit);
            let fresh = cache.insert(&known_set, &next_state, &unknown_set, None);
            if !fresh {
                known_set.clear(bit, bounds);
            }
            fresh
        };
        if !fresh {
            scan = advance(scan);
            continue;
        }
        calls.push(Frame {
            call: entry,
            before: std::mem::replace(&mut state, next_state),
            bounds,
            forced,
        });
        if unknown(op) {
            set_bit(&mut unknown_set, bit);
            pending.remove(entry);
        } else {
            known_left -= 1;
            main.remove(entry);
            main.remove(ret_node[op]);
        }
        scan = Scan::Fresh;
    }
}

/// The linearized known-outcome operations, numbered in invocation order. Every linearized
/// operation was invoked before the first operation not yet linearized returned, so the set
/// is a run of ones, a window about as wide as the concurrency, and zeros: words before `lo`
/// are all ones, words from `hi` on are zero, and `(lo, words[lo..hi])` is a compact key.
struct KnownSet {
    words: Vec<u64>,
    lo: usize,
    hi: usize,
}

impl KnownSet {
    fn set(&mut self, bit: usize) {
        set_bit(&mut self.words, bit);
        self.hi = self.hi.max(bit / 64 + 1);
        while self.lo < self.hi && self.words[self.lo] == u64::MAX {
            self.lo += 1;
        }
    }

    /// Undoes [`KnownSet::set`], given the bounds from before it.
    fn clear(&mut self, bit: usize, (lo, hi): (usize, usize)) {
        clear_bit(&mut self.words, bit);
        (self.lo, self.hi) = (lo, hi);
    }
}

fn set_bit(set: &mut [u64], bit: usize) {
    set[bit / 64] |= 1 << (bit % 64);
}

fn clear_bit(set: &mut [u64], bit: usize) {
    set[bit / 64] &= !(1 << (bit % 64));
}

/// Whether bit set `seen` is a subset of `set` plus bit `extra` (sets of the same length).
fn subset_with(seen: &[u64], set: &[u64], extra: Option<usize>) -> bool {
    seen.iter().zip(set).enumerate().all(|(i, (x, y))| {
        let extra_word = match extra {
            Some(bit) if bit / 64 == i => 1 << (bit % 64),
            _ => 0,
        };
        x & !(y | extra_word) == 0
    })
}

/// The configurations the search has reached: (linearized known-outcome operations, state)
/// with the minimal sets of linearized unknown operations it was reached with.
///
/// A configuration (K, U, s) is dominated by (K, U', s) when U' ⊆ U: unknown operations never
/// have to take effect and never constrain real-time order, so from (K, U', s) every
/// continuation of (K, U, s) is possible too. Once (K, U', s) has been reached, (K, U, s) is
/// pruned. With U' = U this is WGL's cache; the subset rule keeps unknown operations from
/// multiplying the search space by every subset of them that has taken effect, since
/// applying an unknown write that a later write overwrites leads back to a known
/// configuration.
///
/// Slots are found by a hash of the borrowed key, so lookups that prune allocate nothing.
struct Cache<S> {
    hasher: std::hash::RandomState,
    buckets: HashMap<u64, Vec<Slot<S>>>,
}

struct Slot<S> {
    lo: usize,
    words: Box<[u64]>,
    state: S,
    minimal: Vec<Box<[u64]>>,
}

impl<S> Default for Cache<S> {
    fn default() -> Self {
        Self {
            hasher: Default::default(),
            buckets: HashMap::new(),
        }
    }
}

impl<S: Hash + Eq + Clone> Cache<S> {
    /// Records the configuration (`known`, `state`, `unknown` plus bit `extra`); false if it or
    /// one that dominates it was reached before.
    fn insert(
        &mut self,
        known: &KnownSet,
        state: &S,
        unknown: &[u64],
        extra: Option<usize>,
    ) -> bool {
        use std::hash::BuildHasher as _;
        let (lo, words) = (known.lo, &known.words[known.lo..known.hi]);
        let bucket = self
            .buckets
            .entry(self.hasher.hash_one((lo, words, state)))
            .or_default();
        let materialize = || {
            let mut set: Box<[u64]> = unknown.into();
            if let Some(bit) = extra {
                set_bit(&mut set, bit);
            }
            set
        };
        match bucket
            .iter_mut()
            .find(|slot| slot.lo == lo && *slot.words == *words && slot.state == *state)
        {
            Some(slot) => {
                if slot
                    .minimal
                    .iter()
                    .any(|seen| subset_with(seen, unknown, extra))
                {
                    return false;
                }
                let current = materialize();
                slot.minimal
                    .retain(|seen| !subset_with(&current, seen, None));
                slot.minimal.push(current);
            }
            None => bucket.push(Slot {
                lo,
                words: words.into(),
                state: state.clone(),
                minimal: vec![materialize()],
            }),
        }
        true
    }
}

/// The operations not in `prefix` that were invoked before the first response among them.
fn stuck_after(prefix: &[usize], call_node: &[usize], ret_node: &[usize]) -> Vec<usize> {
    let mut done = vec![false; call_node.len()];
    for &op in prefix {
        done[op] = true;
    }
    let first_ret = (0..call_node.len())
        .filter(|&op| !done[op])
        .map(|op| ret_node[op])
        .min()
        .unwrap_or(NIL);
    let mut stuck: Vec<usize> = (0..call_node.len())
        .filter(|&op| !done[op] && call_node[op] < first_ret)
        .collect();
    stuck.sort_by_key(|&op| call_node[op]);
    stuck
}

/// How many operations an explanation lists at most, per list.
const SHOWN: usize = 12;

fn explain<M: Model>(
    history: &[Operation<M::Input, M::Output>],
    part: &Partition,
    prefix: &[usize],
    stuck: &[usize],
) -> Violation {
    use std::fmt::Write as _;
    let global = |local: usize| part.ops[local];
    let mut text = String::new();
    let where_ = if part.label.is_empty() {
        String::new()
    } else {
        format!(" in partition {:?}", part.label)
    };
    let _ = writeln!(
        text,
        "history is not linearizable{where_} ({} operations)",
        part.ops.len()
    );

    let mut state = M::init();
    let mut states = Vec::with_capacity(prefix.len());
    for &local in prefix {
        state = M::step(&state, &history[global(local)].input).0;
        states.push(state.clone());
    }
    let _ = writeln!(
        text,
        "longest linearizable prefix: {} of {} operations, in this order{}:",
        prefix.len(),
        part.ops.len(),
        if prefix.len() > SHOWN {
            format!(" (last {SHOWN} shown)")
        } else {
            String::new()
        }
    );
    if prefix.is_empty() {
        let _ = writeln!(text, "  (none; initial state {state:?})");
    }
    let skip = prefix.len().saturating_sub(SHOWN);
    for (&local, after) in prefix.iter().zip(&states).skip(skip) {
        let g = global(local);
        let _ = writeln!(text, "  {}  => state {after:?}", describe(g, &history[g]));
    }
    let _ = writeln!(
        text,
        "after it, with state {state:?}, none of the operations that may go next leads to a \
         linearization:"
    );
    for &local in stuck.iter().take(SHOWN) {
        let g = global(local);
        let op = &history[g];
        let (_, output) = M::step(&state, &op.input);
        let why = match &op.outcome {
            Outcome::Ok(observed) if *observed != output => {
                format!("the model answers {output:?} here")
            }
            _ => "fits here, but the rest cannot be linearized after it".to_owned(),
        };
        let _ = writeln!(text, "  {}: {why}", describe(g, op));
    }
    if stuck.len() > SHOWN {
        let _ = writeln!(text, "  ... and {} more", stuck.len() - SHOWN);
    }
    if part.ops.len() <= 3 * SHOWN {
        let mut by_call = part.ops.clone();
        by_call.sort_by_key(|&g| (history[g].call, g));
        let _ = writeln!(text, "the partition's operations, by invocation time:");
        for g in by_call {
            let _ = writeln!(text, "  {}", describe(g, &history[g]));
        }
    }
    Violation {
        partition: part.label.clone(),
        operations: part.ops.clone(),
        longest_prefix: prefix.iter().map(|&l| global(l)).collect(),
        stuck: stuck.iter().map(|&l| global(l)).collect(),
        explanation: text,
    }
}

fn describe<I: Debug, O: Debug>(index: usize, op: &Operation<I, O>) -> String {
    let call = Duration::from_nanos(op.call);
    match &op.outcome {
        Outcome::Ok(output) => format!(
            "#{index} client {} [{call:?}, {:?}] {:?} -> {output:?}",
            op.client,
            Duration::from_nanos(op.ret),
            op.input
        ),
        Outcome::Unknown => format!(
            "#{index} client {} [{call:?}, unknown] {:?} -> unknown",
            op.client, op.input
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Key-value models

/// An operation on one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Output [`KvOutput::Done`].
    Put(String),
    /// Output [`KvOutput::Value`].
    Get,
    /// "If the value is `expected` (`None`: the key is absent), put `new`", as an etcd txn.
    /// Output [`KvOutput::Swapped`].
    CompareAndSet {
        expected: Option<String>,
        new: String,
    },
    /// Output [`KvOutput::Done`].
    Delete,
}

impl KvOp {
    pub fn put(value: impl Into<String>) -> Self {
        Self::Put(value.into())
    }

    pub fn cas(expected: Option<&str>, new: impl Into<String>) -> Self {
        Self::CompareAndSet {
            expected: expected.map(str::to_owned),
            new: new.into(),
        }
    }
}

/// What a [`KvOp`] answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// A put or delete was applied.
    Done,
    /// What a get saw (`None`: the key is absent).
    Value(Option<String>),
    /// Whether a compare-and-set wrote.
    Swapped(bool),
}

impl KvOutput {
    pub fn value(value: Option<&str>) -> Self {
        Self::Value(value.map(str::to_owned))
    }
}

/// Gets, and compare-and-sets that did not swap.
fn kv_read_only(op: &KvOp, output: &KvOutput) -> bool {
    match op {
        KvOp::Get => true,
        KvOp::CompareAndSet { .. } => *output == KvOutput::Swapped(false),
        KvOp::Put(_) | KvOp::Delete => false,
    }
}

fn kv_step(state: &Option<String>, op: &KvOp) -> (Option<String>, KvOutput) {
    match op {
        KvOp::Put(value) => (Some(value.clone()), KvOutput::Done),
        KvOp::Get => (state.clone(), KvOutput::Value(state.clone())),
        KvOp::CompareAndSet { expected, new } => {
            if state == expected {
                (Some(new.clone()), KvOutput::Swapped(true))
            } else {
                (state.clone(), KvOutput::Swapped(false))
            }
        }
        KvOp::Delete => (None, KvOutput::Done),
    }
}

/// A single key of a key-value store: a register that may be absent (initially absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct KvRegister;

impl Model for KvRegister {
    type State = Option<String>;
    type Input = KvOp;
    type Output = KvOutput;

    fn init() -> Self::State {
        None
    }

    fn step(state: &Self::State, input: &KvOp) -> (Self::State, KvOutput) {
        kv_step(state, input)
    }

    fn read_only(input: &KvOp, output: &KvOutput) -> bool {
        kv_read_only(input, output)
    }
}

/// An operation on a named key of a [`Kv`] store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KvInput {
    pub key: String,
    pub op: KvOp,
}

impl KvInput {
    pub fn new(key: impl Into<String>, op: KvOp) -> Self {
        Self {
            key: key.into(),
            op,
        }
    }
}

/// A key-value store of independent keys (every key initially absent), checked one key at a
/// time: [`Model::partition`] groups operations by key (partition label = the key), and the
/// state is that one key's value. `step` therefore relies on the partitioning, which [`check`]
/// always applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kv;

impl Model for Kv {
    type State = Option<String>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init() -> Self::State {
        None
    }

    fn step(state: &Self::State, input: &KvInput) -> (Self::State, KvOutput) {
        kv_step(state, &input.op)
    }

    fn read_only(input: &KvInput, output: &KvOutput) -> bool {
        kv_read_only(&input.op, output)
    }

    fn partition(history: &[Operation<KvInput, KvOutput>]) -> Vec<Partition> {
        let mut keys: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, op) in history.iter().enumerate() {
            keys.entry(&op.input.key).or_default().push(i);
        }
        keys.into_iter()
            .map(|(key, ops)| Partition {
                label: key.to_owned(),
                ops,
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Recording

/// Collects a history from concurrent clients: share it as `Arc<Recorder<I, O>>`.
///
/// ```
/// use std::sync::Arc;
/// use uc_testkit::linearizability::{check, KvOp, KvOutput, KvRegister, Recorder};
/// let recorder = Arc::new(Recorder::<KvOp, KvOutput>::new());
/// let pending = recorder.invoke(7, KvOp::put("a")); // just before sending the request
/// // ... the request succeeds:
/// recorder.complete(pending, KvOutput::Done); // just after the answer arrived
/// let pending = recorder.invoke(7, KvOp::put("b"));
/// // ... the request times out:
/// recorder.unknown(pending);
/// assert!(check::<KvRegister>(&recorder.history()).is_linearizable());
/// ```
///
/// Times are nanoseconds of [`Instant`] since the recorder was created. An invocation whose
/// [`Pending`] is dropped without being completed (a cancelled task, a panic) counts as
/// unknown, which is always sound.
pub struct Recorder<I, O> {
    start: Instant,
    ops: Mutex<Vec<Recorded<I, O>>>,
}

struct Recorded<I, O> {
    client: u64,
    call: u64,
    input: I,
    end: End<O>,
}

enum End<O> {
    Open,
    Ok(u64, O),
    Unknown(u64),
    Discarded,
}

/// An invocation in flight; hand it back to [`Recorder::complete`], [`Recorder::unknown`] or
/// [`Recorder::discard`].
#[derive(Debug)]
#[must_use = "complete the invocation, or mark it unknown or discarded"]
pub struct Pending {
    index: usize,
}

impl<I, O> Default for Recorder<I, O> {
    fn default() -> Self {
        Self::new()
    }
}

impl<I, O> Recorder<I, O> {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the recorder was created.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Recorded<I, O>>> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an invocation; call it just before the request is sent.
    pub fn invoke(&self, client: u64, input: I) -> Pending {
        let call = self.now();
        let mut ops = self.lock();
        ops.push(Recorded {
            client,
            call,
            input,
            end: End::Open,
        });
        Pending {
            index: ops.len() - 1,
        }
    }

    fn end(&self, pending: Pending, end: End<O>) {
        let mut ops = self.lock();
        let op = ops
            .get_mut(pending.index)
            .expect("a Pending from another Recorder");
        assert!(
            matches!(op.end, End::Open),
            "a Pending from another Recorder"
        );
        op.end = end;
    }

    /// The answer arrived; call it just after.
    pub fn complete(&self, pending: Pending, output: O) {
        let ret = self.now();
        self.end(pending, End::Ok(ret, output));
    }

    /// The outcome is unknown: timeout, broken connection, killed node.
    pub fn unknown(&self, pending: Pending) {
        let ret = self.now();
        self.end(pending, End::Unknown(ret));
    }

    /// The operation definitely did not take effect (the server rejected it before doing
    /// anything): it is left out of the history.
    pub fn discard(&self, pending: Pending) {
        self.end(pending, End::Discarded);
    }

    /// How many invocations were recorded (discarded ones included).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The history so far, in invocation order; invocations still open count as unknown.
    pub fn history(&self) -> Vec<Operation<I, O>>
    where
        I: Clone,
        O: Clone,
    {
        self.lock()
            .iter()
            .filter_map(|r| {
                let (ret, outcome) = match &r.end {
                    End::Open => (u64::MAX, Outcome::Unknown),
                    End::Ok(ret, output) => (*ret, Outcome::Ok(output.clone())),
                    End::Unknown(ret) => (*ret, Outcome::Unknown),
                    End::Discarded => return None,
                };
                Some(Operation {
                    client: r.client,
                    call: r.call,
                    ret,
                    input: r.input.clone(),
                    outcome,
                })
            })
            .collect()
    }

    /// The history, without cloning.
    pub fn into_history(self) -> Vec<Operation<I, O>> {
        self.ops
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .into_iter()
            .filter_map(|r| {
                let (ret, outcome) = match r.end {
                    End::Open => (u64::MAX, Outcome::Unknown),
                    End::Ok(ret, output) => (ret, Outcome::Ok(output)),
                    End::Unknown(ret) => (ret, Outcome::Unknown),
                    End::Discarded => return None,
                };
                Some(Operation {
                    client: r.client,
                    call: r.call,
                    ret,
                    input: r.input,
                    outcome,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    type Op = Operation<KvOp, KvOutput>;

    fn put(client: u64, call: u64, ret: u64, v: &str) -> Op {
        Operation::ok(client, call, ret, KvOp::put(v), KvOutput::Done)
    }
    fn get(client: u64, call: u64, ret: u64, v: Option<&str>) -> Op {
        Operation::ok(client, call, ret, KvOp::Get, KvOutput::value(v))
    }
    fn cas(client: u64, call: u64, ret: u64, expected: Option<&str>, new: &str, ok: bool) -> Op {
        Operation::ok(
            client,
            call,
            ret,
            KvOp::cas(expected, new),
            KvOutput::Swapped(ok),
        )
    }
    fn del(client: u64, call: u64, ret: u64) -> Op {
        Operation::ok(client, call, ret, KvOp::Delete, KvOutput::Done)
    }
    fn lin(history: &[Op]) -> bool {
        let result = check::<KvRegister>(history);
        assert!(!matches!(result, CheckResult::Unknown { .. }));
        result.is_linearizable()
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert!(lin(&[]));
        assert!(lin(&[
            get(1, 0, 1, None),
            put(1, 2, 3, "a"),
            get(2, 4, 5, Some("a")),
            cas(1, 6, 7, Some("a"), "b", true),
            cas(2, 8, 9, Some("a"), "c", false),
            get(1, 10, 11, Some("b")),
            del(2, 12, 13),
            get(1, 14, 15, None),
            cas(2, 16, 17, None, "d", true),
            get(1, 18, 19, Some("d")),
        ]));
    }

    #[test]
    fn concurrent_puts_may_be_seen_in_either_order() {
        for seen in ["a", "b"] {
            assert!(lin(&[
                put(1, 0, 10, "a"),
                put(2, 0, 10, "b"),
                get(3, 5, 15, Some(seen)),
                get(3, 20, 30, Some(seen)),
            ]));
        }
        // A get concurrent with both puts may even see neither.
        assert!(lin(&[
            put(1, 0, 10, "a"),
            put(2, 0, 10, "b"),
            get(3, 5, 15, None),
        ]));
        // Touching intervals (ret == call) count as concurrent.
        assert!(lin(&[put(1, 0, 10, "a"), get(2, 10, 20, None)]));
    }

    #[test]
    fn cas_races_with_one_winner_are_linearizable() {
        for (winner, loser) in [("b", "c"), ("c", "b")] {
            assert!(lin(&[
                put(1, 0, 10, "a"),
                cas(2, 20, 40, Some("a"), "b", winner == "b"),
                cas(3, 20, 40, Some("a"), "c", winner == "c"),
                get(4, 25, 45, Some("a")),
                get(4, 50, 60, Some(winner)),
            ]));
            // The loser's value was never there.
            assert!(!lin(&[
                put(1, 0, 10, "a"),
                cas(2, 20, 40, Some("a"), "b", winner == "b"),
                cas(3, 20, 40, Some("a"), "c", winner == "c"),
                get(4, 50, 60, Some(loser)),
            ]));
        }
    }

    #[test]
    fn stale_read_after_a_completed_write_is_not_linearizable() {
        let history = [
            put(1, 0, 10, "a"),
            put(1, 20, 30, "b"),
            get(2, 40, 50, Some("a")),
        ];
        let result = check::<KvRegister>(&history);
        let v = result.violation().expect("a violation");
        assert_eq!(v.longest_prefix, vec![0, 1]);
        assert_eq!(v.stuck, vec![2]);
        assert!(
            v.explanation
                .contains("the model answers Value(Some(\"b\"))")
        );
        assert!(result.to_string().contains("#2 client 2"), "{result}");
        // Reading nothing after a completed write is stale too.
        assert!(!lin(&[put(1, 0, 10, "a"), get(2, 11, 12, None)]));
    }

    #[test]
    fn gets_observing_contradicting_orders_are_not_linearizable() {
        let history = [
            put(1, 0, 100, "a"),
            put(2, 0, 100, "b"),
            get(3, 10, 20, Some("a")),
            get(3, 30, 40, Some("b")),
            get(4, 10, 20, Some("b")),
            get(4, 30, 40, Some("a")),
        ];
        assert!(!lin(&history));
        // Either reader alone is fine.
        assert!(lin(&history[..4]));
        assert!(lin(&[
            history[0].clone(),
            history[1].clone(),
            history[4].clone(),
            history[5].clone()
        ]));
    }

    #[test]
    fn cas_succeeding_twice_from_the_same_value_is_not_linearizable() {
        assert!(!lin(&[
            put(1, 0, 10, "a"),
            cas(2, 20, 30, Some("a"), "b", true),
            cas(3, 20, 30, Some("a"), "c", true),
        ]));
        // Unless someone wrote "a" again in between.
        assert!(lin(&[
            put(1, 0, 10, "a"),
            cas(2, 20, 30, Some("a"), "b", true),
            cas(3, 20, 30, Some("a"), "c", true),
            put(4, 15, 35, "a"),
        ]));
    }

    #[test]
    fn reading_a_value_never_written_is_not_linearizable() {
        let result = check::<KvRegister>(&[put(1, 0, 10, "a"), get(2, 5, 15, Some("z"))]);
        let v = result.violation().expect("a violation");
        assert_eq!(v.stuck, vec![1]);
        // The search found "put a" fits, "get z" never does.
        assert_eq!(v.longest_prefix, vec![0]);
    }

    #[test]
    fn unknown_put_that_is_read_later_is_linearizable() {
        assert!(lin(&[
            put(1, 0, 10, "a"),
            Operation::unknown(2, 20, KvOp::put("b")),
            get(3, 1_000, 1_010, Some("b")),
            get(3, 1_020, 1_030, Some("b")),
        ]));
    }

    #[test]
    fn unknown_put_never_read_is_linearizable() {
        assert!(lin(&[
            put(1, 0, 10, "a"),
            Operation::unknown(2, 20, KvOp::put("b")),
            get(3, 1_000, 1_010, Some("a")),
            get(3, 2_000, 2_010, Some("a")),
        ]));
        // Several unknown operations, all of which never took effect.
        assert!(lin(&[
            Operation::unknown(2, 0, KvOp::put("b")),
            Operation::unknown(3, 0, KvOp::Delete),
            Operation::unknown(4, 0, KvOp::cas(None, "c")),
            put(1, 5, 10, "a"),
            get(1, 20, 30, Some("a")),
        ]));
        assert!(lin(&[Operation::unknown(2, 0, KvOp::put("b"))]));
    }

    #[test]
    fn unknown_put_read_then_unread_is_not_linearizable() {
        assert!(!lin(&[
            put(1, 0, 10, "a"),
            Operation::unknown(2, 20, KvOp::put("b")),
            get(3, 30, 40, Some("b")),
            get(3, 50, 60, Some("a")),
        ]));
        // An unknown put cannot take effect before it was invoked.
        assert!(!lin(&[
            get(3, 0, 10, Some("b")),
            Operation::unknown(2, 20, KvOp::put("b")),
        ]));
        // An unknown op's own output is not compared, so a CAS may still explain the old value.
        assert!(lin(&[
            put(1, 0, 10, "a"),
            Operation::unknown(2, 20, KvOp::put("b")),
            get(3, 30, 40, Some("b")),
            Operation::unknown(4, 45, KvOp::cas(Some("b"), "a")),
            get(3, 50, 60, Some("a")),
        ]));
    }

    #[test]
    fn multi_key_histories_are_checked_per_key() {
        let op = |key: &str, o: Op| Operation {
            client: o.client,
            call: o.call,
            ret: o.ret,
            input: KvInput::new(key, o.input),
            outcome: o.outcome,
        };
        let mut history = vec![
            op("x", put(1, 0, 10, "1")),
            op("y", put(2, 0, 10, "1")),
            op("x", put(1, 20, 30, "2")),
            op("y", get(2, 20, 30, Some("1"))),
            op("x", get(3, 25, 35, Some("1"))),
            op("y", cas(3, 40, 50, Some("1"), "3", true)),
            op("x", get(1, 40, 50, Some("2"))),
        ];
        assert!(check::<Kv>(&history).is_linearizable());
        // "x" read "1" after "2" was written and read: the y operations do not matter.
        history.push(op("y", get(2, 60, 70, Some("3"))));
        history.push(op("x", get(2, 60, 70, Some("1"))));
        let result = check::<Kv>(&history);
        let v = result.violation().expect("a violation");
        assert_eq!(v.partition, "x");
        assert_eq!(v.operations, vec![0, 2, 4, 6, 8]);
        assert_eq!(v.stuck, vec![8]);
        assert!(v.explanation.contains("partition \"x\""), "{result}");
    }

    #[test]
    fn a_zero_time_budget_gives_no_verdict() {
        let history = [put(1, 0, 10, "a"), get(2, 20, 30, Some("a"))];
        let result = check_with_timeout::<KvRegister>(&history, Duration::ZERO);
        assert!(matches!(result, CheckResult::Unknown { .. }), "{result}");
        let result = check_with_timeout::<KvRegister>(&history, Duration::from_secs(60));
        assert!(result.is_linearizable());
        assert!(assert_linearizable::<KvRegister>(&history, Duration::MAX).is_linearizable());
    }

    #[test]
    #[should_panic(expected = "is not linearizable")]
    fn assert_linearizable_panics_on_a_violation() {
        let _ = assert_linearizable::<KvRegister>(
            &[put(1, 0, 10, "a"), get(2, 20, 30, None)],
            Duration::from_secs(60),
        );
    }

    // --- a brute-force reference, and random histories -------------------------------------

    /// Whether some order of a subset of the history containing every known-outcome operation
    /// respects real time and the model: the definition, with "never took effect" explicit (an
    /// unknown operation may be left out), searched naively with a memo of the exact
    /// (placed operations, state) pairs that failed.
    fn brute_force<M: Model>(h: &[Operation<M::Input, M::Output>]) -> bool {
        fn go<M: Model>(
            h: &[Operation<M::Input, M::Output>],
            placed: &mut Vec<bool>,
            state: &M::State,
            failed: &mut HashSet<(Vec<bool>, M::State)>,
        ) -> bool {
            // The earliest response among the known operations not placed yet: an operation
            // invoked after it must wait.
            let Some(first_ret) = (0..h.len())
                .filter(|&j| !placed[j] && !h[j].is_unknown())
                .map(|j| h[j].ret)
                .min()
            else {
                return true;
            };
            if failed.contains(&(placed.clone(), state.clone())) {
                return false;
            }
            for i in 0..h.len() {
                if placed[i] || h[i].call > first_ret {
                    continue;
                }
                let (next, output) = M::step(state, &h[i].input);
                if let Outcome::Ok(observed) = &h[i].outcome
                    && *observed != output
                {
                    continue;
                }
                placed[i] = true;
                if go::<M>(h, placed, &next, failed) {
                    return true;
                }
                placed[i] = false;
            }
            failed.insert((placed.clone(), state.clone()));
            false
        }
        go::<M>(
            h,
            &mut vec![false; h.len()],
            &M::init(),
            &mut HashSet::new(),
        )
    }

    /// A whole key-value store as one state, without partitions.
    struct KvMap;
    impl Model for KvMap {
        type State = BTreeMap<String, String>;
        type Input = KvInput;
        type Output = KvOutput;
        fn init() -> Self::State {
            BTreeMap::new()
        }
        fn step(state: &Self::State, input: &KvInput) -> (Self::State, KvOutput) {
            let (value, output) = kv_step(&state.get(&input.key).cloned(), &input.op);
            let mut state = state.clone();
            match value {
                Some(v) => state.insert(input.key.clone(), v),
                None => state.remove(&input.key),
            };
            (state, output)
        }
    }

    /// splitmix64
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }
    }

    fn random_op(rng: &mut Rng, values: &[&str]) -> KvOp {
        match rng.below(10) {
            0..=2 => KvOp::put(rng.pick(values)),
            3..=5 => KvOp::Get,
            6..=8 => {
                let expected = if rng.chance(25) {
                    None
                } else {
                    Some(rng.pick(values))
                };
                KvOp::cas(expected, rng.pick(values))
            }
            _ => KvOp::Delete,
        }
    }

    /// Small histories with arbitrary intervals and outputs: WGL agrees with brute force.
    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let values = ["a", "b"];
        let keys = ["x", "y"];
        let mut rng = Rng(1);
        let (mut yes, mut no) = (0, 0);
        for _ in 0..600 {
            let n = 1 + rng.below(6) as usize;
            let history: Vec<Operation<KvInput, KvOutput>> = (0..n)
                .map(|i| {
                    let op = random_op(&mut rng, &values);
                    let output = match &op {
                        KvOp::Put(_) | KvOp::Delete => KvOutput::Done,
                        KvOp::Get => KvOutput::value(match rng.below(3) {
                            0 => None,
                            1 => Some("a"),
                            _ => Some("b"),
                        }),
                        KvOp::CompareAndSet { .. } => KvOutput::Swapped(rng.chance(50)),
                    };
                    let call = rng.below(20);
                    let input = KvInput::new(rng.pick(&keys), op);
                    if rng.chance(20) {
                        Operation::unknown(i as u64, call, input)
                    } else {
                        Operation::ok(i as u64, call, call + rng.below(10), input, output)
                    }
                })
                .collect();
            let expected = brute_force::<KvMap>(&history);
            assert_eq!(
                check::<KvMap>(&history).is_linearizable(),
                expected,
                "{history:#?}"
            );
            assert_eq!(
                check::<Kv>(&history).is_linearizable(),
                expected,
                "{history:#?}"
            );
            if expected {
                yes += 1;
            } else {
                no += 1;
            }
        }
        assert!(yes > 100 && no > 100, "{yes} linearizable, {no} not");
    }

    /// A history from a real sequential execution: operation k takes effect at `10⁶ + 100k`
    /// nanoseconds, inside an interval up to `spread` wide on each side. Some operations end
    /// unknown; half of those never took effect.
    fn execution(
        rng: &mut Rng,
        keys: &[&str],
        n: usize,
        spread: u64,
        unknown_percent: u64,
    ) -> Vec<Operation<KvInput, KvOutput>> {
        let values: Vec<String> = (0..n).map(|k| format!("v{k}")).collect();
        let mut store: BTreeMap<String, String> = BTreeMap::new();
        (0..n)
            .map(|k| {
                let key = rng.pick(keys);
                let current = store.get(key).cloned();
                let op = match rng.below(10) {
                    0..=2 => KvOp::Put(values[k].clone()),
                    3..=5 => KvOp::Get,
                    6..=8 => {
                        let expected = if rng.chance(60) {
                            current.clone()
                        } else {
                            Some(values[rng.below(k as u64 + 1) as usize].clone())
                        };
                        KvOp::CompareAndSet {
                            expected,
                            new: values[k].clone(),
                        }
                    }
                    _ => KvOp::Delete,
                };
                let input = KvInput::new(key, op);
                let t = 1_000_000 + 100 * k as u64;
                let call = t - rng.below(spread + 1);
                if rng.chance(unknown_percent) {
                    if rng.chance(50) {
                        store = KvMap::step(&store, &input).0;
                    }
                    return Operation::unknown(k as u64 % 5, call, input);
                }
                let (next, output) = KvMap::step(&store, &input);
                store = next;
                Operation::ok(k as u64 % 5, call, t + rng.below(spread + 1), input, output)
            })
            .collect()
    }

    fn writes(op: &Operation<KvInput, KvOutput>) -> bool {
        match (&op.input.op, &op.outcome) {
            (KvOp::Get, _) => false,
            (KvOp::CompareAndSet { .. }, Outcome::Ok(out)) => *out == KvOutput::Swapped(true),
            _ => true,
        }
    }

    fn effect(op: &KvOp) -> Option<String> {
        match op {
            KvOp::Put(v) | KvOp::CompareAndSet { new: v, .. } => Some(v.clone()),
            KvOp::Delete | KvOp::Get => None,
        }
    }

    /// A get whose result every linearization determines, and that value: no write (and no
    /// unknown non-get) overlaps it, and of the writes before it one comes after all others.
    fn determined_get(h: &[Operation<KvInput, KvOutput>], g: usize) -> Option<Option<String>> {
        let get = &h[g];
        if get.is_unknown() || get.input.op != KvOp::Get {
            return None;
        }
        let same_key = |o: &&Operation<KvInput, KvOutput>| o.input.key == get.input.key;
        let mut before = Vec::new();
        for op in h.iter().filter(same_key) {
            if op.is_unknown() && op.input.op != KvOp::Get && op.call <= get.ret {
                return None;
            }
            if writes(op) && !op.is_unknown() {
                if op.ret < get.call {
                    before.push(op);
                } else if op.call <= get.ret {
                    return None; // overlaps
                }
            }
        }
        let Some(last) = before.iter().max_by_key(|op| op.call) else {
            return Some(None);
        };
        before
            .iter()
            .all(|op| std::ptr::eq(*op, *last) || op.ret < last.call)
            .then(|| effect(&last.input.op))
    }

    #[test]
    fn random_executions_are_linearizable_and_corrupted_reads_are_not() {
        let mut rng = Rng(42);
        let (mut provable, mut compared) = (0, 0);
        for round in 0..100 {
            // Narrow intervals leave more reads whose true value is forced.
            let spread = if round % 4 < 2 { 80 } else { 250 };
            let unknown_percent = if round % 2 == 0 { 0 } else { 5 };
            let mut history = execution(&mut rng, &["k"], 150, spread, unknown_percent);
            let result = check::<Kv>(&history);
            assert!(result.is_linearizable(), "{result}\n{history:#?}");
            let written: Vec<Option<String>> = std::iter::once(None)
                .chain(
                    history
                        .iter()
                        .filter_map(|op| effect(&op.input.op))
                        .map(Some),
                )
                .collect();

            let gets: Vec<usize> = (0..history.len())
                .filter(|&i| history[i].input.op == KvOp::Get && !history[i].is_unknown())
                .collect();
            let Some(&g) = gets.get(rng.below(gets.len().max(1) as u64) as usize) else {
                continue;
            };
            // A value nobody wrote.
            let saved = history[g].outcome.clone();
            history[g].outcome = Outcome::Ok(KvOutput::value(Some("never written")));
            let result = check::<Kv>(&history);
            assert_eq!(
                result.violation().map(|v| v.stuck.contains(&g)),
                Some(true),
                "{result}"
            );
            history[g].outcome = saved.clone();

            // Any value that was written (or none): the same verdict as the reference (which
            // has no pruning for unknown operations, so only where they are few).
            let value = written[rng.below(written.len() as u64) as usize].clone();
            history[g].outcome = Outcome::Ok(KvOutput::Value(value));
            if history.iter().filter(|op| op.is_unknown()).count() <= 2 {
                assert_eq!(
                    check::<Kv>(&history).is_linearizable(),
                    brute_force::<KvMap>(&history),
                    "{history:#?}"
                );
                compared += 1;
            }
            history[g].outcome = saved;

            // A value someone wrote, where the true value is forced.
            if let Some((g, truth)) = gets
                .iter()
                .find_map(|&g| determined_get(&history, g).map(|truth| (g, truth)))
            {
                let wrong = if truth.is_some() {
                    None
                } else {
                    history.iter().find_map(|op| effect(&op.input.op))
                };
                if let Some(wrong) = wrong.or_else(|| {
                    history
                        .iter()
                        .find_map(|op| effect(&op.input.op).filter(|v| Some(v) != truth.as_ref()))
                }) {
                    history[g].outcome = Outcome::Ok(KvOutput::Value(Some(wrong)));
                    let result = check::<Kv>(&history);
                    assert!(result.is_violation(), "{result}");
                    provable += 1;
                }
            }
        }
        assert!(provable >= 40, "only {provable} provable corruptions");
        assert!(
            compared >= 50,
            "only {compared} compared with the reference"
        );
    }

    #[test]
    fn large_multi_key_executions_are_checked_quickly() {
        let mut rng = Rng(7);
        for _ in 0..3 {
            let mut history = execution(&mut rng, &["a", "b", "c", "d", "e"], 1_000, 400, 1);
            let result = check::<Kv>(&history);
            assert!(result.is_linearizable(), "{result}");
            let g = history
                .iter()
                .rposition(|op| op.input.op == KvOp::Get && !op.is_unknown())
                .expect("some get");
            history[g].outcome = Outcome::Ok(KvOutput::value(Some("never written")));
            let result = check::<Kv>(&history);
            let v = result.violation().expect("a violation");
            assert_eq!(v.partition, history[g].input.key);
        }
    }

    // --- the recorder ----------------------------------------------------------------------

    #[test]
    fn recorder_histories_from_threads_are_linearizable() {
        let recorder = Arc::new(Recorder::<KvOp, KvOutput>::new());
        let store = Arc::new(Mutex::new(None::<String>));
        let threads: Vec<_> = (0..4u64)
            .map(|client| {
                let (recorder, store) = (recorder.clone(), store.clone());
                std::thread::spawn(move || {
                    let mut rng = Rng(client);
                    for i in 0..50 {
                        let op = random_op(&mut rng, &["a", "b", "c"]);
                        let pending = recorder.invoke(client, op.clone());
                        match i % 10 {
                            // the request is rejected before it does anything
                            0 => recorder.discard(pending),
                            // times out before or after taking effect
                            1 => recorder.unknown(pending),
                            2 | 3 => {
                                let mut value = store.lock().unwrap();
                                *value = kv_step(&value, &op).0;
                                drop(value);
                                if i % 10 == 2 {
                                    recorder.unknown(pending);
                                } else {
                                    drop(pending); // a cancelled task
                                }
                            }
                            _ => {
                                let mut value = store.lock().unwrap();
                                let (next, output) = kv_step(&value, &op);
                                *value = next;
                                drop(value);
                                recorder.complete(pending, output);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(recorder.len(), 200);
        let history = recorder.history();
        assert_eq!(history.len(), 180);
        assert_eq!(history.iter().filter(|op| op.is_unknown()).count(), 60);
        let result = check_with_timeout::<KvRegister>(&history, Duration::from_secs(60));
        assert!(!result.is_violation(), "{result}");
        let recorder = Arc::into_inner(recorder).unwrap();
        assert_eq!(recorder.into_history(), history);
    }

    #[test]
    fn recorder_times_bracket_the_operation() {
        let recorder = Recorder::<KvOp, KvOutput>::new();
        let a = recorder.invoke(1, KvOp::put("a"));
        let b = recorder.invoke(2, KvOp::Get);
        recorder.complete(b, KvOutput::value(None));
        recorder.complete(a, KvOutput::Done);
        let c = recorder.invoke(3, KvOp::Get);
        let history = recorder.history();
        assert_eq!(history.len(), 3);
        assert!(history[0].call <= history[1].call && history[1].ret <= history[0].ret);
        assert!(history[0].ret <= history[2].call);
        assert!(history[2].is_unknown());
        recorder.complete(c, KvOutput::value(Some("a")));
        assert!(check::<KvRegister>(&recorder.history()).is_linearizable());
    }
}
