//! A linearizability checker for key-value registers, in the style of
//! Porcupine (Athalye) and Knossos (Kingsbury): Wing & Gong's search with
//! Lowe's memoisation of `(linearized set, state)`.
//!
//! A history is a list of operations, each with the time it was invoked and
//! how it completed:
//!
//! - [`Completion::Ok`]: it returned a result at a known time; it took effect
//!   exactly once somewhere between invocation and return.
//! - [`Completion::Fail`]: the system said it was not applied; it never took
//!   effect and is left out of the search.
//! - [`Completion::Info`]: the outcome is unknown (a timeout, a dropped
//!   connection, `unknown_outcome`); it may take effect at any time after its
//!   invocation, or never. As in Knossos and Porcupine it is given a return
//!   time of +∞ and any result: linearizing it after every other operation is
//!   the same as it never happening.
//!
//! Keys are independent registers, so the history is partitioned per key and
//! each key is searched on its own (P-compositionality). The search is bounded
//! ([`Budget`]); a key whose search runs out of budget is reported as
//! undecided, never as linearizable.
//!
//! When a key has no linearization, the report names the key and describes the
//! failure: the deepest partial linearization the search reached, the
//! operation that could not be placed after it, and a small set of relevant
//! operations. Reads are removed greedily first (removing a read only drops a
//! constraint, so the smaller history is a sound witness).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

/// A register value.
pub type Value = String;

/// What an operation asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Write `value`.
    Put(Value),
    /// Read the register.
    Get,
    /// Write `new` if the register holds `expected` (`None` = absent).
    Cas {
        /// Expected current value.
        expected: Option<Value>,
        /// Value to write.
        new: Value,
    },
}

/// What a completed operation returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KvResult {
    /// A put was acknowledged.
    Written,
    /// A read returned this value (`None` = absent).
    Read(Option<Value>),
    /// The compare-and-set matched and wrote.
    CasOk,
    /// The compare-and-set did not match; `current` is the value the system
    /// reported it saw instead, when it reported one.
    CasFailed {
        /// Value seen by the failed cas (`Some(None)` = absent).
        current: Option<Option<Value>>,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// Returned `result` at time `at` (nanoseconds, same clock as `invoked`).
    Ok {
        /// Return time.
        at: u64,
        /// The result.
        result: KvResult,
    },
    /// Definitely not applied.
    Fail,
    /// Unknown: may take effect any time after invocation, or never.
    Info,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Which client (process) issued it; for reports only.
    pub client: u64,
    /// The register.
    pub key: String,
    /// What it asked.
    pub op: KvOp,
    /// Invocation time in nanoseconds since an arbitrary epoch.
    pub invoked: u64,
    /// How it ended.
    pub completion: Completion,
}

impl Operation {
    fn ret(&self) -> Option<u64> {
        match self.completion {
            Completion::Ok { at, .. } => Some(at),
            _ => None,
        }
    }

    /// True for operations that cannot change the register.
    fn is_read_only(&self) -> bool {
        matches!(
            (&self.op, &self.completion),
            (KvOp::Get, _)
                | (
                    KvOp::Cas { .. },
                    Completion::Ok {
                        result: KvResult::CasFailed { .. },
                        ..
                    },
                )
        )
    }
}

fn secs(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

fn show_value(v: &Option<Value>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "absent".into(),
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.op {
            KvOp::Put(v) => write!(f, "put({v:?})")?,
            KvOp::Get => write!(f, "get()")?,
            KvOp::Cas { expected, new } => write!(f, "cas({} -> {new:?})", show_value(expected))?,
        }
        match &self.completion {
            Completion::Ok { at, result } => {
                let r = match result {
                    KvResult::Written => "ok".to_string(),
                    KvResult::Read(v) => show_value(v),
                    KvResult::CasOk => "ok".to_string(),
                    KvResult::CasFailed { current: Some(c) } => {
                        format!("failed, current {}", show_value(c))
                    }
                    KvResult::CasFailed { current: None } => "failed".to_string(),
                };
                write!(f, " = {r}  [{} .. {}]", secs(self.invoked), secs(*at))
            }
            Completion::Fail => write!(f, " = not applied  [{} .. ]", secs(self.invoked)),
            Completion::Info => write!(f, " = unknown outcome  [{} .. ∞]", secs(self.invoked)),
        }
    }
}

