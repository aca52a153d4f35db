//! The one error type of the HTTP surfaces: each variant is a Matrix outcome with its
//! status and errcode, and `handle_rejection` turns it (and warp's own rejections) into
//! `{"errcode", "error"}` JSON.

use std::borrow::Cow;
use std::convert::Infallible;

use serde_json::json;

use crate::http_client::BodyError;
use crate::store::StoreError;
use warp::http::StatusCode;
use warp::reject::Rejection;
use warp::reply::{Reply, Response};

/// A request that ends in a Matrix error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// 403 `M_MISSING_TOKEN`.
    #[error("{0}")]
    MissingToken(&'static str),
    /// 403 `M_UNKNOWN_TOKEN`: a token that matches nothing.
    #[error("{0}")]
    UnknownToken(&'static str),
    /// 401 `M_UNKNOWN_TOKEN`: the homeserver presented a wrong hs_token.
    #[error("Invalid auth token")]
    BadHomeserverToken,
    /// 401 `M_UNAUTHORIZED`: a valid caller asking for something that is not theirs.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// 403 `M_FORBIDDEN`.
    #[error("{0}")]
    Forbidden(Cow<'static, str>),
    /// 404 `M_NOT_FOUND`.
    #[error("{0}")]
    NotFound(&'static str),
    /// 400 `M_BAD_REQUEST`.
    #[error("{0}")]
    BadRequest(Cow<'static, str>),
    /// 400 `M_NOT_JSON`.
    #[error("{0}")]
    NotJson(String),
    /// 400 `M_BAD_JSON`.
    #[error("{0}")]
    BadJson(String),
    /// 400 `M_INVALID_PARAM`: a path or query parameter that cannot be read one way.
    #[error("{0}")]
    InvalidParam(Cow<'static, str>),
    /// 404 `M_UNRECOGNIZED`: no such route.
    #[error("Unrecognized request")]
    UnknownRoute,
    /// 405 `M_UNRECOGNIZED`: the route exists, the method does not.
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// 413 `M_TOO_LARGE`.
    #[error("Request body too large")]
    TooLarge,
    /// 502 `M_BAD_GATEWAY`.
    #[error("Failed to contact homeserver")]
    BadGateway,
    /// 500 `M_UNKNOWN`: details are logged where this is made, never sent.
    #[error("Internal server error")]
    Internal,
    /// A non-standard errcode of the original asmux (`COM.BEEPER.*`, `FI.MAU.*`, ...).
    #[error("{message}")]
    Custom {
        status: StatusCode,
        errcode: &'static str,
        message: String,
    },
}

impl Error {
    pub fn status(&self) -> StatusCode {
        use Error::*;
        match self {
            MissingToken(_) | UnknownToken(_) | Forbidden(_) => StatusCode::FORBIDDEN,
            BadHomeserverToken | Unauthorized(_) => StatusCode::UNAUTHORIZED,
            NotFound(_) | UnknownRoute => StatusCode::NOT_FOUND,
            BadRequest(_) | NotJson(_) | BadJson(_) | InvalidParam(_) => StatusCode::BAD_REQUEST,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BadGateway => StatusCode::BAD_GATEWAY,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Custom { status, .. } => *status,
        }
    }

    pub fn errcode(&self) -> &'static str {
        use Error::*;
        match self {
            MissingToken(_) => "M_MISSING_TOKEN",
            UnknownToken(_) | BadHomeserverToken => "M_UNKNOWN_TOKEN",
            Unauthorized(_) => "M_UNAUTHORIZED",
            Forbidden(_) => "M_FORBIDDEN",
            NotFound(_) => "M_NOT_FOUND",
            BadRequest(_) => "M_BAD_REQUEST",
            NotJson(_) => "M_NOT_JSON",
            BadJson(_) => "M_BAD_JSON",
            InvalidParam(_) => "M_INVALID_PARAM",
            UnknownRoute | MethodNotAllowed => "M_UNRECOGNIZED",
            TooLarge => "M_TOO_LARGE",
            BadGateway => "M_BAD_GATEWAY",
            Internal => "M_UNKNOWN",
            Custom { errcode, .. } => errcode,
        }
    }

    /// Logs `err` with its context and returns the opaque 500 sent to the client.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Error {
        tracing::error!(error = %err, "{context}");
        Error::Internal
    }
}

/// A store failure is logged where it happens and answered as the opaque 500; a full
/// disk is said plainly (507), since the operator can act on it.
impl From<StoreError> for Error {
    fn from(err: StoreError) -> Error {
        match err {
            StoreError::DiskFull => Error::Custom {
                status: StatusCode::INSUFFICIENT_STORAGE,
                errcode: "M_UNKNOWN",
                message: "The disk holding asmux's data is full; retry when space is freed".into(),
            },
            err => Error::internal("store failure", err),
        }
    }
}

impl From<BodyError> for Error {
    fn from(err: BodyError) -> Error {
        match err {
            BodyError::TooLarge => Error::TooLarge,
            BodyError::Unreadable => Error::BadRequest("Unreadable request body".into()),
        }
    }
}

impl warp::reject::Reject for Error {}

impl Reply for Error {
    fn into_response(self) -> Response {
        let body = json!({"errcode": self.errcode(), "error": self.to_string()});
        warp::reply::with_status(warp::reply::json(&body), self.status()).into_response()
    }
}

/// The one rejection handler: every rejection becomes Matrix error JSON.
pub async fn handle_rejection(rejection: Rejection) -> Result<Response, Infallible> {
    Ok(rejection_to_error(&rejection).into_response())
}

fn rejection_to_error(rejection: &Rejection) -> Error {
    if let Some(err) = rejection.find::<Error>() {
        return err.clone();
    }
    if rejection.is_not_found() {
        Error::UnknownRoute
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        Error::MethodNotAllowed
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        Error::TooLarge
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        Error::NotJson(e.to_string())
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        Error::BadRequest("Content-Length required".into())
    } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
        Error::BadRequest("Invalid query string".into())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        Error::BadRequest(e.to_string().into())
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        Error::NotJson("Unsupported media type".into())
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        Error::Internal
    }
}
