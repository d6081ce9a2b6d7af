//! Registry authentication: `WWW-Authenticate` challenges, Basic and Bearer
//! (token) schemes, and a token cache per (registry, scope).
//!
//! The transport asks [`Auth::header`] before each request and calls
//! [`Auth::on_unauthorized`] on a 401; both return an [`AuthHeader`] whose
//! value is marked sensitive, so neither reqwest nor our Debug output can
//! show it. Credentials come from [`CredentialSource`] and are looked up at
//! most once per registry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::HeaderValue;

use super::credentials::{Credential, CredentialSource, Secret};
use super::RegistryError;

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parse the first Basic or Bearer challenge of a `WWW-Authenticate` value.
pub fn parse_challenge(header: &str) -> Result<Challenge, String> {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let params = parse_params(rest)?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Ok(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        let realm = get("realm").ok_or("Bearer challenge without realm")?;
        Ok(Challenge::Bearer {
            realm,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        Err(format!("unsupported authentication scheme {scheme:?}"))
    }
}

/// `key=value` or `key="quoted, \"escaped\""` pairs separated by commas.
fn parse_params(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(c) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(out);
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
            .collect::<String>()
            .trim()
            .to_string();
        if chars.next() != Some('=') {
            return Err(format!("parameter {key:?} has no value"));
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err("unterminated quoted value".into()),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_string();
        }
        out.push((key, value));
    }
}

/// An Authorization header and how we came by it (to know whether a new
/// 401 means "token expired, refresh once" or "rejected").
#[derive(Clone)]
pub struct AuthHeader {
    pub value: HeaderValue,
    pub kind: HeaderKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderKind {
    Basic,
    CachedToken,
    FreshToken { with_credentials: bool },
}

impl std::fmt::Debug for AuthHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthHeader({:?}, ***)", self.kind)
    }
}

struct CachedToken {
    token: Secret,
    expires: Instant,
}

/// Per-process authentication state, shared by all clones of the client.
pub struct Auth {
    source: CredentialSource,
    credentials: Mutex<HashMap<String, Option<Credential>>>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

/// What the transport needs to fetch a token.
pub struct TokenFetch<'a> {
    pub http: &'a reqwest::Client,
    /// Whether a `host:port` may be reached over plain HTTP.
    pub insecure: &'a dyn Fn(&str) -> bool,
    pub context: &'a str,
}

impl Auth {
    pub fn new(source: CredentialSource) -> Self {
        Auth {
            source,
            credentials: Mutex::new(HashMap::new()),
            challenges: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    async fn credential(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        if let Some(c) = self.credentials.lock().unwrap().get(registry) {
            return Ok(c.clone());
        }
        let source = self.source.clone();
        let reg = registry.to_string();
        // Credential helpers are processes: keep them off the async threads.
        let found = tokio::task::spawn_blocking(move || source.lookup(&reg))
            .await
            .map_err(|e| RegistryError::Credentials {
                registry: registry.to_string(),
                message: e.to_string(),
            })??;
        self.credentials
            .lock()
            .unwrap()
            .insert(registry.to_string(), found.clone());
        Ok(found)
    }

    /// The header to send up front, when we already know the registry's
    /// scheme: Basic credentials, or a (cached or newly fetched) token.
    pub async fn header(
        &self,
        registry: &str,
        scopes: &[String],
        fetch: &TokenFetch<'_>,
    ) -> Result<Option<AuthHeader>, RegistryError> {
        let challenge = self.challenges.lock().unwrap().get(registry).cloned();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.basic(registry).await?),
            Some(Challenge::Bearer { .. }) => {
                if let Some(h) = self.cached_token(registry, scopes) {
                    return Ok(Some(h));
                }
                let c = challenge.expect("matched Some");
                self.fetch_token(registry, &c, scopes, fetch)
                    .await
                    .map(Some)
            }
        }
    }

