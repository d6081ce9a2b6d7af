//! Blob transfer: streaming pull with digest and size verification and
//! Range resume, and push from a file (HEAD-skip, cross-repo mount,
//! monolithic upload streamed from disk).
//!
//! Where a pulled blob goes is the caller's [`BlobSink`]: the content store
//! hands in its temp file, tests a `Vec`. The client does the verifying;
//! the sink only stores bytes and can be emptied when a pull must start
//! over. Buffers are bounded (one HTTP chunk at a time), so a layer of any
//! size streams both ways.

use std::future::Future;
use std::io;
use std::path::Path;

use reqwest::header::{CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Method, StatusCode};
use sha2::Digest as _;

use super::auth::scope;
use super::retry::{Retrier, RetryPolicy};
use super::transport::{check, resolve_location, Body, Endpoint, Request};
use super::{Client, RegistryError};
use crate::oci::{Descriptor, Digest, Reference, Sha256};

/// Where a pulled blob's bytes go.
///
/// `write` appends; `restart` discards everything written so far (the
/// client calls it when a server ignores a Range request and sends the
/// blob from the start, when it moves on to another mirror, and when a
/// pull fails, so that no unverified bytes are left behind). The sink
/// holds the verified blob only once `pull_blob` returned `Ok`.
pub trait BlobSink: Send {
    fn write(&mut self, buf: &[u8]) -> impl Future<Output = io::Result<()>> + Send;
    fn restart(&mut self) -> impl Future<Output = io::Result<()>> + Send;
}

/// A file opened for writing: `restart` truncates it and rewinds.
impl BlobSink for tokio::fs::File {
    async fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        tokio::io::AsyncWriteExt::write_all(self, buf).await
    }

    async fn restart(&mut self) -> io::Result<()> {
        tokio::io::AsyncWriteExt::flush(self).await?;
        self.set_len(0).await?;
        tokio::io::AsyncSeekExt::seek(self, io::SeekFrom::Start(0)).await?;
        Ok(())
    }
}

/// An in-memory sink for small blobs (configs) and tests.
#[derive(Debug, Default, Clone)]
pub struct VecSink(Vec<u8>);

impl VecSink {
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }
}

impl BlobSink for VecSink {
    async fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.extend_from_slice(buf);
        Ok(())
    }

    async fn restart(&mut self) -> io::Result<()> {
        self.0.clear();
        Ok(())
    }
}

/// What `push_blob_file` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// The registry already had the blob in this repository.
    Existed,
    /// Mounted from another repository of the same registry.
    Mounted,
    Uploaded,
}

/// Progress of one pull, kept across attempts so that a retry can resume.
struct PullState {
    hasher: Sha256,
    received: u64,
}

impl PullState {
    fn new() -> Self {
        PullState {
            hasher: Sha256::new(),
            received: 0,
        }
    }
}

impl Client {
    /// Stream a blob into `sink`, verifying its size and digest as it
    /// streams. Mirrors are tried first. Transient failures are retried;
    /// a dropped transfer resumes with Range when the server supports it.
    pub async fn pull_blob<S: BlobSink>(
        &self,
        repo: &Reference,
        desc: &Descriptor,
        sink: &mut S,
    ) -> Result<(), RegistryError> {
        let context = format!("pulling blob {} from {}", desc.digest, repo.repo_name());
        let result = self.pull_blob_inner(repo, desc, sink, &context).await;
        if result.is_err() {
            // Leave nothing unverified behind; the pull's error matters more.
            if let Err(e) = sink.restart().await {
                tracing::warn!(%context, error = %e, "could not empty the blob sink after a failed pull");
            }
        }
        result
    }

