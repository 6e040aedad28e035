//! The simulated network: thousands of hosts on turmoil-net, one thread, paused time.
//!
//! # Design
//!
//! [`SimNet`] puts every simulated host into one [`turmoil_net::Net`] (a fabric of per-host
//! socket stacks with no per-pair state), runs every host's task on one paused current-thread
//! tokio runtime and one [`LocalSet`], and moves packets between hosts with its own
//! event-driven scheduler. This is the harness measured in `shared/notes/turmoil-at-scale.md`
//! (10,000 hosts, 60 simulated seconds in ~27 s wall, 40 MiB, deterministic, latency exact).
//! `cargo run --release -p sim --example harness_bench -- 10000 60` runs that workload through
//! [`crate::driver::drive`] and an event collector: 1,000 hosts in 1.4 s and 8.3 MiB, 10,000
//! hosts in 30 s and 63 MiB (2-core machine; about 9 % of it is forwarding the 9.6 million
//! events).
//!
//! - **Host scoping.** turmoil-net's socket calls act on the thread's *current* host. Every
//!   task spawned with [`SimNet::spawn`] is wrapped in a future that calls
//!   [`turmoil_net::set_current`] before each poll **and when it is dropped** (a socket closes
//!   itself through that lookup, so a task dropped under the wrong host would close another
//!   host's socket). The crate's own wrapper is private, hence ours.
//! - **Time.** The runtime's clock is paused: it never moves while a task is runnable and jumps
//!   straight to the next timer when all are idle. Tokio's timer wheel has 1 ms resolution and
//!   the clock only ever auto-advances by whole milliseconds, so simulated time is a sequence
//!   of 1 ms *ticks* ([`TICK`]) counted from [`SimNet::new`].
//! - **Rounds.** The scheduler runs the `LocalSet` until the earliest of *(a)* the next pending
//!   delivery and *(b)* one tick after the first host poll of the round. Everything a host
//!   sends in a round is therefore sent at the round's first tick `T` (no other tick exists
//!   before `T + 1`), and the scheduler stamps it with `T`, not with the time it collected it.
//!   A packet whose rule says `Deliver(d)` is delivered at tick `T + round(d)`: with whole-
//!   millisecond latencies the simulated latency is exact (a 40 ms + 40 ms ping measures
//!   exactly 80 ms); sub-millisecond parts are rounded to the nearest tick, and the smallest
//!   latency is one tick.
//! - **Pending deliveries** live in a min-heap of delivery *ticks* (8-byte keys), with the
//!   packets of each tick in a FIFO bucket beside it. Packets due in the same tick are
//!   delivered in the order they were sent, so the simulation is deterministic.
//! - **Egress only from hosts that ran.** `turmoil_net`'s `egress_all` visits every host (TCP
//!   retransmit checks and all); it was a quarter of the profile at 10,000 hosts and 29 % at
//!   3,000 with loss. A host's outbound queue fills only when one of its tasks was polled or a
//!   packet was delivered to it, so the scheduler notes those hosts during a round and drains
//!   only theirs, in host order — the order `egress_all` visits them in, so runs are unchanged
//!   packet for packet (`vendor/turmoil-net` adds `egress_hosts` for this). A round in which no
//!   host task was polled is skipped.
//! - **Latency and faults** are one caller-supplied [`Rule`] ([`SimNet::set_rule`]), usually a
//!   closure `FnMut(&Packet) -> Verdict` that maps `packet.src`/`packet.dst` back to its own
//!   peer table (see [`host_index`]). It is consulted once per packet; the send time is
//!   available as [`SimHandle::now`] inside it. If it returns [`Verdict::Pass`], rules
//!   installed with [`turmoil_net::rule`] from inside the simulation are consulted next.
//! - **Kill.** [`SimNet::kill`] aborts a host's tasks (dropping them closes their sockets) and
//!   marks the host dead, so packets to it — including those already in flight — are dropped
//!   and counted. turmoil-net cannot add hosts once the `Net` is installed on the thread (the
//!   installed `Net` is not reachable through its public API), so hosts are added before the
//!   first run; a churn replacement is a new task [spawned](SimNet::spawn) on a killed host,
//!   which revives it with the same address (address reuse, as after a DHCP lease expires).
//!
//! # Determinism
//!
//! Given the same hosts, rule and tasks, a run is a pure function of its inputs: the clock is
//! simulated, the `LocalSet` polls in FIFO order, and pending packets are ordered by
//! `(tick, send order)`. What breaks it lives in the tasks: an unbiased `tokio::select!` (it
//! draws from tokio's own RNG — use `biased;`), iteration over a `HashMap` reaching output,
//! or randomness not derived from the scenario seed.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use sim::net::{SimNet, host_ip};
//! use turmoil_net::Verdict;
//!
//! let mut net = SimNet::new();
//! let a = net.add_host(host_ip(0));
//! let b = net.add_host(host_ip(1));
//! net.set_rule(|_p: &turmoil_net::Packet| Verdict::Deliver(Duration::from_millis(40)));
//! net.spawn(b, async move { /* bind a socket, run sim::driver::drive(..) */ });
//! net.spawn(a, async move { /* ... */ });
//! net.run_until(Duration::from_secs(60));
//! ```

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::task::{AbortHandle, JoinHandle, LocalSet};
use tokio::time::{Instant, Sleep};
use turmoil_net::{EnterGuard, KernelConfig, Net, Packet, Rule, Verdict};

