//! The measuring loop: one thread, one mio (epoll) poll over every publisher and subscriber
//! socket, so the load generator costs one core at most and stays cheap per message. Publishers
//! copy a PUBLISH encoded once, patch packet id and send timestamp, and write in large batches;
//! a per-subscriber window (and rate, and QoS 1/2 in-flight limit) keeps them from outrunning the
//! broker. Subscribers count deliveries against what their topics were sent and record latency.

use crate::client::{self, Session};
use crate::hist::Histogram;
use crate::mqtt::{self, PublishTemplate, Version};
use crate::procstat::{self, ProcSample};
use crate::syscount::SyscallCounter;
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Publisher i -> topic i -> subscriber i (pairs); normally one pair.
    OneToOne,
    /// N publishers -> one topic -> every subscriber (normally one).
    FanIn,
    /// Publishers -> one topic -> M subscribers, each receiving every message.
    FanOut,
    /// N publishers on N distinct topics, one subscriber each.
    Distinct,
    /// Publishers -> one topic -> M members of one `$share/bench/...` group.
    Shared,
}

impl Pattern {
    pub fn parse(s: &str) -> Option<Pattern> {
        Some(match s {
            "1to1" => Pattern::OneToOne,
            "fanin" => Pattern::FanIn,
            "fanout" => Pattern::FanOut,
            "distinct" => Pattern::Distinct,
            "shared" => Pattern::Shared,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Pattern::OneToOne => "1to1",
            Pattern::FanIn => "fanin",
            Pattern::FanOut => "fanout",
            Pattern::Distinct => "distinct",
            Pattern::Shared => "shared",
        }
    }

    /// Default (publishers, subscribers).
    pub fn default_counts(self) -> (usize, usize) {
        match self {
            Pattern::OneToOne => (1, 1),
            Pattern::FanIn => (100, 1),
            Pattern::FanOut => (1, 100),
            Pattern::Distinct => (10, 10),
            Pattern::Shared => (1, 4),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunSpec {
    pub addr: SocketAddr,
    pub version: Version,
    pub qos: u8,
    pub payload: usize,
    pub pattern: Pattern,
    pub pubs: usize,
    pub subs: usize,
    /// Extra subscribers on publisher 0's topic that never read (stalled-sub scenario).
    pub stalled: usize,
    pub duration: Option<Duration>,
    /// Total messages to publish, split over the publishers.
    pub count: Option<u64>,
    /// Total publish rate, msgs/s.
    pub rate: Option<f64>,
    /// Most messages a subscriber (or shared group) may be behind its publishers.
    pub window: u64,
    /// Most unacknowledged QoS 1/2 PUBLISHes per publisher (also capped by Receive Maximum).
    pub inflight: u32,
    pub keepalive: u16,
    /// A window blocked this long with no delivery writes the missing messages off as lost.
    pub window_timeout: Duration,
    /// Draining ends after this long without progress...
    pub drain_idle: Duration,
    /// ...or after this long in all.
    pub drain_max: Duration,
    /// Hard bound on the measured phase (count mode with a stuck broker).
    pub max_time: Duration,
    pub broker_pid: Option<u32>,
    pub connect_timeout: Duration,
    /// While publishers wait on a full window (saturation), sleep before polling again so each
    /// wake-up handles a batch: 1/16 of the recent latency, clamped to [coalesce, coalesce_max].
    /// Keeps the load generator's cost per message low while adding ~6% to a latency that the
    /// window already dominates. Not applied with `rate`, where latency is the point.
    pub coalesce: Duration,
    pub coalesce_max: Duration,
    /// Count all syscalls of the broker and of the load generator with `perf stat`.
    pub perf_syscalls: bool,
}

/// One stretch of a run, read at both ends.
#[derive(Clone, Copy, Debug)]
pub struct Stretch {
    /// From the first read to the last delivery in the stretch.
    pub secs: f64,
    pub sent: u64,
    pub received: u64,
    pub broker: Option<(ProcSample, ProcSample)>,
    pub own: (ProcSample, ProcSample),
    pub own_cpu_us: u64,
    /// Every syscall counted by perf, when it ran over this stretch.
    pub broker_syscalls: Option<u64>,
    pub own_syscalls: Option<u64>,
}

/// What a run measured.
pub struct Outcome {
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub per_sub_received: Vec<u64>,
    pub latency: Histogram,
    pub publish_s: f64,
    /// First send to last delivery (or to end of publishing when nothing arrived).
    pub measured_s: f64,
    pub write_offs: u64,
    pub written_off_msgs: u64,
    pub disconnects: u64,
    pub pub_errors: u64,
    pub unacked: u64,
    pub timed_out: bool,
    /// Broker samples at the start and end of the whole measured run (memory figures).
    pub broker: Option<(ProcSample, ProcSample)>,
    pub broker_rss_max_kib: u64,
    /// The stretch measured without perf attached: CPU, rate (and latency, recorded only here).
    pub cost: Stretch,
    /// The stretch with perf attached, counting all syscalls (None without perf).
    pub counted: Option<Stretch>,
    pub perf_error: Option<String>,
    pub wall_s: f64,
    /// Stalled subscribers, returned untouched (still blocking-mode std sockets) with leftovers.
    pub stalled: Vec<Session>,
}

const SUB_RBUF: usize = 256 * 1024;
const PUB_RBUF: usize = 16 * 1024;
const BATCH_BYTES: usize = 32 * 1024;
const MAX_BATCH_MSGS: u64 = 1024;
const MAX_POLL_WAIT: Duration = Duration::from_millis(50);
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(250);

#[derive(Clone, Copy)]
enum Role {
    Pub(usize),
    Sub(usize),
}

struct Conn {
    stream: MioStream,
    role: Role,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    write_blocked: bool,
    closed: bool,
    last_tx: Instant,
}

impl Conn {
    fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }
}

struct Publisher {
    conn: usize,
    tpl: PublishTemplate,
    sinks: Vec<usize>,
    sent: u64,
    quota: u64,
    batch_cap: u64,
    inflight: u32,
    inflight_limit: u32,
    next_id: u16,
    in_use: Vec<bool>,
    window_blocked_since: Option<Instant>,
}

struct Subscriber {
    sink: usize,
    received: u64,
}

#[derive(Default, Clone, Copy)]
struct Sink {
    expected: u64,
    received: u64,
    written_off: u64,
}

impl Sink {
    fn lag(&self) -> u64 {
        self.expected
            .saturating_sub(self.received + self.written_off)
    }
}

struct Engine {
    poll: Poll,
    version: Version,
    payload: usize,
    window: u64,
    window_timeout: Duration,
    keepalive: u16,
    t0: Instant,
    conns: Vec<Conn>,
    pubs: Vec<Publisher>,
    subs: Vec<Subscriber>,
    sinks: Vec<Sink>,
    latency: Histogram,
    sent_total: u64,
    received_total: u64,
    first_send: Option<Instant>,
    last_recv: Option<Instant>,
    last_progress: Instant,
    write_offs: u64,
    written_off_msgs: u64,
    disconnects: u64,
    pub_errors: u64,
    rr: usize,
    stalled_pinged: Instant,
    record_latency: bool,
    /// Exponentially weighted recent latency (1/64 per message), for coalescing.
    latency_ewma_ns: u64,
}

fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("fluxmq-bench/{}-{nanos:x}", std::process::id())
}

pub fn client_id(role: &str, i: usize) -> String {
    format!("fmqb-{}-{role}{i}", std::process::id())
}

/// Topology: per publisher its topic and sinks; per subscriber its filter and sink.
struct Topology {
    pub_topics: Vec<String>,
    pub_sinks: Vec<Vec<usize>>,
    sub_filters: Vec<String>,
    sub_sink: Vec<usize>,
    sinks: usize,
}

fn topology(spec: &RunSpec, prefix: &str) -> io::Result<Topology> {
    let (n, m) = (spec.pubs, spec.subs);
    let all = format!("{prefix}/all");
    Ok(match spec.pattern {
        Pattern::OneToOne | Pattern::Distinct => {
            if n != m {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "pattern {} pairs publishers with subscribers: --pubs ({n}) must equal --subs ({m})",
                        spec.pattern.name()
                    ),
                ));
            }
            Topology {
                pub_topics: (0..n).map(|i| format!("{prefix}/t{i}")).collect(),
                pub_sinks: (0..n).map(|i| vec![i]).collect(),
                sub_filters: (0..m).map(|i| format!("{prefix}/t{i}")).collect(),
                sub_sink: (0..m).collect(),
                sinks: m,
            }
        }
        Pattern::FanIn | Pattern::FanOut => Topology {
            pub_topics: vec![all.clone(); n],
            pub_sinks: vec![(0..m).collect(); n],
            sub_filters: vec![all.clone(); m],
            sub_sink: (0..m).collect(),
            sinks: m,
        },
        Pattern::Shared => Topology {
            pub_topics: vec![all.clone(); n],
            pub_sinks: vec![if m > 0 { vec![0] } else { vec![] }; n],
            sub_filters: vec![format!("$share/bench/{all}"); m],
            sub_sink: vec![0; m],
            sinks: usize::from(m > 0),
        },
    })
}

