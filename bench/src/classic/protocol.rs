//! The classic ordering rules, without I/O: stored records in, writes and
//! decisions out.
//!
//! A [`Protocol`] is fed every record of its group in the order etcd's
//! watch delivers them (and, at start, the whole stored history in key
//! order). It answers with records to write ([`Protocol::take_writes`]) and
//! with decided instances to apply, strictly in order
//! ([`Protocol::pop_decided`]). The driver in `node.rs` performs both; the
//! simulation at the bottom of this file checks the rules under random
//! interleavings, crashes and restarts.
//!
//! # The rules
//! * **Order**: the leader of view `v` gives each request the next consensus
//!   instance `i` and writes `accept/i/v/<leader>` (its order is its own
//!   acceptance). A request a follower receives is written first as an
//!   unordered `requests/...` entry (instance 0) for the leader to pick up.
//! * **Accept**: a replica whose installed view is `v`, and that has not
//!   voted for a later view, writes `accept/i/v/<itself>` for every order of
//!   the leader of `v` that it sees.
//! * **Decide**: instance `i` is decided once a majority of the group has
//!   acceptances for the same `(i, v)`. Deciding is a function of the *set*
//!   of stored acceptances, so every replica decides the same, in any order
//!   of reading, and a decision never changes once the set has it.
//! * **View change**: a replica that suspects the leader writes a vote
//!   `elections/v+1/<itself>`; one that sees a vote for a view above its own
//!   adds its vote (echo). A view is installed once a majority voted for it;
//!   its leader is the voter whose vote etcd stored first (lowest create
//!   revision, the prototype's "lowest key").
//! * **Recovery by the new leader**: when it installs its view, the new
//!   leader re-orders every undecided instance up to the highest one it has
//!   seen with the value of that instance's acceptance from the highest view
//!   (a no-op where it saw none), then orders the waiting requests.
//!
//! # Why this is safe without compare-and-swap
//! Every replica reads the same total order: etcd's revisions, through one
//! ordered, complete watch (and, at start, a replay whose set-based rules
//! give the state an in-order reader would have at that revision). So the
//! installation of view `w` is one point in that order, the vote that
//! completes its majority, and:
//! * every order stored *before* that point was read by the new leader,
//!   which re-orders, at each undecided instance, the value from the
//!   highest view it saw there; by induction over views, a value that a
//!   majority accepted in an older view is the one re-ordered;
//! * an order of an older view stored *after* that point is accepted by
//!   nobody but its writer, because every other replica reads the
//!   installation first and then only accepts in `w`; a deposed or paused
//!   leader cannot gather a majority, fence or no fence.
//!
//! On top of that the rules keep Paxos' own guard, which does not need the
//! total order: a vote is a promise (never accept in an older view after
//! voting), and the driver stores a replica's vote only after its in-flight
//! acceptances. Incarnations keep a restarted replica from leading a view
//! that its previous life may already have led. The simulation below checks
//! on the stored records themselves that no instance ever has a majority for
//! two values, and was seen to catch a leader that ignores accepted values
//! and acceptors that ignore views.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use dorado_core::{Command, Entry, Index};
use serde::{Deserialize, Serialize};

/// A view (the prototype's `leaderView`); 0 is the initial view, which has no leader.
pub type View = u64;
/// A consensus instance; instances are the log indexes of the trace.
pub type Instance = Index;

/// Globally unique id of one client request as received by one replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId {
    /// Replica the client called.
    pub origin: String,
    /// Random id of that replica's process (a restart never reuses counters).
    pub incarnation: u64,
    /// Per-incarnation counter.
    pub counter: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:x}-{}", self.origin, self.incarnation, self.counter)
    }
}

/// What an instance decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Fills an instance a failed leader left without any acceptance.
    Noop,
    /// One client command (the protocol never batches).
    Request {
        /// Its id.
        id: RequestId,
        /// The command.
        command: Command,
    },
}

/// One `accept/<instance>/<view>/<acceptor>` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    /// Consensus instance.
    pub instance: Instance,
    /// View the acceptance belongs to.
    pub view: View,
    /// Who accepted (for the leader of `view`: who ordered).
    pub acceptor: String,
    /// What was accepted.
    pub value: Value,
}

/// One `requests/...` record: a request no leader has ordered yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequest {
    /// Its id (names the origin replica).
    pub id: RequestId,
    /// The origin's view when it wrote the request.
    pub view: View,
    /// The command.
    pub command: Command,
}

