//! End to end: GitOps sources with the real binaries — a watched directory
//! (edits, broken TOML surfaced with file:line:col, a rename-heavy checkout as
//! one revision), a local git repository (one revision per manifest commit, a
//! broken commit refused), a URL behind a test HTTP server (ETag / 304), the
//! `managed_by_source` refusal of `berthctl apply`, and restarts that record
//! nothing when the source did not change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use berth_e2e::*;

/// Images are pinned by digest: applying needs no registry (these tests are
/// about manifests reaching the agent, not about containers running).
const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

fn service(name: &str, replicas: u32) -> String {
    format!(
        "[service.{name}]\nimage = \"127.0.0.1:5000/shop/{name}@{PIN}\"\nreplicas = {replicas}\n"
    )
}

/// A manifest whose line 3, column 12 is a type error.
fn broken(name: &str) -> String {
    format!("[service.{name}]\nimage = \"127.0.0.1:5000/shop/{name}@{PIN}\"\nreplicas = \"many\"\n")
}

/// Polls `check` until it returns `Some`, or panics after 20s with `what`.
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn history(agent: &Agent) -> Vec<serde_json::Value> {
    let out = agent.ctl(&["-o", "json", "history"]).ok();
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn status(agent: &Agent) -> serde_json::Value {
    let out = agent.ctl(&["-o", "json", "status"]).ok();
    serde_json::from_str(&out.stdout).unwrap()
}

fn source_error(agent: &Agent) -> Option<String> {
    status(agent)["source_error"].as_str().map(str::to_string)
}

fn events_of_kind(agent: &Agent, kind: &str) -> Vec<serde_json::Value> {
    let out = agent.ctl(&["-o", "json", "events"]).ok();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == kind)
        .collect()
}

fn apply_errors(agent: &Agent, source: &str) -> u64 {
    let text = agent.http("GET", "/metrics").text();
    let key = format!("berth_manifest_apply_errors_total{{source=\"{source}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {key} in metrics"))
        .trim()
        .parse()
        .unwrap()
}

fn wait_for_revisions(agent: &Agent, n: usize) -> Vec<serde_json::Value> {
    wait_for(&format!("{n} revisions"), || {
        let h = history(agent);
        (h.len() >= n).then_some(h)
    })
}

/// Writes a file the way editors and `git checkout` do: temp file + rename.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn watched_directory_applies_edits_refuses_broken_toml_and_recovers() {
    berth_agent::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manifests");
    std::fs::create_dir(&m).unwrap();
    let web = m.join("web.toml");
    std::fs::write(&web, service("web", 1)).unwrap();
    // A rescan interval of an hour: only the watcher can notice the edits.
    let mut agent = Agent::start_with(&[
        "--manifests",
        m.to_str().unwrap(),
        "--manifest-poll-interval",
        "1h",
    ]);

    // The current content is applied on start.
    let h = history(&agent);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["source"], format!("file:{}", m.display()));

    // An edit in place becomes a new revision.
    std::fs::write(&web, service("web", 2)).unwrap();
    let h = wait_for_revisions(&agent, 2);
    assert_eq!(h.len(), 2);

    // Broken TOML: refused, located, history unchanged, event and metric.
    assert_eq!(apply_errors(&agent, "file"), 0);
    std::fs::write(&web, broken("web")).unwrap();
    let err = wait_for("the source error in status", || source_error(&agent));
    let want = format!("{}:3:12", web.display());
    assert!(err.contains(&want), "wanted {want} in {err:?}");
    assert!(err.contains("service.web"), "{err}");
    let table = agent.ctl(&["status"]).ok();
    assert!(
        table.stdout.contains("source error") && table.stdout.contains(&want),
        "{}",
        table.stdout
    );
    assert_eq!(history(&agent).len(), 2);
    let refused = events_of_kind(&agent, "source-refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]["message"].as_str().unwrap().contains(&want),
        "{refused:?}"
    );
    assert_eq!(apply_errors(&agent, "file"), 1);
    assert_eq!(status(&agent)["revision"]["number"], 2);

    // Fixed: applied, the error cleared.
    std::fs::write(&web, service("web", 3)).unwrap();
    let h = wait_for_revisions(&agent, 3);
    assert_eq!(h.len(), 3);
    wait_for("the source error to clear", || {
        source_error(&agent).is_none().then_some(())
    });

    // A restart with the source unchanged records nothing (events are kept
    // across restarts: no new one).
    let applied = events_of_kind(&agent, "revision-applied").len();
    agent.kill9();
    agent.spawn();
    assert_eq!(history(&agent).len(), 3);
    assert_eq!(source_error(&agent), None);
    assert_eq!(events_of_kind(&agent, "revision-applied").len(), applied);

    // A change made while the agent was down is applied on start.
    agent.kill9();
    std::fs::write(&web, service("web", 4)).unwrap();
    agent.spawn();
    let h = history(&agent);
    assert_eq!(h.len(), 4, "{h:?}");
}

