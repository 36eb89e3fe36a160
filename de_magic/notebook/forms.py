"""Call forms: an ipywidgets form for one remote function, built from its API description.

The kernel never imports backend code, so the parameters' JSON Schema (types,
bounds, enums, defaults) is all a form can go by.  The Run button starts the
call in a thread of its own, so the kernel keeps serving widget messages while
the call runs (Cancel among them); progress bars, the result (shown through
IPython's display formatter, so a DataFrame is a table) and errors go into the
form's :class:`~ipywidgets.Output` by changing its ``outputs`` trait, which
works from any thread and needs no frontend to capture anything.
"""

from __future__ import annotations

import ast
import ctypes
import html
import re
import sys
import threading
import time
from typing import Callable

import ipywidgets as w

from ..caller.client import CallFuture
from ..wire.errors import RemoteError
from .progress import WidgetProgress

#: A field left empty: the parameter is not sent, so the backend's default applies.
OMIT = object()

_STYLE = {"description_width": "initial"}
_WIDE = w.Layout(width="60%")
# stand-ins for a missing bound: JSON has no infinity, and JavaScript integers end at 2**53
_BIG = {True: 2**53 - 1, False: sys.float_info.max}


def call_form(client, backend: str, member: str, method: str | None = None) -> "CallForm":
    """The form for ``backend``'s ``member`` (``"Cls.method"`` or ``method=`` for a class's method).

    For a method the form also has fields for the class's constructor.
    """
    if method is None and "." in member:
        member, method = member.split(".", 1)
    members = client[backend].api.get("members", {})
    entry = members.get(member)
    if entry is None:
        raise LookupError(f"backend {backend!r} has no member {member!r}; it has: {', '.join(members)}")
    if entry.get("kind") != "class":
        return CallForm(client, backend, entry)
    if method not in entry.get("methods", {}):
        raise LookupError(f"{member} is a class; name one of its methods: {', '.join(entry.get('methods', {}))}")
    return CallForm(client, backend, entry["methods"][method], member=member, method=method, init_entry=entry)