    /// React to a 401: learn the scheme, then produce a header to retry
    /// with, or the error that explains why there is none.
    pub async fn on_unauthorized(
        &self,
        registry: &str,
        www_authenticate: Option<&str>,
        scopes: &[String],
        previous: Option<&AuthHeader>,
        fetch: &TokenFetch<'_>,
    ) -> Result<AuthHeader, RegistryError> {
        let header = www_authenticate.ok_or_else(|| RegistryError::Challenge {
            context: fetch.context.to_string(),
            registry: registry.to_string(),
            message: "401 without a WWW-Authenticate header".into(),
        })?;
        let challenge = parse_challenge(header).map_err(|message| RegistryError::Challenge {
            context: fetch.context.to_string(),
            registry: registry.to_string(),
            message,
        })?;
        tracing::debug!(registry, ?challenge, "authentication challenge");
        self.challenges
            .lock()
            .unwrap()
            .insert(registry.to_string(), challenge.clone());
        let rejected = |with_credentials: bool| {
            if with_credentials {
                RegistryError::Unauthorized {
                    context: fetch.context.to_string(),
                    registry: registry.to_string(),
                }
            } else {
                RegistryError::AuthRequired {
                    context: fetch.context.to_string(),
                    registry: registry.to_string(),
                }
            }
        };
        match (&challenge, previous.map(|p| p.kind)) {
            (Challenge::Basic, Some(HeaderKind::Basic)) => Err(rejected(true)),
            (Challenge::Basic, _) => self.basic(registry).await?.ok_or_else(|| rejected(false)),
            (Challenge::Bearer { .. }, Some(HeaderKind::FreshToken { with_credentials })) => {
                Err(rejected(with_credentials))
            }
            (Challenge::Bearer { .. }, Some(HeaderKind::CachedToken)) => {
                // The token expired or was revoked: forget it, fetch once more.
                self.forget_token(registry, scopes);
                self.fetch_token(registry, &challenge, scopes, fetch).await
            }
            (Challenge::Bearer { .. }, _) => {
                self.fetch_token(registry, &challenge, scopes, fetch).await
            }
        }
    }

    async fn basic(&self, registry: &str) -> Result<Option<AuthHeader>, RegistryError> {
        match self.credential(registry).await? {
            None => Ok(None),
            Some(Credential::Basic { username, password }) => Ok(Some(AuthHeader {
                value: basic_value(&username, &password),
                kind: HeaderKind::Basic,
            })),
            Some(Credential::IdentityToken(_)) => Err(RegistryError::Credentials {
                registry: registry.to_string(),
                message: "an identity token cannot answer a Basic challenge".into(),
            }),
        }
    }

    fn scope_key(registry: &str, scopes: &[String]) -> (String, String) {
        let mut s = scopes.to_vec();
        s.sort();
        (registry.to_string(), s.join(" "))
    }

    fn cached_token(&self, registry: &str, scopes: &[String]) -> Option<AuthHeader> {
        let tokens = self.tokens.lock().unwrap();
        let t = tokens.get(&Self::scope_key(registry, scopes))?;
        (t.expires > Instant::now()).then(|| AuthHeader {
            value: bearer_value(&t.token),
            kind: HeaderKind::CachedToken,
        })
    }

    fn forget_token(&self, registry: &str, scopes: &[String]) {
        self.tokens
            .lock()
            .unwrap()
            .remove(&Self::scope_key(registry, scopes));
    }

