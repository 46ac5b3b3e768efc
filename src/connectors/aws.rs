//! AWS IAM Identity Center: group membership in the Identity Store.
//!
//! Everything AWS-specific on the wire comes from the official SDK
//! (`aws-sdk-identitystore` + `aws-config`): SigV4 signing (service
//! `identitystore`), the awsJson1.1 protocol (`POST /`,
//! `X-Amz-Target: AWSIdentityStore.<Operation>`), and the standard credential
//! chain (environment, shared profile, web identity / IRSA in Kubernetes, ECS
//! container credentials, EC2 instance metadata). With `role_arn` the chain's
//! credentials assume that role through STS (`AssumeRole`, session name
//! `accessgov`), refreshed by the SDK before they expire.
//!
//! SDK retries are off: the worker is the one place that retries (with the
//! server's hint), so the per-application `rate_limit_per_second` counts every
//! attempt and a throttled call is not retried behind the worker's back.
//!
//! Subject: `GetUserId` by the unique attribute `emails.value` = the
//! requester's email, or, with `subject_field`, `userName` = that ticket
//! field's value. Target: the group's `displayName` (`GetGroupId`), or a group
//! id (`DescribeGroup` confirms it exists).
//!
//! Grant: `CreateGroupMembership`; a `ConflictException` with reason
//! `UNIQUENESS_CONSTRAINT_VIOLATION` is "already granted",
//! `CONCURRENT_MODIFICATION` is transient. Revoke: `GetGroupMembershipId`, then
//! `DeleteGroupMembership`; `ResourceNotFoundException` for the membership is
//! "already absent" (the user and the group were resolved just before).
//! `ThrottlingException` is transient with its `RetryAfterSeconds` (or the
//! `Retry-After` header) as the hint.
//!
//! Read-back: `identity` is the `subject_field` value (a userName) or the email,
//! lowercased. `members`: `ListGroupMemberships` (MaxResults 100, `NextToken`), then
//! `DescribeUser` per member for its `UserName` and `Emails` (keys: user id, user name,
//! every email, lowercased). `memberships`: `GetUserId`, the targets' group ids, then
//! `IsMemberInGroups`. `user_state`: `GetUserId` + `DescribeUser`; the model's
//! `UserStatus` DISABLED is inactive, ENABLED or absent active, a missing user not found.

use super::http::{Common, RateLimiter};
use super::{ConnectorError, GrantOutcome, Member, RevokeOutcome, Subject, Target, UserState};
use crate::config::ApplicationConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, ConfigLoader, Region};
use aws_sdk_identitystore::Client;
use aws_sdk_identitystore::Error as AwsError;
use aws_sdk_identitystore::config::retry::RetryConfig;
use aws_sdk_identitystore::config::timeout::TimeoutConfig;
use aws_sdk_identitystore::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_identitystore::types::error::{ConflictException, ResourceNotFoundException};
use aws_sdk_identitystore::types::{
    AlternateIdentifier, ConflictExceptionReason, MemberId, ResourceType, UniqueAttribute, UserStatus,
};
use futures_util::StreamExt;
use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

#[cfg(test)]
mod tests;

/// The IAM actions the connector calls (named in "access denied" errors).
pub const PERMISSIONS: &str = "identitystore:GetUserId, identitystore:GetGroupId, identitystore:DescribeGroup, \
                               identitystore:CreateGroupMembership, identitystore:GetGroupMembershipId, \
                               identitystore:DeleteGroupMembership, identitystore:ListGroups and, for \
                               read-back, identitystore:ListGroupMemberships, identitystore:DescribeUser and \
                               identitystore:IsMemberInGroups";
/// The STS session name used with `role_arn` (visible in CloudTrail).
pub const SESSION_NAME: &str = "accessgov";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait suggested for a throttled call that carries no hint.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(1);
/// `MaxResults` of `ListGroupMemberships` (the model's maximum).
const PAGE_SIZE: i32 = 100;
/// Pages of a group's memberships followed at most (100 a page).
const MAX_PAGES: usize = 2000;
/// Group ids per `IsMemberInGroups` call (the model's maximum).
const GROUPS_PER_CHECK: usize = 100;
/// Error codes of AWS's common authentication failures (not in the service model).
const AUTH_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "MissingAuthenticationToken",
    "AccessDenied",
];

