//! Which operations (service, span name, kind) the collector has already recorded today, so the
//! `operations` dictionary is written once per operation and day instead of once per span, and a cap per
//! service on distinct span names keeps raw-path span names (Linkerd's) from flooding it. The cap counts names,
//! not (name, kind) pairs: a name already listed under one kind (SERVER) is listed under another (CLIENT)
//! without taking another place.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};

use tracepost_storage::OperationRow;

/// The default cap on distinct span names recorded per service (each under every kind it is used with).
pub const DEFAULT_MAX_OPERATIONS_PER_SERVICE: usize = 1000;

/// Entries remembered as recorded before the memory is cleared (costing a few redundant upserts).
const KNOWN_CAP: usize = 200_000;

/// (service, span name) pairs remembered for the per-service caps, all services together, before that memory
/// is cleared: a client inventing service or span names cannot grow it without bound (after a clear, each
/// service may list up to its cap of names again, so the dictionary grows by at most one cap of names, each
/// under the kinds it comes with, per service per clear).
const PER_SERVICE_CAP: usize = 200_000;

/// Shared by every request of the process.
#[derive(Debug)]
pub struct OperationCatalog {
    /// Hashes of (service, name, kind, day) recorded or being recorded.
    known: RwLock<HashSet<u64>>,
    /// Per service hash, the hashes of its span names admitted so far (under any kind).
    per_service: Mutex<PerService>,
    max_per_service: usize,
}

#[derive(Debug, Default)]
struct PerService {
    names: HashMap<u64, HashSet<u64>>,
    /// (service, name) pairs held in `names`, all services together.
    pairs: usize,
}

impl Default for OperationCatalog {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_OPERATIONS_PER_SERVICE)
    }
}

impl OperationCatalog {
    pub fn new(max_per_service: usize) -> Self {
        Self {
            known: RwLock::default(),
            per_service: Mutex::default(),
            max_per_service,
        }
    }

    fn is_known(&self, key: u64) -> bool {
        self.known
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(&key)
    }

    /// Admits a request's candidates: returns the rows to write and the keys to forget if the write fails.
    fn admit(&self, candidates: Vec<Candidate>) -> (Vec<OperationRow>, Vec<u64>) {
        if candidates.is_empty() {
            return (Vec::new(), Vec::new());
        }
        let mut known = self.known.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut per_service = self.per_service.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if known.len() + candidates.len() > KNOWN_CAP {
            known.clear();
        }
        let mut rows = Vec::new();
        let mut keys = Vec::new();
        if per_service.pairs + candidates.len() > PER_SERVICE_CAP {
            *per_service = PerService::default();
        }
        for candidate in candidates {
            let PerService { names, pairs } = &mut *per_service;
            let names = names.entry(candidate.service_hash).or_default();
            // A name admitted under another kind takes no new place.
            if !names.contains(&candidate.name_hash) {
                if names.len() >= self.max_per_service {
                    continue;
                }
                names.insert(candidate.name_hash);
                *pairs += 1;
            }
            if known.insert(candidate.key) {
                keys.push(candidate.key);
                rows.push(candidate.row);
            }
        }
        (rows, keys)
    }

    /// Forgets keys whose write failed, so the client's retry records them.
    pub fn forget(&self, keys: &[u64]) {
        if keys.is_empty() {
            return;
        }
        let mut known = self.known.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        for key in keys {
            known.remove(key);
        }
    }
}

#[derive(Debug)]
struct Candidate {
    key: u64,
    service_hash: u64,
    /// The span name's hash, whatever the kind: what the per-service cap counts.
    name_hash: u64,
    row: OperationRow,
}

/// Collects one request's operations.
#[derive(Debug, Default)]
pub(crate) struct RequestOperations {
    seen: HashSet<u64>,
    candidates: Vec<Candidate>,
}

impl RequestOperations {
    /// Notes a stored span's operation; allocates only for operations the catalog has not seen today.
    pub(crate) fn observe(&mut self, catalog: &OperationCatalog, service: &str, name: &str, kind: i16, day: i32) {
        let service_hash = fnv(FNV_OFFSET, service.as_bytes());
        let name_hash = fnv(FNV_OFFSET, name.as_bytes());
        let operation_hash = fnv(name_hash, &kind.to_le_bytes());
        let key = fnv(
            fnv(service_hash ^ operation_hash.rotate_left(17), &[0xff]),
            &day.to_le_bytes(),
        );
        // Services are already cut to their column's 256 bytes; names are not.
        if name.len() > tracepost_storage::limits::MAX_LISTED_NAME_BYTES
            || !self.seen.insert(key)
            || catalog.is_known(key)
        {
            return;
        }
        let row = OperationRow {
            service: service.to_owned(),
            name: name.to_owned(),
            kind,
            day,
        };
        self.candidates.push(Candidate {
            key,
            service_hash,
            name_hash,
            row,
        });
    }

