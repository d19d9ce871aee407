//! The published JSON Schema (`berthctl schema`) agrees with the loader: it accepts every
//! document of the sample manifests and the valid fixtures, and rejects the invalid
//! fixtures whose errors are about a single field's shape.

use std::path::{Path, PathBuf};

use berth_api::yaml::parse_documents;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn documents(dir: &Path) -> Vec<(PathBuf, serde_json::Value)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        if d.is_file() {
            files.push(d);
            continue;
        }
        for e in std::fs::read_dir(&d).unwrap() {
            stack.push(e.unwrap().path());
        }
    }
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        if let Ok(nodes) = parse_documents(&text) {
            docs.extend(nodes.iter().map(|n| (f.clone(), n.to_json())));
        }
    }
    docs
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&berth_api::json_schema()).expect("the schema is a valid JSON Schema")
}

#[test]
fn the_schema_accepts_every_valid_document() {
    let v = validator();
    let mut count = 0;
    for dir in [
        root().join("manifests"),
        root().join("tests/fixtures/valid"),
        root().join("tests/fixtures/warnings"),
    ] {
        for (file, doc) in documents(&dir) {
            let errors: Vec<String> = v
                .iter_errors(&doc)
                .map(|e| format!("{} at {}", e, e.instance_path()))
                .collect();
            assert!(
                errors.is_empty(),
                "{}: {}",
                file.display(),
                errors.join("; ")
            );
            count += 1;
        }
    }
    assert!(count >= 7, "only {count} documents checked");
}

#[test]
fn the_schema_rejects_shape_errors() {
    let v = validator();
    // Fixtures whose only problem is one field's shape or value, which a schema can see.
    let shape_only = [
        "01-unknown-field",
        "02-unknown-nested-field",
        "03-replicas-quoted",
        "05-replicas-negative",
        "06-bad-strategy-type",
        "09-duration-bad-unit",
        "12-image-without-tag",
        "16-port-range-format",
        "29-backup-two-targets",
        "30-probe-two-actions",
        "31-probe-without-action",
        "34-traffic-unknown-kind",
        "38-wrong-api-version",
        "39-unknown-kind",
        "41-bad-name",
        "45-bad-env-var-name",
        "46-relative-env-file",
        "48-smoke-status-out-of-range",
        "53-volume-with-two-sources",
        "56-container-port-out-of-range",
        "58-max-parallel-zero",
    ];
    for name in shape_only {
        let file = root().join(format!("tests/fixtures/invalid/{name}.yaml"));
        let docs = documents(&file);
        assert!(!docs.is_empty(), "{name}: no documents");
        let rejected = docs.iter().any(|(_, d)| !v.is_valid(d));
        assert!(rejected, "{name}: the schema accepted it");
    }
}

#[test]
fn the_schema_documents_defaults_for_editors() {
    let s = berth_api::json_schema();
    let env = s["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["title"] == "Environment")
        .unwrap();
    let spec = &env["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["default"], 1);
    assert_eq!(spec["revisionHistoryLimit"]["default"], 5);
    assert!(spec["migration"]["properties"]["policy"]["description"]
        .as_str()
        .unwrap()
        .contains("Breaking"));
}
