//! A small HTTP/1.1 client for the agent API over a unix socket or TCP, built
//! on hyper. It turns transport failures into one clear line: unreachable,
//! not permitted, or the token refused.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use berth_core::api::ErrorBody;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Where the agent's API is.
#[derive(Debug, Clone)]
pub enum AgentAddr {
    Unix(PathBuf),
    Tcp(String),
}

impl AgentAddr {
    pub fn parse(text: &str) -> Result<AgentAddr> {
        if let Some(path) = text.strip_prefix("unix:") {
            Ok(AgentAddr::Unix(PathBuf::from(path)))
        } else if let Some(addr) = text.strip_prefix("http://") {
            Ok(AgentAddr::Tcp(addr.trim_end_matches('/').to_string()))
        } else {
            bail!("--agent `{text}`: expected unix:PATH or http://ADDR:PORT")
        }
    }
}

impl std::fmt::Display for AgentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            AgentAddr::Tcp(a) => write!(f, "http://{a}"),
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
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: AgentAddr,
    token: Option<String>,
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

impl Client {
    pub fn new(addr: AgentAddr, token: Option<String>) -> Client {
        Client { addr, token }
    }

    async fn connect(&self) -> Result<Box<dyn Io>> {
        let describe = |e: std::io::Error| -> anyhow::Error {
            match e.kind() {
                std::io::ErrorKind::PermissionDenied => match &self.addr {
                    AgentAddr::Unix(p) => anyhow!(
                        "permission denied on {}: the API socket is root-only (run as root, or use --agent http://ADDR with --token-file)",
                        p.display()
                    ),
                    AgentAddr::Tcp(a) => anyhow!("permission denied connecting to {a}"),
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
                    bail!("unix sockets are not available here; use --agent http://ADDR")
                }
            }
            AgentAddr::Tcp(addr) => {
                let s = tokio::net::TcpStream::connect(addr.as_str())
                    .await
                    .map_err(describe)?;
                Ok(Box::new(s))
            }
        }
    }

    /// Sends one request; `Err` only for transport failures and 401.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Reply> {
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .with_context(|| format!("talking to berthd at {}", self.addr))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = match &self.addr {
            AgentAddr::Unix(_) => "berthd".to_string(),
            AgentAddr::Tcp(a) => a.clone(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let req = req.body(Full::new(body)).context("building request")?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("berthd at {} closed the connection", self.addr))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            bail!(
                "berthd at {} refused the request: unauthorized (check --token-file or BERTH_TOKEN_FILE)",
                self.addr
            );
        }
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
            .with_context(|| format!("talking to berthd at {}", self.addr))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header("host", "berthd")
            .header("connection", "upgrade")
            .header("upgrade", protocol)
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = sender
            .send_request(req.body(Full::new(body)).context("building request")?)
            .await
            .with_context(|| format!("berthd at {} closed the connection", self.addr))?;
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
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "berthd");
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = sender.send_request(req.body(Full::new(body))?).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            bail!("berthd at {} refused the request: unauthorized (check --token-file or BERTH_TOKEN_FILE)", self.addr);
        }
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
        let io = self.connect().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header("host", "berthd");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::new()))?)
            .await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            bail!("berthd at {} refused the request: unauthorized (check --token-file or BERTH_TOKEN_FILE)", self.addr);
        }
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
