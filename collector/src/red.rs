//! RED metrics and the service graph, computed in the ingest stream from spans once they are committed.
//!
//! Conversion (on the blocking pool, in parallel) reduces each span to a [`MetricSpan`]: interned resource
//! and templated name, kind, effective status, duration and the two keys the service graph pairs on. After
//! the request's spans are durable, [`SpanMetrics::record`] folds them into the counters under one lock, so
//! the metrics count what was stored, once.
//!
//! Names and labels follow the OpenTelemetry collector's spanmetrics and servicegraph connectors (see
//! `docs/metrics.md`): `traces_span_metrics_calls_total`, `traces_span_metrics_duration_seconds_*`,
//! `traces_service_graph_request_total`, `…_failed_total`, `…_server_seconds_*`, `…_client_seconds_*`.
//!
//! Bounded everywhere: at most `max_services` service label sets (then `__overflow__`), at most
//! `max_operations_per_service` span names per service (then `__overflow__`), at most `max_virtual_nodes`
//! virtual peers, at most `graph_max_items` spans waiting for their other half, each for at most
//! `graph_wait`, and a fingerprint of each of the last `recent_requests` counted requests that keeps a
//! re-sent export from being counted twice.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::normalize::{Direction, SpanFacts};
use crate::routes::RouteRules;

/// foldhash, seeded per process: fast on short keys and minimally resistant to chosen collisions, which is
/// what maps keyed by client-supplied names (bounded per request or by the label caps) need.
type FastHash = foldhash::fast::RandomState;

/// The label value that stands for everything beyond a cap.
pub const OVERFLOW: &str = "__overflow__";

/// Histogram bounds in seconds: the spanmetrics connector's default milliseconds buckets, divided by 1000
/// (also the servicegraph connector's defaults).
pub const DURATION_BUCKETS_SECONDS: [f64; 16] = [
    0.002, 0.004, 0.006, 0.008, 0.01, 0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.4, 2.0, 5.0, 10.0, 15.0,
];

/// [`DURATION_BUCKETS_SECONDS`] in nanoseconds, which span durations are.
const DURATION_BUCKETS_NS: [u64; 16] = [
    2_000_000,
    4_000_000,
    6_000_000,
    8_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    400_000_000,
    800_000_000,
    1_000_000_000,
    1_400_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    15_000_000_000,
];

/// Limits and timings of the metrics computation.
#[derive(Clone, Debug)]
pub struct RedConfig {
    pub max_services: usize,
    pub max_operations_per_service: usize,
    pub max_virtual_nodes: usize,
    /// How long a client or server span waits for its other half.
    pub graph_wait: Duration,
    pub graph_max_items: usize,
    /// Requests remembered to recognise a re-sent export.
    pub recent_requests: usize,
    pub routes: RouteRules,
}

impl Default for RedConfig {
    fn default() -> Self {
        Self {
            max_services: 1000,
            max_operations_per_service: 200,
            max_virtual_nodes: 1000,
            graph_wait: Duration::from_secs(15),
            graph_max_items: 100_000,
            recent_requests: 65_536,
            routes: RouteRules::default(),
        }
    }
}

/// The labels of a service graph node, and of a service's metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) cluster: String,
    pub(crate) namespace: String,
}

/// What the service graph does with a span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EdgeRole {
    None,
    /// A CLIENT (or PRODUCER) span: pairs with the SERVER span whose parent it is.
    Client,
    /// A Linkerd outbound proxy's CLIENT span: pairs like [`EdgeRole::Client`], and is never absorbed (only an
    /// outbound proxy's parent is).
    ProxyClient,
    /// A SERVER (or CONSUMER) span: pairs with its parent CLIENT span.
    Server,
    /// A CLIENT span to a database: an edge at once.
    Database,
    /// A Linkerd outbound proxy's SERVER span: the app's CLIENT span that is its parent is not an edge of its
    /// own (the proxy's CLIENT span and the callee's inbound SERVER span are).
    Absorb,
}

/// One committed span, reduced to what the metrics need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MetricSpan {
    /// Fingerprint of (trace ID, span ID): a client half's pairing key.
    id: u64,
    /// Fingerprint of (trace ID, parent span ID), 0 for a root: a server half's pairing key.
    parent: u64,
    resource: u32,
    /// The peer's node name (an index into `names`), `u32::MAX` when unknown.
    peer: u32,
    duration_ns: u64,
    error: bool,
    messaging: bool,
    edge: EdgeRole,
}

/// A RED series within one request: resource, route template (an index into `names`), kind, error.
type RequestSeries = (u32, u32, u8, bool);

/// Durations counted per bucket of [`DURATION_BUCKETS_NS`] (the last bucket: +Inf), and in all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Buckets {
    per_bucket: [u64; DURATION_BUCKETS_NS.len() + 1],
    total: u64,
}

impl Buckets {
    fn observe(&mut self, duration_ns: u64) {
        self.per_bucket[bucket(duration_ns)] += 1;
        self.total += 1;
    }

    fn merge(&mut self, other: &Buckets) {
        for (count, more) in self.per_bucket.iter_mut().zip(other.per_bucket) {
            *count += more;
        }
        self.total += other.total;
    }
}

/// Durations of one series within a request, summed in integer nanoseconds (so that requests compare
/// exactly; one request's sum cannot overflow).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Durations {
    counts: Buckets,
    sum_ns: u64,
}

impl Durations {
    fn observe(&mut self, duration_ns: u64) {
        self.counts.observe(duration_ns);
        self.sum_ns = self.sum_ns.saturating_add(duration_ns);
    }
}

/// The index of the bucket of a duration: the first bound it does not exceed (the last: +Inf).
fn bucket(duration_ns: u64) -> usize {
    DURATION_BUCKETS_NS.partition_point(|bound| *bound < duration_ns)
}

