//! CPU time of processes, from /proc, to set what a run cost beside what it
//! measured.

/// User plus system CPU seconds a process has used so far; `None` when its
/// /proc entry cannot be read (it exited, or this is not Linux).
pub fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15 of proc_pid_stat(5); 0 here is field 3.
    Some((ticks(11)? + ticks(12)?) / clock_ticks_per_sec())
}

/// The unit of /proc's CPU times (USER_HZ).
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant of the system; it has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}