#[test]
fn a_rename_heavy_checkout_is_one_revision() {
    berth_agent::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("manifests");
    std::fs::create_dir(&m).unwrap();
    std::fs::write(m.join("a.toml"), service("web", 1)).unwrap();
    std::fs::write(m.join("b.toml"), service("api", 1)).unwrap();
    std::fs::write(m.join("c.toml"), service("worker", 1)).unwrap();
    let agent = Agent::start_with(&[
        "--manifests",
        m.to_str().unwrap(),
        "--manifest-poll-interval",
        "1h",
    ]);
    assert_eq!(history(&agent).len(), 1);

    // Like a checkout: several files replaced by rename one after another,
    // `api` moving from b.toml to c.toml (invalid in between: defined twice),
    // one file deleted, one added.
    let mut c = service("worker", 2);
    c.push_str(&service("api", 2));
    replace_file(&m.join("c.toml"), &c);
    std::thread::sleep(Duration::from_millis(40));
    replace_file(&m.join("a.toml"), &service("web", 2));
    std::thread::sleep(Duration::from_millis(40));
    std::fs::remove_file(m.join("b.toml")).unwrap();
    std::thread::sleep(Duration::from_millis(40));
    replace_file(&m.join("d.toml"), &service("cache", 1));

    let h = wait_for_revisions(&agent, 2);
    let mut services: Vec<&str> = h[1]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    services.sort();
    assert_eq!(services, ["api", "cache", "web", "worker"]);
    // Give a second, spurious revision every chance to appear.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        history(&agent).len(),
        2,
        "exactly one revision per checkout"
    );
    assert!(events_of_kind(&agent, "source-refused").is_empty());
    assert_eq!(apply_errors(&agent, "file"), 0);
    assert_eq!(source_error(&agent), None);
}

#[test]
fn apply_is_refused_while_a_source_is_configured() {
    berth_agent::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("site.toml");
    std::fs::write(&m, service("web", 1)).unwrap();
    let agent = Agent::start_with(&["--manifests", m.to_str().unwrap()]);
    assert_eq!(history(&agent).len(), 1);

    let other = dir.path().join("other.toml");
    std::fs::write(&other, service("web", 5)).unwrap();
    let out = agent.ctl(&["apply", "-f", other.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("managed by --manifests") && out.stderr.contains("site.toml"),
        "{}",
        out.stderr
    );
    assert_eq!(history(&agent).len(), 1);

    // The API answers 409 with a stable code naming the source.
    let body = service("web", 5);
    let r = agent.api("PUT", "/v1/manifest", &[], body.as_bytes());
    assert_eq!(r.status, 409, "{}", r.text());
    let json = r.json();
    assert_eq!(json["error"]["code"], "managed_by_source");
    assert!(json["error"]["details"]["source"]
        .as_str()
        .unwrap()
        .contains("site.toml"));

    // Dry runs and diff keep working.
    let out = agent
        .ctl(&["apply", "--dry-run", "-f", other.to_str().unwrap()])
        .ok();
    assert!(out.stdout.contains("dry run"), "{}", out.stdout);
    let out = agent.ctl(&["diff", "-f", other.to_str().unwrap()]).ok();
    assert!(out.stdout.contains("web"), "{}", out.stdout);
    assert_eq!(history(&agent).len(), 1);

    // A single file replaced by rename (the parent directory is watched).
    replace_file(&m, &service("web", 2));
    wait_for_revisions(&agent, 2);
}

/// Commits `files` (path → text) in the work tree and pushes to the bare repo;
/// returns the commit id.
fn commit_and_push(work: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, text) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", message]);
    git(work, &["push", "-q", "origin", "main"]);
    git(work, &["rev-parse", "HEAD"])
}

