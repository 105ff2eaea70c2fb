//! Backend aliases and device selection shared by every stage that runs a model.
//!
//! CUDA is linked dynamically (cubecl-cuda loads `libcuda.so.1` at first use and panics when it
//! is missing), so before touching a CUDA device we probe the driver ourselves: `dlopen` the
//! library, `cuInit(0)`, `cuDeviceGetCount`. None of these can abort or hang on a machine
//! without CUDA; they just return an error code.

use std::sync::OnceLock;

/// Pure-Rust CPU backend (tests and the embedded default).
pub type CpuBackend = burn::backend::Flex;
/// CUDA backend (NVRTC at run time; builds without CUDA installed).
pub type CudaBackend = burn::backend::Cuda<f32, i32>;
/// The CUDA device type of [`CudaBackend`].
pub type CudaDevice = burn::backend::cuda::CudaDevice;

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    /// CUDA device by ordinal.
    Cuda(usize),
}

impl DeviceKind {
    /// Burn's CUDA device for `Cuda(i)`; `None` for the CPU.
    pub fn cuda_device(self) -> Option<CudaDevice> {
        match self {
            DeviceKind::Cpu => None,
            DeviceKind::Cuda(index) => Some(CudaDevice { index }),
        }
    }
}

impl std::fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// A device spec that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device {0:?} (valid: \"cpu\", \"cuda\", \"cuda:N\", \"auto\")")]
    Unknown(String),
    #[error(
        "device = {spec:?} but no CUDA driver was found ({reason}); use device = \"cpu\" or \"auto\""
    )]
    NoDriver { spec: String, reason: String },
    #[error(
        "device = {spec:?} but the CUDA driver reports no usable GPU ({reason}); use device = \"cpu\" or \"auto\""
    )]
    NoGpu { spec: String, reason: String },
    #[error(
        "device = {spec:?} but only {count} CUDA device(s) are present (valid: cuda:0..cuda:{last})",
        last = count.saturating_sub(1)
    )]
    NoSuchGpu { spec: String, count: usize },
}

/// What the CUDA driver probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaProbe {
    /// Driver loaded and initialised, `devices` ≥ 1 GPUs, driver API version (e.g. 12080).
    Available { devices: usize, driver_version: i32 },
    /// `libcuda.so.1` (or a symbol in it) could not be loaded.
    NoDriver(String),
    /// The driver loaded but `cuInit` failed or reported no device.
    NoGpu(String),
}

/// Probe the CUDA driver once per process (cached).
pub fn cuda_probe() -> &'static CudaProbe {
    static PROBE: OnceLock<CudaProbe> = OnceLock::new();
    PROBE.get_or_init(|| driver::probe(c"libcuda.so.1"))
}

/// GPUs this process can use (the driver's count, which honours `CUDA_VISIBLE_DEVICES`);
/// what the binary hands the planner and executor as their `graph::devices::GpuCount`.
pub fn visible_gpus() -> usize {
    match cuda_probe() {
        CudaProbe::Available { devices, .. } => *devices,
        CudaProbe::NoDriver(_) | CudaProbe::NoGpu(_) => 0,
    }
}

/// True when a CUDA driver is loadable and reports at least one GPU.
pub fn cuda_available() -> bool {
    matches!(cuda_probe(), CudaProbe::Available { .. })
}

/// Resolve a device spec (`cpu`, `cuda`, `cuda:N`, `auto`) against this machine's CUDA driver;
/// the string says what was chosen and why, for the terminal.
pub fn resolve_device(spec: &str) -> Result<(DeviceKind, String), DeviceError> {
    resolve_device_with(spec, cuda_probe())
}

