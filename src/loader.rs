//! The `Loader`: creates or attaches to a region and runs the loader in one
//! of three ways.
//!
//! - [`Loader::start`]: loader threads in this process, in the background.
//! - [`Loader::spawn`]: `fork` a loader process (the original module's
//!   `spawn_loader`); the child runs the loader threads and exits at shutdown
//!   or when its parent is gone.
//! - [`Loader::become_loader`]: run the loader threads here; returns after
//!   a shutdown requested by any participant (`become_loader`).
//!
//! Shutdown is one state change in the region (RUNNING → STOPPING) plus
//! wake-ups: loader threads finish the files in flight and exit, waiting
//! workers wake and get `Shutdown` once nothing is left to deliver. The
//! process that started threads joins them; the one that forked the loader
//! reaps it (killing it if it does not exit in time).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{BackendKind, Config, Drive, EnvOverrides, env_overrides};
use crate::engine::{ThreadCtx, thread_main};
use crate::error::{Error, ErrorKind, Result};
pub use crate::kinds::LoaderState;
use crate::region::{Region, entry_state, state};
use crate::worker::{Worker, loader_health};

/// How long `shutdown` waits for a forked loader before it kills it.
const CHILD_EXIT_GRACE: Duration = Duration::from_secs(10);
/// How long `reclaim_worker` waits for loader threads and files in flight.
const RECLAIM_WAIT: Duration = Duration::from_secs(10);

/// Counters of a loader, summed over its threads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests accepted from workers.
    pub requests: u64,
    /// Requests completed (loaded or failed).
    pub completions: u64,
    /// Bytes loaded.
    pub bytes: u64,
    /// Completions that carry an error.
    pub errors: u64,
    /// Batches submitted to the backend.
    pub batches: u64,
    /// Files that asked for O_DIRECT and were read buffered.
    pub buffered_fallbacks: u64,
    /// Reads done with O_DIRECT.
    pub direct_reads: u64,
    /// System calls the backend made (submits and waits).
    pub syscalls: u64,
    /// Backend in use: `IoUring` or `Threads`; `Auto` until a running
    /// loader chose one.
    pub backend: BackendKind,
    /// Loader threads configured (0 when the workers drive their loads).
    pub loader_threads: u32,
    /// Who loads: `Loader` or `Worker` once the loader started (`Auto`
    /// resolved); the config's value before.
    pub drive: Drive,
    /// Loader threads running now.
    pub loader_threads_alive: u32,
    /// Where the loader is in its life.
    pub state: LoaderState,
}

#[derive(Default)]
struct Local {
    threads: Vec<JoinHandle<()>>,
    child: Option<i32>,
}

/// A loader: the shared region plus, in the process that runs it, the
/// loader threads or the loader child. Dropping the `Loader` in the process
/// that created it (or that runs its threads or child) shuts it down.
/// Processes forked after creation inherit it without owning it: their drop
/// only unmaps.
pub struct Loader {
    region: Arc<Region>,
    local: Mutex<Local>,
    /// Process in which this handle was made; a forked copy is not it.
    pid: u32,
    created: bool,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("name", &self.name())
            .finish()
    }
}

impl Loader {
    /// Creates a loader (its shared region) for `cfg`. No loader runs yet:
    /// call [`start`](Self::start), [`spawn`](Self::spawn) or
    /// [`become_loader`](Self::become_loader). Requests made before then
    /// wait in the rings.
    pub fn new(cfg: Config) -> Result<Loader> {
        let region = Region::create(&cfg)?;
        Ok(Loader {
            region: Arc::new(region),
            local: Mutex::new(Local::default()),
            pid: std::process::id(),
            created: true,
        })
    }

    /// Attaches to the loader named `name` (see [`name`](Self::name)) from
    /// any process of the same user while the creating process lives.
    pub fn attach(name: &str) -> Result<Loader> {
        let region = Region::attach(name)?;
        Ok(Loader {
            region: Arc::new(region),
            local: Mutex::new(Local::default()),
            pid: std::process::id(),
            created: false,
        })
    }

