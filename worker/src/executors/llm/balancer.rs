//! Which inference node takes the next request: among the healthy nodes serving the model asked
//! for, the one with the fewest requests outstanding from this worker; ties go round robin.
//!
//! gRPC connections are long-lived, so a Kubernetes Service in front of the nodes would pin a
//! worker to one of them; the worker balances itself instead. The choice ([`choose`]) is pure;
//! [`Balancer`] keeps the nodes and hands out [`Lease`]s, which count as outstanding until
//! dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::node::Node;

/// What [`choose`] sees of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Candidate<'a> {
    /// SERVING on its health service, reachable, and its model known.
    pub healthy: bool,
    /// The model it serves (its `ModelInfo`), once known.
    pub model: Option<&'a str>,
    /// Requests this worker has sent it that have not ended.
    pub outstanding: usize,
    /// It refused this request already.
    pub refused: bool,
}

/// The index of the node to send a request to: healthy, serving `model` (any, when `None`), not
/// one that refused it already, with the fewest outstanding requests; among equals the first at
/// or after `start` (counted round), so that ties go round robin.
pub(super) fn choose(
    candidates: &[Candidate<'_>],
    model: Option<&str>,
    start: usize,
) -> Option<usize> {
    let n = candidates.len();
    (0..n)
        .map(|i| (start.wrapping_add(i)) % n)
        .filter(|&i| {
            let c = &candidates[i];
            c.healthy && !c.refused && model.is_none_or(|m| c.model == Some(m))
        })
        .min_by_key(|&i| candidates[i].outstanding)
}

/// Why no node could take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NoNode {
    /// No node serves the model asked for, of those whose model is known, and every node's model
    /// is known: waiting will not help.
    UnknownModel { available: Vec<String> },
    /// Nodes that may serve it are unhealthy, unreachable, or refused the request already.
    NoneReady { nodes: usize, healthy: usize },
}

/// The nodes this worker knows, by address.
#[derive(Debug, Default)]
pub(super) struct Balancer {
    nodes: RwLock<BTreeMap<SocketAddr, Arc<Node>>>,
    next: AtomicUsize,
}

/// A node chosen for one request: outstanding there until dropped.
#[derive(Debug)]
pub(super) struct Lease {
    node: Arc<Node>,
}

impl Lease {
    fn new(node: Arc<Node>) -> Self {
        node.outstanding.fetch_add(1, Ordering::SeqCst);
        Self { node }
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.node.outstanding.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Balancer {
    /// A node for a request that the nodes in `refused` have refused already.
    pub fn pick(
        &self,
        model: Option<&str>,
        refused: &BTreeSet<SocketAddr>,
    ) -> Result<Lease, NoNode> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let nodes: Vec<&Arc<Node>> = nodes.values().collect();
        let models: Vec<Option<String>> = nodes.iter().map(|n| n.model()).collect();
        let candidates: Vec<Candidate<'_>> = nodes
            .iter()
            .zip(&models)
            .map(|(node, model)| Candidate {
                healthy: node.is_healthy(),
                model: model.as_deref(),
                outstanding: node.outstanding.load(Ordering::SeqCst),
                refused: refused.contains(&node.addr),
            })
            .collect();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = choose(&candidates, model, start) {
            return Ok(Lease::new(nodes[i].clone()));
        }
        let known: BTreeSet<&str> = models.iter().flatten().map(String::as_str).collect();
        if let Some(model) = model
            && !nodes.is_empty()
            && models.iter().all(Option::is_some)
            && !known.contains(model)
        {
            return Err(NoNode::UnknownModel {
                available: known.into_iter().map(str::to_owned).collect(),
            });
        }
        Err(NoNode::NoneReady {
            nodes: nodes.len(),
            healthy: candidates.iter().filter(|c| c.healthy).count(),
        })
    }

    /// The nodes now: the addresses the names resolve to. Returns the nodes added (to watch) and
    /// those removed (to stop watching).
    pub fn update(
        &self,
        addrs: &BTreeSet<SocketAddr>,
        make: impl Fn(SocketAddr) -> Arc<Node>,
    ) -> (Vec<Arc<Node>>, Vec<Arc<Node>>) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<SocketAddr> = nodes
            .keys()
            .filter(|a| !addrs.contains(a))
            .copied()
            .collect();
        let removed = gone.iter().filter_map(|a| nodes.remove(a)).collect();
        let mut added = Vec::new();
        for addr in addrs {
            if !nodes.contains_key(addr) {
                let node = make(*addr);
                nodes.insert(*addr, node.clone());
                added.push(node);
            }
        }
        (added, removed)
    }

