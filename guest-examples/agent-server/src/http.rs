//! A small blocking HTTP client over `wasi:http/outgoing-handler` (the
//! `wasi` crate's bindings), and how HTTP answers become the host's errors.

use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use wasi::io::streams::StreamError;

use crate::plan::ServerUrl;
use automation_plugin::Error;

/// Connect timeout of every request.
const CONNECT_TIMEOUT_NS: u64 = 5_000_000_000;
/// First-byte and between-bytes timeouts. An upload's answer comes after the
/// whole body and a stop request takes up to ~2 s on the agent-server; the
/// host bounds each request to 30 s and each executor call to 30 s anyway.
const READ_TIMEOUT_NS: u64 = 20_000_000_000;
/// The largest answer read (one output event holds up to 1 Mi characters,
/// which JSON escaping can grow several times).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// An answer: status and body.
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// True for 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A client for one agent-server.
pub struct Client<'a> {
    url: &'a ServerUrl,
    session_api_key: Option<&'a str>,
}

impl<'a> Client<'a> {
    /// A client for `url`, sending the session key if there is one.
    pub fn new(url: &'a ServerUrl, session_api_key: Option<&'a str>) -> Client<'a> {
        Client { url, session_api_key }
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Result<Response, Error> {
        self.send(Method::Get, path, None, &[])
    }

    /// `POST path` with a JSON body.
    pub fn post_json(&self, path: &str, json: &str) -> Result<Response, Error> {
        self.send(Method::Post, path, Some("application/json"), json.as_bytes())
    }

    /// `POST path` with a body of the given content type.
    pub fn post(&self, path: &str, content_type: &str, body: &[u8]) -> Result<Response, Error> {
        self.send(Method::Post, path, Some(content_type), body)
    }

    fn send(&self, method: Method, api_path: &str, content_type: Option<&str>, body: &[u8]) -> Result<Response, Error> {
        let mut headers: Vec<(String, Vec<u8>)> = vec![("accept".to_owned(), b"application/json".to_vec())];
        if let Some(ct) = content_type {
            headers.push(("content-type".to_owned(), ct.as_bytes().to_vec()));
        }
        if matches!(method, Method::Post) {
            headers.push(("content-length".to_owned(), body.len().to_string().into_bytes()));
        }
        if let Some(key) = self.session_api_key {
            headers.push(("x-session-api-key".to_owned(), key.as_bytes().to_vec()));
        }
        let fields =
            Fields::from_list(&headers).map_err(|e| Error::Internal(format!("cannot build request headers: {e:?}")))?;
        let request = OutgoingRequest::new(fields);
        let path = self.url.path(api_path);
        let scheme = if self.url.https { Scheme::Https } else { Scheme::Http };
        request.set_method(&method).map_err(|()| Error::Internal("cannot set the request method".to_owned()))?;
        request.set_scheme(Some(&scheme)).map_err(|()| Error::Internal("cannot set the request scheme".to_owned()))?;
        request
            .set_authority(Some(&self.url.authority))
            .map_err(|()| Error::InvalidInput(format!("bad agent-server address {:?}", self.url.authority)))?;
        request.set_path_with_query(Some(&path)).map_err(|()| Error::Internal(format!("bad request path {path:?}")))?;
        let outgoing_body = request.body().map_err(|()| Error::Internal("cannot open the request body".to_owned()))?;

        let options = RequestOptions::new();
        // A host may not support every timeout; the defaults apply then.
        let _ = options.set_connect_timeout(Some(CONNECT_TIMEOUT_NS));
        let _ = options.set_first_byte_timeout(Some(READ_TIMEOUT_NS));
        let _ = options.set_between_bytes_timeout(Some(READ_TIMEOUT_NS));

        let what = format!("{} {path}", if matches!(method, Method::Post) { "POST" } else { "GET" });
        // Send first, then stream the body: the host's body pipe is bounded,
        // so a large body written before `handle` could block for ever.
        let future = outgoing_handler::handle(request, Some(options))
            .map_err(|e| transport_error(&what, &self.url.authority, e))?;
        let write_error = write_body(outgoing_body, body).err();

        let response = loop {
            match future.get() {
                Some(r) => break r,
                None => future.subscribe().block(),
            }
        };
        let response = response
            .map_err(|()| Error::Internal(format!("{what}: the response was already taken")))?
            .map_err(|e| transport_error(&what, &self.url.authority, e))?;
        let status = response.status();
        let incoming = response.consume().map_err(|()| Error::Internal(format!("{what}: no response body")))?;
        let body = read_body(&incoming, &what)?;
        drop(IncomingBody::finish(incoming));
        drop(response);
        if let Some(e) = write_error
            && (200..300).contains(&status)
        {
            return Err(Error::Unavailable(format!("{what}: sending the request body failed: {e}")));
        }
        Ok(Response { status, body })
    }
}

