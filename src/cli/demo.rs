//! `tollgate demo`: the whole flow on embedded defaults. Starts the embedded
//! Kafka and a fresh SQLite file, acts as the identity provider for sample
//! enterprises, sends a realistic stream of signed requests across the
//! shipped scenarios (with the mistakes real clients make), and prints each
//! decision as it arrives, then totals, usage and the audit-chain check.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use tollgate::app::App;
use tollgate::auth::{Claims, SigningKey, Verifier};
use tollgate::config::Settings;
use tollgate::contract::{DeadLetter, Decision, REQUEST_SCHEMA};
use tollgate::kafka::{Client, Cluster, embedded::EmbeddedKafka};

pub(crate) const ISSUER: &str = "https://idp.demo.tollgate";

pub struct DemoOptions {
    pub requests: usize,
    /// Requests per second; 0 sends as fast as possible.
    pub rate: u32,
    pub seed: u64,
    /// Print every decision (otherwise a progress line per 50).
    pub verbose: bool,
    /// Keep the SQLite database here instead of in a temporary directory.
    pub data_dir: Option<std::path::PathBuf>,
}

pub(crate) struct Enterprise {
    pub(crate) name: &'static str,
    pub(crate) uscc: &'static str,
    pub(crate) qualifications: &'static [&'static str],
    /// (scenario, dataset, operation, purpose class, purpose statement)
    pub(crate) usual: &'static [(&'static str, &'static str, &'static str, &'static str, &'static str)],
}

pub(crate) const ENTERPRISES: &[Enterprise] = &[
    Enterprise {
        name: "Xi'an Qujiang Smart Travel",
        uscc: "91610131MA6TG1L5X1",
        qualifications: &[],
        usual: &[
            (
                "smart-tourism",
                "GX-610100-TOUR-0001",
                "query",
                "industry",
                "visitor-flow forecasts for itinerary recommendations",
            ),
            ("smart-tourism", "GX-610100-TOUR-0001", "api_call", "industry", "live crowding alerts in the travel app"),
            ("smart-tourism", "GX-610000-METE-0003", "api_call", "industry", "weather-aware route suggestions"),
            ("smart-tourism", "GX-610100-TOUR-0001", "model_training", "industry", "train a crowding forecast model"),
        ],
    },
    Enterprise {
        name: "Shaanxi Expressway Rescue",
        uscc: "91610000MA6W2QK30C",
        qualifications: &["emergency_services"],
        usual: &[
            (
                "highway-rescue",
                "GX-610000-HWAY-0004",
                "query",
                "public_governance",
                "dispatch rescue vehicles to incidents",
            ),
            (
                "highway-rescue",
                "GX-610000-RESC-0006",
                "api_call",
                "public_governance",
                "nearest depot with heavy towing",
            ),
            (
                "highway-rescue",
                "GX-610000-HWAY-0005",
                "privacy_compute",
                "public_governance",
                "congestion model for rescue routing",
            ),
        ],
    },
    Enterprise {
        name: "Beijing Yizhi Precision Medicine",
        uscc: "91110108MA01RX7C4G",
        qualifications: &["medical_research"],
        usual: &[
            (
                "precision-medicine",
                "GX-110000-HLTH-0007",
                "privacy_compute",
                "industry",
                "federated risk model for type-2 diabetes",
            ),
            (
                "precision-medicine",
                "GX-110000-HLTH-0008",
                "privacy_compute",
                "public_welfare",
                "drug-response study with a public hospital",
            ),
        ],
    },
    Enterprise {
        name: "Shenzhen Nongxin Agri Data",
        uscc: "91440300MA5G0P8N2A",
        qualifications: &[],
        usual: &[
            ("smart-agriculture", "GX-440300-AGRI-0009", "query", "industry", "fertiliser recommendations per parcel"),
            ("smart-agriculture", "GX-610000-METE-0003", "download", "industry", "frost warnings for orchards"),
            (
                "low-altitude-economy",
                "GX-440300-GEOS-0014",
                "privacy_compute",
                "industry",
                "drone crop-spraying corridors",
            ),
        ],
    },
    Enterprise {
        name: "Suzhou Xinyi Credit Data",
        uscc: "91320594MA1YH3T62Y",
        qualifications: &[],
        usual: &[(
            "enterprise-credit",
            "GX-320500-CRED-0012",
            "verification",
            "industry",
            "verify supplier registration for SME loans",
        )],
    },
    Enterprise {
        name: "National Environmental Monitoring Centre",
        uscc: "12100000400012345P",
        qualifications: &[],
        usual: &[("eco-governance", "GX-320500-ENVM-0013", "download", "public_welfare", "open air-quality report")],
    },
    Enterprise {
        name: "Chengdu Traffic Brain",
        uscc: "91510100MA61U7E97B",
        qualifications: &[],
        usual: &[
            (
                "green-wave-traffic",
                "GX-510100-TRAF-0011",
                "api_call",
                "public_governance",
                "adaptive green-wave timing on arterials",
            ),
            ("smart-tourism", "GX-610100-TOUR-0001", "query", "industry", "tourist coach routing"),
        ],
    },
];

