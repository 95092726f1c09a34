//! Who a Kubernetes service-account token belongs to, by a TokenReview
//! against the API server, as istiod's CA authenticates its callers: the
//! token must be valid, for one of the audiences asked (Istio's
//! `istio-ca`), and a service account's (`system:serviceaccount:NS:SA`).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// A service account: the identity a token proves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenReviewError {
    #[error("TokenReview request failed: {0}")]
    Request(#[from] kube::Error),
    #[error("the API server did not authenticate the token: {0}")]
    NotAuthenticated(String),
    #[error("the token is not for audience {wanted}: it is for {got}")]
    Audience { wanted: String, got: String },
    #[error("the token is {0}'s, not a service account's")]
    NotServiceAccount(String),
}

/// The service account `token` authenticates as; `audiences` (may be
/// empty: the API server's own) must include the token's.
pub async fn review(
    client: &kube::Client,
    token: &str,
    audiences: &[String],
) -> Result<ServiceAccount, TokenReviewError> {
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_string()),
            audiences: (!audiences.is_empty()).then(|| audiences.to_vec()),
        },
        ..TokenReview::default()
    };
    let reviewed = Api::<TokenReview>::all(client.clone()).create(&PostParams::default(), &request).await?;
    let status = reviewed.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(TokenReviewError::NotAuthenticated(status.error.unwrap_or_else(|| "no reason given".into())));
    }
    let granted = status.audiences.unwrap_or_default();
    if !audiences.is_empty() && !audiences.iter().any(|a| granted.contains(a)) {
        return Err(TokenReviewError::Audience { wanted: audiences.join(","), got: granted.join(",") });
    }
    let username = status.user.and_then(|u| u.username).unwrap_or_default();
    service_account(&username).ok_or(TokenReviewError::NotServiceAccount(username))
}

/// `system:serviceaccount:foo:sleep` -> foo/sleep.
pub fn service_account(username: &str) -> Option<ServiceAccount> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
        .then(|| ServiceAccount { namespace: namespace.into(), name: name.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_of_service_accounts_only() {
        assert_eq!(
            service_account("system:serviceaccount:foo:sleep"),
            Some(ServiceAccount { namespace: "foo".into(), name: "sleep".into() })
        );
        assert_eq!(service_account("system:admin"), None);
        assert_eq!(service_account("system:serviceaccount:foo"), None);
        assert_eq!(service_account("system:serviceaccount:foo:a:b"), None);
    }
}
