//! Makes `/openapi.json` say what the server does beyond what each route
//! declares: the answers every keyed route can give (401 without a valid
//! key, 403 without the scope, 503 while the database cannot be written or
//! read), 400 for unreadable parameters and bodies, 413 and 422 for bodies,
//! and the bounds and formats of the shared query parameters. Checked by
//! schemathesis against the running server (`tests/it/openapi.rs`).

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, Schema, SchemaFormat};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Required, ResponseBuilder};

/// Adds the common answers and parameter constraints to every operation.
pub(super) fn describe_common(spec: &mut OpenApi) {
    for (route, item) in spec.paths.paths.iter_mut() {
        let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for op in ops.into_iter().flatten() {
            describe_operation(route, op);
        }
    }
}

fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
            .build(),
    )
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses.responses.entry(status.to_owned()).or_insert_with(|| error(description));
}

fn describe_operation(route: &str, op: &mut Operation) {
    if op.security.is_some() {
        add(op, "401", "no valid API key (missing, malformed, unknown, revoked or expired)");
        add(op, "403", "the key lacks the scope this operation needs (named in the answer)");
    }
    if route.starts_with("/v1/") {
        add(op, "503", "the database cannot be reached or written now; nothing changed (retry)");
    }
    let has_params = op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    if has_params || op.request_body.is_some() {
        add(op, "400", "an unreadable parameter or body (malformed JSON, a bad id, value or cursor)");
    }
    if op.request_body.is_some() {
        add(op, "413", "the body is larger than the server takes");
        add(op, "422", "well-formed but invalid content; the detail names the field");
    }
    for p in op.parameters.iter_mut().flatten() {
        let Some(RefOr::T(Schema::Object(schema))) = p.schema.as_mut() else { continue };
        match (p.parameter_in.clone(), p.name.as_str()) {
            (ParameterIn::Query, "limit") => {
                let most = if route.ends_with("/slots") { 1000 } else { 100 };
                schema.minimum = Some(utoipa::Number::UInt(1));
                schema.maximum = Some(utoipa::Number::UInt(most));
            }
            (ParameterIn::Query, "count") => {
                schema.minimum = Some(utoipa::Number::UInt(1));
                schema.maximum = Some(utoipa::Number::UInt(100));
            }
            (ParameterIn::Query, "cursor" | "key_id") => {
                schema.format = Some(SchemaFormat::KnownFormat(KnownFormat::Uuid));
            }
            (ParameterIn::Query, "created_after" | "created_before" | "after") => {
                schema.format = Some(SchemaFormat::KnownFormat(KnownFormat::DateTime));
            }
            (ParameterIn::Query, "kind") if route == "/v1/plugins/{name}" => {
                p.required = Required::True;
                schema.enum_values = Some(["filter", "preset", "executor", "source"].map(Into::into).to_vec());
            }
            (ParameterIn::Query, "trigger") => {
                schema.enum_values = Some(["cron", "event", "manual"].map(Into::into).to_vec());
            }
            (ParameterIn::Query, "status") => {
                let all = crate::model::RunStatus::ALL.map(|s| s.as_str().into()).to_vec();
                schema.enum_values = Some(all);
            }
            (ParameterIn::Query, "name") if route == "/v1/uploads" => {
                schema.pattern = Some("^[^\\u0000-\\u001f\\u007f-\\u009f]{0,200}$".to_owned());
            }
            (ParameterIn::Query, "capabilities") => {
                schema.pattern = Some("^\\s*((kv|http|sandbox)\\s*(,\\s*(kv|http|sandbox)\\s*)*)?$".to_owned());
            }
            (ParameterIn::Header, "Idempotency-Key") => {
                schema.pattern = Some("^[!-~]{1,255}$".to_owned());
            }
            _ => {}
        }
    }
}
