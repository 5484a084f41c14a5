//! The console at `/console`, looked at the way its users do: in a real
//! browser (Debian's headless Chromium, DOM dumped and a screenshot saved
//! to `target/console/`), and from another address than loopback, where
//! only a verified auditor's, operator's or reviewer's token opens it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;

use tollgate::auth::Claims;

use crate::helpers::*;

const XIAN_TOURISM: &str = "11610100MB00014076";
const TRANSPORT: &str = "11610000MB00011852";

/// Headless Chromium's DOM of `url` after its scripts ran (or a screenshot
/// of it); None without Chromium. Off the test's runtime, which serves the page.
async fn chromium(url: String, screenshot: Option<PathBuf>) -> Option<String> {
    tokio::task::spawn_blocking(move || chromium_dom(&url, screenshot.as_ref())).await.unwrap()
}

fn chromium_dom(url: &str, screenshot: Option<&PathBuf>) -> Option<String> {
    let bin =
        ["chromium", "chromium-browser"].into_iter().find(|b| Command::new(b).arg("--version").output().is_ok())?;
    let mut c = Command::new(bin);
    c.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,2400"]);
    c.arg(format!("--user-data-dir={}", tempfile::tempdir().unwrap().keep().display()));
    if let Some(path) = screenshot {
        c.arg(format!("--screenshot={}", path.display()));
    } else {
        c.arg("--dump-dom");
    }
    let out = c.arg(url).output().unwrap();
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// This host's address on a network interface, so a request to it comes
/// from a peer that is not loopback; None when the machine has none.
fn non_loopback_ip() -> Option<IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.254:9").or_else(|_| s.connect("10.255.255.254:9")).ok()?;
    Some(s.local_addr().ok()?.ip()).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
}

/// GET `path` from `addr` with an optional bearer token → (status, body).
fn get_from(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

/// Approved, denied, pending-review and unreadable inputs, all decided.
async fn traffic(app: &TestApp) {
    let decisions = app.reader(&app.infra.topics.decisions);
    let token = || app.infra.token(TRAVEL, &[], 600);
    for (id, op) in [("console-ok-1", "query"), ("console-review-1", "model_training")] {
        app.send_json(&request(id, Some(&token()), "smart-tourism", "GX-610100-TOUR-0001", op, "industry")).await;
    }
    app.send_json(&request("console-deny-1", None, "smart-tourism", "GX-610100-TOUR-0001", "query", "industry")).await;
    read_n(&decisions, 3).await;
    let dlq = app.reader(&app.infra.topics.dlq);
    app.send("k", b"<script>alert(1)</script> not json").await;
    read_n(&dlq, 1).await;
}

#[tokio::test]
async fn the_console_shows_decisions_reviews_chains_and_dead_letters_in_a_real_browser_in_both_languages() {
    let app = spawn_app().await;
    traffic(&app).await;
    let url = |q: &str| format!("http://127.0.0.1:{}/console{q}", app.http.port());

    let (status, html) = app.get("/console?lang=en&outcome=denied").await;
    assert_eq!(status, 200);
    assert!(html.contains("console-deny-1") && !html.contains("console-ok-1"), "the filter holds: {html}");
    assert!(!html.contains("<script>alert"), "input bytes are escaped or absent");

    let version = tollgate::policy::Policy::load(&repo_policies()).await.unwrap().version().to_owned();
    let Some(dom) = chromium(url("?lang=en"), None).await else {
        eprintln!("no chromium: the console is not checked in a browser here (CI installs it)");
        return;
    };
    for shown in [
        "Live decisions",
        "console-ok-1",
        "console-deny-1",
        "auth.token_missing",
        "console-review-1",
        "review-table",
        "chain-table",
        "input_rejected",
        "policy_loaded",
        "<svg",
        &version,
    ] {
        assert!(dom.contains(shown), "the page in Chromium lacks {shown:?}:\n{dom}");
    }
    // The script ran in the browser: the auto-refresh box reflects storage.
    assert!(dom.contains("id=\"refresh\""), "{dom}");
    let zh = chromium(url("?lang=zh"), None).await.unwrap();
    for shown in ["实时决定", "待审核队列", "审计链与检查点", "死信", "console-ok-1"] {
        assert!(zh.contains(shown), "the Chinese page lacks {shown:?}");
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("console.png");
    chromium(url("?lang=en"), Some(shot.clone())).await;
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a real screenshot at {}", shot.display());
}

#[tokio::test]
async fn from_another_address_the_console_needs_an_auditors_or_operators_token_and_a_reviewer_sees_only_their_queue_there_and_in_the_json()
 {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("no non-loopback address: remote access is checked by the unit tests only");
        return;
    };
    let infra = infra().await;
    let mut settings = infra.settings();
    settings.service.http_listen = "0.0.0.0:0".into();
    // The JSON queue to reviewers and auditors too (the console needs no setting).
    settings.service.http_remote_roles = vec!["reviewer".into(), "auditor".into()];
    let app = start(infra, settings).await;
    traffic(&app).await;
    let addr = SocketAddr::new(ip, app.http.port());
    let sign = |sub: &str, roles: &[&str]| {
        app.infra.idp.sign(&Claims::new(sub, ISSUER, "tollgate", 600).with_roles(roles).for_organisation("Li Wei", sub))
    };

    let get = |path: &'static str, token: Option<String>| {
        tokio::task::spawn_blocking(move || get_from(addr, path, token.as_deref()))
    };
    let (status, body) = get("/console", None).await.unwrap();
    assert_eq!(status, 401, "no token from elsewhere: {body}");
    if let Some(dom) = chromium(format!("http://{addr}/console"), None).await {
        assert!(dom.contains("the console answers loopback peers"), "Chromium sees the refusal: {dom}");
        assert!(!dom.contains("console-ok-1"));
    }
    assert_eq!(get("/console", Some(app.infra.token(TRAVEL, &[], 600))).await.unwrap().0, 403, "a data user");
    assert_eq!(get("/console", Some("a.b.c".into())).await.unwrap().0, 401, "a forged token");

    let (status, page) = get("/console?lang=en", Some(sign(TRANSPORT, &["auditor"]))).await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("console-ok-1") && page.contains("console-review-1"), "an auditor sees everything");
    assert_eq!(get("/console", Some(sign(TRANSPORT, &["operator"]))).await.unwrap().0, 200);

    let (status, own) = get("/console?lang=en", Some(sign(XIAN_TOURISM, &["reviewer"]))).await.unwrap();
    assert_eq!(status, 200);
    assert!(own.contains("console-review-1") && !own.contains("console-ok-1"), "the holder's reviewer: its queue only");
    let (_, other) = get("/console?lang=en", Some(sign(TRANSPORT, &["reviewer"]))).await.unwrap();
    assert!(!other.contains("console-review-1"), "another department's reviewer sees none of it");
    let (status, queue) =
        get("/reviews?holder=11610100MB00014076", Some(sign(TRANSPORT, &["reviewer"]))).await.unwrap();
    assert_eq!(status, 200);
    assert!(!queue.contains("console-review-1"), "a reviewer cannot ask for another department's queue: {queue}");
    let (_, queue) = get("/reviews", Some(sign(XIAN_TOURISM, &["reviewer"]))).await.unwrap();
    assert!(queue.contains("console-review-1"), "{queue}");
    for page in [&page, &own] {
        assert!(!page.contains("eyJ"), "no token on any page");
    }
}
