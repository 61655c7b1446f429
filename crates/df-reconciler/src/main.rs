//! `df-reconciler`: the thin binary. Parses the command line, loads the configuration,
//! sets up logging and hands over to `df_reconciler_core`.

mod demo;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use df_reconciler_core::config::{Config, LogFormat};
use df_reconciler_core::error::{exit_code, Error};
use df_reconciler_core::rules::RuleSet;
use df_reconciler_core::{audit, daemon, db, pass, preflight};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "df-reconciler",
    version,
    about = "Reconciles pg_durable's df control plane with the duroxide engine store"
)]
struct Cli {
    /// TOML configuration file (default: built-in defaults and environment only).
    #[arg(long, global = true, env = "DF_RECONCILER_CONFIG")]
    config: Option<PathBuf>,
    /// Log format (overrides `log.format`).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    /// More logging (debug). RUST_LOG, when set, wins.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Override a configuration key: --set pass.batch_size=500 (repeatable).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormatArg {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The daemon: a pass every pass.interval until SIGTERM/SIGINT.
    Run,
    /// Exactly one pass, then exit with its report.
    Once {
        /// Report what a pass would delete; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Leave out the drift counts (they read every live row).
        #[arg(long)]
        no_drift: bool,
    },
    /// Validate the configuration and the database; one line per problem.
    Check {
        /// Validate the configuration alone, without connecting.
        #[arg(long)]
        offline: bool,
    },
    /// Zero-setup tour on a throwaway PostgreSQL: seed, dry run, real pass, clean up.
    Demo,
    /// Create or upgrade the daemon's own audit schema (audit.schema).
    Migrate {
        /// Instead: create the supporting indexes `check` reports missing, CONCURRENTLY
        /// (run as the owner of the df and engine tables).
        #[arg(long)]
        indexes: bool,
    },
    /// Why one df instance or engine root is still here, and whether the next pass removes
    /// it (read-only). Exit 0 when found, 1 when the id is in neither store.
    Explain {
        /// The df instance id or engine instance id.
        instance_id: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print the most recent passes from the audit trail.
    History {
        /// How many passes.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match &cli.command {
        Command::Demo => {
            // The tour's output is its narrative and the reports' tables; each pass's
            // log lines (which repeat the report as JSON) only with -v or RUST_LOG.
            init_logging(&cli, LogFormat::Text, "warn");
            runtime().block_on(run_demo())
        }
        _ => match Config::load(cli.config.as_deref(), &cli.overrides) {
            Err(e) => {
                eprintln!("df-reconciler: {e}");
                exit_code::USAGE
            }
            Ok(cfg) => {
                init_logging(&cli, cfg.log.format, "info");
                runtime().block_on(dispatch(&cli.command, cfg))
            }
        },
    };
    ExitCode::from(code as u8)
}

/// One thread: the daemon waits on PostgreSQL nearly all the time, and a pass's batches are
/// strictly sequential. With the database connection's task on another worker thread,
/// every reply crossed threads (a futex wake and a context switch) before the next
/// statement could go out.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts")
}

/// Logs to stderr at `level` (`-v`: debug; `RUST_LOG` overrides both), in colour only on a
/// terminal without `NO_COLOR`.
fn init_logging(cli: &Cli, configured: LogFormat, level: &str) {
    // tokio_postgres logs server NOTICEs at info; they are noise for operators.
    let default = if cli.verbose {
        "debug,tokio_postgres=info".to_owned()
    } else {
        format!("{level},tokio_postgres=warn")
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let format = match cli.log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => configured,
    };
    // Colours only for a person at a terminal: journald, files and log shippers would
    // store the escape codes as text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn dispatch(command: &Command, cfg: Config) -> i32 {
    match command {
        Command::Check { offline: true } => {
            println!("configuration OK");
            print_policy(&cfg);
            exit_code::OK
        }
        Command::Check { offline: false } => check(&cfg).await,
        Command::Once {
            dry_run,
            json,
            no_drift,
        } => once(&cfg, *dry_run, *json, *no_drift).await,
        Command::Run => run(cfg, cli_reloader()).await,
        Command::Migrate { indexes: false } => migrate(&cfg).await,
        Command::Migrate { indexes: true } => create_indexes(&cfg).await,
        Command::History { limit, json } => history(&cfg, *limit, *json).await,
        Command::Explain { instance_id, json } => explain(&cfg, instance_id, *json).await,
        Command::Demo => unreachable!("demo needs no configuration"),
    }
}

