//! Malformed manifests: each fixture under `tests/fixtures/invalid/` (a file, or a
//! directory of files) states every diagnostic it must produce in comments at its end:
//!
//! ```text
//! # expect: LINE:COLUMN FIELD.PATH ~ message substring
//! # warn:   LINE:COLUMN FIELD.PATH ~ message substring
//! ```
//!
//! A line refers to the file it is written in. The set of diagnostics must match exactly:
//! every expected one present, nothing else reported. Fixtures under
//! `tests/fixtures/warnings/` state only warnings, the same way: valid manifests using a
//! field the engine does not act on yet. Fixtures under `tests/fixtures/valid/` and the
//! sample `manifests/` must load with no error.

use std::path::{Path, PathBuf};

use berth_api::{load_path, Diagnostic, Severity};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord, Clone)]
struct Expect {
    file: String,
    line: usize,
    column: usize,
    path: String,
    warning: bool,
    message: String,
}

fn expectations(file: &Path) -> Vec<Expect> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let mut out = Vec::new();
    for l in text.lines() {
        let (warning, rest) = if let Some(r) = l.strip_prefix("# expect:") {
            (false, r)
        } else if let Some(r) = l.strip_prefix("# warn:") {
            (true, r)
        } else {
            continue;
        };
        let (head, message) = match rest.split_once(" ~ ") {
            Some((h, m)) => (h.trim(), m.trim().to_owned()),
            None => (rest.trim(), String::new()),
        };
        let (pos, path) = head.split_once(' ').unwrap_or((head, ""));
        let (line, column) = pos.split_once(':').expect("LINE:COLUMN");
        out.push(Expect {
            file: name.clone(),
            line: line.parse().expect("line"),
            column: column.parse().expect("column"),
            path: path.trim().to_owned(),
            warning,
            message,
        });
    }
    out
}

fn actual(d: &Diagnostic) -> Expect {
    Expect {
        file: d.file.file_name().unwrap().to_string_lossy().into_owned(),
        line: d.line,
        column: d.column,
        path: d.path.clone(),
        warning: d.severity == Severity::Warning,
        message: d.message.clone(),
    }
}