/// The AWS IAM Identity Center connector.
pub struct Aws {
    app: String,
    identity_store_id: String,
    region: Option<String>,
    role_arn: Option<String>,
    endpoint_url: Option<String>,
    subject_field: Option<String>,
    timeout: Duration,
    limiter: Option<Arc<RateLimiter>>,
    /// `max_concurrent_calls`: the read-back's `DescribeUser` calls in flight at once.
    max_concurrent_calls: usize,
    /// Built on first use: loading the credential chain is async.
    client: OnceCell<Client>,
}

impl std::fmt::Debug for Aws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aws")
            .field("app", &self.app)
            .field("identity_store_id", &self.identity_store_id)
            .field("region", &self.region)
            .field("role_arn", &self.role_arn)
            .field("endpoint_url", &self.endpoint_url)
            .field("subject_field", &self.subject_field)
            .finish_non_exhaustive()
    }
}

/// A failed SDK call: the service's modelled error (with the HTTP status and
/// `Retry-After` header of its answer), or an already classified failure.
#[derive(Debug)]
enum Failure {
    Service { op: &'static str, err: Box<AwsError>, status: u16, retry_after_header: Option<u64> },
    Other(ConnectorError),
}

impl Failure {
    /// The service's `ResourceNotFoundException`, if that is what failed.
    fn not_found(&self) -> Option<&ResourceNotFoundException> {
        match self {
            Self::Service { err, .. } => match err.as_ref() {
                AwsError::ResourceNotFoundException(e) => Some(e),
                _ => None,
            },
            Self::Other(_) => None,
        }
    }

    /// A missing resource other than the identity store itself (a user, group or membership).
    fn missing_resource(&self) -> bool {
        self.not_found().is_some_and(|e| e.resource_type() != Some(&ResourceType::IdentityStore))
    }

    /// A missing membership (the service may leave out `ResourceType`).
    fn missing_membership(&self) -> bool {
        self.not_found().is_some_and(|e| matches!(e.resource_type(), None | Some(ResourceType::GroupMembership)))
    }

    /// The service's `ConflictException`, if that is what failed.
    fn conflict(&self) -> Option<&ConflictException> {
        match self {
            Self::Service { err, .. } => match err.as_ref() {
                AwsError::ConflictException(c) => Some(c),
                _ => None,
            },
            Self::Other(_) => None,
        }
    }
}

/// How the user is looked up.
struct UserKey<'a> {
    path: &'static str,
    value: &'a str,
}

/// The `[applications]` keys this kind accepts besides the common ones
/// (`kind`, `owner`, `dry_run`, `base_url`, `subject_field`, `rate_limit_per_second`,
/// `timeout`); [`Config::validate`](crate::config::Config::validate) refuses any other.
pub const KEYS: &[&str] = &["identity_store_id", "region", "role_arn"];