    /// The name other processes attach with.
    pub fn name(&self) -> &str {
        self.region.name()
    }

    /// The configuration (with `loader_threads` and `ring_window` resolved).
    pub fn config(&self) -> Config {
        self.region.cfg().to_config()
    }

    /// The context of worker `id` (`0..n_workers`).
    pub fn worker(&self, id: u32) -> Result<Worker> {
        Worker::new(self.region.clone(), id)
    }

    /// The arena (`Config::arena_size`): destination memory id
    /// [`ARENA`](crate::ARENA) of [`Worker::request_into`], shared by every
    /// process that maps this loader (at a different address in each).
    /// Start and length (0 without an arena); 4 KiB aligned. Reading bytes
    /// a load is writing is a data race: read a span once its entry is
    /// delivered.
    pub fn arena(&self) -> (*mut u8, usize) {
        let (p, n) = self.region.arena();
        (p, n as usize)
    }

    /// Registers `len` bytes at `base` — any memory of this process: a
    /// pinned tensor, a preallocated batch array — as destination memory
    /// for [`Worker::request_into`], and returns its id (`1..=16`).
    ///
    /// Registered memory is an address in this process: requests into it
    /// must come from this process and its loads must run here (loader
    /// threads started with [`start`](Self::start), or workers that drive
    /// their own loads, `Drive::Worker`); anything else fails with `EXDEV`.
    /// A loader process (`spawn`) or another process's worker can use the
    /// arena instead. `ENOSPC` when 16 registrations of living processes
    /// are in use (those of a process that died are taken over).
    ///
    /// # Safety
    ///
    /// The memory must stay valid for writes of `len` bytes until it is
    /// unregistered or the loader is dropped, and every load into it has
    /// completed (entries released, or the loader shut down).
    pub unsafe fn register_memory(&self, base: *mut u8, len: usize) -> Result<u32> {
        if base.is_null() || len == 0 {
            return Err(Error::new(
                crate::ErrorKind::InvalidArgument,
                "destination memory must be a non-null pointer and a non-zero length",
            ));
        }
        self.region.register_memory(base, len as u64)
    }

    /// Forgets registration `id` (made by this process). Requests into it
    /// fail with `EINVAL` from now on.
    ///
    /// # Safety
    ///
    /// No load into the memory may still be in flight (every entry of a
    /// request into it released, or the loader shut down).
    pub unsafe fn unregister_memory(&self, id: u32) -> Result<()> {
        self.region.unregister_memory(id)
    }

    /// `Ok` while the loader can deliver; `Shutdown` or `LoaderDead` otherwise.
    pub fn health(&self) -> Result<()> {
        loader_health(&self.region)
    }

    /// Where the loader is in its life, as the shared region says now (no
    /// liveness check: a loader process killed while nobody looked still
    /// reads `Running` until [`health`](Self::health) notices).
    pub fn state(&self) -> LoaderState {
        self.region.header().loader_state()
    }