/// Bounds on the search of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Search steps (entries visited) per key.
    pub max_steps: u64,
    /// Memoised configurations per key.
    pub max_cache: usize,
    /// Wall-clock time per key.
    pub max_time: Duration,
    /// Re-checks spent shrinking a failing key's history for the report.
    pub max_shrink_checks: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            max_steps: 50_000_000,
            max_cache: 4_000_000,
            max_time: Duration::from_secs(60),
            max_shrink_checks: 60,
        }
    }
}

/// Why a key is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The register.
    pub key: String,
    /// Operations of that key taken into account (ok + info).
    pub ops: usize,
    /// Length of the longest partial linearization found.
    pub linearized: usize,
    /// Register states after that partial linearization.
    pub states: Vec<Option<Value>>,
    /// The operation that cannot be placed.
    pub culprit: Operation,
    /// A small set of operations that, with the culprit, shows the problem.
    pub relevant: Vec<Operation>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let states: Vec<String> = self.states.iter().map(show_value).collect();
        writeln!(
            f,
            "key {:?} is not linearizable ({} operations): the longest legal order places {} of them, leaving the register {}; then no order lets this operation return what it returned:",
            self.key,
            self.ops,
            self.linearized,
            if states.is_empty() {
                "in no state".to_string()
            } else {
                format!("in {}", states.join(" or "))
            }
        )?;
        writeln!(f, "    {}", self.culprit)?;
        if !self.relevant.is_empty() {
            writeln!(f, "  relevant operations on {:?}:", self.key)?;
            for op in &self.relevant {
                writeln!(f, "    {op}")?;
            }
        }
        Ok(())
    }
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyVerdict {
    /// A legal order exists.
    Linearizable,
    /// No legal order exists.
    NotLinearizable(Box<Violation>),
    /// The search ran out of budget: no verdict.
    Undecided(String),
}

/// The verdict on a whole history.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Per key.
    pub keys: BTreeMap<String, KeyVerdict>,
    /// Operations searched (ok + info).
    pub ops_checked: usize,
    /// Operations left out because they definitely failed.
    pub ops_failed: usize,
    /// Operations with unknown outcome.
    pub ops_info: usize,
}

impl Report {
    /// True when every key is linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys
            .values()
            .all(|v| matches!(v, KeyVerdict::Linearizable))
    }

    /// Violations found.
    pub fn violations(&self) -> impl Iterator<Item = &Violation> {
        self.keys.values().filter_map(|v| match v {
            KeyVerdict::NotLinearizable(v) => Some(&**v),
            _ => None,
        })
    }

    /// Keys without a verdict, with the reason.
    pub fn undecided(&self) -> impl Iterator<Item = (&String, &String)> {
        self.keys.iter().filter_map(|(k, v)| match v {
            KeyVerdict::Undecided(why) => Some((k, why)),
            _ => None,
        })
    }
}

/// Check a whole history, one key at a time.
pub fn check(history: &[Operation], budget: Budget) -> Report {
    let mut by_key: BTreeMap<&str, Vec<Operation>> = BTreeMap::new();
    let mut report = Report::default();
    for op in history {
        match op.completion {
            Completion::Fail => report.ops_failed += 1,
            Completion::Info => {
                report.ops_info += 1;
                report.ops_checked += 1;
            }
            Completion::Ok { .. } => report.ops_checked += 1,
        }
        by_key.entry(&op.key).or_default().push(op.clone());
    }
    for (key, ops) in by_key {
        report
            .keys
            .insert(key.to_string(), check_key(key, &ops, budget));
    }
    report
}

/// Check the operations of one key (all must have that key). Failed
/// operations are left out of the search but named in a report when they
/// wrote a value that was observed.
pub fn check_key(key: &str, ops: &[Operation], budget: Budget) -> KeyVerdict {
    let (searched, failed): (Vec<Operation>, Vec<Operation>) = ops
        .iter()
        .cloned()
        .partition(|o| o.completion != Completion::Fail);
    match search(&searched, budget) {
        Outcome::Ok => KeyVerdict::Linearizable,
        Outcome::Undecided(why) => KeyVerdict::Undecided(why),
        Outcome::Fail(deepest) => {
            KeyVerdict::NotLinearizable(Box::new(explain(key, &searched, &failed, deepest, budget)))
        }
    }
}