fn fixture_files(fixture: &Path) -> Vec<PathBuf> {
    if fixture.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(fixture)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    } else {
        vec![fixture.to_owned()]
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fixture {
    /// At least one error.
    Invalid,
    /// Warnings only, at least one.
    Warnings,
}

fn check_fixture(fixture: &Path, what: Fixture) -> Result<usize, String> {
    let mut expected: Vec<Expect> = fixture_files(fixture)
        .iter()
        .flat_map(|f| expectations(f))
        .collect();
    match what {
        Fixture::Invalid if expected.iter().all(|e| e.warning) => {
            return Err(format!("{}: states no expected error", fixture.display()));
        }
        Fixture::Warnings if expected.is_empty() || expected.iter().any(|e| !e.warning) => {
            return Err(format!(
                "{}: states no warning, or an error",
                fixture.display()
            ));
        }
        _ => {}
    }
    let loaded = load_path(fixture);
    let mut got: Vec<Expect> = loaded.diagnostics.iter().map(actual).collect();
    expected.sort();
    got.sort();
    let key = |e: &Expect| (e.file.clone(), e.line, e.column, e.path.clone(), e.warning);
    let mut problems = Vec::new();
    for e in &expected {
        match got.iter().find(|g| key(g) == key(e)) {
            None => problems.push(format!(
                "missing {}:{}:{} {} ({})",
                e.file, e.line, e.column, e.path, e.message
            )),
            Some(g) if !g.message.contains(&e.message) => problems.push(format!(
                "at {}:{} {}: message {:?} lacks {:?}",
                e.line, e.column, e.path, g.message, e.message
            )),
            Some(_) => {}
        }
    }
    for g in &got {
        if !expected.iter().any(|e| key(e) == key(g)) {
            problems.push(format!(
                "unexpected {}:{}:{} {} {}: {}",
                g.file,
                g.line,
                g.column,
                g.path,
                if g.warning { "warning" } else { "error" },
                g.message
            ));
        }
    }
    // Every error must render with its source line, never panic doing so.
    let rendered = loaded.sources.render(&loaded.diagnostics, false);
    if rendered.is_empty() {
        problems.push("nothing rendered".into());
    }
    if problems.is_empty() {
        Ok(expected.len())
    } else {
        Err(format!(
            "{}:\n  {}",
            fixture.display(),
            problems.join("\n  ")
        ))
    }
}

fn fixtures(dir: &str) -> Vec<PathBuf> {
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fixtures.sort();
    fixtures
}

#[test]
fn every_invalid_fixture_reports_exactly_its_expected_errors() {
    let fixtures = fixtures("tests/fixtures/invalid");
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut several = 0;
    for f in &fixtures {
        match check_fixture(f, Fixture::Invalid) {
            Ok(n) => {
                checked += 1;
                if n > 1 {
                    several += 1;
                }
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
    assert!(checked >= 40, "only {checked} malformed-manifest fixtures");
    assert!(
        several >= 5,
        "only {several} fixtures with several errors at once"
    );
}

#[test]
fn every_field_the_engine_does_not_act_on_yet_is_a_warning_at_its_place() {
    let fixtures = fixtures("tests/fixtures/warnings");
    let failures: Vec<String> = fixtures
        .iter()
        .filter_map(|f| check_fixture(f, Fixture::Warnings).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        fixtures.len() >= 3,
        "only {} warning fixtures",
        fixtures.len()
    );
}

#[test]
fn the_sample_manifests_use_nothing_the_engine_does_not_do() {
    let loaded = load_path(&root().join("manifests"));
    let mut got: Vec<String> = loaded
        .diagnostics
        .iter()
        .map(|d| {
            let file = d.file.file_name().unwrap().to_string_lossy();
            format!("{file}:{}:{} {} {:?}", d.line, d.column, d.path, d.severity)
        })
        .collect();
    got.sort();
    assert_eq!(got, Vec::<String>::new());
}

#[test]
fn valid_fixtures_and_the_sample_manifests_load_without_errors() {
    let mut paths = vec![root().join("manifests")];
    let dir = root().join("tests/fixtures/valid");
    paths.extend(std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()));
    for p in paths {
        let loaded = load_path(&p);
        let errors: Vec<String> = loaded.errors().map(|d| d.to_string()).collect();
        assert!(errors.is_empty(), "{}:\n{}", p.display(), errors.join("\n"));
        assert!(
            !loaded.manifests.environments.is_empty() || !loaded.manifests.hosts.is_empty(),
            "{}: nothing loaded",
            p.display()
        );
    }
}

#[test]
fn the_sample_manifests_hold_what_the_demo_needs() {
    let m = load_path(&root().join("manifests"))
        .into_manifests()
        .map_err(|l| l.diagnostics)
        .unwrap();
    assert_eq!(
        m.hosts.keys().collect::<Vec<_>>(),
        ["local", "vm-a", "vm-b"]
    );
    assert_eq!(
        m.environments.keys().collect::<Vec<_>>(),
        ["demo-db", "demo-prod", "demo-stage", "demo-test"]
    );
    let prod = &m.environments["demo-prod"].spec;
    use berth_api::environment::*;
    assert_eq!(prod.approval, Approval::Required);
    assert_eq!(prod.migration.policy, MigrationPolicy::Breaking);
    assert_eq!(prod.backup.as_ref().map(|b| b.keep), Some(10));
    assert_eq!(prod.revision_history_limit, 5);
    let test = &m.environments["demo-test"].spec;
    assert_eq!(test.strategy.kind, StrategyType::BlueGreen);
    assert_eq!(test.migration.policy, MigrationPolicy::BackwardCompatible);
    assert_eq!(test.depends_on, ["demo-db"]);
    assert_eq!(
        m.environments["demo-db"].spec.strategy.kind,
        StrategyType::Recreate
    );
    // Defaults are filled.
    assert_eq!(test.health.readiness.as_ref().unwrap().success_threshold, 1);
    assert_eq!(m.hosts["local"].spec.docker_socket, "/var/run/docker.sock");
    assert_eq!(m.hosts["vm-a"].spec.max_parallel, 2);
}

#[test]
fn typed_manifests_survive_a_round_trip_through_json() {
    // What serde writes must read back to the same resources: the shapes and the typed
    // structs agree on every field name, default and variant.
    round_trip(&root().join("manifests"));
    for f in std::fs::read_dir(root().join("tests/fixtures/valid")).unwrap() {
        round_trip(&f.unwrap().path());
    }
}

fn round_trip(dir: &Path) {
    let loaded = load_path(dir);
    let m = loaded.into_manifests().map_err(|l| l.diagnostics).unwrap();
    let mut docs = Vec::new();
    for h in m.hosts.values() {
        docs.push(serde_json::to_string(h).unwrap());
    }
    for e in m.environments.values() {
        docs.push(serde_json::to_string(e).unwrap());
    }
    let text = docs.join("\n---\n");
    let again = berth_api::load_texts(vec![(dir.with_extension("roundtrip.json"), text)]);
    let errors: Vec<String> = again.errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    for (name, e) in &m.environments {
        assert_eq!(e.spec, again.manifests.environments[name].spec, "{name}");
    }
    for (name, h) in &m.hosts {
        assert_eq!(h.spec, again.manifests.hosts[name].spec, "{name}");
    }
}
