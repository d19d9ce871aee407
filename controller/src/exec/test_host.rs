//! For exec's unit tests: shared [`fixtures`], and what
//! [`FakeHost`](crate::host::fake::FakeHost) cannot do — hang. `SlowHost` connects to real
//! loopback ports (so a listener that never answers can be reached) and takes
//! `exec_delay` of Tokio's time for every exec; everything else is refused.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::host::{Conn, ContainerEvent, Created, Host, HostError, Output, Pulled, Result};
use crate::model::{ContainerInfo, ContainerSpec};

pub(crate) struct SlowHost {
    pub exec_delay: Duration,
}

fn refused<T>(what: &str) -> Result<T> {
    Err(HostError::Command {
        host: "slow".into(),
        command: what.into(),
        message: "not supported by the test host".into(),
    })
}

#[async_trait]
impl Host for SlowHost {
    fn name(&self) -> &str {
        "slow"
    }
    async fn list(&self, _: &str) -> Result<Vec<ContainerInfo>> {
        refused("list")
    }
    async fn list_all(&self) -> Result<Vec<ContainerInfo>> {
        refused("list_all")
    }
    async fn inspect(&self, _: &str) -> Result<Option<ContainerInfo>> {
        refused("inspect")
    }
    async fn create(&self, _: &ContainerSpec) -> Result<Created> {
        refused("create")
    }
    async fn start(&self, _: &str) -> Result<()> {
        refused("start")
    }
    async fn stop(&self, _: &str, _: Duration) -> Result<()> {
        refused("stop")
    }
    async fn remove(&self, _: &str) -> Result<()> {
        refused("remove")
    }
    async fn logs(&self, _: &str, _: usize) -> Result<String> {
        refused("logs")
    }
    async fn pull(&self, _: &str) -> Result<Pulled> {
        refused("pull")
    }
    async fn remove_image(&self, _: &str) -> Result<()> {
        refused("remove_image")
    }
    async fn exec(&self, _: &str, _: &[String]) -> Result<Output> {
        tokio::time::sleep(self.exec_delay).await;
        Ok(Output::default())
    }
    async fn exec_to_file(&self, _: &str, _: &[String], _: &str) -> Result<Output> {
        refused("exec_to_file")
    }
    async fn exec_from_file(&self, _: &str, _: &[String], _: &str) -> Result<Output> {
        refused("exec_from_file")
    }
    async fn archive_to_file(&self, _: &str, _: &str, _: &str) -> Result<()> {
        refused("archive_to_file")
    }
    async fn archive_from_file(&self, _: &str, _: &str, _: &str) -> Result<()> {
        refused("archive_from_file")
    }
    async fn run(&self, _: &str) -> Result<Output> {
        refused("run")
    }
    async fn write_file(&self, _: &str, _: &[u8], _: u32) -> Result<()> {
        refused("write_file")
    }
    async fn read_file(&self, _: &str) -> Result<Option<Vec<u8>>> {
        refused("read_file")
    }
    async fn file_digest(&self, _: &str) -> Result<Option<(u64, String)>> {
        refused("file_digest")
    }
    async fn remove_file(&self, _: &str) -> Result<()> {
        refused("remove_file")
    }
    async fn connect(&self, addr: &str, port: u16) -> Result<Box<dyn Conn>> {
        match tokio::net::TcpStream::connect((addr, port)).await {
            Ok(s) => Ok(Box::new(s)),
            Err(e) => Err(HostError::Connect {
                host: "slow".into(),
                port,
                message: e.to_string(),
            }),
        }
    }
    async fn connect_unix(&self, _: &str) -> Result<Box<dyn Conn>> {
        refused("connect_unix")
    }
    async fn events(&self) -> Result<BoxStream<'static, Result<ContainerEvent>>> {
        refused("events")
    }
    async fn engine_version(&self) -> Result<String> {
        refused("engine_version")
    }
}

/// Probes, targets and a fake host with one replica, as the tests of `probe` and
/// `monitor` use them.
pub(crate) mod fixtures {
    use berth_api::environment::{PortRef, PortSpec, Probe, ProbeAction};
    use berth_api::values::Duration as D;

    use crate::exec::probe::Target;
    use crate::host::fake::FakeHost;
    use crate::host::Output;
    use crate::model::{ContainerSpec, ContainerState, Role, Template};

    pub(crate) fn probe(action: ProbeAction) -> Probe {
        Probe {
            action,
            interval: D::secs(1),
            timeout: D::secs(2),
            success_threshold: 1,
            failure_threshold: 3,
            initial_delay: D::secs(0),
        }
    }

    pub(crate) fn http(path: &str, port: PortRef) -> Probe {
        probe(ProbeAction::Http {
            path: path.into(),
            port,
        })
    }

    pub(crate) fn ready() -> Probe {
        http("/ready", PortRef::Name("http".into()))
    }

    pub(crate) fn exec(cmd: &[&str]) -> Probe {
        probe(ProbeAction::Exec {
            command: cmd.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// `container` with port `http` (container 8080) published on `host_port`.
    pub(crate) fn target(container: &str, host_port: u16) -> Target {
        let ports = [PortSpec {
            name: "http".into(),
            container_port: 8080,
            publish: "0.0.0.0".into(),
        }];
        Target::new(container, &ports, &[host_port])
    }

    pub(crate) fn output(exit_code: i64, stdout: &str, stderr: &str) -> Output {
        Output {
            exit_code,
            stdout: stdout.into(),
            stderr: stderr.into(),
        }
    }

    /// A fake host running `web-r1-0`.
    pub(crate) fn with_container(state: ContainerState) -> FakeHost {
        let template = Template {
            image: "app:v1".into(),
            command: None,
            args: None,
            env: Default::default(),
            env_files: vec![],
            ports: vec![(8080, "127.0.0.1".into())],
            volumes: vec![],
            networks: vec![],
        };
        let fake = FakeHost::new("h");
        fake.add_container(
            &ContainerSpec {
                name: "web-r1-0".into(),
                env_name: "web".into(),
                revision: 1,
                role: Role::App,
                replica: Some(0),
                op: None,
                template_hash: template.hash(),
                template,
                host_ports: vec![20001],
                override_args: None,
                aliases: vec![],
            },
            state,
        );
        fake
    }
}
