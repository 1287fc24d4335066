//! The service binary as a child process, for the tests that signal or kill
//! it and for the benches that measure it from outside.

use std::process::{Child, Command};
use std::time::Duration;

/// A port free on 127.0.0.1 now, for a service's config to bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running service; killed when dropped.
pub struct ServiceProcess {
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl ServiceProcess {
    /// Spawns `command` (the binary, its config and environment, its output)
    /// and waits until `GET <ready_path>` on `port` answers 200. An error if
    /// it does not spawn, exits first, or is not ready `within`.
    pub async fn start(
        mut command: Command,
        port: u16,
        ready_path: &str,
        within: Duration,
    ) -> Result<Self, String> {
        let child = command
            .spawn()
            .map_err(|e| format!("{command:?} did not start: {e}"))?;
        let mut service = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let client = reqwest::Client::new();
        let url = format!("{}{ready_path}", service.base);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(res) = client.get(&url).send().await {
                if res.status() == 200 {
                    return Ok(service);
                }
            }
            if let Ok(Some(status)) = service.child.try_wait() {
                return Err(format!("the service exited ({status}) before it was ready"));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("GET {url} did not answer 200 within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (a name such as `TERM` or `KILL`) to the service.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// SIGTERM, then up to `within` for the service to exit (it is killed
    /// when dropped if it has not).
    pub fn stop(mut self, within: Duration) {
        // Already gone (a bench's service that exited): nothing to signal.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        self.signal("TERM");
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
