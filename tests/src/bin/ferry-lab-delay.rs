//! ferry-lab-delay: adds a fixed one-way delay (and optional random loss) to
//! every packet routed through a TUN device, for the network-namespace lab.
//!
//! The lab's kernel has no netem, so `scripts/lab.sh set delay RTT_MS` runs
//! this program in the `inet` router's namespace and policy-routes every
//! forwarded packet into its TUN device:
//!
//! ```text
//!   to-nat-a ──► kernel ──(table 100: default dev tun0)──► tun0 ──► read
//!                                                                    │ hold DELAY,
//!                                                                    │ maybe drop
//!   to-nat-b ◄── kernel ◄──(iif tun0: main table)◄──────── tun0 ◄── write
//! ```
//!
//! Every packet gets the same delay, so the packets due first are always at
//! the head of one FIFO deque. Tokio's timer has a 1 ms granularity and wakes
//! 1-2 ms late, too coarse for a 25 ms hold, so a plain thread writes: it
//! waits on a condition variable until the head is due (a futex timeout,
//! microsecond precision) and writes every packet due by then; the tokio
//! task only reads the device and appends to the deque.
//!
//! Bounded: at most `--max-packets` / `--max-bytes` are held (beyond that
//! packets are dropped and counted), and it exits on SIGTERM, SIGINT or after
//! `--max-secs`. It prints a line of counters and its own CPU use every
//! `--report-secs` and at exit, on stderr.
//!
//! Not a netem replacement: no jitter, no reordering, no rate limit (the lab
//! uses tc tbf for rates). Linux only; needs CAP_NET_ADMIN.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::signal::unix::{SignalKind, signal};
use tokio_tun::Tun;

/// Holds every packet that the kernel routes into a TUN device for a fixed
/// delay, optionally drops some at random, and writes the rest back in order.
#[derive(Parser, Debug)]
#[command(name = "ferry-lab-delay")]
struct Cli {
    /// Name of the TUN device to create.
    #[arg(long, default_value = "tun0")]
    dev: String,
    /// One-way delay every packet is held for, in milliseconds (may be
    /// fractional, e.g. 12.5).
    #[arg(long, default_value_t = 25.0)]
    delay_ms: f64,
    /// Percentage of packets dropped at random (0..100, fractional allowed).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seed of the loss RNG, for repeatable runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// At most this many packets are held; more are dropped.
    #[arg(long, default_value_t = 200_000)]
    max_packets: usize,
    /// At most this many bytes are held; more are dropped.
    #[arg(long, default_value_t = 128 * 1024 * 1024)]
    max_bytes: usize,
    /// Exit after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    max_secs: u64,
    /// Print counters and CPU use every this many seconds (0: only at exit).
    #[arg(long, default_value_t = 10)]
    report_secs: u64,
    /// MTU of the TUN device.
    #[arg(long, default_value_t = 1500)]
    mtu: i32,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !(0.0..=10_000.0).contains(&cli.delay_ms) {
        bail!("--delay-ms must be within 0..10000, not {}", cli.delay_ms);
    }
    if !(0.0..=100.0).contains(&cli.loss) {
        bail!(
            "--loss must be a percentage within 0..100, not {}",
            cli.loss
        );
    }
    // The reader needs only one thread; the writer is a thread of its own.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(run(cli))
}

/// A packet waiting for its time.
struct Held {
    due: Instant,
    bytes: Vec<u8>,
}

#[derive(Default, Debug, Clone, Copy)]
struct Counters {
    received: u64,
    received_bytes: u64,
    sent: u64,
    sent_bytes: u64,
    dropped_loss: u64,
    dropped_full: u64,
    send_errors: u64,
    max_queued: usize,
    /// Sum and maximum of how late packets went out, in microseconds.
    late_sum_us: u64,
    late_max_us: u64,
}

/// What the reader and the writer share: the deque, its byte count and the
/// counters, under one lock (each side takes it once per batch).
#[derive(Default)]
struct Line {
    queue: VecDeque<Held>,
    queued_bytes: usize,
    counters: Counters,
}

