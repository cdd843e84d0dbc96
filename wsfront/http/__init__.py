"""wsfront's HTTP front end: protocol helpers that need no transfer layer.

``ranges`` (Range, Content-Range, multipart/byteranges) and ``conditional``
(If-* preconditions, HTTP dates) are pure functions the HTTP adapter calls.
"""
