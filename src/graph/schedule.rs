//! Dispatch state of a run: which stages are ready (all upstream done), how many run,
//! and which device slot each device-bound stage holds. Pure bookkeeping, no threads.

use std::collections::BTreeSet;

use petgraph::Direction;
use petgraph::graph::{DiGraph, NodeIndex};

/// A device slot: `Some("cuda:0")`, or `None` for "the model's configured device".
pub type Slot = Option<String>;

pub(crate) struct Scheduler {
    /// Position of each node in the topological order (dispatch priority).
    rank: Vec<usize>,
    waiting_on: Vec<usize>,
    children: Vec<Vec<NodeIndex>>,
    device_bound: Vec<bool>,
    ready: BTreeSet<(usize, NodeIndex)>,
    running: usize,
    jobs: usize,
    slots: Vec<(Slot, bool)>,
    stopped: bool,
}

impl Scheduler {
    /// `order` is a topological order of `graph`; `device_bound[i]` says whether node `i`
    /// needs a device slot; `devices` empty means one slot (`None`).
    pub fn new<N, E>(
        graph: &DiGraph<N, E>,
        order: &[NodeIndex],
        device_bound: Vec<bool>,
        devices: &[String],
        jobs: usize,
    ) -> Self {
        let n = graph.node_count();
        let mut rank = vec![0; n];
        for (r, i) in order.iter().enumerate() {
            rank[i.index()] = r;
        }
        let waiting_on: Vec<usize> = graph
            .node_indices()
            .map(|i| graph.neighbors_directed(i, Direction::Incoming).count())
            .collect();
        let children = graph
            .node_indices()
            .map(|i| graph.neighbors_directed(i, Direction::Outgoing).collect())
            .collect();
        let ready = graph
            .node_indices()
            .filter(|i| waiting_on[i.index()] == 0)
            .map(|i| (rank[i.index()], i))
            .collect();
        let slots = if devices.is_empty() {
            vec![(None, false)]
        } else {
            devices.iter().map(|d| (Some(d.clone()), false)).collect()
        };
        Scheduler {
            rank,
            waiting_on,
            children,
            device_bound,
            ready,
            running: 0,
            jobs: jobs.max(1),
            slots,
            stopped: false,
        }
    }

    /// Ready nodes in dispatch order (empty once stopped).
    pub fn ready(&self) -> Vec<NodeIndex> {
        if self.stopped {
            vec![]
        } else {
            self.ready.iter().map(|(_, i)| *i).collect()
        }
    }

    /// If `idx` can start now: `Some(slot index)` for a device-bound node, `Some(None)`
    /// for another; `None` when it must wait.
    pub fn fits(&self, idx: NodeIndex) -> Option<Option<usize>> {
        if self.running >= self.jobs {
            return None;
        }
        if !self.device_bound[idx.index()] {
            return Some(None);
        }
        self.slots.iter().position(|(_, busy)| !busy).map(Some)
    }

    pub fn slot_device(&self, slot: usize) -> Slot {
        self.slots[slot].0.clone()
    }

    /// `idx` starts on a worker (holding `slot`).
    pub fn start(&mut self, idx: NodeIndex, slot: Option<usize>) {
        self.ready.remove(&(self.rank[idx.index()], idx));
        self.running += 1;
        if let Some(s) = slot {
            self.slots[s].1 = true;
        }
    }

    /// `idx` is done without a worker (a cache hit).
    pub fn skip(&mut self, idx: NodeIndex) {
        self.ready.remove(&(self.rank[idx.index()], idx));
        self.release_children(idx);
    }

    /// A worker finished `idx`. After a failure nothing new is dispatched.
    pub fn finish(&mut self, idx: NodeIndex, slot: Option<usize>, ok: bool) {
        self.running -= 1;
        if let Some(s) = slot {
            self.slots[s].1 = false;
        }
        if ok {
            self.release_children(idx);
        } else {
            self.stopped = true;
        }
    }

    fn release_children(&mut self, idx: NodeIndex) {
        for c in self.children[idx.index()].clone() {
            self.waiting_on[c.index()] -= 1;
            if self.waiting_on[c.index()] == 0 {
                self.ready.insert((self.rank[c.index()], c));
            }
        }
    }

    pub fn running(&self) -> usize {
        self.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_bound_stages_take_one_slot_each() {
        // data → t1, t2, t3 (device-bound)
        let mut g: DiGraph<(), ()> = DiGraph::new();
        let d = g.add_node(());
        let ts: Vec<NodeIndex> = (0..3).map(|_| g.add_node(())).collect();
        for t in &ts {
            g.add_edge(d, *t, ());
        }
        let order = petgraph::algo::toposort(&g, None).unwrap();
        let devices = vec!["cuda:0".to_string(), "cuda:1".to_string()];
        let mut s = Scheduler::new(&g, &order, vec![false, true, true, true], &devices, 8);
        assert_eq!(s.ready(), [d]);
        assert_eq!(s.fits(d), Some(None));
        s.start(d, None);
        assert!(s.ready().is_empty());
        s.finish(d, None, true);
        let mut ready = s.ready();
        ready.sort();
        assert_eq!(ready, ts);
        let a = s.fits(ts[0]).unwrap().unwrap();
        s.start(ts[0], Some(a));
        let b = s.fits(ts[1]).unwrap().unwrap();
        s.start(ts[1], Some(b));
        assert_eq!(
            (s.slot_device(a), s.slot_device(b)),
            (Some("cuda:0".into()), Some("cuda:1".into()))
        );
        assert_eq!(s.fits(ts[2]), None, "both devices busy");
        s.finish(ts[1], Some(b), true);
        assert_eq!(s.fits(ts[2]), Some(Some(b)), "gets the freed device");
    }

    #[test]
    fn jobs_cap_and_failure_stop() {
        let mut g: DiGraph<(), ()> = DiGraph::new();
        let a = g.add_node(());
        let b = g.add_node(());
        let c = g.add_node(());
        g.add_edge(a, c, ());
        let order = petgraph::algo::toposort(&g, None).unwrap();
        let mut s = Scheduler::new(&g, &order, vec![false; 3], &[], 1);
        s.start(a, None);
        assert_eq!(s.fits(b), None, "--jobs 1");
        s.finish(a, None, false);
        assert!(s.ready().is_empty(), "nothing new after a failure");
        assert_eq!(s.running(), 0);
    }
}
