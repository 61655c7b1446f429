//! Peak RSS of `once` at 10k roots (and 1M with `--big`), for sizes the pass runs did
//! not measure already, and its growth from 10k to the largest size measured.

use anyhow::Result;

use crate::daemon::Daemon;
use crate::results::{holds, Results};
use crate::server::{Seed, Server};
use crate::stats::{mib, secs, thousands};
use crate::{Args, BIG_N, SMALL_N};

/// One `once` per size without a peak RSS yet, then the growth line.
pub async fn measure(
    server: &Server,
    daemon: &Daemon,
    args: &Args,
    results: &mut Results,
) -> Result<()> {
    let mut sizes = vec![SMALL_N];
    if args.big {
        sizes.push(BIG_N);
    }
    for n in sizes {
        if results.rss.contains_key(&n) {
            continue;
        }
        eprintln!("peak RSS at {} roots", thousands(n.into()));
        let (seed_db, took) = server.seeded(Seed::realistic(n)).await?;
        if !took.is_zero() {
            eprintln!("  seeded in {}", secs(took));
        }
        let db = format!("rss_{n}");
        server.fresh_copy(&seed_db, &db).await?;
        let dsn = server.dsn(&db);
        let d = daemon.clone();
        let run = tokio::task::spawn_blocking(move || d.once(&dsn, &[])).await??;
        server.drop_db(&db).await?;
        if let Some(kb) = run.max_rss_kb {
            results.rss.insert(n, kb);
            results.line(
                "peak RSS of `once`",
                &thousands(n.into()),
                format!(
                    "{} (pass {}, {} roots removed)",
                    mib(kb),
                    secs(run.wall),
                    thousands(run.instances_removed)
                ),
                "",
                run.rss_method,
            );
        }
    }
    let small = results.rss.get(&SMALL_N).copied();
    let largest = results.rss.iter().next_back().map(|(n, kb)| (*n, *kb));
    if let (Some(small), Some((n, large))) = (small, largest) {
        if n > SMALL_N {
            let growth = large as f64 / 1024.0 - small as f64 / 1024.0;
            results.line(
                "peak RSS growth",
                &format!("10,000 -> {}", thousands(n.into())),
                format!("{growth:+.1} MiB"),
                "< 10 MB",
                holds(growth * 1.048_576 < 10.0),
            );
        }
    }
    Ok(())
}