    /// Every node, for logs and tests.
    pub fn nodes(&self) -> Vec<Arc<Node>> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        nodes.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(healthy: bool, model: &'static str, outstanding: usize) -> Candidate<'static> {
        Candidate {
            healthy,
            model: Some(model),
            outstanding,
            refused: false,
        }
    }

    #[test]
    fn the_least_outstanding_node_is_chosen() {
        let nodes = [node(true, "a", 3), node(true, "a", 1), node(true, "a", 2)];
        for start in 0..6 {
            assert_eq!(choose(&nodes, None, start), Some(1));
        }
    }

    #[test]
    fn ties_go_round_robin() {
        let nodes = [node(true, "a", 1), node(true, "a", 1), node(true, "a", 4)];
        let picks: Vec<_> = (0..4).map(|s| choose(&nodes, None, s)).collect();
        assert_eq!(picks, [Some(0), Some(1), Some(0), Some(0)]);
        let even = [node(true, "a", 0), node(true, "a", 0), node(true, "a", 0)];
        let picks: Vec<_> = (0..3).map(|s| choose(&even, None, s)).collect();
        assert_eq!(picks, [Some(0), Some(1), Some(2)]);
    }

    #[test]
    fn unhealthy_nodes_and_those_that_refused_are_skipped() {
        let mut nodes = [node(false, "a", 0), node(true, "a", 5), node(true, "a", 1)];
        nodes[2].refused = true;
        assert_eq!(choose(&nodes, None, 0), Some(1));
        nodes[1].healthy = false;
        assert_eq!(choose(&nodes, None, 0), None);
    }

    #[test]
    fn a_model_asked_for_narrows_the_choice() {
        let nodes = [
            node(true, "small", 0),
            node(true, "large", 7),
            node(true, "small", 1),
        ];
        assert_eq!(choose(&nodes, Some("large"), 0), Some(1));
        assert_eq!(choose(&nodes, Some("small"), 1), Some(0));
        assert_eq!(choose(&nodes, Some("other"), 0), None);
        let unknown = [Candidate {
            model: None,
            ..node(true, "x", 0)
        }];
        assert_eq!(choose(&unknown, Some("x"), 0), None);
        assert_eq!(choose(&unknown, None, 0), Some(0));
    }

    #[tokio::test]
    async fn leases_count_as_outstanding_until_dropped() {
        let balancer = Balancer::default();
        let addrs: BTreeSet<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let (added, removed) = balancer.update(&addrs, |a| Node::new(a, Default::default()));
        assert_eq!((added.len(), removed.len()), (2, 0));
        for node in &added {
            node.set_state_for_test(true, Some("m"));
        }
        let none = BTreeSet::new();
        let first = balancer.pick(None, &none).unwrap();
        let second = balancer.pick(None, &none).unwrap();
        assert_ne!(first.node().addr, second.node().addr, "least outstanding");
        let third = balancer.pick(None, &none).unwrap();
        drop(first);
        drop(second);
        drop(third);
        assert!(
            added
                .iter()
                .all(|n| n.outstanding.load(Ordering::SeqCst) == 0)
        );

        // A node that refused is skipped; with none left the answer says how many are healthy.
        let refused: BTreeSet<_> = addrs.iter().copied().collect();
        assert_eq!(
            balancer.pick(None, &refused).unwrap_err(),
            NoNode::NoneReady {
                nodes: 2,
                healthy: 2
            }
        );
        assert_eq!(
            balancer.pick(Some("other"), &none).unwrap_err(),
            NoNode::UnknownModel {
                available: vec!["m".into()]
            }
        );
        added[0].set_state_for_test(false, Some("m"));
        let only: BTreeSet<_> = [added[1].addr].into();
        assert!(
            balancer.pick(None, &only).is_err(),
            "the other is unhealthy"
        );

        // Gone from the name: removed.
        let one: BTreeSet<_> = [added[0].addr].into();
        let (added_now, removed) = balancer.update(&one, |a| Node::new(a, Default::default()));
        assert!(added_now.is_empty());
        assert_eq!(removed.len(), 1);
        assert_eq!(balancer.nodes().len(), 1);
    }
}
