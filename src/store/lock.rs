//! Per-key locks that also hold between hosts sharing `runs/` (e.g. over NFS).
//!
//! Two layers, both on files in `runs/cache/.locks/`:
//!
//! 1. `flock` on `<entry>.lock` (`fs4`): serializes the processes of one host; the OS drops
//!    it when its holder dies, so a crashed run never blocks the next one. On some network
//!    mounts it is node-local: a process on another host would get it too.
//! 2. A lease, `<entry>.lease`, that an exclusive holder creates with `O_EXCL` (atomic on
//!    local file systems and NFSv3+) naming itself — host, pid, a token — and rewrites
//!    every quarter of the lease period (a heartbeat). Another host finding it waits.
//!
//! A lease is stale — and is taken over — when it names this host (we hold the `flock`,
//! so its holder is gone), when its content has not changed for a whole lease period as
//! seen by the waiter (so clocks of different hosts need not agree), or when it was last
//! written more than two periods ago. Taking over renames it aside first: only one taker
//! can, and one that finds it renamed a fresh lease puts it back. The period is 60 s, or
//! `PIPELINE_LOCK_LEASE_S` seconds.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

use super::{Result, io};

/// Environment variable overriding the lease period (seconds).
pub const LEASE_ENV: &str = "PIPELINE_LOCK_LEASE_S";
const DEFAULT_LEASE_S: f64 = 60.0;

/// What a lease file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub host: String,
    pub pid: u32,
    /// Unique per acquisition: tells a holder whether the lease is still its own.
    pub token: String,
    /// The holder's lease period in seconds.
    pub lease_s: f64,
    /// Heartbeat counter.
    pub beat: u64,
}

impl LeaseRecord {
    fn describe(&self) -> String {
        format!("pid {} on host {}", self.pid, self.host)
    }
}

/// A held lock; released on drop.
#[derive(Debug)]
pub struct KeyLock {
    file: File,
    path: PathBuf,
    lease: Option<Heartbeat>,
    /// The stale holder this lock was taken over from, if any (for a warning).
    pub took_over: Option<String>,
}

#[derive(Debug)]
struct Heartbeat {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    lease_path: PathBuf,
    token: String,
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Remove the lease only while it is still ours.
        if read_lease(&self.lease_path)
            .is_some_and(|(_, r)| r.is_some_and(|r| r.token == self.token))
        {
            let _ = std::fs::remove_file(&self.lease_path);
        }
    }
}

impl KeyLock {
    /// Block until the exclusive lock at `path` is ours (on this host and on others).
    pub fn exclusive(path: &Path) -> Result<KeyLock> {
        let file = open(path)?;
        io(FileExt::lock_exclusive(&file), "lock", path)?;
        let mut watch = Watch::default();
        loop {
            match claim(path, &mut watch)? {
                Claim::Ours(hb, took_over) => {
                    return Ok(KeyLock {
                        file,
                        path: path.to_path_buf(),
                        lease: Some(hb),
                        took_over,
                    });
                }
                Claim::Held => std::thread::sleep(poll_interval()),
            }
        }
    }

    /// The exclusive lock if nobody holds it (here or on another host), else `None`.
    pub fn try_exclusive(path: &Path) -> Result<Option<KeyLock>> {
        let file = open(path)?;
        if !try_flock(&file, path, false)? {
            return Ok(None);
        }
        match claim(path, &mut Watch::default())? {
            Claim::Ours(hb, took_over) => Ok(Some(KeyLock {
                file,
                path: path.to_path_buf(),
                lease: Some(hb),
                took_over,
            })),
            Claim::Held => Ok(None), // dropping `file` releases the flock
        }
    }

    /// A shared lock if no one holds it exclusively, else `None` (readers that only need
    /// the entry to stay put while they link to it). A fresh lease of another host counts
    /// as an exclusive holder; shared holders write no lease.
    pub fn try_shared(path: &Path) -> Result<Option<KeyLock>> {
        let file = open(path)?;
        if !try_flock(&file, path, true)? {
            return Ok(None);
        }
        if let Some((meta, Some(rec))) = read_lease(&lease_path(path))
            && rec.host != hostname()
            && !written_long_ago(&meta, rec.lease_s)
        {
            return Ok(None);
        }
        Ok(Some(KeyLock {
            file,
            path: path.to_path_buf(),
            lease: None,
            took_over: None,
        }))
    }

