//! The org id, checked once where it enters (a bearer token, a Stripe
//! event's metadata, a PaymentIntent's owner, a log subject) so that
//! everything past the edge holds one that follows the contract.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// 1 to 64 of `A-Za-z0-9_-`, as the contract says. Cheap to clone: org
/// actors, spans and stream subscriptions all carry it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an org id (1 to 64 of A-Za-z0-9_-)")]
pub struct InvalidOrgId(pub String);

/// The characters of an org id, and of a SKU, which may name a Stripe
/// Product and so has the same limits.
pub fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl OrgId {
    pub fn parse(s: &str) -> Result<Self, InvalidOrgId> {
        if is_identifier(s) {
            Ok(Self(Arc::from(s)))
        } else {
            Err(InvalidOrgId(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for OrgId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// Maps keyed by `OrgId` can be looked up with a `&str`.
impl Borrow<str> for OrgId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<OrgId> for String {
    fn from(id: OrgId) -> String {
        id.0.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids_follow_the_contract() {
        assert_eq!(OrgId::parse("acme_Co-1").unwrap().as_str(), "acme_Co-1");
        assert!(OrgId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a/b", "a b", "é", "a.b"] {
            assert_eq!(OrgId::parse(bad), Err(InvalidOrgId(bad.to_owned())));
        }
        assert!(OrgId::parse(&"a".repeat(65)).is_err());
    }
}