    /// Moves the loader from CREATED to RUNNING and records how it runs:
    /// the drive (the config's unless `ASYNCLOADER_DRIVE` overrides it) and
    /// the environment overrides, for workers that drive their own loads.
    /// Returns the loader threads to start (none with `Drive::Worker`).
    fn claim(&self, env: &EnvOverrides) -> Result<u32> {
        let h = self.region.header();
        let drive = self.drive_for_start(env);
        h.drive_in_use.store(drive as u32, Ordering::Release);
        h.env_bits.store(env.to_bits(), Ordering::Release);
        h.state
            .compare_exchange(
                state::CREATED,
                state::RUNNING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_err(|s| {
                Error::new(
                    if s == state::RUNNING {
                        ErrorKind::Busy
                    } else {
                        ErrorKind::Shutdown
                    },
                    format!(
                        "the loader is {}",
                        LoaderState::from_u32(s).unwrap_or(LoaderState::Dead)
                    ),
                )
            })?;
        let n = match drive {
            Drive::Worker => 0,
            _ => self.region.cfg().loader_threads,
        };
        h.loader_threads_alive.store(n, Ordering::Release);
        Ok(n)
    }

    /// The drive `start` uses: `ASYNCLOADER_DRIVE`, else the config's,
    /// with `Auto` resolved for this machine.
    fn drive_for_start(&self, env: &EnvOverrides) -> Drive {
        let mut cfg = self.region.cfg().to_config();
        cfg.drive = env.drive.unwrap_or(cfg.drive);
        cfg.effective_drive()
    }

    /// The drive `spawn` and `become_loader` use: as `start`, but `Auto`
    /// means loader threads (they ask for a loader process or thread).
    fn drive_for_loader(&self, env: &EnvOverrides) -> Drive {
        match env.drive.unwrap_or(self.region.cfg().to_config().drive) {
            Drive::Worker => Drive::Worker,
            _ => Drive::Loader,
        }
    }

    fn unclaim(&self) {
        let h = self.region.header();
        h.loader_threads_alive.store(0, Ordering::Release);
        h.state.store(state::CREATED, Ordering::Release);
    }

    /// Spawns loader threads `tids`. On failure the threads that did start
    /// are told to stop (they see STOPPING and exit) and the error says so.
    fn spawn_threads(
        region: &Arc<Region>,
        tids: std::ops::Range<u32>,
        parent: Option<i32>,
        env: EnvOverrides,
    ) -> Result<Vec<JoinHandle<()>>> {
        let mut hs = Vec::new();
        for tid in tids {
            let r = region.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("al-loader-{tid}"))
                .spawn(move || thread_main(r, ThreadCtx { tid, parent, env }));
            match spawned {
                Ok(h) => hs.push(h),
                Err(e) => {
                    let h = region.header();
                    h.state.store(state::STOPPING, Ordering::Release);
                    h.loader_parking.notify_all();
                    return Err(Error::os(
                        e.raw_os_error().unwrap_or(libc::EAGAIN),
                        "spawning loader threads",
                    ));
                }
            }
        }
        Ok(hs)
    }

    /// Runs the loader in background threads of this process.
    /// With `Drive::Worker` no thread starts: the loader is running, and
    /// each worker loads its own requests.
    pub fn start(&self) -> Result<()> {
        let env = env_overrides();
        let n = self.claim(&env)?;
        self.region
            .header()
            .loader_pid
            .store(std::process::id() as i32, Ordering::Release);
        let hs = Self::spawn_threads(&self.region, 0..n, None, env)?;
        self.local.lock().unwrap_or_else(|e| e.into_inner()).threads = hs;
        Ok(())
    }

    /// Forks a loader process. Returns in the parent; the child never returns.
    /// With `Drive::Worker` nothing is forked (there is nothing for a loader
    /// process to do): it is [`start`](Self::start).
    pub fn spawn(&self) -> Result<()> {
        // Read before the fork: the child must not take locks (below).
        let mut env = env_overrides();
        env.drive = Some(self.drive_for_loader(&env));
        if env.drive == Some(Drive::Worker) {
            return self.start();
        }
        let n = self.claim(&env)?;
        let parent = std::process::id() as i32;
        // SAFETY: the fork-in-a-threaded-process rule: the child has only
        // this thread, and any lock another thread held at the fork stays
        // locked in it forever. The child takes none that can be held: it
        // never reads the environment (read above), allocates only through
        // glibc's malloc (made fork-safe by glibc's own atfork handlers) and
        // otherwise makes system calls (io_uring setup, thread spawns,
        // futexes, getppid); it ends with `_exit`, never returning into the
        // caller's code or running its destructors or atexit handlers.
        // (Under an allocator without fork handlers, e.g. ASan's, call
        // `spawn` before starting other threads: docs/c-api.md.)
        let pid = match unsafe { nix::unistd::fork() } {
            Err(e) => {
                self.unclaim();
                return Err(Error::os(e as i32, "fork of the loader process"));
            }
            Ok(nix::unistd::ForkResult::Parent { child }) => child.as_raw(),
            Ok(nix::unistd::ForkResult::Child) => 0,
        };
        if pid == 0 {
            // Child: the loader process.
            let h = self.region.header();
            h.loader_pid
                .store(std::process::id() as i32, Ordering::Release);
            // Parent died between fork and here: stop right away.
            if nix::unistd::getppid().as_raw() != parent {
                h.state.store(state::STOPPING, Ordering::Release);
            }
            let code = match Self::spawn_threads(&self.region, 1..n, Some(parent), env) {
                Ok(hs) => {
                    thread_main(
                        self.region.clone(),
                        ThreadCtx {
                            tid: 0,
                            parent: Some(parent),
                            env,
                        },
                    );
                    for t in hs {
                        let _ = t.join();
                    }
                    0
                }
                Err(_) => {
                    h.state.store(state::DEAD, Ordering::Release);
                    1
                }
            };
            // SAFETY: terminates the child without running the parent's
            // atexit handlers or destructors.
            unsafe { libc::_exit(code) };
        }
        self.region
            .header()
            .loader_pid
            .store(pid, Ordering::Release);
        self.local.lock().unwrap_or_else(|e| e.into_inner()).child = Some(pid);
        Ok(())
    }

