//! Ending dialogs whose media timed out: the relay reported `expired`, the
//! call still has a dialog in the proxy, so ask the proxy to send the BYEs
//! (Kamailio `dlg.end_dlg` over jsonrpcs, OpenSIPS `dlg_end_dlg` over its MI
//! datagram socket; both JSON-RPC 2.0 in one datagram).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use relaybox_config::{OpenSipsConfig, ProxyFlavor};
use tokio::net::UnixDatagram;
use tokio::sync::Semaphore;

/// How long the proxy gets to answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct DialogCloser {
    socket_path: PathBuf,
    flavor: ProxyFlavor,
    next_id: AtomicU64,
    limit: Semaphore,
}

/// The JSON-RPC request that ends `dialog_id`, or why it cannot be made.
pub(crate) fn end_request(flavor: ProxyFlavor, dialog_id: &str, id: u64) -> Result<String, String> {
    let params = match flavor {
        ProxyFlavor::Kamailio => {
            let (entry, hid) = dialog_id
                .split_once(':')
                .and_then(|(e, h)| Some((e.trim().parse::<u64>().ok()?, h.trim().parse::<u64>().ok()?)))
                .ok_or_else(|| format!("Kamailio dialog id {dialog_id:?} is not h_entry:h_id"))?;
            serde_json::json!([entry, hid])
        }
        ProxyFlavor::OpenSips => serde_json::json!({ "dialog_id": dialog_id }),
    };
    let method = match flavor {
        ProxyFlavor::Kamailio => "dlg.end_dlg",
        ProxyFlavor::OpenSips => "dlg_end_dlg",
    };
    Ok(serde_json::json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": id }).to_string())
}

impl DialogCloser {
    pub fn new(config: &OpenSipsConfig) -> Self {
        DialogCloser {
            socket_path: config.socket_path.clone(),
            flavor: config.proxy,
            next_id: AtomicU64::new(1),
            limit: Semaphore::new(config.max_connections),
        }
    }

    /// Asks the proxy to end the dialog; returns the proxy's answer.
    pub async fn end(&self, dialog_id: &str) -> Result<String, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = end_request(self.flavor, dialog_id, id)?;
        let _permit = self.limit.acquire().await.map_err(|e| e.to_string())?;
        // A datagram client needs an address of its own to get the answer.
        let own = std::env::temp_dir().join(format!("relaybox-dlg-{}-{id}.sock", std::process::id()));
        let _ = std::fs::remove_file(&own);
        let socket = UnixDatagram::bind(&own).map_err(|e| format!("binding {}: {e}", own.display()))?;
        let result = async {
            socket
                .send_to(request.as_bytes(), &self.socket_path)
                .await
                .map_err(|e| format!("sending to {}: {e}", self.socket_path.display()))?;
            let mut buf = vec![0u8; 8192];
            let n = tokio::time::timeout(REPLY_TIMEOUT, socket.recv(&mut buf))
                .await
                .map_err(|_| format!("no answer from {} within {REPLY_TIMEOUT:?}", self.socket_path.display()))?
                .map_err(|e| e.to_string())?;
            let reply = String::from_utf8_lossy(&buf[..n]).to_string();
            match serde_json::from_str::<serde_json::Value>(&reply) {
                Ok(v) if v.get("error").is_some() => Err(format!("the proxy refused: {}", v["error"])),
                Ok(_) => Ok(reply),
                Err(_) => Err(format!("unreadable answer: {reply}")),
            }
        }
        .await;
        let _ = std::fs::remove_file(&own);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_for_both_proxies() {
        let k: serde_json::Value =
            serde_json::from_str(&end_request(ProxyFlavor::Kamailio, "3456:91827", 7).unwrap()).unwrap();
        assert_eq!(k["method"], "dlg.end_dlg");
        assert_eq!(k["params"], serde_json::json!([3456, 91827]));
        assert_eq!(k["id"], 7);
        let o: serde_json::Value =
            serde_json::from_str(&end_request(ProxyFlavor::OpenSips, "1234567", 1).unwrap()).unwrap();
        assert_eq!(o["method"], "dlg_end_dlg");
        assert_eq!(o["params"]["dialog_id"], "1234567");
        assert!(end_request(ProxyFlavor::Kamailio, "1234567", 1).is_err());
    }
}
