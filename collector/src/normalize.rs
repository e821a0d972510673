//! Linkerd-aware normalisation at ingest, shared by the wire fast path and the generated-types path.
//!
//! Linkerd proxies export spans whose resource often says only `service.name=linkerd-proxy`, whose status is
//! always UNSET and whose attributes are all strings. Both conversion paths feed every resource attribute to
//! [`ResourceFacts`] and every span attribute to [`SpanFacts`] (in order; the last string value of a key
//! wins), then apply what comes out the same way, so the two paths still write the same bytes.
//!
//! What is derived, and how it stays distinguishable from what the client sent:
//! - a generic `service.name` (`linkerd-proxy`, empty, `unknown_service…`) is replaced by the workload owner
//!   (`linkerd.io/proxy-deployment`, `-statefulset`, …), else `app.kubernetes.io/name`, else `app`; the
//!   original is kept as `tracepost.original.service.name`;
//! - `k8s.pod.name` (from `host.name`, Linkerd resources only) and `k8s.namespace.name` (from
//!   `linkerd.io/workload-ns`) are added when absent;
//! - every added or replaced key is listed in `tracepost.derived`;
//! - a span with status UNSET and an HTTP status >= 500 (`http.response.status_code` or `http.status_code`,
//!   string or integer) is stored with status ERROR and the message [`derived_status_message`] names the
//!   attribute. Its name and attributes are untouched.

/// A resource or span attribute value, as far as normalisation cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    Other,
}

impl<'a> Scalar<'a> {
    fn as_str(self) -> Option<&'a str> {
        match self {
            Self::Str(text) if !text.is_empty() => Some(text),
            _ => None,
        }
    }
}

/// The `service.name` Linkerd's chart gives every proxy unless the injector overrides it.
pub const LINKERD_PROXY_SERVICE: &str = "linkerd-proxy";

/// The attribute listing which resource keys tracepost added or replaced.
pub const DERIVED_KEYS_ATTRIBUTE: &str = "tracepost.derived";
/// The attribute keeping a replaced `service.name`.
pub const ORIGINAL_SERVICE_ATTRIBUTE: &str = "tracepost.original.service.name";

/// Workload owner labels Linkerd's injector puts on a pod, in order of preference.
const OWNER_LABELS: [&str; 7] = [
    "linkerd.io/proxy-deployment",
    "linkerd.io/proxy-statefulset",
    "linkerd.io/proxy-daemonset",
    "linkerd.io/proxy-cronjob",
    "linkerd.io/proxy-job",
    "linkerd.io/proxy-replicaset",
    "linkerd.io/proxy-replicationcontroller",
];

/// What a resource's attributes say, gathered in one pass.
#[derive(Debug, Default)]
pub(crate) struct ResourceFacts<'a> {
    service: Option<&'a str>,
    cluster: Option<&'a str>,
    owners: [Option<&'a str>; OWNER_LABELS.len()],
    app_name: Option<&'a str>,
    app: Option<&'a str>,
    host_name: Option<&'a str>,
    workload_namespace: Option<&'a str>,
    pod_name: Option<&'a str>,
    namespace: Option<&'a str>,
    linkerd: bool,
}

/// What to store and count for a resource.
#[derive(Debug, Default)]
pub(crate) struct ResourceOutcome {
    /// The service name to store (derived or as sent; `None` when there is none).
    pub(crate) service: Option<String>,
    pub(crate) cluster: Option<String>,
    /// `k8s.namespace.name`, as sent or derived.
    pub(crate) namespace: Option<String>,
    /// Whether `service.name` is replaced (by `service`).
    pub(crate) replaces_service: bool,
    /// Attributes to append, in order.
    pub(crate) additions: Vec<(&'static str, String)>,
    /// Whether the resource is a Linkerd proxy's.
    pub(crate) linkerd: bool,
}

impl<'a> ResourceFacts<'a> {
    pub(crate) fn observe(&mut self, key: &'a str, value: Scalar<'a>) {
        if key.starts_with("linkerd.io/") {
            self.linkerd = true;
        }
        let slot = match key {
            "service.name" => &mut self.service,
            "k8s.cluster.name" => &mut self.cluster,
            "app.kubernetes.io/name" => &mut self.app_name,
            "app" => &mut self.app,
            "host.name" => &mut self.host_name,
            "linkerd.io/workload-ns" => &mut self.workload_namespace,
            "k8s.pod.name" => &mut self.pod_name,
            "k8s.namespace.name" => &mut self.namespace,
            _ => match OWNER_LABELS.iter().position(|label| *label == key) {
                Some(index) => &mut self.owners[index],
                None => return,
            },
        };
        if let Scalar::Str(text) = value {
            *slot = Some(text);
        }
    }

