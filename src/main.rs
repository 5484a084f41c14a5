mod cli;

use std::path::PathBuf;
use std::time::Duration;

use std::io::Read;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tollgate::app::App;
use tollgate::auth::{Claims, SigningKey};
use tollgate::config::Settings;
use tracing::{error, info};

/// glibc's allocator was a fifth of the CPU under load (malloc, free and
/// their lock traffic across the runtime's threads); mimalloc's per-thread
/// heaps take most of that away. See docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tollgate: decides who may use public data, on Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (defaults < file < TOLLGATE_* environment).
    #[arg(long, short, global = true, env = "TOLLGATE_CONFIG_FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the decision broker until SIGINT/SIGTERM.
    Serve,
    /// Print the configuration `serve` would run with (defaults < file <
    /// environment) as JSON, secrets redacted; fails on an unknown key or
    /// an invalid value, so a deployment's settings can be checked first.
    Config,
    /// Run the whole flow on an embedded Kafka and a temporary SQLite file.
    Demo {
        #[arg(long, default_value_t = 300)]
        requests: usize,
        /// Requests per second (0: as fast as possible).
        #[arg(long, default_value_t = 100)]
        rate: u32,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Print progress instead of every decision.
        #[arg(long)]
        quiet: bool,
        /// Keep the demo's SQLite database in this directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Policy authoring: check, test, explain, what-if.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Measure decisions per second and latency against two baselines on
    /// the same broker (kafka.bootstrap_servers, else embedded): a
    /// pass-through, and the crypto ceiling (tokens verified, grants signed).
    Loadgen {
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
        /// Requests per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u32,
        /// tollgate's database (default: a temporary SQLite file).
        #[arg(long)]
        database: Option<String>,
        /// Skip both baselines.
        #[arg(long)]
        no_baseline: bool,
        /// Drive a tollgate already running on kafka.bootstrap_servers and the
        /// configured topics instead of starting one in this process.
        #[arg(long, requires = "idp_key", conflicts_with = "database")]
        external: bool,
        /// With --external: an Ed25519 private key (PKCS#8 PEM) whose public
        /// half the instance trusts (auth.public_keys); its kid is the file
        /// name up to the first dot.
        #[arg(long, requires = "external")]
        idp_key: Option<PathBuf>,
        /// With --external: the tokens' issuer (default: the first of auth.issuers).
        #[arg(long, requires = "external")]
        issuer: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The review queue (verdicts go on tollgate.reviews).
    Review {
        #[command(subcommand)]
        command: ReviewCommand,
    },
    /// Grants as data hosts check them: the JWKS, and one grant's validity.
    Grant {
        #[command(subcommand)]
        command: GrantCommand,
    },
    /// The yearly disclosure (grants per scenario and enterprise, price
    /// ceilings, products and actual prices, revenue against the cap), as
    /// Markdown (default) or JSON; both files with --out.
    Disclosure {
        #[arg(long)]
        year: i32,
        /// Write disclosure-YEAR.md and disclosure-YEAR.json here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Metering: what was approved beside what data hosts reported.
    Usage {
        #[command(subcommand)]
        command: UsageCommand,
    },
    /// Generate an Ed25519 key pair: NAME.pem (private, PKCS#8) and NAME.pub.pem.
    Keygen {
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Sign a requester token with a private key (for testing and integration).
    Token {
        /// Ed25519 PKCS#8 PEM private key; its file name up to the first dot is the kid.
        #[arg(long)]
        key: PathBuf,
        /// The enterprise's unified social credit code.
        #[arg(long)]
        sub: String,
        #[arg(long)]
        iss: String,
        #[arg(long, default_value = "tollgate")]
        aud: String,
        #[arg(long = "role")]
        roles: Vec<String>,
        #[arg(long = "qualification")]
        qualifications: Vec<String>,
        /// Lifetime in seconds (negative: already expired).
        #[arg(long, default_value_t = 3600, allow_hyphen_values = true)]
        ttl: i64,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Parse, validate against the catalogue, and lint.
    Check {
        /// Policy directory (default: policy.dir from configuration).
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Plain Casbin: whether --model and --policy are decided as
        /// reference Casbin decides them, and priority ties.
        #[arg(long, requires_all = ["model", "policy"], conflicts_with = "dir")]
        raw: bool,
        #[arg(long, requires = "raw")]
        model: Option<PathBuf>,
        #[arg(long, requires = "raw")]
        policy: Option<PathBuf>,
    },
    /// Run the test cases in DIR/tests/*.toml.
    Test {
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Decide one probe ({"principal": …, "request": …}) and show why.
    Explain {
        /// JSON file with the probe; - for standard input.
        request: PathBuf,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Decide the stored decisions again under the policy in DIR and list
    /// every one that would change, by rule and by enterprise.
    Impact {
        /// The proposed policy directory.
        dir: PathBuf,
        /// Decisions made since: 30d, 12h, 2w, 90m or an RFC 3339 time.
        #[arg(long, default_value = "30d")]
        since: String,
        /// tollgate's database (default: database.url from configuration).
        #[arg(long)]
        database: Option<String>,
        /// Exit non-zero when more than N decisions would change.
        #[arg(long)]
        max_changes: Option<u64>,
        /// Changes listed one by one (all are counted).
        #[arg(long, default_value_t = 50)]
        list: usize,
        #[arg(long)]
        json: bool,
    },
    /// The policy each instance runs and any rejected edit, from the audit trail.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// One decision per line of a JSON-lines file of probes (what-if).
    Eval {
        /// JSON-lines file; - for standard input.
        #[arg(long)]
        requests: PathBuf,
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Plain Casbin: lines are JSON arrays in the model's request order,
        /// decided by --model and --policy alone; prints true/false.
        #[arg(long, requires_all = ["model", "policy"])]
        raw: bool,
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long)]
        policy: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ReviewCommand {
    /// Requests pending review, oldest first.
    List {
        /// Only this department's (its unified social credit code).
        #[arg(long)]
        holder: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One request's review: what was asked, by whom, and how it was closed.
    Show {
        request_id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GrantCommand {
    /// Write the JWKS of the grant keys (as served on /.well-known/jwks.json).
    Jwks {
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write the revocation list (as served on /revocations).
    Revocations {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check a grant: signature (key by kid from the JWKS), expiry, issuer,
    /// audience. Exits non-zero when it is not good.
    Verify {
        /// The grant token; - for standard input.
        token: String,
        /// A JWKS file or http(s) URL (default: tollgate's configuration and database).
        #[arg(long)]
        jwks: Option<String>,
        /// A revocation list file or http(s) URL (default with no --jwks: the database).
        #[arg(long)]
        revocations: Option<String>,
        /// Your organisation code: the grant must be for you.
        #[arg(long)]
        audience: Option<String>,
        /// The issuer grants must carry (default with no --jwks: grant.issuer).
        #[arg(long)]
        issuer: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Table,
    Csv,
    Json,
}

#[derive(Subcommand)]
enum UsageCommand {
    /// A period's usage per enterprise, dataset, scenario and price item
    /// (free use apart), and the operator's revenue this year against its cap.
    Report {
        /// The billing period, YYYY-MM (UTC).
        #[arg(long)]
        period: String,
        /// Only this enterprise (its unified social credit code).
        #[arg(long)]
        subject: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: ReportFormat,
        /// Also draw usage per scenario per day as an SVG line chart here.
        #[arg(long)]
        chart: Option<PathBuf>,
    },
    /// Per grant approved in a period: approved, reported and charged, and
    /// the differences (grants with no report, reports beyond the grant).
    Reconcile {
        /// The billing period, YYYY-MM (UTC).
        #[arg(long)]
        period: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Re-verify every hash chain and its signed checkpoints; names the
    /// first changed, dropped, reordered or cut record. Reads the database
    /// (and holds its decisions to the trail), or the topics with --kafka.
    Verify {
        /// Read the audit and checkpoint topics (kafka.bootstrap_servers,
        /// topics.audit, topics.checkpoints) instead of the database.
        #[arg(long)]
        kafka: bool,
        /// A JWKS file of the audit keys to trust (default: those recorded
        /// in the database).
        #[arg(long)]
        keys: Option<PathBuf>,
    },
    /// Stored audit events matching every filter given, oldest first.
    Query {
        #[command(flatten)]
        filter: AuditFilterArgs,
        /// At most this many events.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        /// One event per line, as stored.
        #[arg(long)]
        json: bool,
    },
    /// A self-contained extract for a regulator: the period's events, their
    /// checkpoints, the audit keys, a manifest and a verification script.
    Export {
        /// Start (RFC 3339, or 30d, 12h, … before now).
        #[arg(long)]
        from: String,
        /// End, exclusive (default: now).
        #[arg(long)]
        to: Option<String>,
        /// The directory to write (created).
        dir: PathBuf,
        /// No progress on the terminal.
        #[arg(long)]
        quiet: bool,
    },
    /// Remove the trail's oldest part (never younger than 3 years): each
    /// chain cut just below a signed checkpoint, so what remains verifies,
    /// with the decisions, outcomes and usage its events recorded.
    Prune {
        /// Events before this time (RFC 3339, or e.g. 1500d before now).
        #[arg(long)]
        before: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow the audit topic from its end: each new event matching every
    /// filter given, one JSON line each, until interrupted.
    Tail {
        #[command(flatten)]
        filter: AuditFilterArgs,
    },
}

#[derive(clap::Args)]
struct AuditFilterArgs {
    /// The subject: an enterprise's unified social credit code.
    #[arg(long)]
    enterprise: Option<String>,
    /// The resource: a dataset's code.
    #[arg(long)]
    dataset: Option<String>,
    /// A decision's scenario (not with tail).
    #[arg(long)]
    scenario: Option<String>,
    /// decision, quota_exceeded, input_rejected, review, policy_loaded, …
    #[arg(long = "type")]
    event_type: Option<String>,
    /// approved, denied, pending_review, …
    #[arg(long)]
    outcome: Option<String>,
    /// The first reason's code, e.g. policy.denied_by_rule.
    #[arg(long)]
    reason: Option<String>,
    /// At or after: RFC 3339, or 30d, 12h, 2w, 90m before now.
    #[arg(long)]
    from: Option<String>,
    /// Before: RFC 3339, or a span before now.
    #[arg(long)]
    to: Option<String>,
}

impl AuditFilterArgs {
    fn filter(self) -> anyhow::Result<tollgate::store::AuditFilter> {
        let now = chrono::Utc::now();
        // Stored times are UTC RFC 3339 with "+00:00": compare alike.
        let time = |t: Option<String>| {
            t.map(|t| cli::impact::parse_since(&t, now).map(|t| t.to_rfc3339())).transpose().map_err(anyhow::Error::msg)
        };
        Ok(tollgate::store::AuditFilter {
            enterprise: self.enterprise,
            dataset: self.dataset,
            scenario: self.scenario,
            event_type: self.event_type,
            outcome: self.outcome,
            reason: self.reason,
            from: time(self.from)?,
            to: time(self.to)?,
        })
    }
}

fn main() -> std::process::ExitCode {
    without_huge_pages();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("starting the tokio runtime");
    let code = runtime.block_on(main_async());
    // Not waiting for blocking calls still under way: a stop during
    // start-up can leave a metadata request waiting out its own 30 s
    // timeout, and nothing needs its answer any more.
    runtime.shutdown_background();
    code
}

/// Transparent huge pages off for this process (and what it starts). The
/// allocator asks for huge pages for its regions (`madvise`), and a huge
/// page is resident whole once any of it is touched: with 100 000 policy
/// rules `serve` peaked at 149–156 MB under load with them and 129–130 MB
/// without, at the same throughput and CPU (docs/performance.md).
/// Best effort: a kernel without the setting changes nothing else.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

async fn main_async() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo prints its own narrative; logs would drown it.
    // Only the service logs at info; the other commands print their own
    // output (the demo its narrative) and logs would drown it.
    let serving = matches!(cli.command, Command::Serve);
    tollgate::ops::telemetry::init(if serving { "info,rdkafka=warn,sqlx=warn" } else { "warn" });
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            if serving {
                error!(message = "tollgate failed", error = format!("{e:#}"));
            }
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Config => {
            let settings = Settings::load(cli.config.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&settings.redacted())?);
            Ok(())
        }
        Command::Serve => serve(Settings::load(cli.config.as_deref())?).await,
        Command::Demo { requests, rate, seed, quiet, data_dir } => {
            let settings = Settings::load(cli.config.as_deref())?;
            let opts = cli::demo::DemoOptions { requests, rate, seed, verbose: !quiet, data_dir };
            cli::demo::run(settings, opts).await
        }
        Command::Loadgen { requests, rate, database, no_baseline, external, idp_key, issuer, json } => {
            use cli::loadgen::{LoadOptions, Target};
            let settings = Settings::load(cli.config.as_deref())?;
            let target = match idp_key {
                Some(idp_key) if external => Target::Running { idp_key, issuer },
                _ => Target::InProcess { database_url: database },
            };
            let opts = LoadOptions { requests, rate, baseline: !no_baseline, target };
            let report = cli::loadgen::run(settings, opts).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            Ok(())
        }
        Command::Policy { command } => policy_command(cli.config.as_deref(), command).await,
        Command::Audit { command } => audit_command(cli.config.as_deref(), command).await,
        Command::Grant { command: GrantCommand::Jwks { out } } => {
            cli::grant::jwks(&Settings::load(cli.config.as_deref())?, out.as_deref()).await
        }
        Command::Review { command } => review_command(cli.config.as_deref(), command).await,
        Command::Disclosure { year, out, json } => {
            cli::usage::disclosure(&Settings::load(cli.config.as_deref())?, year, out.as_deref(), json).await
        }
        Command::Usage { command: UsageCommand::Reconcile { period, json } } => {
            cli::usage::reconcile(&Settings::load(cli.config.as_deref())?, &period, json).await
        }
        Command::Usage { command: UsageCommand::Report { period, subject, format, chart } } => {
            let format = match format {
                ReportFormat::Table => cli::usage::Format::Table,
                ReportFormat::Csv => cli::usage::Format::Csv,
                ReportFormat::Json => cli::usage::Format::Json,
            };
            let settings = Settings::load(cli.config.as_deref())?;
            cli::usage::report(&settings, &period, subject.as_deref(), format, chart.as_deref()).await
        }
        Command::Grant { command } => grant_command(cli.config.as_deref(), command).await,
        Command::Keygen { out, name } => {
            let key = SigningKey::generate(&name);
            std::fs::create_dir_all(&out)?;
            let private = out.join(format!("{name}.pem"));
            let public = out.join(format!("{name}.pub.pem"));
            std::fs::write(&private, key.to_pkcs8_pem())?;
            std::fs::write(&public, key.public().to_pem())?;
            println!("{}\n{}", private.display(), public.display());
            Ok(())
        }
        Command::Token { key, sub, iss, aud, roles, qualifications, ttl } => {
            let key = SigningKey::from_pem_file(&key)?;
            let claims = Claims::new(&sub, &iss, &aud, ttl).with_roles(&roles).with_qualifications(&qualifications);
            println!("{}", key.sign(&claims));
            Ok(())
        }
    }
}

/// `tollgate serve`: until SIGINT/SIGTERM. A signal during start-up stops
/// it there (nothing has been taken yet); one later stops it within the
/// grace period, or [`SHUTDOWN_OVERRUN`] past it at the latest.
async fn serve(settings: Settings) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    stop_on_signal(shutdown.clone())?;
    let grace = Duration::from_secs(settings.service.shutdown_grace_secs);
    let app = tokio::select! {
        biased;
        _ = shutdown.cancelled() => {
            info!(message = "stopped during start-up");
            return Ok(());
        }
        app = App::build(settings) => app?,
    };
    arm_shutdown_watchdog(shutdown.clone(), grace + SHUTDOWN_OVERRUN, app.health());
    if app.is_embedded() {
        // Printed on stdout too, so scripts and people can find it.
        println!("embedded kafka bootstrap: {}", app.bootstrap_servers());
    }
    println!("grant verification key (JWK): {}", app.grant_jwk());
    app.run_until_stopped(shutdown).await?;
    Ok(())
}

async fn audit_command(config: Option<&std::path::Path>, command: AuditCommand) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    match command {
        AuditCommand::Query { filter, limit, json } => {
            cli::audit::query(&settings, &filter.filter()?, limit, json).await
        }
        AuditCommand::Export { from, to, dir, quiet } => {
            let now = chrono::Utc::now();
            let from = cli::impact::parse_since(&from, now).map_err(anyhow::Error::msg)?;
            let to =
                to.map(|t| cli::impact::parse_since(&t, now)).transpose().map_err(anyhow::Error::msg)?.unwrap_or(now);
            cli::export::export(&settings, from, to, &dir, quiet).await
        }
        AuditCommand::Prune { before, json } => {
            let before = cli::impact::parse_since(&before, chrono::Utc::now()).map_err(anyhow::Error::msg)?;
            cli::audit::prune(&settings, before, json).await
        }
        AuditCommand::Tail { filter } => {
            let stop = tokio_util::sync::CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                on_signal.cancel();
            });
            cli::audit::tail(&settings, &filter.filter()?, stop).await
        }
        AuditCommand::Verify { kafka, keys } => {
            cli::audit::verify(&settings, cli::audit::VerifyFrom { kafka, keys: keys.as_deref() }).await
        }
    }
}

async fn review_command(config: Option<&std::path::Path>, command: ReviewCommand) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    match command {
        ReviewCommand::List { holder, json } => cli::review::list(&settings, holder.as_deref(), json).await,
        ReviewCommand::Show { request_id, json } => cli::review::show(&settings, &request_id, json).await,
    }
}

async fn grant_command(config: Option<&std::path::Path>, command: GrantCommand) -> anyhow::Result<()> {
    let settings = Settings::load(config)?;
    match command {
        GrantCommand::Jwks { out } => cli::grant::jwks(&settings, out.as_deref()).await,
        GrantCommand::Revocations { out } => cli::grant::revocations(&settings, out.as_deref()).await,
        GrantCommand::Verify { token, jwks, revocations, audience, issuer, json } => {
            let token = if token == "-" {
                let mut t = String::new();
                std::io::stdin().read_to_string(&mut t)?;
                t.trim().to_owned()
            } else {
                token
            };
            let keys = cli::grant::KeySource::parse(jwks);
            let revocations = revocations.map(|r| cli::grant::KeySource::parse(Some(r)));
            let opts = cli::grant::VerifyOptions { token, keys, revocations, audience, issuer, json };
            match cli::grant::verify(&settings, opts).await? {
                true => Ok(()),
                false => Err(anyhow::anyhow!("the grant is not valid")),
            }
        }
    }
}

fn input(path: &std::path::Path) -> anyhow::Result<Box<dyn std::io::BufRead>> {
    Ok(if path == std::path::Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ))
    })
}

async fn policy_command(config: Option<&std::path::Path>, command: PolicyCommand) -> anyhow::Result<()> {
    use crate::cli::policy as cli;
    let default_dir = || Settings::load(config).map(|s| s.policy.dir);
    let (report, json) = match command {
        PolicyCommand::Check { raw: true, model: Some(m), policy: Some(p), json, .. } => {
            (cli::check_raw(&m, &p).await, json)
        }
        PolicyCommand::Check { dir, json, .. } => (cli::check(&dir.map_or_else(default_dir, Ok)?).await, json),
        PolicyCommand::Test { dir, json } => (cli::test(&dir.map_or_else(default_dir, Ok)?).await, json),
        PolicyCommand::Status { json } => {
            let settings = Settings::load(config)?;
            let events = tollgate::store::Store::connect(&settings.database.url, 1).await?.audit_events().await?;
            (cli::status(&events), json)
        }
        PolicyCommand::Impact { dir, since, database, max_changes, list, json } => {
            let url = match database {
                Some(url) => url,
                None => Settings::load(config)?.database.url,
            };
            let store = tollgate::store::Store::connect(&url, 1).await?;
            let since = crate::cli::impact::parse_since(&since, chrono::Utc::now()).map_err(anyhow::Error::msg)?;
            let options = crate::cli::impact::Options { since, max_changes, list, progress: !json };
            (crate::cli::impact::impact(&dir, &store, &options).await?, json)
        }
        PolicyCommand::Explain { request, dir, json } => {
            let mut text = String::new();
            input(&request)?.read_to_string(&mut text)?;
            let probe: tollgate::decide::policy_tests::Probe =
                serde_json::from_str(&text).context("the probe must be {\"principal\": …, \"request\": …}")?;
            (cli::explain(&dir.map_or_else(default_dir, Ok)?, &probe).await?, json)
        }
        PolicyCommand::Eval { requests, dir, raw, model, policy } => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            match (raw, model, policy) {
                (true, Some(m), Some(p)) => cli::eval_raw(&m, &p, input(&requests)?, &mut out).await?,
                _ => cli::eval(&dir.map_or_else(default_dir, Ok)?, input(&requests)?, &mut out).await?,
            };
            return Ok(());
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report.json)?);
    } else {
        print!("{}", report.human);
    }
    if report.ok {
        Ok(())
    } else {
        Err(anyhow::anyhow!("policy {}", if json { "failed" } else { "failed (see above)" }))
    }
}

/// How long past the grace period a stop may take before the process exits
/// regardless: more than the bounded last steps (2 s + 2 s) and the OTLP
/// exporters' last requests (up to 5 s per signal) together.
const SHUTDOWN_OVERRUN: Duration = Duration::from_secs(20);

/// Once `shutdown` is cancelled: if the process is still running `limit`
/// later, it says which step held it up and exits with status 1. Nothing
/// is lost that a crash would not lose: inputs not acknowledged are
/// re-delivered and stored events wait in the outbox for the next start.
fn arm_shutdown_watchdog(shutdown: CancellationToken, limit: Duration, health: std::sync::Arc<tollgate::ops::Health>) {
    tokio::spawn(async move {
        shutdown.cancelled().await;
        // A thread of its own: the runtime's may be what is stuck.
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            tracing::error!(
                message = "shutdown overran the grace period; exiting without finishing",
                step = health.step(),
                limit_secs = limit.as_secs()
            );
            std::process::exit(1);
        });
    });
}

/// Installs the SIGINT/SIGTERM handlers now (a signal before installation
/// would kill the process outright) and cancels `shutdown` on either.
fn stop_on_signal(shutdown: CancellationToken) -> anyhow::Result<()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::spawn(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        info!(message = "shutdown requested; finishing in-flight work");
        shutdown.cancel();
    });
    Ok(())
}
