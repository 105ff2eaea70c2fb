//! A private single-node Slurm cluster for a test: munged with its own key and socket,
//! slurmctld and slurmd on free localhost ports, a minimal slurm.conf (no accounting, no
//! cgroups), all under a temp dir. Dropping it cancels its jobs and stops every process
//! it started, also when the test fails.
#![allow(dead_code)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binaries a cluster needs (Debian: `apt-get install slurm-wlm munge`).
const BINARIES: [&str; 7] = [
    "munged",
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "scancel",
    "sinfo",
];

pub struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    /// munged, slurmctld, slurmd (stopped in reverse).
    daemons: Vec<(&'static str, Child)>,
}

impl Cluster {
    /// Start the cluster and wait until its node is idle. Panics with the daemons' logs
    /// when it does not come up.
    pub fn start() -> Cluster {
        let missing: Vec<&str> = BINARIES
            .iter()
            .copied()
            .filter(|b| which(b).is_none())
            .collect();
        assert!(
            missing.is_empty(),
            "Slurm is not installed (missing {}); on Debian: apt-get install -y slurm-wlm munge \
             (.ci/run does this)",
            missing.join(", ")
        );
        let dir = tempfile::Builder::new().prefix("slurm").tempdir().unwrap();
        let d = dir.path();
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let conf = d.join("slurm.conf");
        let mut cluster = Cluster {
            conf: conf.clone(),
            daemons: Vec::new(),
            dir,
        };
        let d = cluster.dir.path().to_path_buf();

        let key = d.join("munge.key");
        let mut bytes = vec![0u8; 1024];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut bytes)
            .unwrap();
        std::fs::write(&key, bytes).unwrap();
        set_mode(&key, 0o600);
        set_mode(&d, 0o755);
        let socket = d.join("munge.sock");
        cluster.spawn(
            "munged",
            Command::new(which("munged").unwrap())
                .arg("--foreground")
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--key-file={}", key.display()))
                .arg(format!("--pid-file={}", d.join("munged.pid").display()))
                .arg(format!("--seed-file={}", d.join("munge.seed").display()))
                .arg(format!("--log-file={}", d.join("log/munged.log").display())),
        );
        cluster.wait_for("munge socket", Duration::from_secs(20), || socket.exists());

        // Both held while choosing, so they differ.
        let ports = [free_port(), free_port()];
        let (ctld_port, slurmd_port) = (port(&ports[0]), port(&ports[1]));
        drop(ports);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mem_mib = mem_total_mib() * 9 / 10;
        let text = format!(
            "ClusterName=pipelinetest\n\
             SlurmctldHost=localhost\n\
             SlurmctldPort={ctld_port}\n\
             SlurmdPort={slurmd_port}\n\
             SlurmUser={user}\n\
             SlurmdUser={user}\n\
             AuthType=auth/munge\n\
             CredType=cred/munge\n\
             AuthInfo=socket={socket}\n\
             StateSaveLocation={d}/state\n\
             SlurmdSpoolDir={d}/spool\n\
             SlurmctldPidFile={d}/slurmctld.pid\n\
             SlurmdPidFile={d}/slurmd.pid\n\
             SlurmctldLogFile={d}/log/slurmctld.log\n\
             SlurmdLogFile={d}/log/slurmd.log\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             SelectType=select/cons_tres\n\
             SelectTypeParameters=CR_CPU_Memory\n\
             JobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             KillWait=5\n\
             MinJobAge=600\n\
             NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mib} State=UNKNOWN\n\
             PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
            user = user(),
            socket = socket.display(),
            d = d.display(),
        );
        std::fs::write(&conf, text).unwrap();
        let slurmctld = which("slurmctld").unwrap();
        cluster.spawn("slurmctld", Command::new(slurmctld).args(["-D", "-i"]));
        let slurmd = which("slurmd").unwrap();
        cluster.spawn(
            "slurmd",
            Command::new(slurmd).args(["-D", "-N", "localhost"]),
        );
        cluster.wait_for("the node to be idle", Duration::from_secs(60), || {
            let out = cluster.client("sinfo").args(["-h", "-o", "%T"]).output();
            out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "idle")
        });
        cluster
    }

    /// A Slurm client command (`sbatch`, `squeue`, ...) talking to this cluster.
    pub fn client(&self, program: &str) -> Command {
        let mut c = Command::new(which(program).unwrap_or_else(|| program.into()));
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// What `pipeline` needs in its (scrubbed) environment to reach this cluster.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SLURM_CONF".into(), self.conf.display().to_string()),
            ("PATH".into(), search_path()),
        ]
    }

    /// Wait until squeue no longer lists `job`; panics with the daemons' logs after
    /// `limit`.
    pub fn wait_for_job(&self, job: &str, limit: Duration) {
        self.wait_for(&format!("job {job} to leave the queue"), limit, || {
            self.queued(job).is_empty()
        });
    }

    /// squeue lines `ARRAY_JOB|TASK|STATE` of `job`.
    pub fn queued(&self, job: &str) -> Vec<String> {
        let out = self
            .client("squeue")
            .args(["-h", "-r", "-o", "%F|%K|%t"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split('|').next() == Some(job))
            .map(str::to_string)
            .collect()
    }

    /// Poll `done` every 200 ms; after `limit`, panic with the daemons' logs.
    pub fn wait_for(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !done() {
            assert!(
                t0.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The tails of the daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["munged", "slurmctld", "slurmd"] {
            let path = self.dir.path().join(format!("log/{name}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!("--- {}\n{}\n", path.display(), tail.join("\n")));
        }
        out
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) {
        let log = std::fs::File::create(self.dir.path().join(format!("log/{name}.out"))).unwrap();
        let child = cmd
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.daemons.push((name, child));
    }

    /// Every live process that runs with this cluster's `SLURM_CONF`: the daemons, job
    /// steps (slurmstepd detaches from slurmd) and what the jobs started.
    fn processes(&self) -> Vec<u32> {
        let needle = format!("SLURM_CONF={}", self.conf.display());
        let me = std::process::id();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first (their steps outlive slurmd), then the daemons, newest first.
        let _ = self
            .client("scancel")
            .args(["--user", &user()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            let out = self.client("squeue").args(["-h", "-o", "%A"]).output();
            // No answer (no controller) or an empty queue.
            let empty = out.map_or(true, |o| {
                !o.status.success() || o.stdout.iter().all(u8::is_ascii_whitespace)
            });
            if empty {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for (_, child) in self.daemons.iter_mut().rev() {
            signal("TERM", child.id());
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in self.processes() {
            signal("KILL", pid);
        }
    }
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// `PATH` plus the sbin folders the daemons live in.
fn search_path() -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{path}:/usr/local/sbin:/usr/sbin:/sbin")
}

fn which(program: &str) -> Option<PathBuf> {
    search_path()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn user() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

fn port(l: &TcpListener) -> u16 {
    l.local_addr().unwrap().port()
}

fn mem_total_mib() -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb / 1024
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}