    pub(crate) fn finish(self) -> ResourceOutcome {
        let original = self.service.filter(|name| !name.is_empty());
        let linkerd = self.linkerd || original == Some(LINKERD_PROXY_SERVICE);
        let generic = original.is_none_or(|name| name == LINKERD_PROXY_SERVICE || name.starts_with("unknown_service"));
        let derived = generic
            .then(|| {
                self.owners
                    .iter()
                    .flatten()
                    .chain([&self.app_name, &self.app].into_iter().flatten())
                    .copied()
                    .find(|name| !name.is_empty())
            })
            .flatten();
        let mut outcome = ResourceOutcome {
            service: derived.or(original).map(str::to_owned),
            cluster: self.cluster.filter(|name| !name.is_empty()).map(str::to_owned),
            namespace: self.namespace.filter(|name| !name.is_empty()).map(str::to_owned),
            replaces_service: derived.is_some(),
            additions: Vec::new(),
            linkerd,
        };
        let mut derived_keys = Vec::new();
        if let Some(original) = original.filter(|_| derived.is_some()) {
            outcome
                .additions
                .push((ORIGINAL_SERVICE_ATTRIBUTE, original.to_owned()));
        }
        if derived.is_some() {
            derived_keys.push("service.name");
        }
        if linkerd && self.pod_name.is_none() {
            if let Some(host) = self.host_name.filter(|host| !host.is_empty()) {
                outcome.additions.push(("k8s.pod.name", host.to_owned()));
                derived_keys.push("k8s.pod.name");
            }
        }
        if outcome.namespace.is_none() {
            if let Some(namespace) = self.workload_namespace.filter(|ns| !ns.is_empty()) {
                outcome.additions.push(("k8s.namespace.name", namespace.to_owned()));
                outcome.namespace = Some(namespace.to_owned());
                derived_keys.push("k8s.namespace.name");
            }
        }
        if !derived_keys.is_empty() {
            outcome.additions.push((DERIVED_KEYS_ATTRIBUTE, derived_keys.join(",")));
        }
        outcome
    }
}

/// A Linkerd proxy span's `direction` attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Direction {
    #[default]
    None,
    Inbound,
    Outbound,
}

/// Attributes whose value names the peer of a client span, in order of preference (for virtual nodes of the
/// service graph: uninstrumented or unmeshed servers).
const PEER_ATTRIBUTES: [&str; 7] = [
    "peer.service",
    "db.name",
    "db.namespace",
    "db.system",
    "server.address",
    "net.peer.name",
    "http.authority",
];

/// What a span's attributes say, gathered in one pass.
#[derive(Debug, Default)]
pub(crate) struct SpanFacts<'a> {
    http_status: Option<(&'static str, i64)>,
    pub(crate) direction: Direction,
    peers: [Option<&'a str>; PEER_ATTRIBUTES.len()],
}

impl<'a> SpanFacts<'a> {
    pub(crate) fn observe(&mut self, key: &'a str, value: Scalar<'a>) {
        match key {
            "http.response.status_code" | "http.status_code" => {
                let key = if key == "http.status_code" {
                    "http.status_code"
                } else {
                    "http.response.status_code"
                };
                let code = match value {
                    Scalar::Int(code) => Some(code),
                    Scalar::Str(text) => text.trim().parse().ok(),
                    Scalar::Other => None,
                };
                if let Some(code) = code {
                    self.http_status = Some((key, code));
                }
            }
            "direction" => {
                self.direction = match value {
                    Scalar::Str("inbound") => Direction::Inbound,
                    Scalar::Str("outbound") => Direction::Outbound,
                    _ => Direction::None,
                }
            }
            _ => {
                let index = match key {
                    "peer.service" => 0,
                    "db.name" => 1,
                    "db.namespace" => 2,
                    "db.system" => 3,
                    "server.address" => 4,
                    "net.peer.name" => 5,
                    "http.authority" => 6,
                    _ => return,
                };
                debug_assert_eq!(PEER_ATTRIBUTES[index], key);
                if let Some(text) = value.as_str() {
                    self.peers[index] = Some(text);
                }
            }
        }
    }

    /// The HTTP status that makes an UNSET span an error, with the attribute it came from.
    pub(crate) fn derived_error(&self, status_code: i32) -> Option<(&'static str, i64)> {
        self.http_status.filter(|(_, code)| status_code == 0 && *code >= 500)
    }

    /// The peer a client span called, for a virtual node, without a port.
    pub(crate) fn peer(&self) -> Option<&'a str> {
        let peer = self.peers.iter().flatten().next()?;
        Some(strip_port(peer))
    }

    /// Whether the span describes a database call (the service graph's `database` connection type).
    pub(crate) fn is_database(&self) -> bool {
        self.peers[1..4].iter().any(Option::is_some)
    }

    /// The database node's name for a database client span.
    pub(crate) fn database(&self) -> Option<&'a str> {
        self.peers[..4].iter().flatten().next().copied()
    }
}

fn strip_port(address: &str) -> &str {
    match address.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty()
                && !port.is_empty()
                && port.bytes().all(|byte| byte.is_ascii_digit())
                && (host.starts_with('[') || !host.contains(':')) =>
        {
            host
        }
        _ => address,
    }
}