/// [`resolve_device`] against a given probe result (testable without a GPU).
pub fn resolve_device_with(
    spec: &str,
    probe: &CudaProbe,
) -> Result<(DeviceKind, String), DeviceError> {
    let s = spec.trim().to_ascii_lowercase();
    let cpu_note = || {
        format!(
            "CPU (Flex backend, {} threads)",
            // Flex runs on rayon: the current pool (a stage's share of the cores).
            rayon::current_num_threads()
        )
    };
    let wanted = match s.as_str() {
        "cpu" => return Ok((DeviceKind::Cpu, format!("device = \"cpu\": {}", cpu_note()))),
        "auto" => {
            return Ok(match probe {
                CudaProbe::Available {
                    devices,
                    driver_version,
                } => (
                    DeviceKind::Cuda(0),
                    format!(
                        "device = \"auto\": CUDA driver {} with {devices} GPU(s) found, using cuda:0",
                        version_string(*driver_version)
                    ),
                ),
                CudaProbe::NoDriver(why) | CudaProbe::NoGpu(why) => (
                    DeviceKind::Cpu,
                    format!(
                        "device = \"auto\": no CUDA ({why}), using the {}",
                        cpu_note()
                    ),
                ),
            });
        }
        "cuda" | "gpu" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => i,
            _ => return Err(DeviceError::Unknown(spec.to_string())),
        },
    };
    match probe {
        CudaProbe::NoDriver(reason) => Err(DeviceError::NoDriver {
            spec: spec.to_string(),
            reason: reason.clone(),
        }),
        CudaProbe::NoGpu(reason) => Err(DeviceError::NoGpu {
            spec: spec.to_string(),
            reason: reason.clone(),
        }),
        CudaProbe::Available {
            devices,
            driver_version,
        } => {
            if wanted >= *devices {
                return Err(DeviceError::NoSuchGpu {
                    spec: spec.to_string(),
                    count: *devices,
                });
            }
            Ok((
                DeviceKind::Cuda(wanted),
                format!(
                    "device = {spec:?}: cuda:{wanted} of {devices} GPU(s), CUDA driver {}",
                    version_string(*driver_version)
                ),
            ))
        }
    }
}

/// Bytes held by the CUDA allocator of `device`: `in_use` by live tensors, `reserved` from the
/// driver (pool pages, kept until [`burn::tensor::backend::Backend::memory_cleanup`]; so the
/// reserved size after a step bounds that step's peak in-use memory from above).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaMemory {
    pub in_use: u64,
    pub reserved: u64,
}

/// Current allocator usage of a CUDA device (call only after [`cuda_available`]).
pub fn cuda_memory(device: &CudaDevice) -> Option<CudaMemory> {
    use burn::cubecl::Runtime;
    let client = <burn::cubecl::cuda::CudaRuntime as Runtime>::client(device);
    let m = client.memory_usage().ok()?;
    Some(CudaMemory {
        in_use: m.bytes_in_use,
        reserved: m.bytes_reserved,
    })
}

/// Memory a stage on a device of `kind` (`cpu` or `cuda`) can count on at most, and where
/// the number comes from: the CPU's `MemAvailable` (Linux), or the total memory of GPU 0.
/// `None` when unknown.
pub fn device_memory(kind: &str) -> Option<(u64, &'static str)> {
    if kind == "cpu" {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kb: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        return Some((kb * 1024, "MemAvailable"));
    }
    if !cuda_available() {
        return None;
    }
    driver::total_memory(0).map(|b| (b, "the total memory of cuda:0"))
}

fn version_string(v: i32) -> String {
    format!("{}.{}", v / 1000, (v % 1000) / 10)
}

/// Minimal, failure-tolerant access to the CUDA driver API through `dlopen`.
mod driver {
    use std::ffi::{CStr, c_char, c_int, c_void};

    use super::CudaProbe;

    #[link(name = "dl")]
    unsafe extern "C" {
        fn dlopen(filename: *const c_char, flag: c_int) -> *mut c_void;
        fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void;
        fn dlerror() -> *const c_char;
    }
    const RTLD_NOW: c_int = 2;

