//! A TCP proxy in front of the real S3 server that can be "broken": while
//! broken it cuts every open connection and refuses new ones, as a flaky
//! network or a restarting load balancer would.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

pub struct Proxy {
    port: u16,
    broken: Arc<AtomicBool>,
    cuts: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let broken = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let accept = tokio::spawn({
            let (broken, cuts, conns) = (broken.clone(), cuts.clone(), conns.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if broken.load(Ordering::SeqCst) {
                        cuts.fetch_add(1, Ordering::SeqCst);
                        drop(inbound);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target_port)).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().expect("proxy lock").push(task.abort_handle());
                }
            }
        });
        Proxy { port, broken, cuts, conns, accept }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Breaking cuts all open connections; healing lets new ones through.
    pub fn set_broken(&self, broken: bool) {
        self.broken.store(broken, Ordering::SeqCst);
        if broken {
            for conn in self.conns.lock().expect("proxy lock").drain(..) {
                conn.abort();
                self.cuts.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Connections cut or refused so far.
    pub fn cuts(&self) -> u64 {
        self.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        for conn in self.conns.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default() {
            conn.abort();
        }
    }
}
