//! A TCP proxy in front of a store that can cut connections after a request
//! went through: the store gets the request and applies it, the client never
//! sees the answer. Start a store with `--advertise-addr` set to the proxy's
//! address and every client (and PD) reaches it through the proxy.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with the store's answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cut {
    /// Forward everything.
    Pass = 0,
    /// Drop the next chunk of bytes from the store and close that
    /// connection (both ways); then forward again.
    Once = 1,
    /// Drop every chunk from the store, closing each connection, until set
    /// back to `Pass`.
    All = 2,
}

struct Shared {
    /// Where connections are forwarded (changes when the store restarts on another port).
    target: Mutex<String>,
    /// A [`Cut`] as u8.
    mode: AtomicU8,
    /// Stop accepting.
    stop: AtomicBool,
}

/// The proxy; stops accepting when dropped (open connections die with their peers).
pub struct CutProxy {
    /// The address clients dial, `127.0.0.1:PORT`.
    pub addr: String,
    shared: Arc<Shared>,
}

impl CutProxy {
    /// Listens on a free loopback port; forwards to `target` (settable later).
    pub fn start(target: &str) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let shared = Arc::new(Shared {
            target: Mutex::new(target.to_string()),
            mode: AtomicU8::new(Cut::Pass as u8),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(client, s));
            }
        });
        CutProxy { addr, shared }
    }

    /// Forwards new connections to `target` from now on.
    pub fn set_target(&self, target: &str) {
        *self.shared.target.lock().unwrap_or_else(|p| p.into_inner()) = target.to_string();
    }

    /// Sets what happens to the store's answers.
    pub fn set(&self, cut: Cut) {
        self.shared.mode.store(cut as u8, Ordering::SeqCst);
    }

    /// The current mode (`Once` turns back into `Pass` after its cut).
    pub fn mode(&self) -> Cut {
        match self.shared.mode.load(Ordering::SeqCst) {
            1 => Cut::Once,
            2 => Cut::All,
            _ => Cut::Pass,
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(client: TcpStream, s: Arc<Shared>) {
    let target = s.target.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let Ok(server) = TcpStream::connect_timeout(
        &match target.parse() {
            Ok(a) => a,
            Err(_) => return,
        },
        Duration::from_secs(2),
    ) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    // Client to store: forwarded as is.
    std::thread::spawn(move || pump(c2, s2, None));
    // Store to client: subject to the cut.
    pump(server, client, Some(s));
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: Option<Arc<Shared>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(s) = &cut {
            let mode = s.mode.load(Ordering::SeqCst);
            let cut_now = mode == Cut::All as u8
                || (mode == Cut::Once as u8
                    && s.mode
                        .compare_exchange(
                            Cut::Once as u8,
                            Cut::Pass as u8,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        )
                        .is_ok());
            if cut_now {
                break;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
