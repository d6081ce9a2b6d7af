//! The OCI 1.1 referrers API (`GET /v2/<repo>/referrers/<digest>`): the
//! artifacts (SBOMs, provenance, signatures) whose `subject` is a manifest.
//! Registries without it (the CNCF Distribution registry Debian ships)
//! answer 404; callers then use the referrers tag scheme, an index under
//! the tag `sha256-<hex>` (see `crate::sbom::attach`).

use reqwest::header::CONTENT_TYPE;
use reqwest::Method;

use super::auth::scope;
use super::client::MAX_MANIFEST_BYTES;
use super::retry::Retrier;
use super::transport::{read_limited, Request};
use super::{Client, RegistryError};
use crate::oci::{Digest, ImageIndex, MediaType, Reference};

impl Client {
    /// The referrers index of `subject` in `repo`'s repository, or `None`
    /// when the registry has no referrers API.
    pub async fn referrers(
        &self,
        repo: &Reference,
        subject: &Digest,
    ) -> Result<Option<ImageIndex>, RegistryError> {
        let context = format!(
            "asking {} for the referrers of {}",
            repo.repo_name(),
            subject.short()
        );
        let ep = self.endpoint(&repo.registry)?;
        let req = Request::new(
            Method::GET,
            Self::url(&ep, &repo.repository, &format!("referrers/{subject}")),
        );
        let scopes = [scope(&repo.repository, false)];
        let mut retrier = Retrier::new(self.inner.retry, &context);
        loop {
            let attempt = async {
                // A registry without the API answers 404 (Distribution) or
                // something that is not an index; both mean "use the tag".
                let Some(resp) = self
                    .send_unless_absent(&ep, &scopes, &req, &context)
                    .await?
                else {
                    return Ok(None);
                };
                let is_index = resp
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| MediaType::parse(v) == MediaType::OciIndex);
                if !is_index {
                    return Ok(None);
                }
                let body = read_limited(resp, MAX_MANIFEST_BYTES, &context).await?;
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|e| RegistryError::Protocol {
                        context: context.clone(),
                        message: format!("bad referrers index: {e}"),
                    })
            };
            match attempt.await {
                Ok(v) => return Ok(v),
                Err(e) => retrier.wait_or_fail(e).await?,
            }
        }
    }
}
