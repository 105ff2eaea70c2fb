//! Where device-bound stages run, and how many CPU threads each running stage may use.
//!
//! GPUs are exclusive: one device-bound stage per GPU at a time. The CPU is shared: with
//! `--jobs N` it offers N slots, and the stages running at the same time split the cores
//! between them (each runs in its own rayon pool, which Burn's Flex backend and our data
//! code use for their parallel loops), so N trainings do not each start one thread per
//! core and thrash.

use crate::backend::cuda_driver_present;

/// The slots device-bound stages are dispatched to, one stage per slot at a time.
///
/// The experiment's `devices` list when it has one; else from the model's `device`:
/// `cpu` → `jobs` CPU slots; `auto` → every visible GPU (`gpus` of them), or `jobs` CPU
/// slots when there is none; `cuda` / `cuda:N` → that one device.
pub fn device_slots(
    devices: &[String],
    model_device: &str,
    jobs: usize,
    gpus: usize,
) -> Vec<String> {
    if !devices.is_empty() {
        return devices.to_vec();
    }
    let cpu = || vec!["cpu".to_string(); jobs.max(1)];
    match model_device {
        "auto" if gpus > 0 => (0..gpus).map(|i| format!("cuda:{i}")).collect(),
        "auto" | "cpu" => cpu(),
        "cuda" => vec!["cuda:0".into()],
        other => vec![other.to_string()],
    }
}

/// GPUs this process can use: those the driver lists, narrowed by `CUDA_VISIBLE_DEVICES`
/// (whose parsing, like CUDA's, stops at the first entry that names no device).
pub fn visible_gpus() -> usize {
    if !cuda_driver_present() {
        return 0;
    }
    let installed = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .map(|d| d.count())
        .unwrap_or(1);
    count_visible(
        installed,
        std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
    )
}

fn count_visible(installed: usize, visible: Option<&str>) -> usize {
    let Some(list) = visible else {
        return installed;
    };
    list.split(',')
        .map(str::trim)
        .take_while(|e| {
            e.parse::<usize>().is_ok_and(|i| i < installed)
                || e.starts_with("GPU-")
                || e.starts_with("MIG-")
        })
        .count()
        .min(installed)
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
        assert_eq!(device_slots(&listed, "cpu", 4, 8), listed);
        assert_eq!(device_slots(&[], "cpu", 3, 8), s(&["cpu", "cpu", "cpu"]));
        assert_eq!(device_slots(&[], "auto", 2, 0), s(&["cpu", "cpu"]));
        assert_eq!(device_slots(&[], "auto", 1, 2), s(&["cuda:0", "cuda:1"]));
        assert_eq!(device_slots(&[], "cuda", 4, 2), s(&["cuda:0"]));
        assert_eq!(device_slots(&[], "cuda:1", 4, 2), s(&["cuda:1"]));
    }

    #[test]
    fn cuda_visible_devices_narrows_the_count() {
        assert_eq!(count_visible(4, None), 4);
        assert_eq!(count_visible(4, Some("")), 0);
        assert_eq!(count_visible(4, Some("2,3")), 2);
        assert_eq!(
            count_visible(4, Some("1,-1,2")),
            1,
            "stops at an invalid entry"
        );
        assert_eq!(count_visible(2, Some("0,5")), 1, "no such device");
        assert_eq!(count_visible(2, Some("GPU-8f2a,GPU-11c0")), 2);
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
