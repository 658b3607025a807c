//! A small HTTP/1.1 client for the agent API over a unix socket, HTTPS
//! (rustls, see `tls`) or plain HTTP, built on hyper. It turns transport
//! failures into one clear line: unreachable, not permitted, a certificate
//! problem, or the token refused.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use berth_core::api::ErrorBody;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use crate::tls::TlsFiles;

/// Where the agent's API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAddr {
    Unix(PathBuf),
    /// `https://HOST:PORT`: TLS, as berthd serves TCP by default.
    Https(String),
    /// `http://HOST:PORT`: an agent started with `--api-insecure`.
    Http(String),
}

impl AgentAddr {
    pub fn parse(text: &str) -> Result<AgentAddr> {
        if let Some(path) = text.strip_prefix("unix:") {
            Ok(AgentAddr::Unix(PathBuf::from(path)))
        } else if let Some(addr) = text.strip_prefix("https://") {
            Ok(AgentAddr::Https(addr.trim_end_matches('/').to_string()))
        } else if let Some(addr) = text.strip_prefix("http://") {
            Ok(AgentAddr::Http(addr.trim_end_matches('/').to_string()))
        } else {
            bail!("--agent `{text}`: expected unix:PATH or https://HOST:PORT (http:// for an agent started with --api-insecure)")
        }
    }

    /// `HOST:PORT` of a TCP address, for the `Host` header.
    fn host(&self) -> &str {
        match self {
            AgentAddr::Unix(_) => "berthd",
            AgentAddr::Https(a) | AgentAddr::Http(a) => a,
        }
    }
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            AgentAddr::Https(a) => write!(f, "https://{a}"),
            AgentAddr::Http(a) => write!(f, "http://{a}"),
        }
    }
}

/// The message of a JSON error body, or the raw text.
pub fn error_text(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => e.error.message,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters kept).
pub fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A connection switched to another protocol (see [`Client::upgrade`]).
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// A response: status and body bytes.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

/// The API client.
#[derive(Clone)]
pub struct Client {
    pub addr: AgentAddr,
    token: Option<String>,
    /// The TLS config of an `https://` agent.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

impl Client {
    /// A client of `addr`; `tls` files apply to an `https://` agent only
    /// (given with `http://`, they are a mistake worth saying).
    pub fn new(addr: AgentAddr, token: Option<String>, tls: &TlsFiles) -> Result<Client> {
        let tls = match &addr {
            AgentAddr::Https(_) => Some(crate::tls::client_config(tls)?),
            AgentAddr::Http(a) if tls.any() => {
                bail!("--ca-file, --cert and --key are for an https:// agent, not http://{a}")
            }
            _ => None,
        };
        Ok(Client { addr, token, tls })
    }