/// The resolution of simulated time: tokio's timer wheel ticks once per millisecond.
pub const TICK: Duration = Duration::from_millis(1);

/// How many distinct addresses [`host_ip`] can produce.
pub const HOST_IP_CAPACITY: usize = 254 * 65_536;

/// MTU given to every simulated host by [`SimNet::new`].
///
/// turmoil-net refuses UDP payloads above `mtu - 28` with `EMSGSIZE` (Linux under
/// `IP_PMTUDISC_DO`) and does not fragment. Real stacks fragment by default, so the simulator
/// lets any datagram up to the UDP maximum (65,507 bytes) through.
pub const SIM_MTU: u32 = 65_535;

/// A simulated time so far away that reaching it means the simulation went idle.
const FAR_TICK: u64 = 365 * 24 * 3600 * 1000;

/// The address of the `index`-th simulated host: `10.b.c.d` with `d` in `1..=254`, hosts
/// 0 to 65,535 each in a /24 of their own.
///
/// Unique for `index < HOST_IP_CAPACITY` (16.6 million), never ends in `.0` or `.255`
/// (turmoil-net treats any `x.x.x.255` as a broadcast address). [`host_index`] inverts it, so a
/// latency rule can find its per-peer data from `packet.src` / `packet.dst`.
///
/// # Panics
///
/// If `index >= HOST_IP_CAPACITY`.
pub fn host_ip(index: usize) -> Ipv4Addr {
    assert!(
        index < HOST_IP_CAPACITY,
        "host index {index} out of range (max {HOST_IP_CAPACITY})"
    );
    // Consecutive hosts in different /24s (65,536 of them before any /24 holds two): honest
    // peers on the Internet are spread over networks, and a per-/24 limit must not see them as
    // Sybils.
    let block = index % 65_536;
    let last = (index / 65_536) as u8 + 1;
    Ipv4Addr::new(10, (block >> 8) as u8, block as u8, last)
}

/// The index that [`host_ip`] maps to `ip`, or `None` if `ip` is not such an address.
pub fn host_index(ip: IpAddr) -> Option<usize> {
    let IpAddr::V4(v4) = ip else { return None };
    let [a, b, c, d] = v4.octets();
    if a != 10 || d == 0 || d == 255 {
        return None;
    }
    Some((usize::from(d) - 1) * 65_536 + usize::from(b) * 256 + usize::from(c))
}

/// A host of a [`SimNet`], numbered from 0 in the order hosts were added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(u32);

