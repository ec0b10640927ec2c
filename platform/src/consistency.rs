//! The consistency token, the one contract between a command's answer and a read that wants to
//! see it: `X-Consistency-Token: <stream id>@<version>`, several joined by `;`. The command API
//! formats it, the query API parses it and waits until its view holds each stream at least at
//! that version; both go through [`ConsistencyToken`].

use std::fmt;

use axum::http::HeaderMap;
use uuid::Uuid;

/// The header a command answers with and a read sends back.
pub const HEADER: &str = "x-consistency-token";

/// One stream at a version: `cart-<uuid>@3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Awaited {
    pub stream_type: String,
    pub id: Uuid,
    pub version: u64,
}

impl Awaited {
    /// The event stream this names: `<type>-<uuid>`.
    pub fn stream_id(&self) -> String {
        format!("{}-{}", self.stream_type, self.id)
    }
}

/// Streams at the versions a command left them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsistencyToken(Vec<Awaited>);

/// A header value that is not a token a command answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("X-Consistency-Token must be what a command answered, e.g. cart-<uuid>@3")]
pub struct InvalidToken;

impl ConsistencyToken {
    /// The token for streams (ids `<type>-<uuid>`) at versions, in the order given.
    pub fn for_streams<'a>(streams: impl IntoIterator<Item = (&'a str, u64)>) -> Self {
        Self(
            streams
                .into_iter()
                // Every event stream id is `<type>-<uuid>`; anything else could not be read
                // back, so it is not named.
                .filter_map(|(stream_id, version)| {
                    let (stream_type, id) = split_stream_id(stream_id)?;
                    Some(Awaited {
                        stream_type: stream_type.to_owned(),
                        id,
                        version,
                    })
                })
                .collect(),
        )
    }

    /// Parses a header value; empty parts are ignored.
    pub fn parse(text: &str) -> Result<Self, InvalidToken> {
        text.split(';')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|token| {
                let (stream, version) = token.rsplit_once('@').ok_or(InvalidToken)?;
                let (stream_type, id) = split_stream_id(stream).ok_or(InvalidToken)?;
                Ok(Awaited {
                    stream_type: stream_type.to_owned(),
                    id,
                    version: version.parse().map_err(|_| InvalidToken)?,
                })
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// The token a request sent; none is an empty token.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, InvalidToken> {
        match headers.get(HEADER) {
            None => Ok(Self::default()),
            Some(raw) => Self::parse(raw.to_str().map_err(|_| InvalidToken)?),
        }
    }

    pub fn streams(&self) -> &[Awaited] {
        &self.0
    }
}

impl fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(";")?;
            }
            write!(f, "{}@{}", a.stream_id(), a.version)?;
        }
        Ok(())
    }
}

/// `cart-<uuid>` → (`cart`, uuid). The type is everything before the first dash.
fn split_stream_id(stream_id: &str) -> Option<(&str, Uuid)> {
    let (stream_type, id) = stream_id.split_once('-')?;
    if stream_type.is_empty() {
        return None;
    }
    Some((stream_type, Uuid::parse_str(id).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_formatted_token_parses_back() {
        let (cart, order) = (Uuid::new_v4(), Uuid::new_v4());
        let token = ConsistencyToken::for_streams([
            (format!("cart-{cart}").as_str(), 3),
            (format!("order-{order}").as_str(), 1),
        ]);
        let text = token.to_string();
        assert_eq!(text, format!("cart-{cart}@3;order-{order}@1"));
        assert_eq!(ConsistencyToken::parse(&text), Ok(token));
    }

    #[test]
    fn spaces_and_empty_parts_are_tolerated() {
        let id = Uuid::new_v4();
        let token = ConsistencyToken::parse(&format!(" cart-{id}@3 ; ;")).unwrap();
        assert_eq!(
            token.streams(),
            [Awaited {
                stream_type: "cart".into(),
                id,
                version: 3
            }]
        );
        assert_eq!(ConsistencyToken::parse(""), Ok(ConsistencyToken::default()));
    }

    #[test]
    fn garbage_is_refused() {
        let id = Uuid::new_v4();
        for bad in [
            "cart".to_owned(),
            "cart-x@1".to_owned(),
            format!("cart-{id}@"),
            format!("cart-{id}@-1"),
            format!("-{id}@1"),
            "@3".to_owned(),
        ] {
            assert_eq!(ConsistencyToken::parse(&bad), Err(InvalidToken), "{bad}");
        }
    }

    #[test]
    fn a_stream_id_that_cannot_be_read_back_is_not_named() {
        let token = ConsistencyToken::for_streams([("not-a-uuid", 1)]);
        assert!(token.streams().is_empty());
    }
}
