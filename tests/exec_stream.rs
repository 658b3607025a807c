//! End to end: streaming `berthctl exec` (docs/exec.md) against a real agent
//! and container. Piped stdin reaches the command (`-i`), stdout and stderr
//! stay apart and arrive whole (no 4 KiB cap), exit codes and timeouts come
//! back, signals sent to berthctl reach the command, a vanished client's
//! command is killed, and the same works over HTTPS with a bearer token. Under
//! a real pty (`-it`) the command gets a `/dev/pts` terminal of the
//! container with the window size the local terminal has (and follows a
//! resize), ^C is a byte the remote terminal turns into SIGINT, a shell
//! reads a typed line back, it runs under the workload's seccomp filter and
//! cgroup, and the local terminal leaves raw mode when the session ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_e2e::registry::TestRegistry;
use berth_e2e::*;

/// Runs berthctl with `--agent agent` and `args`, `input` on its stdin;
/// killed (and the test failed) if it takes more than a minute.
fn ctl_stdin(agent: &str, args: &[&str], input: &[u8]) -> CtlOutput {
    let child = Command::new(berthctl_bin())
        .arg("--agent")
        .arg(agent)
        .args(args)
        .env_remove("BERTH_AGENT")
        .env_remove("BERTH_TOKEN_FILE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    bounded_output(child, input).into()
}

/// Feeds `input` to `child`'s stdin while collecting its output; kills it
/// and fails if it has not ended within a minute (a stuck stream).
fn bounded_output(mut child: Child, input: &[u8]) -> std::process::Output {
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // A command that stops reading must not block the test.
    std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("berthctl {pid} still running after 60 s");
        }
    }
}

