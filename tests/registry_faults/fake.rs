//! A small HTTP/1.1 server for the registry fault tests: every request is
//! logged and answered by the test's handler, which can also reset the
//! connection or write raw (broken) bytes. One request per connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tplbuild::oci::Reference;
use tplbuild::registry::{Client, CredentialSource, RegistrySettings};

#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub enum Action {
    Respond(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// Write these bytes verbatim, then close.
    Raw(Vec<u8>),
    /// Close with a TCP reset, without answering.
    Reset,
}

pub fn ok(body: &[u8]) -> Action {
    Action::Respond(200, vec![], body.to_vec())
}

/// A 200 announcing all of `data` but sending only its first `keep`
/// bytes, then closing; `headers` are added as they are.
pub fn cut_short(data: &[u8], keep: usize, headers: &[&str]) -> Action {
    let mut raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n", data.len());
    for h in headers {
        raw.push_str(&format!("{h}\r\n"));
    }
    raw.push_str("\r\n");
    let mut raw = raw.into_bytes();
    raw.extend_from_slice(&data[..keep]);
    Action::Raw(raw)
}

pub fn status(code: u16) -> Action {
    Action::Respond(code, vec![], Vec::new())
}

type Handler = dyn Fn(&Req) -> Action + Send + Sync;

pub struct Fake {
    pub host: String,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Fake {
    pub async fn start(handler: impl Fn(&Req) -> Action + Send + Sync + 'static) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log2 = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (h, l) = (handler.clone(), log2.clone());
                tokio::spawn(async move { serve(stream, &*h, &l).await });
            }
        });
        Fake { host, log }
    }

    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix))
            .count()
    }

    pub fn reference(&self, rest: &str) -> Reference {
        Reference::parse(&format!("{}/{rest}", self.host)).unwrap()
    }

    pub fn client(&self) -> Client {
        self.client_with(CredentialSource::None, 4)
    }

    pub fn client_with(&self, creds: CredentialSource, max_retries: u32) -> Client {
        let settings = RegistrySettings {
            max_retries,
            ..RegistrySettings::default().with_insecure(&self.host)
        };
        Client::with_credentials(settings, creds).unwrap()
    }
}

async fn serve(mut s: TcpStream, handler: &Handler, log: &Mutex<Vec<Req>>) {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap().split(' ');
    let (method, path) = (
        first.next().unwrap().to_string(),
        first.next().unwrap().to_string(),
    );
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut req = Req {
        method,
        path,
        headers,
        body: buf[head_end..].to_vec(),
    };
    let len: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while req.body.len() < len {
        let mut chunk = vec![0u8; 64 * 1024];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.body.extend_from_slice(&chunk[..n]),
        }
    }
    log.lock().unwrap().push(req.clone());
    match handler(&req) {
        Action::Respond(code, headers, body) => {
            let mut out = format!("HTTP/1.1 {code} X\r\nConnection: close\r\n");
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            {
                out.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let mut bytes = out.into_bytes();
            if req.method != "HEAD" {
                bytes.extend_from_slice(&body);
            }
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        }
        Action::Raw(bytes) => {
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        }
        Action::Reset => {
            // SO_LINGER 0 makes close send RST; it cannot block here.
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
    }
}