/// The effective retention policy, a line per rule then the default, and the rules'
/// warnings (a status kept forever with no cap of its own).
fn print_policy(cfg: &Config) {
    let rules = RuleSet::new(&cfg.retention);
    println!("effective retention policy (first matching rule wins):");
    for line in rules.table().lines() {
        println!("  {line}");
    }
    for w in rules.warnings() {
        println!("warning: {w}");
    }
}

fn pool_or_exit(cfg: &Config) -> Result<db::Pool, i32> {
    db::build_pool(cfg).map_err(|e| {
        eprintln!("df-reconciler: {e}");
        e.exit_code()
    })
}

async fn check(cfg: &Config) -> i32 {
    let pool = match pool_or_exit(cfg) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let target = match db::pg_config(&cfg.database) {
        Ok(pg) => db::describe_target(&pg),
        Err(e) => {
            eprintln!("df-reconciler: {e}");
            return exit_code::USAGE;
        }
    };
    let client = match db::connect(&pool, &target).await {
        Ok(c) => c,
        Err(e) => {
            println!("problem: {e}");
            return e.exit_code();
        }
    };
    let result = preflight::verify(&**client, cfg, preflight::Intent::Delete).await;
    let reconcile_warning = preflight::in_database_reconcile_warning(&**client).await;
    match result {
        Ok(verified) => {
            for w in verified
                .warnings
                .iter()
                .chain(reconcile_warning.ok().flatten().iter())
            {
                println!("warning: {w}");
            }
            // The open-transaction guard and drift the daemon never fixes: warnings only.
            match preflight::orphan_guard(&**client).await {
                Ok(guard) => {
                    for w in guard.warnings() {
                        println!("warning: {w}");
                    }
                }
                Err(e) => println!("warning: cannot check the open-transaction guard: {e}"),
            }
            match preflight::df_live_engine_ended_warning(
                &**client,
                &verified.schemas,
                cfg.retention.orphan_min_age,
            )
            .await
            {
                Ok(Some(w)) => println!("warning: {w}"),
                Ok(None) => {}
                Err(e) => println!("warning: cannot count live df rows whose engine ended: {e}"),
            }
            match preflight::writable_search_path_warnings(&**client).await {
                Ok(warnings) => {
                    for w in warnings {
                        println!("warning: {w}");
                    }
                }
                Err(e) => println!("warning: cannot check the role's search path: {e}"),
            }
            match preflight::missing_supporting_indexes(&**client, &verified.schemas).await {
                Ok(missing) => {
                    for index in missing {
                        println!(
                            "warning: missing supporting index on {}: {}; create it with `df-reconciler migrate --indexes` as the table owner",
                            index.describe(&verified.schemas),
                            index.why
                        );
                    }
                }
                Err(e) => println!("warning: cannot look for supporting indexes: {e}"),
            }
            for mode in cfg.connection_modes() {
                println!("mode: {mode}");
            }
            print_policy(cfg);
            println!(
                "ok: {target}, control schema {:?}, engine schema {:?}, engine migration {}",
                verified.schemas.control,
                verified.schemas.engine,
                verified
                    .engine_migration
                    .map_or("unknown".into(), |v| v.to_string())
            );
            exit_code::OK
        }
        Err(Error::Refused(problems)) => {
            for p in &problems {
                println!("problem: {p}");
            }
            exit_code::REFUSED
        }
        Err(e) => {
            println!("problem: {e}");
            e.exit_code()
        }
    }
}