/// The status message stored with a status derived from an HTTP status code.
pub fn derived_status_message(key: &str, code: i64) -> String {
    format!("tracepost: error derived from {key}={code}")
}

/// The status to store for a span: ERROR with a message naming its origin when derived from an HTTP
/// status, else `None` (keep what was sent).
pub(crate) fn derived_status(facts: &SpanFacts<'_>, code: i32, message: &str) -> Option<String> {
    let (key, http) = facts.derived_error(code)?;
    let derived = derived_status_message(key, http);
    Some(if message.is_empty() {
        derived
    } else {
        format!("{derived}; {message}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(attributes: &[(&str, &str)]) -> ResourceOutcome {
        let mut facts = ResourceFacts::default();
        for (key, value) in attributes {
            facts.observe(key, Scalar::Str(value));
        }
        facts.finish()
    }

    #[test]
    fn ports_are_stripped_from_peers() {
        assert_eq!(strip_port("db.example:5432"), "db.example");
        assert_eq!(strip_port("db.example"), "db.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn a_generic_proxy_service_name_is_replaced_by_the_workload_owner() {
        let outcome = resource(&[
            ("service.name", "linkerd-proxy"),
            ("host.name", "web-6b7f9c5d4-k2x8p"),
            ("app", "web-app"),
            ("linkerd.io/proxy-deployment", "web"),
            ("linkerd.io/workload-ns", "shop"),
            ("k8s.cluster.name", "apps"),
        ]);
        assert_eq!(outcome.service.as_deref(), Some("web"));
        assert!(outcome.replaces_service && outcome.linkerd);
        assert_eq!(outcome.cluster.as_deref(), Some("apps"));
        assert_eq!(outcome.namespace.as_deref(), Some("shop"));
        assert_eq!(
            outcome.additions,
            vec![
                (ORIGINAL_SERVICE_ATTRIBUTE, "linkerd-proxy".to_owned()),
                ("k8s.pod.name", "web-6b7f9c5d4-k2x8p".to_owned()),
                ("k8s.namespace.name", "shop".to_owned()),
                (
                    DERIVED_KEYS_ATTRIBUTE,
                    "service.name,k8s.pod.name,k8s.namespace.name".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn a_named_service_is_kept_and_existing_kubernetes_keys_are_not_overwritten() {
        let outcome = resource(&[
            ("service.name", "checkout"),
            ("linkerd.io/proxy-statefulset", "checkout-db"),
            ("host.name", "checkout-0"),
            ("k8s.pod.name", "checkout-0"),
            ("k8s.namespace.name", "shop"),
            ("linkerd.io/workload-ns", "other"),
        ]);
        assert_eq!(outcome.service.as_deref(), Some("checkout"));
        assert!(!outcome.replaces_service);
        assert_eq!(outcome.namespace.as_deref(), Some("shop"));
        assert!(outcome.additions.is_empty());
    }

    #[test]
    fn owners_are_preferred_in_order_and_sdk_resources_get_no_pod_name() {
        let outcome = resource(&[
            ("linkerd.io/proxy-job", "backup-28391"),
            ("linkerd.io/proxy-cronjob", "backup"),
        ]);
        assert_eq!(outcome.service.as_deref(), Some("backup"));
        let sdk = resource(&[
            ("service.name", "unknown_service:java"),
            ("app.kubernetes.io/name", "billing"),
            ("host.name", "laptop"),
        ]);
        assert_eq!(sdk.service.as_deref(), Some("billing"));
        assert_eq!(
            sdk.additions,
            vec![
                (ORIGINAL_SERVICE_ATTRIBUTE, "unknown_service:java".to_owned()),
                (DERIVED_KEYS_ATTRIBUTE, "service.name".to_owned())
            ]
        );
        let bare = resource(&[("service.name", "linkerd-proxy")]);
        assert_eq!(bare.service.as_deref(), Some("linkerd-proxy"));
        assert!(!bare.replaces_service);
    }

    #[test]
    fn http_5xx_of_either_generation_makes_an_unset_span_an_error() {
        let facts = |key: &'static str, value: Scalar<'static>| {
            let mut facts = SpanFacts::default();
            facts.observe(key, value);
            facts
        };
        assert_eq!(
            facts("http.response.status_code", Scalar::Str("503")).derived_error(0),
            Some(("http.response.status_code", 503))
        );
        assert_eq!(
            facts("http.status_code", Scalar::Int(500)).derived_error(0),
            Some(("http.status_code", 500))
        );
        assert_eq!(facts("http.status_code", Scalar::Str("404")).derived_error(0), None);
        assert_eq!(
            facts("http.response.status_code", Scalar::Str("502")).derived_error(1),
            None
        );
        assert_eq!(
            facts("http.response.status_code", Scalar::Str("oops")).derived_error(0),
            None
        );
    }
}
