//! How the machine's cores spent a measurement, from `/proc/stat` (procfs). On a virtual
//! machine `steal` is time the host gave our cores to other guests: a run under steal is
//! slower for reasons outside the benchmark, so every timed run records it.

use std::fmt;

use procfs::{CpuTime, CurrentSI, KernelStats};

/// The machine-wide CPU counters at one moment.
#[derive(Debug, Clone)]
pub struct CpuMark(CpuTime);

impl CpuMark {
    /// Now; None where /proc/stat cannot be read (not Linux).
    pub fn now() -> Option<Self> {
        KernelStats::current().ok().map(|k| CpuMark(k.total))
    }

    /// Where the cores' time went between this mark and now.
    pub fn since(&self) -> Option<CpuUse> {
        let now = Self::now()?;
        CpuUse::between(&self.0, &now.0)
    }
}

/// Shares of all cores' time over an interval, in percent.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// Running anything (user, nice, system, irq, softirq).
    pub busy: f64,
    /// Taken by the hypervisor.
    pub steal: f64,
}

impl CpuUse {
    fn between(a: &CpuTime, b: &CpuTime) -> Option<Self> {
        let delta = |x: u64, y: u64| y.saturating_sub(x) as f64;
        let opt = |x: Option<u64>, y: Option<u64>| delta(x.unwrap_or(0), y.unwrap_or(0));
        let busy = delta(a.user, b.user)
            + delta(a.nice, b.nice)
            + delta(a.system, b.system)
            + opt(a.irq, b.irq)
            + opt(a.softirq, b.softirq);
        let steal = opt(a.steal, b.steal);
        let idle = delta(a.idle, b.idle) + opt(a.iowait, b.iowait);
        let total = busy + steal + idle;
        (total > 0.0).then(|| CpuUse {
            busy: 100.0 * busy / total,
            steal: 100.0 * steal / total,
        })
    }
}

impl fmt::Display for CpuUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cores {:.0}% busy, {:.0}% steal", self.busy, self.steal)
    }
}

/// "cores 53% busy, 0% steal", or "cores ?" without /proc/stat.
pub fn describe(cpu: Option<CpuUse>) -> String {
    cpu.map_or_else(|| "cores ?".into(), |c| c.to_string())
}