/// Writes the whole body, honouring the stream's write budget, then finishes it.
fn write_body(outgoing: OutgoingBody, mut body: &[u8]) -> Result<(), String> {
    {
        let stream = outgoing.write().map_err(|()| "cannot open the request body stream".to_owned())?;
        let pollable = stream.subscribe();
        while !body.is_empty() {
            pollable.block();
            let budget = stream.check_write().map_err(stream_error)?;
            let n = body.len().min(usize::try_from(budget).unwrap_or(usize::MAX));
            if n == 0 {
                continue;
            }
            let (chunk, rest) = body.split_at(n);
            stream.write(chunk).map_err(stream_error)?;
            body = rest;
        }
        // Every byte is handed over; a stream the host closed once it had
        // the whole (content-length) body is not an error.
        match stream.blocking_flush() {
            Ok(()) | Err(StreamError::Closed) => {}
            Err(e) => return Err(stream_error(e)),
        }
    }
    OutgoingBody::finish(outgoing, None).map_err(|e| format!("{e:?}"))
}

fn read_body(incoming: &IncomingBody, what: &str) -> Result<Vec<u8>, Error> {
    let stream = incoming.stream().map_err(|()| Error::Internal(format!("{what}: cannot open the response body")))?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(256 * 1024) {
            Ok(bytes) => {
                out.extend_from_slice(&bytes);
                if out.len() > MAX_RESPONSE_BYTES {
                    return Err(Error::Internal(format!(
                        "{what}: the answer is larger than {MAX_RESPONSE_BYTES} bytes"
                    )));
                }
            }
            Err(StreamError::Closed) => return Ok(out),
            Err(e) => {
                return Err(Error::Unavailable(format!("{what}: reading the answer failed: {}", stream_error(e))));
            }
        }
    }
}

fn stream_error(e: StreamError) -> String {
    match e {
        StreamError::Closed => "the stream was closed".to_owned(),
        StreamError::LastOperationFailed(e) => e.to_debug_string(),
    }
}

/// A request that got no HTTP answer. A refused host is `denied` (the
/// operator grants hosts); anything else is `unavailable` (the host retries).
fn transport_error(what: &str, authority: &str, e: ErrorCode) -> Error {
    match e {
        ErrorCode::HttpRequestDenied => Error::Denied(format!(
            "{what}: the host refused the request to {authority}; grant it with AUTOMATION_PLUGIN_GRANTS=\"agent-server=http:<host>\""
        )),
        other => Error::Unavailable(format!("{what}: the agent-server at {authority} did not answer: {other:?}")),
    }
}

/// The error for an HTTP answer that is not a success.
///
/// 408, 429 and 5xx are `unavailable` (retried); 401 and 403 mean a wrong or
/// missing `session_api_key` (`invalid-input`); other 4xx are `internal`
/// (this plugin asked for something the agent-server refused), with the
/// answer's text.
pub fn status_error(what: &str, status: u16, body: &str) -> Error {
    let text = excerpt(body);
    match status {
        408 | 429 | 500..=599 => Error::Unavailable(format!("{what}: the agent-server answered {status}: {text}")),
        401 | 403 => Error::InvalidInput(format!(
            "{what}: the agent-server refused the session key ({status}); check session_api_key in the executor config"
        )),
        _ => Error::Internal(format!("{what}: the agent-server answered {status}: {text}")),
    }
}

fn excerpt(body: &str) -> String {
    const MAX: usize = 500;
    let body = body.trim();
    if body.len() <= MAX {
        return body.to_owned();
    }
    let mut end = MAX;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &body[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_errors() {
        assert!(matches!(status_error("GET /x", 503, "busy"), Error::Unavailable(m) if m.contains("503: busy")));
        assert!(matches!(status_error("GET /x", 429, ""), Error::Unavailable(_)));
        assert!(matches!(status_error("GET /x", 408, ""), Error::Unavailable(_)));
        assert!(
            matches!(status_error("GET /x", 401, r#"{"detail":"Unauthorized"}"#), Error::InvalidInput(m) if m.contains("session_api_key"))
        );
        assert!(matches!(status_error("GET /x", 403, ""), Error::InvalidInput(_)));
        assert!(
            matches!(status_error("POST /u", 400, r#"{"detail":"Path must be absolute"}"#), Error::Internal(m) if m.contains("Path must be absolute"))
        );
        let long = "é".repeat(400);
        assert!(
            matches!(status_error("GET /x", 422, &long), Error::Internal(m) if m.ends_with("...") && m.len() < 600)
        );
    }
}