fn to_mio(stream: TcpStream) -> io::Result<MioStream> {
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(None)?;
    stream.set_nonblocking(true)?;
    Ok(MioStream::from_std(stream))
}

pub fn run(spec: &RunSpec) -> io::Result<Outcome> {
    if spec.pubs == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "need at least one publisher",
        ));
    }
    let prefix = unique_prefix();
    let topo = topology(spec, &prefix)?;
    let v = spec.version;
    let ct = spec.connect_timeout;

    // Subscribers (and stalled ones) first, so every message published has its audience.
    let mut sub_sessions = Vec::with_capacity(spec.subs);
    for (i, filter) in topo.sub_filters.iter().enumerate() {
        let mut s = client::connect(spec.addr, v, &client_id("s", i), spec.keepalive, ct)?;
        client::subscribe(&mut s, v, filter, spec.qos)?;
        sub_sessions.push(s);
    }
    let mut stalled = Vec::with_capacity(spec.stalled);
    for i in 0..spec.stalled {
        let mut s = client::connect(spec.addr, v, &client_id("x", i), spec.keepalive, ct)?;
        client::subscribe(&mut s, v, &topo.pub_topics[0], spec.qos)?;
        stalled.push(s);
    }
    let mut pub_sessions = Vec::with_capacity(spec.pubs);
    for i in 0..spec.pubs {
        pub_sessions.push(client::connect(
            spec.addr,
            v,
            &client_id("p", i),
            spec.keepalive,
            ct,
        )?);
    }

    let poll = Poll::new()?;
    let now = Instant::now();
    let mut conns = Vec::new();
    let mut subs = Vec::new();
    for (i, s) in sub_sessions.into_iter().enumerate() {
        let mut rbuf = vec![0u8; SUB_RBUF.max(s.leftover.len())];
        rbuf[..s.leftover.len()].copy_from_slice(&s.leftover);
        conns.push(Conn {
            stream: to_mio(s.stream)?,
            role: Role::Sub(i),
            rbuf,
            rstart: 0,
            rend: s.leftover.len(),
            wbuf: Vec::with_capacity(4096),
            wpos: 0,
            write_blocked: false,
            closed: false,
            last_tx: now,
        });
        subs.push(Subscriber {
            sink: topo.sub_sink[i],
            received: 0,
        });
    }
    // Publishers sharing a sink share its window: give each a fair slice per batch.
    let mut feeders = vec![0u64; topo.sinks];
    for sinks in &topo.pub_sinks {
        for &s in sinks {
            feeders[s] += 1;
        }
    }
    let quota_each = |i: usize| match spec.count {
        Some(c) => c / spec.pubs as u64 + u64::from((i as u64) < c % spec.pubs as u64),
        None => u64::MAX,
    };
    let mut pubs = Vec::new();
    for (i, s) in pub_sessions.into_iter().enumerate() {
        let tpl = mqtt::publish_template(v, &topo.pub_topics[i], spec.qos, spec.payload);
        let mut batch_cap =
            (BATCH_BYTES / tpl.bytes.len()).clamp(1, MAX_BATCH_MSGS as usize) as u64;
        let sharers = topo.pub_sinks[i]
            .iter()
            .map(|&s| feeders[s])
            .max()
            .unwrap_or(1);
        if !topo.pub_sinks[i].is_empty() {
            batch_cap = batch_cap.min((spec.window / sharers.max(1)).max(1));
        }
        let receive_max = u32::from(s.connack.receive_maximum.unwrap_or(u16::MAX));
        let conn = conns.len();
        conns.push(Conn {
            stream: to_mio(s.stream)?,
            role: Role::Pub(i),
            rbuf: vec![0u8; PUB_RBUF.max(s.leftover.len())],
            rstart: 0,
            rend: 0,
            wbuf: Vec::with_capacity(BATCH_BYTES + tpl.bytes.len()),
            wpos: 0,
            write_blocked: false,
            closed: false,
            last_tx: now,
        });
        pubs.push(Publisher {
            conn,
            sinks: topo.pub_sinks[i].clone(),
            sent: 0,
            quota: quota_each(i),
            batch_cap,
            inflight: 0,
            inflight_limit: spec.inflight.clamp(1, 65_000).min(receive_max.max(1)),
            next_id: 1,
            in_use: if spec.qos > 0 {
                vec![false; 65_536]
            } else {
                Vec::new()
            },
            window_blocked_since: None,
            tpl,
        });
    }
    for (i, c) in conns.iter_mut().enumerate() {
        poll.registry().register(
            &mut c.stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
    }
    for s in &mut stalled {
        s.stream.set_nonblocking(true)?;
    }

    let mut e = Engine {
        poll,
        version: v,
        payload: spec.payload,
        window: spec.window.max(1),
        window_timeout: spec.window_timeout,
        keepalive: spec.keepalive,
        t0: Instant::now(),
        conns,
        pubs,
        subs,
        sinks: vec![Sink::default(); topo.sinks],
        latency: Histogram::new(),
        sent_total: 0,
        received_total: 0,
        first_send: None,
        last_recv: None,
        last_progress: Instant::now(),
        write_offs: 0,
        written_off_msgs: 0,
        disconnects: 0,
        pub_errors: 0,
        rr: 0,
        stalled_pinged: Instant::now(),
        record_latency: true,
        latency_ewma_ns: 0,
    };
    for ci in 0..e.conns.len() {
        if e.conns[ci].rend > 0 {
            e.process(ci, Instant::now());
        }
    }

    // Measurement starts here: everything is connected and subscribed.
    let pid = spec.broker_pid;
    let t0 = Instant::now();
    e.t0 = t0;
    e.last_progress = t0;
    let first = Mark::take(&e, pid, t0)?;
    let mut broker_rss_max = first.broker.map(|s| s.rss_kib).unwrap_or(0);
    // With perf, the first half measures cost and the second half counts syscalls, since the
    // syscall tracepoint itself slows every syscall (by about a quarter of Mosquitto's CPU).
    let mut split_pending = spec.perf_syscalls;
    let mut mid: Option<Mark> = None;
    let mut counted_from: Option<Mark> = None;
    let mut counters: (Option<SyscallCounter>, Option<SyscallCounter>) = (None, None);
    let mut perf_error = None;

    let deadline = spec.duration.map(|d| t0 + d);
    let mut publishing = true;
    let mut publish_end = t0;
    let mut drain_start = t0;
    let mut timed_out = false;
    let mut next_rss = t0 + RSS_SAMPLE_EVERY;
    let mut next_keepalive = t0 + Duration::from_secs(1);
    let mut events = Events::with_capacity(1024);

    loop {
        let now = Instant::now();
        if publishing {
            let done = deadline.is_some_and(|d| now >= d)
                || e.pubs
                    .iter()
                    .all(|p| p.sent >= p.quota || e.conns[p.conn].closed);
            if done {
                publishing = false;
                publish_end = now;
                drain_start = now;
                e.last_progress = e.last_progress.max(now);
            }
        }
        if publishing && split_pending {
            let half = match (spec.duration, spec.count) {
                (Some(d), _) => now.duration_since(t0) >= d / 2,
                (None, Some(c)) => e.sent_total >= c / 2,
                (None, None) => false,
            };
            if half {
                split_pending = false;
                let m = Mark::take(&e, pid, now)?;
                let mut start = |p| {
                    SyscallCounter::start(p)
                        .map_err(|err| perf_error.get_or_insert(err).clone())
                        .ok()
                };
                counters.0 = pid.and_then(&mut start);
                counters.1 = start(std::process::id());
                if counters.1.is_some() && (pid.is_none() || counters.0.is_some()) {
                    mid = Some(m);
                    e.record_latency = false;
                    counted_from = Some(Mark::take(&e, pid, Instant::now())?);
                } else {
                    // No perf: keep measuring cost to the end; syscalls fall back to /proc io.
                    counters = (None, None);
                }
            }
        }
        if !publishing {
            let complete = e.sinks.iter().all(|s| s.received >= s.expected)
                && e.pubs
                    .iter()
                    .all(|p| p.inflight == 0 || e.conns[p.conn].closed)
                && e.conns.iter().all(|c| c.pending() == 0 || c.closed);
            if complete
                || now.duration_since(e.last_progress) >= spec.drain_idle
                || now.duration_since(drain_start) >= spec.drain_max
            {
                break;
            }
        }
        if now.duration_since(t0) >= spec.max_time {
            timed_out = true;
            if publishing {
                publish_end = now;
            }
            break;
        }
        if now >= next_rss {
            next_rss = now + RSS_SAMPLE_EVERY;
            if let Some(pid) = pid
                && let Ok(s) = procstat::sample(Some(pid))
            {
                broker_rss_max = broker_rss_max.max(s.rss_kib);
            }
        }
        if now >= next_keepalive {
            next_keepalive = now + Duration::from_secs(1);
            e.keepalive_tick(now, &mut stalled);
        }

        let mut wait = MAX_POLL_WAIT;
        if publishing {
            let (more, window_full) = e.pump(now, spec.rate);
            if more {
                wait = Duration::ZERO;
            } else if window_full && spec.rate.is_none() && !spec.coalesce.is_zero() {
                let nap = Duration::from_nanos(e.latency_ewma_ns / 16);
                thread::sleep(nap.clamp(spec.coalesce, spec.coalesce_max.max(spec.coalesce)));
            } else if let Some(rate) = spec.rate {
                let next = Duration::from_secs_f64((e.sent_total + 1) as f64 / rate);
                wait = wait.min(next.saturating_sub(now.duration_since(t0)));
            }
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(now));
            }
        }
        match e.poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
        for ev in events.iter() {
            let ci = ev.token().0;
            if ev.is_writable() {
                e.conns[ci].write_blocked = false;
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                e.on_readable(ci);
            }
            e.flush(ci);
        }
    }

    let last = Mark::take(&e, pid, e.last_recv.unwrap_or(publish_end).max(t0))?;
    if let Some(b) = last.broker {
        broker_rss_max = broker_rss_max.max(b.rss_kib);
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let mut stop = |c: Option<SyscallCounter>| {
        c.and_then(|c| {
            c.stop()
                .map_err(|err| perf_error.get_or_insert(err).clone())
                .ok()
        })
    };
    let broker_syscalls = stop(counters.0);
    let own_syscalls = stop(counters.1);

    // Closing politely keeps "client disconnected abnormally" noise out of broker logs.
    for c in &mut e.conns {
        if !c.closed {
            let _ = c.stream.write(&mqtt::DISCONNECT);
        }
    }

    let (cost, counted) = match (&mid, &counted_from) {
        (Some(m), Some(c)) => {
            let mut counted = c.stretch(&last);
            counted.broker_syscalls = broker_syscalls;
            counted.own_syscalls = own_syscalls;
            (first.stretch(m), Some(counted))
        }
        _ => (first.stretch(&last), None),
    };
    let send0 = e.first_send.unwrap_or(t0);
    let end = e.last_recv.unwrap_or(publish_end).max(send0);
    let expected: u64 = e.sinks.iter().map(|s| s.expected).sum();
    let lost = e
        .sinks
        .iter()
        .map(|s| s.expected.saturating_sub(s.received))
        .sum();
    let duplicates = e
        .sinks
        .iter()
        .map(|s| s.received.saturating_sub(s.expected))
        .sum();
    Ok(Outcome {
        sent: e.sent_total,
        expected,
        received: e.received_total,
        lost,
        duplicates,
        per_sub_received: e.subs.iter().map(|s| s.received).collect(),
        publish_s: publish_end.duration_since(send0).as_secs_f64(),
        measured_s: end.duration_since(send0).as_secs_f64(),
        write_offs: e.write_offs,
        written_off_msgs: e.written_off_msgs,
        disconnects: e.disconnects,
        pub_errors: e.pub_errors,
        unacked: e.pubs.iter().map(|p| u64::from(p.inflight)).sum(),
        timed_out,
        broker: first.broker.zip(last.broker),
        broker_rss_max_kib: broker_rss_max,
        cost,
        counted,
        perf_error,
        wall_s,
        latency: std::mem::take(&mut e.latency),
        stalled,
    })
}

