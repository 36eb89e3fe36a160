"""An HTTP face for every live backend: ``de-magic gateway`` (docs/gateway.md).

Modules: :mod:`.app` (the Tornado routes), :mod:`.calls` (the gateway as a JSON-only de-magic
client), :mod:`.catalog` (the live listing and argument checks), :mod:`.openapi`,
:mod:`.problems` (RFC 9457 errors), :mod:`.tokens`, :mod:`.jobs` (job documents and SSE),
:mod:`.config` (the ``[gateway]`` table of the config file).
"""
