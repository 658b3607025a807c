//! A loopback TCP proxy a test controls, put between `berthd` and the test
//! registry to stage registry faults at an exact point of a pull: it forwards
//! byte for byte until the client sends a chosen byte string (a blob digest in
//! a request line), then either holds that connection until the test releases
//! it or cuts the registry off (every open connection closed, new ones closed
//! at once) until the test restores it. Threads and sockets end on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the proxy does when the client sends the trigger bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTrigger {
    /// Stop forwarding that connection until [`Proxy::release`].
    Hold,
    /// The registry goes away: the connection and every other one are closed
    /// and new ones are closed at once until [`Proxy::restore`].
    Cut,
}

#[derive(Debug, Default)]
struct Shared {
    /// The registry is unreachable (connections closed on accept).
    down: AtomicBool,
    stop: AtomicBool,
    /// (bytes, action); taken when it fires.
    trigger: Mutex<Option<(Vec<u8>, OnTrigger)>>,
    /// When the trigger fired.
    fired: Mutex<Option<Instant>>,
    held: Mutex<bool>,
    released: Condvar,
    /// Clones of every open socket, closed on a cut or on drop.
    open: Mutex<Vec<TcpStream>>,
    /// Connections accepted while down (each one a failed attempt).
    refused: AtomicU64,
}

/// The proxy: listens on 127.0.0.1:[`Proxy::port`] and forwards to `upstream`.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts forwarding 127.0.0.1:<new port> to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let upstream = upstream.to_string();
        let s = shared.clone();
        let acceptor = std::thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        if s.down.load(Ordering::SeqCst) {
                            s.refused.fetch_add(1, Ordering::SeqCst);
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        }
                        let Ok(server) = TcpStream::connect(&upstream) else {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        };
                        connect(&s, client, server);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Proxy {
            port,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, the registry part of image references through the proxy.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Arms the trigger: the first connection whose client sends `bytes`
    /// gets `action` (once).
    pub fn on(&self, bytes: &str, action: OnTrigger) {
        *self.shared.trigger.lock().unwrap() = Some((bytes.as_bytes().to_vec(), action));
        *self.shared.fired.lock().unwrap() = None;
    }

    /// When the trigger fired, if it did.
    pub fn fired(&self) -> Option<Instant> {
        *self.shared.fired.lock().unwrap()
    }

    /// Waits up to `secs` for the trigger to fire; panics with `what` if not.
    pub fn wait_fired(&self, secs: u64, what: &str) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(t) = self.fired() {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "proxy: {what} not seen in {secs}s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lets a held connection go on.
    pub fn release(&self) {
        *self.shared.held.lock().unwrap() = false;
        self.shared.released.notify_all();
    }

    /// The registry is reachable again.
    pub fn restore(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
    }

    /// Connections closed at once because the registry was down.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

fn close_all(s: &Shared) {
    for c in s.open.lock().unwrap().drain(..) {
        let _ = c.shutdown(Shutdown::Both);
    }
}

fn connect(s: &Arc<Shared>, client: TcpStream, server: TcpStream) {
    {
        let mut open = s.open.lock().unwrap();
        open.retain(|c| c.peer_addr().is_ok());
        open.push(client.try_clone().unwrap());
        open.push(server.try_clone().unwrap());
    }
    // Server → client: plain copy.
    let (mut from, mut to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
    // Client → server: watch for the trigger.
    let s = s.clone();
    let (mut from, mut to) = (client, server);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut tail: Vec<u8> = Vec::new();
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            tail.extend_from_slice(&buf[..n]);
            let action = {
                let mut trigger = s.trigger.lock().unwrap();
                let hit = trigger.as_ref().and_then(|(bytes, action)| {
                    tail.windows(bytes.len())
                        .any(|w| w == bytes.as_slice())
                        .then_some(*action)
                });
                if hit.is_some() {
                    *trigger = None;
                    *s.fired.lock().unwrap() = Some(Instant::now());
                }
                hit
            };
            match action {
                Some(OnTrigger::Hold) => {
                    let mut held = s.held.lock().unwrap();
                    *held = true;
                    while *held && !s.stop.load(Ordering::SeqCst) {
                        held = s
                            .released
                            .wait_timeout(held, Duration::from_millis(50))
                            .unwrap()
                            .0;
                    }
                }
                Some(OnTrigger::Cut) => {
                    s.down.store(true, Ordering::SeqCst);
                    let _ = from.shutdown(Shutdown::Both);
                    let _ = to.shutdown(Shutdown::Both);
                    close_all(&s);
                    break;
                }
                None => {}
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
            // Keep enough to find a trigger split across reads.
            if tail.len() > 512 {
                tail.drain(..tail.len() - 512);
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.release();
        close_all(&self.shared);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}