/// The deepest point a failed search reached.
#[derive(Debug, Clone)]
struct Deepest {
    linearized: usize,
    states: Vec<Option<Value>>,
    culprit: usize,
}

enum Outcome {
    Ok,
    Fail(Deepest),
    Undecided(String),
}

/// Register states and operation arguments as small integers.
struct Interned {
    values: Vec<Option<Value>>,
    index: HashMap<Option<Value>, u32>,
}

impl Interned {
    fn new() -> Self {
        let mut i = Interned {
            values: Vec::new(),
            index: HashMap::new(),
        };
        i.id(&None);
        i
    }

    fn id(&mut self, v: &Option<Value>) -> u32 {
        if let Some(id) = self.index.get(v) {
            return *id;
        }
        let id = self.values.len() as u32;
        self.values.push(v.clone());
        self.index.insert(v.clone(), id);
        id
    }
}

#[derive(Clone, Copy)]
enum In {
    Put(u32),
    Get,
    Cas { expected: u32, new: u32 },
}

#[derive(Clone, Copy)]
enum Out {
    Unknown,
    Written,
    Read(u32),
    CasOk,
    CasFailed(Option<u32>),
}

/// The register model: the next state if `input` may return `output` in `state`.
fn step(state: u32, input: In, output: Out) -> Option<u32> {
    match (input, output) {
        (In::Put(v), Out::Written | Out::Unknown) => Some(v),
        (In::Get, Out::Read(v)) => (v == state).then_some(state),
        (In::Get, Out::Unknown) => Some(state),
        (In::Cas { expected, new }, Out::CasOk) => (state == expected).then_some(new),
        (In::Cas { expected, .. }, Out::CasFailed(current)) => {
            (state != expected && current.is_none_or(|c| c == state)).then_some(state)
        }
        (In::Cas { expected, new }, Out::Unknown) => {
            Some(if state == expected { new } else { state })
        }
        _ => None,
    }
}

const NIL: usize = usize::MAX;