#[test]
fn git_commits_become_revisions_and_a_broken_commit_is_refused() {
    berth_agent::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("fleet.git");
    let work = dir.path().join("work");
    std::fs::create_dir(&bare).unwrap();
    std::fs::create_dir(&work).unwrap();
    git(&bare, &["init", "-q", "--bare"]);
    git(&work, &["init", "-q"]);
    git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
    let c1 = commit_and_push(
        &work,
        &[
            ("hosts/common/web.toml", &service("web", 1)),
            ("hosts/other/db.toml", &service("db", 1)),
        ],
        "first",
    );
    let repo = format!("file://{}", bare.display());
    let mut agent = Agent::start_with(&[
        "--git",
        &repo,
        "--git-ref",
        "main",
        "--git-path",
        "hosts/common",
        "--manifest-poll-interval",
        "200ms",
    ]);
    let h = history(&agent);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["source"], format!("git:{c1}"));
    assert_eq!(h[0]["services"], serde_json::json!(["web"]));

    let c2 = commit_and_push(
        &work,
        &[("hosts/common/web.toml", &service("web", 2))],
        "two",
    );
    let h = wait_for_revisions(&agent, 2);
    assert_eq!(h[1]["source"], format!("git:{c2}"));

    // A commit outside --git-path changes nothing.
    commit_and_push(&work, &[("README.md", "fleet\n")], "docs");
    // A commit breaking the manifest is refused, located by repository path.
    let c4 = commit_and_push(&work, &[("hosts/common/web.toml", &broken("web"))], "oops");
    let err = wait_for("the source error in status", || source_error(&agent));
    assert!(
        err.contains("hosts/common/web.toml:3:12") && err.contains(&c4),
        "{err}"
    );
    assert_eq!(history(&agent).len(), 2);
    assert_eq!(apply_errors(&agent, "git"), 1);
    let refused = events_of_kind(&agent, "source-refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0]["message"].as_str().unwrap().contains(&c4));

    // Fixed in the next commit: applied, error cleared.
    let c5 = commit_and_push(
        &work,
        &[("hosts/common/web.toml", &service("web", 3))],
        "fix",
    );
    let h = wait_for_revisions(&agent, 3);
    assert_eq!(h[2]["source"], format!("git:{c5}"));
    wait_for("the source error to clear", || {
        source_error(&agent).is_none().then_some(())
    });

    // Restart with the ref unchanged: nothing fetched, nothing recorded.
    let fetches = |agent: &Agent| agent.log().matches("fetching git ref").count();
    let before = fetches(&agent);
    assert!(before >= 4, "one fetch per new commit");
    let applied = events_of_kind(&agent, "revision-applied").len();
    agent.kill9();
    agent.spawn();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        fetches(&agent),
        before,
        "an unchanged ref is not fetched again"
    );
    assert_eq!(history(&agent).len(), 3);
    assert_eq!(events_of_kind(&agent, "revision-applied").len(), applied);
    assert_eq!(source_error(&agent), None);

    let out = agent.ctl(&["apply", "-f", work.join("hosts/common").to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("managed by --git"), "{}", out.stderr);

    // The poller stops on SIGTERM: a clean, prompt exit.
    assert!(agent.terminate().success(), "{}", agent.log());
}

