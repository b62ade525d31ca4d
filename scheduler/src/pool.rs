//! The GPU pool (M4): nodes, each with cards of one model; first-fit placement.

use std::collections::HashMap;

use ledger::event::Placement;
use serde::{Deserialize, Serialize};

/// Most nodes a pool may have; a real cluster of this product has dozens.
pub const MAX_NODES: usize = 100_000;
/// Most cards one node may have.
pub const MAX_CARDS_PER_NODE: u32 = 1_024;

/// A node as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub node: String,
    pub model: String,
    pub cards: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub node: String,
    pub model: String,
    pub cards: u32,
    pub free: u32,
    /// Cards held by leases. Above `cards` only when the pool shrank under running leases
    /// (a restart with a smaller pool file): the node then gives nothing until enough of
    /// them end.
    pub used: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    #[error("pool: {0}")]
    Invalid(String),
}

/// Capacity and use of one model's cards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelUse {
    pub model: String,
    pub cards: u32,
    pub free: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pool {
    nodes: Vec<Node>,
    #[serde(skip)]
    by_name: HashMap<String, usize>,
}

impl Pool {
    /// A pool from its node list, in placement order. `models` are the catalog's model ids.
    pub fn new(specs: &[NodeSpec], models: &[&str]) -> Result<Pool, PoolError> {
        if specs.is_empty() || specs.len() > MAX_NODES {
            return Err(PoolError::Invalid(format!(
                "a pool has 1 to {MAX_NODES} nodes (with none, every lease would wait forever)"
            )));
        }
        let mut pool = Pool {
            nodes: Vec::with_capacity(specs.len()),
            by_name: HashMap::new(),
        };
        for spec in specs {
            if spec.node.is_empty() || spec.node.len() > 128 {
                return Err(PoolError::Invalid("node names are 1 to 128 bytes".into()));
            }
            if !models.contains(&spec.model.as_str()) {
                return Err(PoolError::Invalid(format!(
                    "unknown GPU model {:?}",
                    spec.model
                )));
            }
            if spec.cards == 0 || spec.cards > MAX_CARDS_PER_NODE {
                return Err(PoolError::Invalid(format!(
                    "node {:?}: cards must be 1 to {MAX_CARDS_PER_NODE}",
                    spec.node
                )));
            }
            if pool
                .by_name
                .insert(spec.node.clone(), pool.nodes.len())
                .is_some()
            {
                return Err(PoolError::Invalid(format!("node {:?} twice", spec.node)));
            }
            pool.nodes.push(Node {
                node: spec.node.clone(),
                model: spec.model.clone(),
                cards: spec.cards,
                free: spec.cards,
                used: 0,
            });
        }
        Ok(pool)
    }

