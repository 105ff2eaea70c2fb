//! Dispatch state of a run: which stages are ready (all upstream done), how many run,
//! and which device slots each device-bound stage holds (a group of k for a stage that
//! needs k, e.g. a data-parallel training). Pure bookkeeping, no threads.

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
    /// Device slots each node holds while it runs (0: not device-bound).
    need: Vec<usize>,
    ready: BTreeSet<(usize, NodeIndex)>,
    running: usize,
    jobs: usize,
    slots: Vec<(Slot, bool)>,
    stopped: bool,
}

impl Scheduler {
    /// `order` is a topological order of `graph`; `need[i]` is how many device slots node
    /// `i` holds while it runs (0: none); `devices` empty means one slot (`None`).
    pub fn new<N, E>(
        graph: &DiGraph<N, E>,
        order: &[NodeIndex],
        need: Vec<usize>,
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
            need,
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

    /// If `idx` can start now: the slots it would hold (the first free ones; none for a
    /// node that is not device-bound); `None` when it must wait.
    pub fn fits(&self, idx: NodeIndex) -> Option<Vec<usize>> {
        if self.running >= self.jobs {
            return None;
        }
        let need = self.need[idx.index()];
        let free: Vec<usize> = (0..self.slots.len())
            .filter(|&s| !self.slots[s].1)
            .take(need)
            .collect();
        (free.len() == need).then_some(free)
    }

    pub fn slot_device(&self, slot: usize) -> Slot {
        self.slots[slot].0.clone()
    }

    /// `idx` starts on a worker (holding `slots`).
    pub fn start(&mut self, idx: NodeIndex, slots: &[usize]) {
        self.ready.remove(&(self.rank[idx.index()], idx));
        self.running += 1;
        for &s in slots {
            self.slots[s].1 = true;
        }
    }

    /// `idx` is done without a worker (a cache hit).
    pub fn skip(&mut self, idx: NodeIndex) {
        self.ready.remove(&(self.rank[idx.index()], idx));
        self.release_children(idx);
    }

    /// A worker finished `idx`. After a failure nothing new is dispatched.
    pub fn finish(&mut self, idx: NodeIndex, slots: &[usize], ok: bool) {
        self.running -= 1;
        for &s in slots {
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
        let mut s = Scheduler::new(&g, &order, vec![0, 1, 1, 1], &devices, 8);
        assert_eq!(s.ready(), [d]);
        assert_eq!(s.fits(d), Some(vec![]));
        s.start(d, &[]);
        assert!(s.ready().is_empty());
        s.finish(d, &[], true);
        let mut ready = s.ready();
        ready.sort();
        assert_eq!(ready, ts);
        let a = s.fits(ts[0]).unwrap();
        s.start(ts[0], &a);
        let b = s.fits(ts[1]).unwrap();
        s.start(ts[1], &b);
        assert_eq!(
            (s.slot_device(a[0]), s.slot_device(b[0])),
            (Some("cuda:0".into()), Some("cuda:1".into()))
        );
        assert_eq!(s.fits(ts[2]), None, "both devices busy");
        s.finish(ts[1], &b, true);
        assert_eq!(s.fits(ts[2]), Some(b), "gets the freed device");
    }

    #[test]
    fn groups_of_two_on_eight_devices_run_four_at_a_time() {
        // data → six trainings needing 2 slots each and one export needing 1, on 8 devices.
        let mut g: DiGraph<(), ()> = DiGraph::new();
        let d = g.add_node(());
        let ts: Vec<NodeIndex> = (0..6).map(|_| g.add_node(())).collect();
        let e = g.add_node(());
        for t in ts.iter().chain([&e]) {
            g.add_edge(d, *t, ());
        }
        let order = petgraph::algo::toposort(&g, None).unwrap();
        let devices: Vec<String> = (0..8).map(|i| format!("cuda:{i}")).collect();
        let mut need = vec![0];
        need.extend([2; 6]);
        need.push(1);
        let mut s = Scheduler::new(&g, &order, need, &devices, 8);
        s.start(d, &[]);
        s.finish(d, &[], true);
        let mut held = Vec::new();
        for &t in &ts[..3] {
            let group = s.fits(t).expect("a free pair");
            s.start(t, &group);
            held.push(group);
        }
        // The export takes one device: 7 busy, and one free device is not a pair.
        let one = s.fits(e).unwrap();
        assert_eq!(one, [6]);
        s.start(e, &one);
        assert_eq!(held, [[0, 1], [2, 3], [4, 5]]);
        assert_eq!(s.fits(ts[3]), None, "a single free device");
        s.finish(e, &one, true);
        let group = s.fits(ts[3]).unwrap();
        assert_eq!(group, [6, 7]);
        s.start(ts[3], &group);
        assert_eq!(s.running(), 4, "four trainings at once");
        assert_eq!(s.fits(ts[4]), None, "all eight devices busy");
        // A freed pair takes the next training.
        s.finish(ts[1], &held[1], true);
        assert_eq!(s.fits(ts[4]), Some(vec![2, 3]));
    }

    #[test]
    fn jobs_cap_and_failure_stop() {
        let mut g: DiGraph<(), ()> = DiGraph::new();
        let a = g.add_node(());
        let b = g.add_node(());
        let c = g.add_node(());
        g.add_edge(a, c, ());
        let order = petgraph::algo::toposort(&g, None).unwrap();
        let mut s = Scheduler::new(&g, &order, vec![0; 3], &[], 1);
        s.start(a, &[]);
        assert_eq!(s.fits(b), None, "--jobs 1");
        s.finish(a, &[], false);
        assert!(s.ready().is_empty(), "nothing new after a failure");
        assert_eq!(s.running(), 0);
    }
}