/// A tiny HTTP server for one manifest with an ETag; counts requests and 200s.
struct ManifestServer {
    port: u16,
    content: Arc<Mutex<(String, String)>>,
    requests: Arc<AtomicUsize>,
    oks: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ManifestServer {
    fn start(body: &str, etag: &str) -> ManifestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let content = Arc::new(Mutex::new((body.to_string(), etag.to_string())));
        let requests = Arc::new(AtomicUsize::new(0));
        let oks = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, r, o, s) = (content.clone(), requests.clone(), oks.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = serve(stream, &c, &r, &o);
            }
        });
        ManifestServer {
            port,
            content,
            requests,
            oks,
            stop,
            thread: Some(thread),
        }
    }

    fn set(&self, body: &str, etag: &str) {
        *self.content.lock().unwrap() = (body.to_string(), etag.to_string());
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn oks(&self) -> usize {
        self.oks.load(Ordering::SeqCst)
    }

    /// Waits until `n` more requests were served after now.
    fn wait_requests(&self, n: usize) {
        let target = self.requests() + n;
        wait_for(&format!("{n} more requests"), || {
            (self.requests() >= target).then_some(())
        });
    }
}

fn serve(
    stream: TcpStream,
    content: &Mutex<(String, String)>,
    requests: &AtomicUsize,
    oks: &AtomicUsize,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut if_none_match = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("if-none-match") {
                if_none_match = Some(v.trim().to_string());
            }
        }
    }
    let (body, etag) = content.lock().unwrap().clone();
    let mut stream = stream;
    if if_none_match.as_deref() == Some(etag.as_str()) {
        write!(
            stream,
            "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n"
        )?;
    } else {
        oks.fetch_add(1, Ordering::SeqCst);
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nETag: {etag}\r\nContent-Type: application/toml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
    }
    requests.fetch_add(1, Ordering::SeqCst);
    stream.flush()
}

impl Drop for ManifestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn url_source_polls_with_etags_and_applies_changes() {
    berth_agent::require_root!();
    let server = ManifestServer::start(&service("web", 1), "\"v1\"");
    let url = format!("http://127.0.0.1:{}/hosts/web.toml", server.port);
    let mut agent =
        Agent::start_with(&["--manifest-url", &url, "--manifest-poll-interval", "200ms"]);
    let h = history(&agent);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0]["source"], format!("url:{url}"));
    assert_eq!(server.oks(), 1);

    // Unchanged: every poll is a 304, nothing parsed or recorded.
    server.wait_requests(3);
    assert_eq!(server.oks(), 1);
    assert_eq!(history(&agent).len(), 1);

    // Changed: one 200, one new revision.
    server.set(&service("web", 2), "\"v2\"");
    let h = wait_for_revisions(&agent, 2);
    assert_eq!(h.len(), 2);
    server.wait_requests(2);
    assert_eq!(server.oks(), 2);

    // Broken: refused with the file named after the URL path.
    server.set(&broken("web"), "\"v3\"");
    let err = wait_for("the source error in status", || source_error(&agent));
    assert!(err.contains("web.toml:3:12"), "{err}");
    assert_eq!(apply_errors(&agent, "url"), 1);
    server.wait_requests(2);
    assert_eq!(server.oks(), 3, "a refused version is not fetched again");
    assert_eq!(history(&agent).len(), 2);

    server.set(&service("web", 3), "\"v4\"");
    wait_for_revisions(&agent, 3);
    wait_for("the source error to clear", || {
        source_error(&agent).is_none().then_some(())
    });

    // Restart with the URL unchanged: the remembered ETag gets a 304.
    let oks = server.oks();
    agent.kill9();
    agent.spawn();
    server.wait_requests(2);
    assert_eq!(server.oks(), oks, "no full fetch after a restart");
    assert_eq!(history(&agent).len(), 3);
}

#[test]
fn sigterm_while_the_first_sync_hangs_shuts_down_cleanly() {
    berth_agent::require_root!();
    // A manifest URL that accepts connections (the kernel's backlog) and
    // never answers: the agent's start-up waits for its first sync.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/m.toml", hanging.local_addr().unwrap());
    let mut agent = Agent::create(&["--manifest-url", &url]);
    agent.launch();
    wait_for("the API socket while the first sync hangs", || {
        agent.socket().exists().then_some(())
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !agent.log().contains("berthd ready"),
        "the agent should still be waiting:\n{}",
        agent.log()
    );
    let status = agent.terminate();
    assert!(status.success(), "exit status {status}:\n{}", agent.log());
    assert!(!agent.socket().exists(), "socket left behind");
    assert!(agent.log().contains("stopped"), "{}", agent.log());
    drop(hanging);
}
