"""The wire: what every side shares and nothing else.

The protocol (messages, built and parsed without I/O), framing (multipart I/O
on sockets), codecs (pickle-5 frames, tagged JSON), errors, defaults, keys and
the CURVE handshake.  It imports no other part of de-magic.
"""
