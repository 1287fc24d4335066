//! Access tokens: HS256 JWTs with claims `org` and `exp`.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use actors::model::unix_now;
use actors::org_id::OrgId;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::startup::AppState;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub org: String,
    pub exp: u64,
}

pub fn issue_token(secret: &str, org: &str, ttl_secs: u64) -> String {
    let claims = Claims {
        org: org.to_owned(),
        exp: unix_now() + ttl_secs,
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// The caller a token names, once its signature, expiry and org id are checked.
pub fn verify_token(secret: &str, token: &str) -> Result<Caller, ApiError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp"]);
    let claims = decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .map_err(|e| ApiError::Unauthorized(format!("invalid access token: {e}")))?
    .claims;
    // RFC 7519: a token must not be accepted on or after its `exp`;
    // jsonwebtoken only refuses `exp < now`.
    if claims.exp <= unix_now() {
        return Err(ApiError::Unauthorized(
            "the access token has expired".into(),
        ));
    }
    let org_id = OrgId::parse(&claims.org).map_err(|_| {
        ApiError::Unauthorized("the token's org claim is not a valid org id".into())
    })?;
    Ok(Caller {
        org_id,
        expires_at: claims.exp,
    })
}

/// The caller's org, from `Authorization: Bearer <jwt>`.
pub struct Caller {
    pub org_id: OrgId,
    pub expires_at: u64,
}

/// The stream's caller: the header, or `?access_token=` since EventSource
/// cannot set headers.
pub struct StreamCaller(pub Caller);

fn bearer(req: &HttpRequest) -> Option<&str> {
    bearer_token(
        req.headers()
            .get(actix_web::http::header::AUTHORIZATION)?
            .to_str()
            .ok()?,
    )
}

/// The token of an `Authorization` header value, `Bearer <token>`.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    authorization.strip_prefix("Bearer ")
}

fn authenticate(req: &HttpRequest, token: Option<&str>) -> Result<Caller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered");
    let token = token.ok_or_else(|| ApiError::Unauthorized("missing access token".into()))?;
    verify_token(state.settings.auth.jwt_secret.expose(), token)
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req, bearer(req)))
    }
}

#[derive(Deserialize)]
struct AccessTokenQuery {
    access_token: String,
}

impl FromRequest for StreamCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let query = web::Query::<AccessTokenQuery>::from_query(req.query_string()).ok();
        let token = bearer(req).or(query.as_ref().map(|q| q.access_token.as_str()));
        ready(authenticate(req, token).map(StreamCaller))
    }
}
