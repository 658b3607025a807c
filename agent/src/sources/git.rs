//! `--git REPO --git-ref REF --git-path DIR`: polled with the git CLI into a
//! private bare repository under `<state-dir>/sources/git/`. `git ls-remote`
//! tells whether REF moved, so an unchanged ref costs no fetch; a moved one is
//! fetched with `--depth 1` and its `*.toml` files read with `git cat-file`
//! (nothing is checked out, no hook runs). Revisions record `git:<commit>`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use berth_core::manifest::{SourceFiles, MAX_FILES, MAX_FILE_BYTES};
use sha2::{Digest as _, Sha256};
use tokio::sync::{oneshot, watch};

use super::{sleep_retrying, Tracker};
use crate::control::{Agent, ApplySource};
use crate::state::{private_dir, StateError};

/// Longest one git command may take.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why the repository could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("git {command} timed out after {GIT_TIMEOUT:?}")]
    Timeout { command: String },
    #[error("git {command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("{0}")]
    Content(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// What to follow: a repository, a ref in it, and a file or directory.
#[derive(Debug, Clone)]
pub struct GitSpec {
    pub repo: String,
    pub reference: String,
    pub path: String,
}

impl GitSpec {
    /// The path inside the repository without leading `./` or trailing `/`.
    fn clean_path(&self) -> String {
        let p = self.path.trim_matches('/');
        let p = p.strip_prefix("./").unwrap_or(p);
        if p == "." {
            String::new()
        } else {
            p.to_string()
        }
    }

    fn location(&self) -> String {
        format!("{} {} {}", self.repo, self.reference, self.clean_path())
    }
}

/// Runs git in `dir` with hooks disabled and no prompts; stdout on success.
async fn git(dir: &Path, args: &[&str]) -> Result<Vec<u8>, GitError> {
    let command = args.first().copied().unwrap_or_default().to_string();
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(["-c", "core.hooksPath=/dev/null"])
        .args(["-c", "fetch.recurseSubmodules=false"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| GitError::Timeout {
            command: command.clone(),
        })?
        .map_err(GitError::Spawn)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(GitError::Failed { command, stderr });
    }
    Ok(out.stdout)
}

/// The private bare repository for `repo` (created on first use).
async fn ensure_repo(work: &Path, repo: &str) -> Result<PathBuf, GitError> {
    let id = hex::encode(&Sha256::digest(repo.as_bytes())[..8]);
    let dir = work.join(id);
    if !dir.join("HEAD").exists() {
        private_dir(&dir)?;
        git(&dir, &["init", "--bare", "-q", "."]).await?;
    }
    Ok(dir)
}

/// The commit `reference` names on the remote, if `ls-remote` can tell
/// (branches, tags, `HEAD`); `None` for a commit id or an unknown name.
async fn remote_commit(dir: &Path, spec: &GitSpec) -> Result<Option<String>, GitError> {
    let out = git(dir, &["ls-remote", "--", &spec.repo, &spec.reference]).await?;
    let text = String::from_utf8_lossy(&out);
    let refs: Vec<(&str, &str)> = text.lines().filter_map(|l| l.split_once('\t')).collect();
    let r = &spec.reference;
    let wanted = [
        format!("refs/heads/{r}"),
        format!("refs/tags/{r}^{{}}"),
        format!("refs/tags/{r}"),
        r.to_string(),
    ];
    Ok(wanted.iter().find_map(|w| {
        refs.iter()
            .find(|(_, name)| name == w)
            .map(|(sha, _)| sha.to_string())
    }))
}

/// Fetches `reference` (depth 1) and returns its commit id.
async fn fetch(dir: &Path, spec: &GitSpec) -> Result<String, GitError> {
    tracing::debug!(repo = %spec.repo, reference = %spec.reference, "fetching git ref");
    git(
        dir,
        &[
            "fetch",
            "-q",
            "--depth",
            "1",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            &spec.repo,
            &format!("+{}:refs/berth/fetched", spec.reference),
        ],
    )
    .await?;
    let out = git(
        dir,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            "refs/berth/fetched^{commit}",
        ],
    )
    .await?;
    Ok(String::from_utf8_lossy(&out).trim().to_string())
}

/// Reads the manifest files at `commit`: `path` itself if it is a file, else
/// every `*.toml` directly in it (not hidden), named by their repository path.
async fn read_files(dir: &Path, commit: &str, path: &str) -> Result<SourceFiles, GitError> {
    let shown = if path.is_empty() { "." } else { path };
    let object = format!("{commit}:{path}");
    let kind = git(dir, &["cat-file", "-t", &object]).await.map_err(|_| {
        GitError::Content(format!("{shown}: no such file or directory at {commit}"))
    })?;
    let mut entries = Vec::new();
    match String::from_utf8_lossy(&kind).trim() {
        "blob" => {
            let size = git(dir, &["cat-file", "-s", &object]).await?;
            let size: u64 = String::from_utf8_lossy(&size).trim().parse().unwrap_or(0);
            entries.push((path.to_string(), object, size));
        }
        "tree" => {
            let out = git(dir, &["ls-tree", "-z", "-l", &object]).await?;
            for rec in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
                let rec = String::from_utf8_lossy(rec);
                let Some((meta, name)) = rec.split_once('\t') else {
                    continue;
                };
                let fields: Vec<&str> = meta.split_whitespace().collect();
                let [_mode, "blob", sha, size] = fields.as_slice() else {
                    continue;
                };
                if !name.ends_with(".toml") || name.starts_with('.') {
                    continue;
                }
                let full = if path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}/{name}")
                };
                entries.push((full, sha.to_string(), size.parse().unwrap_or(0)));
            }
            if entries.is_empty() {
                return Err(GitError::Content(format!(
                    "{shown}: no *.toml files at {commit}"
                )));
            }
            if entries.len() > MAX_FILES {
                return Err(GitError::Content(format!(
                    "{shown}: more than {MAX_FILES} manifest files"
                )));
            }
        }
        other => {
            return Err(GitError::Content(format!(
                "{shown}: a {other}, not a file or directory"
            )))
        }
    }
    let mut files = SourceFiles::new();
    for (name, object, size) in entries {
        if size > MAX_FILE_BYTES {
            return Err(GitError::Content(format!(
                "{name}: larger than {MAX_FILE_BYTES} bytes"
            )));
        }
        let bytes = git(dir, &["cat-file", "blob", &object]).await?;
        let text = String::from_utf8(bytes)
            .map_err(|_| GitError::Content(format!("{name}: not UTF-8")))?;
        files.insert(name, text);
    }
    Ok(files)
}