/// Everything stored under a classic group's prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A replica registered in the group.
    Roster {
        /// Its id.
        replica: String,
    },
    /// A replica's lease-bound presence; `address: None` when the key vanished.
    Member {
        /// Its id.
        replica: String,
        /// Its client API address.
        address: Option<String>,
    },
    /// An unordered request.
    Request(PendingRequest),
    /// An order or an acceptance.
    Accept(Accept),
    /// A vote for a view.
    Vote {
        /// The view voted for.
        view: View,
        /// Who voted.
        voter: String,
        /// The voter's incarnation.
        incarnation: u64,
    },
}

/// An instance ready to apply, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The instance (log index).
    pub instance: Instance,
    /// The request whose waiter this answers (`None` for no-ops and for a
    /// request already applied at an earlier instance).
    pub request: Option<RequestId>,
    /// What to apply: the command, or a no-op.
    pub entry: Entry,
}

#[derive(Debug, Clone)]
struct Proposal {
    value: Value,
    acceptors: BTreeSet<String>,
    /// This incarnation already wrote its acceptance (or order).
    sent: bool,
}

#[derive(Debug, Clone, Default)]
struct Slot {
    by_view: BTreeMap<View, Proposal>,
    decided: Option<Value>,
}

#[derive(Debug, Clone)]
struct Own {
    command: Command,
    /// A `requests/` entry exists (or is being written) for it.
    pending_written: bool,
}

/// One replica's view of its group's ordering; see the module docs.
#[derive(Debug)]
pub struct Protocol {
    me: String,
    incarnation: u64,
    group_size: usize,
    /// `(create revision, replica)`, sorted; the first `group_size` count.
    roster: Vec<(i64, String)>,
    members: HashMap<String, String>,
    view: View,
    leader: Option<(String, u64)>,
    /// Votes for views above `view`: `(create revision, voter, incarnation)`.
    votes: BTreeMap<View, Vec<(i64, String, u64)>>,
    /// Highest view this replica voted for, in any incarnation.
    promised: View,
    leading: bool,
    next_instance: Instance,
    applied: Instance,
    max_instance: Instance,
    slots: BTreeMap<Instance, Slot>,
    /// Unordered requests not applied yet, by arrival.
    pending: BTreeMap<u64, PendingRequest>,
    pending_ids: HashMap<RequestId, u64>,
    arrivals: u64,
    /// Requests this replica ordered in its current view.
    proposed_now: HashSet<RequestId>,
    /// Highest view in which an acceptance of each unapplied request was seen.
    ordered_in: HashMap<RequestId, View>,
    applied_ids: HashSet<RequestId>,
    own: HashMap<RequestId, Own>,
    replaying: bool,
    writes: Vec<Record>,
}

impl Protocol {
    /// A replica about to replay its group's history.
    pub fn new(me: &str, incarnation: u64, group_size: usize) -> Self {
        Protocol {
            me: me.to_owned(),
            incarnation,
            group_size: group_size.max(1),
            roster: Vec::new(),
            members: HashMap::new(),
            view: 0,
            leader: None,
            votes: BTreeMap::new(),
            promised: 0,
            leading: false,
            next_instance: 1,
            applied: 0,
            max_instance: 0,
            slots: BTreeMap::new(),
            pending: BTreeMap::new(),
            pending_ids: HashMap::new(),
            arrivals: 0,
            proposed_now: HashSet::new(),
            ordered_in: HashMap::new(),
            applied_ids: HashSet::new(),
            own: HashMap::new(),
            replaying: true,
            writes: Vec::new(),
        }
    }

    /// Replicas needed to decide or to install a view.
    pub fn majority(&self) -> usize {
        self.group_size / 2 + 1
    }

    /// The replicas whose acceptances and votes count.
    pub fn roster(&self) -> Vec<String> {
        self.roster
            .iter()
            .take(self.group_size)
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn counts(&self, replica: &str) -> bool {
        self.roster
            .iter()
            .take(self.group_size)
            .any(|(_, r)| r == replica)
    }

    /// The installed view.
    pub fn view(&self) -> View {
        self.view
    }

    /// Leader of the installed view (`None` in view 0).
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_ref().map(|(r, _)| r.as_str())
    }

    /// True while this incarnation leads the installed view.
    pub fn leading(&self) -> bool {
        self.leading
    }

    /// Highest view this replica has voted for (in any incarnation).
    pub fn promised(&self) -> View {
        self.promised
    }

    /// Highest applied instance.
    pub fn applied(&self) -> Instance {
        self.applied
    }

    /// Highest instance decided so far (not necessarily contiguous).
    pub fn highest_decided(&self) -> Instance {
        self.slots
            .iter()
            .rev()
            .find(|(_, s)| s.decided.is_some())
            .map_or(self.applied, |(i, _)| *i)
    }