/// A berthctl process killed when dropped (also when the test panics).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Running {
    fn spawn(agent: &Agent, args: &[&str]) -> Running {
        Running(
            Command::new(berthctl_bin())
                .arg("--agent")
                .arg(agent.agent_flag())
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    }

    /// Waits (bounded) for the exit code.
    fn code_within(&mut self, secs: u64) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "berthctl still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Reads stdout until it contains `text` (bounded).
    fn wait_stdout(&mut self, text: &str) {
        let out = self.0.stdout.as_mut().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + Duration::from_secs(20);
        while !String::from_utf8_lossy(&seen).contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} in {seen:?}");
            let n = out.read(&mut buf).unwrap();
            assert!(n > 0, "stdout ended before {text:?}: {seen:?}");
            seen.extend_from_slice(&buf[..n]);
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

/// The processes of the container `web` as `ps` shows them.
fn ps(agent: &Agent) -> String {
    agent.ctl(&["exec", "web", "--", "ps"]).ok().stdout
}

fn manifest(image: &str) -> String {
    format!(
        "[service.web]\nimage = \"{image}\"\ncommand = [\"sleep\", \"3600\"]\nuser = \"1000:1000\"\n"
    )
}

fn web_running(agent: &Agent) -> String {
    agent.wait_for(30, "web running", |a| {
        a.containers()
            .into_iter()
            .find(|c| c["service"] == "web" && c["state"] == "running")
            .map(|c| c["id"].as_str().unwrap().to_string())
    })
}

#[test]
fn exec_streams_stdio_exit_codes_and_signals() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "exec-token\n").unwrap();
    let port = free_port();
    let pki = berth_e2e::pki::TestPki::new();
    let mut agent = Agent::start_with(&[
        "--api",
        &format!("tcp:127.0.0.1:{port}"),
        "--api-token-file",
        token_file.to_str().unwrap(),
        "--api-tls-cert",
        &pki.arg("server"),
        "--api-tls-key",
        &pki.arg("server-key"),
    ]);
    agent.apply_text("m.toml", &manifest(&image)).ok();
    let id = web_running(&agent);
    let unix = agent.agent_flag();

    // (a) Piped stdin reaches the command with -i, and its end is EOF.
    let out = ctl_stdin(&unix, &["exec", "-i", "web", "--", "cat"], b"hello\n");
    assert_eq!((out.code, out.stdout.as_str()), (0, "hello\n"), "{out:?}");
    // Without -i the command reads end-of-file at once, whatever is piped.
    let out = ctl_stdin(&unix, &["exec", "web", "--", "cat"], b"not for you\n");
    assert_eq!((out.code, out.stdout.as_str()), (0, ""), "{out:?}");
    // Much more than a pipe buffer, both ways at once, byte for byte.
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let child = Command::new(berthctl_bin())
        .args(["--agent", &unix, "exec", "-i", "web", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = bounded_output(child, &data);
    assert!(out.status.success());
    assert!(out.stdout == data, "{} bytes back", out.stdout.len());

    // (c) The exit code is berthctl's; stdout and stderr stay apart.
    let out = agent.ctl(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (7, "out\n", "err\n")
    );
    let out = agent.ctl(&["exec", &id[..12], "--", "false"]);
    assert_eq!(out.code, 1, "{out:?}");
    let out = agent.ctl(&["exec", "web", "--", "/no/such/binary"]);
    assert_eq!(out.code, 127, "{out:?}");
    assert!(out.stderr.contains("/no/such/binary"), "{}", out.stderr);
    let out = agent.ctl(&["exec", "--timeout", "300ms", "web", "--", "sleep", "30"]);
    assert_eq!(out.code, 124, "{out:?}");
    assert!(
        out.stderr.contains("timed out after 300ms"),
        "{}",
        out.stderr
    );
    let out = agent.ctl(&["exec", "nope", "--", "true"]);
    assert_eq!(out.code, 125);
    assert!(out.stderr.contains("`nope` not found"), "{}", out.stderr);
    // -it needs a terminal on stdin (as docker exec).
    let out = agent.ctl(&["exec", "-it", "web", "--", "sh"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("not a TTY"), "{}", out.stderr);

    // (d) Output far beyond the old 4 KiB cap arrives whole, on both streams.
    let out = agent.ctl(&[
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "head -c 300000 /dev/zero | tr '\\0' x; head -c 70000 /dev/zero | tr '\\0' e >&2",
    ]);
    assert_eq!(out.code, 0);
    assert!(
        out.stdout.len() == 300_000 && out.stdout.bytes().all(|b| b == b'x'),
        "{} bytes of stdout",
        out.stdout.len()
    );
    assert!(
        out.stderr.len() == 70_000 && out.stderr.bytes().all(|b| b == b'e'),
        "{} bytes of stderr",
        out.stderr.len()
    );
    let json = agent.ctl(&[
        "-o",
        "json",
        "exec",
        "web",
        "--",
        "sh",
        "-c",
        "head -c 10000 /dev/zero | tr '\\0' j; exit 3",
    ]);
    assert_eq!(json.code, 3);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["container"], id.as_str());
    assert_eq!(v["stdout"].as_str().unwrap().len(), 10_000);

    // The one-shot JSON answer (no upgrade) keeps the health checks' 4 KiB
    // capture; a pty or stdin needs the stream.
    let body = br#"{"cmd": ["sh", "-c", "head -c 9000 /dev/zero | tr '\\0' o; exit 4"]}"#;
    let r = agent.api(
        "POST",
        "/v1/services/web/exec",
        &[("Content-Type", "application/json")],
        body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["exit_code"].as_i64(), v["output"].as_str().map(str::len)),
        (Some(4), Some(4096)),
        "{v}"
    );
    let r = agent.api(
        "POST",
        "/v1/containers/web/exec",
        &[("Content-Type", "application/json")],
        br#"{"cmd": ["sh"], "tty": true}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("berth-exec.v1"), "{}", r.text());

    // -t without a local terminal: a pty of the container, default size.
    let out = agent.ctl(&[
        "exec",
        "-t",
        "web",
        "--",
        "sh",
        "-c",
        "busybox tty; busybox stty size; echo err >&2",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    // One terminal: stderr comes through it too, with its line endings.
    assert!(out.stdout.starts_with("/dev/pts/"), "{out:?}");
    assert!(
        out.stdout.contains("24 80\r\n") && out.stdout.contains("err\r\n"),
        "{out:?}"
    );
    assert_eq!(out.stderr, "");

    // Signals sent to berthctl reach the command (no terminal: forwarded).
    let mut run = Running::spawn(
        &agent,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "trap 'echo got INT; exit 42' INT; echo ready; while :; do sleep 0.1; done",
        ],
    );
    run.wait_stdout("ready");
    run.signal("INT");
    assert_eq!(run.code_within(20), 42);
    let mut run = Running::spawn(
        &agent,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 100",
        ],
    );
    run.wait_stdout("ready");
    run.signal("TERM");
    assert_eq!(run.code_within(20), 128 + 15);

    // A client that vanishes takes its command with it.
    let mut run = Running::spawn(
        &agent,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 1001",
        ],
    );
    run.wait_stdout("ready");
    assert!(ps(&agent).contains("sleep 1001"));
    run.signal("KILL");
    let _ = run.code_within(10);
    agent.wait_for(20, "the orphaned command killed", |a| {
        (!ps(a).contains("sleep 1001")).then_some(())
    });

    // The same over HTTPS with the bearer token (the upgraded connection
    // is the TLS stream); a wrong token is refused.
    let tcp = format!("https://127.0.0.1:{port}");
    let ca = pki.arg("ca");
    let out = ctl_stdin(
        &tcp,
        &[
            "--ca-file",
            &ca,
            "--token-file",
            token_file.to_str().unwrap(),
            "exec",
            "-i",
            "web",
            "--",
            "sh",
            "-c",
            "cat; exit 9",
        ],
        b"over tcp\n",
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (9, "over tcp\n"),
        "{out:?}"
    );
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "nope\n").unwrap();
    let out = ctl_stdin(
        &tcp,
        &[
            "--ca-file",
            &ca,
            "--token-file",
            wrong.to_str().unwrap(),
            "exec",
            "web",
            "--",
            "true",
        ],
        b"",
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("unauthorized"), "{}", out.stderr);

    // Stopping berthd does not wait for open sessions: it ends them, and
    // their commands die with them (the workload stays).
    let mut run = Running::spawn(
        &agent,
        &[
            "exec",
            "web",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 1002",
        ],
    );
    run.wait_stdout("ready");
    assert!(agent.terminate().success());
    assert_ne!(run.code_within(10), 0);
    agent.spawn();
    agent.wait_for(20, "the session's command killed with berthd", |a| {
        let ps = ps(a);
        (!ps.contains("sleep 1002") && ps.contains("sleep 3600")).then_some(())
    });
}

