"""Schemathesis hooks for the description check (tests/it/openapi.rs).

The bundle upload (application/gzip) and plugin upload (application/wasm)
bodies are bytes; schemathesis has no serializer for those media types,
so it is told to send generated binary values as they are. The server
then refuses what is not a real archive or component, with the 4xx the
description lists.
"""

import schemathesis
from schemathesis.transport.serialization import serialize_binary


@schemathesis.serializer("application/gzip", "application/wasm")
def binary(ctx, value):
    return serialize_binary(value)
