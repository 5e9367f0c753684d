//! Amazon MSK's IAM access control: OAUTHBEARER tokens that are SigV4-presigned `kafka-cluster:Connect` URLs.
//!
//! The token MSK checks is what AWS's own signer libraries (Java, Python, Go, JavaScript) make: a
//! `GET https://kafka.{region}.amazonaws.com/?Action=kafka-cluster%3AConnect` presigned with SigV4
//! for the service `kafka-cluster`, valid 900 s, with a `User-Agent` query parameter appended after
//! signing, the whole URL base64url-encoded without padding; it expires at the signing time plus
//! 900 s. The `aws-msk-iam-sasl-signer` crate does the same, but pulls in aws-config's default
//! HTTPS client (aws-lc's C build) and an STS client for this one signature; signing needs only
//! aws-sigv4, which the AWS SDK crates here already build. The signature is checked against
//! botocore's (`kafka/tests/msk_iam_botocore.rs`).
//!
//! Credentials come from the AWS default chain (environment, profile, web identity, ECS, the EC2
//! instance profile), loaded once and refreshed by the chain's own cache; the region is given
//! (`--msk-region`, `kafka.msk_region`) or the chain's (AWS_REGION, profile, instance metadata).

use std::error::Error;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{ProvideCredentials as _, SharedCredentialsProvider};
use base64::Engine as _;
use rdkafka::client::OAuthToken;

use crate::hooks::TokenSource;

/// How long a token is valid (what MSK and AWS's signers use).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// The signing service name of MSK's IAM access control.
const SERVICE: &str = "kafka-cluster";

/// Sent as the `User-Agent` query parameter, which MSK logs.
const USER_AGENT: &str = concat!("damselfly-kafka/", env!("CARGO_PKG_VERSION"));

/// Bound on loading credentials for one token (the instance metadata service can hang).
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes MSK IAM tokens from the AWS default credential chain.
pub struct MskIamTokens {
    region: Option<String>,
    runtime: tokio::runtime::Runtime,
    aws: OnceLock<(SharedCredentialsProvider, String)>,
}

impl MskIamTokens {
    /// A token source for the cluster's region (`None`: the AWS default region chain).
    pub fn new(region: Option<String>) -> Result<Self, String> {
        if region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return Err("is empty: name the MSK cluster's region, e.g. us-east-1".into());
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("starting the credential loader: {e}"))?;
        Ok(Self {
            region,
            runtime,
            aws: OnceLock::new(),
        })
    }

    /// The credentials provider and region, loaded on first use.
    async fn load(&self) -> Result<(SharedCredentialsProvider, String), String> {
        if let Some(aws) = self.aws.get() {
            return Ok(aws.clone());
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(r) = &self.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        let config = loader.load().await;
        let region = config
            .region()
            .map(|r| r.as_ref().to_owned())
            .ok_or("no AWS region: set the MSK cluster's region (or AWS_REGION)")?;
        let provider = config
            .credentials_provider()
            .ok_or("no AWS credentials provider could be set up")?;
        Ok(self.aws.get_or_init(|| (provider, region)).clone())
    }

    async fn make(&self) -> Result<OAuthToken, String> {
        let (provider, region) = self.load().await?;
        let credentials = tokio::time::timeout(LOAD_TIMEOUT, provider.provide_credentials())
            .await
            .map_err(|_| format!("no AWS credentials within {LOAD_TIMEOUT:?}"))?
            .map_err(|e| format!("no AWS credentials: {e}"))?;
        let (token, expires_ms) = sign(&region, &credentials, SystemTime::now())?;
        Ok(OAuthToken {
            token,
            principal_name: String::new(),
            lifetime_ms: expires_ms,
        })
    }
}

