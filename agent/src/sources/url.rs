//! `--manifest-url URL`: a TOML manifest polled every
//! `manifest_poll_interval` with `If-None-Match`, so an unchanged manifest
//! costs one 304 and nothing else (no parse, no apply). The body is one file
//! named after the last segment of the URL path.

use std::sync::Arc;
use std::time::Duration;

use berth_core::manifest::{SourceFiles, MAX_FILE_BYTES};
use reqwest::header::{ETAG, IF_NONE_MATCH};
use reqwest::StatusCode;
use tokio::sync::{oneshot, watch};

use super::{content_hash, sleep_retrying, Tracker};
use crate::control::{Agent, ApplySource};

/// Longest one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the URL could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    #[error("fetching {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("fetching {url}: HTTP {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url}: larger than {MAX_FILE_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url}: the manifest is not UTF-8")]
    NotUtf8 { url: String },
}

/// The file name a URL's body is known by: the last path segment.
pub fn file_name(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| {
            u.path_segments()
                .and_then(|mut s| s.next_back().map(str::to_string))
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "manifest.toml".into())
}

/// A fetched response.
enum Fetched {
    NotModified,
    Body { text: String, etag: Option<String> },
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    etag: Option<&str>,
) -> Result<Fetched, UrlError> {
    let http = |source| UrlError::Http {
        url: url.into(),
        source,
    };
    let mut req = client.get(url);
    if let Some(tag) = etag {
        req = req.header(IF_NONE_MATCH, tag);
    }
    let mut resp = req.send().await.map_err(http)?;
    if resp.status() == StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified);
    }
    if !resp.status().is_success() {
        return Err(UrlError::Status {
            url: url.into(),
            status: resp.status(),
        });
    }
    let too_large = || UrlError::TooLarge { url: url.into() };
    if resp.content_length().is_some_and(|n| n > MAX_FILE_BYTES) {
        return Err(too_large());
    }
    let etag = resp
        .headers()
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http)? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > MAX_FILE_BYTES {
            return Err(too_large());
        }
    }
    let text = String::from_utf8(body).map_err(|_| UrlError::NotUtf8 { url: url.into() })?;
    Ok(Fetched::Body { text, etag })
}

/// Polls and applies `url` until `shutdown` turns true.
pub async fn run(
    agent: Arc<Agent>,
    url: String,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    first_sync: oneshot::Sender<()>,
) {
    let client = match reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("berthd/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; --manifest-url is not polled");
            return;
        }
    };
    let mut tracker = Tracker::new(agent, "url", url.clone());
    let persisted = tracker.persisted();
    // The ETag sent as If-None-Match and the hash of the last version offered
    // (applied or refused): neither is fetched or offered twice.
    let mut etag = persisted.as_ref().and_then(|s| s.etag.clone());
    let mut last_seen = persisted.map(|s| s.version);
    let name = file_name(&url);
    let mut first_sync = Some(first_sync);
    tracing::info!(%url, every = ?interval, "polling manifest URL");
    loop {
        match fetch(&client, &url, etag.as_deref()).await {
            Err(e) => tracker.fetch_failed(e.to_string()),
            Ok(Fetched::NotModified) => tracker.fetch_ok(),
            Ok(Fetched::Body { text, etag: tag }) => {
                tracker.fetch_ok();
                let files = SourceFiles::from([(name.clone(), text)]);
                let hash = content_hash(&files);
                if last_seen.as_deref() != Some(hash.as_str()) {
                    last_seen = Some(hash.clone());
                    let source = ApplySource::Url(url.clone());
                    tracker.offer(files, source, hash, tag.clone()).await;
                }
                etag = tag;
            }
        }
        tracker.retry_pending().await;
        if let Some(done) = first_sync.take() {
            let _ = done.send(());
        }
        if sleep_retrying(&mut tracker, interval, &mut shutdown).await {
            break;
        }
    }
    tracing::debug!("manifest URL poller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_named_after_the_url_path() {
        assert_eq!(file_name("http://h/hosts/web.toml?x=1"), "web.toml");
        assert_eq!(file_name("https://h/"), "manifest.toml");
        assert_eq!(file_name("https://h"), "manifest.toml");
    }
}