impl HostId {
    /// The host's number: 0 for the first host added, 1 for the next, and so on.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Counters kept by the scheduler. Every packet a host sends ends in exactly one of
/// `delivered`, `dropped_by_rule`, `dropped_dead`, `unroutable` or `in_flight`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Rounds in which at least one host task ran (and egress was collected).
    pub rounds: u64,
    /// Packets that left a host (loopback traffic never leaves and is not counted).
    pub sent: u64,
    /// Packets handed to the destination host's stack. A packet for a port nobody listens on
    /// is counted here and dropped by the stack, as on a real host.
    pub delivered: u64,
    /// Packets the rule answered [`Verdict::Drop`] for.
    pub dropped_by_rule: u64,
    /// Packets for a killed host, dropped when sent or when they arrived.
    pub dropped_dead: u64,
    /// Packets for an address no host has.
    pub unroutable: u64,
    /// Packets scheduled and not yet delivered.
    pub in_flight: u64,
}

/// One host's bookkeeping.
struct HostEntry {
    id: turmoil_net::HostId,
    ip: IpAddr,
    alive: bool,
    tasks: Vec<AbortHandle>,
}

/// Hosts that may have something to send: (index, turmoil id), and a mark per host index so
/// each is listed once.
#[derive(Default)]
struct Touched {
    list: Vec<(usize, turmoil_net::HostId)>,
    marks: Vec<bool>,
}

/// State shared by the [`SimNet`], its [`SimHandle`]s and the host-scoped task wrappers.
struct Shared {
    /// Simulated time zero.
    start: Instant,
    /// The tick at which the first host task of the current round was polled.
    round: Cell<Option<u64>>,
    /// The scheduler's stop future, woken when a round opens or a watched future ends.
    stop_waker: Cell<Option<Waker>>,
    /// Set when the future given to [`SimNet::block_on`] has finished (or unwound).
    main_done: Cell<bool>,
    /// Whether the `Net` is installed on this thread (socket drops need it).
    entered: Cell<bool>,
    /// While the rule runs: the send tick of the packet it is judging.
    rule_clock: Cell<Option<u64>>,
    /// The first panic of a host task, re-raised by the run that saw it.
    panic: RefCell<Option<(HostId, String)>>,
    hosts: RefCell<Vec<HostEntry>>,
    /// Hosts polled or delivered to since the last egress.
    touched: RefCell<Touched>,
    /// Address → host, for addresses that [`host_index`] does not map to their host.
    by_ip: RefCell<HashMap<IpAddr, u32>>,
}

impl Shared {
    fn tick_now(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    fn instant_at(&self, tick: u64) -> Instant {
        self.start + Duration::from_millis(tick)
    }

    fn now(&self) -> Duration {
        match self.rule_clock.get() {
            Some(tick) => Duration::from_millis(tick),
            None => Instant::now().saturating_duration_since(self.start),
        }
    }

    fn wake_stop(&self) {
        if let Some(waker) = self.stop_waker.take() {
            waker.wake();
        }
    }

    /// Called on every host poll; cheap after the first one of a round.
    fn open_round(&self) {
        if self.round.get().is_none() {
            self.round.set(Some(self.tick_now()));
            self.wake_stop();
        }
    }

    /// Notes that host `index` may have something to send this round.
    fn touch(&self, index: usize, id: turmoil_net::HostId) {
        let mut touched = self.touched.borrow_mut();
        let Touched { list, marks } = &mut *touched;
        if marks.len() <= index {
            marks.resize(index + 1, false);
        }
        if !marks[index] {
            marks[index] = true;
            list.push((index, id));
        }
    }

    /// The hosts touched since the last call, in host order; clears the list.
    fn take_touched(&self, ids: &mut Vec<turmoil_net::HostId>) {
        let mut touched = self.touched.borrow_mut();
        let Touched { list, marks } = &mut *touched;
        list.sort_unstable_by_key(|(i, _)| *i);
        ids.clear();
        for (i, id) in list.drain(..) {
            marks[i] = false;
            ids.push(id);
        }
    }

    /// The host that owns `ip`, if any.
    fn host_of(&self, hosts: &[HostEntry], ip: IpAddr) -> Option<usize> {
        if let Some(i) = host_index(ip)
            && hosts.get(i).is_some_and(|h| h.ip == ip)
        {
            return Some(i);
        }
        self.by_ip.borrow().get(&ip).map(|&i| i as usize)
    }

    fn kill(&self, host: HostId) {
        let mut hosts = self.hosts.borrow_mut();
        let entry = &mut hosts[host.index()];
        entry.alive = false;
        for task in entry.tasks.drain(..) {
            task.abort();
        }
    }

    fn register_task(&self, host: HostId, task: AbortHandle) {
        let mut hosts = self.hosts.borrow_mut();
        let entry = &mut hosts[host.index()];
        entry.alive = true;
        entry.tasks.retain(|t| !t.is_finished());
        entry.tasks.push(task);
    }

    fn turmoil_id(&self, host: HostId) -> turmoil_net::HostId {
        self.hosts.borrow()[host.index()].id
    }
}

/// Runs a host's future with that host current, on every poll and when dropped.
struct HostScoped<F> {
    host: HostId,
    id: turmoil_net::HostId,
    shared: Rc<Shared>,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for HostScoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        turmoil_net::set_current(this.id);
        this.shared.touch(this.host.index(), this.id);
        this.shared.open_round();
        match catch_unwind(AssertUnwindSafe(|| this.inner.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                // Remember the first panic so that the run re-raises it: a LocalSet would
                // otherwise swallow it into a JoinHandle nobody awaits.
                let mut slot = this.shared.panic.borrow_mut();
                if slot.is_none() {
                    *slot = Some((this.host, panic_message(&*payload)));
                }
                drop(slot);
                this.shared.wake_stop();
                resume_unwind(payload)
            }
        }
    }
}