/// What a generated message is meant to show; the demo prints it next to
/// the decision so a reader sees why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Mistake {
    None,
    ExpiredToken,
    ForgedSignature,
    NoToken,
    WrongPurpose,
    ForbiddenOperation,
    OutsideScenario,
    UnknownDataset,
    CoreData,
    MissingQualification,
    Garbage,
    /// A captured token presented again with a new request id.
    ReplayedToken,
    Resend,
}

impl Mistake {
    fn pick(rng: &mut StdRng) -> Mistake {
        match rng.gen_range(0..100) {
            0..=64 => Mistake::None,
            65..=67 => Mistake::ExpiredToken,
            68..=69 => Mistake::ForgedSignature,
            70..=71 => Mistake::NoToken,
            72..=76 => Mistake::WrongPurpose,
            77..=81 => Mistake::ForbiddenOperation,
            82..=85 => Mistake::OutsideScenario,
            86..=87 => Mistake::UnknownDataset,
            88..=89 => Mistake::CoreData,
            90..=91 => Mistake::MissingQualification,
            92..=93 => Mistake::Garbage,
            94..=95 => Mistake::ReplayedToken,
            _ => Mistake::Resend,
        }
    }
}

pub(crate) fn token(key: &SigningKey, e: &Enterprise, exp_offset: i64, quals: bool) -> String {
    token_for(key, e, ISSUER, "tollgate", exp_offset, quals)
}

/// An enterprise's token from any identity provider (`issuer`) for any
/// audience: what `loadgen` sends to a running instance.
pub(crate) fn token_for(
    key: &SigningKey,
    e: &Enterprise,
    issuer: &str,
    audience: &str,
    exp_offset: i64,
    quals: bool,
) -> String {
    let mut claims = Claims::new(e.uscc, issuer, audience, exp_offset).with_roles(&["data_user"]);
    if quals {
        claims = claims.with_qualifications(e.qualifications);
    }
    claims.name = Some(e.name.into());
    key.sign(&claims)
}

pub(crate) fn request_json(
    id: &str,
    tok: Option<&str>,
    scenario: &str,
    dataset: &str,
    op: &str,
    class: &str,
    statement: &str,
) -> String {
    let mut v = serde_json::json!({
        "schema": REQUEST_SCHEMA,
        "request_id": id,
        "dataset": dataset,
        "operation": op,
        "scenario": scenario,
        "purpose": {"class": class, "statement": statement},
        "volume": {"records": 1, "bytes": 1024},
        "submitted_at": chrono::Utc::now().to_rfc3339(),
    });
    if let Some(t) = tok {
        v["token"] = serde_json::Value::String(t.to_owned());
    }
    v.to_string()
}

fn yuan(fen: i64) -> String {
    format!("¥{}.{:02}", fen / 100, (fen % 100).abs())
}

