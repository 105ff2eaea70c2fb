//! Which samples each optimizer step sees: a per-epoch shuffle seeded from `data_seed`
//! and the split of an epoch's micro-batches into gradient-accumulation groups.
//!
//! Follows transformers ≥ 4.46 `Trainer._inner_training_loop`: an epoch has
//! `ceil(n / batch)` micro-batches (the last one may be short), grouped by `accum`; the last
//! group of an epoch holds the remainder and still makes an optimizer step.
//! The shuffle is our own (ChaCha8 seeded with `data_seed + epoch`, like accelerate's
//! `SeedableRandomSampler` reseeding per epoch); torch's permutation is not reproduced.
//!
//! Data parallel (N replicas, `per_device` each): the plan is over global micro-batches of
//! `per_device × N` samples. accelerate gives rank r the epoch's batches r, r + N, … of
//! `per_device` (`BatchSamplerShard`, one permutation for every rank), so global micro-batch k
//! is the epoch order's samples `[k·N·per_device, (k+1)·N·per_device)`, rank r's being the
//! r-th `per_device` of them; and a rank's dataloader has `ceil(ceil(n / per_device) / N)`
//! batches, which equals `ceil(n / (per_device · N))`: the step counts here are the Trainer's.
//! The epoch's last global micro-batch, when short, stays short (accelerate's `even_batches`
//! would top the ranks up with the epoch's first samples): the result does not depend on N.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use std::ops::Range;

/// Sample order of `epoch` for a split of `n` samples.
pub fn epoch_order(n: usize, data_seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(data_seed.wrapping_add(epoch as u64));
    order.shuffle(&mut rng);
    order
}

/// Micro-batch and accumulation layout of one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochPlan {
    /// Micro-batches as ranges into the epoch order.
    pub micro: Vec<Range<usize>>,
    /// Accumulation groups as ranges into `micro`; one optimizer step each.
    pub groups: Vec<Range<usize>>,
}

impl EpochPlan {
    pub fn new(n: usize, batch: usize, accum: usize) -> Self {
        let micro: Vec<Range<usize>> = (0..n)
            .step_by(batch)
            .map(|s| s..(s + batch).min(n))
            .collect();
        let groups = (0..micro.len())
            .step_by(accum)
            .map(|s| s..(s + accum).min(micro.len()))
            .collect();
        Self { micro, groups }
    }

    /// Optimizer steps per epoch: `ceil(ceil(n / batch) / accum)`.
    pub fn steps(&self) -> usize {
        self.groups.len()
    }

    /// transformers' `state.epoch` after group `g`: `epoch + micro_done / micro_per_epoch`.
    pub fn epoch_after(&self, epoch: usize, g: usize) -> f64 {
        epoch as f64 + self.groups[g].end as f64 / self.micro.len() as f64
    }
}

/// `max_steps`: the explicit value when > 0, else `ceil(epochs · steps_per_epoch)`
/// (transformers rounds the fractional-epoch product up).
pub fn max_steps(explicit: i64, epochs: f64, steps_per_epoch: usize) -> usize {
    if explicit > 0 {
        explicit as usize
    } else {
        (epochs * steps_per_epoch as f64).ceil() as usize
    }
}

/// Sample order across epochs, from ms-swift's two flags: `train_dataloader_shuffle`
/// reshuffles every epoch; without it, `dataset_shuffle` (the dataset shuffled once with
/// `data_seed` before training) gives one fixed shuffled order; neither: file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shuffle {
    EachEpoch,
    Once,
    FileOrder,
}

impl Shuffle {
    pub fn from_flags(dataset_shuffle: bool, train_dataloader_shuffle: bool) -> Self {
        match (dataset_shuffle, train_dataloader_shuffle) {
            (_, true) => Self::EachEpoch,
            (true, false) => Self::Once,
            (false, false) => Self::FileOrder,
        }
    }

    /// The order of epoch `epoch` over `n` samples.
    pub fn order(self, n: usize, data_seed: u64, epoch: usize) -> Vec<usize> {
        match self {
            Self::EachEpoch => epoch_order(n, data_seed, epoch),
            Self::Once => epoch_order(n, data_seed, 0),
            Self::FileOrder => (0..n).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_flags_pick_the_order() {
        let each = Shuffle::from_flags(false, true);
        assert_eq!(each, Shuffle::EachEpoch);
        assert_ne!(each.order(20, 42, 0), each.order(20, 42, 1));
        let once = Shuffle::from_flags(true, false);
        assert_eq!(once.order(20, 42, 0), once.order(20, 42, 3));
        assert_ne!(once.order(20, 42, 0), (0..20).collect::<Vec<_>>());
        assert_eq!(
            Shuffle::from_flags(false, false).order(5, 42, 2),
            [0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn shuffle_is_deterministic_and_changes_per_epoch() {
        let a = epoch_order(50, 42, 0);
        assert_eq!(a, epoch_order(50, 42, 0));
        assert_ne!(a, epoch_order(50, 42, 1));
        assert_ne!(a, epoch_order(50, 43, 0));
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn last_partial_group_makes_a_step() {
        // 11 samples, batch 2 → 6 micro-batches (last has 1); accum 4 → groups [0..4, 4..6].
        let p = EpochPlan::new(11, 2, 4);
        assert_eq!(p.micro.len(), 6);
        assert_eq!(p.micro[5], 10..11);
        assert_eq!(p.groups, vec![0..4, 4..6]);
        assert_eq!(p.steps(), 2);
        assert!((p.epoch_after(0, 0) - 4.0 / 6.0).abs() < 1e-15);
        assert_eq!(p.epoch_after(2, 1), 3.0);
    }

    #[test]
    fn max_steps_rule() {
        // ceil(len/(batch·accum)) per epoch, times epochs.
        assert_eq!(max_steps(-1, 3.0, EpochPlan::new(100, 8, 2).steps()), 21);
        assert_eq!(max_steps(-1, 1.5, 7), 11);
        assert_eq!(max_steps(5, 3.0, 7), 5);
    }
}
