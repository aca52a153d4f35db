//! Reading request bodies with a size limit, whether or not a Content-Length was sent.

use bytes::{Buf, Bytes};
use futures_util::TryStreamExt;
use http_body::Frame;
use http_body_util::StreamBody;
use serde::de::DeserializeOwned;
use warp::{Filter, Rejection};

use crate::error::Error;
use crate::http_client::collect_limited;

/// The whole body, refused with 413 `M_TOO_LARGE` past `limit` bytes: at once when the
/// Content-Length says so, else as soon as that many bytes arrived.
pub fn limited(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |declared: Option<u64>, stream| read(declared, stream, limit))
}

async fn read(
    declared: Option<u64>,
    stream: impl futures_util::Stream<Item = Result<impl Buf, warp::Error>> + Send,
    limit: u64,
) -> Result<Bytes, Rejection> {
    if declared.is_some_and(|n| n > limit) {
        return Err(warp::reject::custom(Error::TooLarge));
    }
    let frames = stream.map_ok(|mut chunk| Frame::data(chunk.copy_to_bytes(chunk.remaining())));
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    collect_limited(StreamBody::new(Box::pin(frames)), limit)
        .await
        .map_err(|e| warp::reject::custom(Error::from(e)))
}

/// Parses a JSON body; an empty body reads as `{}`, anything unparsable is 400
/// `M_NOT_JSON` and a well-formed body of the wrong shape 400 `M_BAD_JSON`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| Error::NotJson("Request body is not JSON".into()))?;
    serde_json::from_value(value).map_err(|e| Error::BadJson(format!("Invalid request body: {e}")))
}