async fn once(cfg: &Config, dry_run: bool, json: bool, no_drift: bool) -> i32 {
    let pool = match pool_or_exit(cfg) {
        Ok(p) => p,
        Err(code) => return code,
    };
    if !dry_run {
        if let Err(e) = auto_migrate(&pool, cfg).await {
            eprintln!("df-reconciler: {e}");
            return e.exit_code();
        }
    }
    let shutdown = shutdown_on_signal();
    let options = pass::PassOptions {
        dry_run,
        skip_drift: no_drift,
        ..pass::PassOptions::default()
    };
    let (report, code) = match pass::run_pass_with(&pool, cfg, &options, &shutdown).await {
        Ok(report) => (report, exit_code::OK),
        Err(failed) => {
            eprintln!("df-reconciler: {}", failed.error);
            let code = failed.error.exit_code();
            (failed.report, code)
        }
    };
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{report}");
    }
    code
}

/// `audit.auto_migrate`: the trail's migrations, before the pass that writes it.
async fn auto_migrate(pool: &db::Pool, cfg: &Config) -> Result<(), Error> {
    if !cfg.audit.auto_migrate {
        return Ok(());
    }
    let target = describe(cfg);
    let mut client = db::connect(pool, &target).await?;
    audit::migrate_if_auto(&mut client, &cfg.audit).await
}

/// Re-reads the same file, environment and `--set` flags the process started with.
fn cli_reloader() -> daemon::Reloader {
    let cli = Cli::parse();
    Box::new(move || Config::load(cli.config.as_deref(), &cli.overrides))
}

async fn run(cfg: Config, reload: daemon::Reloader) -> i32 {
    let (events, receiver) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .expect("SIGHUP handler installs");
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            if events.send(daemon::Event::Reload).await.is_err() {
                break;
            }
        }
    });
    let daemon = daemon::Daemon::new(&cfg);
    match daemon
        .run(cfg, reload, receiver, shutdown_on_signal())
        .await
    {
        Ok(()) => exit_code::OK,
        Err(e) => fail(e),
    }
}

/// One connection for a one-shot subcommand.
async fn one_connection(cfg: &Config) -> Result<db::Object, Error> {
    let pool = db::build_pool(cfg)?;
    db::connect(&pool, &describe(cfg)).await
}

/// Prints the error and returns its exit code.
fn fail(e: Error) -> i32 {
    eprintln!("df-reconciler: {e}");
    e.exit_code()
}

async fn migrate(cfg: &Config) -> i32 {
    let result = async {
        let mut client = one_connection(cfg).await?;
        audit::migrate(&mut client, &cfg.audit).await
    }
    .await;
    match result {
        Ok(applied) if applied.is_empty() => {
            println!("audit schema {:?} is up to date", cfg.audit.schema);
            exit_code::OK
        }
        Ok(applied) => {
            println!(
                "audit schema {:?}: applied migrations {applied:?}",
                cfg.audit.schema
            );
            exit_code::OK
        }
        Err(e) => fail(e),
    }
}

async fn create_indexes(cfg: &Config) -> i32 {
    let result = async {
        let client = one_connection(cfg).await?;
        let engine = preflight::resolve_engine_schema(&**client, cfg).await?;
        let schemas = df_reconciler_core::sql::Schemas::new(&cfg.schemas.control, &engine);
        preflight::create_supporting_indexes(&**client, &schemas).await
    }
    .await;
    match result {
        Ok(created) if created.is_empty() => {
            println!("supporting indexes are all present");
            exit_code::OK
        }
        Ok(created) => {
            println!("created indexes {created:?}");
            exit_code::OK
        }
        Err(e) => fail(e),
    }
}