impl<F> Drop for HostScoped<F> {
    fn drop(&mut self) {
        // The inner future (dropped right after this) may own sockets, which close
        // themselves on the current host.
        if self.shared.entered.get() {
            turmoil_net::set_current(self.id);
            self.shared.touch(self.host.index(), self.id);
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

/// Marks the `block_on` future finished when dropped, including by a panic.
struct MainDone(Rc<Shared>);

impl Drop for MainDone {
    fn drop(&mut self) {
        self.0.main_done.set(true);
        self.0.wake_stop();
    }
}

/// A cheap, cloneable handle to a [`SimNet`] for code running *inside* the simulation
/// (workload tasks, rules): spawn and kill hosts, read the simulated clock.
#[derive(Clone)]
pub struct SimHandle {
    shared: Rc<Shared>,
}

impl std::fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHandle").finish_non_exhaustive()
    }
}

impl SimHandle {
    /// Simulated time since [`SimNet::new`]. Inside the rule: the send time of the packet
    /// being judged. Must be called inside the simulation (a task or the rule); outside,
    /// use [`SimNet::now`].
    pub fn now(&self) -> Duration {
        self.shared.now()
    }

    /// Spawns `fut` as a task of `host` (reviving the host if it was killed).
    ///
    /// # Panics
    ///
    /// Outside a task of the simulation (use [`SimNet::spawn`] there).
    pub fn spawn<F>(&self, host: HostId, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let handle = tokio::task::spawn_local(self.scoped(host, fut));
        self.shared.register_task(host, handle.abort_handle());
        handle
    }

    /// Kills `host`: aborts its tasks (dropping them closes their sockets) and drops every
    /// packet sent to it from now on, including those already in flight.
    pub fn kill(&self, host: HostId) {
        self.shared.kill(host);
    }

    /// Whether `host` is alive (it is until [`kill`](Self::kill)ed, and again once a task is
    /// spawned on it).
    pub fn is_alive(&self, host: HostId) -> bool {
        self.shared.hosts.borrow()[host.index()].alive
    }

    /// The address `host` was added with.
    pub fn ip(&self, host: HostId) -> IpAddr {
        self.shared.hosts.borrow()[host.index()].ip
    }

