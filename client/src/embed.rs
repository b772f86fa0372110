//! The client inside a Rust program, without SOCKS: start it from a config, follow its
//! bootstrap, open streams that are values ([`DataStream`]: `AsyncRead + AsyncWrite`).
//!
//! ```no_run
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn fetch() -> Result<(), allium_client::embed::Error> {
//! let cfg = allium_client::ClientConfig::load("client.toml".as_ref())?;
//! let client = allium_client::embed::Client::start(cfg).await?;
//! let mut progress = client.bootstrap_events();
//! while let Some(event) = progress.next().await {
//!     println!("bootstrap {}%: {}", event.percent, event.phase);
//!     if event.percent == 100 {
//!         break;
//!     }
//! }
//! // Names are resolved by the exit, never here.
//! let mut stream = client.connect(("example.com", 80)).await?;
//! stream.write_all(b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n").await?;
//! stream.flush().await?;
//! let mut page = Vec::new();
//! stream.read_to_end(&mut page).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Streams opened by one [`Client`] share circuits (one isolation class) unless opened with
//! [`Client::connect_isolated`]. Dropping the client stops its tasks.
//!
//! A program can host an onion service too, and take its streams itself:
//!
//! ```no_run
//! use tokio::io::AsyncWriteExt;
//!
//! # async fn host(client: &allium_client::embed::Client) -> Result<(), allium_client::embed::Error> {
//! let cfg = allium_client::embed::OnionServiceConfig { name: "hello".into(), ..Default::default() };
//! let mut service = client.launch_onion_service(cfg)?;
//! println!("reachable at {}", service.address());
//! while let Some(incoming) = service.next_stream().await {
//!     if incoming.port != 80 {
//!         incoming.refuse(allium_client::embed::EndReason::ConnectRefused);
//!         continue;
//!     }
//!     if let Some(mut stream) = incoming.accept(None).await {
//!         stream.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello").await?;
//!         stream.shutdown().await?;
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use tokio::sync::watch;

use crate::connect::{ConnectError, ConnectErrorKind};
use crate::hs_service::rend::StreamTarget;
use crate::hs_service::HostedService;
use crate::{Bootstrap, ClientConfig, ClientState};
pub use crate::onion_service::OnionServiceConfig;
pub use allium_net::stream::{DataStream, IncomingStream};
pub use allium_proto::relay_msg::EndReason;

/// Streams of a hosted onion service waiting for the program to take them; more are refused
/// (END RESOURCELIMIT).
const SERVICE_STREAM_QUEUE: usize = 64;

/// Why the client could not do what was asked. [`Error::kind`] says what kind of failure.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    detail: Box<dyn std::error::Error + Send + Sync>,
}

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The config is unusable, or the client could not start with it.
    Config,
    /// The client stopped (a fatal error in one of its tasks).
    Stopped,
    /// Not bootstrapped yet: try again later.
    NotReady,
    /// No path or circuit could be had.
    Network,
    /// The destination (or every exit's policy) refused, or could not be reached.
    Refused,
    /// The onion service could not be reached.
    OnionService,
    /// The request is wrong (port 0, a malformed onion address).
    BadRequest,
    /// Reading or writing a stream failed.
    Io,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    fn new(kind: ErrorKind, detail: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error { kind, detail: detail.into() }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.detail.fmt(f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.detail)
    }
}

impl From<ConnectError> for Error {
    fn from(e: ConnectError) -> Self {
        let kind = match e.kind() {
            ConnectErrorKind::BadRequest => ErrorKind::BadRequest,
            ConnectErrorKind::NotReady => ErrorKind::NotReady,
            ConnectErrorKind::Refused => ErrorKind::Refused,
            ConnectErrorKind::OnionService => ErrorKind::OnionService,
            _ => ErrorKind::Network,
        };
        Error::new(kind, e)
    }
}

impl From<allium_net::config::ConfigError> for Error {
    fn from(e: allium_net::config::ConfigError) -> Self {
        Error::new(ErrorKind::Config, e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(ErrorKind::Io, e)
    }
}

/// One step of the bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapEvent {
    /// 0 starting, 25 consensus fetched and verified, 50 guards chosen (circuits can be built
    /// from here on), 75 first circuit built, 100 ready.
    pub percent: u8,
    /// The step in words.
    pub phase: String,
}

/// The bootstrap's steps as they happen ([`Client::bootstrap_events`]).
pub struct BootstrapEvents {
    rx: watch::Receiver<u8>,
    bootstrap: Arc<Bootstrap>,
    /// The step reached when the events were asked for is the first event.
    first: bool,
}

impl BootstrapEvents {
    /// The next step reached (the current one first); `None` once the client stopped. Steps
    /// reached in quick succession may come as one (the latest).
    pub async fn next(&mut self) -> Option<BootstrapEvent> {
        if !std::mem::take(&mut self.first) {
            self.rx.changed().await.ok()?;
        }
        let percent = *self.rx.borrow_and_update();
        Some(BootstrapEvent { percent, phase: self.bootstrap.phase() })
    }
}

/// A running client.
pub struct Client {
    state: Arc<ClientState>,
    /// Where onion-service keys live (`node.data_dir`).
    data_dir: std::path::PathBuf,
    /// Why the client stopped, once it did.
    stopped: watch::Receiver<Option<String>>,
    /// Owns the client's tasks: aborted (and with them the tasks) when the client is dropped.
    watcher: tokio::task::AbortHandle,
}

