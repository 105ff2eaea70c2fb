//! How one global micro-batch is cut into shards and dealt to the replicas.
//!
//! A global micro-batch holds `per_device × replicas` samples (fewer at the end of an
//! epoch). It is cut into shards of `ceil(global / shards)` consecutive samples, each its
//! own forward/backward with its own dropout stream, keyed by the shard's slot: its index
//! in the global micro-batch. Replica `r` takes the samples `[r·per_device, (r+1)·per_device)`
//! and cuts them at the same length, so when the shard length divides `per_device` the
//! shards (their samples, streams and slots) are the same whatever the replica count:
//! 1 replica × 8 and 2 replicas × 4 compute the same shards, only elsewhere.

use std::ops::Range;

/// One shard: its slot (index among the micro-batch's shards, rank-major) and its samples
/// as positions in the global micro-batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub slot: usize,
    pub samples: Range<usize>,
}

/// Samples per shard for a global micro-batch of nominal size `global` (the epoch's last
/// one is cut at the same length, so it lines up with the full ones).
pub fn shard_len(global: usize, shards: usize) -> usize {
    global.div_ceil(shards.max(1)).max(1)
}

/// Whether the shards of `len` samples line up with every replica's boundary, i.e. the
/// cut is the one a single device would make.
pub fn aligned(len: usize, per_device: usize) -> bool {
    per_device.is_multiple_of(len)
}

/// The shards of each replica for a global micro-batch of `n` samples (`n ≤ per_device ×
/// replicas`), cut every `len` samples. Replicas past the data get none.
pub fn deal(n: usize, per_device: usize, replicas: usize, len: usize) -> Vec<Vec<Shard>> {
    let mut slot = 0;
    (0..replicas.max(1))
        .map(|r| {
            let lo = (r * per_device).min(n);
            let hi = ((r + 1) * per_device).min(n);
            (lo..hi)
                .step_by(len.max(1))
                .map(|a| {
                    let s = Shard {
                        slot,
                        samples: a..(a + len).min(hi),
                    };
                    slot += 1;
                    s
                })
                .collect()
        })
        .collect()
}

/// Contiguous, near-equal chunks of `0..n` for `parts` workers (the first ones one longer).
pub fn chunks(n: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.max(1);
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|p| {
            let len = base + usize::from(p < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(d: &[Vec<Shard>]) -> Vec<(usize, Range<usize>)> {
        d.iter()
            .flatten()
            .map(|s| (s.slot, s.samples.clone()))
            .collect()
    }

    #[test]
    fn one_by_eight_and_two_by_four_cut_the_same_shards() {
        let len = shard_len(8, 4);
        assert_eq!(len, 2);
        let one = deal(8, 8, 1, len);
        let two = deal(8, 4, 2, len);
        let four = deal(8, 2, 4, len);
        assert_eq!(flat(&one), flat(&two));
        assert_eq!(flat(&one), flat(&four));
        assert_eq!(
            flat(&two),
            [(0, 0..2), (1, 2..4), (2, 4..6), (3, 6..8)].map(|(j, r)| (j, r))
        );
        assert_eq!(two[1].iter().map(|s| s.slot).collect::<Vec<_>>(), [2, 3]);
        assert!(aligned(len, 4) && aligned(len, 2) && !aligned(len, 1));
    }

    #[test]
    fn the_epochs_last_micro_batch_keeps_the_cut() {
        // 5 samples left of a global batch of 8: shards 0..2, 2..4, 4..5 on any layout.
        let len = shard_len(8, 4);
        let one = deal(5, 8, 1, len);
        let two = deal(5, 4, 2, len);
        assert_eq!(flat(&one), [(0, 0..2), (1, 2..4), (2, 4..5)]);
        assert_eq!(flat(&one), flat(&two));
        // Replicas past the data get nothing.
        let four = deal(3, 2, 4, len);
        assert_eq!(four.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 0, 0]);
    }

    #[test]
    fn a_length_that_does_not_divide_the_per_device_batch_cuts_at_the_replica() {
        // 8 replicas × 1 at shards of 2: each replica's sample is its own shard.
        let d = deal(8, 1, 8, 2);
        assert_eq!(d.iter().map(Vec::len).collect::<Vec<_>>(), [1; 8]);
        assert_eq!(
            d[7][0],
            Shard {
                slot: 7,
                samples: 7..8
            }
        );
        // 3 per device at shards of 2: 0..2, 2..3 | 3..5, 5..6.
        assert_eq!(
            flat(&deal(6, 3, 2, 2)),
            [(0, 0..2), (1, 2..3), (2, 3..5), (3, 5..6)]
        );
    }

    #[test]
    fn chunks_cover_in_order() {
        assert_eq!(chunks(7, 3), [0..3, 3..5, 5..7]);
        assert_eq!(chunks(2, 4), [0..1, 1..2, 2..2, 2..2]);
        assert_eq!(chunks(0, 2), [0..0, 0..0]);
    }
}
