//! The byte stream under a connection: TCP, TLS over TCP, or a Unix-domain
//! socket. An enum rather than a trait object: plain TCP, the common case
//! on a private network, pays for no indirection.

use crate::config::{ConnConfig, FALLBACK_SOCKET_DIR, Host, socket_path};
use crate::error::{Error, ErrorKind, Op};
use crate::tls::{self, TlsStream};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

pub(crate) enum Transport {
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
    Unix(UnixStream),
}

impl Transport {
    /// The channel binding data of a TLS connection (see
    /// [`tls::server_end_point`]); `None` in plain text.
    pub(crate) fn tls_server_end_point(&self) -> Option<Vec<u8>> {
        match self {
            Transport::Tls(s) => tls::server_end_point(s.get_ref().1.peer_certificates()?.first()?),
            Transport::Tcp(_) | Transport::Unix(_) => None,
        }
    }

    /// The TLS version in use, such as `TLSv1_3`; `None` in plain text.
    pub(crate) fn tls_version(&self) -> Option<String> {
        match self {
            Transport::Tls(s) => s.get_ref().1.protocol_version().map(|v| format!("{v:?}")),
            Transport::Tcp(_) | Transport::Unix(_) => None,
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Opens the socket. Returns it with the target as it should appear in
/// messages (the socket path actually used, or `host:port`).
pub(crate) async fn open(config: &ConnConfig, allow_retry: bool) -> Result<(Transport, String), Error> {
    let port = config.port();
    match config.host() {
        // Like libpq, TLS never applies to Unix sockets, whatever sslmode says.
        Host::Unix(dir) => {
            let mut path = socket_path(dir, port);
            // Debian servers listen in /var/run/postgresql, upstream builds in
            // /tmp; with no host given, use whichever has a socket.
            if config.host_is_default() && !path.exists() {
                let fallback = socket_path(FALLBACK_SOCKET_DIR.as_ref(), port);
                if fallback.exists() {
                    path = fallback;
                }
            }
            let target = path.display().to_string();
            match UnixStream::connect(&path).await {
                Ok(s) => Ok((Transport::Unix(s), target)),
                Err(e) => Err(Error::new(Op::Connect, target, ErrorKind::Io(e))),
            }
        }
        Host::Tcp(name) => {
            let target = config.display_target();
            let mut plan = tls::plan(config, allow_retry).map_err(|k| Error::new(Op::Connect, &target, k))?;
            let addrs: Vec<SocketAddr> = if let Some(ip) = config.hostaddr() {
                vec![SocketAddr::new(ip, port)]
            } else if let Ok(ip) = name.parse() {
                vec![SocketAddr::new(ip, port)]
            } else {
                let dns = |cause| Error::new(Op::Connect, &target, ErrorKind::Dns { host: name.clone(), cause });
                let found: Vec<SocketAddr> =
                    tokio::net::lookup_host((name.as_str(), port)).await.map_err(dns)?.collect();
                if found.is_empty() {
                    return Err(dns(io::Error::new(io::ErrorKind::NotFound, "no addresses found")));
                }
                found
            };
            // Try every address, as libpq does; report the last failure.
            let mut last = None;
            for addr in &addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => {
                        // Status replies are small and latency-sensitive.
                        s.set_nodelay(true).map_err(|e| Error::new(Op::Connect, &target, ErrorKind::Io(e)))?;
                        let Some(plan) = plan.take() else { return Ok((Transport::Tcp(s), target)) };
                        return match tls::negotiate(s, plan, addr.ip()).await {
                            Ok(Ok(tls)) => Ok((Transport::Tls(tls), target)),
                            Ok(Err(plain)) => Ok((Transport::Tcp(plain), target)),
                            Err(kind) => Err(Error::new(Op::Connect, target, kind)),
                        };
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "connection attempt failed");
                        last = Some(e);
                    }
                }
            }
            let e = last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no addresses to try"));
            Err(Error::new(Op::Connect, target, ErrorKind::Io(e)))
        }
    }
}