/// The image archives beside the manifests at `commit:path` (names as in
/// [`super::is_archive_name`]), each written once to `work/archives/<blob>` and
/// identified by its blob id.
async fn archives_at(
    dir: &Path,
    work: &Path,
    commit: &str,
    path: &str,
) -> Result<Vec<(PathBuf, String)>, GitError> {
    let object = format!("{commit}:{path}");
    let kind = git(dir, &["cat-file", "-t", &object]).await?;
    if String::from_utf8_lossy(&kind).trim() != "tree" {
        return Ok(Vec::new());
    }
    let out = git(dir, &["ls-tree", "-z", &object]).await?;
    let mut found = Vec::new();
    for rec in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let rec = String::from_utf8_lossy(rec);
        let Some((meta, name)) = rec.split_once('\t') else {
            continue;
        };
        let fields: Vec<&str> = meta.split_whitespace().collect();
        let [_mode, "blob", sha] = fields.as_slice() else {
            continue;
        };
        if !super::is_archive_name(name) {
            continue;
        }
        let target = work.join("archives").join(sha);
        if !target.is_file() {
            let bytes = git(dir, &["cat-file", "blob", sha]).await?;
            let io = |e: std::io::Error| {
                GitError::Content(format!("{name}: writing {}: {e}", target.display()))
            };
            std::fs::create_dir_all(work.join("archives")).map_err(io)?;
            let tmp = target.with_extension("partial");
            std::fs::write(&tmp, bytes).map_err(io)?;
            std::fs::rename(&tmp, &target).map_err(io)?;
        }
        found.push((target, sha.to_string()));
    }
    Ok(found)
}

/// One poll: ask where the ref points, fetch and offer it if it moved.
async fn poll(
    work: &Path,
    spec: &GitSpec,
    tracker: &mut Tracker,
    last_seen: &mut Option<String>,
) -> Result<(), GitError> {
    let dir = ensure_repo(work, &spec.repo).await?;
    let pinned =
        spec.reference.len() == 40 && spec.reference.bytes().all(|b| b.is_ascii_hexdigit());
    if pinned && last_seen.as_deref() == Some(spec.reference.as_str()) {
        return Ok(());
    }
    if !pinned {
        if let Some(remote) = remote_commit(&dir, spec).await? {
            if last_seen.as_deref() == Some(remote.as_str()) {
                return Ok(());
            }
        }
    }
    let commit = fetch(&dir, spec).await?;
    if last_seen.as_deref() == Some(commit.as_str()) {
        return Ok(());
    }
    tracker.fetch_ok();
    *last_seen = Some(commit.clone());
    let what = ApplySource::Git {
        commit: commit.clone(),
    };
    match read_files(&dir, &commit, &spec.clean_path()).await {
        Ok(files) => {
            let archives = match archives_at(&dir, work, &commit, &spec.clean_path()).await {
                Ok(a) => a,
                Err(e) => {
                    tracker.refuse(&what.describe(), &e.to_string());
                    return Ok(());
                }
            };
            if tracker.load_archives(&archives, &what.describe()).await {
                tracker.offer(files, what, commit, None).await;
            }
        }
        Err(GitError::Content(msg)) => tracker.refuse(&what.describe(), &msg),
        Err(e) => {
            *last_seen = None;
            return Err(e);
        }
    }
    Ok(())
}

/// Polls and applies the repository until `shutdown` turns true.
pub async fn run(
    agent: Arc<Agent>,
    spec: GitSpec,
    work: PathBuf,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
    first_sync: oneshot::Sender<()>,
) {
    let mut tracker = Tracker::new(agent, "git", spec.location());
    let mut last_seen = tracker.persisted().map(|s| s.version);
    let mut first_sync = Some(first_sync);
    tracing::info!(repo = %spec.repo, reference = %spec.reference, path = %spec.path,
        every = ?interval, "polling git repository");
    loop {
        match poll(&work, &spec, &mut tracker, &mut last_seen).await {
            Ok(()) => tracker.fetch_ok(),
            Err(e) => tracker.fetch_failed(e.to_string()),
        }
        tracker.retry_pending().await;
        if let Some(done) = first_sync.take() {
            let _ = done.send(());
        }
        if sleep_retrying(&mut tracker, interval, &mut shutdown).await {
            break;
        }
    }
    tracing::debug!("git poller stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_path_is_normalized() {
        let spec = |p: &str| GitSpec {
            repo: "r".into(),
            reference: "main".into(),
            path: p.into(),
        };
        assert_eq!(spec("manifests/").clean_path(), "manifests");
        assert_eq!(spec("./hosts/common").clean_path(), "hosts/common");
        assert_eq!(spec(".").clean_path(), "");
        assert_eq!(spec("/").clean_path(), "");
    }
}