impl Client {
    /// Starts a client from `cfg` (its `[client]` listeners are not opened: this program is
    /// the application). Returns at once; the bootstrap goes on in the background.
    pub async fn start(cfg: ClientConfig) -> Result<Client, Error> {
        let (state, mut tasks) = crate::launch(&cfg).await.map_err(|e| Error::new(ErrorKind::Config, e))?;
        let (tx, stopped) = watch::channel(None);
        let watcher = tokio::spawn(async move {
            let why = match tasks.join_next().await {
                Some(Ok(Err(e))) => e.to_string(),
                Some(Ok(Ok(()))) => "a client task ended".into(),
                Some(Err(e)) => format!("a client task panicked: {e}"),
                None => "no client tasks".into(),
            };
            tracing::error!("client stopped: {why}");
            tx.send_replace(Some(why));
        })
        .abort_handle();
        Ok(Client { state, data_dir: cfg.node.data_dir.clone(), stopped, watcher })
    }

    /// The bootstrap's steps, the current one first.
    pub fn bootstrap_events(&self) -> BootstrapEvents {
        BootstrapEvents { rx: self.state.bootstrap.subscribe(), bootstrap: self.state.bootstrap.clone(), first: true }
    }

    /// Waits until the bootstrap is complete (100%), or fails if the client stopped first.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut progress = self.state.bootstrap.subscribe();
        let mut stopped = self.stopped.clone();
        tokio::select! {
            r = progress.wait_for(|p| *p >= 100) => r.map(|_| ()).map_err(|_| Error::new(ErrorKind::Stopped, "the client stopped")),
            r = stopped.wait_for(Option::is_some) => Err(Error::new(ErrorKind::Stopped, r.ok().and_then(|w| w.clone()).unwrap_or_else(|| "the client stopped".into()))),
        }
    }

    /// Opens a stream to `host:port` (a name is resolved by the exit; a `.allium` name is an
    /// onion service), waiting up to 30 s for the bootstrap if needed.
    pub async fn connect(&self, target: (&str, u16)) -> Result<DataStream, Error> {
        self.connect_isolated(target, b"").await
    }

    /// [`Client::connect`] on circuits of its own: streams with different `isolation` never
    /// share a circuit (as SOCKS streams with different credentials).
    pub async fn connect_isolated(&self, (host, port): (&str, u16), isolation: &[u8]) -> Result<DataStream, Error> {
        if let Some(why) = self.stopped.borrow().clone() {
            return Err(Error::new(ErrorKind::Stopped, why));
        }
        let mut credentials = b"embed\0".to_vec();
        credentials.extend_from_slice(isolation);
        let iso = self.state.isolation(&credentials, None, host);
        // The circuit's successor (if it was built ahead of need) is owed now.
        Ok(crate::connect::open(&self.state, host, port, &iso).await?.0.stream)
    }
}

impl Client {
    /// Hosts an onion service whose streams this program takes ([`OnionService::next_stream`]);
    /// `cfg.ports` is not used. Its key is created on first use, in `node.data_dir`, and kept:
    /// the same name is the same address at every start. The service publishes its
    /// descriptor once the client is bootstrapped.
    pub fn launch_onion_service(&self, cfg: OnionServiceConfig) -> Result<OnionService, Error> {
        let mut check = cfg.clone();
        // Validated as a config would be, with a placeholder mapping.
        check.ports = vec!["1 -> 127.0.0.1:1".into()];
        crate::onion_service::validate(std::slice::from_ref(&check))?;
        let address = cfg.load_or_create_address(&self.data_dir).map_err(|e| Error::new(ErrorKind::Config, format!("onion service {}: its key: {e}", cfg.name)))?.to_host();
        let (tx, streams) = tokio::sync::mpsc::channel(SERVICE_STREAM_QUEUE);
        let svc = HostedService::with_target(&cfg, &self.data_dir, self.state.clone(), StreamTarget::Program(tx)).map_err(|e| Error::new(ErrorKind::Config, e))?;
        self.state.set_service_state(&cfg.name, "waiting for the consensus".into());
        let published = svc.publications();
        let task = tokio::spawn(async move {
            if let Err(e) = svc.run().await {
                tracing::error!("onion service stopped: {e}");
            }
        })
        .abort_handle();
        Ok(OnionService { address, streams, published, task })
    }
}

/// An onion service this program hosts ([`Client::launch_onion_service`]); dropped, it stops.
pub struct OnionService {
    address: String,
    streams: tokio::sync::mpsc::Receiver<IncomingStream>,
    published: watch::Receiver<usize>,
    task: tokio::task::AbortHandle,
}

impl OnionService {
    /// Its address (`….allium`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Waits until a descriptor of the service is on at least one HSDir (clients can find it
    /// from then on); fails if the service stopped first.
    pub async fn published(&mut self) -> Result<(), Error> {
        self.published.wait_for(|n| *n > 0).await.map(|_| ()).map_err(|_| Error::new(ErrorKind::Stopped, "the onion service stopped"))
    }

    /// The next stream a client opened to it: accept it ([`IncomingStream::accept`], with no
    /// address) or refuse it. `None` once the service stopped.
    pub async fn next_stream(&mut self) -> Option<IncomingStream> {
        self.streams.recv().await
    }
}

impl Drop for OnionService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}
