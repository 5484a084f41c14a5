//! The documentation holds together: every relative link in the README,
//! ARCHITECTURE.md and docs/ names a file that exists and, with `#anchor`,
//! a heading in it (GitHub's anchors: lower case, punctuation dropped,
//! spaces as hyphens).

use std::collections::BTreeSet;
use std::path::Path;

use crate::helpers::doc_files;

/// GitHub's anchor of a heading's text.
fn slug(heading: &str) -> String {
    (heading.trim().to_lowercase().chars())
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// `(target, line)` of every Markdown link outside code blocks.
fn links(text: &str) -> Vec<(String, usize)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](").filter(|_| !fenced) {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((after[..end].to_owned(), n + 1));
            rest = &after[end..];
        }
    }
    out
}

#[test]
fn every_link_between_the_documents_reaches_a_file_and_a_heading_that_exist() {
    let files = doc_files();
    assert!(files.len() >= 7, "README, ARCHITECTURE and the docs/ pages: {files:?}");
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (target, line) in links(&text) {
            if target.starts_with("http://") || target.starts_with("https://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').map_or((target.as_str(), None), |(p, a)| (p, Some(a)));
            let resolved =
                if path.is_empty() { file.clone() } else { file.parent().unwrap_or(Path::new(".")).join(path) };
            let here = format!("{}:{line}: {target}", file.display());
            if !resolved.exists() {
                broken.push(format!("{here} (no such file)"));
            } else if let Some(a) = anchor
                && !anchors(&std::fs::read_to_string(&resolved).unwrap_or_default()).contains(a)
            {
                broken.push(format!("{here} (no such heading)"));
            }
        }
    }
    assert!(checked >= 10, "only {checked} links checked");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn anchors_are_made_as_github_makes_them() {
    assert_eq!(slug(" Audit event — out, `tollgate.audit` (key: chain)"), "audit-event--out-tollgateaudit-key-chain");
    assert_eq!(slug("Running it"), "running-it");
}

/// `docker-compose.yml` cannot run here, so what can be checked is
/// (tests/deploy/check_compose.py): it parses, every variable it gives
/// tollgate is one tollgate reads and lands where it says (`tollgate
/// config`), the OTLP endpoint is the collector's HTTP receiver, the image's
/// toolchain and health check agree. CI also runs the image's cargo command.
/// A machine without pyyaml skips this, saying so.
#[test]
fn the_compose_file_gives_tollgate_only_settings_it_reads_and_the_collector_it_exports_to() {
    if !crate::helpers::python_has("yaml") {
        eprintln!("python3 lacks pyyaml: docker-compose.yml is not checked here (CI checks it)");
        return;
    }
    let out = std::process::Command::new("python3")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["tests/deploy/check_compose.py", env!("CARGO_BIN_EXE_tollgate")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}
