//! The train phase with `--nproc-per-node N`: N replicas of the model (one per device, or
//! several on one GPU), each taking `--batch` samples per step of the trainer's own
//! data-parallel optimizer step (`Run::train`). Here: where the replicas go, and how their
//! throughput is counted (every replica's samples, so runs at N = 1, 2, 4, 8 read as a
//! scaling curve).

use super::{BenchError, BenchResult, CUDA_PEAK_TFLOPS};
use crate::backend::{CudaProbe, cuda_probe};

/// CUDA ordinals of the replicas: `listed` (`cuda:N` entries), else `first`, `first + 1`, …
/// when that many GPUs are visible, else all on `first` (replicas sharing one GPU still run
/// the whole data-parallel path).
pub fn replica_gpus(n: usize, listed: &[String], first: usize) -> Result<Vec<usize>, BenchError> {
    if !listed.is_empty() {
        if listed.len() != n {
            return Err(BenchError::Args(format!(
                "--replica-devices lists {} devices for --nproc-per-node {n}",
                listed.len()
            )));
        }
        return listed
            .iter()
            .map(|d| {
                d.strip_prefix("cuda:")
                    .and_then(|i| i.parse().ok())
                    .ok_or_else(|| {
                        BenchError::Args(format!("--replica-devices entry {d:?} (valid: cuda:N)"))
                    })
            })
            .collect();
    }
    let visible = match cuda_probe() {
        CudaProbe::Available { devices, .. } => *devices,
        _ => 0,
    };
    Ok(if first + n <= visible {
        (first..first + n).collect()
    } else {
        vec![first; n]
    })
}

/// Count every replica's samples in a train result measured on `devices` (one per
/// replica), and the MFU over the distinct devices.
pub(super) fn count_replicas<D: PartialEq>(r: &mut BenchResult, devices: &[D]) {
    let n = devices.len();
    let mut distinct: Vec<&D> = Vec::new();
    for d in devices {
        if !distinct.contains(&d) {
            distinct.push(d);
        }
    }
    r.replicas = n;
    r.samples_per_s *= n as f64;
    r.tokens_per_s *= n as f64;
    r.achieved_tflops *= n as f64;
    r.peak_tflops = r
        .peak_tflops
        .map(|_| CUDA_PEAK_TFLOPS * distinct.len() as f64);
    r.mfu = r.peak_tflops.map(|p| r.achieved_tflops / p);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{BenchArgs, BenchMode, run_bench};

    #[test]
    fn two_replicas_on_the_cpu_time_the_data_parallel_step() {
        let args = BenchArgs {
            steps: 3,
            batch: 2,
            mode: BenchMode::Train,
            replicas: 2,
            ..BenchArgs::tiny_cpu()
        };
        let r = run_bench(&args).unwrap();
        let [train] = &r.results[..] else {
            panic!("one phase expected")
        };
        assert_eq!(
            (train.mode, train.replicas, train.workload.batch),
            ("train", 2, 2)
        );
        let per_step = 1e3 / train.step_ms;
        assert!(
            (train.samples_per_s / per_step - 4.0).abs() < 1e-9,
            "2 replicas × 2"
        );
        let loss = train.loss.unwrap();
        assert!(loss.is_finite() && loss < (11f64).ln(), "{loss}");
    }

    #[test]
    fn replica_devices_are_listed_or_counted() {
        let s = |v: &[&str]| v.iter().map(|d| d.to_string()).collect::<Vec<_>>();
        assert_eq!(
            replica_gpus(2, &s(&["cuda:0", "cuda:0"]), 0).unwrap(),
            [0, 0]
        );
        assert_eq!(
            replica_gpus(2, &s(&["cuda:3", "cuda:1"]), 0).unwrap(),
            [3, 1]
        );
        let e = replica_gpus(3, &s(&["cuda:0"]), 0).unwrap_err().to_string();
        assert!(e.contains("lists 1 devices for --nproc-per-node 3"), "{e}");
        let e = replica_gpus(1, &s(&["gpu0"]), 0).unwrap_err().to_string();
        assert!(e.contains("valid: cuda:N"), "{e}");
        // Without GPUs enough: every replica on the first.
        if !matches!(cuda_probe(), CudaProbe::Available { devices, .. } if *devices >= 4) {
            assert_eq!(replica_gpus(4, &[], 0).unwrap(), [0; 4]);
        }
    }
}
