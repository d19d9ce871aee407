//! `berthctl validate` and `berthctl schema` as a user runs them: exit codes, the
//! compiler-like report, and the JSON form.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn berthctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berthctl"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("berthctl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_accepts_the_sample_manifests_with_no_warning() {
    let out = berthctl(&["validate", "-f", "manifests/"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim(),
        "manifests/: valid: 3 hosts, 4 environments in 5 files"
    );
    // HAProxy, approval, notify and SSH hosts are all acted on: nothing to warn of.
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn validate_lists_warnings_in_json_with_their_path() {
    let out = berthctl(&[
        "validate",
        "-o",
        "json",
        "-f",
        "tests/fixtures/warnings/06-nginx-port-not-the-first.yaml",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let arr = v.as_array().expect("an array");
    assert_eq!(arr.len(), 1);
    assert_eq!(arr[0]["severity"], "warning");
    assert_eq!(arr[0]["path"], "spec.traffic.nginx.port");
    assert_eq!(arr[0]["line"], 12);
    assert_eq!(arr[0]["column"], 64);
    assert_eq!(
        arr[0]["message"],
        "not supported yet: traffic goes to the first of spec.ports; this port is ignored"
    );
}

#[test]
fn validate_reports_every_error_with_the_source_line_and_a_caret() {
    let out = berthctl(&[
        "validate",
        "-f",
        "tests/fixtures/invalid/49-several-errors-at-once.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("49-several-errors-at-once.yaml:7:10"), "{err}");
    assert!(err.contains("  image: app\n"), "{err}");
    assert!(
        err.contains("^ spec.image: expected an image reference"),
        "{err}"
    );
    assert!(
        err.contains("unknown field `replica`; did you mean `replicas`?"),
        "{err}"
    );
    assert!(err.contains("6 errors found"), "{err}");
}

#[test]
fn validate_prints_errors_as_a_json_array() {
    let out = berthctl(&[
        "validate",
        "-o",
        "json",
        "-f",
        "tests/fixtures/invalid/25-breaking-without-backup.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let arr = v.as_array().expect("an array");
    assert_eq!(arr.len(), 1);
    assert_eq!(arr[0]["line"], 11);
    assert_eq!(arr[0]["column"], 13);
    assert_eq!(arr[0]["path"], "spec.migration.policy");
    assert_eq!(arr[0]["severity"], "error");
    assert!(arr[0]["expected"]
        .as_str()
        .unwrap()
        .contains("allowWithoutBackup"));
}

#[test]
fn usage_errors_exit_with_two() {
    assert_eq!(
        berthctl(&["validate", "-f", "no/such/dir"]).status.code(),
        Some(2)
    );
    assert_eq!(berthctl(&["validate"]).status.code(), Some(2));
    assert_eq!(
        berthctl(&["validate", "-f", "manifests", "-o", "xml"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(berthctl(&["frobnicate"]).status.code(), Some(2));
}

#[test]
fn schema_prints_a_json_schema() {
    let out = berthctl(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["$schema"], "https://json-schema.org/draft/2020-12/schema");
    assert_eq!(v["oneOf"].as_array().map(Vec::len), Some(2));
}