/// A pty whose master the test drives, the slave being berthctl's terminal.
struct Pty {
    master: Arc<OwnedFd>,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    fn open(rows: u16, cols: u16) -> (Pty, OwnedFd) {
        let pty = nix::pty::openpty(None, None).unwrap();
        berth_agent::sys::tty::set_window_size(pty.master.as_fd(), rows, cols).unwrap();
        let master = Arc::new(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let (m, o) = (master.clone(), output.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once no process holds the slave.
            while let Ok(n) = nix::unistd::read(m.as_fd(), &mut buf) {
                if n == 0 {
                    break;
                }
                o.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        (Pty { master, output }, pty.slave)
    }

    fn type_in(&self, text: &[u8]) {
        let mut left = text;
        while !left.is_empty() {
            let n = nix::unistd::write(self.master.as_fd(), left).unwrap();
            left = &left[n..];
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) until the output has `text`; returns all of it.
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.text();
            if all.contains(text) {
                return all;
            }
            assert!(Instant::now() < deadline, "no {text:?} in:\n{all}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn exec_it_runs_an_interactive_shell_on_a_pty() {
    berth_agent::require_root!();
    let reg = TestRegistry::start().unwrap();
    let image = push_web_image(&reg, "shop/web:1", "v1");
    let agent = Agent::start();
    agent.apply_text("m.toml", &manifest(&image)).ok();
    web_running(&agent);

    let (pty, slave) = Pty::open(37, 121);
    let before = nix::sys::termios::tcgetattr(&slave).unwrap();
    // berthctl in its own session with the pty as its controlling terminal,
    // as in a terminal emulator (so it gets SIGWINCH on a resize).
    let child = Command::new("setsid")
        .arg("-c")
        .arg(berthctl_bin())
        .args([
            "--agent",
            &agent.agent_flag(),
            "exec",
            "-it",
            "web",
            "--",
            "sh",
        ])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let mut run = Running(child);

    pty.wait_for("$ ");
    // Markers are computed remotely so the terminal's echo never matches them.
    pty.type_in(b"busybox tty; busybox stty size; echo M$((1+1))\n");
    let out = pty.wait_for("M2\r\n");
    assert!(out.contains("/dev/pts/0\r\n"), "{out}");
    assert!(out.contains("37 121\r\n"), "{out}");
    // While the session runs, the local terminal is raw (no echo, no signals).
    let raw = nix::sys::termios::tcgetattr(&slave).unwrap();
    use nix::sys::termios::LocalFlags;
    assert!(!raw
        .local_flags
        .intersects(LocalFlags::ECHO | LocalFlags::ICANON | LocalFlags::ISIG));

    // A resize follows the local terminal.
    berth_agent::sys::tty::set_window_size(pty.master.as_fd(), 50, 140).unwrap();
    // SIGWINCH and the resize frame are asynchronous: ask until it shows.
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in 3.. {
        pty.type_in(format!("busybox stty size; echo M$(({n}-1))x\n").as_bytes());
        let out = pty.wait_for(&format!("M{}x\r\n", n - 1));
        let tail = &out[out.rfind("stty size").unwrap()..];
        if tail.contains("50 140\r\n") {
            break;
        }
        assert!(Instant::now() < deadline, "no resize:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The workload's seccomp filter and cgroup, as its user.
    pty.type_in(b"grep Seccomp: /proc/self/status; id -u; [ \"$(cat /proc/self/cgroup)\" = \"$(cat /proc/1/cgroup)\" ] && echo CG$((7*6))\n");
    let out = pty.wait_for("CG42\r\n");
    assert!(out.contains("Seccomp:\t2\r\n"), "{out}");
    assert!(out.contains("\r\n1000\r\n"), "{out}");

    // ^C is a byte: the remote terminal turns it into SIGINT for the
    // foreground job, and the shell lives on.
    // (The job prints S2 once it runs as the foreground job; the echo of
    // the typed line alone would not prove that.)
    pty.type_in(b"sh -c 'echo S$((1+1)); exec sleep 100'\n");
    pty.wait_for("S2\r\n");
    std::thread::sleep(Duration::from_millis(100));
    pty.type_in(b"\x03");
    pty.type_in(b"echo rc=$?\n");
    let out = pty.wait_for("rc=130\r\n");
    assert!(out.contains("^C"), "{out}");

    // The shell reads a typed line back.
    pty.type_in(b"read line; echo \"got:$line\"\n");
    std::thread::sleep(Duration::from_millis(300));
    pty.type_in(b"hello there\n");
    pty.wait_for("got:hello there\r\n");

    // The exit code comes back and the local terminal is as it was.
    pty.type_in(b"exit 5\n");
    assert_eq!(run.code_within(20), 5);
    let after = nix::sys::termios::tcgetattr(&slave).unwrap();
    assert_eq!(after.local_flags, before.local_flags);
    assert_eq!(after.input_flags, before.input_flags);
    assert_eq!(after.output_flags, before.output_flags);
    assert!(after
        .local_flags
        .contains(LocalFlags::ECHO | LocalFlags::ICANON));
    // Nothing of the session is left in the container.
    assert!(!ps(&agent).contains(" sh\n"), "{}", ps(&agent));

    // SIGTERM to berthctl in a raw session: it ends with 143 and the local
    // terminal is restored; the remote shell is hung up.
    let child = Command::new("setsid")
        .arg("-c")
        .arg(berthctl_bin())
        .args([
            "--agent",
            &agent.agent_flag(),
            "exec",
            "-it",
            "web",
            "--",
            "sh",
        ])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .spawn()
        .unwrap();
    let mut run = Running(child);
    pty.type_in(b"echo S$((2+3))\n");
    pty.wait_for("S5\r\n");
    let raw = nix::sys::termios::tcgetattr(&slave).unwrap();
    assert!(!raw.local_flags.contains(LocalFlags::ECHO));
    run.signal("TERM");
    assert_eq!(run.code_within(20), 128 + 15);
    let after = nix::sys::termios::tcgetattr(&slave).unwrap();
    assert_eq!(after.local_flags, before.local_flags);
    agent.wait_for(20, "the hung-up shell gone", |a| {
        (!ps(a).contains(" sh\n")).then_some(())
    });
}
