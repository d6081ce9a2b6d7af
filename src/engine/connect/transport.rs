//! bollard's custom transport, for the engines bollard cannot reach the way
//! the Docker CLI does: TLS with Docker's certificate rules, and ssh
//! through the user's own `ssh`. A hyper client (pooled, HTTP/1.1 with
//! upgrades for attach) runs over a [`Connector`] of ours; what it needs to
//! stay alive (an ssh tunnel) lives as long as the bollard client does.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::{BollardRequest, Docker};
use bytes::Bytes;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use super::ssh::{DialStdio, SshFailed, Tunnel};

/// bollard's request body type (it does not export the name).
type Body = Either<
    Full<Bytes>,
    StreamBody<Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>> + Send>>>,
>;

/// Any byte stream a connection runs over.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// One connection to the engine, as hyper sees it.
pub struct Conn(TokioIo<Box<dyn Duplex>>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// How a new connection is made; the request's URI is ignored, every
/// connection goes to the one engine.
#[derive(Clone)]
pub enum Connector {
    Tls {
        addr: String,
        name: rustls::pki_types::ServerName<'static>,
        tls: TlsConnector,
    },
    Ssh(DialStdio),
    Unix(PathBuf),
}

impl Connector {
    pub fn tls(
        host: &str,
        port: u16,
        config: rustls::ClientConfig,
    ) -> Result<Self, super::tls::TlsError> {
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Connector::Tls {
            addr,
            name: super::tls::server_name(host)?,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    async fn connect(self) -> io::Result<Conn> {
        let stream: Box<dyn Duplex> = match self {
            Connector::Tls { addr, name, tls } => {
                let tcp = tokio::net::TcpStream::connect(&addr).await?;
                tcp.set_nodelay(true)?;
                Box::new(tls.connect(name, tcp).await?)
            }
            Connector::Ssh(dial) => Box::new(dial.connect()?),
            Connector::Unix(path) => Box::new(tokio::net::UnixStream::connect(&path).await?),
        };
        Ok(Conn(TokioIo::new(stream)))
    }
}

impl tower_service::Service<hyper::Uri> for Connector {
    type Response = Conn;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        Box::pin(self.clone().connect())
    }
}

/// A bollard client whose requests go through `connector`; `tunnel`, if
/// any, is kept open as long as the client (and its clones) live.
pub fn docker(
    connector: Connector,
    tunnel: Option<Arc<Tunnel>>,
    timeout: Duration,
) -> Result<Docker, bollard::errors::Error> {
    let client: Arc<Client<Connector, Body>> =
        Arc::new(Client::builder(TokioExecutor::new()).build(connector));
    Docker::connect_with_custom_transport(
        move |req: BollardRequest| {
            let client = client.clone();
            let tunnel = tunnel.clone();
            async move {
                client
                    .request(req)
                    .await
                    .map_err(|e| explain(e, tunnel.as_deref()))
            }
        },
        // Only the Host header sees this: the connector picks the engine.
        Some("http://docker"),
        timeout.as_secs(),
        bollard::API_DEFAULT_VERSION,
    )
}

/// ssh's own account of a failure, when there is one, in place of hyper's
/// "connection closed before message completed".
fn explain(
    e: hyper_util::client::legacy::Error,
    tunnel: Option<&Tunnel>,
) -> bollard::errors::Error {
    if let Some(failed) = ssh_failure(&e) {
        return io::Error::other(failed).into();
    }
    if let Some(failed) = tunnel.and_then(Tunnel::diagnose) {
        return io::Error::other(ViaTunnel { failed, cause: e }).into();
    }
    e.into()
}

#[derive(Debug, thiserror::Error)]
#[error("{failed}")]
struct ViaTunnel {
    failed: SshFailed,
    #[source]
    cause: hyper_util::client::legacy::Error,
}

fn ssh_failure(e: &(dyn std::error::Error + 'static)) -> Option<SshFailed> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(f) = c.downcast_ref::<SshFailed>() {
            return Some(f.clone());
        }
        // io::Error's source() skips the error it wraps: look inside.
        if let Some(f) = c
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<SshFailed>())
        {
            return Some(f.clone());
        }
        cur = c.source();
    }
    None
}
