//! Sources (since WIT 0.2.0): verify and read one webhook provider's
//! requests, so a provider is added without rebuilding the host.

use crate::{Error, Info};

/// A webhook request as the host received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Header names in lower case with their values, in the order received.
    pub headers: Vec<(String, String)>,
    /// The raw body (signatures are over these bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of a header (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim())
    }
}

/// What the host does with a verified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Store a delivery and match it against automations.
    Deliver {
        /// The event key (`Issue.create`); `None` stores it as unrecognized.
        key: Option<String>,
        /// The sender's delivery id, for dedup.
        delivery_id: Option<String>,
        /// The payload to store (JSON text of an object); `None` stores the
        /// body as it came.
        payload: Option<String>,
    },
    /// Answer the sender with this (2xx, `text/plain` or
    /// `application/json`, at most 64 KiB) and store nothing.
    Reply {
        /// The status, 200 to 299.
        status: u16,
        /// The content type.
        content_type: String,
        /// The body.
        body: String,
    },
}

/// A source plugin.
pub trait Source {
    /// Name, version and description.
    fn describe() -> Info;
    /// Verifies a request with the source's secret and reads it.
    /// `Error::Denied` answers 401 (bad signature, stale timestamp),
    /// `Error::InvalidInput` 400; nothing is stored either way.
    fn verify(request: &Request, secret: &str) -> Result<Outcome, Error>;
}

mod wit {
    pub(super) use crate::__wit::source::automation::plugin::types::{Error, PluginInfo};
    pub(super) use crate::__wit::source::exports::automation::plugin::source::{Delivery, Outcome, Reply, Request};
}

#[doc(hidden)]
pub fn __describe<S: Source>() -> wit::PluginInfo {
    S::describe().into()
}

#[doc(hidden)]
pub fn __verify<S: Source>(request: wit::Request, secret: String) -> Result<wit::Outcome, wit::Error> {
    let request = Request { headers: request.headers, body: request.body };
    match S::verify(&request, &secret)? {
        Outcome::Deliver { key, delivery_id, payload } => {
            Ok(wit::Outcome::Deliver(wit::Delivery { key, delivery_id, payload }))
        }
        Outcome::Reply { status, content_type, body } => {
            Ok(wit::Outcome::Reply(wit::Reply { status, content_type, body }))
        }
    }
}

/// Exports a [`Source`]: `automation_plugin::export_source!(MySource);`.
#[macro_export]
macro_rules! export_source {
    ($source:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__wit::source::automation::plugin::types as __t;
            use $crate::__wit::source::exports::automation::plugin::source as __s;
            struct __AutomationPluginSource;
            impl __s::Guest for __AutomationPluginSource {
                fn describe() -> __t::PluginInfo {
                    $crate::source::__describe::<$source>()
                }
                fn verify(
                    request: __s::Request,
                    secret: ::std::string::String,
                ) -> ::core::result::Result<__s::Outcome, __t::Error> {
            $crate::source::__verify::<$source>(request, secret)
                }
            }
            $crate::__wit::source::__export_source_world!(__AutomationPluginSource with_types_in $crate::__wit::source);
        };
    };
}