pub async fn run(mut settings: Settings, opts: DemoOptions) -> anyhow::Result<()> {
    let cluster = Cluster::Embedded(EmbeddedKafka::start(1)?);
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let temp = tempfile::Builder::new().prefix("tollgate-demo-").tempdir()?;
    let db_path = demo_settings(&mut settings, &opts, &bootstrap, temp.path())?;
    cluster.create_topics(&settings.kafka, &settings.topics.with_retention(&settings.kafka.retention)).await?;
    let idp = SigningKey::generate("demo-idp");
    let verifier = Verifier::for_ed25519(&idp.public(), ISSUER, "tollgate");
    println!("tollgate demo");
    println!(
        "  embedded Kafka   {bootstrap}   (try: kcat -b {bootstrap} -C -t {} -o beginning)",
        settings.topics.decisions
    );
    println!("  SQLite           {}", db_path.display());
    let app = App::build_with_verifier(settings.clone(), Some(verifier)).await?;
    println!("  policy           {}", app.policy_version());
    println!("  enterprises      {}   scenarios in use: {}", ENTERPRISES.len(), {
        let mut s: Vec<&str> = ENTERPRISES.iter().flat_map(|e| e.usual.iter().map(|u| u.0)).collect();
        s.sort();
        s.dedup();
        s.len()
    });
    println!();
    let store = app.store().clone();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(app.run_until_stopped(shutdown.clone()));

    let client = Client::new(&settings.kafka, &bootstrap)?;
    let reader = client.reader(&[&settings.topics.decisions, &settings.topics.dlq], "tollgate-demo-reader")?;
    let started = Instant::now();
    let interval = (opts.rate > 0).then(|| Duration::from_secs_f64(1.0 / f64::from(opts.rate)));
    let mut traffic = Traffic::new(&idp, opts.seed);
    for i in 0..opts.requests {
        let (payload, key, resent) = traffic.next(i);
        client.produce(&settings.topics.requests, key, payload.as_bytes(), &[]).await?;
        if let Some(iv) = interval.filter(|_| !resent) {
            tokio::time::sleep(iv).await;
        }
    }
    summarise(&reader, &traffic.sent, traffic.expected, opts.verbose, started).await?;
    resolve_reviews(&client, &settings, &store, &idp).await?;
    show_usage_reports(&client, &settings, &store, &idp).await?;
    show_revocation(&client, &settings, &store, &idp).await?;

    shutdown.cancel();
    service.await??;
    print_totals(&store).await?;
    // Clients first: the cluster going away under them is an error.
    drop(reader);
    drop(client);
    drop(cluster);
    Ok(())
}

/// The demo's settings: the embedded cluster, a fresh SQLite file (in
/// `--data-dir` or a temporary directory), a grant key of its own, no HTTP
/// endpoint. Returns the database file.
fn demo_settings(
    settings: &mut Settings,
    opts: &DemoOptions,
    bootstrap: &str,
    temp: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let data_dir = match &opts.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => temp.to_owned(),
    };
    let db_path = data_dir.join("tollgate.db");
    if db_path.exists() {
        anyhow::bail!("{} exists already: the demo starts from an empty database", db_path.display());
    }
    let grant_key = temp.join("grants.pem");
    std::fs::write(&grant_key, SigningKey::generate("demo-grants").to_pkcs8_pem())?;
    let database_url = format!("sqlite://{}", db_path.display());
    *settings = std::mem::take(settings).in_process(bootstrap, &database_url, grant_key);
    Ok(db_path)
}

/// Reviewers of the holder departments decide the requests held for
/// review: every other one approved, the rest rejected with a comment; the
/// final decisions are shown as they arrive.
async fn resolve_reviews(
    client: &Client,
    settings: &Settings,
    store: &tollgate::store::Store,
    idp: &SigningKey,
) -> anyhow::Result<()> {
    let pending = store.pending_reviews(None).await?;
    if pending.is_empty() {
        return Ok(());
    }
    let topics = &settings.topics;
    let reader = client.reader(&[&topics.decisions], "tollgate-demo-reviews")?;
    println!();
    println!("review: {} request(s) held for the holder department's review", pending.len());
    for (i, r) in pending.iter().enumerate() {
        let token = idp.sign(
            &Claims::new(&r.holder, ISSUER, "tollgate", 600)
                .with_roles(&["reviewer"])
                .for_organisation("reviewer on duty", &r.holder),
        );
        let (verdict, comment) = if i % 2 == 0 {
            ("approve", "purpose and safeguards checked")
        } else {
            ("reject", "training set not minimised")
        };
        let v = serde_json::json!({"schema": "tollgate.review/v1", "request_id": r.request_id, "verdict": verdict, "comment": comment, "token": token});
        client.produce(&topics.reviews, &r.holder, v.to_string().as_bytes(), &[]).await?;
    }
    let mut open: std::collections::HashSet<&str> = pending.iter().map(|r| r.request_id.as_str()).collect();
    while !open.is_empty() {
        let Some(m) = reader.next(Duration::from_secs(30)).await? else {
            anyhow::bail!("{} review(s) got no final decision within 30 s", open.len());
        };
        let d: Decision = serde_json::from_slice(&m.payload)?;
        if d.supersedes.is_none() || !open.remove(d.request_id.as_str()) {
            continue;
        }
        let why = d.reasons.first().map_or_else(|| "grant issued".to_owned(), |r| format!("{}: {}", r.code, r.message));
        let verdict = d.review.as_ref().map_or("", |r| r.verdict.as_str());
        println!(
            "  {:<10} {:<8} → {:<8} {} {} on {} ({why})",
            d.request_id,
            verdict,
            d.outcome.as_str(),
            d.subject,
            d.operation.as_str(),
            d.dataset
        );
    }
    Ok(())
}

