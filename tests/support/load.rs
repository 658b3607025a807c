//! A bounded HTTP load loop for zero-downtime tests: a few client threads,
//! each request a fresh connection, stopping by count, by time or on demand.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One HTTP GET to 127.0.0.1; the body on 200.
pub fn get(port: u16, path: &str) -> Result<String, String> {
    get_at(([127, 0, 0, 1], port).into(), path)
}

/// One HTTP GET to `addr`; the body on 200.
pub fn get_at(addr: std::net::SocketAddr, path: &str) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).to_string();
    if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200") {
        Ok(text.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
    } else {
        Err(format!("bad response: {:?}", text.lines().next()))
    }
}

/// A bounded load loop: `threads` clients hammering `port` until `stop` or
/// `limit` passes. Returns (ok, failed, bodies seen, first errors).
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    handles: Vec<std::thread::JoinHandle<(Vec<String>, Vec<String>)>>,
}

impl Load {
    pub fn start(port: u16, threads: usize, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + limit;
        let handles = (0..threads)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                std::thread::spawn(move || {
                    let mut bodies = Vec::new();
                    let mut errors = Vec::new();
                    let mut n = 0;
                    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline && n < 20_000 {
                        n += 1;
                        match get(port, "/index.html") {
                            Ok(b) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                                let b = b.trim().to_string();
                                if !bodies.contains(&b) {
                                    bodies.push(b);
                                }
                            }
                            Err(e) => {
                                failed.fetch_add(1, Ordering::SeqCst);
                                if errors.len() < 5 {
                                    errors.push(e);
                                }
                            }
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    (bodies, errors)
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            handles,
        }
    }

    pub fn finish(self) -> (u64, u64, Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut bodies = Vec::new();
        let mut errors = Vec::new();
        for h in self.handles {
            let (b, e) = h.join().unwrap();
            for x in b {
                if !bodies.contains(&x) {
                    bodies.push(x);
                }
            }
            errors.extend(e);
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            bodies,
            errors,
        )
    }
}