    /// The rows to write with the request and the keys to forget if that write fails.
    pub(crate) fn finish(self, catalog: &OperationCatalog) -> (Vec<OperationRow>, Vec<u64>) {
        catalog.admit(self.candidates)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_is_recorded_once_a_day_and_again_after_a_failed_write() {
        let catalog = OperationCatalog::new(10);
        let mut first = RequestOperations::default();
        first.observe(&catalog, "svc", "GET /", 2, 100);
        first.observe(&catalog, "svc", "GET /", 2, 100);
        let (rows, keys) = first.finish(&catalog);
        assert_eq!(rows.len(), 1);
        let mut again = RequestOperations::default();
        again.observe(&catalog, "svc", "GET /", 2, 100);
        again.observe(&catalog, "svc", "GET /", 2, 101);
        assert_eq!(again.finish(&catalog).0.len(), 1, "only the new day");
        catalog.forget(&keys);
        let mut retry = RequestOperations::default();
        retry.observe(&catalog, "svc", "GET /", 2, 100);
        assert_eq!(retry.finish(&catalog).0.len(), 1, "forgotten after the failed write");
    }

    #[test]
    fn a_service_gets_at_most_its_cap_of_distinct_operations() {
        let catalog = OperationCatalog::new(3);
        let mut request = RequestOperations::default();
        for path in 0..100 {
            request.observe(&catalog, "linkerd", &format!("/items/{path}"), 2, 1);
        }
        request.observe(&catalog, "other", "/items/1", 2, 1);
        let (rows, _) = request.finish(&catalog);
        assert_eq!(rows.iter().filter(|row| row.service == "linkerd").count(), 3);
        assert_eq!(rows.iter().filter(|row| row.service == "other").count(), 1);
    }

    #[test]
    fn a_name_used_as_server_and_client_takes_one_place_under_the_cap() {
        let (server, client) = (2, 3);
        let catalog = OperationCatalog::new(2);
        let mut request = RequestOperations::default();
        request.observe(&catalog, "cart", "GET /cart", server, 1);
        request.observe(&catalog, "cart", "GET /cart", client, 1);
        request.observe(&catalog, "cart", "GET /items", server, 1);
        request.observe(&catalog, "cart", "GET /over-the-cap", server, 1);
        let (rows, _) = request.finish(&catalog);
        let listed: Vec<(&str, i16)> = rows.iter().map(|row| (row.name.as_str(), row.kind)).collect();
        assert_eq!(
            listed,
            [("GET /cart", server), ("GET /cart", client), ("GET /items", server)]
        );
        // A listed name is listed under a further kind in a later request too; a name over the cap under none.
        let mut later = RequestOperations::default();
        later.observe(&catalog, "cart", "GET /items", client, 1);
        later.observe(&catalog, "cart", "GET /over-the-cap", client, 1);
        let (rows, _) = later.finish(&catalog);
        let listed: Vec<(&str, i16)> = rows.iter().map(|row| (row.name.as_str(), row.kind)).collect();
        assert_eq!(listed, [("GET /items", client)]);
    }

    #[test]
    fn a_client_inventing_span_names_cannot_grow_the_catalog_past_the_cap() {
        let catalog = OperationCatalog::new(3);
        for batch in 0..20 {
            let mut request = RequestOperations::default();
            for name in 0..1000 {
                for kind in 1..=5 {
                    request.observe(&catalog, "linkerd", &format!("/items/{batch}/{name}"), kind, 1);
                }
            }
            request.finish(&catalog);
            let per_service = catalog.per_service.lock().expect("lock");
            assert!(per_service.pairs <= 3, "{}", per_service.pairs);
        }
    }

    /// The report: `per_service` grew with every service name a client invented. Now the memory behind the
    /// per-service caps holds at most `PER_SERVICE_CAP` pairs whatever the number of services.
    #[test]
    fn a_client_inventing_service_names_cannot_grow_the_catalog_without_bound() {
        let catalog = OperationCatalog::new(3);
        for batch in 0..50 {
            let mut request = RequestOperations::default();
            for service in 0..10_000 {
                request.observe(&catalog, &format!("svc-{batch}-{service}"), "GET /", 2, 1);
            }
            request.finish(&catalog);
            let per_service = catalog.per_service.lock().expect("lock");
            assert!(per_service.pairs <= PER_SERVICE_CAP, "{}", per_service.pairs);
            assert!(per_service.names.len() <= PER_SERVICE_CAP);
        }
    }
}