impl Aws {
    pub fn from_config(name: &str, app: &ApplicationConfig) -> Result<Self, String> {
        let common = Common::from_app(app)?;
        let setting = |k: &str| super::http::setting(app, k);
        let identity_store_id = setting("identity_store_id").ok_or_else(|| {
            "identity_store_id is required: the Identity Store id (d-xxxxxxxxxx), shown in the IAM Identity Center \
             console under Settings > Identity source"
                .to_owned()
        })?;
        if !valid_identity_store_id(&identity_store_id) {
            return Err(format!(
                "identity_store_id {identity_store_id:?} is not an Identity Store id: expected d- and 10 hex digits \
                 (d-1234567890), a UUID, or arn:aws:identitystore::ACCOUNT:identitystore/d-1234567890"
            ));
        }
        let region = setting("region");
        if let Some(r) = &region
            && !r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(format!("region {r:?} is not an AWS region name such as eu-west-1"));
        }
        let role_arn = setting("role_arn");
        if let Some(arn) = &role_arn
            && !(arn.starts_with("arn:aws") && arn.contains(":iam::") && arn.contains(":role/"))
        {
            return Err(format!(
                "role_arn {arn:?} is not an IAM role ARN such as arn:aws:iam::123456789012:role/accessgov"
            ));
        }
        if let Some(url) = &common.base_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(format!(
                "base_url {url:?} must be an http(s) URL (an Identity Store endpoint override, e.g. a VPC endpoint)"
            ));
        }
        Ok(Self {
            app: name.to_owned(),
            identity_store_id,
            region,
            role_arn,
            endpoint_url: common.base_url.map(|u| u.trim_end_matches('/').to_owned()),
            subject_field: common.subject_field,
            timeout: common.timeout,
            limiter: common.rate_limit_per_second.and_then(RateLimiter::new).map(Arc::new),
            max_concurrent_calls: common.max_concurrent_calls.max(1),
            client: OnceCell::new(),
        })
    }

    /// The client, built from the standard credential chain on first use.
    async fn client(&self) -> Result<&Client, ConnectorError> {
        self.client.get_or_try_init(|| self.connect(aws_config::defaults(BehaviorVersion::latest()))).await
    }

    /// Builds the client from `loader` (the standard chain in production; static
    /// credentials in tests): region, role, endpoint override, timeouts, no SDK retries.
    async fn connect(&self, loader: ConfigLoader) -> Result<Client, ConnectorError> {
        let loader = match &self.region {
            Some(r) => loader.region(Region::new(r.clone())),
            None => loader,
        };
        let base = loader.load().await;
        if base.region().is_none() {
            return Err(ConnectorError::Permanent {
                reason: "aws: no region: set region to the region of your IAM Identity Center instance \
                         (e.g. region = \"eu-west-1\"), or AWS_REGION"
                    .into(),
            });
        }
        let mut conf =
            aws_sdk_identitystore::config::Builder::from(&base).retry_config(RetryConfig::disabled()).timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(self.timeout)
                    .operation_timeout(self.timeout)
                    .build(),
            );
        if let Some(url) = &self.endpoint_url {
            conf = conf.endpoint_url(url.clone());
        }
        if let Some(arn) = &self.role_arn {
            let provider =
                AssumeRoleProvider::builder(arn.clone()).session_name(SESSION_NAME).configure(&base).build().await;
            conf = conf.credentials_provider(provider);
        }
        Ok(Client::from_conf(conf.build()))
    }

    /// Waits for this application's request slot, then returns the client.
    async fn ready(&self) -> Result<&Client, Failure> {
        let client = self.client().await.map_err(Failure::Other)?;
        if let Some(l) = &self.limiter {
            l.acquire().await;
        }
        Ok(client)
    }

    /// Where the user is looked up: `userName` from `subject_field`, else `emails.value`.
    fn user_key<'a>(&self, subject: &'a Subject) -> Result<UserKey<'a>, ConnectorError> {
        match &self.subject_field {
            Some(field) => match subject.field(field) {
                Some(v) => Ok(UserKey { path: "userName", value: v }),
                None => Err(ConnectorError::Permanent {
                    reason: format!(
                        "the ticket has no value in {field} (subject_field), which must hold the requester's \
                         IAM Identity Center user name"
                    ),
                }),
            },
            None => match subject.email.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
                Some(email) => Ok(UserKey { path: "emails.value", value: email }),
                None => Err(ConnectorError::Permanent {
                    reason: format!(
                        "the requester ({}) has no email address (JSM hides it when the Atlassian profile's email \
                         visibility is restricted), and the user is looked up by email: set subject_field to a \
                         ticket field holding the IAM Identity Center user name (it is then looked up by userName)",
                        subject.account_id
                    ),
                }),
            },
        }
    }

    async fn user_id(&self, subject: &Subject) -> Result<String, ConnectorError> {
        let key = self.user_key(subject)?;
        let attribute = UniqueAttribute::builder()
            .attribute_path(key.path)
            .attribute_value(key.value.to_owned().into())
            .build()
            .map_err(|e| ConnectorError::Permanent { reason: format!("aws: {e}") })?;
        let client = self.ready().await.map_err(|f| self.error(f))?;
        let answer = client
            .get_user_id()
            .identity_store_id(&self.identity_store_id)
            .alternate_identifier(AlternateIdentifier::UniqueAttribute(attribute))
            .send()
            .observed("GetUserId")
            .await
            .map_err(|e| failure("GetUserId", e));
        match answer {
            Ok(out) => Ok(out.user_id().to_owned()),
            Err(f) if f.missing_resource() => Err(ConnectorError::NotFound {
                what: format!(
                    "no IAM Identity Center user has {} = {:?} in identity store {}",
                    key.path, key.value, self.identity_store_id
                ),
            }),
            Err(f) => Err(self.error(f)),
        }
    }

    async fn group_id(&self, name: &str) -> Result<String, ConnectorError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(ConnectorError::Permanent {
                reason: "the rule names an empty IAM Identity Center group".into(),
            });
        }
        let client = self.ready().await.map_err(|f| self.error(f))?;
        let by_id = looks_like_group_id(name);
        let answer = if by_id {
            client
                .describe_group()
                .identity_store_id(&self.identity_store_id)
                .group_id(name)
                .send()
                .observed("DescribeGroup")
                .await
                .map(|out| out.group_id().to_owned())
                .map_err(|e| failure("DescribeGroup", e))
        } else {
            let attribute = UniqueAttribute::builder()
                .attribute_path("displayName")
                .attribute_value(name.to_owned().into())
                .build()
                .map_err(|e| ConnectorError::Permanent { reason: format!("aws: {e}") })?;
            client
                .get_group_id()
                .identity_store_id(&self.identity_store_id)
                .alternate_identifier(AlternateIdentifier::UniqueAttribute(attribute))
                .send()
                .observed("GetGroupId")
                .await
                .map(|out| out.group_id().to_owned())
                .map_err(|e| failure("GetGroupId", e))
        };
        match answer {
            Ok(id) => Ok(id),
            Err(f) if f.missing_resource() => {
                let how = if by_id { "id" } else { "displayName" };
                Err(ConnectorError::NotFound {
                    what: format!(
                        "no IAM Identity Center group has {how} {name:?} in identity store {}",
                        self.identity_store_id
                    ),
                })
            }
            Err(f) => Err(self.error(f)),
        }
    }

    /// The membership's id, `None` when the user is not in the group.
    async fn membership_id(&self, group_id: &str, user_id: &str) -> Result<Option<String>, ConnectorError> {
        let client = self.ready().await.map_err(|f| self.error(f))?;
        let answer = client
            .get_group_membership_id()
            .identity_store_id(&self.identity_store_id)
            .group_id(group_id)
            .member_id(MemberId::UserId(user_id.to_owned()))
            .send()
            .observed("GetGroupMembershipId")
            .await
            .map_err(|e| failure("GetGroupMembershipId", e));
        match answer {
            Ok(out) => Ok(Some(out.membership_id().to_owned())),
            Err(f) if f.missing_membership() => Ok(None),
            Err(f) => Err(self.error(f)),
        }
    }

    async fn do_grant(&self, subject: &Subject, target: &Target) -> Result<GrantOutcome, ConnectorError> {
        if let Some(role) = &target.role {
            return Err(ConnectorError::Permanent {
                reason: format!(
                    "IAM Identity Center group memberships have no roles, but the rule sets role = {role:?}; remove it"
                ),
            });
        }
        let user_id = self.user_id(subject).await?;
        let group_id = self.group_id(&target.name).await?;
        let client = self.ready().await.map_err(|f| self.error(f))?;
        let answer = client
            .create_group_membership()
            .identity_store_id(&self.identity_store_id)
            .group_id(&group_id)
            .member_id(MemberId::UserId(user_id.clone()))
            .send()
            .observed("CreateGroupMembership")
            .await
            .map_err(|e| failure("CreateGroupMembership", e));
        let f = match answer {
            Ok(_) => return Ok(GrantOutcome::Granted),
            Err(f) => f,
        };
        let Some(c) = f.conflict() else { return Err(self.error(f)) };
        match c.reason() {
            Some(ConflictExceptionReason::UniquenessConstraintViolation) => Ok(GrantOutcome::AlreadyGranted),
            Some(ConflictExceptionReason::ConcurrentModification) => Err(ConnectorError::Transient {
                reason: format!(
                    "aws: CreateGroupMembership: ConflictException (CONCURRENT_MODIFICATION): {}",
                    c.message().unwrap_or("the group was being changed by another request")
                ),
                retry_after: Some(DEFAULT_THROTTLE_WAIT),
            }),
            // No (or an unknown) reason: decide on the membership itself.
            _ => match self.membership_id(&group_id, &user_id).await? {
                Some(_) => Ok(GrantOutcome::AlreadyGranted),
                None => Err(ConnectorError::Permanent {
                    reason: format!(
                        "aws: CreateGroupMembership: ConflictException: {}",
                        c.message().unwrap_or("no message")
                    ),
                }),
            },
        }
    }

    async fn do_revoke(&self, subject: &Subject, target: &Target) -> Result<RevokeOutcome, ConnectorError> {
        let user_id = self.user_id(subject).await?;
        let group_id = self.group_id(&target.name).await?;
        let Some(membership_id) = self.membership_id(&group_id, &user_id).await? else {
            return Ok(RevokeOutcome::AlreadyAbsent);
        };
        let client = self.ready().await.map_err(|f| self.error(f))?;
        let answer = client
            .delete_group_membership()
            .identity_store_id(&self.identity_store_id)
            .membership_id(&membership_id)
            .send()
            .observed("DeleteGroupMembership")
            .await
            .map_err(|e| failure("DeleteGroupMembership", e));
        match answer {
            Ok(_) => Ok(RevokeOutcome::Revoked),
            // Removed in between (by another request or the IdP sync).
            Err(f) if f.missing_membership() => Ok(RevokeOutcome::AlreadyAbsent),
            Err(f) => Err(self.error(f)),
        }
    }

    async fn do_test(&self) -> Result<(), ConnectorError> {
        let client = self.ready().await.map_err(|f| self.error(f))?;
        client
            .list_groups()
            .identity_store_id(&self.identity_store_id)
            .max_results(1)
            .send()
            .observed("ListGroups")
            .await
            .map(|_| ())
            .map_err(|e| self.error(failure("ListGroups", e)))
    }

    /// The identifier `grant` looks the user up by: the `subject_field` value (matched
    /// against `userName`) or the requester's email (`emails.value`), lowercased.
    fn do_identity(&self, subject: &Subject) -> Result<String, ConnectorError> {
        self.user_key(subject).map(|k| k.value.trim().to_lowercase())
    }

    /// `DescribeUser`: `None` when the user does not exist.
    async fn describe_user(
        &self,
        user_id: &str,
    ) -> Result<Option<aws_sdk_identitystore::operation::describe_user::DescribeUserOutput>, ConnectorError> {
        let client = self.ready().await.map_err(|f| self.error(f))?;
        let answer = client
            .describe_user()
            .identity_store_id(&self.identity_store_id)
            .user_id(user_id)
            .send()
            .observed("DescribeUser")
            .await
            .map_err(|e| failure("DescribeUser", e));
        match answer {
            Ok(out) => Ok(Some(out)),
            Err(f) if f.missing_resource() => Ok(None),
            Err(f) => Err(self.error(f)),
        }
    }

    /// Every member of the group: `ListGroupMemberships` (following `NextToken`), then
    /// `DescribeUser` per member (at most `max_concurrent_calls` at once) for the user name
    /// and emails the keys hold. Members that are not users are left out.
    async fn do_members(&self, target: &Target) -> Result<Vec<Member>, ConnectorError> {
        let group_id = self.group_id(&target.name).await?;
        let mut user_ids = Vec::new();
        let mut token: Option<String> = None;
        for page in 0.. {
            if page == MAX_PAGES {
                return Err(ConnectorError::Permanent {
                    reason: format!("aws: the members of group {group_id} span more than {MAX_PAGES} pages; giving up"),
                });
            }
            let client = self.ready().await.map_err(|f| self.error(f))?;
            let answer = client
                .list_group_memberships()
                .identity_store_id(&self.identity_store_id)
                .group_id(&group_id)
                .max_results(PAGE_SIZE)
                .set_next_token(token.take())
                .send()
                .observed("ListGroupMemberships")
                .await
                .map_err(|e| failure("ListGroupMemberships", e));
            let out = match answer {
                Ok(out) => out,
                Err(f) if f.missing_resource() => {
                    return Err(ConnectorError::NotFound {
                        what: format!(
                            "IAM Identity Center group {group_id} in identity store {}",
                            self.identity_store_id
                        ),
                    });
                }
                Err(f) => return Err(self.error(f)),
            };
            user_ids.extend(out.group_memberships().iter().filter_map(|m| match m.member_id() {
                Some(MemberId::UserId(id)) => Some(id.clone()),
                _ => None,
            }));
            match out.next_token().filter(|t| !t.is_empty()) {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        let described: Vec<Result<Member, ConnectorError>> = futures_util::stream::iter(user_ids)
            .map(|id| async move {
                Ok(match self.describe_user(&id).await? {
                    // Deleted since the listing: the membership is all there is.
                    None => Member { keys: vec![id.to_lowercase()], id, display: None },
                    Some(u) => {
                        let mut keys = vec![id.to_lowercase()];
                        let names = u.user_name().into_iter().chain(u.emails().iter().filter_map(|e| e.value()));
                        for k in names.map(|k| k.trim().to_lowercase()).filter(|k| !k.is_empty()) {
                            if !keys.contains(&k) {
                                keys.push(k);
                            }
                        }
                        let display = u.display_name().or(u.user_name()).map(str::to_owned);
                        Member { id, keys, display }
                    }
                })
            })
            .buffered(self.max_concurrent_calls)
            .collect()
            .await;
        described.into_iter().collect()
    }

    /// The targets the user is in: `GetUserId` (an unknown user is in none), each target's
    /// group id (a target that does not exist holds no one), then `IsMemberInGroups`
    /// (100 groups a call).
    async fn do_memberships(&self, subject: &Subject, targets: &[Target]) -> Result<Vec<String>, ConnectorError> {
        let user_id = match self.user_id(subject).await {
            Ok(id) => id,
            Err(ConnectorError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut groups: Vec<(String, &Target)> = Vec::new();
        for t in targets {
            match self.group_id(&t.name).await {
                Ok(id) => groups.push((id, t)),
                Err(ConnectorError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let mut held = Vec::new();
        for chunk in groups.chunks(GROUPS_PER_CHECK) {
            let mut ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            ids.sort_unstable();
            ids.dedup();
            let client = self.ready().await.map_err(|f| self.error(f))?;
            let out = client
                .is_member_in_groups()
                .identity_store_id(&self.identity_store_id)
                .member_id(MemberId::UserId(user_id.clone()))
                .set_group_ids(Some(ids))
                .send()
                .observed("IsMemberInGroups")
                .await
                .map_err(|e| self.error(failure("IsMemberInGroups", e)))?;
            for (id, t) in chunk {
                if out.results().iter().any(|r| r.membership_exists() && r.group_id() == Some(id.as_str())) {
                    held.push(t.name.clone());
                }
            }
        }
        Ok(held)
    }

    /// `GetUserId`, then `DescribeUser`: `UserStatus` DISABLED is inactive; ENABLED, or
    /// no status (stores and SDKs from before the attribute), is active.
    async fn do_user_state(&self, subject: &Subject) -> Result<UserState, ConnectorError> {
        let user_id = match self.user_id(subject).await {
            Ok(id) => id,
            Err(ConnectorError::NotFound { .. }) => return Ok(UserState::NotFound),
            Err(e) => return Err(e),
        };
        Ok(match self.describe_user(&user_id).await? {
            None => UserState::NotFound,
            Some(u) if u.user_status() == Some(&UserStatus::Disabled) => UserState::Inactive,
            Some(_) => UserState::Active,
        })
    }

    fn region_text(&self) -> &str {
        self.region.as_deref().unwrap_or("the default chain's region")
    }

    /// Whose credentials: the role, or the default chain.
    fn principal(&self) -> String {
        match &self.role_arn {
            Some(arn) => format!("the role {arn}"),
            None => "the connector's AWS credentials".into(),
        }
    }

    /// The classified error for a failed call, with the fix where there is one.
    fn error(&self, f: Failure) -> ConnectorError {
        let (op, err, status, header) = match f {
            Failure::Other(e) => return e,
            Failure::Service { op, err, status, retry_after_header } => (op, err, status, retry_after_header),
        };
        let code = err.code().map_or_else(|| format!("HTTP {status}"), str::to_owned);
        let message = err.message().map(|m| format!(": {}", super::http::snippet(m))).unwrap_or_default();
        let reason = format!("aws: {op}: {code}{message}");
        let header_hint = header.map(|s| Duration::from_secs(s).min(super::http::MAX_HINT));
        match *err {
            AwsError::ThrottlingException(t) => ConnectorError::Transient {
                reason,
                retry_after: Some(seconds(t.retry_after_seconds()).or(header_hint).unwrap_or(DEFAULT_THROTTLE_WAIT)),
            },
            AwsError::InternalServerException(i) => {
                ConnectorError::Transient { reason, retry_after: seconds(i.retry_after_seconds()).or(header_hint) }
            }
            AwsError::ConflictException(c)
                if c.reason().is_none_or(|r| *r == ConflictExceptionReason::ConcurrentModification) =>
            {
                ConnectorError::Transient { reason, retry_after: Some(DEFAULT_THROTTLE_WAIT) }
            }
            AwsError::AccessDeniedException(_) => ConnectorError::Unauthorized(format!(
                "{reason}. Allow {} ({PERMISSIONS}) on identity store {}; if the store is encrypted with a \
                 customer managed KMS key, the key policy must allow it too",
                self.principal(),
                self.identity_store_id
            )),
            AwsError::ResourceNotFoundException(e) if e.resource_type() == Some(&ResourceType::IdentityStore) => {
                ConnectorError::Permanent {
                    reason: format!(
                        "{reason}. Identity store {} does not exist in {}: check identity_store_id and region \
                         (the region of the IAM Identity Center instance)",
                        self.identity_store_id,
                        self.region_text()
                    ),
                }
            }
            AwsError::ResourceNotFoundException(_) => ConnectorError::NotFound { what: reason },
            AwsError::ValidationException(_) | AwsError::ServiceQuotaExceededException(_) => {
                ConnectorError::Permanent { reason }
            }
            _ if AUTH_CODES.contains(&code.as_str()) => ConnectorError::Unauthorized(format!(
                "{reason}. The AWS credentials are invalid or expired: check the credential chain (AWS_ACCESS_KEY_ID/\
                 AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the IRSA service account annotation){}",
                if self.role_arn.is_some() { " and that they may assume role_arn" } else { "" }
            )),
            _ => match status {
                429 => ConnectorError::Transient {
                    reason,
                    retry_after: Some(header_hint.unwrap_or(DEFAULT_THROTTLE_WAIT)),
                },
                s if s >= 500 => ConnectorError::Transient { reason, retry_after: header_hint },
                401 | 403 => ConnectorError::Unauthorized(reason),
                _ => ConnectorError::Permanent { reason },
            },
        }
    }
}

/// Turns an SDK failure into a [`Failure`]: the service's answer keeps its
/// modelled error; transport problems are transient; credential problems are
/// unauthorized.
/// Measures and traces an Identity Store request as [`super::http::Http::send`]
/// does an HTTP one: `accessgov_provider_requests_total` (status class of the
/// answer, `error` when none came) and a client span.
trait Observed<T, E>: std::future::Future<Output = Result<T, SdkError<E>>> + Sized {
    async fn observed(self, op: &'static str) -> Result<T, SdkError<E>> {
        let (application, operation) = crate::metrics::provider_labels("aws");
        let span = tracing::info_span!(
            "provider.request",
            otel.kind = "client",
            otel.name = %format!("aws {op}"),
            rpc.system = "aws-api",
            rpc.method = op,
            application = %application,
            operation,
            http.response.status_code = tracing::field::Empty,
        );
        let started = std::time::Instant::now();
        let result = tracing::Instrument::instrument(self, span.clone()).await;
        let status = match &result {
            Ok(_) => Some(200),
            Err(e) => e.raw_response().map(|r| r.status().as_u16()),
        };
        super::http::finished(&span, &application, operation, status, started);
        result
    }
}

impl<T, E, F: std::future::Future<Output = Result<T, SdkError<E>>>> Observed<T, E> for F {}

fn failure<E>(op: &'static str, e: SdkError<E>) -> Failure
where
    AwsError: From<E>,
    E: std::error::Error + Send + Sync + 'static,
{
    match e {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let retry_after_header = ctx.raw().headers().get("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
            Failure::Service { op, err: Box::new(AwsError::from(ctx.into_err())), status, retry_after_header }
        }
        SdkError::TimeoutError(_) => {
            Failure::Other(ConnectorError::Transient { reason: format!("aws: {op}: timed out"), retry_after: None })
        }
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            Failure::Other(ConnectorError::Transient { reason: format!("aws: {op}: timed out"), retry_after: None })
        }
        SdkError::DispatchFailure(d) if d.is_io() => Failure::Other(ConnectorError::Transient {
            reason: format!("aws: {op}: could not connect"),
            retry_after: None,
        }),
        SdkError::DispatchFailure(d) => {
            // Before sending: almost always the credential chain (no credentials, or the
            // role could not be assumed).
            let detail = d.as_connector_error().and_then(|c| c.source()).map(causes).unwrap_or_default();
            let lower = detail.to_ascii_lowercase();
            if lower.contains("timed out") || lower.contains("throttl") {
                return Failure::Other(ConnectorError::Transient {
                    reason: format!("aws: {op}: could not obtain credentials: {}", super::http::snippet(&detail)),
                    retry_after: None,
                });
            }
            Failure::Other(ConnectorError::Unauthorized(format!(
                "aws: {op}: could not obtain AWS credentials: {}. Provide credentials through the standard chain: \
                 AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE with a static or role profile, IRSA \
                 (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE) or the instance/container role; with role_arn, those \
                 credentials must be allowed sts:AssumeRole on it",
                super::http::snippet(&detail)
            )))
        }
        SdkError::ResponseError(r) => {
            let status = r.raw().status().as_u16();
            let reason = format!("aws: {op}: unreadable answer (HTTP {status})");
            Failure::Other(if status >= 500 || status == 429 {
                ConnectorError::Transient { reason, retry_after: None }
            } else {
                ConnectorError::Permanent { reason }
            })
        }
        other => Failure::Other(ConnectorError::Permanent {
            reason: format!("aws: {op}: {}", super::http::snippet(&causes(&other))),
        }),
    }
}

/// An error and its sources, `: `-separated (Display only, no Debug dumps).
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = cause.source();
    }
    parts.join(": ")
}

/// A positive `RetryAfterSeconds`, capped.
fn seconds(s: i32) -> Option<Duration> {
    u64::try_from(s).ok().filter(|s| *s > 0).map(|s| Duration::from_secs(s).min(super::http::MAX_HINT))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5 && [8, 4, 4, 4, 12].iter().zip(&parts).all(|(n, p)| is_hex(p, *n))
}

/// An Identity Store group id: a UUID, optionally prefixed by 10 hex digits and `-`
/// (`([0-9a-f]{10}-|)UUID`, the model's `ResourceId` pattern).
pub fn looks_like_group_id(s: &str) -> bool {
    match s.split_once('-') {
        Some((prefix, rest)) if is_hex(prefix, 10) && prefix.bytes().all(|b| !b.is_ascii_uppercase()) => is_uuid(rest),
        _ => is_uuid(s),
    }
}

/// `d-` + 10 lowercase hex digits, a UUID, or the store's ARN (the model's `IdentityStoreId` pattern).
fn valid_identity_store_id(s: &str) -> bool {
    let id = match s.strip_prefix("arn:aws") {
        Some(rest) => match rest.split_once(":identitystore::").and_then(|(_, r)| r.split_once(":identitystore/")) {
            Some((account, id)) if account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()) => id,
            _ => return false,
        },
        None => s,
    };
    let lower_hex = |p: &str, n: usize| is_hex(p, n) && p.bytes().all(|b| !b.is_ascii_uppercase());
    match id.strip_prefix("d-") {
        Some(rest) => lower_hex(rest, 10),
        None => is_uuid(id) && id.split('-').all(|p| lower_hex(p, p.len())),
    }
}

super::connector_impl!(
    Aws, "aws", grant: do_grant, revoke: do_revoke, test: do_test,
    identity: do_identity, members: do_members, memberships: do_memberships, user_state: do_user_state
);
