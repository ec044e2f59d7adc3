//! The REST calls a Gantry endpoint makes, as one typed client: the OAuth2
//! client-credentials grant that turns an endpoint client's id and secret into a bearer
//! token, registration (`POST /v3/endpoints`, again with the same id on every restart),
//! and endpoint status. The MEP, the UEP and the tests all go through it, so the
//! service's REST shapes are written down once, in `gantry-protocol::rest`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gantry_endpoint_client::ClientError> {
//! use gantry_endpoint_client::{ClientCredentials, EndpointClient};
//! let client = EndpointClient::new(
//!     "http://localhost:5000",
//!     ClientCredentials { client_id: "…".into(), client_secret: "…".into() },
//! )?;
//! let token = client.token().await?; // cached until shortly before it expires
//! # let _ = token; Ok(()) }
//! ```

use std::time::{Duration, Instant};

use gantry_protocol::rest::{
    EndpointRegistrationRequest, EndpointRegistrationResponse, EndpointStatusResponse, ErrorBody,
    TokenResponse,
};
use tokio::sync::Mutex;
use uuid::Uuid;

/// The scope that asks for a token of the compute API (the official endpoint asks for
/// the same one; the service maps it to its `funcx_service` resource server).
pub const COMPUTE_SCOPE: &str =
    "https://auth.globus.org/scopes/facd7ccc-c5f4-42aa-916b-a0e270e2c2a9/all";

/// How long one REST call may take: a service that accepts the connection and then
/// says nothing must not hold a MEP's start-up or reconnect loop forever.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An endpoint client's credentials, from `gantry-service admin add-endpoint-client`.
#[derive(Clone)]
pub struct ClientCredentials {
    /// The client id (a UUID).
    pub client_id: String,
    /// The client secret (`gts_…`).
    pub client_secret: String,
}

impl std::fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log, even through a Debug print.
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

/// What went wrong talking to the service.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service URL is malformed.
    #[error("bad service URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The service could not be reached (down, refused, timed out).
    #[error("cannot reach the Gantry service at {url}: {source}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The service answered with an error status.
    #[error("the Gantry service refused {what} ({status}): {message}")]
    Refused {
        /// Which call.
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// The service's `code`, when it sent one.
        code: Option<String>,
        /// The service's explanation.
        message: String,
    },
    /// The service's answer did not have the expected shape.
    #[error("the Gantry service sent an unexpected answer to {what}: {detail}")]
    Malformed {
        /// Which call.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl ClientError {
    /// Whether trying again later may help (the service is down or overloaded), as
    /// opposed to a refusal that needs an admin (wrong secret, bad registration).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Refused { status, .. } => *status >= 500 || *status == 429,
            ClientError::BadUrl { .. } | ClientError::Malformed { .. } => false,
        }
    }
}

struct CachedToken {
    token: String,
    renew_at: Instant,
}

/// A client of the service's endpoint-facing routes, holding a token that it renews.
pub struct EndpointClient {
    http: reqwest::Client,
    base: String,
    credentials: ClientCredentials,
    token: Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for EndpointClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl EndpointClient {
    /// A client for the service at `service_url` (e.g. `http://localhost:5000`).
    pub fn new(
        service_url: &str,
        credentials: ClientCredentials,
    ) -> Result<EndpointClient, ClientError> {
        let base = service_url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::BadUrl {
                url: service_url.to_owned(),
                reason: "it must start with http:// or https://".into(),
            });
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ClientError::BadUrl {
                url: service_url.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(EndpointClient {
            http,
            base,
            credentials,
            token: Mutex::new(None),
        })
    }

    /// The service's base URL.
    pub fn service_url(&self) -> &str {
        &self.base
    }

    /// A bearer token for the compute API, from the cache or a new client-credentials
    /// grant. Renewed a minute before it expires.
    pub async fn token(&self) -> Result<String, ClientError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.renew_at
        {
            return Ok(token.token.clone());
        }
        let url = format!("{}/v2/oauth2/token", self.base);
        let response = self
            .http
            .post(&url)
            .basic_auth(
                &self.credentials.client_id,
                Some(&self.credentials.client_secret),
            )
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", COMPUTE_SCOPE),
            ])
            .send()
            .await
            .map_err(|source| ClientError::Unreachable { url, source })?;
        let body: TokenResponse = decode("the token request", response).await?;
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(3600));
        let renew_at = Instant::now() + lifetime.saturating_sub(Duration::from_secs(60));
        *cached = Some(CachedToken {
            token: body.access_token.clone(),
            renew_at,
        });
        Ok(body.access_token)
    }

    /// Forgets the cached token, e.g. after the service refused it.
    pub async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// Registers an endpoint (or registers it again with the same `endpoint_id`).
    pub async fn register(
        &self,
        request: &EndpointRegistrationRequest,
    ) -> Result<EndpointRegistrationResponse, ClientError> {
        let url = format!("{}/v3/endpoints", self.base);
        let response = self
            .authorized(|token| self.http.post(&url).bearer_auth(token).json(request))
            .await?;
        decode("the endpoint registration", response).await
    }

    /// An endpoint's status as the service sees it (`online`/`offline`, last heartbeat).
    pub async fn status(&self, endpoint_id: Uuid) -> Result<EndpointStatusResponse, ClientError> {
        let url = format!("{}/v2/endpoints/{endpoint_id}/status", self.base);
        let response = self
            .authorized(|token| self.http.get(&url).bearer_auth(token))
            .await?;
        decode("the endpoint status request", response).await
    }

    /// Sends a request with the current token; on 401 it fetches a new token once and
    /// tries again (a service restart or a revoked token).
    async fn authorized(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = self.send_with_token(&build).await?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        self.forget_token().await;
        self.send_with_token(&build).await
    }

    async fn send_with_token(
        &self,
        build: &impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let token = self.token().await?;
        let request = build(&token);
        request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: source
                    .url()
                    .map(|u| u.to_string())
                    .unwrap_or_else(|| self.base.clone()),
                source,
            })
    }
}

/// Reads a JSON answer, or turns an error status into [`ClientError::Refused`] with the
/// service's own explanation.
async fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    response: reqwest::Response,
) -> Result<T, ClientError> {
    let status = response.status();
    let url = response.url().to_string();
    let body = response
        .bytes()
        .await
        .map_err(|source| ClientError::Unreachable { url, source })?;
    if !status.is_success() {
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(error) => (Some(error.code), error.message),
            Err(_) => (
                None,
                String::from_utf8_lossy(&body).chars().take(500).collect(),
            ),
        };
        return Err(ClientError::Refused {
            what,
            status: status.as_u16(),
            code,
            message,
        });
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
        what,
        detail: e.to_string(),
    })
}