    /// Address of a live member.
    pub fn member_address(&self, replica: &str) -> Option<&str> {
        self.members.get(replica).map(String::as_str)
    }

    /// Whether `replica`'s lease-bound member key exists.
    pub fn member_alive(&self, replica: &str) -> bool {
        self.members.contains_key(replica)
    }

    /// True when the store says this replica leads the installed view but a
    /// previous incarnation won it: nobody will order until a new view.
    pub fn stale_self_leader(&self) -> bool {
        !self.replaying && !self.leading && self.leader() == Some(self.me.as_str())
    }

    /// Whether a request has been ordered in the installed view (or applied).
    pub fn is_ordered(&self, id: &RequestId) -> bool {
        self.applied_ids.contains(id) || self.ordered_in.get(id) == Some(&self.view)
    }

    /// Records to write, in the order they were decided on. Votes must be
    /// written only after every acceptance returned before them is stored.
    pub fn take_writes(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.writes)
    }

    /// Feed one stored record; `revision` is the key's create revision.
    /// Feeding the same record twice changes nothing.
    pub fn ingest(&mut self, revision: i64, record: Record) {
        match record {
            Record::Roster { replica } => {
                if !self.roster.iter().any(|(_, r)| *r == replica) {
                    self.roster.push((revision, replica));
                    self.roster.sort();
                }
            }
            Record::Member { replica, address } => match address {
                Some(a) => {
                    self.members.insert(replica, a);
                }
                None => {
                    self.members.remove(&replica);
                }
            },
            Record::Request(p) => self.on_request(p),
            Record::Accept(a) => self.on_accept(a),
            Record::Vote {
                view,
                voter,
                incarnation,
            } => self.on_vote(revision, view, voter, incarnation),
        }
    }

    /// Forget which members are alive (before re-reading them).
    pub fn reset_members(&mut self) {
        self.members.clear();
    }

    /// The whole stored history has been fed: act on it (accept the current
    /// leader's orders, join a view change in progress).
    pub fn finish_replay(&mut self) {
        if !self.replaying {
            return;
        }
        self.replaying = false;
        if let Some(&w) = self.votes.keys().next_back()
            && self.promised < w
        {
            self.cast_vote(w);
        }
        self.accept_current_view();
    }

    /// A client request received here. The leader orders it at once; any
    /// other replica writes it unordered for the leader to pick up.
    pub fn submit(&mut self, id: RequestId, command: Command) {
        if self.leading {
            self.own.insert(
                id.clone(),
                Own {
                    command: command.clone(),
                    pending_written: false,
                },
            );
            let instance = self.take_instance();
            self.propose(instance, Value::Request { id, command });
        } else {
            self.own.insert(
                id.clone(),
                Own {
                    command: command.clone(),
                    pending_written: true,
                },
            );
            self.writes.push(Record::Request(PendingRequest {
                id,
                view: self.view,
                command,
            }));
        }
    }

    /// Stop tracking a request whose entry could not be written at all.
    pub fn forget(&mut self, id: &RequestId) {
        self.own.remove(id);
    }

    /// The leader's order for `instance` in `view` could not be stored
    /// (etcd refused it for good, e.g. too large): order a no-op there
    /// instead so the instance does not block every later one.
    pub fn order_failed(&mut self, instance: Instance, view: View) {
        if !self.leading || view != self.view || instance <= self.applied {
            return;
        }
        let slot = self.slots.entry(instance).or_default();
        if slot.decided.is_some() {
            return;
        }
        if let Some(p) = slot.by_view.get_mut(&view)
            && p.acceptors.is_empty()
        {
            p.value = Value::Noop;
            self.writes.push(Record::Accept(Accept {
                instance,
                view,
                acceptor: self.me.clone(),
                value: Value::Noop,
            }));
        }
    }

    /// The leader seems gone (or slow): vote for the next view, unless this
    /// replica already voted for a view above the installed one.
    pub fn suspect(&mut self) {
        if self.replaying || self.promised > self.view {
            return;
        }
        self.cast_vote(self.view + 1);
    }

    /// The next decided instance, if it is the one after the last applied.
    pub fn pop_decided(&mut self) -> Option<Decided> {
        let instance = self.applied + 1;
        let value = self.slots.get(&instance)?.decided.clone()?;
        self.slots.remove(&instance);
        self.applied = instance;
        self.next_instance = self.next_instance.max(instance + 1);
        Some(match value {
            Value::Noop => Decided {
                instance,
                request: None,
                entry: Entry::Noop,
            },
            Value::Request { id, command } => {
                if let Some(arrival) = self.pending_ids.remove(&id) {
                    self.pending.remove(&arrival);
                }
                self.own.remove(&id);
                self.ordered_in.remove(&id);
                if self.applied_ids.insert(id.clone()) {
                    Decided {
                        instance,
                        request: Some(id),
                        entry: Entry::Batch(vec![command]),
                    }
                } else {
                    // Ordered twice (a deposed leader re-submitted it): the
                    // second time is a no-op, identically on every replica.
                    Decided {
                        instance,
                        request: None,
                        entry: Entry::Noop,
                    }
                }
            }
        })
    }

    fn take_instance(&mut self) -> Instance {
        let i = self
            .next_instance
            .max(self.applied + 1)
            .max(self.max_instance + 1);
        self.next_instance = i + 1;
        i
    }

    fn propose(&mut self, instance: Instance, value: Value) {
        let view = self.view;
        if let Value::Request { id, .. } = &value {
            self.proposed_now.insert(id.clone());
        }
        self.max_instance = self.max_instance.max(instance);
        let slot = self.slots.entry(instance).or_default();
        slot.by_view.insert(
            view,
            Proposal {
                value: value.clone(),
                acceptors: BTreeSet::new(),
                sent: true,
            },
        );
        self.writes.push(Record::Accept(Accept {
            instance,
            view,
            acceptor: self.me.clone(),
            value,
        }));
    }

    fn cast_vote(&mut self, view: View) {
        self.promised = self.promised.max(view);
        self.writes.push(Record::Vote {
            view,
            voter: self.me.clone(),
            incarnation: self.incarnation,
        });
    }

    fn on_request(&mut self, p: PendingRequest) {
        if self.applied_ids.contains(&p.id) || self.pending_ids.contains_key(&p.id) {
            return;
        }
        let arrival = self.arrivals;
        self.arrivals += 1;
        self.pending_ids.insert(p.id.clone(), arrival);
        let (id, command) = (p.id.clone(), p.command.clone());
        self.pending.insert(arrival, p);
        if self.leading && !self.proposed_now.contains(&id) {
            let instance = self.take_instance();
            self.propose(instance, Value::Request { id, command });
        }
    }

    fn on_accept(&mut self, a: Accept) {
        if !self.counts(&a.acceptor) || a.instance <= self.applied {
            return;
        }
        self.max_instance = self.max_instance.max(a.instance);
        if let Value::Request { id, .. } = &a.value
            && !self.applied_ids.contains(id)
        {
            let seen = self.ordered_in.entry(id.clone()).or_insert(a.view);
            *seen = (*seen).max(a.view);
        }
        let majority = self.majority();
        let slot = self.slots.entry(a.instance).or_default();
        let proposal = slot.by_view.entry(a.view).or_insert_with(|| Proposal {
            value: a.value.clone(),
            acceptors: BTreeSet::new(),
            sent: false,
        });
        if proposal.value != a.value {
            // One leader per view orders each instance once, so this cannot
            // happen unless the store was written by something else.
            tracing::error!(
                instance = a.instance,
                view = a.view,
                acceptor = %a.acceptor,
                "conflicting acceptances in one view; ignoring the later one"
            );
            return;
        }
        proposal.acceptors.insert(a.acceptor);
        if slot.decided.is_none() && proposal.acceptors.len() >= majority {
            slot.decided = Some(proposal.value.clone());
        }
        if !self.replaying {
            self.maybe_accept(a.instance, a.view);
        }
    }

    /// Write this replica's acceptance of the current leader's order at
    /// `(instance, view)`, if the rules allow and it has not yet.
    fn maybe_accept(&mut self, instance: Instance, view: View) {
        if view != self.view || self.promised > view || !self.counts(&self.me) {
            return;
        }
        let Some((leader, _)) = &self.leader else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&instance) else {
            return;
        };
        let Some(p) = slot.by_view.get_mut(&view) else {
            return;
        };
        if p.sent || p.acceptors.contains(&self.me) || !p.acceptors.contains(leader) {
            return;
        }
        p.sent = true;
        self.writes.push(Record::Accept(Accept {
            instance,
            view,
            acceptor: self.me.clone(),
            value: p.value.clone(),
        }));
    }

    fn accept_current_view(&mut self) {
        let view = self.view;
        let instances: Vec<Instance> = self
            .slots
            .iter()
            .filter(|(_, s)| s.by_view.contains_key(&view))
            .map(|(i, _)| *i)
            .collect();
        for i in instances {
            self.maybe_accept(i, view);
        }
    }

    fn on_vote(&mut self, revision: i64, view: View, voter: String, incarnation: u64) {
        if !self.counts(&voter) {
            return;
        }
        if voter == self.me {
            self.promised = self.promised.max(view);
        }
        if view <= self.view {
            return;
        }
        let votes = self.votes.entry(view).or_default();
        if votes.iter().any(|(_, v, _)| *v == voter) {
            return;
        }
        votes.push((revision, voter, incarnation));
        votes.sort();
        if votes.len() >= self.majority() {
            self.install(view);
        } else if !self.replaying && self.promised < view {
            // Echo: join the view change (the prototype's "I will vote").
            self.cast_vote(view);
        }
    }

    fn install(&mut self, view: View) {
        let Some((_, leader, incarnation)) = self.votes.get(&view).and_then(|v| v.first()).cloned()
        else {
            return;
        };
        let was_leading = self.leading;
        self.view = view;
        self.votes = self.votes.split_off(&(view + 1));
        self.leading = !self.replaying && leader == self.me && incarnation == self.incarnation;
        self.leader = Some((leader, incarnation));
        self.proposed_now.clear();
        if self.leading {
            self.recover();
            return;
        }
        if was_leading {
            // Requests this replica ordered itself as leader have no
            // `requests/` entry; write one so the next leader orders them if
            // the old order does not survive (a duplicate is applied once).
            let mut ids: Vec<RequestId> = self
                .own
                .iter()
                .filter(|(_, o)| !o.pending_written)
                .map(|(id, _)| id.clone())
                .collect();
            ids.sort();
            for id in ids {
                if let Some(o) = self.own.get_mut(&id) {
                    o.pending_written = true;
                    self.writes.push(Record::Request(PendingRequest {
                        id,
                        view,
                        command: o.command.clone(),
                    }));
                }
            }
        }
        if !self.replaying {
            self.accept_current_view();
        }
    }

    /// Phase two of a new leader: re-order what may have been decided, fill
    /// holes, then order the waiting requests.
    fn recover(&mut self) {
        let top = self.max_instance;
        let mut orders = Vec::new();
        for i in self.applied + 1..=top {
            let slot = self.slots.get(&i);
            if slot.is_some_and(|s| s.decided.is_some()) {
                continue;
            }
            let value = slot
                .and_then(|s| s.by_view.values().next_back())
                .map_or(Value::Noop, |p| p.value.clone());
            orders.push((i, value));
        }
        self.next_instance = top.max(self.applied) + 1;
        for (i, value) in orders {
            self.propose(i, value);
        }
        let waiting: Vec<(RequestId, Command)> = self
            .pending
            .values()
            .filter(|p| !self.proposed_now.contains(&p.id))
            .map(|p| (p.id.clone(), p.command.clone()))
            .collect();
        for (id, command) in waiting {
            let instance = self.take_instance();
            self.propose(instance, Value::Request { id, command });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap as Map;

    fn key_of(r: &Record) -> String {
        // Same families and order as the etcd key layout, for replays.
        match r {
            Record::Roster { replica } => format!("0roster/{replica}"),
            Record::Vote { view, voter, .. } => format!("1elections/{view:020}/{voter}"),
            Record::Accept(a) => {
                format!("2accept/{:020}/{:020}/{}", a.instance, a.view, a.acceptor)
            }
            Record::Request(p) => format!("3requests/{}", p.id),
            Record::Member { replica, .. } => format!("4members/{replica}"),
        }
    }

    /// etcd as seen by the protocol: a revision-ordered log of puts where a
    /// re-put keeps the key's create revision.
    ///
    /// It also checks the safety property on what is stored, which is what
    /// every replica decides from: no instance ever has a majority of
    /// acceptances for two different values (in different views).
    #[derive(Default)]
    struct Etcd {
        log: Vec<(i64, Record)>,
        created: Map<String, i64>,
        rev: i64,
        majority: usize,
        accepted: Map<(Instance, View), (Value, BTreeSet<String>)>,
        chosen: Map<Instance, Value>,
    }

    impl Etcd {
        fn put(&mut self, r: Record) {
            self.rev += 1;
            let create = *self.created.entry(key_of(&r)).or_insert(self.rev);
            if let Record::Accept(a) = &r {
                let e = self
                    .accepted
                    .entry((a.instance, a.view))
                    .or_insert_with(|| (a.value.clone(), BTreeSet::new()));
                assert_eq!(e.0, a.value, "two values ordered in one view");
                e.1.insert(a.acceptor.clone());
                if self.majority > 0 && e.1.len() >= self.majority {
                    let chosen = self.chosen.entry(a.instance).or_insert(a.value.clone());
                    assert_eq!(
                        *chosen, a.value,
                        "instance {} has a majority for two different values",
                        a.instance
                    );
                }
            }
            self.log.push((create, r));
        }

        fn replay(&self) -> Vec<(i64, Record)> {
            let mut latest: Map<String, (i64, Record)> = Map::new();
            for (rev, r) in &self.log {
                latest.insert(key_of(r), (*rev, r.clone()));
            }
            latest.into_values().collect()
        }
    }

    struct Sim {
        name: String,
        p: Protocol,
        cursor: usize,
        outbox: Vec<Record>,
        alive: bool,
        next_counter: u64,
    }

    fn cmd(s: &str) -> Command {
        Command {
            client: None,
            payload: s.as_bytes().to_vec(),
        }
    }

    fn start(name: &str, etcd: &mut Etcd, incarnation: u64, n: usize) -> Sim {
        etcd.put(Record::Roster {
            replica: name.into(),
        });
        etcd.put(Record::Member {
            replica: name.into(),
            address: Some(format!("{name}:1")),
        });
        let mut p = Protocol::new(name, incarnation, n);
        for (rev, r) in etcd.replay() {
            p.ingest(rev, r);
        }
        p.finish_replay();
        let outbox = p.take_writes();
        Sim {
            name: name.into(),
            p,
            cursor: etcd.log.len(),
            outbox,
            alive: true,
            next_counter: 0,
        }
    }

    /// Everything each replica applied, checked against one another.
    #[derive(Default)]
    struct Applied {
        by_instance: Map<Instance, Entry>,
    }

    impl Applied {
        fn check(&mut self, who: &str, d: &Decided) {
            let e = self
                .by_instance
                .entry(d.instance)
                .or_insert_with(|| d.entry.clone());
            assert_eq!(
                *e, d.entry,
                "{who} applied a different value at instance {}",
                d.instance
            );
        }
    }

    fn drain(s: &mut Sim, applied: &mut Applied, log: &mut [Vec<Entry>], idx: usize) {
        while let Some(d) = s.p.pop_decided() {
            applied.check(&s.name, &d);
            log[idx].push(d.entry);
        }
        s.outbox.extend(s.p.take_writes());
    }

    /// Index of the write that may be stored next: any acceptance before
    /// the first vote, or the vote once everything before it is stored.
    fn flushable(outbox: &[Record], rng: &mut StdRng) -> Option<usize> {
        let first_vote = outbox
            .iter()
            .position(|r| matches!(r, Record::Vote { .. }))
            .unwrap_or(outbox.len());
        if first_vote == 0 {
            return (!outbox.is_empty()).then_some(0);
        }
        Some(rng.random_range(0..first_vote))
    }

    fn run(seed: u64, n: usize, steps: usize) -> (Vec<Vec<Entry>>, usize) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut etcd = Etcd {
            majority: n / 2 + 1,
            ..Etcd::default()
        };
        let names: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
        let mut sims: Vec<Sim> = names
            .iter()
            .map(|nm| start(nm, &mut etcd, rng.random(), n))
            .collect();
        let mut applied = Applied::default();
        let mut logs: Vec<Vec<Entry>> = vec![Vec::new(); n];
        let mut submitted = 0usize;
        for step in 0..steps {
            let i = rng.random_range(0..n);
            let healing = step > steps * 3 / 4;
            let roll: u32 = rng.random_range(0..100);
            if !sims[i].alive {
                if healing || roll < 10 {
                    // Restart with empty state: replay the whole history.
                    let mut s = start(&names[i], &mut etcd, rng.random(), n);
                    logs[i].clear();
                    drain(&mut s, &mut applied, &mut logs, i);
                    sims[i] = s;
                }
                continue;
            }
            match roll {
                0..=39 => {
                    // Deliver the next stored record.
                    let s = &mut sims[i];
                    if s.cursor < etcd.log.len() {
                        let (rev, r) = etcd.log[s.cursor].clone();
                        s.cursor += 1;
                        s.p.ingest(rev, r);
                        drain(s, &mut applied, &mut logs, i);
                    }
                }
                40..=74 => {
                    let s = &mut sims[i];
                    if let Some(k) = flushable(&s.outbox, &mut rng) {
                        let r = s.outbox.remove(k);
                        etcd.put(r);
                    }
                }
                75..=86 if !healing => {
                    let s = &mut sims[i];
                    s.next_counter += 1;
                    let id = RequestId {
                        origin: s.name.clone(),
                        incarnation: 1,
                        counter: s.next_counter + 1000 * step as u64,
                    };
                    s.p.submit(id, cmd(&format!("{}-{step}", s.name)));
                    submitted += 1;
                    s.outbox.extend(s.p.take_writes());
                }
                87..=93 => {
                    let s = &mut sims[i];
                    if s.p.leader().is_none() || s.p.stale_self_leader() || rng.random_bool(0.3) {
                        s.p.suspect();
                        s.outbox.extend(s.p.take_writes());
                    }
                }
                94..=96 if !healing => {
                    // Crash: some in-flight writes land, the rest are lost;
                    // the lease expires.
                    let s = &mut sims[i];
                    let outbox = std::mem::take(&mut s.outbox);
                    for r in outbox {
                        if matches!(r, Record::Vote { .. }) {
                            break;
                        }
                        if rng.random_bool(0.5) {
                            etcd.put(r);
                        }
                    }
                    s.alive = false;
                    etcd.put(Record::Member {
                        replica: s.name.clone(),
                        address: None,
                    });
                }
                _ => {}
            }
        }
        // Heal: deliver and flush everything until quiet, re-electing when needed.
        for _ in 0..200 {
            let mut moved = false;
            for (i, s) in sims.iter_mut().enumerate() {
                if !s.alive {
                    continue;
                }
                while s.cursor < etcd.log.len() {
                    let (rev, r) = etcd.log[s.cursor].clone();
                    s.cursor += 1;
                    s.p.ingest(rev, r);
                    drain(s, &mut applied, &mut logs, i);
                    moved = true;
                }
                for r in std::mem::take(&mut s.outbox) {
                    etcd.put(r);
                    moved = true;
                }
            }
            if !moved {
                let stuck = sims
                    .iter()
                    .any(|s| s.p.leader().is_none() || s.p.stale_self_leader());
                let leader_dead = sims
                    .iter()
                    .any(|s| s.p.leader().is_some_and(|l| !s.p.member_alive(l)));
                if !(stuck || leader_dead) {
                    break;
                }
                for s in sims.iter_mut() {
                    s.p.suspect();
                    s.outbox.extend(s.p.take_writes());
                }
            }
        }
        (logs, submitted)
    }

    #[test]
    fn random_schedules_never_decide_two_values_for_one_instance() {
        for seed in 0..300 {
            let (logs, _) = run(seed, 3, 600);
            // Every replica applied a prefix of the same sequence.
            let longest = logs.iter().max_by_key(|l| l.len()).unwrap();
            for l in &logs {
                assert_eq!(&longest[..l.len()], &l[..], "seed {seed}");
            }
        }
    }

    #[test]
    fn five_replicas_too() {
        for seed in 0..100 {
            let (logs, _) = run(seed, 5, 800);
            let longest = logs.iter().max_by_key(|l| l.len()).unwrap();
            for l in &logs {
                assert_eq!(&longest[..l.len()], &l[..], "seed {seed}");
            }
        }
    }

    #[test]
    fn after_healing_every_replica_has_applied_the_same_history() {
        let mut progressed = 0;
        for seed in 0..100 {
            let (logs, submitted) = run(seed, 3, 600);
            assert!(
                logs.windows(2).all(|w| w[0] == w[1]),
                "seed {seed}: replicas differ after healing"
            );
            // No request is applied twice.
            let mut seen = HashSet::new();
            for e in &logs[0] {
                if let Entry::Batch(c) = e {
                    assert!(
                        seen.insert(c[0].payload.clone()),
                        "seed {seed}: applied twice"
                    );
                }
            }
            if submitted > 0 && !seen.is_empty() {
                progressed += 1;
            }
        }
        assert!(progressed > 50, "only {progressed} runs made progress");
    }

    fn three() -> (Etcd, Vec<Protocol>) {
        let mut etcd = Etcd::default();
        let mut ps = Vec::new();
        for (k, name) in ["a", "b", "c"].iter().enumerate() {
            etcd.put(Record::Roster {
                replica: (*name).into(),
            });
            let mut p = Protocol::new(name, k as u64, 3);
            p.ingest(
                k as i64 + 1,
                Record::Roster {
                    replica: (*name).into(),
                },
            );
            ps.push(p);
        }
        for p in &mut ps {
            for (k, name) in ["a", "b", "c"].iter().enumerate() {
                p.ingest(
                    k as i64 + 1,
                    Record::Roster {
                        replica: (*name).into(),
                    },
                );
            }
            p.finish_replay();
        }
        (etcd, ps)
    }

    /// Deliver every write to every replica in one global order until quiet.
    fn settle(etcd: &mut Etcd, ps: &mut [Protocol], out: &mut [Vec<Decided>]) {
        let mut cursor = vec![etcd.log.len(); ps.len()];
        loop {
            let mut moved = false;
            for p in ps.iter_mut() {
                for w in p.take_writes() {
                    etcd.put(w);
                    moved = true;
                }
            }
            for (k, p) in ps.iter_mut().enumerate() {
                while cursor[k] < etcd.log.len() {
                    let (rev, r) = etcd.log[cursor[k]].clone();
                    cursor[k] += 1;
                    p.ingest(rev, r);
                    while let Some(d) = p.pop_decided() {
                        out[k].push(d);
                    }
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn the_first_voter_leads_and_a_follower_request_is_ordered_and_decided() {
        let (mut etcd, mut ps) = three();
        let mut out = vec![Vec::new(); 3];
        ps[1].suspect();
        settle(&mut etcd, &mut ps, &mut out);
        assert_eq!(ps[0].view(), 1);
        assert_eq!(ps[0].leader(), Some("b"));
        assert!(ps[1].leading());
        let id = RequestId {
            origin: "c".into(),
            incarnation: 2,
            counter: 1,
        };
        ps[2].submit(id.clone(), cmd("x"));
        settle(&mut etcd, &mut ps, &mut out);
        for o in &out {
            assert_eq!(o.len(), 1);
            assert_eq!(o[0].instance, 1);
            assert_eq!(o[0].request, Some(id.clone()));
        }
        // One request entry plus three acceptances, plus three votes and the roster.
        let accepts = etcd
            .log
            .iter()
            .filter(|(_, r)| matches!(r, Record::Accept(_)))
            .count();
        assert_eq!(accepts, 3);
    }

    #[test]
    fn a_new_leader_reorders_what_a_majority_accepted_and_fills_holes() {
        let (mut etcd, mut ps) = three();
        let mut out = vec![Vec::new(); 3];
        ps[0].suspect();
        settle(&mut etcd, &mut ps, &mut out);
        assert!(ps[0].leading());
        // The leader orders two requests; only "b" sees the second order
        // (instance 2) and accepts it; then the leader dies.
        let id1 = RequestId {
            origin: "a".into(),
            incarnation: 0,
            counter: 1,
        };
        let id2 = RequestId {
            origin: "a".into(),
            incarnation: 0,
            counter: 2,
        };
        ps[0].submit(id1, cmd("one"));
        let w1 = ps[0].take_writes();
        ps[0].submit(id2.clone(), cmd("two"));
        let w2 = ps[0].take_writes();
        // Instance 1's order is lost with the leader; instance 2's is stored.
        drop(w1);
        for w in w2 {
            etcd.put(w);
        }
        let (rev, r) = etcd.log.last().cloned().unwrap();
        ps[1].ingest(rev, r);
        for w in ps[1].take_writes() {
            etcd.put(w);
            let (rev, r) = etcd.log.last().cloned().unwrap();
            ps[1].ingest(rev, r);
        }
        // "b" and "c" elect a new leader; "a" is gone.
        let mut survivors: Vec<Protocol> = ps.drain(1..).collect();
        let mut out2 = vec![Vec::new(); 2];
        // Catch "c" up with everything stored so far.
        for (rev, r) in etcd.log.clone() {
            survivors[1].ingest(rev, r);
        }
        survivors[1].take_writes();
        survivors[1].suspect();
        settle(&mut etcd, &mut survivors, &mut out2);
        assert_eq!(survivors[0].view(), 2);
        for o in &out2 {
            let entries: Vec<&Entry> = o.iter().map(|d| &d.entry).collect();
            assert_eq!(
                entries,
                vec![&Entry::Noop, &Entry::Batch(vec![cmd("two")])],
                "instance 1 is a no-op hole, instance 2 keeps its accepted request"
            );
        }
    }

    #[test]
    fn a_restarted_replica_never_leads_a_view_its_previous_incarnation_won() {
        let (mut etcd, mut ps) = three();
        let mut out = vec![Vec::new(); 3];
        ps[0].suspect();
        settle(&mut etcd, &mut ps, &mut out);
        assert!(ps[0].leading());
        let mut again = Protocol::new("a", 99, 3);
        for (rev, r) in etcd.replay() {
            again.ingest(rev, r);
        }
        again.finish_replay();
        assert_eq!(again.leader(), Some("a"));
        assert!(!again.leading());
        assert!(again.stale_self_leader());
        again.suspect();
        assert!(matches!(
            again.take_writes().as_slice(),
            [Record::Vote { view: 2, .. }]
        ));
    }

    #[test]
    fn replicas_outside_the_roster_do_not_count() {
        let mut p = Protocol::new("a", 1, 1);
        p.ingest(
            1,
            Record::Roster {
                replica: "a".into(),
            },
        );
        p.ingest(
            2,
            Record::Roster {
                replica: "z".into(),
            },
        );
        p.finish_replay();
        p.ingest(
            3,
            Record::Vote {
                view: 1,
                voter: "z".into(),
                incarnation: 0,
            },
        );
        assert_eq!(
            p.view(),
            0,
            "a vote from outside the roster installed a view"
        );
        assert_eq!(p.roster(), vec!["a".to_string()]);
    }
}