    fn scoped<F: Future>(&self, host: HostId, fut: F) -> HostScoped<F> {
        HostScoped {
            host,
            id: self.shared.turmoil_id(host),
            shared: Rc::clone(&self.shared),
            inner: Box::pin(fut),
        }
    }
}

/// Where the `Net` is: still being built, or installed on this thread.
enum NetState {
    Building(Box<Net>),
    Entered(EnterGuard),
    /// Only transiently, while switching from `Building` to `Entered`.
    Switching,
}

/// The scheduler's half: pending deliveries, the rule, the stop timer, the counters.
struct Scheduler {
    /// Min-heap of the ticks that have a bucket in `buckets`.
    ticks: BinaryHeap<Reverse<u64>>,
    /// Packets due at each tick, in send order.
    buckets: HashMap<u64, Vec<Packet>, BuildHasherDefault<TickHasher>>,
    /// Emptied buckets kept for reuse.
    spare: Vec<Vec<Packet>>,
    egress: Vec<Packet>,
    /// The hosts to drain at the next egress (reused buffer).
    touched: Vec<turmoil_net::HostId>,
    rule: Option<Box<dyn Rule>>,
    /// The stop timer, created inside the runtime on first use and reset, never recreated.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: u64,
    stats: NetStats,
}

impl Scheduler {
    fn new() -> Self {
        Self {
            ticks: BinaryHeap::new(),
            buckets: HashMap::default(),
            spare: Vec::new(),
            egress: Vec::with_capacity(1024),
            touched: Vec::new(),
            rule: None,
            sleep: None,
            armed: u64::MAX,
            stats: NetStats::default(),
        }
    }

    fn next_delivery(&self) -> Option<u64> {
        self.ticks.peek().map(|Reverse(t)| *t)
    }

    fn schedule(&mut self, tick: u64, pkt: Packet) {
        self.stats.in_flight += 1;
        if let Some(bucket) = self.buckets.get_mut(&tick) {
            bucket.push(pkt);
            return;
        }
        let mut bucket = self.spare.pop().unwrap_or_default();
        bucket.push(pkt);
        self.buckets.insert(tick, bucket);
        self.ticks.push(Reverse(tick));
    }

    /// Delivers every packet due at or before `now`.
    fn deliver_due(&mut self, now: u64, guard: &EnterGuard, shared: &Shared) {
        while let Some(tick) = self.next_delivery() {
            if tick > now {
                break;
            }
            self.ticks.pop();
            let Some(mut bucket) = self.buckets.remove(&tick) else {
                continue;
            };
            let hosts = shared.hosts.borrow();
            for pkt in bucket.drain(..) {
                self.stats.in_flight -= 1;
                match shared.host_of(&hosts, pkt.dst) {
                    Some(dst) if hosts[dst].alive => {
                        self.stats.delivered += 1;
                        shared.touch(dst, hosts[dst].id);
                        guard.deliver(pkt);
                    }
                    Some(_) => self.stats.dropped_dead += 1,
                    None => self.stats.unroutable += 1,
                }
            }
            self.spare.push(bucket);
        }
    }

    /// Collects what the hosts sent during the round that opened at tick `sent`, and judges
    /// and schedules each packet.
    fn egress(&mut self, sent: u64, guard: &EnterGuard, shared: &Shared) {
        self.stats.rounds += 1;
        let mut out = std::mem::take(&mut self.egress);
        shared.take_touched(&mut self.touched);
        guard.egress_hosts(&self.touched, &mut out);
        shared.rule_clock.set(Some(sent));
        let hosts = shared.hosts.borrow();
        for pkt in out.drain(..) {
            self.stats.sent += 1;
            match shared.host_of(&hosts, pkt.dst) {
                None => {
                    self.stats.unroutable += 1;
                    continue;
                }
                Some(dst) if !hosts[dst].alive => {
                    self.stats.dropped_dead += 1;
                    continue;
                }
                Some(_) => {}
            }
            let mut verdict = match &mut self.rule {
                Some(rule) => rule.on_packet(&pkt),
                None => Verdict::Pass,
            };
            if verdict == Verdict::Pass {
                verdict = guard.evaluate(&pkt);
            }
            match verdict {
                Verdict::Drop => self.stats.dropped_by_rule += 1,
                Verdict::Pass => self.schedule(sent, pkt),
                Verdict::Deliver(delay) => {
                    // Round to the nearest tick: unbiased, and exact for whole milliseconds.
                    let ticks = (delay.as_nanos() + 500_000) / 1_000_000;
                    let ticks = u64::try_from(ticks).unwrap_or(FAR_TICK);
                    self.schedule(sent.saturating_add(ticks), pkt);
                }
            }
        }
        drop(hosts);
        shared.rule_clock.set(None);
        self.egress = out;
    }

