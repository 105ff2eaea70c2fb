//! Where device-bound stages run, and how many CPU threads each running stage may use.
//!
//! GPUs are exclusive: one device-bound stage per GPU at a time (a stage may hold several,
//! e.g. a data-parallel training). The CPU is shared: with `--jobs N` it offers N slots
//! for each slot the largest group needs, and the stages running at the same time split the cores
//! between them (each runs in its own rayon pool, which Burn's Flex backend and our data
//! code use for their parallel loops), so N trainings do not each start one thread per
//! core and thrash.

use crate::backend::{CudaProbe, cuda_probe};

/// The slots device-bound stages are dispatched to, one stage per slot at a time.
///
/// The experiment's `devices` list when it has one; else from the model's `device`:
/// `cpu` → `jobs × group` CPU slots (`group`: the most slots one stage holds, so `jobs`
/// such stages fit side by side); `auto` → every visible GPU (`gpus()` of them, asked only
/// then), or those CPU slots when there is none; `cuda` / `cuda:N` → that one device.
pub fn device_slots(
    devices: &[String],
    model_device: &str,
    (jobs, group): (usize, usize),
    gpus: impl FnOnce() -> usize,
) -> Vec<String> {
    if !devices.is_empty() {
        return devices.to_vec();
    }
    let cpu = vec!["cpu".to_string(); jobs.max(1) * group.max(1)];
    match model_device {
        "auto" => match gpus() {
            0 => cpu,
            n => (0..n).map(|i| format!("cuda:{i}")).collect(),
        },
        "cpu" => cpu,
        "cuda" | "gpu" => vec!["cuda:0".into()],
        other => vec![other.to_string()],
    }
}

/// GPUs this process can use (the driver's count, which honours `CUDA_VISIBLE_DEVICES`).
pub fn visible_gpus() -> usize {
    match cuda_probe() {
        CudaProbe::Available { devices, .. } => *devices,
        CudaProbe::NoDriver(_) | CudaProbe::NoGpu(_) => 0,
    }
}

/// Threads for a stage starting while `width` stages (itself included) are expected to
/// run side by side, out of `total` (the global rayon pool: `RAYON_NUM_THREADS` or the
/// cores this process may use). `None`: all of them, no pool of its own needed.
pub fn thread_share(total: usize, width: usize) -> Option<usize> {
    let width = width.max(1);
    (width > 1 && total > 1).then(|| (total / width).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn slots_follow_the_devices_list_then_the_model_device() {
        let listed = s(&["cuda:1", "cuda:3"]);
        let never = || -> usize { panic!("no GPU probe unless device = \"auto\"") };
        assert_eq!(device_slots(&listed, "auto", (4, 2), never), listed);
        assert_eq!(
            device_slots(&[], "cpu", (3, 1), never),
            s(&["cpu", "cpu", "cpu"])
        );
        assert_eq!(device_slots(&[], "auto", (2, 1), || 0), s(&["cpu", "cpu"]));
        assert_eq!(
            device_slots(&[], "auto", (1, 1), || 2),
            s(&["cuda:0", "cuda:1"])
        );
        assert_eq!(device_slots(&[], "cuda", (4, 1), never), s(&["cuda:0"]));
        assert_eq!(device_slots(&[], "cuda:1", (4, 1), never), s(&["cuda:1"]));
        // Two CPU jobs of 2-replica trainings: four slots, two such trainings at a time.
        assert_eq!(device_slots(&[], "cpu", (2, 2), never), s(&["cpu"; 4]));
        assert_eq!(device_slots(&[], "auto", (1, 2), || 0), s(&["cpu"; 2]));
    }

    #[test]
    fn cores_are_split_between_concurrent_stages() {
        assert_eq!(thread_share(16, 1), None);
        assert_eq!(thread_share(16, 2), Some(8));
        assert_eq!(thread_share(16, 3), Some(5));
        assert_eq!(thread_share(2, 4), Some(1));
        assert_eq!(thread_share(1, 4), None);
    }
}