/// Counters read at one instant of the run.
struct Mark {
    at: Instant,
    sent: u64,
    received: u64,
    broker: Option<ProcSample>,
    own: ProcSample,
    own_cpu_us: u64,
}

impl Mark {
    fn take(e: &Engine, pid: Option<u32>, at: Instant) -> io::Result<Mark> {
        Ok(Mark {
            at,
            sent: e.sent_total,
            received: e.received_total,
            broker: pid.map(procstat::sample_broker).transpose()?,
            own: procstat::sample(None)?,
            own_cpu_us: procstat::self_cpu_us(),
        })
    }

    fn stretch(&self, to: &Mark) -> Stretch {
        Stretch {
            secs: to.at.saturating_duration_since(self.at).as_secs_f64(),
            sent: to.sent - self.sent,
            received: to.received - self.received,
            broker: self.broker.zip(to.broker),
            own: (self.own, to.own),
            own_cpu_us: to.own_cpu_us.saturating_sub(self.own_cpu_us),
            broker_syscalls: None,
            own_syscalls: None,
        }
    }
}

impl Engine {
    fn now_ns(&self, now: Instant) -> u64 {
        now.duration_since(self.t0).as_nanos() as u64
    }

    /// Lets publishers write what window, in-flight limit, quota and rate allow. Returns
    /// (some publisher filled a whole batch and can probably send more right away,
    ///  some publisher is held back by a full window).
    fn pump(&mut self, now: Instant, rate: Option<f64>) -> (bool, bool) {
        let mut tokens = match rate {
            Some(r) => {
                let allowed = (now.duration_since(self.t0).as_secs_f64() * r) as u64 + 1;
                allowed.saturating_sub(self.sent_total)
            }
            None => u64::MAX,
        };
        let n = self.pubs.len();
        let start = self.rr;
        self.rr = (self.rr + 1) % n;
        let mut more = false;
        let mut window_full = false;
        for k in 0..n {
            if tokens == 0 {
                break;
            }
            let p = (start + k) % n;
            let (credit, held) = self.credit(p, now);
            let take = credit.min(tokens);
            window_full |= held && take == credit;
            if take == 0 {
                continue;
            }
            self.append(p, take, now);
            tokens -= take;
            let ci = self.pubs[p].conn;
            self.flush(ci);
            if take == self.pubs[p].batch_cap && !self.conns[ci].write_blocked {
                more = true;
            }
        }
        (more, window_full)
    }