    /// A transport error as one line: a TLS failure says what is wrong with
    /// which certificate; anything else keeps `what` and the cause.
    fn transport_error(
        &self,
        what: String,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> anyhow::Error {
        if let Some(line) = crate::tls::explain(&self.addr.to_string(), &e) {
            return anyhow!(line);
        }
        let hint = match &self.addr {
            AgentAddr::Http(_) => " (if the agent serves HTTPS, use --agent https://)",
            _ => "",
        };
        anyhow!("{what}: {e}{hint}")
    }

    async fn connect(&self) -> Result<Box<dyn Io>> {
        let describe = |e: std::io::Error| -> anyhow::Error {
            match e.kind() {
                std::io::ErrorKind::PermissionDenied => match &self.addr {
                    AgentAddr::Unix(p) => anyhow!(
                        "permission denied on {}: the API socket is root-only (run as root, or use --agent https://HOST:PORT with --token-file)",
                        p.display()
                    ),
                    AgentAddr::Https(a) | AgentAddr::Http(a) => {
                        anyhow!("permission denied connecting to {a}")
                    }
                },
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    anyhow!("cannot reach berthd at {}: {e} (is berthd running?)", self.addr)
                }
                _ => anyhow!("cannot reach berthd at {}: {e}", self.addr),
            }
        };
        match &self.addr {
            AgentAddr::Unix(path) => {
                #[cfg(unix)]
                {
                    let s = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(describe)?;
                    Ok(Box::new(s))
                }
                #[cfg(not(unix))]
                {
                    bail!("unix sockets are not available here; use --agent https://HOST:PORT")
                }
            }
            AgentAddr::Http(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(describe)?;
                Ok(Box::new(s))
            }
            AgentAddr::Https(addr) => {
                let name = crate::tls::server_name(addr)?;
                let tcp = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(describe)?;
                let config = self
                    .tls
                    .clone()
                    .ok_or_else(|| anyhow!("no TLS config for {}", self.addr))?;
                let s = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        self.transport_error(
                            format!("TLS handshake with berthd at {}", self.addr),
                            e,
                        )
                    })?;
                Ok(Box::new(s))
            }
        }
    }

    /// Connects and sends `req`: the response head, or one line saying
    /// why not.
    async fn send(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.transport_error(format!("talking to berthd at {}", self.addr), e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender.send_request(req).await.map_err(|e| {
            self.transport_error(format!("berthd at {} closed the connection", self.addr), e)
        })?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            bail!(
                "berthd at {} refused the request: unauthorized (check --token-file or BERTH_TOKEN_FILE)",
                self.addr
            );
        }
        Ok(resp)
    }

    /// Sends one request; `Err` only for transport failures and 401.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Reply> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.host());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req.body(Full::new(body)).context("building request")?;
        let resp = self.send(req).await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .context("reading the agent's reply")?
            .to_bytes();
        Ok(Reply { status, body })
    }

    /// Sends `body` (JSON) to `path` asking to switch the connection to
    /// `protocol` (HTTP/1.1 `Upgrade`). `Ok(Ok(io))`: the agent answered 101
    /// and `io` is the raw connection; `Ok(Err(reply))`: any other answer
    /// (an error body). `Err` only for transport failures and 401.
    pub async fn upgrade(
        &self,
        path: &str,
        protocol: &str,
        body: Bytes,
    ) -> Result<std::result::Result<Upgraded, Reply>> {
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.transport_error(format!("talking to berthd at {}", self.addr), e))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", self.addr.host())
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = sender
            .send_request(req.body(Full::new(body)).context("building request")?)
            .await
            .map_err(|e| {
                self.transport_error(format!("berthd at {} closed the connection", self.addr), e)
            })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            bail!(
                "berthd at {} refused the request: unauthorized (check --token-file or BERTH_TOKEN_FILE)",
                self.addr
            );
        }
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let body = resp
                .into_body()
                .collect()
                .await
                .context("reading the agent's reply")?
                .to_bytes();
            return Ok(Err(Reply { status, body }));
        }
        let upgraded = hyper::upgrade::on(resp).await.with_context(|| {
            format!(
                "switching the connection to berthd at {} to {protocol}",
                self.addr
            )
        })?;
        Ok(Ok(TokioIo::new(upgraded)))
    }

    /// Sends a request and hands each body chunk to `on_chunk` as it arrives
    /// (for `logs -f` and pull progress). Non-2xx answers become errors.
    pub async fn stream_with(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        mut on_chunk: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.host());
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = self.send(req.body(Full::new(body))?).await?;
        if !resp.status().is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            bail!("{}", error_text(&body));
        }
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("stream interrupted")?;
            if let Some(data) = frame.data_ref() {
                on_chunk(data)?;
            }
        }
        Ok(())
    }

    /// A streaming GET handing raw chunks to `on_chunk`.
    pub async fn stream_raw(
        &self,
        path: &str,
        on_chunk: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        self.stream_with(Method::GET, path, Bytes::new(), on_chunk)
            .await
    }

    /// Opens a streaming GET (for `events -f`), calling `on_line` per line.
    pub async fn stream_lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(&str) -> Result<()>,
    ) -> Result<()> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", self.addr.host());
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = self.send(req.body(Full::new(Bytes::new()))?).await?;
        if !resp.status().is_success() {
            let body = resp.into_body().collect().await?.to_bytes();
            bail!("{}", error_text(&body));
        }
        let mut body = resp.into_body();
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.context("event stream interrupted")?;
            if let Some(data) = frame.data_ref() {
                pending.extend_from_slice(data);
                while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=pos).collect();
                    on_line(String::from_utf8_lossy(&line).trim_end())?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_addresses_parse_by_scheme() {
        assert_eq!(
            AgentAddr::parse("https://h:9481/").unwrap(),
            AgentAddr::Https("h:9481".into())
        );
        assert_eq!(
            AgentAddr::parse("http://h:9481").unwrap(),
            AgentAddr::Http("h:9481".into())
        );
        assert_eq!(
            AgentAddr::parse("unix:/run/b.sock").unwrap(),
            AgentAddr::Unix("/run/b.sock".into())
        );
        let e = AgentAddr::parse("tcp://h:1").unwrap_err().to_string();
        assert!(e.contains("https://HOST:PORT"), "{e}");
        assert_eq!(AgentAddr::Https("h:1".into()).to_string(), "https://h:1");
    }

    #[test]
    fn tls_files_with_a_plain_http_agent_are_refused() {
        let files = TlsFiles {
            ca_file: Some("ca.pem".into()),
            ..Default::default()
        };
        let e = Client::new(AgentAddr::Http("h:1".into()), None, &files).unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
        assert!(Client::new(AgentAddr::Unix("/s".into()), None, &files).is_ok());
    }

    #[test]
    fn query_escape_keeps_only_unreserved_characters() {
        assert_eq!(query_escape("a b/c"), "a%20b%2Fc");
        assert_eq!(query_escape("web-1.x_y~z"), "web-1.x_y~z");
    }

    #[test]
    fn error_text_is_the_json_message_or_the_raw_text() {
        assert_eq!(
            error_text(br#"{"error":{"code":"not_found","message":"no such service"}}"#),
            "no such service"
        );
        assert_eq!(error_text(b" plain failure\n"), "plain failure");
    }
}
