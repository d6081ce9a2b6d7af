//! Retries with exponential backoff and full jitter.
//!
//! Operations keep their own state across attempts (a blob pull resumes
//! where it stopped), so instead of a closure-taking `retry()` there is a
//! [`Retrier`] that the operation's loop asks after each failure: it sleeps
//! and says "again", or turns the error into the final one.

use std::time::Duration;

use rand::Rng;

use super::RegistryError;

/// The backoff schedule.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
    /// Longest Retry-After honoured; a server asking for more gets this.
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    pub fn new(max_retries: u32) -> Self {
        RetryPolicy {
            max_retries,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }

    /// The wait before retry number `retry` (0-based): Retry-After if the
    /// server sent one, else a uniform draw from [d/2, d] with
    /// d = base * 2^retry, capped.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_retry_after);
        }
        let d = self
            .base
            .saturating_mul(1u32 << retry.min(16))
            .min(self.cap);
        let lo = d / 2;
        lo + rand::thread_rng().gen_range(Duration::ZERO..=d - lo)
    }
}

/// One operation's retry state.
pub struct Retrier {
    policy: RetryPolicy,
    context: String,
    retries: u32,
}

impl Retrier {
    pub fn new(policy: RetryPolicy, context: impl Into<String>) -> Self {
        Retrier {
            policy,
            context: context.into(),
            retries: 0,
        }
    }

    /// After a failure: wait and return Ok (try again), or return the error
    /// to give up with.
    pub async fn wait_or_fail(&mut self, err: RegistryError) -> Result<(), RegistryError> {
        if !err.is_transient() {
            return Err(err);
        }
        if self.retries >= self.policy.max_retries {
            return Err(if self.retries == 0 {
                err
            } else {
                RegistryError::RetriesExhausted {
                    context: self.context.clone(),
                    attempts: self.retries + 1,
                    source: Box::new(err),
                }
            });
        }
        let retry_after = match &err {
            RegistryError::Status { retry_after, .. } => *retry_after,
            _ => None,
        };
        let delay = self.policy.delay(self.retries, retry_after);
        tracing::info!(context = %self.context, error = %err, retry = self.retries + 1, ?delay, "retrying");
        self.retries += 1;
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

/// Parse Retry-After: delta-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> RegistryError {
        RegistryError::Status {
            context: "t".into(),
            status: code,
            message: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn backoff_grows_and_stays_within_jitter_bounds() {
        let p = RetryPolicy::new(4);
        for retry in 0..6 {
            let d = p.base.saturating_mul(1 << retry).min(p.cap);
            for _ in 0..50 {
                let got = p.delay(retry, None);
                assert!(
                    got >= d / 2 && got <= d,
                    "retry {retry}: {got:?} not in [{:?}, {d:?}]",
                    d / 2
                );
            }
        }
        assert!(p.delay(30, None) <= p.cap);
    }

    #[test]
    fn retry_after_wins_but_is_capped() {
        let p = RetryPolicy::new(4);
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(86400))),
            p.max_retry_after
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried_and_transient_ones_are_bounded() {
        let mut r = Retrier::new(
            RetryPolicy {
                base: Duration::from_millis(1),
                ..RetryPolicy::new(2)
            },
            "op",
        );
        assert!(r.wait_or_fail(status(404)).await.is_err());
        assert!(r.wait_or_fail(status(503)).await.is_ok());
        assert!(r.wait_or_fail(status(429)).await.is_ok());
        let err = r.wait_or_fail(status(502)).await.unwrap_err();
        assert!(
            matches!(err, RegistryError::RetriesExhausted { attempts: 3, .. }),
            "{err:?}"
        );
    }
}