class CallForm(w.VBox):
    """A form that calls one remote function; ``run()`` is what its Run button does.

    ``fields`` maps parameter names to their widgets (constructor parameters
    as ``"__init__.name"``), ``output`` shows progress, result and errors,
    ``future`` and ``result`` are those of the last run; ``cancel()`` is what
    the Cancel button does.
    """

    def __init__(self, client, backend: str, entry: dict, *, member: str | None = None,
                 init_entry: dict | None = None, **call_kw):
        self.client, self.backend, self.entry = client, backend, entry
        self.member = member or entry["name"]
        self.call_kw = call_kw
        self.future = None
        self.result = None
        self._progress: WidgetProgress | None = None
        self._thread: threading.Thread | None = None  # the running call's, while it runs
        self._thread_lock = threading.Lock()
        self._fields = _fields(entry)
        self._init_fields = _fields(init_entry) if init_entry else []
        self.fields = {p["name"]: widget for p, widget, _ in self._fields}
        self.fields.update({f"__init__.{p['name']}": widget for p, widget, _ in self._init_fields})
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.run_button.on_click(lambda _: self.run())
        self.cancel_button = w.Button(description="Cancel", icon="stop", disabled=True,
                                      tooltip="Stop the running call, on the backend too")
        self.cancel_button.on_click(lambda _: self.cancel())
        self.status = w.Label()
        self.output = w.Output()
        title = f"{self.member}.{entry['name']}" if call_kw.get("method") else entry["name"]
        head = w.HTML(f"<b>{html.escape(backend)}.{html.escape(title)}</b> "
                      f"<span>{_inline_rst(entry.get('summary') or '')}</span>")
        parts = [head]
        if init_entry:
            parts.append(w.VBox([w.HTML(f"<i>{html.escape(self.member)}(…)</i>"),
                                 *(widget for _, widget, _ in self._init_fields)],
                                layout=w.Layout(margin="0 0 0 1em")))
        parts += [widget for _, widget, _ in self._fields]
        super().__init__([*parts, w.HBox([self.run_button, self.cancel_button, self.status]), self.output])

    def arguments(self) -> tuple[list, dict, tuple[tuple, dict] | None]:
        """``(args, kwargs, init)`` from the fields; ValueError names a field that does not parse."""
        args, kwargs = _collect(self._fields)
        init = _collect(self._init_fields) if self._init_fields else None
        return args, kwargs, ((tuple(init[0]), init[1]) if init else self.call_kw.get("init"))

    def run(self):
        """Start the call with the form's values; returns its future, or None if a field is invalid."""
        self.output.outputs = ()
        try:
            args, kwargs, init = self.arguments()
        except ValueError as exc:
            self.output.append_stderr(f"{exc}\n")
            self.status.value = "invalid input"
            return None
        self.run_button.disabled = True
        self.cancel_button.disabled = False
        self.status.value = "running…"
        if self._progress is not None:  # its bars were just cleared from the output
            self._progress.close()
        self._progress = WidgetProgress(self.output)
        options = {**self.call_kw, "on_progress": self._progress}
        if init is not None:
            options["init"] = init
        started = time.monotonic()
        self.future = self._start(args, kwargs, options)
        self.future.add_done_callback(lambda future: self._finish(future, started))
        return self.future

    def cancel(self) -> bool:
        """Stop the running call, remote work included; False if no call is running.

        The call waits in the client, which answers a KeyboardInterrupt (the kernel's stop
        button) by telling the broker to cancel the call: raise one in the call's thread.
        """
        with self._thread_lock:
            if self._thread is None:
                return False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread.ident),
                                                      ctypes.py_object(KeyboardInterrupt))
        self.cancel_button.disabled = True
        self.status.value = "cancelling…"
        return True

    def _start(self, args: list, kwargs: dict, options: dict) -> CallFuture:
        """Run the call in a thread of this form's own, so that ``cancel()`` knows which."""
        future = CallFuture()
        future.set_running_or_notify_cancel()

        def call():
            try:
                try:
                    result = self.client.call(self.backend, self.member, args, kwargs, **options)
                finally:
                    # under the lock, so that a KeyboardInterrupt from cancel() arrives before this
                    # point or never: not in the future's callbacks
                    with self._thread_lock:
                        self._thread = None
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        with self._thread_lock:
            self._thread = threading.Thread(target=call, name="de-magic-form", daemon=True)
            self._thread.start()
        return future

    def _finish(self, future, started: float) -> None:
        # runs in the client's submit thread (or here, if the call was already done)
        try:
            exc = future.exception()
            if exc is None:
                self.result = future.result()
                if self.result is not None:
                    self.output.append_display_data(self.result)
                self.status.value = f"done in {time.monotonic() - started:.2f} s"
            elif isinstance(exc, KeyboardInterrupt):
                self.status.value = f"cancelled after {time.monotonic() - started:.2f} s"
            else:
                # a remote error's text starts with the remote type and ends with its traceback
                text = str(exc) if isinstance(exc, RemoteError) else f"{type(exc).__name__}: {exc}"
                self.output.append_stderr(text + "\n")
                self.status.value = "failed"
        finally:
            self.run_button.disabled = False
            self.cancel_button.disabled = True


def _inline_rst(text: str) -> str:
    """``text`` as HTML, its ``code`` and `code` spans as <code>, as the Lab sidebar shows them."""
    return re.sub(r"``([^`]+)``|`([^`]+)`", lambda m: f"<code>{m[1] or m[2]}</code>", html.escape(text))


# -- fields --------------------------------------------------------------------

Parse = Callable[[object], object]


def _fields(entry: dict) -> list[tuple[dict, w.Widget, Parse]]:
    defs = entry.get("schema", {}).get("$defs", {})
    return [(p, *field(p, defs)) for p in entry.get("parameters", [])]


def _collect(fields) -> tuple[list, dict]:
    args, kwargs = [], {}
    for p, widget, parse in fields:
        try:
            value = parse(widget.value)
        except (ValueError, SyntaxError, TypeError) as exc:
            raise ValueError(f"{p['name']}: {exc}") from None
        if value is OMIT:
            continue
        if p["kind"] == "POSITIONAL_ONLY":
            args.append(value)
        elif p["kind"] == "VAR_POSITIONAL":
            args.extend(value)
        elif p["kind"] == "VAR_KEYWORD":
            kwargs.update(value)
        else:
            kwargs[p["name"]] = value
    return args, kwargs