/// Data hosts report what they served under three live grants (not the
/// one the operator revokes next): two as approved, the third beyond its
/// grant (accepted and flagged); the replies are shown.
async fn show_usage_reports(
    client: &Client,
    settings: &Settings,
    store: &tollgate::store::Store,
    idp: &SigningKey,
) -> anyhow::Result<()> {
    let policy = tollgate::policy::Policy::load(&settings.policy.dir).await?;
    let now = chrono::Utc::now();
    let grants: Vec<_> = store.live_grants(now.timestamp()).await?.into_iter().skip(1).take(3).collect();
    let topics = &settings.topics;
    let reader = client.reader(&[&topics.replies], "tollgate-demo-reports")?;
    let mut open = std::collections::HashMap::new();
    for (i, g) in grants.iter().enumerate() {
        let Some(dataset) = policy.catalogue().datasets.get(&g.dataset) else { continue };
        let token = idp.sign(&Claims::new(&g.holder, ISSUER, "tollgate", 600).with_roles(&["data_host"]));
        // The demo's requests ask for one unit; the third host served five.
        let units = if i == 2 { 5 } else { 1 };
        let id = format!("demo-report-{i}");
        let report = serde_json::json!({
            "schema": "tollgate.usage_report/v1", "report_id": id, "decision_id": g.decision_id,
            "dataset": g.dataset, "operation": g.operation, "units": units, "unit": dataset.price.unit,
            "served_from": now, "served_to": now, "token": token,
        });
        client.produce(&topics.usage_reports, &g.decision_id, report.to_string().as_bytes(), &[]).await?;
        open.insert(id, (g, units));
    }
    if !open.is_empty() {
        println!();
        println!("usage reports: data hosts report what they served under {} grant(s)", open.len());
    }
    while !open.is_empty() {
        let Some(m) = reader.next(Duration::from_secs(30)).await? else {
            anyhow::bail!("{} usage report(s) got no answer within 30 s", open.len());
        };
        let reply: tollgate::contract::Reply = serde_json::from_slice(&m.payload)?;
        let Some((g, units)) = open.remove(&reply.command_id) else { continue };
        let flags: Vec<&str> = reply.reasons.iter().map(|r| r.code.as_str()).collect();
        println!(
            "  {} {units} unit(s) of {} by {} → {} {}",
            g.holder,
            g.dataset,
            g.subject,
            reply.outcome,
            flags.join(" ")
        );
    }
    Ok(())
}

/// An operator at the provincial data bureau.
const OPERATOR: &str = "11610000MB0001111E";

