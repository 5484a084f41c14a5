//! `tollgate loadgen`: how many decisions per second one instance sustains,
//! and what it adds to latency, measured against two baselines on the same
//! broker, with the same consumer and producer settings and the same loop
//! (offsets after delivery), producing the same number of outputs per
//! input: the **pass-through** does nothing else (the limit of the broker
//! and the loop); the **crypto ceiling** (`broker::ceiling`) also does the
//! cryptography no design can skip — each token verified, one grant signed
//! per input — and nothing else (the limit of tollgate's work).
//!
//! The tollgate under load is either started in this process on fresh
//! topics, or an instance already running elsewhere (`--external`), driven
//! through its configured topics with tokens from an identity-provider key
//! it trusts — so a deployment, or `serve` alone, can be measured.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::demo::{ENTERPRISES, ISSUER, request_json, token_for};
use tollgate::app::App;
use tollgate::auth::{SigningKey, Verifier};
use tollgate::broker::ceiling::CryptoCeiling;
use tollgate::config::{Settings, Topics};
use tollgate::kafka::{
    self, Client, Cluster, ConsumedMessage, Limits, LoopClients, OutgoingMessage, ProcessError, Processor,
};
use tollgate::ops::Health;

pub struct LoadOptions {
    pub requests: usize,
    /// Requests per second; 0 sends as fast as possible.
    pub rate: u32,
    pub baseline: bool,
    pub target: Target,
}

/// The tollgate under load.
pub enum Target {
    /// Started in this process on fresh topics; its database is `database_url`
    /// (None: a temporary SQLite file).
    InProcess { database_url: Option<String> },
    /// Already running on `kafka.bootstrap_servers` and the configured
    /// `topics`, trusting the public half of `idp_key` (kid: the file name
    /// up to its first dot) for `issuer` (None: the first of
    /// `auth.issuers`).
    Running { idp_key: PathBuf, issuer: Option<String> },
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub pipeline: String,
    pub requests: usize,
    pub completed: usize,
    /// Decisions read again for requests already answered (re-published
    /// after a crash; 0 in a run without one).
    pub repeated: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub latency_ms: Latency,
    /// The crypto ceiling's work, counted: tokens verified and refused,
    /// grants signed (warm-up included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crypto: Option<CryptoDone>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CryptoDone {
    pub verified: u64,
    pub refused: u64,
    pub signed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub broker: String,
    pub database: String,
    pub rate: u32,
    pub runs: Vec<RunReport>,
    /// tollgate's throughput as a fraction of the pass-through's.
    pub ratio: Option<f64>,
    /// tollgate's throughput as a fraction of the crypto ceiling's.
    pub ceiling_ratio: Option<f64>,
}

/// Copies each input to the three output topics: the shape of tollgate's
/// work (decision, audit event, usage record) without any of its logic.
struct PassThrough {
    outputs: [String; 3],
}

impl Processor for PassThrough {
    type Prepared = ();

    fn prepare(&self, _: &[ConsumedMessage]) {}

    async fn process_batch(&self, msgs: &[ConsumedMessage], _: ()) -> Result<Vec<Vec<OutgoingMessage>>, ProcessError> {
        Ok(msgs
            .iter()
            .map(|msg| {
                let payload = String::from_utf8_lossy(&msg.payload).into_owned();
                let key = msg.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                self.outputs
                    .iter()
                    .map(|topic| OutgoingMessage {
                        topic: topic.clone(),
                        key: key.clone(),
                        payload: payload.clone(),
                        headers: vec![],
                    })
                    .collect()
            })
            .collect())
    }

    /// The pass-through has no dead-letter topic: a refused copy becomes an
    /// empty message on the same topic, so the measured run still ends.
    fn refused(&self, _: &ConsumedMessage, output: &OutgoingMessage, _: &str, _: bool) -> OutgoingMessage {
        tollgate::broker::ceiling::emptied(output)
    }
}

/// The request payloads: the demo's enterprises and their usual requests,
/// with one in ten asking for a purpose that does not fit (a denial). Each
/// request carries its own token, as the default single-use token ids
/// require: every decision pays for a signature check and a token-id record.
fn workload(n: usize, run: &str, idp: &Idp) -> Vec<(String, String)> {
    let mut rng = StdRng::seed_from_u64(11);
    (0..n)
        .map(|i| {
            let k = rng.gen_range(0..ENTERPRISES.len());
            let e = &ENTERPRISES[k];
            let (scenario, dataset, op, class, statement) = e.usual[rng.gen_range(0..e.usual.len())];
            let class =
                if rng.gen_bool(0.1) { if class == "industry" { "public_welfare" } else { "industry" } } else { class };
            (
                e.uscc.to_owned(),
                request_json(
                    &format!("{run}-{i}"),
                    Some(&token_for(&idp.key, e, &idp.issuer, &idp.audience, 3600, true)),
                    scenario,
                    dataset,
                    op,
                    class,
                    statement,
                ),
            )
        })
        .collect()
}