def field(param: dict, defs: dict | None = None) -> tuple[w.Widget, Parse]:
    """The widget for one parameter and how to turn its value into the argument.

    Enums become dropdowns, booleans checkboxes, numbers with both bounds
    sliders (else number fields, bounded where the schema says), strings text,
    lists of scalars a comma-separated text; anything else a Python literal.
    """
    schema = _resolve(param.get("schema", {}), defs or {})
    default = schema.get("default", param.get("default"))
    common = {"description": param["name"], "tooltip": param.get("doc") or param.get("annotation") or None,
              "style": _STYLE}
    kind = schema.get("type")
    if "enum" in schema:
        options = schema["enum"]
        return w.Dropdown(options=options, value=default if default in options else options[0], **common), _same
    if kind == "boolean":
        return w.Checkbox(value=bool(default), indent=False, **common), bool
    if kind in ("integer", "number"):
        return _number(kind == "integer", schema, default, common)
    if kind == "string":
        return w.Text(value=default or "", layout=_WIDE, **common), str
    items = _resolve(schema.get("items", {}), defs or {}).get("type")
    if kind == "array" and items in _SCALAR_ITEMS:
        text = ", ".join(map(repr if items == "string" else str, default)) if default else ""
        return (w.Text(value=text, placeholder="1, 2, 3" if items != "string" else "'a', 'b'",
                       layout=_WIDE, **common),
                _list_parser(_SCALAR_ITEMS[items], param.get("required", True)))
    text = "" if param.get("required", True) else param.get("default_repr") or ""
    return (w.Text(value=text, placeholder=f"Python literal: {param.get('annotation') or 'any'}",
                   layout=_WIDE, **common),
            _literal_parser(param.get("required", True)))


def _same(value):
    return value


def _number(integer: bool, schema: dict, default, common: dict) -> tuple[w.Widget, Parse]:
    lo = schema.get("minimum", schema.get("exclusiveMinimum"))
    hi = schema.get("maximum", schema.get("exclusiveMaximum"))
    cast = int if integer else float
    if lo is not None and hi is not None:
        value = default if default is not None else lo
        if integer:
            return w.IntSlider(min=lo, max=hi, value=value, **common), cast
        return w.FloatSlider(min=lo, max=hi, value=value, step=(hi - lo) / 100, **common), cast
    if lo is None and hi is None:
        return (w.IntText if integer else w.FloatText)(value=default or 0, **common), cast
    lo = -_BIG[integer] if lo is None else lo
    hi = _BIG[integer] if hi is None else hi
    value = default if default is not None else min(max(0, lo), hi)
    bounded = w.BoundedIntText if integer else w.BoundedFloatText
    return bounded(min=lo, max=hi, value=value, **common), cast


_SCALAR_ITEMS: dict[str, Parse] = {"number": float, "integer": int, "string": str, "boolean": bool}


def _list_parser(item: Parse, required: bool) -> Parse:
    def parse(text: str):
        text = text.strip()
        if not text:
            if required:  # not a silent []: a forgotten field would run the call on nothing
                raise ValueError("a value is required (write [] for an empty list)")
            return OMIT
        try:
            values = ast.literal_eval(text if text.startswith("[") else f"[{text}]")
        except (ValueError, SyntaxError):
            if item is not str:
                raise ValueError(f"not a list of numbers: {text!r}") from None
            values = [part.strip() for part in text.split(",")]  # unquoted words
        if item is int and any(isinstance(v, float) and not v.is_integer() for v in values):
            raise ValueError(f"not a list of integers: {text!r}")
        return [item(v) for v in values]

    return parse


def _literal_parser(required: bool) -> Parse:
    def parse(text: str):
        if not text.strip():
            if required:
                raise ValueError("a value is required")
            return OMIT
        return ast.literal_eval(text)

    return parse


def _resolve(schema: dict, defs: dict) -> dict:
    """``schema`` with ``$ref``/``allOf`` of one definition inlined and ``X | None`` reduced to ``X``."""
    ref = schema.get("$ref") or (len(schema.get("allOf", ())) == 1 and schema["allOf"][0].get("$ref"))
    if ref:
        rest = {k: v for k, v in schema.items() if k not in ("$ref", "allOf")}
        schema = {**defs.get(ref.rsplit("/", 1)[-1], {}), **rest}
    options = [s for s in schema.get("anyOf", ()) if s.get("type") != "null"]
    if len(options) == 1:
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        schema = {**_resolve(options[0], defs), **rest}
    return schema