async fn explain(cfg: &Config, instance_id: &str, json: bool) -> i32 {
    let pool = match pool_or_exit(cfg) {
        Ok(p) => p,
        Err(code) => return code,
    };
    match pass::explain::explain(&pool, cfg, instance_id).await {
        Ok(Some(explanation)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&explanation).expect("an explanation serializes")
                );
            } else {
                print!("{explanation}");
            }
            exit_code::OK
        }
        Ok(None) => {
            eprintln!("df-reconciler: {instance_id:?} is in neither the df nor the engine store");
            exit_code::FAILED
        }
        Err(e) => {
            eprintln!("df-reconciler: {e}");
            e.exit_code()
        }
    }
}

async fn history(cfg: &Config, limit: i64, json: bool) -> i32 {
    let result = async {
        let client = one_connection(cfg).await?;
        if !audit::is_installed(&**client, &cfg.audit).await? {
            return Ok(None);
        }
        audit::recent_passes(&**client, &cfg.audit, limit)
            .await
            .map(Some)
    }
    .await;
    match result {
        Ok(None) => {
            eprintln!(
                "df-reconciler: no audit trail in schema {:?}; run `df-reconciler migrate`",
                cfg.audit.schema
            );
            exit_code::FAILED
        }
        Ok(Some(rows)) => {
            if json {
                for row in &rows {
                    println!("{}", serde_json::to_string(row).expect("rows serialize"));
                }
            } else {
                println!(
                    "{:<24} {:<16} {:<8} {:<8} {:>10} {:>11} {:>10}  host",
                    "started", "pass", "kind", "outcome", "instances", "generations", "rows"
                );
                for r in &rows {
                    println!(
                        "{:<24} {:<16} {:<8} {:<8} {:>10} {:>11} {:>10}  {}{}",
                        humantime::format_rfc3339_seconds(r.started_at),
                        r.pass_id,
                        if r.dry_run { "dry-run" } else { "real" },
                        r.outcome,
                        r.instances_removed,
                        r.generations_pruned,
                        r.rows_deleted,
                        r.host,
                        if r.error.is_empty() {
                            String::new()
                        } else {
                            format!("  error: {}", r.error)
                        }
                    );
                }
            }
            exit_code::OK
        }
        Err(e) => fail(e),
    }
}

/// `user@host:port/db` of the configured DSN, for messages.
fn describe(cfg: &Config) -> String {
    db::pg_config(&cfg.database)
        .map(|pg| db::describe_target(&pg))
        .unwrap_or_else(|_| "the configured database".into())
}

/// A token cancelled by SIGTERM or SIGINT; the current batch finishes first.
fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutdown requested; finishing the current batch");
        cancel.cancel();
    });
    token
}

async fn run_demo() -> i32 {
    println!("df-reconciler demo: starting a throwaway PostgreSQL ...");
    let started = tokio::select! {
        d = demo::Demo::start() => d,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted");
            return exit_code::FAILED;
        }
    };
    let demo = match started {
        Ok(d) => d,
        Err(e) => {
            eprintln!("df-reconciler demo: {e}");
            return exit_code::FAILED;
        }
    };
    println!(
        "seeded database {} (engine schema _duroxide); retention: 30d window, hard cap 10000, orphan_min_age 1h\n",
        demo.cluster().dsn("demo")
    );
    let outcome = tokio::select! {
        o = demo.run() => o,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("interrupted; removing the cluster");
            return exit_code::FAILED;
        }
    };
    // `demo` drops at return: the cluster stops and its directory is removed.
    match outcome {
        Ok(o) => {
            println!("== 1. dry run (nothing written) ==\n{}", o.dry_run);
            println!("== 2. real pass ==\n{}", o.real);
            println!(
                "== 3. second pass (idempotence: nothing left to remove) ==\n{}",
                o.again
            );
            println!("demo finished; removing the throwaway cluster");
            exit_code::OK
        }
        Err(e) => {
            eprintln!("df-reconciler demo: {e}");
            exit_code::FAILED
        }
    }
}