    /// `nodes` nodes of `cards` cards for each model, named `<model>-n<i>`.
    pub fn uniform(models: &[&str], nodes: usize, cards: u32) -> Result<Pool, PoolError> {
        let specs: Vec<NodeSpec> = models
            .iter()
            .flat_map(|model| {
                (1..=nodes).map(move |index| NodeSpec {
                    node: format!("{model}-n{index}"),
                    model: (*model).to_string(),
                    cards,
                })
            })
            .collect();
        Pool::new(&specs, models)
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// M4: a worker's cards are on one node; workers are placed first-fit in pool order.
    /// `None` when they do not all fit now.
    pub fn place(
        &self,
        model: &str,
        cards_per_worker: u32,
        workers: u32,
    ) -> Option<Vec<Placement>> {
        let free = self.nodes.iter().map(|node| node.free).collect();
        self.first_fit(free, model, cards_per_worker, workers)
    }

    /// Whether the request would fit in this pool with every card free: one that would not
    /// can only wait forever, so it is refused rather than queued.
    pub fn can_ever_place(&self, model: &str, cards_per_worker: u32, workers: u32) -> bool {
        let free = self.nodes.iter().map(|node| node.cards).collect();
        self.first_fit(free, model, cards_per_worker, workers)
            .is_some()
    }

    fn first_fit(
        &self,
        mut free: Vec<u32>,
        model: &str,
        cards_per_worker: u32,
        workers: u32,
    ) -> Option<Vec<Placement>> {
        let mut placement: Vec<Placement> = Vec::new();
        for _ in 0..workers {
            let index =
                self.nodes.iter().enumerate().position(|(index, node)| {
                    node.model == model && free[index] >= cards_per_worker
                })?;
            free[index] -= cards_per_worker;
            let node = &self.nodes[index].node;
            match placement.iter_mut().find(|item| &item.node == node) {
                Some(item) => item.cards += cards_per_worker,
                None => placement.push(Placement {
                    node: node.clone(),
                    cards: cards_per_worker,
                }),
            }
        }
        Some(placement)
    }

    /// Marks cards taken. Placements on nodes no longer in the pool are ignored; beyond a
    /// node's cards (it shrank across a restart) they are counted, so the node stays full
    /// until enough of them are given back (I4).
    pub fn take(&mut self, placement: &[Placement]) {
        for item in placement {
            if let Some(&index) = self.by_name.get(&item.node) {
                let node = &mut self.nodes[index];
                node.used = node.used.saturating_add(item.cards);
                node.free = node.cards.saturating_sub(node.used);
            }
        }
    }

    /// Returns cards.
    pub fn give_back(&mut self, placement: &[Placement]) {
        for item in placement {
            if let Some(&index) = self.by_name.get(&item.node) {
                let node = &mut self.nodes[index];
                node.used = node.used.saturating_sub(item.cards);
                node.free = node.cards.saturating_sub(node.used);
            }
        }
    }

    /// Cards and free cards per model, in the order models first appear.
    pub fn use_by_model(&self) -> Vec<ModelUse> {
        let mut uses: Vec<ModelUse> = Vec::new();
        for node in &self.nodes {
            match uses.iter_mut().find(|entry| entry.model == node.model) {
                Some(entry) => {
                    entry.cards += node.cards;
                    entry.free += node.free;
                }
                None => uses.push(ModelUse {
                    model: node.model.clone(),
                    cards: node.cards,
                    free: node.free,
                }),
            }
        }
        uses
    }

    /// Cards in use over the whole pool (I4: never above the pool's cards).
    pub fn cards_in_use(&self) -> u32 {
        self.nodes.iter().map(|node| node.used).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        let specs = vec![
            NodeSpec {
                node: "a".into(),
                model: "dc100-80g".into(),
                cards: 4,
            },
            NodeSpec {
                node: "b".into(),
                model: "dc100-40g".into(),
                cards: 8,
            },
            NodeSpec {
                node: "c".into(),
                model: "dc100-80g".into(),
                cards: 8,
            },
        ];
        Pool::new(&specs, &["dc100-40g", "dc100-80g"]).expect("valid pool")
    }

    #[test]
    fn r_m4_workers_are_placed_first_fit_each_on_one_node() {
        let mut pool = pool();
        let first = pool.place("dc100-80g", 3, 1).expect("fits on a");
        assert_eq!(
            first,
            vec![Placement {
                node: "a".into(),
                cards: 3
            }]
        );
        pool.take(&first);
        let second = pool.place("dc100-80g", 2, 2).expect("fits on c");
        assert_eq!(
            second,
            vec![Placement {
                node: "c".into(),
                cards: 4
            }]
        );
        pool.take(&second);
        assert_eq!(pool.place("dc100-80g", 5, 1), None, "no node has 5 free");
        assert_eq!(
            pool.place("dc100-80g", 1, 1).map(|p| p[0].node.clone()),
            Some("a".into())
        );
        pool.give_back(&first);
        assert_eq!(pool.cards_in_use(), 4);
    }

    #[test]
    fn r_i4_a_node_that_shrank_under_running_leases_stays_full_until_they_end() {
        let mut pool = pool();
        // Node "a" has 4 cards; 6 are held on it (the pool file shrank across a restart).
        let held = [Placement {
            node: "a".into(),
            cards: 3,
        }];
        pool.take(&held);
        pool.take(&held);
        assert_eq!(pool.nodes()[0].free, 0);
        pool.give_back(&held);
        assert_eq!(pool.nodes()[0].free, 1, "3 still held on 4 cards");
        assert_eq!(
            pool.place("dc100-80g", 2, 1).map(|p| p[0].node.clone()),
            Some("c".into())
        );
        pool.give_back(&held);
        assert_eq!(pool.nodes()[0].free, 4);
    }

    #[test]
    fn r_m4_pool_config_is_checked() {
        let bad = |node: &str, model: &str, cards| {
            let spec = NodeSpec {
                node: node.into(),
                model: model.into(),
                cards,
            };
            Pool::new(&[spec.clone(), spec], &["dc100-80g"]).is_err()
        };
        assert!(bad("a", "dc100-80g", 1), "duplicate node");
        assert!(bad("a", "h100", 1), "unknown model");
        assert!(bad("a", "dc100-80g", 0), "no cards");
        assert!(bad("", "dc100-80g", 1), "no name");
        assert!(Pool::new(&[], &["dc100-80g"]).is_err(), "no node at all");
    }
}
