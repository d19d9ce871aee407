//! `GET /v1/openapi.json`: the OpenAPI 3.0 document of the API. Written by hand beside
//! the routes (`routes.rs`); a test checks it names every path and method they serve.

use serde_json::{json, Value};

fn error_responses() -> Value {
    json!({
        "400": {"$ref": "#/components/responses/Error"},
        "401": {"$ref": "#/components/responses/Error"},
        "404": {"$ref": "#/components/responses/Error"},
        "409": {"$ref": "#/components/responses/Error"},
        "413": {"$ref": "#/components/responses/Error"}
    })
}

fn ok(schema: Value) -> Value {
    let mut r = error_responses();
    r["200"] = json!({"description": "OK", "content": {"application/json": {"schema": schema}}});
    r
}

fn verb(summary: &str, body: Option<&str>) -> Value {
    let mut op = json!({
        "summary": summary,
        "parameters": [{"$ref": "#/components/parameters/Name"}],
        "responses": ok(json!({"$ref": "#/components/schemas/ActionReply"})),
    });
    if let Some(schema) = body {
        op["requestBody"] = json!({"required": false, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    }
    json!({"post": op})
}

/// The document.
pub fn document() -> Value {
    let schema = |name: &str| json!({"$ref": format!("#/components/schemas/{name}")});
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Berth API",
            "version": "v1",
            "description": "berthd's control plane. Served on a unix socket (mode 0600; default <state>/berthd.sock) and, with --listen and --token-file, on TCP with `Authorization: Bearer <token>`. Errors are {\"error\", \"field\"} with a 4xx status. Operator verbs write the operator's wish into the journal and wake the loop; they never touch a host themselves."
        },
        "paths": {
            "/healthz": {"get": {"summary": "The process is up.", "responses": {"200": {"description": "up"}}}},
            "/readyz": {"get": {"summary": "The journal is open, the manifests are loaded and every host was observed once.", "responses": {"200": {"description": "ready", "content": {"application/json": {"schema": schema("Readiness")}}}, "503": {"description": "not ready", "content": {"application/json": {"schema": schema("Readiness")}}}}}},
            "/metrics": {"get": {"summary": "Prometheus text format (0.0.4): rollouts by outcome and environment, step durations, queue depth, reconcile latency, hosts, backups, current revisions.", "responses": {"200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/v1/openapi.json": {"get": {"summary": "This document.", "responses": {"200": {"description": "OpenAPI 3.0"}}}},
            "/v1/environments": {"get": {"summary": "Every environment berthd knows (desired, or with a journal).", "responses": ok(json!({"type": "array", "items": schema("EnvStatus")}))}},
            "/v1/environments/{name}": {
                "get": {"summary": "One environment.", "parameters": [{"$ref": "#/components/parameters/Name"}], "responses": ok(schema("EnvStatus"))},
                "delete": {"summary": "Stops applying an environment applied through the API. Nothing running is stopped unless prune=true.", "parameters": [{"$ref": "#/components/parameters/Name"}, {"name": "prune", "in": "query", "schema": {"type": "boolean"}}], "responses": ok(schema("DeleteReply"))}
            },
            "/v1/environments/{name}/history": {"get": {"summary": "Operations, newest first.", "parameters": [{"$ref": "#/components/parameters/Name"}, {"name": "limit", "in": "query", "schema": {"type": "integer"}}], "responses": ok(json!({"type": "array", "items": schema("OpStatus")}))}},
            "/v1/environments/{name}/logs": {"get": {"summary": "The replicas' container logs (redacted), prefixed by replica.", "parameters": [{"$ref": "#/components/parameters/Name"}, {"name": "revision", "in": "query", "schema": {"type": "integer"}}, {"name": "tail", "in": "query", "schema": {"type": "integer", "default": 100}}], "responses": ok(json!({"type": "array", "items": schema("LogLine")}))}},
            "/v1/environments/{name}/approve": verb("Approves the rollout waiting for approval.", Some("ApproveRequest")),
            "/v1/environments/{name}/undo": verb("Goes back to an earlier revision and holds there until the spec changes. Needs no approval.", Some("UndoRequest")),
            "/v1/environments/{name}/pause": verb("No step starts and no rollout begins until resumed (at a step boundary).", None),
            "/v1/environments/{name}/resume": verb("Lifts a pause.", None),
            "/v1/environments/{name}/retry": verb("Rolls out again a template whose rollout failed.", None),
            "/v1/environments/{name}/abort": verb("Rolls the active rollout back now.", None),
            "/v1/hosts": {"get": {"summary": "Hosts as berthd sees them.", "responses": ok(json!({"type": "array", "items": schema("HostStatus")}))}},
            "/v1/backups": {"get": {"summary": "Catalogued backups of every environment.", "responses": ok(json!({"type": "array", "items": schema("BackupRecord")}))}},
            "/v1/events": {"get": {"summary": "Events, oldest first: the newest `limit`, or those after `since`.", "parameters": [{"name": "environment", "in": "query", "schema": {"type": "string"}}, {"name": "since", "in": "query", "schema": {"type": "integer"}}, {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 100, "maximum": 1000}}], "responses": ok(json!({"type": "array", "items": schema("EventRecord")}))}},
            "/v1/source": {"get": {"summary": "The watched manifest directory: commit, dirty, and its current error.", "responses": ok(schema("SourceHealth"))}},
            "/v1/apply": {"post": {"summary": "Applies manifests (Environments; Hosts must come from the directory). Refuses an environment the directory owns unless force.", "requestBody": {"required": true, "content": {"application/json": {"schema": schema("ApplyRequest")}}}, "responses": ok(schema("ApplyReply"))}},
            "/v1/diff": {"post": {"summary": "What applying would change: fields, and the rollout it would start.", "requestBody": {"required": true, "content": {"application/json": {"schema": schema("ApplyRequest")}}}, "responses": ok(schema("ApplyReply"))}}
        },
        "components": {
            "parameters": {"Name": {"name": "name", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"}}},
            "responses": {"Error": {"description": "The request was refused.", "content": {"application/json": {"schema": schema("Error")}}}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "field": {"type": "string", "nullable": true}}},
                "Readiness": {"type": "object", "properties": {"ready": {"type": "boolean"}, "storeOpen": {"type": "boolean"}, "manifestsLoaded": {"type": "boolean"}, "hostsPending": {"type": "array", "items": {"type": "string"}}}},
                "ApproveRequest": {"type": "object", "additionalProperties": false, "properties": {"revision": {"type": "integer"}}},
                "UndoRequest": {"type": "object", "additionalProperties": false, "properties": {"toRevision": {"type": "integer"}}},
                "ActionReply": {"type": "object", "properties": {"environment": {"type": "string"}, "message": {"type": "string"}, "operation": {"type": "string", "nullable": true}}},
                "ApplyRequest": {"type": "object", "additionalProperties": false, "properties": {"manifests": {"type": "string", "description": "YAML or JSON documents, as in a manifest file"}, "source": {"type": "string", "description": "the file name, for errors"}, "files": {"type": "array", "description": "more files, applied together (all or none)", "items": {"type": "object", "additionalProperties": false, "required": ["source", "manifests"], "properties": {"source": {"type": "string"}, "manifests": {"type": "string"}}}}, "force": {"type": "boolean"}, "dryRun": {"type": "boolean"}}},
                "ApplyReply": {"type": "object", "properties": {"dryRun": {"type": "boolean"}, "environments": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "action": {"type": "string", "enum": ["created", "configured", "unchanged"]}, "changes": {"type": "array", "items": {"type": "object", "properties": {"path": {"type": "string"}, "from": {}, "to": {}}}}, "rollout": {"type": "object", "nullable": true, "properties": {"steps": {"type": "array", "items": {"type": "string"}}, "migration": {"type": "string"}, "backup": {"type": "boolean"}}}, "tookOver": {"type": "boolean"}}}}}},
                "DeleteReply": {"type": "object", "properties": {"environment": {"type": "string"}, "message": {"type": "string"}, "wouldPrune": {"type": "array", "items": {"type": "string"}}, "pruned": {"type": "boolean"}}},
                "EnvStatus": {"type": "object", "description": "The environment's journal state, its active or last operation step by step, revisions, backups, the last 20 events, and who owns its desired state (times in milliseconds since the epoch; berthctl -o json prints them as RFC 3339).", "properties": {"name": {"type": "string"}, "state": {"type": "object"}, "operation": {"nullable": true, "allOf": [schema("OpStatus")]}, "revisions": {"type": "array", "items": {"type": "object"}}, "backups": {"type": "array", "items": schema("BackupRecord")}, "events": {"type": "array", "items": schema("EventRecord")}, "owner": {"type": "object", "nullable": true}}},
                "OpStatus": {"type": "object", "properties": {"id": {"type": "string"}, "kind": {"type": "string"}, "from": {"type": "integer", "nullable": true}, "to": {"type": "integer"}, "reason": {"type": "string"}, "phase": {"type": "string"}, "outcome": {"nullable": true}, "steps": {"type": "array", "items": {"type": "object", "properties": {"step": {"type": "string"}, "state": {"type": "string"}, "attempts": {"type": "integer"}, "at": {"type": "integer"}, "output": {}, "error": {"type": "string"}}}}}},
                "HostStatus": {"type": "object", "properties": {"name": {"type": "string"}, "address": {"type": "string"}, "state": {"type": "string"}, "reachable": {"type": "boolean"}, "docker_version": {"type": "string", "nullable": true}, "api_version": {"type": "string", "nullable": true, "description": "The Docker API version negotiated with the engine."}, "last_error": {"type": "string", "nullable": true}, "last_seen": {"type": "string", "nullable": true}, "rtt_ms": {"type": "number", "nullable": true}, "since": {"type": "string", "nullable": true, "description": "Since when the host has been in `state` (RFC 3339, UTC)."}}},
                "BackupRecord": {"type": "object", "properties": {"id": {"type": "string"}, "env": {"type": "string"}, "op": {"type": "string", "nullable": true}, "revision": {"type": "integer", "nullable": true}, "path": {"type": "string"}, "size": {"type": "integer"}, "sha256": {"type": "string"}, "created_at": {"type": "integer"}}},
                "EventRecord": {"type": "object", "properties": {"seq": {"type": "integer"}, "at": {"type": "integer"}, "env": {"type": "string"}, "kind": {"type": "string", "enum": ["Normal", "Warning"]}, "reason": {"type": "string"}, "message": {"type": "string"}, "op": {"type": "string", "nullable": true}}},
                "LogLine": {"type": "object", "properties": {"replica": {"type": "string"}, "line": {"type": "string"}}},
                "SourceHealth": {"type": "object", "properties": {"path": {"type": "string"}, "commit": {"type": "string", "nullable": true}, "dirty": {"type": "boolean"}, "loadedAt": {"type": "integer"}, "error": {"type": "object", "nullable": true, "properties": {"errors": {"type": "array", "items": {"type": "string"}}, "since": {"type": "integer"}, "commit": {"type": "string", "nullable": true}}}}}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    /// Every (method, path) `routes::route` answers, as the document spells it.
    const SERVED: &[(&str, &str)] = &[
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/v1/openapi.json"),
        ("get", "/v1/environments"),
        ("get", "/v1/environments/{name}"),
        ("delete", "/v1/environments/{name}"),
        ("get", "/v1/environments/{name}/history"),
        ("get", "/v1/environments/{name}/logs"),
        ("post", "/v1/environments/{name}/approve"),
        ("post", "/v1/environments/{name}/undo"),
        ("post", "/v1/environments/{name}/pause"),
        ("post", "/v1/environments/{name}/resume"),
        ("post", "/v1/environments/{name}/retry"),
        ("post", "/v1/environments/{name}/abort"),
        ("get", "/v1/hosts"),
        ("get", "/v1/backups"),
        ("get", "/v1/events"),
        ("get", "/v1/source"),
        ("post", "/v1/apply"),
        ("post", "/v1/diff"),
    ];

    #[test]
    fn the_document_names_every_path_and_method_served() {
        let doc = super::document();
        for (method, path) in SERVED {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is not documented"
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(documented, SERVED.len(), "a documented path is not served");
    }

    #[test]
    fn every_path_has_an_operation_with_responses() {
        let doc = super::document();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 20);
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                assert!(
                    op["responses"].is_object(),
                    "{method} {path} has no responses"
                );
            }
        }
    }
}
