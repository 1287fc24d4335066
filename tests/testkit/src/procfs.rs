//! CPU time of processes, from /proc, to set what a run cost beside what it
//! measured: the whole process's, and each of its threads'.

use std::collections::{BTreeMap, HashMap};

/// A process's CPU time so far, whole and per thread.
pub struct CpuSample {
    total_secs: f64,
    /// Per thread (its id and start time, as ids are reused): its name
    /// (`comm`) and CPU seconds.
    threads: HashMap<(u32, u64), (String, f64)>,
}

/// CPU seconds spent between two samples of one process.
#[derive(Debug, PartialEq)]
pub struct CpuSpent {
    pub total_secs: f64,
    /// Per thread name, numbered threads together (`org-arbiter-0` and
    /// `org-arbiter-1` as `org-arbiter`). Only threads alive at the later
    /// sample: what ended threads spent is in `total_secs` alone.
    pub by_thread_secs: BTreeMap<String, f64>,
}

impl CpuSample {
    /// `None` when the process's /proc entry cannot be read (it exited, or
    /// this is not Linux). A thread that ends while it is read is left out.
    pub fn take(pid: u32) -> Option<Self> {
        let total_secs = process_cpu_secs(pid)?;
        let mut threads = HashMap::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let Some(tid) = entry
                .ok()
                .and_then(|e| e.file_name().to_str()?.parse::<u32>().ok())
            else {
                continue;
            };
            let stat = read_stat(&format!("/proc/{pid}/task/{tid}/stat"));
            if let Some(Stat {
                name,
                cpu_secs,
                start_ticks,
            }) = stat.as_deref().and_then(parse_stat)
            {
                threads.insert((tid, start_ticks), (name, cpu_secs));
            }
        }
        Some(Self {
            total_secs,
            threads,
        })
    }

    /// What the process spent since `earlier`; a thread started since then
    /// counts from zero.
    pub fn since(&self, earlier: &CpuSample) -> CpuSpent {
        let mut by_thread_secs = BTreeMap::new();
        for (thread, (name, secs)) in &self.threads {
            let before = earlier.threads.get(thread).map_or(0.0, |(_, secs)| *secs);
            *by_thread_secs.entry(thread_group(name)).or_insert(0.0) += secs - before;
        }
        CpuSpent {
            total_secs: self.total_secs - earlier.total_secs,
            by_thread_secs,
        }
    }
}

/// User plus system CPU seconds a process has used so far; `None` when its
/// /proc entry cannot be read (it exited, or this is not Linux).
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    Some(parse_stat(&read_stat(&format!("/proc/{pid}/stat"))?)?.cpu_secs)
}

/// A thread's name without its number: `org-arbiter-1` is `org-arbiter`.
fn thread_group(name: &str) -> String {
    let unnumbered = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if unnumbered.len() == name.len() || unnumbered.is_empty() {
        return name.to_owned();
    }
    unnumbered.trim_end_matches(['-', ' ', ':', '#']).to_owned()
}

/// What a `stat` file of /proc (a process's or a thread's) says.
#[derive(Debug, PartialEq)]
struct Stat {
    name: String,
    /// User plus system.
    cpu_secs: f64,
    /// When it started, in ticks since boot: with the id, names a thread.
    start_ticks: u64,
}

/// A `stat` file; a name that is not UTF-8 is read lossily, not dropped.
fn read_stat(path: &str) -> Option<String> {
    Some(String::from_utf8_lossy(&std::fs::read(path).ok()?).into_owned())
}

fn parse_stat(stat: &str) -> Option<Stat> {
    // The name is in parentheses and may hold spaces and parentheses.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // utime, stime and starttime are fields 14, 15 and 22 of
    // proc_pid_stat(5); 0 here is field 3.
    Some(Stat {
        name,
        cpu_secs: (field(11)? + field(12)?) as f64 / clock_ticks_per_sec(),
        start_ticks: field(19)?,
    })
}

/// The unit of /proc's CPU times (USER_HZ).
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_cpu_whatever_the_name_holds() {
        let hz = clock_ticks_per_sec();
        let stat = "4242 (actix-rt|sys) tem) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 5 0 987654 1 2";
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                name: "actix-rt|sys) tem".into(),
                cpu_secs: 300.0 / hz,
                start_ticks: 987654,
            })
        );
        assert_eq!(parse_stat("4242 (cut"), None);
    }

    #[test]
    fn numbered_threads_are_one_group() {
        assert_eq!(thread_group("org-arbiter-0"), "org-arbiter");
        assert_eq!(thread_group("org-arbiter-12"), "org-arbiter");
        assert_eq!(thread_group("actix-rt|system"), "actix-rt|system");
        assert_eq!(thread_group("sqlite-writer"), "sqlite-writer");
        assert_eq!(thread_group("worker-"), "worker-");
        assert_eq!(thread_group("42"), "42");
    }

    /// CPU seconds the calling thread has used.
    fn own_cpu_secs() -> f64 {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is valid for the call to write.
        assert_eq!(
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) },
            0
        );
        t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
    }

    #[test]
    fn a_busy_thread_of_this_process_shows_in_what_it_spent() {
        let pid = std::process::id();
        let before = CpuSample::take(pid).expect("this process's /proc");
        let (spun_tx, spun_rx) = std::sync::mpsc::channel::<()>();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let busy = std::thread::Builder::new()
            .name("cpu-probe-7".into())
            .spawn(move || {
                // 100 ms of its own CPU, however busy the machine is.
                let mut x = 0u64;
                while own_cpu_secs() < 0.1 {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                std::hint::black_box(x);
                spun_tx.send(()).unwrap();
                // Alive at the second sample: only live threads are named.
                let _ = stop_rx.recv();
            })
            .unwrap();
        spun_rx.recv().unwrap();
        let after = CpuSample::take(pid).expect("this process's /proc");
        drop(stop_tx);
        busy.join().unwrap();
        let spent = after.since(&before);
        let probe = spent
            .by_thread_secs
            .get("cpu-probe")
            .copied()
            .unwrap_or(0.0);
        assert!(
            probe >= 0.05,
            "the spinning thread spent {probe} s: {spent:?}"
        );
        assert!(spent.total_secs >= probe - 0.02, "{spent:?}");
    }
}
