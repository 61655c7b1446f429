//! What a run found: the lines of the summary table and the notes under it, and their
//! Markdown rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::stats::secs;

/// One line of the summary table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub measure: String,
    pub n: String,
    pub figure: String,
    pub target: String,
    pub verdict: String,
}

#[derive(Debug, Default)]
pub struct Results {
    pub lines: Vec<Line>,
    pub notes: Vec<String>,
    /// Peak RSS (KiB) of `once` per seeded size.
    pub rss: BTreeMap<u32, u64>,
}

impl Results {
    /// Adds a line to the table and echoes it to stderr.
    pub fn line(&mut self, measure: &str, n: &str, figure: String, target: &str, verdict: &str) {
        eprintln!("  => {measure} [{n}]: {figure} {target} {verdict}");
        self.lines.push(Line {
            measure: measure.into(),
            n: n.into(),
            figure,
            target: target.into(),
            verdict: verdict.into(),
        });
    }

    /// The report on stdout: `environment` (which ends with a blank line), the table, the
    /// notes, and the run's wall time with the load average at its end.
    pub fn render(&self, environment: &str, wall: Duration, loadavg: &str) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{environment}");
        out.push_str("| measure | N (roots) | figure | target | holds |\n");
        out.push_str("|---|---|---|---|---|\n");
        for l in &self.lines {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                l.measure, l.n, l.figure, l.target, l.verdict
            );
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        let _ = write!(
            out,
            "\nBenchmark wall time {}; load average at the end: {loadavg}\n",
            secs(wall)
        );
        out
    }
}

/// The "holds" column of a line with a target.
pub fn holds(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "NO"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_table_then_notes_then_wall_time() {
        let mut r = Results::default();
        r.line("floor", "10,000", "1.00 s".into(), "", "");
        r.line("ratio", "10,000", "0.70".into(), ">= 0.6", holds(true));
        r.notes.push("seeded in 2.00 s".into());
        let out = r.render(
            "## Environment\n\n- cores: 2\n",
            Duration::from_secs(3),
            "1.0",
        );
        assert_eq!(
            out,
            "## Environment\n\n- cores: 2\n\n\
             | measure | N (roots) | figure | target | holds |\n\
             |---|---|---|---|---|\n\
             | floor | 10,000 | 1.00 s |  |  |\n\
             | ratio | 10,000 | 0.70 | >= 0.6 | yes |\n\
             \n\
             - seeded in 2.00 s\n\
             \n\
             Benchmark wall time 3.00 s; load average at the end: 1.0\n"
        );
    }

    #[test]
    fn renders_no_notes_section_without_notes() {
        let r = Results::default();
        let out = r.render("env\n", Duration::from_millis(1500), "0.5 0.4 0.3");
        assert_eq!(
            out,
            "env\n\n| measure | N (roots) | figure | target | holds |\n|---|---|---|---|---|\n\
             \nBenchmark wall time 1.50 s; load average at the end: 0.5 0.4 0.3\n"
        );
    }

    #[test]
    fn verdicts() {
        assert_eq!(holds(true), "yes");
        assert_eq!(holds(false), "NO");
    }
}
