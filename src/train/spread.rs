//! Independent batches (an evaluation pass, scoring) spread over model copies: the batches
//! are the ones a single device would run, each computed alone, and the results come back
//! in batch order, so how they were spread never changes them.

use crate::train::shards::chunks;
use rayon::prelude::*;

/// Where the batches run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// One after another on the first copy.
    Serial,
    /// On the current rayon pool, one chunk of batches per thread (the CPU: replicas share
    /// the stage's cores, so the pool, not the replica count, sets the width).
    Pool,
    /// One OS thread per copy, each on its own device (GPUs: a thread waits on its device
    /// while the others keep theirs busy).
    Threads,
}

/// `f(copy, device, batch)` for every batch in `0..n`, results in batch order; the first
/// error wins. Copy `w` of `workers` takes a contiguous run of the batches, as ms-swift's
/// data-parallel inference shards a split contiguously.
pub fn map_batches<M, D, T, F>(
    workers: &[(M, D)],
    n: usize,
    spread: Spread,
    f: F,
) -> anyhow::Result<Vec<T>>
where
    M: Clone + Send,
    D: Clone + Send,
    T: Send,
    F: Fn(&M, &D, usize) -> anyhow::Result<T> + Sync,
{
    assert!(!workers.is_empty(), "at least one model copy");
    let run = |(m, d, range): (M, D, std::ops::Range<usize>)| -> anyhow::Result<Vec<T>> {
        range.map(|i| f(&m, &d, i)).collect()
    };
    let parts = match spread {
        Spread::Serial => 1,
        Spread::Pool => rayon::current_num_threads().clamp(1, n.max(1)),
        Spread::Threads => workers.len().clamp(1, n.max(1)),
    };
    let jobs: Vec<(M, D, std::ops::Range<usize>)> = chunks(n, parts)
        .into_iter()
        .enumerate()
        .map(|(p, r)| {
            let (m, d) = &workers[p * workers.len() / parts];
            (m.clone(), d.clone(), r)
        })
        .collect();
    let parts: Vec<anyhow::Result<Vec<T>>> = match spread {
        Spread::Serial => jobs.into_iter().map(run).collect(),
        Spread::Pool => jobs.into_par_iter().map(run).collect(),
        Spread::Threads => std::thread::scope(|s| {
            let run = &run;
            let handles: Vec<_> = jobs
                .into_iter()
                .map(|job| s.spawn(move || run(job)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        }),
    };
    let mut out = Vec::with_capacity(n);
    for p in parts {
        out.extend(p?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spread_gives_batch_order() {
        let workers = vec![(10usize, 'a'), (20, 'b'), (30, 'c')];
        let f = |m: &usize, _: &char, i: usize| Ok(i * 100 + m % 7);
        let serial = map_batches(&workers, 10, Spread::Serial, f).unwrap();
        assert_eq!(serial, (0..10).map(|i| i * 100 + 3).collect::<Vec<_>>());
        // Which copy ran a batch shows in the result (m % 7): contiguous runs per copy.
        let threads = map_batches(&workers, 10, Spread::Threads, |m, _, i| Ok((i, *m))).unwrap();
        let owners: Vec<usize> = threads.iter().map(|(_, m)| *m).collect();
        assert_eq!(owners, [10, 10, 10, 10, 20, 20, 20, 30, 30, 30]);
        assert_eq!(
            threads.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap()
            .install(|| map_batches(&workers, 10, Spread::Pool, |_, _, i| Ok(i)).unwrap());
        assert_eq!(pool, (0..10).collect::<Vec<_>>());
        assert!(
            map_batches(&workers, 0, Spread::Threads, f)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_first_error_is_returned() {
        let workers = vec![((), ()), ((), ())];
        let r = map_batches(&workers, 6, Spread::Threads, |_, _, i| {
            if i >= 2 {
                anyhow::bail!("batch {i}")
            }
            Ok(i)
        });
        assert_eq!(r.unwrap_err().to_string(), "batch 2");
    }
}