    /// Who holds the lease at `path`, for messages (`pid 12 on host node3`).
    pub fn holder(path: &Path) -> Option<String> {
        read_lease(&lease_path(path))
            .and_then(|(_, r)| r)
            .map(|r| r.describe())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KeyLock {
    fn drop(&mut self) {
        drop(self.lease.take()); // stop beating and remove the lease first
        let _ = FileExt::unlock(&self.file);
    }
}

/// `<entry>.lease` beside `<entry>.lock`.
pub fn lease_path(lock: &Path) -> PathBuf {
    lock.with_extension("lease")
}

/// This host's name (as `uname -n`).
pub fn hostname() -> String {
    #[cfg(unix)]
    {
        unsafe extern "C" {
            fn gethostname(name: *mut std::ffi::c_char, len: usize) -> std::ffi::c_int;
        }
        let mut buf = [0u8; 256];
        // SAFETY: a valid buffer and its length; the result is NUL-terminated when it fits.
        if unsafe { gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
    std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into())
}

fn lease_period() -> f64 {
    std::env::var(LEASE_ENV)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(DEFAULT_LEASE_S)
}

fn poll_interval() -> Duration {
    Duration::from_secs_f64((lease_period() / 8.0).clamp(0.05, 1.0))
}

enum Claim {
    Ours(Heartbeat, Option<String>),
    Held,
}

/// What a waiter has seen of a lease: its content and since when.
#[derive(Default)]
struct Watch {
    seen: Option<(Vec<u8>, Instant)>,
}

impl Watch {
    /// Whether `content` has stayed the same for `period` seconds of our observation.
    fn unchanged_for(&mut self, content: &[u8], period: f64) -> bool {
        match &self.seen {
            Some((c, since)) if c == content => since.elapsed().as_secs_f64() >= period,
            _ => {
                self.seen = Some((content.to_vec(), Instant::now()));
                false
            }
        }
    }
}

/// The lease's metadata and record (`None` when unreadable as one, e.g. mid-write).
fn read_lease(path: &Path) -> Option<(std::fs::Metadata, Option<LeaseRecord>)> {
    let bytes = std::fs::read(path).ok()?;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta, serde_json::from_slice(&bytes).ok()))
}

fn written_long_ago(meta: &std::fs::Metadata, lease_s: f64) -> bool {
    meta.modified()
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age.as_secs_f64() > 2.0 * lease_s.max(lease_period()))
}

/// With this host's `flock` held: create the lease, or take over a stale one.
fn claim(lock: &Path, watch: &mut Watch) -> Result<Claim> {
    let path = lease_path(lock);
    let mut took_over = None;
    loop {
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(file) => {
                let rec = LeaseRecord {
                    host: hostname(),
                    pid: std::process::id(),
                    token: token(),
                    lease_s: lease_period(),
                    beat: 0,
                };
                write_record(file, &rec, &path)?;
                return Ok(Claim::Ours(start_heartbeat(path, rec), took_over));
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return io(Err(e), "create lease", &path),
        }
        let Ok(content) = std::fs::read(&path) else {
            continue; // released meanwhile
        };
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let rec: Option<LeaseRecord> = serde_json::from_slice(&content).ok();
        let period = rec.as_ref().map_or(lease_period(), |r| r.lease_s);
        let who = rec
            .as_ref()
            .map_or_else(|| "an unreadable lease".to_string(), |r| r.describe());
        let stale = rec.as_ref().is_some_and(|r| r.host == hostname())
            || written_long_ago(&meta, period)
            || watch.unchanged_for(&content, period);
        if !stale {
            return Ok(Claim::Held);
        }
        // Rename it aside: of several takers only one can.
        let aside = path.with_extension(format!("lease.stale.{}", token()));
        match std::fs::rename(&path, &aside) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return io(Err(e), "take over lease", &path),
        }
        let moved = std::fs::read(&aside).unwrap_or_default();
        if moved != content {
            // Another taker's fresh lease: put it back (unless a newer one exists) and wait.
            let _ = std::fs::hard_link(&aside, &path);
            let _ = std::fs::remove_file(&aside);
            *watch = Watch::default();
            return Ok(Claim::Held);
        }
        let _ = std::fs::remove_file(&aside);
        took_over = Some(who);
        *watch = Watch::default();
    }
}

fn write_record(mut file: File, rec: &LeaseRecord, path: &Path) -> Result<()> {
    use std::io::Write;
    let text = serde_json::to_vec(rec).expect("lease record serializes");
    io(file.write_all(&text), "write", path)?;
    io(file.sync_all(), "sync", path)
}

fn token() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{t:x}-{n}", std::process::id())
}