/// An operator withdraws one live grant over Kafka; the reply and the
/// grant event data hosts receive are shown.
async fn show_revocation(
    client: &Client,
    settings: &Settings,
    store: &tollgate::store::Store,
    idp: &SigningKey,
) -> anyhow::Result<()> {
    let Some(grant) = store.live_grants(chrono::Utc::now().timestamp()).await?.into_iter().next() else {
        return Ok(());
    };
    let token = idp.sign(&Claims::new(OPERATOR, ISSUER, "tollgate", 600).with_roles(&["operator"]));
    let command = serde_json::json!({
        "schema": "tollgate.revoke/v1", "command_id": "demo-revoke-1", "token": token,
        "target": {"grant": grant.decision_id}, "reason": "the enterprise's contract with the holder ended",
    });
    let topics = &settings.topics;
    let reader = client.reader(&[&topics.replies, &topics.grants], "tollgate-demo-revocation")?;
    client.produce(&topics.revocations, "ops", command.to_string().as_bytes(), &[]).await?;
    let (mut reply, mut event) = (None, None);
    while reply.is_none() || event.is_none() {
        let Some(m) = reader.next(Duration::from_secs(30)).await? else {
            anyhow::bail!("no answer to the demo's revoke command within 30 s");
        };
        let value: serde_json::Value = serde_json::from_slice(&m.payload)?;
        if m.topic == topics.replies { reply = Some(value) } else { event = Some(value) }
    }
    let (reply, event) = (reply.unwrap_or_default(), event.unwrap_or_default());
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    println!();
    println!(
        "revocation: operator {OPERATOR} revoked grant {} ({} {} on {}): {}",
        grant.decision_id,
        grant.subject,
        grant.operation,
        grant.dataset,
        text(&reply["outcome"])
    );
    println!(
        "  data hosts were told on {}: {} by {} ({})",
        topics.grants,
        text(&event["event"]),
        text(&event["by"]),
        text(&event["reason"]["message"])
    );
    Ok(())
}

async fn print_totals(store: &tollgate::store::Store) -> anyhow::Result<()> {
    let (records, quantity, amount) = store.usage_totals().await?;
    let events = store.audit_events().await?;
    let checkpoints = store.checkpoints(false).await?;
    let mut keys = std::collections::BTreeMap::new();
    for (kid, jwk) in store.audit_keys().await? {
        keys.insert(
            kid,
            tollgate::auth::PublicKey::from_jwk(&serde_json::from_str(&jwk)?).map_err(anyhow::Error::msg)?,
        );
    }
    let report = tollgate::audit::verify(&events)
        .and_then(|r| tollgate::audit::verify_checkpoints(&events, &r, &checkpoints, &keys).map(|c| (r, c)));
    println!();
    println!("usage: {records} records, {quantity} units, {} billed (public use waived)", yuan(amount));
    let r = store.report_totals().await?;
    println!(
        "reported by data hosts: {} report(s), {} units, {} billed on report, {} flagged usage.exceeds_grant",
        r.reports,
        r.units,
        yuan(r.amount_fen),
        r.flagged
    );
    match report {
        Ok((r, c)) => println!(
            "audit: {} events on {} chain(s), hash chain verified, {} signed checkpoint(s) hold",
            events.len(),
            r.chains.len(),
            c.verified
        ),
        Err(e) => println!("audit: CHAIN BROKEN: {e}"),
    }
    Ok(())
}

