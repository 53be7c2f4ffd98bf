//! The connection file: where a kernel listens and the key its messages are signed with.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::Path,
};

use serde::{Deserialize, Serialize};

/// ZeroMQ's transport over Unix sockets.
pub const IPC: &str = "ipc";

/// The contents of a kernel's connection file (`-f {connection_file}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub transport: String,
    pub ip: String,
    pub shell_port: u16,
    pub iopub_port: u16,
    pub stdin_port: u16,
    pub control_port: u16,
    pub hb_port: u16,
    pub key: String,
    pub signature_scheme: String,
    #[serde(default)]
    pub kernel_name: String,
}

impl ConnectionInfo {
    /// Five ports free on `ip` right now and a fresh random key. The ports are held until
    /// all five are chosen, so they differ; another process could still take one before
    /// the kernel binds it, which makes the kernel fail to start (and say so).
    pub fn on_free_ports(ip: Ipv4Addr, kernel_name: &str) -> std::io::Result<Self> {
        let held = (0..5)
            .map(|_| TcpListener::bind((ip, 0)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let ports = held
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self {
            transport: "tcp".to_owned(),
            ip: ip.to_string(),
            shell_port: ports[0],
            iopub_port: ports[1],
            stdin_port: ports[2],
            control_port: ports[3],
            hb_port: ports[4],
            key: fresh_key(),
            signature_scheme: "hmac-sha256".to_owned(),
            kernel_name: kernel_name.to_owned(),
        })
    }

    /// Five Unix sockets named after `prefix` (`<prefix>-1` … `<prefix>-5`, which must be
    /// short enough for a socket path) and a fresh random key: ZeroMQ's `ipc` transport.
    /// Nothing listens on TCP then (a kernel whose sandbox is checkpointed needs that).
    pub fn on_unix_sockets(prefix: &Path, kernel_name: &str) -> Self {
        Self {
            transport: IPC.to_owned(),
            ip: prefix.to_string_lossy().into_owned(),
            shell_port: 1,
            iopub_port: 2,
            stdin_port: 3,
            control_port: 4,
            hb_port: 5,
            key: fresh_key(),
            signature_scheme: "hmac-sha256".to_owned(),
            kernel_name: kernel_name.to_owned(),
        }
    }

    /// The socket files of a connection on [`IPC`] (none on TCP).
    pub fn socket_files(&self) -> Vec<std::path::PathBuf> {
        if self.transport != IPC {
            return Vec::new();
        }
        [
            self.shell_port,
            self.iopub_port,
            self.stdin_port,
            self.control_port,
            self.hb_port,
        ]
        .iter()
        .map(|port| std::path::PathBuf::from(format!("{}-{port}", self.ip)))
        .collect()
    }

    /// Reads a connection file a kernel (or `jupyter kernel`) wrote.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let raw = std::fs::read(path)?;
        serde_json::from_slice(&raw).map_err(std::io::Error::other)
    }

    /// The ZeroMQ endpoint of one of the kernel's ports (on `ipc`, a socket path ending in
    /// `-port`, as Jupyter names them).
    pub fn endpoint(&self, port: u16) -> String {
        if self.transport == IPC {
            format!("ipc://{}-{port}", self.ip)
        } else {
            format!("{}://{}:{port}", self.transport, self.ip)
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a connection info always serializes")
    }
}

/// A new random signing key (64 hex digits).
fn fresh_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_differ_and_the_key_is_long() {
        let info = ConnectionInfo::on_free_ports(Ipv4Addr::LOCALHOST, "python3").unwrap();
        let mut ports = vec![
            info.shell_port,
            info.iopub_port,
            info.stdin_port,
            info.control_port,
            info.hb_port,
        ];
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 5);
        assert_eq!(info.key.len(), 64);
        assert_eq!(
            info.endpoint(info.shell_port),
            format!("tcp://127.0.0.1:{}", info.shell_port)
        );
        let back: ConnectionInfo = serde_json::from_str(&info.to_json()).unwrap();
        assert_eq!(back, info);
        assert!(info.socket_files().is_empty());
    }

    #[test]
    fn unix_socket_endpoints_are_named_as_jupyter_names_them() {
        let info = ConnectionInfo::on_unix_sockets(Path::new("/tmp/k"), "python3");
        assert_eq!(info.endpoint(info.shell_port), "ipc:///tmp/k-1");
        assert_eq!(info.socket_files().len(), 5);
        assert_eq!(info.socket_files()[4], Path::new("/tmp/k-5"));
    }
}