    type CuInit = unsafe extern "C" fn(flags: u32) -> c_int;
    type CuDeviceGet = unsafe extern "C" fn(device: *mut c_int, ordinal: c_int) -> c_int;
    type CuTotalMem = unsafe extern "C" fn(bytes: *mut usize, device: c_int) -> c_int;

    /// `cuDeviceTotalMem_v2` of GPU `ordinal` (the driver is initialised by the probe).
    pub fn total_memory(ordinal: i32) -> Option<u64> {
        // SAFETY: dlopen of the library the probe already loaded; null is handled.
        let handle = unsafe { dlopen(c"libcuda.so.1".as_ptr(), RTLD_NOW) };
        if handle.is_null() {
            return None;
        }
        // SAFETY: live handle, NUL-terminated names.
        let (get, total) = unsafe {
            (
                dlsym(handle, c"cuDeviceGet".as_ptr()),
                dlsym(handle, c"cuDeviceTotalMem_v2".as_ptr()),
            )
        };
        if get.is_null() || total.is_null() {
            return None;
        }
        // SAFETY: cuda.h signatures: CUresult cuDeviceGet(CUdevice*, int),
        // CUresult cuDeviceTotalMem_v2(size_t*, CUdevice).
        let (get, total) = unsafe {
            (
                std::mem::transmute::<*mut c_void, CuDeviceGet>(get),
                std::mem::transmute::<*mut c_void, CuTotalMem>(total),
            )
        };
        let mut dev: c_int = 0;
        let mut bytes: usize = 0;
        // SAFETY: valid out-pointers; cuInit ran in the probe.
        let ok = unsafe { get(&mut dev, ordinal) == 0 && total(&mut bytes, dev) == 0 };
        ok.then_some(bytes as u64)
    }
    type CuCount = unsafe extern "C" fn(count: *mut c_int) -> c_int;
    type CuVersion = unsafe extern "C" fn(version: *mut c_int) -> c_int;

    fn last_dl_error() -> String {
        // SAFETY: dlerror returns null or a NUL-terminated string owned by libc.
        let e = unsafe { dlerror() };
        if e.is_null() {
            "unknown dlopen error".into()
        } else {
            // SAFETY: non-null, NUL-terminated (see above); copied before any other dl call.
            unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
        }
    }

