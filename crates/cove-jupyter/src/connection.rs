//! The connection file: where a kernel listens and the key its messages are signed with.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::Path,
};

use serde::{Deserialize, Serialize};

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
            key: format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
            signature_scheme: "hmac-sha256".to_owned(),
            kernel_name: kernel_name.to_owned(),
        })
    }

    /// Reads a connection file a kernel (or `jupyter kernel`) wrote.
    pub fn read(path: &Path) -> std::io::Result<Self> {
        let raw = std::fs::read(path)?;
        serde_json::from_slice(&raw).map_err(std::io::Error::other)
    }

    /// The ZeroMQ endpoint of one of the kernel's ports.
    pub fn endpoint(&self, port: u16) -> String {
        format!("{}://{}:{port}", self.transport, self.ip)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a connection info always serializes")
    }
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
    }
}
