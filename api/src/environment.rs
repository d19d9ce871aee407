//! `Environment`: one deployed application on one host (test, stage, prod...) — its image,
//! health checks, rollout strategy, traffic switch, migrations, backups and rollback rules.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::shape::{field, object, object_with, Group, Presence, Shape, ANY_STRING};
use crate::values::{self, Duration, ImageRef};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentSpec {
    pub host: String,
    pub image: ImageRef,
    pub replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    pub env_files: Vec<String>,
    pub ports: Vec<PortSpec>,
    pub volumes: Vec<VolumeMount>,
    pub networks: Vec<String>,
    pub health: Health,
    pub smoke: Vec<SmokeCheck>,
    pub strategy: Strategy,
    pub traffic: Traffic,
    pub migration: Migration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<Backup>,
    pub rollback: Rollback,
    pub approval: Approval,
    /// Environments that must have a ready current revision before a rollout of this one
    /// starts (names of Environments in the same manifests; no cycles).
    #[serde(default)]
    pub depends_on: Vec<String>,
    pub revision_history_limit: u32,
    pub notify: Notify,
}

/// A port a container port is named by; the probes, smoke checks and traffic refer to it
/// by name or number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    pub name: String,
    pub container_port: u16,
    /// The host address candidate replicas are published on.
    pub publish: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    #[serde(flatten)]
    pub source: VolumeSource,
    pub mount_path: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum VolumeSource {
    /// A named Docker volume.
    Volume(String),
    HostPath(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Probe>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(flatten)]
    pub action: ProbeAction,
    pub interval: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    pub initial_delay: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeAction {
    Http { path: String, port: PortRef },
    Tcp { port: PortRef },
    Exec { command: Vec<String> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SmokeCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub expect_status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    #[serde(rename = "type")]
    pub kind: StrategyType,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<CanaryStep>,
    pub progress_deadline: Duration,
    pub verify_for: Duration,
    pub drain_for: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StrategyType {
    Recreate,
    BlueGreen,
    Canary,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    pub weight: u8,
    pub pause: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Traffic {
    /// The environment publishes its port itself; nothing is switched.
    None,
    Nginx(NginxTraffic),
    Haproxy(HaproxyTraffic),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NginxTraffic {
    pub upstream_file: String,
    pub reload: String,
    pub test: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
    /// Where nginx serves this environment on the host (`127.0.0.1:8081`): smoke checks
    /// run through it after the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HaproxyTraffic {
    pub socket: String,
    pub backend: String,
    pub server_prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    pub policy: MigrationPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    pub timeout: Duration,
    pub allow_without_backup: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationPolicy {
    None,
    BackwardCompatible,
    Breaking,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    pub when: BackupWhen,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub target: Option<BackupTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    pub keep: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackupWhen {
    Always,
    BeforeMigration,
    Never,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackupTarget {
    Postgres(PostgresBackup),
    Command(CommandBackup),
    Volume(VolumeBackup),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostgresBackup {
    #[serde(flatten)]
    pub source: PostgresSource,
    pub database: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PostgresSource {
    /// A container on the host, by name: `pg_dump` runs inside it.
    Container(String),
    /// A Berth environment running the database: its current replica is used.
    Environment(String),
    /// `host:port` reachable from the host: `pg_dump` runs on the host.
    Host(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandBackup {
    pub backup: String,
    pub restore: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeBackup {
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollback {
    pub automatic: bool,
    pub restore_database: RestoreDatabase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestoreDatabase {
    OnBreakingMigration,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Approval {
    Automatic,
    Required,
}

/// Webhooks called as rollouts go (docs/design.md, "Notifications").
///
/// `#[serde(default)]`: specs pinned in journals before webhooks existed hold
/// `{"success": [], "failure": [], "rollback": []}`, which reads as no webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Notify {
    pub webhooks: Vec<Webhook>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    #[serde(flatten)]
    pub target: WebhookTarget,
    /// Which events are posted to it.
    pub events: Vec<NotifyEvent>,
}

/// Where a webhook posts to. A URL that carries a token is a secret: it belongs in a
/// file (`urlFile`), which is read at each delivery and never logged or stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WebhookTarget {
    Url(String),
    /// A file on the controller's machine holding the URL (surrounding whitespace is
    /// ignored); relative to the manifest's folder.
    UrlFile(String),
}

/// What happened to a rollout, as a notification names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NotifyEvent {
    Started,
    WaitingForApproval,
    Succeeded,
    Failed,
    RolledBack,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 5] = [
        NotifyEvent::Started,
        NotifyEvent::WaitingForApproval,
        NotifyEvent::Succeeded,
        NotifyEvent::Failed,
        NotifyEvent::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Started => "Started",
            NotifyEvent::WaitingForApproval => "WaitingForApproval",
            NotifyEvent::Succeeded => "Succeeded",
            NotifyEvent::Failed => "Failed",
            NotifyEvent::RolledBack => "RolledBack",
        }
    }
}

impl EnvironmentSpec {
    /// When backups are taken; no `backup` section means never.
    pub fn backup_when(&self) -> BackupWhen {
        self.backup.as_ref().map_or(BackupWhen::Never, |b| b.when)
    }
}

// ---- shape ------------------------------------------------------------------------------

fn list(item: Shape) -> Shape {
    Shape::List(Box::new(item))
}

fn strings() -> Shape {
    list(Shape::Str(ANY_STRING))
}

fn duration() -> Shape {
    Shape::Str(values::DURATION)
}

const NOTIFY_EVENTS: &[&str] = &[
    "Started",
    "WaitingForApproval",
    "Succeeded",
    "Failed",
    "RolledBack",
];

fn webhook() -> Shape {
    use Presence::*;
    object_with(
        "One webhook: where it posts, and on which events.",
        vec![field(
            "events",
            list(Shape::Enum(NOTIFY_EVENTS)),
            Default(json!(NOTIFY_EVENTS)),
            "The events posted to it; all by default.",
        )],
        vec![Group {
            key: "target",
            required: true,
            variants: vec![
                (
                    "url",
                    Shape::Str(values::URL),
                    "The URL, written here. One that carries a token is a secret: use urlFile.",
                ),
                (
                    "urlFile",
                    Shape::Str(values::LOCAL_PATH),
                    "A file on the controller's machine holding the URL, read at each delivery; never logged.",
                ),
            ],
        }],
    )
}

fn probe() -> Shape {
    use Presence::*;
    object_with(
        "A health probe: exactly one of http, tcp or exec, with its timing.",
        vec![
            field(
                "interval",
                duration(),
                Default(json!("5s")),
                "Time between probes.",
            ),
            field(
                "timeout",
                duration(),
                Default(json!("2s")),
                "How long one probe may take.",
            ),
            field(
                "successThreshold",
                Shape::Int { min: 1, max: 100 },
                Default(json!(1)),
                "Consecutive successes that count as healthy.",
            ),
            field(
                "failureThreshold",
                Shape::Int { min: 1, max: 100 },
                Default(json!(3)),
                "Consecutive failures that count as unhealthy.",
            ),
            field(
                "initialDelay",
                duration(),
                Default(json!("0s")),
                "Wait after start before the first probe.",
            ),
        ],
        vec![Group {
            key: "action",
            required: true,
            variants: vec![
                (
                    "http",
                    object(
                        "",
                        vec![
                            field(
                                "path",
                                Shape::Str(values::HTTP_PATH),
                                Default(json!("/")),
                                "",
                            ),
                            field("port", Shape::PortRef, Required, "Port number or name."),
                        ],
                    ),
                    "An HTTP GET that must answer 2xx or 3xx.",
                ),
                (
                    "tcp",
                    object(
                        "",
                        vec![field(
                            "port",
                            Shape::PortRef,
                            Required,
                            "Port number or name.",
                        )],
                    ),
                    "A TCP connect.",
                ),
                (
                    "exec",
                    object(
                        "",
                        vec![field(
                            "command",
                            strings(),
                            Required,
                            "Run inside the container; exit 0 is healthy.",
                        )],
                    ),
                    "A command inside the container.",
                ),
            ],
        }],
    )
}

fn smoke() -> Shape {
    use Presence::*;
    object(
        "A request run against the candidate before the switch and through the proxy after it.",
        vec![
            field("name", Shape::Str(values::NON_EMPTY), Optional, ""),
            field(
                "method",
                Shape::Enum(&["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
                Default(json!("GET")),
                "",
            ),
            field("path", Shape::Str(values::HTTP_PATH), Required, ""),
            field("body", Shape::Str(ANY_STRING), Optional, ""),
            field(
                "headers",
                Shape::Map {
                    key: values::NON_EMPTY,
                    value: Box::new(Shape::Text),
                },
                Default(json!({})),
                "",
            ),
            field(
                "expectStatus",
                Shape::Int { min: 100, max: 599 },
                Default(json!(200)),
                "",
            ),
            field(
                "expectBody",
                Shape::Str(ANY_STRING),
                Optional,
                "A substring the response body must contain.",
            ),
        ],
    )
}

fn strategy() -> Shape {
    use Presence::*;
    object(
        "How a new revision replaces the old one.",
        vec![
            field(
                "type",
                Shape::Enum(&["Recreate", "BlueGreen", "Canary"]),
                Default(json!("BlueGreen")),
                "Recreate stops the old revision first; BlueGreen starts the new one beside it and switches; Canary shifts weight in steps (not supported yet: runs as BlueGreen; `berthctl validate` warns).",
            ),
            field(
                "steps",
                list(object(
                    "",
                    vec![
                        field("weight", Shape::Int { min: 1, max: 100 }, Required, "Percent of traffic to the new revision."),
                        field("pause", duration(), Default(json!("0s")), "Hold at this weight before the next step."),
                    ],
                )),
                Optional,
                "Canary only: increasing weights (not supported yet: ignored).",
            ),
            field("progressDeadline", duration(), Default(json!("5m")), "The new revision must be ready within this, or the rollout fails."),
            field("verifyFor", duration(), Default(json!("30s")), "Soak after the switch; a failure then rolls back."),
            field("drainFor", duration(), Default(json!("10s")), "The old revision keeps serving in-flight requests this long after the switch."),
        ],
    )
}

fn traffic() -> Shape {
    use Presence::*;
    Shape::Variant {
        units: &["none"],
        variants: vec![
            (
                "nginx",
                object(
                    "nginx upstream file rendered from observed replicas, tested, then reloaded.",
                    vec![
                        field(
                            "upstreamFile",
                            Shape::Str(values::ABS_PATH),
                            Required,
                            "The file holding `upstream <environment name>`, which nginx.conf includes inside `http {}`. Berth writes it (with no server yet) when it first sees the environment; its directory must exist. See docs/traffic.md.",
                        ),
                        field(
                            "listen",
                            Shape::Str(values::LISTEN),
                            Optional,
                            "Where nginx serves this environment on the host (address:port); smoke checks run through it after the switch.",
                        ),
                        field(
                            "reload",
                            Shape::Str(values::NON_EMPTY),
                            Default(json!("nginx -s reload")),
                            "Command run on the host to reload. The default reloads the system's nginx; name another with -c.",
                        ),
                        field(
                            "test",
                            Shape::Str(values::NON_EMPTY),
                            Default(json!("nginx -t")),
                            "Command run on the host to test the configuration. The default tests the system's nginx (/etc/nginx/nginx.conf); name another with -c.",
                        ),
                        field(
                            "port",
                            Shape::PortRef,
                            Optional,
                            "Which container port the proxy targets (default: the first; not supported yet: traffic always goes to the first).",
                        ),
                    ],
                ),
            ),
            (
                "haproxy",
                object(
                    "HAProxy runtime API: servers set ready, drain or maint without a reload. Servers come from a `server-template` pool; the state is also written to `stateFile` so a reload keeps it.",
                    vec![
                        field(
                            "socket",
                            Shape::Str(values::ABS_PATH),
                            Required,
                            "The admin socket on the host.",
                        ),
                        field("backend", Shape::Str(values::NON_EMPTY), Required, ""),
                        field(
                            "serverPrefix",
                            Shape::Str(values::NON_EMPTY),
                            Default(json!("app")),
                            "Servers of a server-template, such as app1..appN.",
                        ),
                        field(
                            "stateFile",
                            Shape::Str(values::ABS_PATH),
                            Optional,
                            "Server-state file kept in step so a reload keeps the switch.",
                        ),
                        field(
                            "port",
                            Shape::PortRef,
                            Optional,
                            "Which container port the proxy targets (default: the first).",
                        ),
                    ],
                ),
            ),
        ],
    }
}

fn backup() -> Shape {
    use Presence::*;
    let postgres = object_with(
        "pg_dump in custom format, restored with pg_restore.",
        vec![
            field("database", Shape::Str(values::NON_EMPTY), Required, ""),
            field("user", Shape::Str(values::NON_EMPTY), Required, ""),
            field(
                "passwordFile",
                Shape::Str(values::ABS_PATH),
                Optional,
                "A file on the host holding the password.",
            ),
        ],
        vec![Group {
            key: "source",
            required: true,
            variants: vec![
                (
                    "container",
                    Shape::Str(values::NON_EMPTY),
                    "A container on the host running PostgreSQL.",
                ),
                (
                    "environment",
                    Shape::Str(values::NAME),
                    "A Berth environment running PostgreSQL.",
                ),
                (
                    "host",
                    Shape::Str(values::NON_EMPTY),
                    "host:port reachable from the host.",
                ),
            ],
        }],
    );
    object_with(
        "Backups taken before a rollout; restored on rollback of a breaking migration.",
        vec![
            field(
                "when",
                Shape::Enum(&["Always", "BeforeMigration", "Never"]),
                Default(json!("BeforeMigration")),
                "",
            ),
            field(
                "directory",
                Shape::Str(values::ABS_PATH),
                Optional,
                "Where backup files are kept on the host.",
            ),
            field(
                "keep",
                Shape::Int { min: 1, max: 1000 },
                Default(json!(10)),
                "Backups kept per environment.",
            ),
        ],
        vec![Group {
            key: "target",
            required: false,
            variants: vec![
                ("postgres", postgres, "A PostgreSQL database."),
                (
                    "command",
                    object(
                        "",
                        vec![
                            field(
                                "backup",
                                Shape::Str(values::NON_EMPTY),
                                Required,
                                "Shell command on the host writing $BERTH_BACKUP_FILE.",
                            ),
                            field(
                                "restore",
                                Shape::Str(values::NON_EMPTY),
                                Required,
                                "Shell command on the host reading $BERTH_BACKUP_FILE.",
                            ),
                        ],
                    ),
                    "Your own commands.",
                ),
                (
                    "volume",
                    object(
                        "",
                        vec![field("name", Shape::Str(values::NON_EMPTY), Required, "")],
                    ),
                    "A tar of a named Docker volume.",
                ),
            ],
        }],
    )
}

pub fn spec_shape() -> Shape {
    use Presence::*;
    let port = object(
        "",
        vec![
            field(
                "name",
                Shape::Str(values::NAME),
                Required,
                "Referred to by probes, smoke checks and traffic.",
            ),
            field(
                "containerPort",
                Shape::Int { min: 1, max: 65535 },
                Required,
                "",
            ),
            field(
                "publish",
                Shape::Str(values::IP_ADDR),
                Default(json!("127.0.0.1")),
                "Host address replicas are published on.",
            ),
        ],
    );
    let volume = object_with(
        "",
        vec![
            field("mountPath", Shape::Str(values::ABS_PATH), Required, ""),
            field("readOnly", Shape::Bool, Default(json!(false)), ""),
        ],
        vec![Group {
            key: "source",
            required: true,
            variants: vec![
                (
                    "volume",
                    Shape::Str(values::NON_EMPTY),
                    "A named Docker volume.",
                ),
                (
                    "hostPath",
                    Shape::Str(values::ABS_PATH),
                    "A path on the host.",
                ),
            ],
        }],
    );
    object(
        "One deployed application on one host.",
        vec![
            field("host", Shape::Str(values::NAME), Required, "The Host this environment runs on."),
            field("image", Shape::Str(values::IMAGE), Required, "repo:tag or repo@sha256:digest."),
            field("replicas", Shape::Int { min: 0, max: 100 }, Default(json!(1)), ""),
            field("command", strings(), Optional, "Replaces the image's entrypoint."),
            field("args", strings(), Optional, "Replaces the image's command."),
            field(
                "env",
                Shape::Map { key: values::ENV_NAME, value: Box::new(Shape::Text) },
                Default(json!({})),
                "Plain settings. Secrets belong in envFiles on the host.",
            ),
            field("envFiles", list(Shape::Str(values::ABS_PATH)), Default(json!([])), "Files on the host read as KEY=value lines."),
            field("ports", list(port), Default(json!([])), ""),
            field("volumes", list(volume), Default(json!([])), ""),
            field("networks", list(Shape::Str(values::NON_EMPTY)), Default(json!([])), "Docker networks to join."),
            field(
                "health",
                object(
                    "",
                    vec![
                        field("readiness", probe(), Optional, "Gates traffic."),
                        field("liveness", probe(), Optional, "A replica failing it is replaced."),
                    ],
                ),
                DefaultObject,
                "",
            ),
            field("smoke", list(smoke()), Default(json!([])), ""),
            field("strategy", strategy(), DefaultObject, ""),
            field("traffic", traffic(), Default(json!("none")), "How traffic is switched on the host."),
            field(
                "migration",
                object(
                    "",
                    vec![
                        field(
                            "policy",
                            Shape::Enum(&["None", "BackwardCompatible", "Breaking"]),
                            Default(json!("None")),
                            "BackwardCompatible: the old version keeps working on the migrated schema. Breaking: it does not; the old version is stopped first.",
                        ),
                        field("command", strings(), Optional, "Run once, in a one-off container of the new image."),
                        field("timeout", duration(), Default(json!("10m")), ""),
                        field(
                            "allowWithoutBackup",
                            Shape::Bool,
                            Default(json!(false)),
                            "Permit a Breaking migration with backups off. There is then nothing to restore on rollback.",
                        ),
                    ],
                ),
                DefaultObject,
                "",
            ),
            field("backup", backup(), Optional, ""),
            field(
                "rollback",
                object(
                    "",
                    vec![
                        field("automatic", Shape::Bool, Default(json!(true)), "Roll back by itself when a rollout fails."),
                        field(
                            "restoreDatabase",
                            Shape::Enum(&["OnBreakingMigration", "Never"]),
                            Default(json!("OnBreakingMigration")),
                            "",
                        ),
                    ],
                ),
                DefaultObject,
                "",
            ),
            field(
                "approval",
                Shape::Enum(&["Automatic", "Required"]),
                Default(json!("Automatic")),
                "Required: a rollout waits for `berthctl approve` (not built yet: `berthctl validate` warns).",
            ),
            field(
                "dependsOn",
                list(Shape::Str(values::NAME)),
                Default(json!([])),
                "Environments that must have a ready current revision before a rollout of this one starts, such as the database it migrates (like docker-compose's `depends_on: {condition: service_healthy}`). Names of Environments in these manifests; no cycles.",
            ),
            field(
                "revisionHistoryLimit",
                Shape::Int { min: 0, max: 100 },
                Default(json!(5)),
                "Old revisions (stopped containers and images) kept for rollback.",
            ),
            field(
                "notify",
                object(
                    "Webhooks called as rollouts start, wait for approval, succeed, fail or roll back: a JSON body with a Slack-compatible `text`.",
                    vec![field("webhooks", list(webhook()), Default(json!([])), "")],
                ),
                DefaultObject,
                "",
            ),
        ],
    )
}