    /// Runs the loader in this thread (plus `loader_threads - 1` more) until
    /// some participant calls [`shutdown`](Self::shutdown). With
    /// `Drive::Worker` the thread only waits for that shutdown.
    pub fn become_loader(&self) -> Result<()> {
        let mut env = env_overrides();
        env.drive = Some(self.drive_for_loader(&env));
        let n = self.claim(&env)?;
        let h = self.region.header();
        h.loader_pid
            .store(std::process::id() as i32, Ordering::Release);
        if h.drive() == Drive::Worker {
            while h.state.load(Ordering::Acquire) == state::RUNNING {
                h.loader_parking
                    .sleep_unless(Duration::from_millis(100), || {
                        h.state.load(Ordering::Acquire) != state::RUNNING
                    });
            }
            return Ok(());
        }
        let hs = Self::spawn_threads(&self.region, 1..n, None, env)?;
        thread_main(
            self.region.clone(),
            ThreadCtx {
                tid: 0,
                parent: None,
                env,
            },
        );
        for t in hs {
            let _ = t.join();
        }
        match self.region.header().state.load(Ordering::Acquire) {
            state::STOPPED | state::STOPPING => Ok(()),
            _ => Err(Error::os(
                self.region.header().loader_error.load(Ordering::Relaxed),
                "the loader stopped",
            )),
        }
    }