    async fn fetch_token(
        &self,
        registry: &str,
        challenge: &Challenge,
        scopes: &[String],
        fetch: &TokenFetch<'_>,
    ) -> Result<AuthHeader, RegistryError> {
        let Challenge::Bearer {
            realm,
            service,
            scope,
        } = challenge
        else {
            unreachable!("fetch_token is only called for Bearer challenges")
        };
        let token_err = |message: String| RegistryError::Token {
            context: fetch.context.to_string(),
            realm: realm.clone(),
            message,
        };
        let url = reqwest::Url::parse(realm).map_err(|e| token_err(e.to_string()))?;
        let realm_host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or("")),
            None => url.host_str().unwrap_or("").to_string(),
        };
        let plain = match url.scheme() {
            "https" => false,
            "http" => true,
            other => return Err(token_err(format!("unsupported realm scheme {other:?}"))),
        };
        let mut all_scopes: Vec<String> = scopes.to_vec();
        if let Some(s) = scope {
            for part in s.split(' ').filter(|p| !p.is_empty()) {
                if !all_scopes.iter().any(|x| x == part) {
                    all_scopes.push(part.to_string());
                }
            }
        }
        let mut credential = self.credential(registry).await?;
        if plain && credential.is_some() && !(fetch.insecure)(&realm_host) {
            // Never send a password in clear text to a host nobody vouched for.
            tracing::warn!(
                registry,
                realm_host,
                "token realm is plain HTTP and not insecure-listed; asking anonymously"
            );
            credential = None;
        }
        let with_credentials = credential.is_some();
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in &all_scopes {
            query.push(("scope", s));
        }
        let req = match &credential {
            Some(Credential::IdentityToken(refresh)) => {
                let mut form = query.clone();
                form.push(("grant_type", "refresh_token"));
                form.push(("client_id", "tplbuild"));
                form.push(("refresh_token", refresh.expose()));
                fetch.http.post(url.clone()).form(&form)
            }
            Some(Credential::Basic { username, password }) => {
                let mut value = basic_value(username, password);
                value.set_sensitive(true);
                fetch
                    .http
                    .get(url.clone())
                    .query(&query)
                    .header(reqwest::header::AUTHORIZATION, value)
            }
            None => fetch.http.get(url.clone()).query(&query),
        };
        tracing::debug!(registry, realm = %realm, scopes = ?all_scopes, with_credentials, "fetching token");
        let resp = req.send().await.map_err(|source| RegistryError::Connect {
            context: fetch.context.to_string(),
            registry: realm_host.clone(),
            source: source.without_url(),
        })?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(if with_credentials {
                RegistryError::Unauthorized {
                    context: fetch.context.to_string(),
                    registry: registry.to_string(),
                }
            } else {
                RegistryError::AuthRequired {
                    context: fetch.context.to_string(),
                    registry: registry.to_string(),
                }
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Status {
                context: format!("{}: token endpoint {realm}", fetch.context),
                status: status.as_u16(),
                message: String::new(),
                retry_after: None,
            });
        }
        let body = super::transport::read_limited(resp, 1 << 20, fetch.context)
            .await
            .map_err(|e| token_err(e.to_string()))?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| token_err(format!("bad JSON: {e}")))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| token_err("response has no token".into()))?;
        let token = Secret::new(token);
        // The spec's default lifetime is 60 s; renew a little early.
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(60).max(10));
        self.tokens.lock().unwrap().insert(
            Self::scope_key(registry, scopes),
            CachedToken {
                token: token.clone(),
                expires: Instant::now() + lifetime - Duration::from_secs(5),
            },
        );
        Ok(AuthHeader {
            value: bearer_value(&token),
            kind: HeaderKind::FreshToken { with_credentials },
        })
    }
}

fn basic_value(username: &str, password: &Secret) -> HeaderValue {
    let enc = base64::engine::general_purpose::STANDARD
        .encode(format!("{username}:{}", password.expose()));
    sensitive(format!("Basic {enc}"))
}

fn bearer_value(token: &Secret) -> HeaderValue {
    sensitive(format!("Bearer {}", token.expose()))
}

fn sensitive(s: String) -> HeaderValue {
    // A token with bytes that are illegal in a header cannot be sent; an
    // empty value then makes the registry answer 401, which is reported.
    let mut v = HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

/// The scope string for a repository.
pub fn scope(repository: &str, push: bool) -> String {
    let actions = if push { "pull,push" } else { "pull" };
    format!("repository:{repository}:{actions}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_params() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull,push".into()),
            }
        );
    }

    #[test]
    fn basic_challenge_and_case_insensitive_scheme() {
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#).unwrap(),
            Challenge::Basic
        );
        assert!(matches!(
            parse_challenge(r#"bearer REALM="http://h/t""#).unwrap(),
            Challenge::Bearer { realm, .. } if realm == "http://h/t"
        ));
    }

    #[test]
    fn escaped_quotes_and_unquoted_values() {
        let p = parse_params(r#"a="x\"y, z", b=plain , c="""#).unwrap();
        assert_eq!(
            p,
            vec![
                ("a".into(), "x\"y, z".into()),
                ("b".into(), "plain".into()),
                ("c".into(), "".into())
            ]
        );
    }

    #[test]
    fn bad_challenges_are_errors() {
        assert!(parse_challenge("Bearer service=\"x\"").is_err());
        assert!(parse_challenge("Negotiate abc").is_err());
        assert!(parse_challenge("Bearer realm=\"unterminated").is_err());
    }

    #[test]
    fn header_values_are_sensitive_and_debug_hides_them() {
        let h = AuthHeader {
            value: bearer_value(&Secret::new("tok-canary")),
            kind: HeaderKind::CachedToken,
        };
        assert!(h.value.is_sensitive());
        assert!(!format!("{h:?}").contains("tok-canary"));
        assert!(!format!("{:?}", h.value).contains("tok-canary"));
    }
}