    async fn pull_blob_inner<S: BlobSink>(
        &self,
        repo: &Reference,
        desc: &Descriptor,
        sink: &mut S,
        context: &str,
    ) -> Result<(), RegistryError> {
        let endpoints = self.pull_endpoints(&repo.registry)?;
        let last = endpoints.len() - 1;
        for (i, ep) in endpoints.iter().enumerate() {
            let policy = if i == last {
                self.inner.retry
            } else {
                RetryPolicy::new(0)
            };
            let mut retrier = Retrier::new(policy, context);
            let mut state = PullState::new();
            let result = loop {
                match self
                    .pull_attempt(ep, repo, desc, sink, &mut state, context)
                    .await
                {
                    Ok(()) => break Ok(()),
                    Err(e) => {
                        if let Err(e) = retrier.wait_or_fail(e).await {
                            break Err(e);
                        }
                    }
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if i < last => {
                    tracing::info!(mirror = %ep.registry, error = %e, "mirror failed; trying the next source");
                    sink.restart()
                        .await
                        .map_err(|source| sink_err(context, source))?;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the last endpoint returns")
    }

    async fn pull_attempt<S: BlobSink>(
        &self,
        ep: &Endpoint,
        repo: &Reference,
        desc: &Descriptor,
        sink: &mut S,
        state: &mut PullState,
        context: &str,
    ) -> Result<(), RegistryError> {
        let mut req = Request::new(
            Method::GET,
            Self::url(ep, &repo.repository, &format!("blobs/{}", desc.digest)),
        );
        if state.received > 0 {
            req = req.header(RANGE, &format!("bytes={}-", state.received));
        }
        let scopes = [scope(&repo.repository, false)];
        let mut resp = check(self.send(ep, &scopes, &req, context).await?, context).await?;
        let resumed = state.received > 0
            && resp.status() == StatusCode::PARTIAL_CONTENT
            && resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(range_start)
                == Some(state.received);
        if state.received > 0 && !resumed {
            tracing::debug!(%context, "server did not resume; starting over");
            sink.restart()
                .await
                .map_err(|source| sink_err(context, source))?;
            *state = PullState::new();
        } else if resumed {
            tracing::debug!(%context, offset = state.received, "resuming");
        }
        let too_long = || RegistryError::TooLong {
            context: context.to_string(),
            expected: desc.size,
        };
        if resp
            .content_length()
            .is_some_and(|n| state.received.saturating_add(n) > desc.size)
        {
            return Err(too_long());
        }
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(source) => {
                    return Err(RegistryError::Transfer {
                        context: context.to_string(),
                        source,
                    })
                }
            };
            if state.received + chunk.len() as u64 > desc.size {
                return Err(too_long());
            }
            state.hasher.update(&chunk);
            sink.write(&chunk)
                .await
                .map_err(|source| sink_err(context, source))?;
            state.received += chunk.len() as u64;
        }
        if state.received < desc.size {
            return Err(RegistryError::Truncated {
                context: context.to_string(),
                received: state.received,
                expected: desc.size,
            });
        }
        let actual = Digest::from_hasher(state.hasher.clone());
        if actual != desc.digest {
            return Err(RegistryError::DigestMismatch {
                context: context.to_string(),
                expected: desc.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Push a blob from a file: skip if present, else try a cross-repo
    /// mount from `mount_from` (same registry only), else upload it
    /// monolithically, streamed from disk.
    pub async fn push_blob_file(
        &self,
        repo: &Reference,
        desc: &Descriptor,
        path: &Path,
        mount_from: Option<&Reference>,
    ) -> Result<PushOutcome, RegistryError> {
        let context = format!("pushing blob {} to {}", desc.digest, repo.repo_name());
        // The file may be absent when the blob only needs to be mounted from
        // another repository (a step layer that a registry cache holds).
        let local = tokio::fs::metadata(path).await;
        if let Ok(meta) = &local {
            if meta.len() != desc.size {
                return Err(RegistryError::FileSize {
                    context,
                    path: path.to_path_buf(),
                    expected: desc.size,
                    actual: meta.len(),
                });
            }
        }
        if let Some(size) = self.blob_exists_scoped(repo, &desc.digest, true).await? {
            if size == desc.size || size == 0 {
                return Ok(PushOutcome::Existed);
            }
            tracing::warn!(%context, size, "registry reports a different size for this digest; uploading");
        }
        if let Err(source) = local {
            if let Some(src) = mount_from
                .filter(|m| m.registry == repo.registry && m.repository != repo.repository)
            {
                if self.mount_only(repo, desc, src, &context).await? {
                    return Ok(PushOutcome::Mounted);
                }
            }
            return Err(RegistryError::ReadFile {
                context,
                path: path.to_path_buf(),
                source,
            });
        }
        let ep = self.endpoint(&repo.registry)?;
        let mount_from =
            mount_from.filter(|m| m.registry == repo.registry && m.repository != repo.repository);
        let mut retrier = Retrier::new(self.inner.retry, &context);
        let mut try_mount = mount_from.is_some();
        loop {
            let attempt = self.upload_once(
                &ep,
                repo,
                desc,
                path,
                mount_from.filter(|_| try_mount),
                &context,
            );
            match attempt.await {
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    retrier.wait_or_fail(e).await?;
                    // Mount once only; retries go straight to upload.
                    try_mount = false;
                }
            }
        }
    }

    /// Push a small blob held in memory (a config, an index, a signature
    /// payload): written to a temp file, then pushed like any other.
    pub async fn push_blob_bytes(
        &self,
        repo: &Reference,
        desc: &Descriptor,
        bytes: &[u8],
    ) -> Result<PushOutcome, RegistryError> {
        let tmp = tempfile::Builder::new()
            .prefix("tplbuild-blob-")
            .tempfile()
            .and_then(|mut f| {
                io::Write::write_all(&mut f, bytes)?;
                Ok(f)
            })
            .map_err(|source| RegistryError::ReadFile {
                context: format!("staging blob {} for {}", desc.digest, repo.repo_name()),
                path: std::env::temp_dir(),
                source,
            })?;
        self.push_blob_file(repo, desc, tmp.path(), None).await
    }

    /// Ask for a cross-repository mount only; `false` if it was refused.
    async fn mount_only(
        &self,
        repo: &Reference,
        desc: &Descriptor,
        from: &Reference,
        context: &str,
    ) -> Result<bool, RegistryError> {
        let ep = self.endpoint(&repo.registry)?;
        let scopes = vec![
            scope(&repo.repository, true),
            scope(&from.repository, false),
        ];
        let mut url = Self::url(&ep, &repo.repository, "blobs/uploads/");
        url.query_pairs_mut()
            .append_pair("mount", &desc.digest.to_string())
            .append_pair("from", &from.repository);
        let req = Request::new(Method::POST, url).header(reqwest::header::CONTENT_LENGTH, "0");
        let resp = check(self.send(&ep, &scopes, &req, context).await?, context).await?;
        Ok(resp.status() == StatusCode::CREATED)
    }

    async fn upload_once(
        &self,
        ep: &Endpoint,
        repo: &Reference,
        desc: &Descriptor,
        path: &Path,
        mount_from: Option<&Reference>,
        context: &str,
    ) -> Result<PushOutcome, RegistryError> {
        let mut scopes = vec![scope(&repo.repository, true)];
        let mut url = Self::url(ep, &repo.repository, "blobs/uploads/");
        if let Some(src) = mount_from {
            scopes.push(scope(&src.repository, false));
            url.query_pairs_mut()
                .append_pair("mount", &desc.digest.to_string())
                .append_pair("from", &src.repository);
        }
        let req = Request::new(Method::POST, url).header(reqwest::header::CONTENT_LENGTH, "0");
        let resp = check(self.send(ep, &scopes, &req, context).await?, context).await?;
        if mount_from.is_some() && resp.status() == StatusCode::CREATED {
            tracing::debug!(%context, "mounted");
            return Ok(PushOutcome::Mounted);
        }
        if resp.status() != StatusCode::ACCEPTED {
            return Err(RegistryError::Protocol {
                context: context.to_string(),
                message: format!("starting an upload answered {}", resp.status()),
            });
        }
        let mut location = resolve_location(ep, &resp, context)?;
        drop(resp);
        location
            .query_pairs_mut()
            .append_pair("digest", &desc.digest.to_string());
        let mut put =
            Request::new(Method::PUT, location).header(CONTENT_TYPE, "application/octet-stream");
        put.body = Body::File {
            path: path.to_path_buf(),
            len: desc.size,
        };
        let resp = check(self.send(ep, &scopes, &put, context).await?, context).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(RegistryError::Protocol {
                context: context.to_string(),
                message: format!("finishing the upload answered {}", resp.status()),
            });
        }
        Ok(PushOutcome::Uploaded)
    }
}

fn sink_err(context: &str, source: io::Error) -> RegistryError {
    RegistryError::Sink {
        context: context.to_string(),
        source,
    }
}

/// The first byte of `Content-Range: bytes START-END/TOTAL`.
fn range_start(v: &str) -> Option<u64> {
    v.trim()
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_start() {
        assert_eq!(range_start("bytes 100-199/200"), Some(100));
        assert_eq!(range_start("bytes */200"), None);
        assert_eq!(range_start("items 1-2/3"), None);
    }

    #[tokio::test]
    async fn file_sink_restart_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let mut f = tokio::fs::File::create(&path).await.unwrap();
        f.write(b"partial junk").await.unwrap();
        f.restart().await.unwrap();
        f.write(b"ok").await.unwrap();
        tokio::io::AsyncWriteExt::flush(&mut f).await.unwrap();
        assert_eq!(fs_err::read(&path).unwrap(), b"ok");
    }
}