struct Shared {
    line: Mutex<Line>,
    /// Signalled when the deque goes from empty to not empty, and on stop.
    wake: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Line> {
        // A panic in the other thread ends the program anyway; the data is
        // plain counters and packets.
        self.line.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn run(cli: Cli) -> Result<()> {
    let tun = Arc::new(
        Tun::builder()
            .name(&cli.dev)
            .mtu(cli.mtu)
            .up()
            .build()
            .with_context(|| {
                format!(
                    "cannot create TUN device {} (needs /dev/net/tun and CAP_NET_ADMIN)",
                    cli.dev
                )
            })?
            .pop()
            .context("no TUN queue was opened")?,
    );
    let delay = Duration::from_secs_f64(cli.delay_ms / 1000.0);
    // Loss is decided per packet as `random u32 < threshold`.
    let loss_threshold = (cli.loss / 100.0 * f64::from(u32::MAX)) as u64;
    let mut rng = StdRng::seed_from_u64(cli.seed);
    let mut sigterm = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let start = Instant::now();
    let end = tokio::time::sleep(Duration::from_secs(if cli.max_secs > 0 {
        cli.max_secs
    } else {
        86_400 * 365
    }));
    tokio::pin!(end);
    let report_every = Duration::from_secs(cli.report_secs.max(1));
    let mut report =
        tokio::time::interval_at(tokio::time::Instant::now() + report_every, report_every);

    eprintln!(
        "ferry-lab-delay: {} up, one-way delay {:.3} ms, loss {}%, seed {}, cap {} packets / {} bytes",
        tun.name(),
        cli.delay_ms,
        cli.loss,
        cli.seed,
        cli.max_packets,
        cli.max_bytes
    );

    let shared = Arc::new(Shared {
        line: Mutex::new(Line::default()),
        wake: Condvar::new(),
        stop: AtomicBool::new(false),
    });
    let writer = {
        let (shared, tun) = (Arc::clone(&shared), Arc::clone(&tun));
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || write_when_due(&shared, &tun))
            .context("cannot start the writer thread")?
    };

    let mut last = (start, Counters::default(), cpu_seconds());
    let mut buf = vec![0u8; 65_536];
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(256);
    let reason = loop {
        tokio::select! {
            biased;
            _ = sigterm.recv() => break "SIGTERM",
            _ = sigint.recv() => break "SIGINT",
            _ = &mut end, if cli.max_secs > 0 => break "--max-secs",
            r = tun.recv(&mut buf) => {
                let n = r.context("reading the TUN device")?;
                // Drain what else is ready, then take the lock once.
                batch.push(buf[..n].to_vec());
                while batch.len() < 256 {
                    match tun.try_recv(&mut buf) {
                        Ok(n) => batch.push(buf[..n].to_vec()),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e).context("reading the TUN device"),
                    }
                }
                let due = Instant::now() + delay;
                let mut line = shared.lock();
                let was_empty = line.queue.is_empty();
                for bytes in batch.drain(..) {
                    admit(&mut line, bytes, due, loss_threshold, &mut rng, &cli);
                }
                let now_empty = line.queue.is_empty();
                drop(line);
                if was_empty && !now_empty {
                    shared.wake.notify_one();
                }
            }
            _ = report.tick(), if cli.report_secs > 0 => {
                let now = Instant::now();
                let (counters, queued) = { let l = shared.lock(); (l.counters, l.queue.len()) };
                let cpu = cpu_seconds();
                print_report("report", now - last.0, &counters, &last.1, cpu - last.2, queued);
                last = (now, counters, cpu);
            }
        }
    };
    shared.stop.store(true, Ordering::SeqCst);
    shared.wake.notify_one();
    if writer.join().is_err() {
        bail!("the writer thread panicked");
    }
    let (counters, queued) = {
        let l = shared.lock();
        (l.counters, l.queue.len())
    };
    print_report(
        &format!("exit ({reason}), total"),
        start.elapsed(),
        &counters,
        &Counters::default(),
        cpu_seconds(),
        queued,
    );
    Ok(())
}

