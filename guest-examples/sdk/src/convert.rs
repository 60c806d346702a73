//! This crate's types to and from each world's generated WIT types: the
//! only place they meet. Every world has its own copy of the shared types
//! (`error`, `plugin-info`, `bundle`...), so the conversions are written
//! once and stamped out per world.

use crate::{Datetime, Error, Info};

macro_rules! shared {
    ($($world:ident),*) => {$(
        impl From<Error> for crate::__wit::$world::automation::plugin::types::Error {
            fn from(e: Error) -> Self {
                use crate::__wit::$world::automation::plugin::types::Error as W;
                match e {
                    Error::InvalidInput(m) => W::InvalidInput(m),
                    Error::Denied(m) => W::Denied(m),
                    Error::Unavailable(m) => W::Unavailable(m),
                    Error::NotFound(m) => W::NotFound(m),
                    Error::Internal(m) => W::Internal(m),
                }
            }
        }

        impl From<crate::__wit::$world::automation::plugin::types::Error> for Error {
            fn from(e: crate::__wit::$world::automation::plugin::types::Error) -> Self {
                use crate::__wit::$world::automation::plugin::types::Error as W;
                match e {
                    W::InvalidInput(m) => Error::InvalidInput(m),
                    W::Denied(m) => Error::Denied(m),
                    W::Unavailable(m) => Error::Unavailable(m),
                    W::NotFound(m) => Error::NotFound(m),
                    W::Internal(m) => Error::Internal(m),
                }
            }
        }

        impl From<crate::__wit::$world::automation::plugin::types::Datetime> for Datetime {
            fn from(t: crate::__wit::$world::automation::plugin::types::Datetime) -> Self {
                Datetime { seconds: t.seconds, nanoseconds: t.nanoseconds }
            }
        }
    )*};
}

shared!(filter, preset, executor, source);

macro_rules! info {
    ($($world:ident),*) => {$(
        impl From<Info> for crate::__wit::$world::automation::plugin::types::PluginInfo {
            fn from(i: Info) -> Self {
                Self { name: i.name, version: i.version, description: i.description, config_schema: i.config_schema }
            }
        }
    )*};
}

info!(preset, executor, source);

macro_rules! bundle {
    ($($world:ident),*) => {$(
        impl From<crate::preset::Bundle> for crate::__wit::$world::automation::plugin::types::Bundle {
            fn from(b: crate::preset::Bundle) -> Self {
                use crate::__wit::$world::automation::plugin::types::File;
                Self {
                    archive: b.archive,
                    files: b
                        .files
                        .into_iter()
                        .map(|f| File { path: f.path, mode: f.mode, contents: f.contents })
                        .collect(),
                    entrypoint: b.entrypoint,
                    env: b.env,
                }
            }
        }

        impl From<crate::__wit::$world::automation::plugin::types::Bundle> for crate::preset::Bundle {
            fn from(b: crate::__wit::$world::automation::plugin::types::Bundle) -> Self {
                crate::preset::Bundle {
                    archive: b.archive,
                    files: b
                        .files
                        .into_iter()
                        .map(|f| crate::preset::File { path: f.path, mode: f.mode, contents: f.contents })
                        .collect(),
                    entrypoint: b.entrypoint,
                    env: b.env,
                }
            }
        }
    )*};
}

bundle!(preset, executor);