/// A request's spans, reduced during conversion.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RequestMetrics {
    resources: Vec<Node>,
    /// `resources` by a hash of their labels, so a repeated resource is one node.
    resource_index: HashMap<u64, u32, FastHash>,
    /// Route templates and peer names, each once.
    names: Vec<String>,
    by_name: HashMap<String, u32, FastHash>,
    /// Reused for templating (always empty between spans).
    scratch: String,
    /// The RED series, aggregated here so that the lock is taken per series rather than per span.
    series: Vec<(RequestSeries, Durations)>,
    series_index: HashMap<RequestSeries, u32, FastHash>,
    /// The spans the service graph needs (clients, servers, absorbing proxy spans).
    spans: Vec<MetricSpan>,
    span_count: u64,
    seed: u64,
    /// Order-independent fingerprint of the request's (trace ID, span ID) pairs: a re-sent export has the same.
    fingerprint: u64,
}

/// The span's facts that conversion hands to [`RequestMetrics::push`].
pub(crate) struct SpanInput<'a, 'f> {
    pub(crate) resource: u32,
    pub(crate) linkerd: bool,
    pub(crate) trace_id: &'a [u8; 16],
    pub(crate) span_id: &'a [u8; 8],
    pub(crate) parent: Option<&'a [u8; 8]>,
    pub(crate) name: &'a str,
    pub(crate) kind: i32,
    pub(crate) error: bool,
    pub(crate) duration_ns: u64,
    pub(crate) facts: &'f SpanFacts<'a>,
}

impl RequestMetrics {
    /// A request's metrics, with room for `spans` spans.
    pub(crate) fn new(metrics: &SpanMetrics, spans: usize) -> Self {
        Self {
            seed: metrics.seed,
            spans: Vec::with_capacity(spans),
            ..Self::default()
        }
    }

    /// Registers a resource's labels; returns its index for [`SpanInput::resource`].
    pub(crate) fn resource(&mut self, service: &str, cluster: Option<&str>, namespace: Option<&str>) -> u32 {
        // Requests repeat a resource (or send many empty ones): one node each, however often it comes.
        let (cluster, namespace) = (cluster.unwrap_or_default(), namespace.unwrap_or_default());
        let key = {
            use std::hash::{BuildHasher, Hasher};
            // A fixed seed: the key is part of the request's state, which tests compare across requests.
            let mut hasher = foldhash::fast::FixedState::default().build_hasher();
            for part in [service, cluster, namespace] {
                hasher.write(part.as_bytes());
                hasher.write_u8(0xff);
            }
            hasher.finish()
        };
        if let Some(&index) = self.resource_index.get(&key) {
            let node = &self.resources[index as usize];
            if node.name == service && node.cluster == cluster && node.namespace == namespace {
                return index;
            }
        }
        self.resource_index.entry(key).or_insert(self.resources.len() as u32);
        self.resources.push(Node {
            name: service.to_owned(),
            cluster: cluster.to_owned(),
            namespace: namespace.to_owned(),
        });
        (self.resources.len() - 1) as u32
    }

    /// The index of `value` in the request's names.
    fn intern(&mut self, value: &str) -> u32 {
        if let Some(index) = self.by_name.get(value) {
            return *index;
        }
        let index = self.names.len() as u32;
        self.names.push(value.to_owned());
        self.by_name.insert(value.to_owned(), index);
        index
    }

    /// The index of the route template of the span name `raw` in the request's names.
    fn intern_route(&mut self, raw: &str, routes: &RouteRules) -> u32 {
        let mut scratch = std::mem::take(&mut self.scratch);
        let index = if routes.template_into(raw, &mut scratch) {
            self.intern(&scratch)
        } else {
            self.intern(raw)
        };
        scratch.clear();
        self.scratch = scratch;
        index
    }

    pub(crate) fn push(&mut self, span: SpanInput<'_, '_>, routes: &RouteRules) {
        let (counted, edge) = match (span.linkerd, span.facts.direction, span.kind) {
            (true, Direction::Outbound, 2) => (false, EdgeRole::Absorb),
            (true, Direction::Inbound, 3) => (false, EdgeRole::None),
            (true, Direction::Outbound, 3) => (true, EdgeRole::ProxyClient),
            (_, _, 3) if span.facts.is_database() => (true, EdgeRole::Database),
            (_, _, 3 | 4) => (true, EdgeRole::Client),
            (_, _, 2 | 5) => (true, EdgeRole::Server),
            _ => (true, EdgeRole::None),
        };
        let peer = match edge {
            EdgeRole::Database => span.facts.database(),
            EdgeRole::Client | EdgeRole::ProxyClient => span.facts.peer(),
            _ => None,
        };
        let peer = peer.map_or(u32::MAX, |peer| self.intern(peer));
        if counted {
            let key = (
                span.resource,
                self.intern_route(span.name, routes),
                span.kind.clamp(0, 5) as u8,
                span.error,
            );
            let slot = match self.series_index.entry(key) {
                Entry::Occupied(entry) => *entry.get() as usize,
                Entry::Vacant(entry) => {
                    entry.insert(self.series.len() as u32);
                    self.series.push((key, Durations::default()));
                    self.series.len() - 1
                }
            };
            self.series[slot].1.observe(span.duration_ns);
        }
        let id = fingerprint(self.seed, span.trace_id, span.span_id);
        self.fingerprint = self
            .fingerprint
            .wrapping_add(id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ id.rotate_left(29));
        self.span_count += 1;
        if edge != EdgeRole::None {
            self.spans.push(MetricSpan {
                id,
                parent: span
                    .parent
                    .map_or(0, |parent| fingerprint(self.seed, span.trace_id, parent)),
                resource: span.resource,
                peer,
                duration_ns: span.duration_ns,
                error: span.error,
                messaging: matches!(span.kind, 4 | 5),
                edge,
            });
        }
    }
}

/// A well-mixed, seeded, never-zero 64-bit fingerprint of a trace ID and a span ID.
fn fingerprint(seed: u64, trace_id: &[u8; 16], span_id: &[u8; 8]) -> u64 {
    let (high, low) = trace_id.split_at(8);
    let high = u64::from_le_bytes(high.try_into().unwrap_or_default());
    let low = u64::from_le_bytes(low.try_into().unwrap_or_default());
    let span = u64::from_le_bytes(*span_id);
    let mut x = seed ^ high ^ low.rotate_left(21) ^ span.rotate_left(43).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x | 1
}

