//! The application layer both drivers share: what a user names (a `beam://` address or a
//! name) → the service's verified record → a route.
//!
//! [`Resolver`] is a small state machine over the DHT's record lookups: a name takes two (the
//! name record, then the service record of the peer it points at), an address one. [`Node`]
//! runs it ([`Node::resolve`]) and reports [`Event::Resolved`]; the simulator's workload and
//! `beam connect` both call exactly this.
//!
//! [`Node`]: crate::Node
//! [`Node::resolve`]: crate::Node::resolve
//! [`Event::Resolved`]: crate::Event::Resolved

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::dht::{QueryId, QueryStats};
use crate::id::{AddressError, PeerId};
use crate::record::{Record, ServiceRecord, valid_name};

/// What a user names: a service by its address or by its name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ServiceRef {
    /// `beam://…`: the service's peer id.
    Peer(PeerId),
    /// A name from a name record (first come, first served).
    Name(String),
}

/// Why a text is neither a `beam://` address nor a name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceRefError {
    /// It starts like an address but is not one.
    #[error("{0}")]
    BadAddress(AddressError),
    /// It is not a valid name.
    #[error(
        "`{0}` is neither a beam:// address nor a name (names are 1–63 of a-z, 0-9 and '-', not \
         starting or ending with '-')"
    )]
    BadName(String),
}

impl FromStr for ServiceRef {
    type Err = ServiceRefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("beam://") {
            return s
                .parse::<PeerId>()
                .map(ServiceRef::Peer)
                .map_err(ServiceRefError::BadAddress);
        }
        if valid_name(s) {
            Ok(ServiceRef::Name(s.to_string()))
        } else {
            Err(ServiceRefError::BadName(s.to_string()))
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceRef::Peer(p) => write!(f, "{p}"),
            ServiceRef::Name(n) => f.write_str(n),
        }
    }
}

/// Identifies a [`Node::resolve`](crate::Node::resolve); its event carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResolveId(pub u64);

/// Why a service could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// No live name record for the name.
    #[error("no service is named `{0}` (no live name record found in the DHT)")]
    NameNotFound(String),
    /// No live service record for the peer: the service is offline or never published.
    #[error("{0} has no live service record: the service is offline or has not published yet")]
    ServiceNotFound(PeerId),
    /// The DHT refused to start a lookup.
    #[error("the DHT cannot start a lookup now: {0}")]
    Busy(String),
}

/// Where a resolve is.
#[derive(Clone, Debug)]
enum Stage {
    Name(String),
    Service(PeerId),
}

/// What the resolver wants next after a lookup finished.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Look up the service record of this peer, continuing `id`.
    LookUpService(ResolveId, PeerId),
    /// `id` is finished; the stats are those of its last lookup.
    Done(ResolveId, Result<ServiceRecord, ResolveError>, QueryStats),
}

/// Resolves in flight, by the DHT query each waits for. Bounded by the DHT's own query limit.
#[derive(Debug, Default)]
pub(crate) struct Resolver {
    next: u64,
    waiting: BTreeMap<QueryId, (ResolveId, Stage)>,
}

impl Resolver {
    /// A new resolve id.
    pub(crate) fn next_id(&mut self) -> ResolveId {
        self.next += 1;
        ResolveId(self.next)
    }

    /// `query` looks up what `what` names for resolve `id`.
    pub(crate) fn wait(&mut self, query: QueryId, id: ResolveId, what: &ServiceRef) {
        let stage = match what {
            ServiceRef::Peer(p) => Stage::Service(*p),
            ServiceRef::Name(n) => Stage::Name(n.clone()),
        };
        self.waiting.insert(query, (id, stage));
    }

    /// Whether `query` belongs to a resolve.
    pub(crate) fn owns(&self, query: &QueryId) -> bool {
        self.waiting.contains_key(query)
    }

    /// A record lookup finished (its record, if any, was verified by the DHT).
    pub(crate) fn on_record(
        &mut self,
        query: QueryId,
        record: Option<Record>,
        stats: QueryStats,
    ) -> Option<Step> {
        let (id, stage) = self.waiting.remove(&query)?;
        Some(match (stage, record) {
            (Stage::Name(_), Some(Record::Name(n))) => Step::LookUpService(id, n.body.peer),
            (Stage::Name(name), _) => Step::Done(id, Err(ResolveError::NameNotFound(name)), stats),
            (Stage::Service(peer), Some(Record::Service(s))) if s.body.peer == peer => {
                Step::Done(id, Ok(s.body), stats)
            }
            (Stage::Service(peer), _) => {
                Step::Done(id, Err(ResolveError::ServiceNotFound(peer)), stats)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses_and_names() {
        let kp = crate::Keypair::from_secret([7; 32]);
        let addr = kp.peer_id().to_string();
        assert_eq!(
            addr.parse::<ServiceRef>(),
            Ok(ServiceRef::Peer(kp.peer_id()))
        );
        assert_eq!(
            "demo-1".parse::<ServiceRef>(),
            Ok(ServiceRef::Name("demo-1".into()))
        );
        assert!(matches!(
            "beam://nope".parse::<ServiceRef>(),
            Err(ServiceRefError::BadAddress(_))
        ));
        assert!(matches!(
            "Not A Name".parse::<ServiceRef>(),
            Err(ServiceRefError::BadName(_))
        ));
        assert!("-x".parse::<ServiceRef>().is_err());
    }
}
