//! HTTP basic auth for `/metrics` and `/-/reload`, against `[http] basic_auth_users`
//! (bcrypt hashes).
//!
//! - The scheme is matched case-insensitively (`Basic`, `basic`), as RFC 7235 says.
//! - A password that verified once is remembered for its user and hash and compared in
//!   constant time, so a scraper pays bcrypt's cost once, not on every scrape, and keeps
//!   being answered at once while others guess.
//! - An unknown user is verified against a dummy hash of the configured cost, so that an
//!   unknown user and a wrong password take the same time: the answer's timing does not say
//!   which user names exist.
//! - bcrypt runs one verification at a time, on a blocking thread: guessing uses at most one
//!   core. At most [`MAX_WAITING`] more wait their turn; beyond that a request is answered
//!   429 at once, without running bcrypt.
//! - bcrypt reads only the first 72 bytes of a password: longer passwords that share those 72
//!   bytes are the same password.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;

use crate::sync::lock;

/// Verifications that may wait for bcrypt behind the one running.
pub const MAX_WAITING: usize = 8;

/// What a request's credentials are worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No users configured, or the credentials verify.
    Allowed,
    /// Missing or wrong credentials.
    Denied,
    /// Too many verifications waiting already: try again later.
    Busy,
}

/// The auth state: remembered credentials, dummy hashes, the bcrypt queue.
pub struct Auth {
    /// user -> (hash, password) that verified.
    verified: Mutex<HashMap<String, (String, String)>>,
    /// cost -> a hash of a password nobody sends, for unknown users.
    dummies: Mutex<HashMap<u32, String>>,
    bcrypt: Semaphore,
    waiting: AtomicUsize,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            verified: Default::default(),
            dummies: Default::default(),
            bcrypt: Semaphore::new(1),
            waiting: AtomicUsize::new(0),
        }
    }
}

/// The user and password of an `Authorization: Basic ...` header.
fn credentials(header: Option<&hyper::header::HeaderValue>) -> Option<(String, String)> {
    let value = header?.to_str().ok()?;
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

/// The cost of a bcrypt hash (`$2b$12$...` -> 12).
fn cost(hash: &str) -> Option<u32> {
    hash.split('$').nth(2)?.parse().ok()
}

impl Auth {
    /// Checks the request's `Authorization` header against `users`.
    pub async fn check(
        &self,
        users: &BTreeMap<String, String>,
        header: Option<&hyper::header::HeaderValue>,
    ) -> Verdict {
        if users.is_empty() {
            return Verdict::Allowed;
        }
        let Some((user, pass)) = credentials(header) else {
            return Verdict::Denied;
        };
        let hash = match users.get(&user) {
            Some(hash) => {
                if let Some((h, p)) = lock(&self.verified).get(&user)
                    && h == hash
                    && bool::from(p.as_bytes().ct_eq(pass.as_bytes()))
                {
                    return Verdict::Allowed;
                }
                Some(hash.clone())
            }
            None => None,
        };
        // One bcrypt at a time, a short queue behind it.
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Verdict::Busy;
        }
        let permit = self.bcrypt.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let Ok(_permit) = permit else {
            return Verdict::Denied;
        };
        let known = hash.is_some();
        let against = match hash {
            Some(h) => h,
            None => self.dummy(users).await,
        };
        let ok = tokio::task::spawn_blocking({
            let (pass, against) = (pass.clone(), against.clone());
            move || bcrypt::verify(pass, &against).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok && known {
            lock(&self.verified).insert(user, (against, pass));
            Verdict::Allowed
        } else {
            Verdict::Denied
        }
    }

    /// A hash of the highest cost among `users`' hashes, made once per cost.
    async fn dummy(&self, users: &BTreeMap<String, String>) -> String {
        let cost = users
            .values()
            .filter_map(|h| cost(h))
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        if let Some(h) = lock(&self.dummies).get(&cost) {
            return h.clone();
        }
        let made = tokio::task::spawn_blocking(move || {
            bcrypt::hash("tallyd: no such user", cost).unwrap_or_default()
        })
        .await
        .unwrap_or_default();
        lock(&self.dummies).insert(cost, made.clone());
        made
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn basic(scheme: &str, user_pass: &str) -> HeaderValue {
        let b = base64::engine::general_purpose::STANDARD.encode(user_pass);
        HeaderValue::from_str(&format!("{scheme} {b}")).unwrap()
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_the_rest_exact() {
        for scheme in ["Basic", "basic", "BASIC"] {
            assert_eq!(
                credentials(Some(&basic(scheme, "u:p:q"))),
                Some(("u".into(), "p:q".into()))
            );
        }
        assert_eq!(credentials(Some(&basic("Bearer", "u:p"))), None);
        assert_eq!(credentials(Some(&basic("Basic", "no-colon"))), None);
        assert_eq!(credentials(None), None);
        assert_eq!(cost("$2b$12$abcdefghijklmnopqrstuv"), Some(12));
    }

    #[tokio::test]
    async fn known_unknown_cached_and_busy() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let users = BTreeMap::from([("u".to_string(), hash)]);
        let auth = Auth::default();
        let check = |h: HeaderValue| {
            let (auth, users) = (&auth, &users);
            async move { auth.check(users, Some(&h)).await }
        };
        assert_eq!(check(basic("Basic", "u:secret")).await, Verdict::Allowed);
        assert_eq!(check(basic("basic", "u:secret")).await, Verdict::Allowed);
        assert_eq!(check(basic("Basic", "u:wrong")).await, Verdict::Denied);
        assert_eq!(
            check(basic("Basic", "nobody:secret")).await,
            Verdict::Denied
        );
        assert_eq!(auth.check(&users, None).await, Verdict::Denied);
        assert_eq!(
            lock(&auth.dummies).keys().copied().collect::<Vec<_>>(),
            vec![4]
        );
        // With the queue full, an uncached check is refused without bcrypt; a remembered
        // password still passes.
        auth.waiting.store(MAX_WAITING, Ordering::Release);
        assert_eq!(check(basic("Basic", "u:guess")).await, Verdict::Busy);
        assert_eq!(check(basic("Basic", "u:secret")).await, Verdict::Allowed);
        assert_eq!(auth.check(&BTreeMap::new(), None).await, Verdict::Allowed);
    }
}
