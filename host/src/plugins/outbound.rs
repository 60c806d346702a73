//! Sending a plugin's outgoing HTTP request: resolve the host, check each
//! address against the grant (see `http_policy`), connect to the checked
//! address itself (so a second resolution cannot lead elsewhere), and keep
//! the whole exchange, response body included, within one deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, WasiBody};

use super::http_policy::{self, Entry};

/// The connection's driver, handed back to wasmtime-wasi-http.
pub(super) type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Sends `request`, permitted by `entry`, within `deadline` for the whole
/// exchange.
pub(super) async fn send(
    mut request: http::Request<WasiBody>,
    entry: Entry,
    deadline: Duration,
) -> Result<(http::Response<WasiBody>, IoFuture), Error> {
    let until = tokio::time::Instant::now() + deadline;
    let uri = request.uri().clone();
    let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
    let bare_host = http_policy::normalise_host(host);
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });

    let addrs: Vec<SocketAddr> = tokio::time::timeout_at(until, tokio::net::lookup_host((bare_host.as_str(), port)))
        .await
        .map_err(|_| Error::DnsTimeout)?
        .map_err(|e| Error::DnsError { rcode: Some(e.to_string()), info_code: None })?
        .collect();
    let permitted: Vec<SocketAddr> =
        addrs.iter().copied().filter(|a| http_policy::address_permitted(&entry, a.ip())).collect();
    if permitted.is_empty() {
        tracing::warn!(
            host = %bare_host,
            addresses = ?addrs.iter().map(|a| a.ip()).collect::<Vec<_>>(),
            "plugin HTTP request to a granted name that resolves to an internal address: denied \
             (grant the address itself to allow it)"
        );
        return Err(Error::DestinationIpProhibited);
    }
    let tcp = connect_any(&permitted, until).await?;
    let stream: Box<dyn Stream> = if https {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = match bare_host.parse::<std::net::IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::from(ip),
            Err(_) => {
                rustls::pki_types::ServerName::try_from(bare_host.clone()).map_err(|_| Error::HttpRequestUriInvalid)?
            }
        };
        let tls = tokio::time::timeout_at(until, connector.connect(name, tcp))
            .await
            .map_err(|_| Error::ConnectionTimeout)?
            .map_err(Error::Tls)?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) =
        tokio::time::timeout_at(until, hyper::client::conn::http1::handshake(TokioIo::new(stream)))
            .await
            .map_err(|_| Error::ConnectionTimeout)??;
    // Origin-form on the wire: the scheme and authority are for proxies.
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    // The connection is driven on its own task (it must run while the
    // request is sent), and ends at the deadline at the latest.
    let (io_done_tx, io_done) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let r = match tokio::time::timeout_at(until, conn).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::HttpResponseTimeout),
        };
        let _ = io_done_tx.send(r);
    });
    let response = tokio::time::timeout_at(until, sender.send_request(request))
        .await
        .map_err(|_| Error::HttpResponseTimeout)?
        .map_err(Error::from)?;
    let (parts, incoming) = response.into_parts();
    let body = Deadline { body: incoming, sleep: Box::pin(tokio::time::sleep_until(until)) }.boxed_unsync();
    let io: IoFuture = Box::new(async move { io_done.await.unwrap_or(Ok(())) });
    Ok((http::Response::from_parts(parts, body), io))
}

async fn connect_any(addrs: &[SocketAddr], until: tokio::time::Instant) -> Result<TcpStream, Error> {
    let mut last = None;
    for addr in addrs {
        match tokio::time::timeout_at(until, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = Some(e),
            Err(_) => return Err(Error::ConnectionTimeout),
        }
    }
    Err(last.map_or(Error::ConnectionRefused, Error::Connect))
}

/// A response body that ends in a timeout error at the exchange's deadline.
struct Deadline {
    body: hyper::body::Incoming,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Error>>> {
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
        }
        Pin::new(&mut self.body).poll_frame(cx).map_err(Error::from)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
}
