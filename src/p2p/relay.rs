//! A Nostr relay connection (NIP-01 over websocket): blocking, with one
//! deadline for the whole exchange, for the worker's threads (no database
//! access here). `wss://` relays are reached over rustls with the Mozilla
//! roots, as ureq reaches providers.

use crate::provider::adapters::Failure;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

/// A relay message larger than this is refused (an NWC response is small).
const MAX_MESSAGE: usize = 256 << 10;

trait Stream: Read + Write + Send {
    fn set_timeout(&self, t: Duration) -> std::io::Result<()>;
}

impl Stream for TcpStream {
    fn set_timeout(&self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))?;
        self.set_write_timeout(Some(t))
    }
}

impl Stream for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn set_timeout(&self, t: Duration) -> std::io::Result<()> {
        self.sock.set_read_timeout(Some(t))?;
        self.sock.set_write_timeout(Some(t))
    }
}

pub struct Relay {
    ws: WebSocket<Box<dyn Stream>>,
    deadline: Instant,
}

fn unreachable(url: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Unreachable(format!("relay {url}: {e}"))
}

impl Relay {
    /// Connect to `url` (ws:// or wss://); everything after must end by `deadline`.
    pub fn connect(url: &str, deadline: Instant) -> Result<Relay, Failure> {
        let parsed =
            url::Url::parse(url).map_err(|_| Failure::Refused(format!("bad relay URL {url}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| Failure::Refused(format!("bad relay URL {url}")))?
            .to_owned();
        let tls = match parsed.scheme() {
            "wss" => true,
            "ws" => false,
            _ => {
                return Err(Failure::Refused(format!(
                    "a relay is ws:// or wss://, not {url}"
                )))
            }
        };
        let port = parsed.port().unwrap_or(if tls { 443 } else { 80 });
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(unreachable(url, "no time left"));
        }
        let addr = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| unreachable(url, e))?
            .next()
            .ok_or_else(|| unreachable(url, "no address"))?;
        let tcp = TcpStream::connect_timeout(&addr, left).map_err(|e| unreachable(url, e))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = if tls {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| unreachable(url, e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| Failure::Refused(format!("bad relay host {host}")))?;
            let conn = rustls::ClientConnection::new(Arc::new(config), name)
                .map_err(|e| unreachable(url, e))?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        } else {
            Box::new(tcp)
        };
        stream.set_timeout(left).map_err(|e| unreachable(url, e))?;
        let config = tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let (ws, _) = tungstenite::client::client_with_config(url, stream, Some(config))
            .map_err(|e| unreachable(url, e))?;
        Ok(Relay { ws, deadline })
    }

    pub fn send(&mut self, msg: &Value) -> Result<(), Failure> {
        self.ws
            .send(Message::text(msg.to_string()))
            .map_err(|e| Failure::Unreachable(format!("relay: {e}")))
    }

    /// The next relay message (a JSON array), or Unreachable at the deadline.
    pub fn next(&mut self) -> Result<Vec<Value>, Failure> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Unreachable("relay: no answer in time".into()));
            }
            let _ = self.ws.get_ref().set_timeout(left);
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    if let Ok(Value::Array(a)) = serde_json::from_str::<Value>(t.as_str()) {
                        return Ok(a);
                    }
                }
                Ok(Message::Close(_)) => {
                    return Err(Failure::Unreachable("relay closed the connection".into()))
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Failure::Unreachable("relay: no answer in time".into()))
                }
                Err(e) => return Err(Failure::Unreachable(format!("relay: {e}"))),
            }
        }
    }

    /// Publish an event and wait for the relay's OK (NIP-20): a refusal is Refused.
    pub fn publish(&mut self, event: &Value) -> Result<(), Failure> {
        let id = event["id"].clone();
        self.send(&json!(["EVENT", event]))?;
        loop {
            let m = self.next()?;
            if m.first().and_then(Value::as_str) == Some("OK") && m.get(1) == Some(&id) {
                return if m.get(2) == Some(&Value::Bool(true)) {
                    Ok(())
                } else {
                    Err(Failure::Refused(format!(
                        "the relay refused the request: {}",
                        m.get(3).and_then(Value::as_str).unwrap_or("")
                    )))
                };
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}