    /// Stops the loader: files in flight finish, waiting workers wake with
    /// `Shutdown`, later requests fail. Waits for this process's loader
    /// threads or loader child to exit. Idempotent; may be called from any
    /// participant (an attached process only signals).
    pub fn shutdown(&self) -> Result<()> {
        let h = self.region.header();
        let _ = h
            .state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| match s {
                state::CREATED => Some(state::STOPPED),
                state::RUNNING => Some(state::STOPPING),
                _ => None,
            });
        if h.drive() == Drive::Worker {
            // No loader thread has to finish: the workers finish their own
            // files in flight (their wait_get still reaps them).
            let _ = h.state.compare_exchange(
                state::STOPPING,
                state::STOPPED,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        h.loader_parking.notify_all();
        for w in 0..self.region.cfg().n_workers {
            self.region.worker(w).block.parking.notify_all();
        }
        if std::process::id() != self.pid {
            return Ok(());
        }
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        for t in local.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(pid) = local.child.take() {
            reap_child(pid);
            // A killed child cannot move the state on; do it for it.
            let _ = h
                .state
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                    (s == state::STOPPING).then_some(state::STOPPED)
                });
            h.loader_threads_alive.store(0, Ordering::Release);
        }
        for w in 0..self.region.cfg().n_workers {
            self.region.worker(w).block.parking.notify_all();
        }
        Ok(())
    }

    /// Takes back every entry of worker `id` after the process or thread
    /// that used it died: requests still queued are dropped, files in flight
    /// are waited for (up to 10 s), entries it held unreleased are freed, and
    /// its rings are rebuilt, so a new context for `id` starts with
    /// `queue_depth` free entries. Returns how many entries were taken back.
    /// Also repairs a worker whose rings a broken process corrupted — but
    /// not one whose entry state words were overwritten with LOADING: such
    /// an entry looks exactly like a file in flight, and reclaim answers
    /// `Busy` after 10 s rather than hand out a buffer the kernel might still
    /// write.
    ///
    /// The loader and the other workers keep running meanwhile.
    ///
    /// How it excludes the loader threads (no timing assumption): it raises
    /// the worker's `reclaiming` flag, then waits until every loader thread
    /// that was inside a pass over the rings has left it (each thread's
    /// `ring_epoch` is odd during a pass; see `engine::RingPass`). Passes that
    /// start later see the flag: they neither take this worker's requests
    /// nor push to its completion ring (a file that completes meanwhile is
    /// marked DONE and left for us). Then it waits until no entry is LOADING
    /// and rebuilds the rings.
    ///
    /// # Safety
    ///
    /// Nobody in this process may hold an [`Entry`](crate::Entry) of worker
    /// `id` (or use its data) when this is called: its slot is handed to new
    /// requests, whose loads overwrite the buffer that entry's `data()`
    /// borrows. (Entries held in a process that died are what this is for;
    /// a held entry only becomes stale — its release is refused — but the
    /// bytes it borrows may change.)
    pub unsafe fn reclaim_worker(&self, id: u32) -> Result<u32> {
        if id >= self.region.cfg().n_workers {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("worker id {id} out of range"),
            ));
        }
        let r = &self.region;
        let rings = r.worker(id);
        // The flag holds the reclaimer's token (pid plus a check value). A
        // live reclaimer's token means a reclaim is under way; anything else
        // (a reclaimer that died, or garbage a broken worker wrote) is ours
        // to take over.
        let me = std::process::id();
        let prev = rings
            .block
            .reclaiming
            .swap(r.reclaim_token(me), Ordering::SeqCst);
        let prev_pid = prev as u32;
        if prev != 0
            && prev == r.reclaim_token(prev_pid)
            && crate::process::pid_alive(prev_pid as i32)
        {
            if prev_pid != me {
                rings.block.reclaiming.store(prev, Ordering::SeqCst);
            }
            return Err(Error::new(
                ErrorKind::Busy,
                format!("already being reclaimed (by process {prev_pid})"),
            ));
        }
        let deadline = Instant::now() + RECLAIM_WAIT;
        let give_up = |what: &str| {
            rings.block.reclaiming.store(0, Ordering::Release);
            Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "worker {id} not reclaimed: {what} after {RECLAIM_WAIT:?}; nothing changed"
                ),
            ))
        };
        // 1. Every loader thread out of the passes that may not have seen
        //    the flag.
        //    With the workers driving, the worker's own driver is one more
        //    such thread (its epoch is in the worker block); one in a
        //    process that died will never leave its pass, nor load again.
        let h = r.header();
        // The process whose driver last took this worker's requests (its
        // loads are the ones in flight); read anew at every check.
        let driver_pid = || rings.block.driver_pid.load(Ordering::Acquire);
        let driver_gone = || {
            let p = driver_pid();
            p != 0 && !crate::process::pid_alive(p)
        };
        // A driver exists only when the workers drive (the header's drive
        // word, which workers do not write); otherwise its counters in the
        // worker block are nobody's, and waiting on them would let a
        // scribbled word block the reclaim.
        let worker_drive = h.drive() == Drive::Worker;
        let threads: Vec<&crate::region::ThreadStats> = h.thread_stats
            [..r.cfg().loader_threads as usize]
            .iter()
            .chain(worker_drive.then_some(&rings.block.stats))
            .collect();
        let driver_t = if worker_drive {
            threads.len() - 1
        } else {
            usize::MAX
        };
        let odd: Vec<(usize, u64)> = threads
            .iter()
            .enumerate()
            .map(|(t, s)| (t, s.ring_epoch.load(Ordering::SeqCst)))
            .filter(|&(_, e)| e % 2 == 1)
            .collect();
        for (t, e) in odd {
            while threads[t].ring_epoch.load(Ordering::Acquire) == e {
                if t == driver_t && driver_gone() {
                    break;
                }
                if t != driver_t && loader_health(r).is_err() {
                    break; // a dead loader's thread will never leave its pass
                }
                if Instant::now() >= deadline {
                    return give_up(if t == driver_t {
                        "this worker's driver did not finish its pass"
                    } else {
                        "a loader thread did not finish its pass"
                    });
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        // 2. Files in flight finish (the loader marks them DONE, leaving
        //    them to us). Nothing becomes LOADING any more.
        let qd = r.cfg().queue_depth;
        let base = id * qd;
        let loading =
            |e: u32| r.entry(base + e).state.load(Ordering::Acquire) as u32 == entry_state::LOADING;
        while (0..qd).any(loading) {
            if worker_drive {
                if driver_gone() {
                    // Its io_uring requests all ended before it exited.
                    break;
                }
                if driver_pid() == me as i32 {
                    // Our own driver holds them: reap them (its passes take
                    // no request and hand nothing over while the flag is up).
                    let _ = crate::drive::drive(r, id, Some(Duration::from_millis(1)));
                }
            } else if loader_health(r).is_err() {
                break; // a dead loader will not complete it
            }
            if Instant::now() >= deadline {
                return give_up("files of this worker are still in flight");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // 3. Nobody touches this worker's rings or entries now: every entry
        //    goes back to FREE with a new generation (so old handles are
        //    stale), and the rings are rebuilt with all entries free.
        let mut taken = 0;
        for e in 0..qd {
            let meta = r.entry(base + e);
            let word = meta.state.load(Ordering::Acquire);
            if word as u32 != entry_state::FREE {
                taken += 1;
            }
            let generation = ((word >> 32) as u32).wrapping_add(1);
            meta.state.store(
                ((generation as u64) << 32) | entry_state::FREE as u64,
                Ordering::Release,
            );
        }
        r.reset_worker_rings(id);
        rings.block.reclaiming.store(0, Ordering::Release);
        Ok(taken)
    }

    /// The counters, summed over loader threads and workers.
    pub fn stats(&self) -> Stats {
        let h = self.region.header();
        let cfg = self.region.cfg();
        let mut s = Stats {
            backend: h.backend_in_use(),
            loader_threads: if h.drive() == Drive::Worker {
                0
            } else {
                cfg.loader_threads
            },
            drive: h.drive(),
            loader_threads_alive: h.loader_threads_alive.load(Ordering::Relaxed),
            state: h.loader_state(),
            ..Stats::default()
        };
        let workers = (0..cfg.n_workers).map(|w| &self.region.worker(w).block.stats);
        for t in h.thread_stats[..cfg.loader_threads as usize]
            .iter()
            .chain(workers)
        {
            s.completions += t.completions.load(Ordering::Relaxed);
            s.bytes += t.bytes.load(Ordering::Relaxed);
            s.errors += t.errors.load(Ordering::Relaxed);
            s.batches += t.batches.load(Ordering::Relaxed);
            s.buffered_fallbacks += t.buffered_fallbacks.load(Ordering::Relaxed);
            s.direct_reads += t.direct_reads.load(Ordering::Relaxed);
            s.syscalls += t.syscalls.load(Ordering::Relaxed);
        }
        for w in 0..cfg.n_workers {
            s.requests += self.region.worker(w).block.requests.load(Ordering::Relaxed);
        }
        s
    }

    /// Allocates all buffer memory now (`n_workers × queue_depth ×
    /// (max_file_size + 1)`, rounded up to pages), instead of page by page
    /// when a file first lands there. A long-running loader pays that cost
    /// once either way; call this to pay it up front (and to fail early if
    /// the memory is not there). Data is untouched: safe at any time.
    pub fn prefault(&self) -> Result<()> {
        self.region.prefault_buffers()
    }

    /// Pid of the process running the loader (0 before it starts).
    pub fn loader_pid(&self) -> i32 {
        self.region.header().loader_pid.load(Ordering::Acquire)
    }

    /// Copies the data of the entries that `tickets` stand for into `dst`,
    /// one after another in ticket order, writes each one's size to
    /// `sizes`, and releases them: the receiving end of a hand-over, where
    /// one process takes the entries another process's worker loaded (a
    /// `DataLoader` worker hands a batch to the main process, which copies
    /// it once into its batch tensor). A ticket (never 0) stands for a
    /// delivered entry whose holder gave up its handle without
    /// releasing it (`al_entry_handoff` / `al_batch_handoff`); the entry
    /// counts against its worker's `queue_depth` until taken here. A
    /// failed load's entry has size 0.
    ///
    /// Checks every ticket before it copies anything: `InvalidArgument` for
    /// one that is not a delivered entry of that generation (stale, taken
    /// already, made up), for a ticket given twice, and when `dst` cannot
    /// hold them all (nothing is copied or released then).
    ///
    /// # Safety
    ///
    /// Each ticket is used once, by one taker, and its entry is held by
    /// nobody else (the hand-over gave it up): the entries are released
    /// here and their buffers go to the next requests.
    pub unsafe fn take_tickets(
        &self,
        tickets: &[u64],
        dst: &mut [u8],
        sizes: &mut [u64],
    ) -> Result<usize> {
        if sizes.len() < tickets.len() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "fewer sizes than tickets",
            ));
        }
        let region = &*self.region;
        let mut total = 0usize;
        for (i, &t) in tickets.iter().enumerate() {
            let (g, generation) = crate::worker::ticket_parts(t).unwrap_or((u32::MAX, 0));
            // SAFETY: the entry is ours (the caller's promise); nobody
            // releases it while we look.
            let Some(l) = (unsafe { crate::worker::delivered_ref(region, g, generation) }) else {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("ticket {i} is not a delivered entry (stale or taken already)"),
                ));
            };
            sizes[i] = l.len() as u64;
            total += l.len();
        }
        let mut seen = tickets.to_vec();
        seen.sort_unstable();
        if seen.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a ticket appears twice",
            ));
        }
        if total > dst.len() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "the entries hold {total} bytes, the destination {}",
                    dst.len()
                ),
            ));
        }
        let mut at = 0usize;
        for &t in tickets {
            let (g, generation) = crate::worker::ticket_parts(t).unwrap_or((u32::MAX, 0));
            // SAFETY: as above; checked delivered in the first pass and
            // released only below, by us.
            if let Some(l) = unsafe { crate::worker::delivered_ref(region, g, generation) } {
                let d = l.data();
                dst[at..at + d.len()].copy_from_slice(d);
                at += d.len();
            }
            crate::worker::release_raw(region, g, generation)?;
        }
        Ok(at)
    }

    /// Releases the entries `tickets` stand for without copying them (the
    /// taker's error path); stale tickets are skipped. Returns how many
    /// were released.
    ///
    /// # Safety
    ///
    /// As [`Self::take_tickets`].
    pub unsafe fn drop_tickets(&self, tickets: &[u64]) -> usize {
        let region = &*self.region;
        tickets
            .iter()
            .filter_map(|&t| crate::worker::ticket_parts(t))
            .filter(|&(g, generation)| crate::worker::release_raw(region, g, generation).is_ok())
            .count()
    }

    /// The region, for the tests that scribble on it.
    #[cfg(test)]
    pub(crate) fn region(&self) -> &Arc<Region> {
        &self.region
    }
}

fn reap_child(pid: i32) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let pid = nix::unistd::Pid::from_raw(pid);
    let deadline = Instant::now() + CHILD_EXIT_GRACE;
    let mut killed = false;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {}
            // Reaped (or not our child any more): done.
            Ok(_) | Err(_) => return,
        }
        if !killed && Instant::now() >= deadline {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        if std::process::id() != self.pid {
            // A forked copy (a worker process): the loader is not ours.
            return;
        }
        let runs_here = {
            let l = self.local.lock().unwrap_or_else(|e| e.into_inner());
            !l.threads.is_empty() || l.child.is_some()
        };
        if self.created || runs_here {
            let _ = self.shutdown();
        }
    }
}