/// admit: one packet read from the device is dropped (loss, full deque) or
/// queued to go out at `due`.
fn admit(
    line: &mut Line,
    bytes: Vec<u8>,
    due: Instant,
    loss_threshold: u64,
    rng: &mut StdRng,
    cli: &Cli,
) {
    line.counters.received += 1;
    line.counters.received_bytes += bytes.len() as u64;
    if loss_threshold > 0 && u64::from(rng.r#gen::<u32>()) < loss_threshold {
        line.counters.dropped_loss += 1;
        return;
    }
    if line.queue.len() >= cli.max_packets || line.queued_bytes + bytes.len() > cli.max_bytes {
        line.counters.dropped_full += 1;
        return;
    }
    line.queued_bytes += bytes.len();
    line.queue.push_back(Held { due, bytes });
    line.counters.max_queued = line.counters.max_queued.max(line.queue.len());
}

/// write_when_due: the writer thread. Sleeps until the head of the deque is
/// due, takes every packet due by then out under the lock, writes them
/// outside it, until told to stop.
fn write_when_due(shared: &Shared, tun: &Tun) {
    let mut due_now: Vec<Held> = Vec::with_capacity(1024);
    loop {
        {
            let mut line = shared.lock();
            loop {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let now = Instant::now();
                match line.queue.front().map(|p| p.due) {
                    None => {
                        line = shared
                            .wake
                            .wait(line)
                            .unwrap_or_else(PoisonError::into_inner)
                    }
                    Some(due) if due > now => {
                        line = shared
                            .wake
                            .wait_timeout(line, due - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    Some(_) => break,
                }
            }
            let now = Instant::now();
            while line.queue.front().is_some_and(|p| p.due <= now) {
                let Some(p) = line.queue.pop_front() else {
                    break;
                };
                line.queued_bytes -= p.bytes.len();
                due_now.push(p);
            }
        }
        let mut sent = Counters::default();
        for p in due_now.drain(..) {
            let late = Instant::now().saturating_duration_since(p.due).as_micros() as u64;
            sent.late_sum_us += late;
            sent.late_max_us = sent.late_max_us.max(late);
            if send(tun, &p.bytes) {
                sent.sent += 1;
                sent.sent_bytes += p.bytes.len() as u64;
            } else {
                sent.send_errors += 1;
            }
        }
        let mut line = shared.lock();
        let c = &mut line.counters;
        c.sent += sent.sent;
        c.sent_bytes += sent.sent_bytes;
        c.send_errors += sent.send_errors;
        c.late_sum_us += sent.late_sum_us;
        c.late_max_us = c.late_max_us.max(sent.late_max_us);
    }
}

/// send: writes one packet back to the device. A TUN write hands the packet
/// to the kernel's input path and hardly ever blocks; if it does, retry a few
/// times after a short pause, then count it lost.
fn send(tun: &Tun, packet: &[u8]) -> bool {
    for _ in 0..100 {
        match tun.try_send(packet) {
            Ok(_) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(20))
            }
            Err(_) => return false,
        }
    }
    false
}

fn print_report(
    what: &str,
    span: Duration,
    now: &Counters,
    before: &Counters,
    cpu: f64,
    queued: usize,
) {
    let secs = span.as_secs_f64().max(1e-9);
    let sent = now.sent - before.sent;
    let mean_late_us = if sent > 0 {
        (now.late_sum_us - before.late_sum_us) as f64 / sent as f64
    } else {
        0.0
    };
    eprintln!(
        "ferry-lab-delay: {what} over {secs:.1} s: in {} pkts ({:.1} Mbit/s), out {} pkts ({:.0} pkts/s), \
         dropped {} by loss, {} by cap, {} send errors; queued now {queued}, max {}; \
         late mean {mean_late_us:.0} us, max {} us; CPU {cpu:.2} s ({:.0}% of one core)",
        now.received - before.received,
        (now.received_bytes - before.received_bytes) as f64 * 8.0 / secs / 1e6,
        sent,
        sent as f64 / secs,
        now.dropped_loss - before.dropped_loss,
        now.dropped_full - before.dropped_full,
        now.send_errors - before.send_errors,
        now.max_queued,
        now.late_max_us,
        cpu / secs * 100.0,
    );
}

/// cpu_seconds: user + system CPU time of this process (all threads) so far,
/// from /proc/self/stat (fields 14 and 15, in USER_HZ = 100 ticks on Linux);
/// 0 when it cannot be read.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The command name (field 2) is in parentheses and may contain spaces.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3, so utime (14) is index 11 and stime (15) index 12.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}