    /// Runs the simulation until tick `limit`, or until the `block_on` future is done, or a
    /// host task panicked.
    async fn run(&mut self, set: &LocalSet, guard: &EnterGuard, shared: &Shared, limit: u64) {
        loop {
            let now = shared.tick_now();
            if now >= limit || shared.main_done.get() || shared.panic.borrow().is_some() {
                break;
            }
            self.deliver_due(now, guard, shared);
            let next = self.next_delivery().unwrap_or(FAR_TICK).min(limit);
            let sleep = self.sleep.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until(shared.instant_at(FAR_TICK)))
            });
            set.run_until(Stop {
                shared,
                sleep: sleep.as_mut(),
                armed: &mut self.armed,
                deadline: next,
            })
            .await;
            if let Some(sent) = shared.round.take() {
                self.egress(sent, guard, shared);
            }
        }
    }
}

/// Hashes a tick for the bucket map: one multiplication instead of SipHash, which was
/// visible in the profile (one lookup per packet). Ticks are not attacker-controlled.
#[derive(Default)]
struct TickHasher(u64);

impl Hasher for TickHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, tick: u64) {
        self.0 = tick.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Resolves at the end of a round: at the `deadline` (next delivery or run limit), one tick
/// after the round opened, or as soon as the watched future finished or a host panicked.
struct Stop<'a> {
    shared: &'a Shared,
    sleep: Pin<&'a mut Sleep>,
    armed: &'a mut u64,
    deadline: u64,
}

impl Future for Stop<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let shared = this.shared;
        if shared.main_done.get() || shared.panic.borrow().is_some() {
            return Poll::Ready(());
        }
        let mut deadline = this.deadline;
        if let Some(opened) = shared.round.get() {
            deadline = deadline.min(opened + 1);
        }
        if deadline != *this.armed {
            this.sleep.as_mut().reset(shared.instant_at(deadline));
            *this.armed = deadline;
        }
        match shared.stop_waker.take() {
            Some(w) if w.will_wake(cx.waker()) => shared.stop_waker.set(Some(w)),
            _ => shared.stop_waker.set(Some(cx.waker().clone())),
        }
        this.sleep.as_mut().poll(cx)
    }
}

/// A simulated network of hosts on one thread: turmoil-net's socket stacks, a paused tokio
/// runtime, and an event-driven packet scheduler. See the [module docs](self) for the design.
///
/// Calling contract: add hosts ([`add_host`](Self::add_host)) and set the rule, then spawn
/// host tasks and workload tasks and advance time with [`run_until`](Self::run_until) or
/// [`block_on`](Self::block_on), as often as needed. Between runs the caller may spawn, kill
/// and inspect; what it does takes effect at the current simulated instant.
///
/// Only one `SimNet` may exist per thread at a time once it has run (turmoil-net keeps the
/// installed `Net` in a thread-local).
pub struct SimNet {
    /// `Option` only so that `Drop` can drop it first, while the `Net` is still installed.
    set: Option<LocalSet>,
    /// Before `rt`: its stop timer is dropped while the runtime still exists.
    sched: Scheduler,
    rt: Runtime,
    shared: Rc<Shared>,
    net: NetState,
}

impl std::fmt::Debug for SimNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNet")
            .field("hosts", &self.shared.hosts.borrow().len())
            .field("stats", &self.sched.stats)
            .finish_non_exhaustive()
    }
}

impl Default for SimNet {
    fn default() -> Self {
        Self::new()
    }
}

