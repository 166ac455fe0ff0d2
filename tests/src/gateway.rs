//! A gateway process under test.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::OnceLock,
};

use switchboard_proto::v1::gateway_client::GatewayClient;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};
use tonic::{
    metadata::MetadataValue,
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, Endpoint},
    Request, Status,
};

use crate::{within, ws::Client};

/// Builds targets of a workspace package with the same profile as the running tests, into
/// the same target directory, and returns that profile's output directory.
pub(crate) fn cargo_build(package: &str, targets: &[&str]) -> PathBuf {
    // The test executable lives in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable is in <target>/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir.parent().expect("target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--quiet", "--package", package])
        .args(targets)
        .args(["--profile", profile])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(workspace)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building {package} {targets:?} failed");
    profile_dir
}

/// The gateway binary, built once per test binary with the same profile as the tests.
pub fn gateway_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SWITCHBOARD_GATEWAY_BIN") {
            return p.into();
        }
        cargo_build("switchboard-gateway", &["--bin", "switchboard-gateway"])
            .join("switchboard-gateway")
    })
    .clone()
}

/// An example of the SDK, all of them built once per test binary.
pub fn example_bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| cargo_build("switchboard-sdk", &["--examples"]).join("examples"))
        .join(name)
}

/// A running gateway process; killed when dropped.
pub struct Gateway {
    child: Child,
    pub client_addr: SocketAddr,
    pub backend_addr: SocketAddr,
    /// The admin listener (`None` with `--admin-listen off`).
    pub admin_addr: Option<SocketAddr>,
    pub node_id: String,
    pub token: Option<String>,
}

/// Adds the backend token to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Api = GatewayClient<InterceptedService<Channel, Bearer>>;

impl Gateway {
    /// Starts a gateway on loopback port 0 (client, backend and admin listeners) with extra
    /// flags.
    pub async fn start(args: &[&str]) -> Gateway {
        Self::start_with_env(args, &[]).await
    }

    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(gateway_bin());
        // A test that restarts a node on the same addresses gives its own.
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !args.contains(&"--backend-listen") {
            cmd.args(["--backend-listen", "127.0.0.1:0"]);
        }
        // Parallel tests would collide on the admin port's default.
        if !args.contains(&"--admin-listen")
            && !env.iter().any(|(k, _)| *k == "SWITCHBOARD_ADMIN_LISTEN")
        {
            cmd.args(["--admin-listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .env(
                "SWITCHBOARD_LOG",
                std::env::var("SWITCHBOARD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn gateway");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let line = within("the gateway's listening line", lines.next_line())
            .await
            .expect("read gateway stdout")
            .expect("gateway exited before listening");
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |name: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .to_owned()
        };
        let token = args
            .iter()
            .position(|a| *a == "--backend-token")
            .map(|i| args[i + 1].to_owned());
        let gw = Gateway {
            client_addr: field("client=").parse().expect("client address"),
            backend_addr: field("backend=").parse().expect("backend address"),
            // `admin=off` when disabled.
            admin_addr: line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("admin="))
                .and_then(|a| a.parse().ok()),
            node_id: field("node="),
            child,
            token,
        };
        if args.contains(&"--redis-url") {
            gw.joined().await;
        }
        gw
    }

    /// Waits until a cluster node has joined (it refuses clients until every live peer knows
    /// it); `/readyz` says so, there is no other signal to await from outside.
    pub async fn joined(&self) {
        within("the node to join its cluster", async {
            loop {
                let (_, body) = self.http_get("/readyz").await;
                if !body.starts_with("joining") {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
    }

    pub fn ws_url(&self, hub: &str) -> String {
        format!("ws://{}/ws/{hub}", self.client_addr)
    }

    /// A gRPC client carrying this gateway's token (if any).
    pub async fn api(&self) -> Api {
        self.api_with_token(self.token.as_deref()).await
    }

    pub async fn api_with_token(&self, token: Option<&str>) -> Api {
        let channel = self.channel().await;
        let bearer = Bearer(token.map(|t| {
            format!("Bearer {t}")
                .parse()
                .expect("token is valid metadata")
        }));
        GatewayClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// A gRPC client (with this gateway's token) on its own connection whose HTTP/2 stream
    /// window is `bytes`: a stream read slowly through it holds the gateway back after about
    /// that much, instead of after the default window's megabytes.
    pub async fn api_with_stream_window(&self, bytes: u32) -> Api {
        let channel = within(
            "gRPC connect",
            Endpoint::from_shared(format!("http://{}", self.backend_addr))
                .expect("endpoint")
                .initial_stream_window_size(bytes)
                .connect(),
        )
        .await
        .expect("connect to the backend port");
        let bearer = Bearer(self.token.as_deref().map(|t| {
            format!("Bearer {t}")
                .parse()
                .expect("token is valid metadata")
        }));
        GatewayClient::with_interceptor(channel, bearer)
    }

    pub async fn channel(&self) -> Channel {
        within(
            "gRPC connect",
            Endpoint::from_shared(format!("http://{}", self.backend_addr))
                .expect("endpoint")
                .connect(),
        )
        .await
        .expect("connect to the backend port")
    }

    /// Opens a WebSocket client on `hub`.
    pub async fn connect(&self, hub: &str) -> Client {
        Client::connect(&self.ws_url(hub)).await
    }

    /// Sends a signal by name ("TERM", "INT", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("gateway still running");
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {pid}");
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        within("the gateway to exit", self.child.wait())
            .await
            .expect("wait for gateway")
    }

    /// An HTTP request to the admin port with an optional bearer token and body: (status, body).
    pub async fn admin_request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, String) {
        let addr = self.admin_addr.expect("the admin listener is on");
        let bearer = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(b) = &bearer {
            headers.push(("Authorization", b.as_str()));
        }
        crate::raw::http_request_with_body(addr, method, path, &headers, body.as_bytes()).await
    }

    /// The next client message of session `id` through `Read` (waiting up to 10 s); panics on
    /// anything but a message.
    pub async fn read_message(&self, id: &str) -> switchboard_proto::v1::Message {
        use switchboard_proto::v1::{read_response::Result as R, ReadRequest};
        let got = self
            .api()
            .await
            .read(ReadRequest {
                ack: None,
                session_id: id.to_owned(),
                timeout: Some(prost_types::Duration {
                    seconds: 10,
                    nanos: 0,
                }),
            })
            .await
            .expect("read")
            .into_inner()
            .result;
        match got {
            Some(R::Message(m)) => m.message.expect("a message"),
            other => panic!("expected a message from {id}, got {other:?}"),
        }
    }

    /// The first sample of a gauge or counter `name` from `/metrics`: on the admin port when it
    /// is on (it is not behind the client port's limits), else on the client port.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = match self.admin_addr {
            Some(_) => self.admin_request("GET", "/metrics", None, "").await,
            None => self.http_get("/metrics").await,
        };
        body.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name || k.starts_with(&format!("{name}{{"))).then(|| v.parse().ok())?
        })
    }

    /// Plain HTTP GET on the client port: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        crate::raw::http_request(self.client_addr, "GET", path, &[]).await
    }
}