/// A fixed-size bit set, hashable, for the memo.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Box<[u64]>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64).max(1)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Wing & Gong / Lowe search over one key's operations.
fn search(ops: &[Operation], budget: Budget) -> Outcome {
    let n = ops.len();
    if n == 0 {
        return Outcome::Ok;
    }
    let mut interned = Interned::new();
    let mut inputs = Vec::with_capacity(n);
    let mut outputs = Vec::with_capacity(n);
    for op in ops {
        inputs.push(match &op.op {
            KvOp::Put(v) => In::Put(interned.id(&Some(v.clone()))),
            KvOp::Get => In::Get,
            KvOp::Cas { expected, new } => In::Cas {
                expected: interned.id(expected),
                new: interned.id(&Some(new.clone())),
            },
        });
        outputs.push(match &op.completion {
            Completion::Ok { result, .. } => match result {
                KvResult::Written => Out::Written,
                KvResult::Read(v) => Out::Read(interned.id(v)),
                KvResult::CasOk => Out::CasOk,
                KvResult::CasFailed { current } => {
                    Out::CasFailed(current.as_ref().map(|c| interned.id(c)))
                }
            },
            _ => Out::Unknown,
        });
    }

    // Events in time order; at equal times calls come first, which treats
    // touching operations as concurrent (never a false alarm).
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, false, i));
        events.push((op.ret().unwrap_or(u64::MAX), true, i));
    }
    events.sort_by_key(|&(t, is_ret, i)| (t, is_ret, i));
    // Node 0 is the head sentinel; node k (1..=2n) is events[k-1].
    let nodes = 2 * n + 1;
    let mut next = vec![NIL; nodes];
    let mut prev = vec![NIL; nodes];
    let mut node_op = vec![0usize; nodes];
    let mut node_is_call = vec![false; nodes];
    let mut call_node = vec![0usize; n];
    let mut ret_node = vec![0usize; n];
    for (k, &(_, is_ret, i)) in events.iter().enumerate() {
        let node = k + 1;
        node_op[node] = i;
        node_is_call[node] = !is_ret;
        if is_ret {
            ret_node[i] = node;
        } else {
            call_node[i] = node;
        }
    }
    for node in 0..nodes {
        next[node] = if node + 1 < nodes { node + 1 } else { NIL };
        prev[node] = if node == 0 { NIL } else { node - 1 };
    }

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = nx;
        if nx != NIL {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, x: usize| {
        let (p, nx) = (prev[x], next[x]);
        next[p] = x;
        if nx != NIL {
            prev[nx] = x;
        }
    };

    let started = Instant::now();
    let mut linearized = Bits::new(n);
    let mut cache: HashSet<(Bits, u32)> = HashSet::new();
    let mut calls: Vec<(usize, u32)> = Vec::new(); // (op, state before)
    let mut state = 0u32;
    let mut entry = next[0];
    let mut steps: u64 = 0;
    let mut deepest: Option<(usize, HashSet<u32>, usize)> = None;

    while next[0] != NIL {
        steps += 1;
        if steps > budget.max_steps {
            return Outcome::Undecided(format!(
                "search gave up after {} steps ({} operations)",
                budget.max_steps, n
            ));
        }
        if steps.is_multiple_of(65_536) && started.elapsed() > budget.max_time {
            return Outcome::Undecided(format!(
                "search gave up after {:?} ({} operations)",
                budget.max_time, n
            ));
        }
        if cache.len() > budget.max_cache {
            return Outcome::Undecided(format!(
                "search gave up after memoising {} configurations ({} operations)",
                budget.max_cache, n
            ));
        }
        let op = node_op[entry];
        if node_is_call[entry] {
            let mut advanced = false;
            if let Some(new_state) = step(state, inputs[op], outputs[op]) {
                let mut lin = linearized.clone();
                lin.set(op);
                if cache.insert((lin, new_state)) {
                    calls.push((op, state));
                    state = new_state;
                    linearized.set(op);
                    unlink(&mut next, &mut prev, call_node[op]);
                    unlink(&mut next, &mut prev, ret_node[op]);
                    entry = next[0];
                    advanced = true;
                }
            }
            if !advanced {
                entry = next[entry];
            }
        } else {
            // `op` must have taken effect before it returned, and nothing
            // placed so far allows it: record how far we got, then backtrack.
            let depth = calls.len();
            match &mut deepest {
                Some((d, states, culprit)) if *d == depth && *culprit == op => {
                    states.insert(state);
                }
                Some((d, _, _)) if *d >= depth => {}
                _ => deepest = Some((depth, HashSet::from([state]), op)),
            }
            let Some((top, prev_state)) = calls.pop() else {
                let (linearized, states, culprit) = deepest.unwrap_or((0, HashSet::from([0]), op));
                let mut states: Vec<Option<Value>> = states
                    .into_iter()
                    .map(|s| interned.values[s as usize].clone())
                    .collect();
                states.sort();
                return Outcome::Fail(Deepest {
                    linearized,
                    states,
                    culprit,
                });
            };
            state = prev_state;
            linearized.clear(top);
            relink(&mut next, &mut prev, ret_node[top]);
            relink(&mut next, &mut prev, call_node[top]);
            entry = next[call_node[top]];
        }
    }
    Outcome::Ok
}