impl SimNet {
    /// An empty network whose hosts get turmoil-net's default stack settings, except the MTU
    /// ([`SIM_MTU`]).
    pub fn new() -> Self {
        Self::with_config(KernelConfig::default().mtu(SIM_MTU))
    }

    /// An empty network whose hosts get `cfg` (MTU, buffer sizes, TCP retransmit counts).
    ///
    /// # Panics
    ///
    /// If the paused tokio runtime cannot be built.
    pub fn with_config(cfg: KernelConfig) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("build the simulator's current-thread runtime");
        let start = {
            let _ctx = rt.enter();
            Instant::now()
        };
        let shared = Rc::new(Shared {
            start,
            round: Cell::new(None),
            stop_waker: Cell::new(None),
            main_done: Cell::new(false),
            entered: Cell::new(false),
            rule_clock: Cell::new(None),
            panic: RefCell::new(None),
            hosts: RefCell::new(Vec::new()),
            touched: RefCell::new(Touched::default()),
            by_ip: RefCell::new(HashMap::new()),
        });
        Self {
            set: Some(LocalSet::new()),
            sched: Scheduler::new(),
            rt,
            shared,
            net: NetState::Building(Box::new(Net::with_config(cfg))),
        }
    }

    /// Adds a host with address `ip` (use [`host_ip`]; avoid `.0` and `.255` endings).
    ///
    /// # Panics
    ///
    /// If the network has already run (turmoil-net cannot add hosts then; see the module
    /// docs for churn), or if `ip` is taken or a loopback address.
    pub fn add_host(&mut self, ip: impl Into<IpAddr>) -> HostId {
        let ip = ip.into();
        let NetState::Building(net) = &mut self.net else {
            panic!(
                "SimNet::add_host after the first run: add every host up front, and replace \
                 churned peers by spawning on a killed host"
            );
        };
        let id = net.add_host(ip);
        let mut hosts = self.shared.hosts.borrow_mut();
        let index = u32::try_from(hosts.len()).expect("fewer than 2^32 hosts");
        hosts.push(HostEntry {
            id,
            ip,
            alive: true,
            tasks: Vec::new(),
        });
        if host_index(ip) != Some(index as usize) {
            self.shared.by_ip.borrow_mut().insert(ip, index);
        }
        HostId(index)
    }

    /// How many hosts have been added.
    pub fn host_count(&self) -> usize {
        self.shared.hosts.borrow().len()
    }

    /// The address `host` was added with.
    pub fn ip(&self, host: HostId) -> IpAddr {
        self.shared.hosts.borrow()[host.index()].ip
    }

    /// Installs the rule that decides every packet's fate: usually a closure
    /// `move |p: &Packet| -> Verdict` computing the latency from `p.src` and `p.dst` (see
    /// [`host_index`]), or dropping. [`Verdict::Pass`] means "no opinion": rules installed
    /// with [`turmoil_net::rule`] are asked next, and if all pass the packet arrives one
    /// tick later. Replaces any rule set before; takes effect for packets sent from now on.
    pub fn set_rule(&mut self, rule: impl Rule) {
        self.sched.rule = Some(Box::new(rule));
    }

    /// A handle for code running inside the simulation.
    pub fn handle(&self) -> SimHandle {
        SimHandle {
            shared: Rc::clone(&self.shared),
        }
    }

    fn set(&self) -> &LocalSet {
        self.set.as_ref().expect("LocalSet lives until drop")
    }

    /// Spawns `fut` as a task of `host`: its socket calls act on that host. Reviving a killed
    /// host this way gives it its old address back. The task first runs at the next
    /// [`run_until`](Self::run_until) or [`block_on`](Self::block_on).
    pub fn spawn<F>(&self, host: HostId, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let handle = self.set().spawn_local(self.handle().scoped(host, fut));
        self.shared.register_task(host, handle.abort_handle());
        handle
    }

    /// Spawns `fut` as a task of no host, e.g. a workload that sends commands to the hosts'
    /// drivers at simulated times. It must not use sockets.
    pub fn spawn_local<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.set().spawn_local(fut)
    }

    /// Kills `host`: aborts its tasks (dropping them closes their sockets) and drops every
    /// packet sent to it from now on, including those already in flight.
    pub fn kill(&self, host: HostId) {
        self.shared.kill(host);
    }

    /// Whether `host` is alive.
    pub fn is_alive(&self, host: HostId) -> bool {
        self.shared.hosts.borrow()[host.index()].alive
    }

    /// Simulated time since [`SimNet::new`].
    pub fn now(&self) -> Duration {
        let _ctx = self.rt.enter();
        self.shared.now()
    }

    /// The scheduler's counters so far.
    pub fn stats(&self) -> NetStats {
        self.sched.stats
    }

    /// Runs the simulation until simulated time `t` (since [`SimNet::new`], rounded up to a
    /// whole tick). On return [`now`](Self::now) is `t`: everything due before `t` has
    /// happened and nothing due at `t` has (packets due at `t` are still in flight, tasks
    /// woken at `t` have not run): the next run starts there, so what the caller does
    /// between runs happens at `t`, before the network's own events at `t`. Returns at once
    /// if `t` is not in the future.
    ///
    /// # Panics
    ///
    /// Re-raises the first panic of a host task.
    pub fn run_until(&mut self, t: Duration) {
        let limit = u64::try_from(t.as_nanos().div_ceil(1_000_000)).unwrap_or(FAR_TICK);
        self.drive(limit);
    }

    /// Runs the simulation for `d` more simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let t = self.now() + d;
        self.run_until(t);
    }

    /// Runs the simulation until `fut` (a task of no host) completes, and returns its output.
    /// Time stops at the instant it completed.
    ///
    /// # Panics
    ///
    /// Re-raises a panic of `fut` or of a host task; panics if the simulation goes idle (no
    /// timer, no packet in flight) before `fut` completes.
    pub fn block_on<F>(&mut self, fut: F) -> F::Output
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        self.shared.main_done.set(false);
        let done = MainDone(Rc::clone(&self.shared));
        let handle = self.set().spawn_local(async move {
            let _done = done;
            fut.await
        });
        self.drive(FAR_TICK);
        let finished = self.shared.main_done.replace(false);
        assert!(
            finished,
            "SimNet::block_on: the simulation went idle before the future completed"
        );
        match self.rt.block_on(handle) {
            Ok(out) => out,
            Err(e) if e.is_panic() => resume_unwind(e.into_panic()),
            Err(e) => panic!("SimNet::block_on: the future was cancelled: {e}"),
        }
    }

    fn drive(&mut self, limit: u64) {
        if let NetState::Building(_) = self.net {
            let NetState::Building(net) = std::mem::replace(&mut self.net, NetState::Switching)
            else {
                unreachable!("checked above")
            };
            self.net = NetState::Entered((*net).enter());
            self.shared.entered.set(true);
        }
        let NetState::Entered(guard) = &self.net else {
            unreachable!("entered above")
        };
        let set = self.set.as_ref().expect("LocalSet lives until drop");
        self.rt
            .block_on(self.sched.run(set, guard, &self.shared, limit));
        let panicked = self.shared.panic.borrow_mut().take();
        if let Some((host, msg)) = panicked {
            panic!("task of host {} panicked: {msg}", host.index());
        }
    }
}

impl Drop for SimNet {
    fn drop(&mut self) {
        // Tasks own sockets, which close themselves through the installed `Net`: drop them
        // while it is still installed (the guard is dropped with `net`, after this).
        let _ctx = self.rt.enter();
        drop(self.set.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ip_round_trips_and_avoids_broadcast() {
        for i in (0..=60_000).chain([HOST_IP_CAPACITY - 1]) {
            let ip = host_ip(i);
            let last = ip.octets()[3];
            assert!(last != 0 && last != 255, "{ip}");
            assert_eq!(host_index(ip.into()), Some(i));
        }
        assert_eq!(host_index("10.0.0.255".parse().expect("ip")), None);
        assert_eq!(host_index("192.168.0.1".parse().expect("ip")), None);
    }
}