    /// How many messages publisher `p` may append now, and whether flow control (window or
    /// in-flight limit), rather than batch size, quota or socket, is what limits it.
    fn credit(&mut self, p: usize, now: Instant) -> (u64, bool) {
        let window = self.window;
        let publisher = &self.pubs[p];
        let conn = &self.conns[publisher.conn];
        if conn.closed
            || publisher.sent >= publisher.quota
            || conn.write_blocked
            || conn.pending() > 0
        {
            return (0, false);
        }
        let cap = publisher.batch_cap.min(publisher.quota - publisher.sent);
        let mut flow = u64::MAX;
        if publisher.in_use.len() > 1 {
            flow = u64::from(publisher.inflight_limit.saturating_sub(publisher.inflight));
        }
        let max_lag = self.pubs[p]
            .sinks
            .iter()
            .map(|&s| self.sinks[s].lag())
            .max()
            .unwrap_or(0);
        if max_lag >= window {
            let since = *self.pubs[p].window_blocked_since.get_or_insert(now);
            if now.duration_since(since) >= self.window_timeout
                && now.duration_since(self.last_progress) >= self.window_timeout
            {
                // Nothing arrived for a while: those messages are gone. Count and move on.
                for i in 0..self.pubs[p].sinks.len() {
                    let s = self.pubs[p].sinks[i];
                    let lag = self.sinks[s].lag();
                    self.sinks[s].written_off += lag;
                    self.written_off_msgs += lag;
                }
                self.write_offs += 1;
                self.pubs[p].window_blocked_since = None;
                return (cap.min(flow), false);
            }
            return (0, true);
        }
        self.pubs[p].window_blocked_since = None;
        flow = flow.min(window - max_lag);
        (cap.min(flow), flow <= cap)
    }