/// A process-wide histogram with the fixed [`DURATION_BUCKETS_SECONDS`], summed in seconds.
#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: Buckets,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, duration_ns: u64) {
        self.counts.observe(duration_ns);
        self.sum += duration_ns as f64 / 1e9;
    }

    fn merge(&mut self, durations: &Durations) {
        self.counts.merge(&durations.counts);
        self.sum += durations.sum_ns as f64 / 1e9;
    }

    fn count(&self) -> u64 {
        self.counts.total
    }

    fn bounds(&self) -> Vec<(f64, u64)> {
        DURATION_BUCKETS_SECONDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts.per_bucket)
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SeriesKey {
    node: u32,
    route: u32,
    kind: u8,
    error: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Connection {
    Direct,
    Messaging,
    Database,
    Virtual,
}

impl Connection {
    fn label(self) -> &'static str {
        match self {
            Self::Direct => "",
            Self::Messaging => "messaging_system",
            Self::Database => "database",
            Self::Virtual => "virtual_node",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct EdgeKey {
    client: u32,
    server: u32,
    connection: Connection,
}

#[derive(Clone, Debug, Default)]
struct Edge {
    requests: u64,
    failed: u64,
    server: Histogram,
    client: Histogram,
}

#[derive(Clone, Copy, Debug)]
struct Half {
    node: u32,
    duration_ns: u64,
    failed: bool,
    messaging: bool,
    /// For a client half: its virtual peer node, `u32::MAX` if none is known.
    peer: u32,
}

#[derive(Clone, Copy, Debug)]
enum Pending {
    Client(Half),
    Server(Half),
}

/// The spans waiting for their other half, oldest first.
#[derive(Debug, Default)]
struct Pairing {
    waiting: HashMap<u64, (u64, Pending), PassThrough>,
    order: VecDeque<(Instant, u64, u64)>,
    sequence: u64,
}

/// Keys are already well-mixed fingerprints.
#[derive(Clone, Copy, Debug, Default)]
struct PassThrough;

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

#[derive(Debug)]
struct PassThroughHasher(u64);

impl std::hash::Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        // Fingerprints are odd (never zero): fold a high bit into the low one, which picks the bucket.
        self.0 ^ (self.0 >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// The fingerprints of the last requests counted, to recognise a re-sent export.
#[derive(Debug, Default)]
struct RecentRequests {
    set: HashSet<u64, PassThrough>,
    order: VecDeque<u64>,
}

impl RecentRequests {
    /// Whether `fingerprint` is new; remembers it (forgetting the oldest beyond `capacity`).
    fn insert(&mut self, fingerprint: u64, capacity: usize) -> bool {
        if !self.set.insert(fingerprint) {
            return false;
        }
        self.order.push_back(fingerprint);
        while self.order.len() > capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        true
    }
}

/// Parents of Linkerd outbound-proxy SERVER spans: an application CLIENT span among them called through its
/// proxy, whose own spans make the edge. A direct-mapped table (newer entries overwrite older ones), 2 MiB.
#[derive(Debug)]
struct Absorbed {
    slots: Vec<u64>,
}

impl Absorbed {
    const SLOTS: usize = 1 << 18;

    fn new() -> Self {
        Self {
            slots: vec![0; Self::SLOTS],
        }
    }

    fn insert(&mut self, key: u64) {
        self.slots[(key >> 11) as usize & (Self::SLOTS - 1)] = key;
    }

    fn contains(&self, key: u64) -> bool {
        self.slots[(key >> 11) as usize & (Self::SLOTS - 1)] == key
    }
}

#[derive(Debug)]
struct State {
    nodes: Vec<Node>,
    node_index: HashMap<Node, u32, FastHash>,
    services: usize,
    virtual_nodes: usize,
    routes: Vec<String>,
    /// Per node, its routes by name.
    node_routes: HashMap<u32, HashMap<String, u32, FastHash>, FastHash>,
    series: HashMap<SeriesKey, Histogram, FastHash>,
    edges: HashMap<EdgeKey, Edge, FastHash>,
    pairing: Pairing,
    recent: RecentRequests,
    absorbed: Absorbed,
    duplicates: u64,
    unpaired: u64,
    dropped: u64,
    expired_clients: u64,
}

/// The process's RED metrics and service graph.
#[derive(Debug)]
pub struct SpanMetrics {
    state: Mutex<State>,
    config: RedConfig,
    seed: u64,
}

const SPAN_KINDS: [&str; 6] = [
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];

impl SpanMetrics {
    pub fn new(config: RedConfig) -> Arc<Self> {
        let state = State {
            nodes: Vec::new(),
            node_index: HashMap::default(),
            services: 0,
            virtual_nodes: 0,
            routes: Vec::new(),
            node_routes: HashMap::default(),
            series: HashMap::default(),
            edges: HashMap::default(),
            pairing: Pairing::default(),
            recent: RecentRequests::default(),
            absorbed: Absorbed::new(),
            duplicates: 0,
            unpaired: 0,
            dropped: 0,
            expired_clients: 0,
        };
        Arc::new(Self {
            state: Mutex::new(state),
            seed: RandomState::new().hash_one(0x7472_6163_6570_6f73_u64),
            config,
        })
    }

    pub fn routes(&self) -> &RouteRules {
        &self.config.routes
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Folds a committed request's spans into the metrics.
    pub fn record(&self, request: RequestMetrics) {
        let now = Instant::now();
        let config = &self.config;
        let mut state = self.lock();
        let state = &mut *state;
        if !state.recent.insert(request.fingerprint, config.recent_requests) {
            state.duplicates += request.span_count;
            return;
        }
        let nodes: Vec<u32> = request
            .resources
            .iter()
            .map(|node| state.node(node, false, config))
            .collect();
        for ((resource, name, kind, error), durations) in &request.series {
            let node = nodes[*resource as usize];
            let route = state.route(node, &request.names[*name as usize], config);
            state
                .series
                .entry(SeriesKey {
                    node,
                    route,
                    kind: *kind,
                    error: *error,
                })
                .or_default()
                .merge(durations);
        }
        let mut peers = PeerNodes::default();
        for span in &request.spans {
            let node = nodes[span.resource as usize];
            let half = |peer| Half {
                node,
                duration_ns: span.duration_ns,
                failed: span.error,
                messaging: span.messaging,
                peer,
            };
            match span.edge {
                EdgeRole::None => {}
                EdgeRole::Database => {
                    let server = peers.node(state, &request, span.peer, "unknown", config);
                    let edge = state.edge(node, server, Connection::Database);
                    edge.count(span.error);
                    edge.client.observe(span.duration_ns);
                    edge.server.observe(span.duration_ns);
                }
                EdgeRole::Client | EdgeRole::ProxyClient => {
                    let peer = if span.peer == u32::MAX {
                        u32::MAX
                    } else {
                        peers.node(state, &request, span.peer, "unknown", config)
                    };
                    let absorbable = span.edge == EdgeRole::Client;
                    state.pair(span.id, Pending::Client(half(peer)), absorbable, now, config);
                }
                EdgeRole::Server if span.parent == 0 => {
                    let user = peers.node(state, &request, u32::MAX, "user", config);
                    let edge = state.edge(user, node, Connection::Virtual);
                    edge.count(span.error);
                    edge.server.observe(span.duration_ns);
                }
                EdgeRole::Server => state.pair(span.parent, Pending::Server(half(u32::MAX)), false, now, config),
                EdgeRole::Absorb => state.absorb(span.parent),
            }
        }
        state.expire(now, config);
    }

    /// Ends the wait of spans older than the configured wait (unpaired clients become edges to virtual nodes).
    pub fn expire(&self) {
        self.expire_at(Instant::now());
    }

    /// [`SpanMetrics::expire`] as if it were `now`.
    pub fn expire_at(&self, now: Instant) {
        self.lock().expire(now, &self.config);
    }

    /// Every edge of the graph between real services as (client, server), sorted (for tests and checks).
    pub fn service_edges(&self) -> Vec<(String, String)> {
        let state = self.lock();
        let mut edges: Vec<(String, String)> = state
            .edges
            .keys()
            .filter(|key| matches!(key.connection, Connection::Direct | Connection::Messaging))
            .map(|key| {
                (
                    state.nodes[key.client as usize].name.clone(),
                    state.nodes[key.server as usize].name.clone(),
                )
            })
            .collect();
        edges.sort();
        edges.dedup();
        edges
    }

    /// The number of series the RED metrics and the graph expose.
    pub fn series_count(&self) -> usize {
        let state = self.lock();
        state.series.len() * 2 + state.edges.len() * 4
    }
}

/// A request's virtual peer nodes, each looked up once per request rather than once per span.
#[derive(Default)]
struct PeerNodes {
    /// By the request's name index, `u32::MAX` until looked up.
    by_name: Vec<u32>,
    /// The node named by the fallback (`unknown` or `user`), with its name.
    fallback: Vec<(&'static str, u32)>,
}

impl PeerNodes {
    /// The virtual node of the request's name `name` (`u32::MAX`: the node called `fallback`).
    fn node(
        &mut self,
        state: &mut State,
        request: &RequestMetrics,
        name: u32,
        fallback: &'static str,
        config: &RedConfig,
    ) -> u32 {
        if name == u32::MAX {
            if let Some((_, node)) = self.fallback.iter().find(|(known, _)| *known == fallback) {
                return *node;
            }
            let node = state.virtual_node(fallback, config);
            self.fallback.push((fallback, node));
            return node;
        }
        if self.by_name.is_empty() {
            self.by_name = vec![u32::MAX; request.names.len()];
        }
        let slot = &mut self.by_name[name as usize];
        if *slot == u32::MAX {
            *slot = state.virtual_node(&request.names[name as usize], config);
        }
        *slot
    }
}

impl Edge {
    fn count(&mut self, failed: bool) {
        self.requests += 1;
        self.failed += u64::from(failed);
    }
}

impl State {
    fn node(&mut self, node: &Node, is_virtual: bool, config: &RedConfig) -> u32 {
        if let Some(index) = self.node_index.get(node) {
            return *index;
        }
        let (used, cap) = if is_virtual {
            (&mut self.virtual_nodes, config.max_virtual_nodes)
        } else {
            (&mut self.services, config.max_services)
        };
        let node = if *used >= cap {
            let overflow = Node {
                name: OVERFLOW.to_owned(),
                ..Node::default()
            };
            if let Some(index) = self.node_index.get(&overflow) {
                return *index;
            }
            overflow
        } else {
            *used += 1;
            node.clone()
        };
        let index = self.nodes.len() as u32;
        self.nodes.push(node.clone());
        self.node_index.insert(node, index);
        index
    }

    fn virtual_node(&mut self, name: &str, config: &RedConfig) -> u32 {
        self.node(
            &Node {
                name: name.to_owned(),
                ..Node::default()
            },
            true,
            config,
        )
    }

    fn route(&mut self, node: u32, name: &str, config: &RedConfig) -> u32 {
        let routes = self.node_routes.entry(node).or_default();
        if let Some(route) = routes.get(name) {
            return *route;
        }
        let name = if routes.len() >= config.max_operations_per_service {
            if let Some(route) = routes.get(OVERFLOW) {
                return *route;
            }
            OVERFLOW
        } else {
            name
        };
        let route = self.routes.len() as u32;
        self.routes.push(name.to_owned());
        routes.insert(name.to_owned(), route);
        route
    }

    fn edge(&mut self, client: u32, server: u32, connection: Connection) -> &mut Edge {
        self.edges
            .entry(EdgeKey {
                client,
                server,
                connection,
            })
            .or_default()
    }

    /// A Linkerd outbound proxy's SERVER span: its parent, an application's CLIENT span, is no edge.
    fn absorb(&mut self, parent: u64) {
        if parent == 0 {
            return;
        }
        self.absorbed.insert(parent);
        if let Some((_, Pending::Client(_))) = self.pairing.waiting.get(&parent) {
            self.pairing.waiting.remove(&parent);
        }
    }

    /// Pairs a half with its other half, or lets it wait; an `absorbable` client half whose key a Linkerd
    /// outbound proxy span absorbed is dropped.
    fn pair(&mut self, key: u64, half: Pending, absorbable: bool, now: Instant, config: &RedConfig) {
        if absorbable && self.absorbed.contains(key) {
            return;
        }
        let full = self.pairing.waiting.len() >= config.graph_max_items;
        match self.pairing.waiting.entry(key) {
            Entry::Occupied(entry) => {
                let (_, waiting) = *entry.get();
                // The same half again (a re-send the request check missed) or a server span whose parent
                // has two server children: keep the first.
                let ((Pending::Client(client), Pending::Server(server))
                | (Pending::Server(server), Pending::Client(client))) = (waiting, half)
                else {
                    return;
                };
                entry.remove();
                let connection = if client.messaging || server.messaging {
                    Connection::Messaging
                } else {
                    Connection::Direct
                };
                let edge = self.edge(client.node, server.node, connection);
                edge.count(client.failed || server.failed);
                edge.client.observe(client.duration_ns);
                edge.server.observe(server.duration_ns);
            }
            Entry::Vacant(entry) => {
                if full {
                    self.dropped += 1;
                    return;
                }
                self.pairing.sequence += 1;
                entry.insert((self.pairing.sequence, half));
                self.pairing.order.push_back((now, key, self.pairing.sequence));
                // Paired spans leave `waiting` at once but their place in `order` only when their wait would
                // have ended: drop those places when they outnumber the waiting spans, so that the queue too
                // is bounded by `graph_max_items`, not by the span rate times the wait.
                if self.pairing.order.len() > 2 * config.graph_max_items.max(1) {
                    let waiting = &self.pairing.waiting;
                    self.pairing
                        .order
                        .retain(|(_, key, sequence)| waiting.get(key).is_some_and(|(current, _)| current == sequence));
                }
            }
        }
    }

    fn expire(&mut self, now: Instant, config: &RedConfig) {
        while let Some(&(at, key, sequence)) = self.pairing.order.front() {
            if now.duration_since(at) < config.graph_wait {
                break;
            }
            self.pairing.order.pop_front();
            let Some(&(current, waiting)) = self.pairing.waiting.get(&key) else {
                continue;
            };
            if current != sequence {
                continue;
            }
            self.pairing.waiting.remove(&key);
            match waiting {
                Pending::Client(_) if self.absorbed.contains(key) => {}
                Pending::Client(client) => {
                    self.expired_clients += 1;
                    let server = if client.peer == u32::MAX {
                        self.virtual_node("unknown", config)
                    } else {
                        client.peer
                    };
                    let edge = self.edge(client.node, server, Connection::Virtual);
                    edge.count(client.failed);
                    edge.client.observe(client.duration_ns);
                }
                Pending::Server(_) => self.unpaired += 1,
            }
        }
    }
}

fn labels<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    pairs.iter().copied().filter(|(_, value)| !value.is_empty()).collect()
}

fn encode_histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    histograms: &[(Vec<(&str, &str)>, &Histogram)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, histogram) in histograms {
        let buckets = histogram.bounds();
        family.encode_family(labels)?.encode_histogram::<NoLabelSet>(
            histogram.sum,
            histogram.count(),
            &buckets,
            None,
        )?;
    }
    Ok(())
}

fn encode_counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    counters: &[(Vec<(&str, &str)>, u64)],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in counters {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for SpanMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let state = self.lock();
        let mut series: Vec<(&SeriesKey, &Histogram)> = state.series.iter().collect();
        series.sort_by_key(|(key, _)| **key);
        let span_labels: Vec<(Vec<(&str, &str)>, &Histogram)> = series
            .iter()
            .map(|(key, histogram)| {
                let node = &state.nodes[key.node as usize];
                let status = if key.error {
                    "STATUS_CODE_ERROR"
                } else {
                    "STATUS_CODE_UNSET"
                };
                (
                    labels(&[
                        ("service_name", node.name.as_str()),
                        ("span_name", state.routes[key.route as usize].as_str()),
                        ("span_kind", SPAN_KINDS[usize::from(key.kind)]),
                        ("status_code", status),
                        ("k8s_cluster_name", node.cluster.as_str()),
                        ("k8s_namespace_name", node.namespace.as_str()),
                    ]),
                    *histogram,
                )
            })
            .collect();
        let calls: Vec<(Vec<(&str, &str)>, u64)> = span_labels
            .iter()
            .map(|(labels, histogram)| (labels.clone(), histogram.count()))
            .collect();
        encode_counter(
            &mut encoder,
            "traces_span_metrics_calls",
            "Spans counted by service, span name (route template), kind and status.",
            &calls,
        )?;
        encode_histogram(
            &mut encoder,
            "traces_span_metrics_duration",
            "Span durations by service, span name (route template), kind and status.",
            &span_labels,
        )?;

        let mut edges: Vec<(&EdgeKey, &Edge)> = state.edges.iter().collect();
        edges.sort_by_key(|(key, _)| **key);
        let edge_labels: Vec<(Vec<(&str, &str)>, &Edge)> = edges
            .iter()
            .map(|(key, edge)| {
                let client = &state.nodes[key.client as usize];
                let server = &state.nodes[key.server as usize];
                (
                    labels(&[
                        ("client", client.name.as_str()),
                        ("server", server.name.as_str()),
                        ("connection_type", key.connection.label()),
                        ("client_k8s_cluster_name", client.cluster.as_str()),
                        ("server_k8s_cluster_name", server.cluster.as_str()),
                        ("client_k8s_namespace_name", client.namespace.as_str()),
                        ("server_k8s_namespace_name", server.namespace.as_str()),
                    ]),
                    *edge,
                )
            })
            .collect();
        let counters = |value: fn(&Edge) -> u64| -> Vec<(Vec<(&str, &str)>, u64)> {
            edge_labels
                .iter()
                .map(|(labels, edge)| (labels.clone(), value(edge)))
                .collect()
        };
        encode_counter(
            &mut encoder,
            "traces_service_graph_request",
            "Requests between two services (a client span paired with its server span).",
            &counters(|edge| edge.requests),
        )?;
        encode_counter(
            &mut encoder,
            "traces_service_graph_request_failed",
            "Requests between two services where either side failed.",
            &counters(|edge| edge.failed),
        )?;
        for (side, help) in [
            ("server", "Server-side durations of requests between two services."),
            ("client", "Client-side durations of requests between two services."),
        ] {
            let histograms: Vec<(Vec<(&str, &str)>, &Histogram)> = edge_labels
                .iter()
                .filter(|(_, edge)| if side == "server" { edge.server.count() } else { edge.client.count() } > 0)
                .map(|(labels, edge)| (labels.clone(), if side == "server" { &edge.server } else { &edge.client }))
                .collect();
            encode_histogram(
                &mut encoder,
                &format!("traces_service_graph_request_{side}"),
                help,
                &histograms,
            )?;
        }

        for (name, help, value) in [
            (
                "tracepost_span_metrics_duplicate_spans",
                "Spans not counted again because their ID was counted recently (a re-sent export).",
                state.duplicates,
            ),
            (
                "tracepost_service_graph_unpaired_spans",
                "Server spans whose client span did not arrive within the wait.",
                state.unpaired,
            ),
            (
                "tracepost_service_graph_expired_client_spans",
                "Client spans whose server span did not arrive within the wait (counted as virtual-node edges).",
                state.expired_clients,
            ),
            (
                "tracepost_service_graph_dropped_spans",
                "Spans not paired because the pairing store was full.",
                state.dropped,
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(family)?;
        }
        let family = encoder.encode_descriptor(
            "tracepost_service_graph_pending_spans",
            "Spans waiting for their other half.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(state.pairing.waiting.len() as i64).encode(family)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prometheus_client::registry::Registry;
    use prost::Message;
    use tracepost_storage::model;

    use super::*;
    use crate::convert::{convert_request, ConvertConfig, Converted};
    use crate::wire::convert_protobuf;

    const LINKERD_2_17: &str = include_str!("../testdata/linkerd-2.17-one-hop.otlp.json");
    const LINKERD_2_19: &str = include_str!("../testdata/linkerd-2.19-one-hop.otlp.json");

    fn config(metrics: &Arc<SpanMetrics>) -> ConvertConfig {
        ConvertConfig {
            span_metrics: Some(metrics.clone()),
            ..ConvertConfig::default()
        }
    }

    fn request(json: &str) -> ExportTraceServiceRequest {
        serde_json::from_str(json).expect("fixture decodes")
    }

    /// The request through both conversion paths (they must agree), then recorded as committed.
    fn ingest(metrics: &Arc<SpanMetrics>, request: ExportTraceServiceRequest) -> Converted {
        let bytes = request.encode_to_vec();
        let slow = convert_request(request, &config(metrics));
        let mut fast = convert_protobuf(&bytes, &config(metrics)).expect("valid protobuf");
        assert_eq!(fast.encoded.rows, slow.encoded.rows);
        assert_eq!(fast.metrics, slow.metrics);
        metrics.record(fast.metrics.take().expect("metrics enabled"));
        fast
    }

    fn exposition(metrics: &Arc<SpanMetrics>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    /// The value of the one sample of `name` carrying every label in `labels` (an empty value: the label is
    /// absent); no other sample may match.
    fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = text
            .lines()
            .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
            .filter(|line| {
                labels.iter().all(|(key, value)| {
                    if value.is_empty() {
                        !line.contains(&format!("{{{key}=")) && !line.contains(&format!(",{key}="))
                    } else {
                        line.contains(&format!("{key}=\"{value}\""))
                    }
                })
            })
            .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().copied()
    }

    fn resource_attribute(converted: &Converted, service: &str, key: &str) -> Option<String> {
        let row = converted.encoded.resources.iter().find(|row| row.service == service)?;
        let resource = model::Resource::decode(row.body.clone()).unwrap();
        model::find_attribute(&resource.attributes, key)
            .and_then(|kv| kv.as_str())
            .map(str::to_owned)
    }

    #[test]
    fn both_linkerd_generations_give_the_same_services_errors_metrics_and_edge() {
        for (generation, fixture) in [("2.17", LINKERD_2_17), ("2.19", LINKERD_2_19)] {
            let metrics = SpanMetrics::new(RedConfig::default());
            let converted = ingest(&metrics, request(fixture));
            let services: Vec<&str> = converted
                .encoded
                .resources
                .iter()
                .map(|row| row.service.as_str())
                .collect();
            assert_eq!(services, ["harbor-jobservice", "harbor-core"], "{generation}");
            assert_eq!(
                resource_attribute(&converted, "harbor-core", "k8s.pod.name").as_deref(),
                Some("harbor-core-5d9c7b8f6-abcde"),
                "{generation}"
            );
            assert_eq!(
                resource_attribute(&converted, "harbor-core", "k8s.namespace.name").as_deref(),
                Some("harbor"),
                "{generation}"
            );
            assert_eq!(
                resource_attribute(&converted, "harbor-core", "host.name").as_deref(),
                Some("harbor-core-5d9c7b8f6-abcde"),
                "{generation}: the original stays"
            );
            let (original, derived) = if generation == "2.17" {
                (Some("linkerd-proxy"), "service.name,k8s.pod.name,k8s.namespace.name")
            } else {
                (None, "k8s.pod.name,k8s.namespace.name")
            };
            assert_eq!(
                resource_attribute(&converted, "harbor-core", crate::normalize::ORIGINAL_SERVICE_ATTRIBUTE).as_deref(),
                original,
                "{generation}"
            );
            assert_eq!(
                resource_attribute(&converted, "harbor-core", "tracepost.derived").as_deref(),
                Some(derived),
                "{generation}"
            );

            let text = exposition(&metrics);
            let cluster = if generation == "2.19" { "apps" } else { "" };
            let server = [
                ("service_name", "harbor-core"),
                ("k8s_cluster_name", cluster),
                ("span_name", "/api/v2.0/projects/{id}/repositories"),
                ("span_kind", "SPAN_KIND_SERVER"),
                ("status_code", "STATUS_CODE_ERROR"),
                ("k8s_namespace_name", "harbor"),
            ];
            assert_eq!(
                sample(&text, "traces_span_metrics_calls_total", &server),
                Some(1.0),
                "{generation}\n{text}"
            );
            let client = [("service_name", "harbor-jobservice"), ("span_kind", "SPAN_KIND_CLIENT")];
            assert_eq!(
                sample(&text, "traces_span_metrics_calls_total", &client),
                Some(1.0),
                "{generation}"
            );
            // The proxy-to-app hops (outbound server, inbound client) are not calls of their own.
            assert_eq!(
                sample(
                    &text,
                    "traces_span_metrics_calls_total",
                    &[("service_name", "harbor-jobservice"), ("span_kind", "SPAN_KIND_SERVER")]
                ),
                None
            );
            assert_eq!(
                text.lines()
                    .filter(|line| line.starts_with("traces_span_metrics_calls_total"))
                    .count(),
                2,
                "{text}"
            );
            let edge = [
                ("client", "harbor-jobservice"),
                ("server", "harbor-core"),
                ("server_k8s_namespace_name", "harbor"),
                ("client_k8s_cluster_name", cluster),
                ("server_k8s_cluster_name", cluster),
            ];
            assert_eq!(
                sample(&text, "traces_service_graph_request_total", &edge),
                Some(1.0),
                "{text}"
            );
            assert_eq!(
                sample(&text, "traces_service_graph_request_failed_total", &edge),
                Some(1.0)
            );
            assert_eq!(
                sample(&text, "traces_service_graph_request_server_seconds_count", &edge),
                Some(1.0)
            );
            assert_eq!(
                metrics.service_edges(),
                [("harbor-jobservice".to_owned(), "harbor-core".to_owned())]
            );
            // Nothing waits: the proxy pair made the edge, and the caller's own span (the hop's parent), had
            // it come, would have been absorbed by the outbound proxy's span.
            assert_eq!(sample(&text, "tracepost_service_graph_pending_spans", &[]), Some(0.0));
        }
    }

    fn string(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_owned())),
            }),
            ..Default::default()
        }
    }

    fn span(trace: u8, id: u64, parent: Option<u64>, kind: i32, name: &str, attributes: &[(&str, &str)]) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: id.to_be_bytes().to_vec(),
            parent_span_id: parent.map(|parent| parent.to_be_bytes().to_vec()).unwrap_or_default(),
            name: name.to_owned(),
            kind,
            start_time_unix_nano: 1_000_000_000,
            end_time_unix_nano: 1_030_000_000,
            attributes: attributes.iter().map(|(key, value)| string(key, value)).collect(),
            ..Default::default()
        }
    }

    fn export(service: &str, cluster: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![string("service.name", service), string("k8s.cluster.name", cluster)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    fn waiting_config() -> RedConfig {
        RedConfig {
            graph_wait: Duration::ZERO,
            ..RedConfig::default()
        }
    }

    #[test]
    fn halves_pair_in_either_order_across_clusters_and_unpaired_ones_become_virtual_nodes() {
        let metrics = SpanMetrics::new(RedConfig::default());
        // Server half first (infra), client half later (apps): one cross-cluster edge.
        ingest(
            &metrics,
            export("postgres-rw", "infra", vec![span(1, 2, Some(1), 2, "/query", &[])]),
        );
        ingest(
            &metrics,
            export("gitlab", "apps", vec![span(1, 1, None, 3, "/query", &[])]),
        );
        let text = exposition(&metrics);
        let edge = [
            ("client", "gitlab"),
            ("server", "postgres-rw"),
            ("client_k8s_cluster_name", "apps"),
            ("server_k8s_cluster_name", "infra"),
        ];
        assert_eq!(
            sample(&text, "traces_service_graph_request_total", &edge),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, "traces_service_graph_request_failed_total", &edge),
            Some(0.0)
        );

        // A root server span: the caller is the virtual `user` node at once; a client span to an
        // uninstrumented peer waits, then becomes an edge to the peer named by its attributes.
        let metrics = SpanMetrics::new(waiting_config());
        ingest(
            &metrics,
            export(
                "web",
                "apps",
                vec![
                    span(2, 1, None, 2, "/", &[]),
                    span(2, 2, Some(1), 3, "GET", &[("server.address", "api.github.com:443")]),
                    span(
                        2,
                        3,
                        Some(1),
                        3,
                        "SELECT",
                        &[("db.system", "postgresql"), ("db.name", "orders")],
                    ),
                ],
            ),
        );
        metrics.expire();
        let text = exposition(&metrics);
        for (client, server, connection) in [
            ("user", "web", "virtual_node"),
            ("web", "api.github.com", "virtual_node"),
            ("web", "orders", "database"),
        ] {
            assert_eq!(
                sample(
                    &text,
                    "traces_service_graph_request_total",
                    &[("client", client), ("server", server), ("connection_type", connection)]
                ),
                Some(1.0),
                "{client} -> {server}\n{text}"
            );
        }
        assert_eq!(sample(&text, "tracepost_service_graph_pending_spans", &[]), Some(0.0));
        assert_eq!(metrics.service_edges(), Vec::<(String, String)>::new());
    }

    #[test]
    fn pairing_memory_is_bounded_by_items_whatever_the_span_rate() {
        // A long wait and a small store: thousands of spans pair within it, a few never do.
        let metrics = SpanMetrics::new(RedConfig {
            graph_max_items: 8,
            ..RedConfig::default()
        });
        for id in 1..=5_000u64 {
            let trace = (id % 251) as u8 + 1;
            let mut spans = vec![span(trace, id << 1, None, 3, "/", &[])];
            if id % 1_000 != 0 {
                spans.push(span(trace, (id << 1) | 1, Some(id << 1), 2, "/", &[]));
            }
            ingest(&metrics, export("web", "apps", spans));
            let state = metrics.lock();
            assert!(state.pairing.waiting.len() <= 8);
            assert!(
                state.pairing.order.len() <= 16,
                "{} places queued",
                state.pairing.order.len()
            );
        }
        let text = exposition(&metrics);
        assert_eq!(
            sample(
                &text,
                "traces_service_graph_request_total",
                &[("client", "web"), ("server", "web")]
            ),
            Some(4_995.0)
        );
        assert_eq!(sample(&text, "tracepost_service_graph_pending_spans", &[]), Some(5.0));
    }

    #[test]
    fn bucket_bounds_in_nanoseconds_are_the_seconds_ones() {
        for (seconds, nanoseconds) in DURATION_BUCKETS_SECONDS.iter().zip(DURATION_BUCKETS_NS) {
            assert_eq!((seconds * 1e9).round() as u64, nanoseconds);
        }
        // A bound is inclusive (Prometheus `le`).
        assert_eq!(bucket(2_000_000), 0);
        assert_eq!(bucket(2_000_001), 1);
        assert_eq!(bucket(15_000_000_001), DURATION_BUCKETS_NS.len());
    }

    #[test]
    fn a_re_sent_export_is_not_counted_twice() {
        let metrics = SpanMetrics::new(RedConfig::default());
        let request = export(
            "gitlab",
            "apps",
            vec![span(3, 1, None, 2, "/", &[]), span(3, 2, Some(1), 3, "/", &[])],
        );
        ingest(&metrics, request.clone());
        ingest(&metrics, request);
        let text = exposition(&metrics);
        assert_eq!(
            sample(
                &text,
                "traces_span_metrics_calls_total",
                &[("span_kind", "SPAN_KIND_SERVER")]
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "tracepost_span_metrics_duplicate_spans_total", &[]),
            Some(2.0)
        );
    }

    #[test]
    fn a_hundred_thousand_distinct_paths_produce_a_bounded_number_of_series() {
        let config = RedConfig {
            max_services: 3,
            max_operations_per_service: 50,
            ..RedConfig::default()
        };
        let metrics = SpanMetrics::new(config);
        for batch in 0..100u64 {
            let spans = (0..1000u64)
                .map(|index| {
                    let n = batch * 1000 + index;
                    // Half the paths hold identifiers (templated away), half are distinct words (capped).
                    let name = if n % 2 == 0 {
                        format!("/users/{n}/orders/3f2c1a9e-1b2c-4d5e-8f90-{n:012}")
                    } else {
                        format!(
                            "/wiki/page-{}",
                            n.to_string()
                                .chars()
                                .map(|c| (b'a' + c as u8 - b'0') as char)
                                .collect::<String>()
                        )
                    };
                    span(
                        4,
                        n + 1,
                        Some(1 << 40),
                        2,
                        &name,
                        &[("http.response.status_code", if n % 7 == 0 { "500" } else { "200" })],
                    )
                })
                .collect();
            ingest(&metrics, export(&format!("service-{}", batch % 5), "apps", spans));
        }
        let text = exposition(&metrics);
        let calls: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("traces_span_metrics_calls_total"))
            .collect();
        // 3 services + the overflow service, each with at most 50 names + the overflow name, two statuses.
        assert!(calls.len() <= 4 * 51 * 2, "{} series", calls.len());
        assert!(calls.iter().any(|line| line.contains("service_name=\"__overflow__\"")));
        assert!(calls.iter().any(|line| line.contains("span_name=\"__overflow__\"")));
        assert!(calls
            .iter()
            .any(|line| line.contains("span_name=\"/users/{id}/orders/{uuid}\"")));
        let total: f64 = calls
            .iter()
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert_eq!(total, 100_000.0, "nothing is lost to the caps");
        assert!(metrics.series_count() <= 4 * 51 * 2 * 2 + 4 * 10);
    }

    #[test]
    fn an_application_client_span_sent_through_its_linkerd_proxy_is_no_edge_of_its_own() {
        // The application's CLIENT span to the registry, sent by its SDK.
        let app = || {
            export(
                "web",
                "apps",
                vec![span(
                    5,
                    1,
                    None,
                    3,
                    "GET",
                    &[("server.address", "registry.registry.svc")],
                )],
            )
        };
        for proxy_first in [false, true] {
            let metrics = SpanMetrics::new(RedConfig::default());
            let mut proxy = export(
                "linkerd-proxy",
                "apps",
                vec![span(5, 2, Some(1), 2, "/v2/", &[("direction", "outbound")])],
            );
            if let Some(resource) = proxy.resource_spans[0].resource.as_mut() {
                resource.attributes.push(string("linkerd.io/proxy-deployment", "web"));
            }
            if proxy_first {
                ingest(&metrics, proxy);
                ingest(&metrics, app());
            } else {
                ingest(&metrics, app());
                ingest(&metrics, proxy);
            }
            metrics.expire_at(Instant::now() + Duration::from_secs(60));
            let text = exposition(&metrics);
            assert!(!text.contains("traces_service_graph_request_total{"), "{text}");
            assert_eq!(sample(&text, "tracepost_service_graph_pending_spans", &[]), Some(0.0));
            // Without the proxy span, the same client span becomes an edge to a virtual node.
            let metrics = SpanMetrics::new(RedConfig::default());
            ingest(&metrics, app());
            metrics.expire_at(Instant::now() + Duration::from_secs(60));
            let text = exposition(&metrics);
            assert_eq!(
                sample(
                    &text,
                    "traces_service_graph_request_total",
                    &[("client", "web"), ("server", "registry.registry.svc")]
                ),
                Some(1.0)
            );
        }
    }
}