/// Turn a failed search into a report: shrink the reads, then pick the
/// operations that matter for the culprit.
fn explain(
    key: &str,
    ops: &[Operation],
    failed: &[Operation],
    deepest: Deepest,
    budget: Budget,
) -> Violation {
    let culprit = ops[deepest.culprit].clone();
    let shrink_budget = Budget {
        max_steps: budget.max_steps / 20,
        max_cache: budget.max_cache / 20,
        max_time: budget.max_time / 20,
        max_shrink_checks: 0,
    };
    let still_fails = |keep: &[bool]| {
        let sub: Vec<Operation> = ops
            .iter()
            .zip(keep)
            .filter(|(_, k)| **k)
            .map(|(o, _)| o.clone())
            .collect();
        matches!(search(&sub, shrink_budget), Outcome::Fail(_))
    };
    // Greedy chunked removal of reads other than the culprit (sound: fewer
    // constraints can only make a history easier to linearize).
    let mut keep = vec![true; ops.len()];
    let mut removable: Vec<usize> = (0..ops.len())
        .filter(|&i| i != deepest.culprit && ops[i].is_read_only())
        .collect();
    let mut checks = 0;
    let mut chunk = removable.len().max(1);
    while chunk >= 1 && checks < budget.max_shrink_checks && !removable.is_empty() {
        let mut i = 0;
        while i < removable.len() && checks < budget.max_shrink_checks {
            let end = (i + chunk).min(removable.len());
            for &r in &removable[i..end] {
                keep[r] = false;
            }
            checks += 1;
            if still_fails(&keep) {
                removable.drain(i..end);
            } else {
                for &r in &removable[i..end] {
                    keep[r] = true;
                }
                i = end;
            }
        }
        if chunk == 1 {
            break;
        }
        chunk /= 2;
    }

    // The relevant writes: those that wrote the value the culprit saw (or
    // expected), those concurrent with it, and the last few that completed
    // before it began; plus the reads that survived shrinking.
    let seen: Vec<Option<Value>> = match (&culprit.op, &culprit.completion) {
        (
            _,
            Completion::Ok {
                result: KvResult::Read(v),
                ..
            },
        ) => vec![v.clone()],
        (
            _,
            Completion::Ok {
                result: KvResult::CasFailed { current: Some(c) },
                ..
            },
        ) => vec![c.clone()],
        (KvOp::Cas { expected, .. }, _) => vec![expected.clone()],
        _ => Vec::new(),
    };
    let c_start = culprit.invoked;
    let c_end = culprit.ret().unwrap_or(u64::MAX);
    let writes_value = |o: &Operation, v: &Option<Value>| match (&o.op, v) {
        (KvOp::Put(w), Some(v)) => w == v,
        (KvOp::Cas { new, .. }, Some(v)) => new == v,
        _ => false,
    };
    let mut relevant: Vec<usize> = Vec::new();
    let mut before: Vec<usize> = Vec::new();
    for (i, o) in ops.iter().enumerate() {
        if i == deepest.culprit || !keep[i] {
            continue;
        }
        let concurrent = o.invoked <= c_end && o.ret().unwrap_or(u64::MAX) >= c_start;
        if o.is_read_only() || concurrent || seen.iter().any(|v| writes_value(o, v)) {
            relevant.push(i);
        } else if o.ret().is_some_and(|r| r < c_start) {
            before.push(i);
        }
    }
    before.sort_by_key(|&i| std::cmp::Reverse(ops[i].ret().unwrap_or(0)));
    relevant.extend(before.into_iter().take(3));
    relevant.sort_by_key(|&i| (ops[i].invoked, i));
    relevant.dedup();
    const MAX_LISTED: usize = 24;
    if relevant.len() > MAX_LISTED {
        // Keep those closest in time to the culprit.
        relevant.sort_by_key(|&i| ops[i].invoked.abs_diff(c_start));
        relevant.truncate(MAX_LISTED);
        relevant.sort_by_key(|&i| (ops[i].invoked, i));
    }
    let mut relevant: Vec<Operation> = relevant.into_iter().map(|i| ops[i].clone()).collect();
    // A write reported as not applied whose value was observed anyway.
    relevant.extend(
        failed
            .iter()
            .filter(|o| seen.iter().any(|v| writes_value(o, v)))
            .take(3)
            .cloned(),
    );
    relevant.sort_by_key(|o| o.invoked);
    Violation {
        key: key.to_string(),
        ops: ops.len(),
        linearized: deepest.linearized,
        states: deepest.states,
        culprit,
        relevant,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const MS: u64 = 1_000_000;

    fn op(client: u64, key: &str, op: KvOp, from: u64, to: u64, result: KvResult) -> Operation {
        Operation {
            client,
            key: key.into(),
            op,
            invoked: from * MS,
            completion: Completion::Ok {
                at: to * MS,
                result,
            },
        }
    }

    fn put(c: u64, v: &str, from: u64, to: u64) -> Operation {
        op(c, "k", KvOp::Put(v.into()), from, to, KvResult::Written)
    }

    fn get(c: u64, v: Option<&str>, from: u64, to: u64) -> Operation {
        op(
            c,
            "k",
            KvOp::Get,
            from,
            to,
            KvResult::Read(v.map(String::from)),
        )
    }

    fn cas(c: u64, exp: Option<&str>, new: &str, from: u64, to: u64, ok: bool) -> Operation {
        op(
            c,
            "k",
            KvOp::Cas {
                expected: exp.map(String::from),
                new: new.into(),
            },
            from,
            to,
            if ok {
                KvResult::CasOk
            } else {
                KvResult::CasFailed { current: None }
            },
        )
    }

    fn with(mut o: Operation, completion: Completion) -> Operation {
        o.completion = completion;
        o
    }

    fn verdict(h: &[Operation]) -> Report {
        check(h, Budget::default())
    }

    fn assert_ok(h: &[Operation]) {
        let r = verdict(h);
        assert!(r.is_linearizable(), "expected linearizable: {r:#?}");
    }

    fn assert_violation(h: &[Operation]) -> Violation {
        let r = verdict(h);
        let v = r.violations().next().cloned();
        v.unwrap_or_else(|| panic!("expected a violation: {r:#?}"))
    }

    #[test]
    fn empty_and_trivial_histories_are_linearizable() {
        assert_ok(&[]);
        assert_ok(&[get(0, None, 0, 1)]);
        assert_ok(&[put(0, "a", 0, 1)]);
        assert_ok(&[put(0, "a", 0, 1), get(1, Some("a"), 2, 3)]);
    }

    #[test]
    fn stale_read_is_rejected() {
        let v = assert_violation(&[
            put(0, "1", 0, 10),
            put(0, "2", 20, 30),
            get(1, Some("1"), 40, 50),
        ]);
        assert_eq!(v.key, "k");
        assert_eq!(v.culprit, get(1, Some("1"), 40, 50));
        assert_eq!(v.states, vec![Some("2".to_string())]);
        let text = v.to_string();
        assert!(text.contains("not linearizable"), "{text}");
        assert!(text.contains("get() = \"1\""), "{text}");
    }

    #[test]
    fn lost_acknowledged_write_is_rejected() {
        assert_violation(&[put(0, "1", 0, 10), get(1, None, 20, 30)]);
        // Also when a later read saw it first: values cannot disappear.
        assert_violation(&[
            put(0, "1", 0, 10),
            get(1, Some("1"), 11, 12),
            get(2, None, 20, 30),
        ]);
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        let v = assert_violation(&[put(0, "1", 0, 10), get(1, Some("x"), 5, 30)]);
        assert_eq!(v.culprit.op, KvOp::Get);
    }

    #[test]
    fn concurrent_reads_may_see_either_value() {
        assert_ok(&[
            put(0, "1", 0, 10),
            put(0, "2", 20, 40),
            get(1, Some("1"), 25, 35),
        ]);
        assert_ok(&[
            put(0, "1", 0, 10),
            put(0, "2", 20, 40),
            get(1, Some("2"), 25, 35),
        ]);
        // Two reads in sequence during one write cannot go backwards.
        assert_violation(&[
            put(0, "1", 0, 10),
            put(0, "2", 20, 100),
            get(1, Some("2"), 25, 35),
            get(1, Some("1"), 40, 50),
        ]);
    }

    #[test]
    fn touching_operations_count_as_concurrent() {
        // The read starts at the very instant the write returns: either order is allowed.
        assert_ok(&[put(0, "1", 0, 10), get(1, None, 10, 20)]);
    }

    #[test]
    fn failed_writes_never_take_effect() {
        assert_violation(&[
            with(put(0, "1", 0, 10), Completion::Fail),
            get(1, Some("1"), 20, 30),
        ]);
        assert_ok(&[
            with(put(0, "1", 0, 10), Completion::Fail),
            get(1, None, 20, 30),
        ]);
    }

    #[test]
    fn a_report_names_the_failed_write_whose_value_was_read() {
        let failed = with(put(0, "1", 0, 10), Completion::Fail);
        let v = assert_violation(&[failed.clone(), get(1, Some("1"), 20, 30)]);
        assert!(v.relevant.contains(&failed), "{v}");
        assert!(v.to_string().contains("not applied"), "{v}");
    }

    #[test]
    fn unknown_writes_may_take_effect_later_or_never() {
        let info = with(put(0, "1", 0, 10), Completion::Info);
        // Never.
        assert_ok(&[info.clone(), get(1, None, 20, 30)]);
        // Much later than the client gave up.
        assert_ok(&[
            info.clone(),
            get(1, None, 20, 30),
            get(1, Some("1"), 1000, 1010),
        ]);
        // But only once: a value cannot come back after being overwritten...
        assert_violation(&[
            info.clone(),
            get(1, Some("1"), 20, 30),
            put(2, "2", 40, 50),
            get(1, Some("1"), 60, 70),
        ]);
        // ... and not before it was invoked.
        assert_violation(&[
            get(1, Some("1"), 0, 5),
            with(put(0, "1", 10, 20), Completion::Info),
        ]);
        // Seen, then gone without another write: impossible.
        assert_violation(&[info, get(1, Some("1"), 20, 30), get(1, None, 40, 50)]);
    }

    #[test]
    fn cas_anomalies_are_rejected() {
        // Two concurrent cas from the same expected value cannot both win.
        assert_violation(&[
            put(0, "0", 0, 10),
            cas(1, Some("0"), "a", 20, 40, true),
            cas(2, Some("0"), "b", 20, 40, true),
        ]);
        // A cas that succeeds against a value that is not there.
        assert_violation(&[put(0, "1", 0, 10), cas(1, Some("2"), "3", 20, 30, true)]);
        // A cas that fails although the value matched and nobody else wrote.
        assert_violation(&[put(0, "1", 0, 10), cas(1, Some("1"), "2", 20, 30, false)]);
        // A failed cas reporting a current value that is not current.
        assert_violation(&[
            put(0, "1", 0, 10),
            op(
                1,
                "k",
                KvOp::Cas {
                    expected: Some("9".into()),
                    new: "2".into(),
                },
                20,
                30,
                KvResult::CasFailed {
                    current: Some(Some("7".into())),
                },
            ),
        ]);
        // cas on an absent key (expected null).
        assert_ok(&[cas(1, None, "a", 0, 10, true), get(2, Some("a"), 20, 30)]);
        assert_violation(&[put(0, "x", 0, 5), cas(1, None, "a", 10, 20, true)]);
    }

    #[test]
    fn cas_successes_chain() {
        assert_ok(&[
            put(0, "0", 0, 10),
            cas(1, Some("0"), "1", 20, 40, true),
            cas(2, Some("1"), "2", 20, 40, true),
            cas(3, Some("0"), "x", 20, 40, false),
            get(4, Some("2"), 50, 60),
        ]);
    }

    #[test]
    fn unknown_cas_may_or_may_not_apply() {
        let c = with(cas(1, Some("0"), "1", 20, 30, true), Completion::Info);
        assert_ok(&[put(0, "0", 0, 10), c.clone(), get(2, Some("1"), 40, 50)]);
        assert_ok(&[put(0, "0", 0, 10), c.clone(), get(2, Some("0"), 40, 50)]);
        // If the value was not the expected one it cannot have written.
        assert_violation(&[put(0, "5", 0, 10), c, get(2, Some("1"), 40, 50)]);
    }

    #[test]
    fn keys_are_independent_and_the_report_names_the_key() {
        let mut h = vec![put(0, "1", 0, 10), get(1, Some("1"), 20, 30)];
        let mut other = put(0, "1", 0, 10);
        other.key = "b".into();
        h.push(other);
        let mut stale = get(1, None, 20, 30);
        stale.key = "b".into();
        h.push(stale);
        let r = verdict(&h);
        assert!(matches!(r.keys["k"], KeyVerdict::Linearizable));
        let v: Vec<_> = r.violations().collect();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].key, "b");
        assert_eq!(r.ops_checked, 4);
    }

    #[test]
    fn a_tiny_budget_gives_no_verdict_rather_than_a_wrong_one() {
        let h: Vec<Operation> = (0..20)
            .map(|i| put(i, &i.to_string(), 0, 100))
            .chain([get(99, Some("3"), 200, 210)])
            .collect();
        let r = check(
            &h,
            Budget {
                max_steps: 5,
                ..Budget::default()
            },
        );
        assert!(matches!(r.keys["k"], KeyVerdict::Undecided(_)), "{r:?}");
        assert!(!r.is_linearizable());
    }

    #[test]
    fn heavy_concurrency_is_decided_quickly_thanks_to_the_memo() {
        // 12 concurrent writers of distinct values, each read back by a later read.
        let mut h: Vec<Operation> = (0..12).map(|i| put(i, &format!("v{i}"), 0, 100)).collect();
        h.push(get(50, Some("v7"), 200, 210));
        h.push(get(51, Some("v7"), 220, 230));
        let started = Instant::now();
        assert_ok(&h);
        h.push(get(52, Some("v3"), 240, 250));
        assert_violation(&h);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Histories produced by a real (atomic) register with random overlap are
    /// always linearizable; corrupting one read usually makes them not.
    #[test]
    fn random_linearizable_histories_pass_and_corrupted_ones_mostly_fail() {
        let mut caught = 0;
        let rounds = 200;
        for seed in 0..rounds {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (h, reads) = random_history(&mut rng, 4, 60);
            let r = verdict(&h);
            assert!(r.is_linearizable(), "seed {seed}: {r:#?}");
            // Corrupt a read to a value nobody wrote at that moment... or ever.
            if let Some(&i) = reads.get(rng.random_range(0..reads.len().max(1))) {
                let mut bad = h.clone();
                if let Completion::Ok { result, .. } = &mut bad[i].completion {
                    *result = KvResult::Read(Some("never-written".into()));
                }
                assert!(!verdict(&bad).is_linearizable(), "seed {seed}");
                caught += 1;
            }
        }
        assert!(caught > rounds / 2);
    }

    /// Simulate clients on one register: each op takes effect at a random
    /// point inside its interval (the linearization point), in point order.
    fn random_history(
        rng: &mut ChaCha8Rng,
        clients: u64,
        ops: usize,
    ) -> (Vec<Operation>, Vec<usize>) {
        let mut points: Vec<(u64, u64, u64, u64)> = Vec::new(); // (point, client, from, to)
        let mut t_client = vec![0u64; clients as usize];
        for _ in 0..ops {
            let c = rng.random_range(0..clients);
            let from = t_client[c as usize] + rng.random_range(0..5);
            let to = from + rng.random_range(1..30);
            let point = rng.random_range(from..=to);
            t_client[c as usize] = to + 1;
            points.push((point, c, from, to));
        }
        points.sort();
        let mut state: Option<String> = None;
        let mut h = Vec::new();
        let mut reads = Vec::new();
        for (n, (_, c, from, to)) in points.into_iter().enumerate() {
            let kind = rng.random_range(0..10);
            let o = if kind < 4 {
                reads.push(h.len());
                get(c, state.as_deref(), from, to)
            } else if kind < 7 {
                let v = format!("v{n}");
                state = Some(v.clone());
                put(c, &v, from, to)
            } else {
                let expected = if rng.random_bool(0.6) {
                    state.clone()
                } else {
                    Some(format!("v{}", rng.random_range(0..=n)))
                };
                let new = format!("v{n}");
                let ok = expected == state;
                if ok {
                    state = Some(new.clone());
                }
                cas(c, expected.as_deref(), &new, from, to, ok)
            };
            let o = if kind >= 4 && rng.random_bool(0.1) {
                // An unknown outcome (that did take effect here).
                with(o, Completion::Info)
            } else {
                o
            };
            h.push(o);
        }
        (h, reads)
    }

    #[test]
    fn shrinking_keeps_the_report_small_and_still_failing() {
        let mut h = vec![put(0, "1", 0, 10), put(0, "2", 20, 30)];
        for i in 0..40 {
            h.push(get(1, Some("2"), 40 + 2 * i, 41 + 2 * i));
        }
        h.push(get(2, Some("1"), 200, 210));
        let v = assert_violation(&h);
        assert_eq!(v.culprit, get(2, Some("1"), 200, 210));
        assert!(v.relevant.len() <= 6, "{v}");
        assert!(v.relevant.contains(&put(0, "1", 0, 10)), "{v}");
        assert!(v.relevant.contains(&put(0, "2", 20, 30)), "{v}");
    }
}