/// Rewrite the lease every quarter period while held; stop (with one warning) if it stops
/// being ours.
fn start_heartbeat(path: PathBuf, mut rec: LeaseRecord) -> Heartbeat {
    let (tx, rx) = mpsc::channel::<()>();
    let every = Duration::from_secs_f64(rec.lease_s / 4.0);
    let token = rec.token.clone();
    let p = path.clone();
    let thread = std::thread::Builder::new()
        .name("lock-heartbeat".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(every) {
                let ours =
                    read_lease(&p).is_some_and(|(_, r)| r.is_some_and(|r| r.token == rec.token));
                let written = ours && {
                    rec.beat += 1;
                    OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&p)
                        .ok()
                        .is_some_and(|f| write_record(f, &rec, &p).is_ok())
                };
                if !written {
                    eprintln!(
                        "⚠ lost the lease {} (another host took it over after missed heartbeats)",
                        p.display()
                    );
                    return;
                }
            }
        })
        .ok();
    Heartbeat {
        stop: Some(tx),
        thread,
        lease_path: path,
        token,
    }
}

fn try_flock(file: &File, path: &Path, shared: bool) -> Result<bool> {
    let r = if shared {
        FileExt::try_lock_shared(file)
    } else {
        FileExt::try_lock_exclusive(file)
    };
    match r {
        Ok(got) => Ok(got),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
        Err(e) => io(Err(e), "lock", path),
    }
}

fn open(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        io(std::fs::create_dir_all(dir), "create", dir)?;
    }
    io(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path),
        "open lock file",
        path,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("locks/x.lock");
        let held = KeyLock::exclusive(&p).unwrap();
        assert!(KeyLock::try_exclusive(&p).unwrap().is_none());
        assert!(KeyLock::try_shared(&p).unwrap().is_none());
        drop(held);
        let shared = KeyLock::try_shared(&p).unwrap().unwrap();
        assert!(KeyLock::try_shared(&p).unwrap().is_some());
        assert!(KeyLock::try_exclusive(&p).unwrap().is_none());
        drop(shared);
        assert!(KeyLock::try_exclusive(&p).unwrap().is_some());
    }

    fn foreign(host: &str, beat: u64) -> Vec<u8> {
        serde_json::to_vec(&LeaseRecord {
            host: host.into(),
            pid: 4242,
            token: "t".into(),
            lease_s: 0.4,
            beat,
        })
        .unwrap()
    }

    #[test]
    fn the_lease_names_its_holder_and_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let held = KeyLock::exclusive(&p).unwrap();
        let (_, rec) = read_lease(&lease_path(&p)).unwrap();
        let rec = rec.unwrap();
        assert_eq!((rec.host, rec.pid), (hostname(), std::process::id()));
        assert!(KeyLock::holder(&p).unwrap().contains(&hostname()));
        drop(held);
        assert!(!lease_path(&p).exists());
    }

    #[test]
    fn another_hosts_fresh_lease_is_waited_for_and_a_stale_one_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        std::fs::write(lease_path(&p), foreign("other-node", 0)).unwrap();
        // flock is free here, but the lease of another host keeps it taken.
        assert!(KeyLock::try_exclusive(&p).unwrap().is_none());
        assert!(KeyLock::try_shared(&p).unwrap().is_none());
        assert_eq!(KeyLock::holder(&p).unwrap(), "pid 4242 on host other-node");
        // While the holder beats, `exclusive` waits; once it stops, it takes over after
        // one unchanged lease period (0.4 s).
        let t0 = Instant::now();
        let beat = std::thread::spawn({
            let lease = lease_path(&p);
            move || {
                for b in 1..=8 {
                    std::thread::sleep(Duration::from_millis(100));
                    std::fs::write(&lease, foreign("other-node", b)).unwrap();
                }
            }
        });
        let held = KeyLock::exclusive(&p).unwrap();
        beat.join().unwrap();
        let waited = t0.elapsed();
        assert!(waited >= Duration::from_millis(1200), "{waited:?}");
        assert_eq!(
            held.took_over.as_deref(),
            Some("pid 4242 on host other-node")
        );
        let (_, rec) = read_lease(&lease_path(&p)).unwrap();
        assert_eq!(rec.unwrap().host, hostname());
    }

    #[test]
    fn a_lease_left_by_a_dead_process_of_this_host_is_taken_over_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        std::fs::write(lease_path(&p), foreign(&hostname(), 0)).unwrap();
        let held = KeyLock::try_exclusive(&p)
            .unwrap()
            .expect("stale: flock was free");
        assert!(held.took_over.is_some());
    }
}