    /// Load `lib`, initialise the driver and count devices. The handle is never closed: the
    /// CUDA backend loads the same library again, and unloading a driver is not supported.
    pub fn probe(lib: &CStr) -> CudaProbe {
        let name = lib.to_string_lossy();
        // SAFETY: dlopen with a valid C string; a null return is handled.
        let handle = unsafe { dlopen(lib.as_ptr(), RTLD_NOW) };
        if handle.is_null() {
            let _ = last_dl_error();
            return CudaProbe::NoDriver(format!("{name} not loadable"));
        }
        let sym = |s: &CStr| {
            // SAFETY: handle is a live dlopen handle; s is NUL-terminated.
            let p = unsafe { dlsym(handle, s.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let (Some(init), Some(count), Some(version)) = (
            sym(c"cuInit"),
            sym(c"cuDeviceGetCount"),
            sym(c"cuDriverGetVersion"),
        ) else {
            return CudaProbe::NoDriver(format!("{name} lacks the CUDA driver API symbols"));
        };
        // SAFETY: the symbols come from the CUDA driver library and have these C signatures
        // (cuda.h: CUresult cuInit(unsigned), cuDeviceGetCount(int*), cuDriverGetVersion(int*)).
        let (init, count, version) = unsafe {
            (
                std::mem::transmute::<*mut c_void, CuInit>(init),
                std::mem::transmute::<*mut c_void, CuCount>(count),
                std::mem::transmute::<*mut c_void, CuVersion>(version),
            )
        };
        let mut v: c_int = 0;
        // SAFETY: valid out-pointer.
        unsafe { version(&mut v) };
        // SAFETY: plain driver calls with valid arguments.
        let rc = unsafe { init(0) };
        if rc != 0 {
            return CudaProbe::NoGpu(format!("cuInit failed with CUresult {rc}"));
        }
        let mut n: c_int = 0;
        // SAFETY: valid out-pointer, driver initialised.
        let rc = unsafe { count(&mut n) };
        if rc != 0 || n <= 0 {
            return CudaProbe::NoGpu(format!("cuDeviceGetCount: CUresult {rc}, {n} device(s)"));
        }
        CudaProbe::Available {
            devices: n as usize,
            driver_version: v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn present(devices: usize) -> CudaProbe {
        CudaProbe::Available {
            devices,
            driver_version: 12080,
        }
    }

    #[test]
    fn missing_library_is_no_driver() {
        let p = driver::probe(c"libdefinitely-not-cuda.so.1");
        assert_eq!(
            p,
            CudaProbe::NoDriver("libdefinitely-not-cuda.so.1 not loadable".into())
        );
    }

    #[test]
    fn probe_never_panics_here() {
        // Whatever this machine has, the probe answers and stays consistent.
        let p = cuda_probe();
        assert_eq!(cuda_available(), matches!(p, CudaProbe::Available { .. }));
        let (kind, why) = resolve_device("auto").unwrap();
        assert_eq!(kind == DeviceKind::Cpu, !cuda_available(), "{why}");
    }

    #[test]
    fn cpu_and_auto_without_cuda() {
        let none = CudaProbe::NoDriver("libcuda.so.1 not loadable".into());
        let (k, why) = resolve_device_with("cpu", &none).unwrap();
        assert_eq!(k, DeviceKind::Cpu);
        assert!(why.starts_with("device = \"cpu\": CPU"), "{why}");
        let (k, why) = resolve_device_with("auto", &none).unwrap();
        assert_eq!(k, DeviceKind::Cpu);
        assert!(
            why.contains("libcuda.so.1 not loadable") && why.contains("CPU"),
            "{why}"
        );
        let (k, _) = resolve_device_with(" AUTO ", &present(2)).unwrap();
        assert_eq!(k, DeviceKind::Cuda(0));
    }

    #[test]
    fn cuda_without_driver_is_a_clear_error() {
        let none = CudaProbe::NoDriver("libcuda.so.1 not loadable".into());
        let e = resolve_device_with("cuda", &none).unwrap_err().to_string();
        assert_eq!(
            e,
            "device = \"cuda\" but no CUDA driver was found (libcuda.so.1 not loadable); \
             use device = \"cpu\" or \"auto\""
        );
        let nogpu = CudaProbe::NoGpu("cuInit failed with CUresult 100".into());
        let e = resolve_device_with("cuda:0", &nogpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no usable GPU") && e.contains("CUresult 100"),
            "{e}"
        );
    }

    #[test]
    fn cuda_ordinals() {
        assert_eq!(
            resolve_device_with("cuda:1", &present(2)).unwrap().0,
            DeviceKind::Cuda(1)
        );
        assert_eq!(
            resolve_device_with("cuda", &present(1)).unwrap().0,
            DeviceKind::Cuda(0)
        );
        let e = resolve_device_with("cuda:2", &present(2)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "device = \"cuda:2\" but only 2 CUDA device(s) are present (valid: cuda:0..cuda:1)"
        );
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1", ""] {
            let e = resolve_device_with(bad, &present(1)).unwrap_err();
            assert_eq!(e, DeviceError::Unknown(bad.to_string()));
            assert!(e.to_string().contains("cuda:N"));
        }
        assert_eq!(DeviceKind::Cuda(3).to_string(), "cuda:3");
        assert_eq!(DeviceKind::Cuda(3).cuda_device().unwrap().index, 3);
        assert!(DeviceKind::Cpu.cuda_device().is_none());
    }
}
