//! One HTTP exchange with a registry: pick the URL scheme (HTTPS unless the
//! registry is named insecure), attach authentication, answer a 401 once,
//! and turn transport failures and error statuses into [`RegistryError`]s
//! that say what went wrong (plain HTTP, untrusted certificate, not found,
//! overload with Retry-After).
//!
//! Retrying is not done here but by the operations in `client.rs` and
//! `blob.rs`, because what a retry must redo depends on the operation.

use std::path::PathBuf;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode, Url};

use super::auth::{AuthHeader, TokenFetch};
use super::retry::parse_retry_after;
use super::{Client, RegistryError};

/// Where to send requests for one registry (or one of its mirrors).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host[:port]` as the user names it: the key for credentials,
    /// tokens and the insecure list.
    pub registry: String,
    /// `scheme://host[:port]`.
    pub base: Url,
}

/// A request body that can be built again for each attempt.
#[derive(Debug, Clone)]
pub enum Body {
    Empty,
    Bytes(Bytes),
    /// Streamed from disk, never read whole.
    File {
        path: PathBuf,
        len: u64,
    },
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Body,
}

impl Request {
    pub fn new(method: Method, url: Url) -> Self {
        Request {
            method,
            url,
            headers: HeaderMap::new(),
            body: Body::Empty,
        }
    }

    pub fn header(mut self, name: reqwest::header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }
}

impl Client {
    /// The API host for a registry name (docker.io's lives elsewhere).
    fn api_host(registry: &str) -> &str {
        match registry {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        }
    }

    pub(crate) fn endpoint(&self, registry: &str) -> Result<Endpoint, RegistryError> {
        let scheme = if self.inner.settings.is_insecure(registry) {
            "http"
        } else {
            "https"
        };
        let base =
            Url::parse(&format!("{scheme}://{}/", Self::api_host(registry))).map_err(|e| {
                RegistryError::Protocol {
                    context: format!("registry {registry}"),
                    message: format!("not a valid host: {e}"),
                }
            })?;
        Ok(Endpoint {
            registry: registry.to_string(),
            base,
        })
    }

    /// Mirrors first (in settings order), then the registry itself.
    pub(crate) fn pull_endpoints(&self, registry: &str) -> Result<Vec<Endpoint>, RegistryError> {
        let mut out = Vec::new();
        if let Some(mirrors) = self.inner.settings.mirrors.get(registry) {
            for m in mirrors {
                out.push(self.endpoint(m)?);
            }
        }
        out.push(self.endpoint(registry)?);
        Ok(out)
    }

    /// [`Self::send`] for a request whose 404 means "not there" rather than
    /// an error: `None` for 404, else the response with any other error
    /// status turned into its error.
    pub(crate) async fn send_unless_absent(
        &self,
        ep: &Endpoint,
        scopes: &[String],
        req: &Request,
        context: &str,
    ) -> Result<Option<Response>, RegistryError> {
        let resp = self.send(ep, scopes, req, context).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check(resp, context).await.map(Some)
    }

    /// Send one request, authenticating as needed. Returns any response
    /// except 401 (which becomes an auth error after one new attempt, or
    /// two when a cached token had to be refreshed).
    pub(crate) async fn send(
        &self,
        ep: &Endpoint,
        scopes: &[String],
        req: &Request,
        context: &str,
    ) -> Result<Response, RegistryError> {
        let insecure = |h: &str| self.inner.settings.is_insecure(h);
        let fetch = TokenFetch {
            http: &self.inner.http,
            insecure: &insecure,
            context,
        };
        let mut auth: Option<AuthHeader> =
            self.inner.auth.header(&ep.registry, scopes, &fetch).await?;
        // Basic, or anonymous -> token -> (cached token expired) -> new token.
        for _round in 0..3 {
            let resp = self.send_raw(ep, req, auth.as_ref(), context).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            drop(resp);
            auth = Some(
                self.inner
                    .auth
                    .on_unauthorized(
                        &ep.registry,
                        challenge.as_deref(),
                        scopes,
                        auth.as_ref(),
                        &fetch,
                    )
                    .await?,
            );
        }
        Err(RegistryError::Unauthorized {
            context: context.to_string(),
            registry: ep.registry.clone(),
        })
    }