impl TokenSource for MskIamTokens {
    fn token(&self) -> Result<OAuthToken, Box<dyn Error>> {
        // librdkafka asks from inside a poll, which may run on a tokio worker of the caller's
        // runtime: load on a thread of our own, where blocking on our runtime is allowed.
        let made = std::thread::scope(|s| {
            s.spawn(|| self.runtime.block_on(self.make()))
                .join()
                .unwrap_or_else(|_| Err("the credential loader panicked".into()))
        });
        match made {
            Ok(token) => {
                tracing::debug!(expires_ms = token.lifetime_ms, "MSK IAM token made");
                Ok(token)
            }
            Err(e) => Err(format!("SASL OAUTHBEARER token for MSK IAM: {e}").into()),
        }
    }
}

/// Presigns MSK's connect request for `region` at `time`: the token and when it expires (ms).
pub fn sign(
    region: &str,
    credentials: &Credentials,
    time: SystemTime,
) -> Result<(String, i64), String> {
    use aws_sigv4::http_request::{
        SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
    };
    use aws_sigv4::sign::v4;

    let base = format!("https://kafka.{region}.amazonaws.com/?Action=kafka-cluster%3AConnect");
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(time)
        .settings(settings)
        .build()
        .map_err(|e| format!("signing parameters: {e}"))?;
    let request = SignableRequest::new("GET", &base, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|e| format!("signable request: {e}"))?;
    let (instructions, _) = sign(request, &params.into())
        .map_err(|e| format!("signing: {e}"))?
        .into_parts();
    let mut url = url::Url::parse(&base).map_err(|e| format!("{base}: {e}"))?;
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in instructions.params() {
            query.append_pair(name, value);
        }
        query.append_pair("User-Agent", USER_AGENT);
    }
    let signed_at = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "the clock is before 1970".to_owned())?
        .as_secs() as i64;
    let expires_ms = (signed_at + TOKEN_LIFETIME.as_secs() as i64) * 1000;
    Ok((
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url.as_str()),
        expires_ms,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(token: &str) -> url::Url {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .unwrap();
        url::Url::parse(std::str::from_utf8(&bytes).unwrap()).unwrap()
    }

    #[test]
    fn a_token_is_a_presigned_connect_url_valid_900s() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let at = UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        let (token, expires) = sign("eu-west-1", &creds, at).unwrap();
        assert!(!token.contains('=') && !token.contains('+') && !token.contains('/'));
        assert_eq!(expires, (1_765_000_000 + 900) * 1000);
        let url = decode(&token);
        assert_eq!(url.host_str(), Some("kafka.eu-west-1.amazonaws.com"));
        let q: std::collections::BTreeMap<String, String> =
            url.query_pairs().into_owned().collect();
        assert_eq!(q["Action"], "kafka-cluster:Connect");
        assert_eq!(q["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(q["X-Amz-Expires"], "900");
        assert_eq!(q["X-Amz-Date"], "20251206T054640Z");
        assert_eq!(
            q["X-Amz-Credential"],
            "AKIDEXAMPLE/20251206/eu-west-1/kafka-cluster/aws4_request"
        );
        assert_eq!(q["X-Amz-SignedHeaders"], "host");
        assert_eq!(q["X-Amz-Signature"].len(), 64);
        assert!(q["User-Agent"].starts_with("damselfly-kafka/"));
        assert!(!q.contains_key("X-Amz-Security-Token"));

        let session = Credentials::new("AKIDEXAMPLE", "secret", Some("tok".into()), None, "test");
        let url = decode(&sign("eu-west-1", &session, at).unwrap().0);
        let q: std::collections::BTreeMap<String, String> =
            url.query_pairs().into_owned().collect();
        assert_eq!(q["X-Amz-Security-Token"], "tok");
        // The signature covers the key: another secret signs differently.
        let other = Credentials::new("AKIDEXAMPLE", "other", None, None, "test");
        assert_ne!(
            sign("eu-west-1", &creds, at).unwrap().0,
            sign("eu-west-1", &other, at).unwrap().0
        );
    }

    #[test]
    fn an_empty_region_is_refused() {
        assert!(MskIamTokens::new(Some(" ".into())).is_err());
    }
}
