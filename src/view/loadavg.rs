//! proc/loadavg: the kernel's 1, 5 and 15 minute load averages, computed the kernel's way
//! (kernel/sched/loadavg.c: fixed point with 11 bits of fraction, one step every 5 seconds) over the
//! container's tasks instead of the host's.

/// Bits of fraction in the fixed-point averages (`FSHIFT`).
const FSHIFT: u32 = 11;
/// 1.0 in fixed point (`FIXED_1`).
const FIXED_1: u64 = 1 << FSHIFT;
/// exp(-5 s / 1 min), exp(-5 s / 5 min), exp(-5 s / 15 min) in fixed point (`EXP_1`, `EXP_5`, `EXP_15`).
const EXP: [u64; 3] = [1884, 2014, 2037];

/// How often the averages take a step (`LOAD_FREQ`, 5 s).
pub const LOAD_PERIOD: std::time::Duration = std::time::Duration::from_secs(5);

/// The three averages in the kernel's fixed point (`avenrun`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadAverages([u64; 3]);

impl LoadAverages {
    /// All three averages at `active` tasks: where a container's averages start on its first read, so
    /// that read already says something (the kernel starts at 0 at boot; so does LXCFS on a cgroup's
    /// first read, and then climbs for minutes).
    pub fn starting_at(active: u32) -> Self {
        LoadAverages([u64::from(active) * FIXED_1; 3])
    }

    /// `steps` steps of the kernel's `calc_load` with `active` running plus uninterruptible tasks.
    pub fn step(&mut self, active: u32, steps: u32) {
        let active = u64::from(active) * FIXED_1;
        for _ in 0..steps.min(1000) {
            for (load, exp) in self.0.iter_mut().zip(EXP) {
                *load = calc_load(*load, exp, active);
            }
        }
    }

    /// The three averages as loadavg shows them (two decimals): what `vproc status` reports.
    pub fn shown(self) -> [f64; 3] {
        self.hundredths()
            .map(|(whole, hundredths)| whole as f64 + hundredths as f64 / 100.0)
    }

    /// The averages as `/proc/loadavg` prints them: two decimals, rounded as the kernel rounds
    /// (`get_avenrun(avnrun, FIXED_1/200, 0)`).
    fn hundredths(self) -> [(u64, u64); 3] {
        self.0.map(|load| {
            let load = load + FIXED_1 / 200;
            (load >> FSHIFT, ((load & (FIXED_1 - 1)) * 100) >> FSHIFT)
        })
    }
}

/// kernel/sched/loadavg.c `calc_load`: a * e + active * (1 - e), rounded up while rising.
fn calc_load(load: u64, exp: u64, active: u64) -> u64 {
    let mut new = load * exp + active * (FIXED_1 - exp);
    if active >= load {
        new += FIXED_1 - 1;
    }
    new / FIXED_1
}

/// What the last two fields of /proc/loadavg say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadTasks {
    /// Runnable tasks now (the kernel's `nr_running()`, the reader included).
    pub running: u32,
    /// All tasks (threads).
    pub total: u32,
    /// The last pid handed out in the reader's pid namespace, as far as known.
    pub last_pid: u32,
}

/// `0.52 0.58 0.59 2/183 4567`, in the kernel's format.
pub fn render_loadavg(averages: LoadAverages, tasks: LoadTasks) -> String {
    let [(a1, f1), (a5, f5), (a15, f15)] = averages.hundredths();
    format!(
        "{a1}.{f1:02} {a5}.{f5:02} {a15}.{f15:02} {}/{} {}\n",
        tasks.running, tasks.total, tasks.last_pid
    )
}

/// The last pid of the host's /proc/loadavg (its fifth field).
pub fn host_last_pid(host_loadavg: &str) -> Option<u32> {
    host_loadavg.split_whitespace().nth(4)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TASKS: LoadTasks = LoadTasks {
        running: 1,
        total: 12,
        last_pid: 40,
    };

    #[test]
    fn a_first_read_shows_what_runs_now() {
        assert_eq!(
            render_loadavg(LoadAverages::starting_at(2), TASKS),
            "2.00 2.00 2.00 1/12 40\n"
        );
        assert_eq!(
            render_loadavg(LoadAverages::default(), TASKS),
            "0.00 0.00 0.00 1/12 40\n"
        );
    }

    /// The kernel's own numbers: one busy task from idle for one minute (12 steps) gives
    /// 1 - e^-1 = 0.63 on the 1 minute average, 0.18 on the 5 and 0.06 on the 15.
    #[test]
    fn one_busy_task_for_a_minute() {
        let mut load = LoadAverages::default();
        load.step(1, 12);
        assert_eq!(render_loadavg(load, TASKS), "0.63 0.18 0.06 1/12 40\n");
        // And back to idle for 5 minutes: the 1 minute average is nearly gone, the others decay slower.
        load.step(0, 60);
        let text = render_loadavg(load, TASKS);
        assert!(text.starts_with("0.00 0.0"), "{text}");
    }

    #[test]
    fn steady_load_converges_to_itself() {
        let mut load = LoadAverages::starting_at(0);
        load.step(3, 2000);
        assert_eq!(render_loadavg(load, TASKS), "3.00 3.00 3.00 1/12 40\n");
    }

    #[test]
    fn host_last_pid_is_the_fifth_field() {
        assert_eq!(host_last_pid("1.21 0.50 0.20 4/101 31337\n"), Some(31337));
        assert_eq!(host_last_pid("1.21 0.50"), None);
    }
}
