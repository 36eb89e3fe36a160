"""The ``call`` operation: the member a call header names, called with the caller's arguments.

Arguments come pickled (unpickled with the worker's references in place: :mod:`.refs`) or, from a
caller that unpickles nothing, as JSON validated against the member's signature; a no-pickle backend
takes JSON only, refused before anything is unpickled (unpickling alone can run code).
"""

from __future__ import annotations

from typing import Callable

from ..schema.arguments import check_arguments, validate_arguments
from ..wire import serialize
from ..wire.errors import Refused, UnknownMethod
from .callcontext import Call
from .failure import checking_arguments


class MemberCalls:
    """Calls of ``members`` (name -> function or class), as ``api`` describes them."""

    def __init__(self, name: str, members: dict[str, object], api: dict, codec: str, refs):
        self.name, self.members, self.api, self.codec, self.refs = name, members, api, codec, refs
        #: Runs a member once its arguments are checked: here by default; a Dask pool runs it on a cluster.
        self.invoke: Callable[[Callable, tuple, dict], object] = _invoke_here

    def resolve(self, header: dict) -> Callable:
        """The callable a call header names: a function, or a class's method."""
        name = header.get("member", "")
        member = self.members.get(name)
        if member is None:
            raise UnknownMethod(
                f"backend {self.name!r} has no member {name!r}; it has: {', '.join(sorted(self.members)) or 'nothing'}")
        method = header.get("method")
        if method is None:
            if isinstance(member, type):
                raise UnknownMethod(f"{name} is a class; call one of its methods: "
                                    + ", ".join(self.api["members"][name].get("methods", {})))
            return member
        if method not in self.api["members"][name].get("methods", {}):
            raise UnknownMethod(f"class {name!r} of backend {self.name!r} has no public method {method!r}; "
                                f"it has: {', '.join(self.api['members'][name].get('methods', {}))}")
        return getattr(member, method)

    def call(self, call: Call):
        """The ``call`` operation."""
        target = self.resolve(call.header)
        if call.header.get("codec") == serialize.JSON:
            return self._call_json(target, call)
        if self.codec == serialize.JSON:
            # refused before anything is unpickled: unpickling alone can run code
            raise Refused(f"backend {self.name!r} takes no pickles (no-pickle mode): send JSON arguments")
        args, kwargs, *init = serialize.loads(call.payload, self.refs.loader(call))
        if init:
            cls = self.members[call.header["member"]]
            check_arguments(cls, *init)
            target = getattr(cls(*init[0], **init[1]), call.header["method"])
        check_arguments(target, args, kwargs)
        return self.invoke(target, args, kwargs)

    def _call_json(self, target: Callable, call: Call):
        """A call whose arguments came as JSON: ``[args, kwargs]`` or ``[args, kwargs, init_args, init_kwargs]``."""
        with checking_arguments():
            body = serialize.loads_json(call.payload)
            if not (isinstance(body, list) and len(body) in (2, 4) and all(
                    isinstance(part, list if i % 2 == 0 else dict) for i, part in enumerate(body))):
                raise TypeError("JSON arguments must be [args, kwargs] or [args, kwargs, init_args, init_kwargs]")
            args, kwargs, *init = body
            if init:
                cls = self.members[call.header["member"]]
                init_args, init_kwargs = validate_arguments(cls, tuple(init[0]), init[1])
        if init:  # the constructor is the member's own code: its errors are its own
            target = getattr(cls(*init_args, **init_kwargs), call.header["method"])
        with checking_arguments():
            args, kwargs = validate_arguments(target, tuple(args), kwargs)
        return self.invoke(target, args, kwargs)


def _invoke_here(target: Callable, args: tuple, kwargs: dict):
    return target(*args, **kwargs)
