//! Where device-bound stages run, and how many CPU threads each running stage may use.
//!
//! GPUs are exclusive: one device-bound stage per GPU at a time (a stage may hold several,
//! e.g. a data-parallel training). The CPU is shared: with `--jobs N` it offers N slots
//! for each slot the largest group needs, and the stages running at the same time split the cores
//! between them (each runs in its own rayon pool, which Burn's Flex backend and our data
//! code use for their parallel loops), so N trainings do not each start one thread per
//! core and thrash. How many GPUs there are comes from the caller (`backend::visible_gpus`
//! in the binary).

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

/// The kind of device (`cpu` or `cuda`) device-bound stages will run on: that of the slots
/// [`device_slots`] makes (an experiment's `devices` never mixes the two kinds).
pub fn device_kind(
    devices: &[String],
    model_device: &str,
    gpus: impl FnOnce() -> usize,
) -> &'static str {
    let slots = device_slots(devices, model_device, (1, 1), gpus);
    if slots.iter().all(|s| s == "cpu") {
        "cpu"
    } else {
        "cuda"
    }
}

/// How the caller counts the GPUs this process can use; asked only when a model's `device`
/// is `auto` (the executor probes no hardware itself).
pub type GpuCount = fn() -> usize;

/// A [`GpuCount`] for callers that never use a GPU (tests, CPU-only tools).
pub fn no_gpus() -> usize {
    0
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
    fn the_device_kind_follows_the_slots() {
        let never = || -> usize { panic!("no GPU probe unless device = \"auto\"") };
        assert_eq!(device_kind(&s(&["cuda:1"]), "cpu", never), "cuda");
        assert_eq!(device_kind(&s(&["cpu"]), "auto", never), "cpu");
        assert_eq!(device_kind(&[], "cpu", never), "cpu");
        assert_eq!(device_kind(&[], "auto", || 0), "cpu");
        assert_eq!(device_kind(&[], "auto", || 2), "cuda");
        assert_eq!(device_kind(&[], "cuda:3", never), "cuda");
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