    fn append(&mut self, p: usize, count: u64, now: Instant) {
        let ts = self.now_ns(now).to_le_bytes();
        let stamp = self.payload >= 8;
        let publisher = &mut self.pubs[p];
        let conn = &mut self.conns[publisher.conn];
        let tpl = &publisher.tpl;
        for _ in 0..count {
            let start = conn.wbuf.len();
            conn.wbuf.extend_from_slice(&tpl.bytes);
            if let Some(at) = tpl.packet_id_at {
                let id = loop {
                    let id = publisher.next_id;
                    publisher.next_id = if id == u16::MAX { 1 } else { id + 1 };
                    if !publisher.in_use[usize::from(id)] {
                        break id;
                    }
                };
                publisher.in_use[usize::from(id)] = true;
                publisher.inflight += 1;
                conn.wbuf[start + at..start + at + 2].copy_from_slice(&id.to_be_bytes());
            }
            if stamp {
                let at = start + tpl.payload_at;
                conn.wbuf[at..at + 8].copy_from_slice(&ts);
            }
        }
        conn.last_tx = now;
        publisher.sent += count;
        for &s in &publisher.sinks {
            self.sinks[s].expected += count;
        }
        self.sent_total += count;
        self.first_send.get_or_insert(now);
    }

    fn close(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        if !c.closed {
            c.closed = true;
            self.disconnects += 1;
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    fn flush(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        while c.wpos < c.wbuf.len() && !c.closed && !c.write_blocked {
            match c.stream.write(&c.wbuf[c.wpos..]) {
                Ok(0) => {
                    self.close(ci);
                    return;
                }
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.write_blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(ci);
                    return;
                }
            }
        }
        if c.wpos == c.wbuf.len() {
            c.wbuf.clear();
            c.wpos = 0;
        }
    }

    fn on_readable(&mut self, ci: usize) {
        loop {
            let c = &mut self.conns[ci];
            if c.closed {
                return;
            }
            if c.rstart == c.rend {
                c.rstart = 0;
                c.rend = 0;
            } else if c.rend == c.rbuf.len() {
                if c.rstart > 0 {
                    c.rbuf.copy_within(c.rstart..c.rend, 0);
                    c.rend -= c.rstart;
                    c.rstart = 0;
                } else {
                    let len = c.rbuf.len() * 2;
                    c.rbuf.resize(len, 0);
                }
            }
            let rend = c.rend;
            match c.stream.read(&mut c.rbuf[rend..]) {
                Ok(0) => {
                    self.close(ci);
                    return;
                }
                Ok(n) => {
                    let drained = c.rend + n < c.rbuf.len();
                    c.rend += n;
                    self.process(ci, Instant::now());
                    // A short read emptied the socket; epoll (edge-triggered) reports new data
                    // with a fresh event, so skip the read that would only say EWOULDBLOCK.
                    if drained {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close(ci);
                    return;
                }
            }
        }
    }

    /// Handles every complete packet in the connection's read buffer.
    fn process(&mut self, ci: usize, now: Instant) {
        let now_ns = self.now_ns(now);
        let buf = std::mem::take(&mut self.conns[ci].rbuf);
        let (mut at, end) = (self.conns[ci].rstart, self.conns[ci].rend);
        let role = self.conns[ci].role;
        let mut fatal = false;
        while at < end {
            let f = match mqtt::frame(&buf[at..end]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    fatal = true;
                    break;
                }
            };
            let body = &buf[at + f.body_start..at + f.len];
            at += f.len;
            if !self.handle(ci, role, f.header, body, now, now_ns) {
                fatal = true;
                break;
            }
        }
        let c = &mut self.conns[ci];
        c.rbuf = buf;
        c.rstart = at;
        if fatal {
            self.close(ci);
        }
    }

    /// One packet from the broker. Returns false when the connection should be dropped.
    fn handle(
        &mut self,
        ci: usize,
        role: Role,
        header: u8,
        body: &[u8],
        now: Instant,
        now_ns: u64,
    ) -> bool {
        let kind = header & 0xF0;
        match (role, kind) {
            (Role::Sub(si), mqtt::PUBLISH) => {
                let Ok(p) = mqtt::parse_publish(self.version, header, body) else {
                    return false;
                };
                if p.payload.len() >= 8 {
                    let mut ts = [0u8; 8];
                    ts.copy_from_slice(&p.payload[..8]);
                    let lat = now_ns.saturating_sub(u64::from_le_bytes(ts));
                    if self.record_latency {
                        self.latency.record(lat);
                    }
                    self.latency_ewma_ns =
                        self.latency_ewma_ns - self.latency_ewma_ns / 64 + lat / 64;
                }
                let sub = &mut self.subs[si];
                sub.received += 1;
                self.sinks[sub.sink].received += 1;
                self.received_total += 1;
                self.last_recv = Some(now);
                self.last_progress = now;
                match p.qos {
                    1 => self.conns[ci]
                        .wbuf
                        .extend_from_slice(&mqtt::ack(mqtt::PUBACK, p.packet_id)),
                    2 => self.conns[ci]
                        .wbuf
                        .extend_from_slice(&mqtt::ack(mqtt::PUBREC, p.packet_id)),
                    _ => {}
                }
            }
            (Role::Sub(_), 0x60) => {
                let Ok((id, _)) = mqtt::parse_ack(body) else {
                    return false;
                };
                self.conns[ci]
                    .wbuf
                    .extend_from_slice(&mqtt::ack(mqtt::PUBCOMP, id));
            }
            (Role::Pub(pi), mqtt::PUBACK | mqtt::PUBCOMP) => {
                let Ok((id, reason)) = mqtt::parse_ack(body) else {
                    return false;
                };
                self.release(pi, id, reason, now);
            }
            (Role::Pub(pi), mqtt::PUBREC) => {
                let Ok((id, reason)) = mqtt::parse_ack(body) else {
                    return false;
                };
                if reason >= 0x80 {
                    self.release(pi, id, reason, now);
                } else {
                    self.conns[ci]
                        .wbuf
                        .extend_from_slice(&mqtt::ack(mqtt::PUBREL, id));
                    self.last_progress = now;
                }
            }
            (_, mqtt::DISCONNECT_TYPE) => return false,
            (_, mqtt::PINGRESP) => {}
            _ => {} // SUBACK, stray packets
        }
        true
    }

    fn release(&mut self, pi: usize, id: u16, reason: u8, now: Instant) {
        if reason >= 0x80 {
            self.pub_errors += 1;
        }
        let p = &mut self.pubs[pi];
        if let Some(slot) = p.in_use.get_mut(usize::from(id))
            && *slot
        {
            *slot = false;
            p.inflight -= 1;
            self.last_progress = now;
        }
    }

    fn keepalive_tick(&mut self, now: Instant, stalled: &mut [Session]) {
        if self.keepalive == 0 {
            return;
        }
        let every = Duration::from_secs(u64::from(self.keepalive).div_ceil(2));
        for ci in 0..self.conns.len() {
            let c = &mut self.conns[ci];
            if !c.closed && now.duration_since(c.last_tx) >= every {
                c.wbuf.extend_from_slice(&mqtt::PINGREQ);
                c.last_tx = now;
                self.flush(ci);
            }
        }
        // Stalled subscribers stop reading, not talking: they keep their session alive.
        if now.duration_since(self.stalled_pinged) >= every {
            self.stalled_pinged = now;
            for s in stalled.iter_mut() {
                let _ = s.stream.write(&mqtt::PINGREQ);
            }
        }
    }
}
