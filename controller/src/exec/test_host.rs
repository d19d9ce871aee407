//! A tiny [`Host`] for the unit tests of probes, smoke checks and traffic: real TCP to
//! loopback, in-memory files, and scripted commands; everything else is refused.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::host::{Conn, ContainerEvent, Created, Host, HostError, Output, Result};
use crate::model::{ContainerInfo, ContainerSpec};

type Script = Box<dyn Fn(&str) -> Result<Output> + Send + Sync>;

pub(crate) struct TestHost {
    pub files: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Every `run` command and every `exec` (as `<container>: <args joined>`), in order.
    pub log: Mutex<Vec<String>>,
    /// Answers `run(command)`.
    pub on_run: Script,
    /// Answers `exec(container, cmd)`, given `<container>: <args joined>`.
    pub on_exec: Script,
    /// How long each `exec` takes (on Tokio's clock).
    pub exec_delay: Duration,
}

pub(crate) fn ok(stdout: &str) -> Result<Output> {
    Ok(Output {
        exit_code: 0,
        stdout: stdout.into(),
        stderr: String::new(),
    })
}

impl TestHost {
    pub fn new() -> TestHost {
        TestHost {
            files: Mutex::default(),
            log: Mutex::default(),
            on_run: Box::new(|_| ok("")),
            on_exec: Box::new(|_| ok("")),
            exec_delay: Duration::ZERO,
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn file(&self, path: &str) -> Option<String> {
        let files = self.files.lock().ok()?;
        files
            .get(path)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    fn record(&self, line: String) {
        if let Ok(mut l) = self.log.lock() {
            l.push(line);
        }
    }
}

fn refused<T>(what: &str) -> Result<T> {
    Err(HostError::Command {
        host: "test".into(),
        command: what.into(),
        message: "not supported by the test host".into(),
    })
}

#[async_trait]
impl Host for TestHost {
    fn name(&self) -> &str {
        "test"
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
    async fn pull(&self, _: &str) -> Result<String> {
        refused("pull")
    }
    async fn remove_image(&self, _: &str) -> Result<()> {
        refused("remove_image")
    }
    async fn exec(&self, container: &str, cmd: &[String]) -> Result<Output> {
        let line = format!("{container}: {}", cmd.join(" "));
        self.record(line.clone());
        tokio::time::sleep(self.exec_delay).await;
        (self.on_exec)(&line)
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
    async fn run(&self, command: &str) -> Result<Output> {
        self.record(command.to_owned());
        (self.on_run)(command)
    }
    async fn write_file(&self, path: &str, data: &[u8], _mode: u32) -> Result<()> {
        if let Ok(mut f) = self.files.lock() {
            f.insert(path.to_owned(), data.to_vec());
        }
        Ok(())
    }
    async fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.files.lock().ok().and_then(|f| f.get(path).cloned()))
    }
    async fn file_digest(&self, _: &str) -> Result<Option<(u64, String)>> {
        refused("file_digest")
    }
    async fn remove_file(&self, path: &str) -> Result<()> {
        if let Ok(mut f) = self.files.lock() {
            f.remove(path);
        }
        Ok(())
    }
    async fn connect(&self, addr: &str, port: u16) -> Result<Box<dyn Conn>> {
        match tokio::net::TcpStream::connect((addr, port)).await {
            Ok(s) => Ok(Box::new(s)),
            Err(e) => Err(HostError::Connect {
                host: "test".into(),
                port,
                message: e.to_string(),
            }),
        }
    }
    async fn events(&self) -> Result<BoxStream<'static, Result<ContainerEvent>>> {
        refused("events")
    }
}

/// A raw HTTP/1.1 server on 127.0.0.1:0 answering every request with `respond(request)`
/// (the request's head and body as text); it stops when dropped.
pub(crate) struct TestServer {
    pub port: u16,
    pub requests: std::sync::Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

pub(crate) async fn serve(respond: fn(&str) -> Vec<u8>) -> TestServer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let port = listener.local_addr().expect("local addr").port();
    let requests = std::sync::Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    if let Ok(mut r) = seen.lock() {
                        r.push(text.clone());
                    }
                    let _ = s.write_all(&respond(&text)).await;
                    let _ = s.shutdown().await;
                    return;
                }
            });
        }
    });
    TestServer {
        port,
        requests,
        task,
    }
}

/// A complete response with `Content-Length`.
pub(crate) fn response(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