/// The demo's requests, seeded: the enterprises' usual requests and the
/// mistakes real clients make, and what was sent so far.
struct Traffic<'k> {
    idp: &'k SigningKey,
    rng: StdRng,
    /// request id -> (mistake, enterprise name).
    sent: HashMap<String, (Mistake, &'static str)>,
    /// Payloads sent, with their keys, for re-sends.
    originals: Vec<(String, &'static str)>,
    /// Each enterprise's last token that went out with a good request: what
    /// a replay would capture. Same enterprise, same key, same partition, so
    /// the replay is decided after the original.
    used_tokens: HashMap<&'static str, String>,
    /// Outputs to wait for.
    expected: usize,
}

/// One of an enterprise's usual requests: (scenario, dataset, operation,
/// purpose class, purpose statement).
type Usual = (&'static str, &'static str, &'static str, &'static str, &'static str);

impl<'k> Traffic<'k> {
    fn new(idp: &'k SigningKey, seed: u64) -> Self {
        Traffic {
            idp,
            rng: StdRng::seed_from_u64(seed),
            sent: HashMap::new(),
            originals: Vec::new(),
            used_tokens: HashMap::new(),
            expected: 0,
        }
    }

    /// The `i`th input: its payload and key, and whether it re-sends an
    /// earlier one.
    fn next(&mut self, i: usize) -> (String, &'static str, bool) {
        let e = &ENTERPRISES[self.rng.gen_range(0..ENTERPRISES.len())];
        let usual = e.usual[self.rng.gen_range(0..e.usual.len())];
        let mut mistake = Mistake::pick(&mut self.rng);
        if (mistake == Mistake::Resend && self.originals.is_empty())
            || (mistake == Mistake::ReplayedToken && !self.used_tokens.contains_key(e.uscc))
        {
            mistake = Mistake::None;
        }
        self.expected += 1;
        if mistake == Mistake::Resend {
            // The same bytes again, as a client retry would send them.
            let (payload, key) = self.originals[self.rng.gen_range(0..self.originals.len())].clone();
            return (payload, key, true);
        }
        let id = format!("req-{:05}", i + 1);
        let good = token(self.idp, e, 600, true);
        let payload = self.payload(mistake, &id, e, usual, &good);
        self.sent.insert(id, (mistake, e.name));
        if mistake == Mistake::None {
            self.used_tokens.insert(e.uscc, good);
        }
        if mistake != Mistake::Garbage {
            self.originals.push((payload.clone(), e.uscc));
        }
        (payload, e.uscc, false)
    }

    fn payload(&self, mistake: Mistake, id: &str, e: &Enterprise, usual: Usual, good: &str) -> String {
        let (scenario, dataset, op, class, statement) = usual;
        let req = |tok: Option<&str>, scenario: &str, dataset: &str, op: &str, class: &str| {
            request_json(id, tok, scenario, dataset, op, class, statement)
        };
        match mistake {
            Mistake::None | Mistake::Resend => req(Some(good), scenario, dataset, op, class),
            Mistake::ExpiredToken => req(Some(&token(self.idp, e, -3600, true)), scenario, dataset, op, class),
            Mistake::ForgedSignature => {
                // Change one character inside the signature.
                let mut t: Vec<char> = good.chars().collect();
                let i = t.len() - 10;
                t[i] = if t[i] == 'A' { 'B' } else { 'A' };
                req(Some(&t.into_iter().collect::<String>()), scenario, dataset, op, class)
            }
            Mistake::NoToken => req(None, scenario, dataset, op, class),
            Mistake::WrongPurpose => {
                let other = if class == "industry" { "public_welfare" } else { "industry" };
                req(Some(good), scenario, dataset, op, other)
            }
            Mistake::ForbiddenOperation => req(Some(good), scenario, dataset, "download", class),
            Mistake::OutsideScenario => req(Some(good), scenario, "GX-610000-HWAY-0005", "query", class),
            Mistake::UnknownDataset => req(Some(good), scenario, "GX-999999-NONE-0000", op, class),
            Mistake::CoreData => req(Some(good), scenario, "GX-610000-POPU-0015", "query", class),
            Mistake::MissingQualification => req(
                Some(&token(self.idp, e, 600, false)),
                "precision-medicine",
                "GX-110000-HLTH-0007",
                "privacy_compute",
                "industry",
            ),
            Mistake::Garbage => format!("{{\"schema\":\"{REQUEST_SCHEMA}\",\"request_id\":\"{id}\",\"dataset\":"),
            Mistake::ReplayedToken => {
                req(self.used_tokens.get(e.uscc).map(String::as_str), scenario, dataset, op, class)
            }
        }
    }
}

#[derive(Default)]
struct ScenarioCounts {
    approved: u64,
    denied: u64,
    pending: u64,
}

async fn summarise(
    reader: &tollgate::kafka::Reader,
    sent: &HashMap<String, (Mistake, &'static str)>,
    expected: usize,
    verbose: bool,
    started: Instant,
) -> anyhow::Result<()> {
    let mut summary = Summary::default();
    println!(
        "{:<9} {:<15} {:<20} {:<40} {:<16} reason / grant",
        "request", "outcome", "scenario", "enterprise", "operation"
    );
    while summary.received < expected {
        let Some(msg) = reader.next(Duration::from_secs(20)).await? else {
            println!("(no output for 20 s; {} of {expected} received)", summary.received);
            break;
        };
        summary.record(&String::from_utf8_lossy(&msg.payload), sent, verbose)?;
        if !verbose && summary.received % 50 == 0 {
            println!("... {} outputs", summary.received);
        }
    }
    summary.print(expected, started.elapsed().as_secs_f64());
    if summary.resent_diff > 0 || summary.received < expected {
        anyhow::bail!("demo check failed: outputs missing or re-sent requests decided again");
    }
    Ok(())
}

/// What the demo's outputs added up to.
#[derive(Default)]
struct Summary {
    /// Each request's first decision, as published.
    first: HashMap<String, String>,
    per_scenario: BTreeMap<String, ScenarioCounts>,
    denials: BTreeMap<String, u64>,
    received: usize,
    dead: u64,
    resent_same: u64,
    resent_diff: u64,
}

impl Summary {
    fn record(
        &mut self,
        text: &str,
        sent: &HashMap<String, (Mistake, &'static str)>,
        verbose: bool,
    ) -> anyhow::Result<()> {
        self.received += 1;
        if let Ok(letter) = serde_json::from_str::<DeadLetter>(text) {
            self.dead += 1;
            if verbose {
                println!("{:<9} {:<15} {:<20} {:<40} {:<16} {}", "-", "DEAD LETTER", "-", "-", "-", letter.error.code);
            }
            return Ok(());
        }
        let d: Decision = serde_json::from_str(text)?;
        if let Some(prev) = self.first.get(&d.request_id) {
            let same = *prev == text;
            if same {
                self.resent_same += 1
            } else {
                self.resent_diff += 1
            }
            if verbose {
                let same = if same { "original decision, same bytes" } else { "DIFFERENT DECISION" };
                println!("{:<9} {:<15} {:<20} {:<40} {:<16} {}", d.request_id, "re-sent", d.scenario, "", "", same);
            }
            return Ok(());
        }
        self.first.insert(d.request_id.clone(), text.to_owned());
        let detail = self.count(&d);
        if verbose {
            let name = sent.get(&d.request_id).map_or("?", |(_, n)| n);
            let (id, outcome, op) = (&d.request_id, d.outcome.as_str(), d.operation.as_str());
            println!("{id:<9} {outcome:<15} {:<20} {name:<40} {op:<16} {detail}", d.scenario);
        }
        Ok(())
    }

    /// Counts a first decision; what the table shows of it.
    fn count(&mut self, d: &Decision) -> String {
        let t = self.per_scenario.entry(d.scenario.clone()).or_default();
        match d.outcome {
            tollgate::contract::Outcome::Approved => {
                t.approved += 1;
                let obligations =
                    if d.obligations.is_empty() { String::new() } else { format!(" [{}]", d.obligations.join(", ")) };
                let until = d.grant.as_ref().map(|g| g.expires_at.format("%H:%MZ").to_string()).unwrap_or_default();
                format!("grant until {until}{obligations}")
            }
            tollgate::contract::Outcome::Denied => {
                t.denied += 1;
                let code = d.reasons.first().map_or("-", |r| r.code.as_str());
                *self.denials.entry(code.to_owned()).or_default() += 1;
                code.to_owned()
            }
            tollgate::contract::Outcome::PendingReview => {
                t.pending += 1;
                "sent to review".into()
            }
        }
    }

    fn print(&self, expected: usize, secs: f64) {
        println!();
        println!("{:<22} {:>9} {:>7} {:>8}", "scenario", "approved", "denied", "pending");
        let mut totals = ScenarioCounts::default();
        for (s, t) in &self.per_scenario {
            println!("{s:<22} {:>9} {:>7} {:>8}", t.approved, t.denied, t.pending);
            totals.approved += t.approved;
            totals.denied += t.denied;
            totals.pending += t.pending;
        }
        println!("{:<22} {:>9} {:>7} {:>8}", "total", totals.approved, totals.denied, totals.pending);
        println!();
        println!("denials by reason:");
        for (code, n) in &self.denials {
            println!("  {code:<32} {n:>5}");
        }
        println!();
        let different = match self.resent_diff {
            0 => String::new(),
            n => format!(", {n} re-sent requests got a DIFFERENT decision"),
        };
        println!(
            "{} outputs for {expected} inputs in {secs:.1} s: {} decisions, {} dead letters, {} re-sent requests answered with their original decision{different}",
            self.received,
            self.first.len(),
            self.dead,
            self.resent_same
        );
    }
}
