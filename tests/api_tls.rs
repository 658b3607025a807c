//! End to end: the TCP API over HTTPS with the real binaries and a test PKI
//! (rcgen). berthd refuses plain TCP unless `--api-insecure`, serves HTTPS
//! with the token, with client certificates instead of it, and with both;
//! berthctl talks to it with `--ca-file`/`--cert`/`--key` (or their
//! environment variables) and says in one line what is wrong otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_e2e::pki::TestPki;
use berth_e2e::*;

/// Runs berthd with `args` (on temp dirs) and expects it to exit by itself
/// within 10 s: the exit code and stderr.
fn berthd_refuses(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("empty.toml");
    std::fs::write(&config, "").unwrap();
    let mut child = Command::new(berthd_bin())
        .arg("--config")
        .arg(&config)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--run-dir")
        .arg(dir.path().join("run"))
        .arg("--http")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("berthd {args:?} kept running; it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code().unwrap_or(-1), stderr)
}

#[test]
fn a_tcp_api_without_tls_refuses_to_start_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let tcp = format!("tcp:127.0.0.1:{}", free_port());
    let (code, stderr) =
        berthd_refuses(&["--api", &tcp, "--api-token-file", token.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("serves HTTPS")
            && stderr.contains("--api-tls-cert")
            && stderr.contains("--api-insecure"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // TLS files that cannot be used stop the start, naming flag and file.
    let pki = TestPki::new();
    let (code, stderr) = berthd_refuses(&[
        "--api",
        &tcp,
        "--api-token-file",
        token.to_str().unwrap(),
        "--api-tls-cert",
        &pki.arg("server"),
        "--api-tls-key",
        &pki.arg("client-key"),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--api-tls-key") && stderr.contains("client-key.pem"),
        "{stderr}"
    );
    // Plain HTTP and HTTPS at once is a contradiction, not a choice.
    let (code, stderr) = berthd_refuses(&[
        "--api",
        &tcp,
        "--api-token-file",
        token.to_str().unwrap(),
        "--api-insecure",
        "--api-tls-cert",
        &pki.arg("server"),
        "--api-tls-key",
        &pki.arg("server-key"),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("exclude each other"), "{stderr}");
}

/// berthctl against `agent` (an https:// URL) with extra global flags.
fn ctl_at(agent: &str, flags: &[String], command: &[&str]) -> CtlOutput {
    let mut args = vec!["--agent".to_string(), agent.to_string()];
    args.extend(flags.iter().cloned());
    args.extend(command.iter().map(|s| s.to_string()));
    ctl(&args)
}

fn flag(name: &str, value: String) -> Vec<String> {
    vec![name.to_string(), value]
}

/// Asserts a one-line failure whose text holds every one of `parts`.
fn assert_fails_with(out: &CtlOutput, parts: &[&str]) {
    assert_eq!(
        out.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    for part in parts {
        assert!(out.stderr.contains(part), "{part:?} not in: {}", out.stderr);
    }
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
}

#[test]
fn https_with_the_bearer_token() {
    berth_agent::require_root!();
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-token\n").unwrap();
    let port = free_port();
    let _agent = Agent::start_with(&[
        "--api",
        &format!("tcp:127.0.0.1:{port}"),
        "--api-token-file",
        token.to_str().unwrap(),
        "--api-tls-cert",
        &pki.arg("server"),
        "--api-tls-key",
        &pki.arg("server-key"),
    ]);
    let url = format!("https://127.0.0.1:{port}");
    let ca = flag("--ca-file", pki.arg("ca"));
    let tok = flag("--token-file", token.display().to_string());

    // The right CA and the token: it works.
    let out = ctl_at(&url, &[ca.clone(), tok.clone()].concat(), &["status"]).ok();
    assert!(out.stdout.contains("berthd"), "{}", out.stdout);
    let out = ctl_at(
        &url,
        &[ca.clone(), tok.clone()].concat(),
        &["history", "-o", "json"],
    )
    .ok();
    assert!(out.stdout.trim_start().starts_with('['), "{}", out.stdout);
    // The same through the environment variables.
    let out: CtlOutput = Command::new(berthctl_bin())
        .arg("status")
        .env("BERTH_AGENT", &url)
        .env("BERTH_CA_FILE", pki.path("ca"))
        .env("BERTH_TOKEN_FILE", &token)
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into();
    let out = out.ok();
    assert!(out.stdout.contains("berthd"), "{}", out.stdout);

    // TLS, but no token: refused by the agent.
    let out = ctl_at(&url, &ca, &["status"]);
    assert_fails_with(&out, &["unauthorized"]);
    // A CA that did not sign the agent's certificate, or none (the Mozilla
    // roots): unknown issuer, and what to do about it.
    let out = ctl_at(
        &url,
        &[flag("--ca-file", pki.arg("other-ca")), tok.clone()].concat(),
        &["status"],
    );
    assert_fails_with(&out, &[&url, "unknown issuer", "--ca-file"]);
    let out = ctl_at(&url, &tok, &["status"]);
    assert_fails_with(&out, &["unknown issuer"]);
    // A name the certificate does not list (it is for 127.0.0.1).
    let by_name = format!("https://localhost:{port}");
    let out = ctl_at(&by_name, &[ca.clone(), tok.clone()].concat(), &["status"]);
    assert_fails_with(&out, &["name mismatch"]);
    // Plain HTTP to the HTTPS listener: the hint says https://.
    let out = ctl_at(&format!("http://127.0.0.1:{port}"), &tok, &["status"]);
    assert_fails_with(&out, &["use --agent https://"]);
    // And the raw listener never answers plain HTTP.
    assert!(http_tcp(port, "GET", "/v1/status", &[], b"").is_err());
}

#[test]
fn https_with_client_certificates_instead_of_or_besides_the_token() {
    berth_agent::require_root!();
    let pki = TestPki::new();
    let port = free_port();
    // Client certificates alone authenticate (no --api-token-file).
    let agent = Agent::start_with(&[
        "--api",
        &format!("tcp:127.0.0.1:{port}"),
        "--api-tls-cert",
        &pki.arg("server"),
        "--api-tls-key",
        &pki.arg("server-key"),
        "--api-tls-client-ca",
        &pki.arg("client-ca"),
    ]);
    let url = format!("https://127.0.0.1:{port}");
    let ca = flag("--ca-file", pki.arg("ca"));
    let client = [
        flag("--cert", pki.arg("client")),
        flag("--key", pki.arg("client-key")),
    ]
    .concat();
    let out = ctl_at(&url, &[ca.clone(), client.clone()].concat(), &["status"]).ok();
    assert!(out.stdout.contains("berthd"), "{}", out.stdout);
    // No client certificate: one line saying so.
    let out = ctl_at(&url, &ca, &["status"]);
    assert_fails_with(&out, &[&url, "requires a client certificate", "--cert"]);
    // A certificate from a CA the agent does not trust.
    let intruder = [
        flag("--cert", pki.arg("other-client")),
        flag("--key", pki.arg("other-client-key")),
    ]
    .concat();
    let out = ctl_at(&url, &[ca.clone(), intruder].concat(), &["status"]);
    assert_fails_with(
        &out,
        &[&url, "refused the client certificate", "unknown CA"],
    );
    // An expired one from the right CA.
    let expired = [
        flag("--cert", pki.arg("client-expired")),
        flag("--key", pki.arg("client-expired-key")),
    ]
    .concat();
    let out = ctl_at(&url, &[ca.clone(), expired].concat(), &["status"]);
    assert_fails_with(&out, &[&url, "refused the client certificate (expired)"]);
    // The agent logged the refused handshakes.
    assert!(
        agent.log().contains("API TLS handshake failed"),
        "{}",
        agent.log()
    );
    drop(agent);

    // With a token as well, both are required.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "both-token\n").unwrap();
    let port = free_port();
    let _agent = Agent::start_with(&[
        "--api",
        &format!("tcp:127.0.0.1:{port}"),
        "--api-token-file",
        token.to_str().unwrap(),
        "--api-tls-cert",
        &pki.arg("server"),
        "--api-tls-key",
        &pki.arg("server-key"),
        "--api-tls-client-ca",
        &pki.arg("client-ca"),
    ]);
    let url = format!("https://127.0.0.1:{port}");
    let tok = flag("--token-file", token.display().to_string());
    let out = ctl_at(&url, &[ca.clone(), client.clone()].concat(), &["status"]);
    assert_fails_with(&out, &["unauthorized"]);
    let out = ctl_at(&url, &[ca.clone(), tok.clone()].concat(), &["status"]);
    assert_fails_with(&out, &["requires a client certificate"]);
    let out = ctl_at(&url, &[ca, client, tok].concat(), &["status"]).ok();
    assert!(out.stdout.contains("berthd"), "{}", out.stdout);
}

#[test]
fn an_expired_agent_certificate_is_named() {
    berth_agent::require_root!();
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t\n").unwrap();
    let port = free_port();
    let _agent = Agent::start_with(&[
        "--api",
        &format!("tcp:127.0.0.1:{port}"),
        "--api-token-file",
        token.to_str().unwrap(),
        "--api-tls-cert",
        &pki.arg("server-expired"),
        "--api-tls-key",
        &pki.arg("server-expired-key"),
    ]);
    let url = format!("https://127.0.0.1:{port}");
    let flags = [
        flag("--ca-file", pki.arg("ca")),
        flag("--token-file", token.display().to_string()),
    ]
    .concat();
    let out = ctl_at(&url, &flags, &["status"]);
    assert_fails_with(&out, &[&url, "has expired"]);
}
