//! Reading request bodies with a size limit, whether or not a Content-Length was sent.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::TryStreamExt;
use serde::de::DeserializeOwned;
use warp::{Filter, Rejection};

use crate::error::Error;

/// The whole body, refused with 413 `M_TOO_LARGE` past `limit` bytes.
pub fn limited(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .and_then(move |declared: Option<u64>, stream| read(declared, stream, limit))
}

async fn read(
    declared: Option<u64>,
    stream: impl futures_util::Stream<Item = Result<impl Buf, warp::Error>>,
    limit: u64,
) -> Result<Bytes, Rejection> {
    if declared.is_some_and(|n| n > limit) {
        return Err(warp::reject::custom(Error::TooLarge));
    }
    let mut body = BytesMut::new();
    let mut stream = std::pin::pin!(stream);
    while let Some(chunk) = stream
        .try_next()
        .await
        .map_err(|_| warp::reject::custom(Error::BadRequest("Unreadable request body".into())))?
    {
        if body.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(warp::reject::custom(Error::TooLarge));
        }
        body.put(chunk);
    }
    Ok(body.freeze())
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
