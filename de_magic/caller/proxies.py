"""Proxies: remote backends, functions and classes that look and feel local.

``client["name"]`` is a :class:`RemoteBackend`; its members are real functions
(so ``help()`` and Tab show their signatures, rebuilt from the API
description) and real classes whose instances hold constructor arguments.
Every call goes through the :class:`~de_magic.caller.client.Client` that made
the proxy.
"""

from __future__ import annotations

import html
import inspect
from typing import TYPE_CHECKING, Callable

from ..schema.signatures import signature_from
from ..wire.errors import UnknownMethod
from .ui import hook as ui_hook

if TYPE_CHECKING:
    from .client import CallFuture, Client
    from .jobs import Job

#: The call options that apply to starting a job (a job has no timeout or retries of its own).
JOB_OPTIONS = frozenset({"method", "init", "on_progress"})


def _remote_function(client: Client, backend: str, entry: dict, qualname: str, **call_kw) -> Callable:
    """A real function (so ``help()`` and Tab show its signature) that calls the remote member."""
    member = call_kw.pop("member", entry["name"])

    def remote(*args, **kwargs):
        return client.call(backend, member, args, kwargs, **call_kw)

    def options(**more) -> Callable:
        """The same call with other ``timeout=``, ``on_progress=``, ``on_event=``, ``retries=`` (idempotent members),
        or ``keep=True``: the result stays on the backend, and the call returns a ``RemoteRef`` to it."""
        return _remote_function(client, backend, entry, qualname, member=member, **{**call_kw, **more})

    def submit(*args, **kwargs) -> CallFuture:
        """Start the call and return a future (also awaitable)."""
        return client.submit(backend, member, args, kwargs, **call_kw)

    def start(*args, **kwargs) -> Job:
        """Run the call as a job that outlives this process; returns its :class:`Job` at once (docs/jobs.md)."""
        return client.start(backend, member, args, kwargs, **{k: v for k, v in call_kw.items() if k in JOB_OPTIONS})

    def ui():
        """A form that makes this call, from the UI layer that registered one (the notebook's)."""
        form = ui_hook("form")  # the notebook layer registers its ipywidgets form
        if form is None:
            raise RuntimeError("call forms need the notebook layer: run `%load_ext de_magic` "
                               "or `import de_magic.notebook` first")
        return form(client, backend, entry, member=member, **call_kw)

    remote.__name__ = entry["name"]
    remote.__qualname__ = qualname
    remote.__doc__ = entry.get("doc") or None
    remote.__signature__ = signature_from(entry)
    remote.__module__ = f"de_magic.remote.{backend}"
    remote.options = options
    remote.submit = submit
    remote.start = start
    remote.ui = ui
    remote.api = entry
    return remote


class RemoteInstance:
    """Base of the classes made by :func:`remote_class`: an instance holds constructor arguments, and
    each method call builds the instance remotely with them."""

    def __getattr__(self, name: str):
        raise UnknownMethod(f"remote class {self._api['name']} has no method {name!r}; "
                            f"it has: {', '.join(self._api.get('methods', {}))}")

    def __dir__(self):
        return list(self._api.get("methods", {}))

    def __repr__(self) -> str:
        args = [repr(a) for a in self._init[0]] + [f"{k}={v!r}" for k, v in self._init[1].items()]
        return f"<remote {self._backend}.{self._api['name']}({', '.join(args)})>"


def _with_self(signature: inspect.Signature) -> inspect.Signature:
    params = list(signature.parameters.values())
    kind = params[0].kind if params and params[0].kind is inspect.Parameter.POSITIONAL_ONLY \
        else inspect.Parameter.POSITIONAL_OR_KEYWORD
    return signature.replace(parameters=[inspect.Parameter("self", kind), *params])


class _RemoteMethod:
    """A method of a remote class: on an instance, the remote call (with ``.submit``, ``.options``, ``.ui``)."""

    def __init__(self, class_name: str, entry: dict):
        self.entry = entry
        self.name = entry["name"]
        self.qualname = f"{class_name}.{entry['name']}"

    def __get__(self, instance: RemoteInstance | None, owner: type[RemoteInstance]):
        if instance is None:
            return self.unbound()
        return _remote_function(owner._client, owner._backend, self.entry, self.qualname,
                                member=owner._api["name"], method=self.name, init=instance._init)

    def unbound(self) -> Callable:
        """What the class shows (``help()`` lists it as a method): ``Class.method(instance, ...)`` calls it."""
        name = self.name

        def method(self, *args, **kwargs):
            return getattr(self, name)(*args, **kwargs)

        method.__name__, method.__qualname__ = name, self.qualname
        method.__doc__ = self.entry.get("doc") or None
        method.__signature__ = _with_self(signature_from(self.entry))
        return method


def remote_class(client: Client, backend: str, entry: dict) -> type[RemoteInstance]:
    """A class standing for a backend class: a real one, so that ``help()`` shows its constructor and methods."""
    signature = signature_from(entry)

    def __init__(self, *args, **kwargs):
        signature.bind(*args, **kwargs)  # wrong arguments fail here, not at the first call
        self._init = (args, kwargs)

    __init__.__signature__ = _with_self(signature)
    namespace = {"__doc__": entry.get("doc") or None, "__module__": f"de_magic.remote.{backend}",
                 "__init__": __init__, "_client": client, "_backend": backend, "_api": entry}
    namespace.update((key, _RemoteMethod(entry["name"], method)) for key, method in entry.get("methods", {}).items())
    return type(entry["name"], (RemoteInstance,), namespace)


class RemoteBackend:
    """Proxy of one backend: its members are attributes (``dir()`` and Tab list them)."""

    def __init__(self, client: Client, entry: dict):
        self.client = client
        self.name = entry["name"]
        self.entry = entry
        self.api = entry.get("api", {})
        self._members: dict[str, object] = {}

    @property
    def workers(self) -> list[dict]:
        return self.entry.get("workers", [])

    @property
    def allow_code(self) -> bool:
        return bool(self.entry.get("allow_code"))

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        members = self.__dict__["api"].get("members", {})
        if name not in self._members:
            entry = members.get(name)
            if entry is None:
                raise UnknownMethod(f"backend {self.name!r} has no member {name!r}; it has: {', '.join(members)}")
            if entry.get("kind") == "class":
                self._members[name] = remote_class(self.client, self.name, entry)
            else:
                self._members[name] = _remote_function(self.client, self.name, entry, name)
        return self._members[name]

    def __dir__(self):
        return sorted(self.api.get("members", {}))  # the backend's members, not this proxy's attributes

    def __repr__(self) -> str:
        lines = [f"<backend {self.name!r} at {self.client.url}: {len(self.workers)} worker(s)>"]
        for name, entry in self.api.get("members", {}).items():
            lines.append(f"  {name}{entry.get('signature', '')}  {entry.get('summary', '')}".rstrip())
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{html.escape(name)}{html.escape(e.get('signature', ''))}</code></td>"
            f"<td>{html.escape(e.get('kind', ''))}</td><td>{html.escape(e.get('summary', ''))}</td></tr>"
            for name, e in self.api.get("members", {}).items()
        )
        return (f"<b>{html.escape(self.name)}</b> at <code>{html.escape(self.client.url)}</code>, "
                f"{len(self.workers)} worker(s)<table><tr><th>member</th><th>kind</th><th>summary</th></tr>"
                f"{rows}</table>")