/// Who signs the workload's tokens, for whom.
struct Idp {
    key: SigningKey,
    issuer: String,
    audience: String,
}

fn request_index(payload: &[u8], run: &str) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("request_id")?.as_str()?.strip_prefix(run)?.strip_prefix('-')?.parse().ok()
}

/// Produces the workload at `rate` into `input` and times each request until
/// its first output on `output`, read from the beginning of a fresh topic or
/// (`from_end`) from what a long-lived one holds now.
async fn drive(
    client: &Client,
    input: &str,
    output: &str,
    run: &str,
    work: &[(String, String)],
    rate: u32,
    from_end: bool,
) -> anyhow::Result<Measured> {
    let group = format!("loadgen-{run}");
    let reader =
        if from_end { client.reader_from_end(&[output], &group)? } else { client.reader(&[output], &group)? };
    // Warm up: the clock starts once the pipeline has joined its group and
    // answered one request, so group rebalancing is not counted. The last
    // request of the workload is the warm-up (it has a token of its own).
    let ((key, warm), work) = work.split_last().ok_or_else(|| anyhow::anyhow!("no requests"))?;
    let warm_id = format!("\"{run}-{}\"", work.len());
    client.send(input, key, warm.clone()).await?;
    loop {
        match reader.next(Duration::from_secs(60)).await? {
            Some(m) if String::from_utf8_lossy(&m.payload).contains(&warm_id) => break,
            Some(_) => {}
            None => anyhow::bail!("the {output} pipeline did not answer a warm-up request within 60 s"),
        }
    }
    let sent_at: Arc<std::sync::Mutex<Vec<Option<Instant>>>> = Arc::new(std::sync::Mutex::new(vec![None; work.len()]));
    let started = Instant::now();
    let interval = (rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(rate)));
    let producing = {
        let sent_at = sent_at.clone();
        let sends: Vec<_> = work.iter().map(|(key, payload)| client.send(input, key, payload.clone())).collect();
        tokio::spawn(async move {
            // Each send runs as its own task so it is enqueued at once (a
            // send future does nothing until polled), bounded in number.
            let mut in_flight = FuturesUnordered::new();
            for (i, send) in sends.into_iter().enumerate() {
                if let Some(iv) = interval {
                    let due = started + iv.mul_f64(i as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                sent_at.lock().expect("lock")[i] = Some(Instant::now());
                in_flight.push(tokio::spawn(send));
                while in_flight.len() >= 10_000 {
                    if let Some(r) = in_flight.next().await {
                        r.map_err(|e| anyhow::anyhow!(e))??;
                    }
                }
            }
            while let Some(r) = in_flight.next().await {
                r.map_err(|e| anyhow::anyhow!(e))??;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let mut histogram = Histogram::<u64>::new(3)?;
    let mut seen = HashSet::with_capacity(work.len());
    let (mut last, mut repeated) = (started, 0);
    while seen.len() < work.len() {
        let Some(m) = reader.next(Duration::from_secs(60)).await? else { break };
        // The warm-up (index work.len()) may be answered again: not measured.
        let Some(i) = request_index(&m.payload, run).filter(|i| *i < work.len()) else { continue };
        if seen.insert(i) {
            let now = Instant::now();
            let sent = sent_at.lock().expect("lock")[i].unwrap_or(started);
            histogram.record(now.duration_since(sent).as_micros() as u64)?;
            last = now;
        } else {
            repeated += 1;
        }
    }
    producing.await??;
    let seconds = last.duration_since(started).as_secs_f64();
    Ok(Measured { completed: seen.len(), seconds, latency: histogram, repeated })
}

/// What one pipeline's run came to.
struct Measured {
    completed: usize,
    seconds: f64,
    /// Time from each request's send to its first decision.
    latency: Histogram<u64>,
    /// Decisions read for a request already answered: re-published work,
    /// as after a crash (stored outcomes published again).
    repeated: usize,
}

fn report(pipeline: &str, requests: usize, m: Measured) -> RunReport {
    let h = &m.latency;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    RunReport {
        pipeline: pipeline.into(),
        requests,
        completed: m.completed,
        repeated: m.repeated,
        seconds: m.seconds,
        per_second: if m.seconds > 0.0 { m.completed as f64 / m.seconds } else { 0.0 },
        latency_ms: Latency { p50: ms(0.5), p90: ms(0.9), p99: ms(0.99), max: h.max() as f64 / 1000.0 },
        crypto: None,
    }
}

pub async fn run(settings: Settings, opts: LoadOptions) -> anyhow::Result<LoadReport> {
    let running = matches!(opts.target, Target::Running { .. });
    if running && settings.kafka.bootstrap_servers.is_none() {
        anyhow::bail!("--external needs kafka.bootstrap_servers: the running instance's broker");
    }
    let cluster = Cluster::from_settings(&settings.kafka)?;
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let base_topics = Topics::with_suffix(&format!("loadgen-base-{run_id}"));
    let ceiling_topics = Topics::with_suffix(&format!("loadgen-ceiling-{run_id}"));
    // A running instance is driven through its own topics, which exist.
    let gate_topics = if running { settings.topics.clone() } else { Topics::with_suffix(&format!("loadgen-{run_id}")) };
    // Throwaway topics: kept as briefly as the law allows logs.
    let mut fresh: Vec<(&str, i64)> = Vec::new();
    let ms = tollgate::config::RetentionSettings::ms(tollgate::config::LOGS_MIN_DAYS);
    if opts.baseline {
        fresh.extend(base_topics.all().map(|t| (t, ms)));
        fresh.extend(ceiling_topics.all().map(|t| (t, ms)));
    }
    if !running {
        fresh.extend(gate_topics.all().map(|t| (t, ms)));
    }
    cluster.create_topics(&settings.kafka, &fresh).await?;
    let idp = idp_for(&opts.target, &settings)?;
    // One more than measured: the warm-up (see `drive`).
    let work = workload(opts.requests + 1, &run_id, &idp);
    let load = Load { client: Client::new(&settings.kafka, &bootstrap)?, run_id, work, rate: opts.rate };
    let mut runs = Vec::new();
    if opts.baseline {
        let outputs = |t: &Topics| [t.decisions.clone(), t.audit.clone(), t.usage.clone()];
        let pass = Arc::new(PassThrough { outputs: outputs(&base_topics) });
        let measured = baseline(&settings, &bootstrap, &base_topics, &load, pass).await?;
        runs.push(report("pass-through", opts.requests, measured));
        let verifier = Verifier::for_ed25519(&idp.key.public(), &idp.issuer, &idp.audience).without_cache();
        let signer = SigningKey::generate("loadgen-ceiling-grants");
        let ceiling = Arc::new(CryptoCeiling::new(verifier, signer, outputs(&ceiling_topics)));
        let measured = baseline(&settings, &bootstrap, &ceiling_topics, &load, ceiling.clone()).await?;
        let c = &ceiling.counts;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let crypto = CryptoDone { verified: get(&c.verified), refused: get(&c.refused), signed: get(&c.signed) };
        runs.push(RunReport { crypto: Some(crypto), ..report("crypto ceiling", opts.requests, measured) });
    }
    let database = match opts.target {
        Target::InProcess { database_url } => {
            let mut settings = settings;
            settings.kafka.bootstrap_servers = Some(bootstrap.clone());
            settings.topics = gate_topics;
            let (measured, database) = in_process(settings, database_url, &idp, &load).await?;
            runs.push(report("tollgate", opts.requests, measured));
            database
        }
        Target::Running { .. } => {
            let measured = load.drive(&gate_topics, true).await?;
            runs.push(report("tollgate", opts.requests, measured));
            "the running instance's".to_owned()
        }
    };
    let of = |name: &str| {
        let base = runs.iter().find(|r| r.pipeline == name).filter(|r| r.per_second > 0.0)?;
        Some(runs.last()?.per_second / base.per_second)
    };
    let (ratio, ceiling_ratio) = (of("pass-through"), of("crypto ceiling"));
    drop(load);
    drop(cluster);
    Ok(LoadReport { broker: bootstrap, database, rate: opts.rate, runs, ratio, ceiling_ratio })
}

/// The identity provider whose tokens the workload carries: one of its own
/// in process, the running instance's trusted key with `--external`.
fn idp_for(target: &Target, settings: &Settings) -> anyhow::Result<Idp> {
    Ok(match target {
        Target::InProcess { .. } => {
            Idp { key: SigningKey::generate("loadgen-idp"), issuer: ISSUER.into(), audience: "tollgate".into() }
        }
        Target::Running { idp_key, issuer } => Idp {
            key: SigningKey::from_pem_file(idp_key)?,
            issuer: issuer
                .clone()
                .or_else(|| settings.auth.issuers.first().cloned())
                .ok_or_else(|| anyhow::anyhow!("--external needs --issuer or auth.issuers"))?,
            audience: settings.auth.audience.first().cloned().unwrap_or_else(|| "tollgate".into()),
        },
    })
}

/// A workload and what drives it.
struct Load {
    client: Client,
    run_id: String,
    work: Vec<(String, String)>,
    rate: u32,
}

impl Load {
    async fn drive(&self, topics: &Topics, from_end: bool) -> anyhow::Result<Measured> {
        drive(&self.client, &topics.requests, &topics.decisions, &self.run_id, &self.work, self.rate, from_end).await
    }
}

/// A baseline: the same loop and settings as tollgate, with `processor`
/// (the pass-through or the crypto ceiling) on `topics`.
async fn baseline<P: Processor>(
    settings: &Settings,
    bootstrap: &str,
    topics: &Topics,
    load: &Load,
    pass: Arc<P>,
) -> anyhow::Result<Measured> {
    let mut base = settings.kafka.clone();
    base.group_id = format!("loadgen-{}-{}", topics.requests, load.run_id);
    let clients = LoopClients::new(&base, bootstrap, &[&topics.requests], Health::new(), None, "loadgen-baseline")?;
    let stop = CancellationToken::new();
    let grace = Duration::from_secs(settings.service.shutdown_grace_secs);
    let limits = Limits::from(&settings.service);
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move { kafka::run(clients, pass, stop, grace, limits, &Health::default()).await })
    };
    let measured = load.drive(topics, false).await?;
    stop.cancel();
    task.await??;
    Ok(measured)
}

/// tollgate in this process on `settings.topics`, with a database of its
/// own (SQLite in a temporary directory unless `database_url`); returns the
/// measurement and the database, without its password.
async fn in_process(
    settings: Settings,
    database_url: Option<String>,
    idp: &Idp,
    load: &Load,
) -> anyhow::Result<(Measured, String)> {
    let temp = tempfile::tempdir()?;
    let database = database_url.unwrap_or_else(|| format!("sqlite://{}", temp.path().join("loadgen.db").display()));
    let grant_key = temp.path().join("grants.pem");
    std::fs::write(&grant_key, SigningKey::generate("loadgen-grants").to_pkcs8_pem())?;
    let bootstrap = settings.kafka.bootstrap_servers.clone().unwrap_or_default();
    let mut settings = settings.in_process(&bootstrap, &database, grant_key);
    settings.kafka.group_id = format!("loadgen-{}", load.run_id);
    settings.policy.watch = false;
    let verifier = Verifier::for_ed25519(&idp.key.public(), &idp.issuer, &idp.audience);
    let topics = settings.topics.clone();
    let app = App::build_with_verifier(settings, Some(verifier)).await?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    let measured = load.drive(&topics, false).await?;
    stop.cancel();
    task.await??;
    // The password, if any, stays out of the report.
    Ok((measured, database.split('@').next_back().unwrap_or_default().to_owned()))
}

impl LoadReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "broker {}   database {}   rate {}\n\n{:<15} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}\n",
            self.broker,
            self.database,
            if self.rate == 0 { "as fast as possible".to_owned() } else { format!("{}/s", self.rate) },
            "pipeline",
            "requests",
            "done",
            "per sec",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "max ms"
        );
        for r in &self.runs {
            s.push_str(&format!(
                "{:<15} {:>9} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}\n",
                r.pipeline,
                r.requests,
                r.completed,
                r.per_second,
                r.latency_ms.p50,
                r.latency_ms.p90,
                r.latency_ms.p99,
                r.latency_ms.max
            ));
        }
        for r in self.runs.iter().filter(|r| r.repeated > 0) {
            s.push_str(&format!("{}: {} decisions read again (re-published)\n", r.pipeline, r.repeated));
        }
        if let Some(ratio) = self.ratio {
            s.push_str(&format!("\ntollgate throughput = {ratio:.2} × pass-through\n"));
        }
        if let Some(ratio) = self.ceiling_ratio {
            s.push_str(&format!(
                "tollgate throughput = {ratio:.2} × crypto ceiling (one token verified, one grant signed per input)\n"
            ));
        }
        s
    }
}