    async fn send_raw(
        &self,
        ep: &Endpoint,
        req: &Request,
        auth: Option<&AuthHeader>,
        context: &str,
    ) -> Result<Response, RegistryError> {
        let mut b = self
            .inner
            .http
            .request(req.method.clone(), req.url.clone())
            .headers(req.headers.clone());
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a.value.clone());
        }
        b = match &req.body {
            Body::Empty => b,
            Body::Bytes(bytes) => b.body(bytes.clone()),
            Body::File { path, len } => {
                let file = tokio::fs::File::open(path).await.map_err(|source| {
                    RegistryError::ReadFile {
                        context: context.to_string(),
                        path: path.clone(),
                        source,
                    }
                })?;
                let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
                b.header(reqwest::header::CONTENT_LENGTH, *len)
                    .body(reqwest::Body::wrap_stream(stream))
            }
        };
        tracing::debug!(method = %req.method, url = %req.url, authenticated = auth.is_some(), "request");
        let resp = b.send().await.map_err(|e| classify(e, ep, context))?;
        tracing::debug!(status = resp.status().as_u16(), url = %req.url, "response");
        Ok(resp)
    }
}

/// Name the common TLS failures instead of a bare "error sending request".
fn classify(e: reqwest::Error, ep: &Endpoint, context: &str) -> RegistryError {
    let mut chain = String::new();
    let mut cur: Option<&dyn std::error::Error> = Some(&e);
    while let Some(err) = cur {
        chain.push_str(&format!("{err} | {err:?} | "));
        cur = err.source();
    }
    let https = ep.base.scheme() == "https";
    if https && (chain.contains("InvalidContentType") || chain.contains("corrupt message")) {
        return RegistryError::PlainHttp {
            context: context.to_string(),
            registry: ep.registry.clone(),
        };
    }
    if https && chain.contains("certificate") {
        return RegistryError::Certificate {
            context: context.to_string(),
            registry: ep.registry.clone(),
            source: e,
        };
    }
    if e.is_connect() {
        RegistryError::Connect {
            context: context.to_string(),
            registry: ep.registry.clone(),
            source: e,
        }
    } else {
        RegistryError::Transfer {
            context: context.to_string(),
            source: e,
        }
    }
}

/// Pass 2xx through; turn anything else into an error with the
/// registry's own message (from its JSON error body) when it has one.
pub(crate) async fn check(resp: Response, context: &str) -> Result<Response, RegistryError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = read_limited(resp, 64 * 1024, context)
        .await
        .unwrap_or_default();
    let message = error_message(&body);
    Err(match status {
        StatusCode::NOT_FOUND => RegistryError::NotFound {
            context: context.to_string(),
        },
        StatusCode::FORBIDDEN => RegistryError::Denied {
            context: context.to_string(),
            message,
        },
        _ => RegistryError::Status {
            context: context.to_string(),
            status: status.as_u16(),
            message,
            retry_after,
        },
    })
}

/// `CODE: message` from an OCI error body, or a short prefix of the text.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        return e
            .errors
            .iter()
            .map(|i| format!("{}: {}", i.code, i.message))
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(body);
    text.trim().chars().take(200).collect()
}

/// Read a whole (small) body, refusing more than `limit` bytes whether or
/// not the server announced its length.
pub(crate) async fn read_limited(
    mut resp: Response,
    limit: u64,
    context: &str,
) -> Result<Vec<u8>, RegistryError> {
    let too_large = || RegistryError::TooLarge {
        context: context.to_string(),
        what: "response body",
        limit,
    };
    if resp.content_length().is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let expected = resp.content_length();
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|source| RegistryError::Transfer {
            context: context.to_string(),
            source,
        })?
    {
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    if let Some(n) = expected {
        if (out.len() as u64) < n {
            return Err(RegistryError::Truncated {
                context: context.to_string(),
                received: out.len() as u64,
                expected: n,
            });
        }
    }
    Ok(out)
}

/// Resolve an upload `Location` (which may be relative) against the endpoint.
pub(crate) fn resolve_location(
    ep: &Endpoint,
    resp: &Response,
    context: &str,
) -> Result<Url, RegistryError> {
    let loc = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RegistryError::Protocol {
            context: context.to_string(),
            message: "upload response has no Location header".into(),
        })?;
    ep.base.join(loc).map_err(|e| RegistryError::Protocol {
        context: context.to_string(),
        message: format!("bad Location {loc:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_error_bodies_become_short_messages() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(error_message(body), "MANIFEST_UNKNOWN: manifest unknown");
        assert_eq!(error_message(b"  oops \n"), "oops");
    }
}
