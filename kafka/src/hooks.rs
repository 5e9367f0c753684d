//! What every Damselfly client context does: explain client errors and supply OAUTHBEARER tokens.
//!
//! rdkafka calls a client's context for errors and, with SASL OAUTHBEARER, for a new token before
//! the first connection and before each token expires. Each Damselfly context (the agent's
//! delivery counter, the runner's workers, [`KafkaContext`] for the rest) owns a [`Hooks`] and
//! forwards both calls to it. A token is made when librdkafka asks for it, which happens inside a
//! poll of that client: a client that is never polled (a bare metadata call) never authenticates
//! with OAUTHBEARER, so such callers poll once first ([`Hooks::needs_poll`]).

use std::error::Error;
use std::sync::Arc;

use rdkafka::client::OAuthToken;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;

use crate::diagnose::{Problem, Watch};
use crate::settings::{Connection, Field, SaslMechanism, SettingsError};

/// Makes OAUTHBEARER tokens.
pub trait TokenSource: Send + Sync {
    /// A token, its lifetime (milliseconds since the epoch when it expires) and principal.
    fn token(&self) -> Result<OAuthToken, Box<dyn Error>>;
}

/// A client's error watch and token source; see the module documentation.
#[derive(Clone)]
pub struct Hooks {
    watch: Arc<Watch>,
    tokens: Option<Arc<dyn TokenSource>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("watch", &self.watch)
            .field("tokens", &self.tokens.is_some())
            .finish()
    }
}

impl Hooks {
    /// The hooks of a client of `conn`: with an MSK IAM token source when it uses IAM, or the
    /// connection's own token source with OAUTHBEARER.
    pub fn new(conn: &Connection) -> Result<Self, SettingsError> {
        let tokens: Option<Arc<dyn TokenSource>> = match conn.security.mechanism {
            Some(SaslMechanism::AwsMskIam) => Some(msk_tokens(conn)?),
            Some(SaslMechanism::OAuthBearer) => match &conn.tokens {
                Some(t) => Some(t.0.clone()),
                None => {
                    return Err(SettingsError::new(
                        conn.naming,
                        Field::SaslMechanism,
                        "OAUTHBEARER needs a token source from the program",
                    ));
                }
            },
            _ => None,
        };
        Ok(Self {
            watch: Arc::new(Watch::new(conn)),
            tokens,
        })
    }

    /// Forward of [`ClientContext::error`].
    pub fn error(&self, error: KafkaError, reason: &str) {
        self.watch.saw(&error, reason);
    }

    /// Forward of [`ClientContext::generate_oauth_token`].
    pub fn oauth_token(&self) -> Result<OAuthToken, Box<dyn Error>> {
        match &self.tokens {
            Some(t) => t.token().inspect_err(|e| {
                tracing::error!(error = %e, "no OAUTHBEARER token: the client cannot authenticate");
            }),
            None => Err(
                "OAUTHBEARER needs a token source: set the SASL mechanism to AWS_MSK_IAM".into(),
            ),
        }
    }

    /// Whether the client must be polled before a call that does not poll (metadata, watermarks),
    /// so that its first OAUTHBEARER token is made.
    pub fn needs_poll(&self) -> bool {
        self.tokens.is_some()
    }

    /// The problems this client has seen.
    pub fn watch(&self) -> &Watch {
        &self.watch
    }

    /// The latest problem that waiting cannot fix, if any.
    pub fn blocking(&self) -> Option<Problem> {
        self.watch.blocking()
    }
}

#[cfg(feature = "msk-iam")]
fn msk_tokens(conn: &Connection) -> Result<Arc<dyn TokenSource>, SettingsError> {
    let source = crate::msk_iam::MskIamTokens::new(conn.security.aws_region.clone())
        .map_err(|why| SettingsError::new(conn.naming, Field::AwsRegion, why))?;
    Ok(Arc::new(source))
}

#[cfg(not(feature = "msk-iam"))]
fn msk_tokens(conn: &Connection) -> Result<Arc<dyn TokenSource>, SettingsError> {
    Err(SettingsError::new(
        conn.naming,
        Field::SaslMechanism,
        "AWS_MSK_IAM is not built into this binary (cargo feature `msk-iam` of damselfly-kafka)",
    ))
}

/// The context of clients without callbacks of their own (admin, metadata, simple producers and
/// consumers): [`Hooks`] and nothing else.
#[derive(Debug, Clone)]
pub struct KafkaContext {
    hooks: Hooks,
}

impl KafkaContext {
    /// A context for a client of `conn`.
    pub fn new(conn: &Connection) -> Result<Self, SettingsError> {
        Ok(Self {
            hooks: Hooks::new(conn)?,
        })
    }

    /// A context around existing hooks.
    pub fn from_hooks(hooks: Hooks) -> Self {
        Self { hooks }
    }

    /// The context's hooks.
    pub fn hooks(&self) -> &Hooks {
        &self.hooks
    }
}

/// Implements rdkafka's `ClientContext` for a context type that keeps its [`Hooks`] in a field:
/// client errors go to the hooks' watch, and OAUTHBEARER tokens come from their token source.
#[macro_export]
macro_rules! client_context {
    ($ty:ty, $field:ident) => {
        impl $crate::rdkafka::ClientContext for $ty {
            const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

            fn error(&self, error: $crate::rdkafka::error::KafkaError, reason: &str) {
                self.$field.error(error, reason);
            }

            fn generate_oauth_token(
                &self,
                _config: Option<&str>,
            ) -> Result<$crate::rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
                self.$field.oauth_token()
            }
        }
    };
}

crate::client_context!(KafkaContext, hooks);

impl ConsumerContext for KafkaContext {}
