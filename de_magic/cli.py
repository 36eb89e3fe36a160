"""The ``de-magic`` command, and the command line of backend modules.

``de-magic broker|keys|serve|list|call|schema|generate|demo`` for operators and
users; ``python backend.py listen|schema|generate|test-connect`` for the
author of a backend module (via :func:`de_magic.main`).  Both are thin: each
command is a few lines over :class:`Broker`, :class:`Backend` or :class:`Client`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import difflib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from types import ModuleType

from .backend.daskpool import DaskPool, cluster_address, cluster_info
from .backend.direct import advertised_host, direct_address
from .backend.lifeline import exit_with_parent
from .backend.server import Backend
from .broker.server import Broker
from .broker.launch import DEFAULT_LAUNCH_INTERVAL, Launch
from .broker.waiting import Bounds
from .caller.client import Client, no_broker_hint
from .caller.generate import client_module
from .caller.progress import TextProgress
from .embedded import DEMO_BACKENDS, bind, start_local
from .wire.defaults import (DEFAULT_HEARTBEAT, DEFAULT_JOB_BYTES, DEFAULT_JOB_TTL, DEFAULT_LISTING_TIMEOUT,
                            DEFAULT_MAX_JOBS, DEFAULT_MAX_MESSAGE, DEFAULT_MAX_QUEUE,
                            DEFAULT_MAX_QUEUED_BYTES, DEFAULT_REF_BYTES, DEFAULT_SESSION_LEASE, check_doors, check_url,
                            default_url)
from .schema import describe, members_of
from .wire.errors import DeMagicError
from .wire.security import (Security, config_file, create_keys, job_directory, launch_commands, owners,
                            state_directory)
from .wire.serialize import JSON, PICKLE

# -- loading backend modules -------------------------------------------------


def load_module(target: str) -> ModuleType:
    """Import ``target``: a path to a ``.py`` file or a dotted module name; a usage error if there is none."""
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise SystemExit(f"de-magic: no file {target}: give the path of a backend module (.py), "
                             "or an importable module name")
        spec = importlib.util.spec_from_file_location(path.stem, path.resolve())
        if spec is None or spec.loader is None:
            raise SystemExit(f"de-magic: cannot load {target}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        sys.path.insert(0, str(path.resolve().parent))
        with _own_errors():
            spec.loader.exec_module(module)
        return module
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` does: a module beside the user is found
    try:
        with _own_errors(missing=target):
            return importlib.import_module(target)
    except ModuleNotFoundError:
        raise SystemExit(f"de-magic: no module named {target!r}: give the path of a backend module (.py), "
                         f"or the name of a module importable from {Path.cwd()} (or on PYTHONPATH)") from None


@contextlib.contextmanager
def _own_errors(missing: str | None = None):
    """A backend module that raises while imported (a syntax error, a bad import, its own bug) ends the command
    with its traceback alone, without the frames of de-magic and importlib above it.

    ``missing``: the module being imported by name, whose absence is re-raised for the caller to explain.
    """
    try:
        yield
    except Exception as exc:
        if missing and isinstance(exc, ModuleNotFoundError) and exc.name and f"{missing}.".startswith(f"{exc.name}."):
            raise
        tb = exc.__traceback__
        while tb is not None and _is_machinery(tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next
        sys.stderr.write("".join(traceback.format_exception(type(exc), exc, tb)))
        raise SystemExit(1) from None


def _is_machinery(filename: str) -> bool:
    """Whether a frame is de-magic's or the import system's, not the user's."""
    return filename.startswith(("<frozen ", str(Path(__file__).parent), str(Path(importlib.__file__).parent)))


def declared_main(module: ModuleType) -> dict:
    """The literal ``name`` and ``members`` arguments of the module's ``main(...)`` call, if it has one.

    Importing a backend file does not run its ``if __name__ == "__main__": main(name=...)``, yet that
    is the name its author gave it: so it is read from the source.
    """
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError, SyntaxError):  # no source to read (e.g. a compiled module)
        return {}
    for node in ast.walk(tree):
        func = getattr(node, "func", None)
        if isinstance(node, ast.Call) and getattr(func, "id", getattr(func, "attr", None)) == "main":
            given = [*zip(("name", "members"), node.args), *((k.arg, k.value) for k in node.keywords)]
            return {key: value for key, value in map(_literal, given) if key in ("name", "members")}
    return {}


def _literal(item: tuple[str | None, ast.expr]) -> tuple[str | None, object]:
    key, node = item
    try:
        return key, ast.literal_eval(node)
    except ValueError:  # members=__all__ and the like: the default rule finds the same
        return None, None


def pick_members(namespace: dict, names) -> dict[str, object]:
    """Members by name from ``namespace`` (names may also be the objects themselves)."""
    picked = {}
    for item in names:
        if isinstance(item, str):
            if item not in namespace:
                raise SystemExit(f"de-magic: no member {item!r} in the backend module")
            picked[item] = namespace[item]
        else:
            picked[item.__name__] = item
    constants = [name for name, obj in picked.items() if not callable(obj)]
    if constants:
        raise SystemExit(f"de-magic: members must be functions or classes, not {', '.join(map(repr, constants))}")
    return picked


def _members(namespace: dict, names) -> dict[str, object]:
    """The members named (by --members or main(members=...)), else the module's default ones."""
    return pick_members(namespace, names) if names else members_of(namespace)


def _url(text: str | None, flag: str) -> str:
    """The broker address (or several, separated by commas) given with ``flag``, else the default; several
    are a client's equivalent doors, or the brokers a backend registers at."""
    return ",".join(check_doors(text, flag)) if text else default_url()


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Arguments, with repeated ``--broker`` flags joined as one comma-separated list."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = _subcommand(parser, args.command)
        flags = [flag for action in command._actions for flag in action.option_strings]
        command.exit(2, f"{command.prog}: error: unrecognized arguments: "
                        f"{' '.join(_with_suggestion(arg, flags) for arg in unknown)}; see `{command.prog} --help`\n")
    if isinstance(getattr(args, "broker", None), list):
        args.broker = ",".join(args.broker)
    return args


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The parser of the subcommand ``name``, whose flags a typo is compared with."""
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[name]


def _with_suggestion(arg: str, flags: list[str]) -> str:
    """``arg``, with the flag it was probably meant to be (``--brokr`` -> ``--broker``)."""
    close = difflib.get_close_matches(arg.partition("=")[0], flags, n=1) if arg.startswith("-") else []
    return f"{arg} (did you mean {close[0]}?)" if close else arg


# -- argument groups shared by several commands --------------------------------


def _broker_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default=None, action="append",
                        help="broker URL (default: $DE_MAGIC_BROKER or tcp://127.0.0.1:5555); repeat it, or separate "
                             "addresses by commas, for a consortium's brokers: a backend registers at each, a "
                             "client uses one and moves on to the next if it stops answering")


def _security_args(parser: argparse.ArgumentParser, broker: bool = False) -> None:
    """CURVE flags; each falls back to its environment variable, then the config file (see security.py)."""
    parser.add_argument("--key", default=None,
                        help="own secret key file NAME.key_secret (default: $DE_MAGIC_KEY, then the config file)")
    if broker:
        parser.add_argument("--allowed-keys", default=None, metavar="DIR",
                            help="directory of public keys allowed to connect "
                                 "(default: $DE_MAGIC_ALLOWED_KEYS, then the config file)")
        parser.add_argument("--insecure", action="store_true",
                            help="serve without CURVE on a non-loopback address (anyone reaching it can use it)")
    else:
        parser.add_argument("--broker-key", default=None, metavar="FILE",
                            help="the broker's public key, a file or Z85 text (default: $DE_MAGIC_BROKER_KEY, then the "
                                 "config file's [brokers.\"URL\"] table, then its broker_key)")


def _security(args: argparse.Namespace) -> Security | None:
    """The broker's settings; for a client or backend (it has --broker-key) None without flags, so that it
    takes, for each broker it connects to, that broker's keys (environment, then config file)."""
    if not hasattr(args, "broker_key"):
        return Security.resolve(key=args.key, allowed_keys=args.allowed_keys, insecure=args.insecure)
    if args.key is None and args.broker_key is None:
        return None
    return Security.resolve(key=args.key, broker_key=args.broker_key, url=check_doors(_url(args.broker, "--broker"))[0])


def _serve_args(parser: argparse.ArgumentParser) -> None:
    _broker_arg(parser)
    _security_args(parser)
    parser.add_argument("--no-pickle", action="store_true",
                        help="take arguments and give results as JSON only, never unpickle (for less trusted callers)")
    parser.add_argument("--allow-clients", default=None, metavar="KEYS",
                        help="comma-separated public keys (Z85, key names at the broker, or .key files) "
                             "that may call this backend; default: every caller the broker lets in")
    parser.add_argument("--max-workers", type=int, default=None, help="threads that run calls (default: CPUs + 4)")
    parser.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="calls that may wait before 'busy' is answered")
    parser.add_argument("--allow-code", action="store_true", help="accept %%%%remote code cells (runs arbitrary code!)")
    parser.add_argument("--session-lease", type=float, default=DEFAULT_SESSION_LEASE, metavar="SECONDS",
                        help="end a %%%%remote namespace, or release a remote reference, whose caller has been gone "
                             "this long (default: 2 hours)")
    parser.add_argument("--ref-bytes", type=int, default=DEFAULT_REF_BYTES, metavar="BYTES",
                        help="bytes of results a worker keeps for remote references (options(keep=True)); "
                             "default: 4 GiB")
    parser.add_argument("--job-ttl", type=float, default=DEFAULT_JOB_TTL, metavar="SECONDS",
                        help="keep a finished job's result this long (default: 7 days)")
    parser.add_argument("--job-bytes", type=int, default=DEFAULT_JOB_BYTES, metavar="BYTES",
                        help="bytes of kept job results, oldest evicted first (default: 1 GiB)")
    parser.add_argument("--max-jobs", type=int, default=DEFAULT_MAX_JOBS, metavar="N",
                        help="finished jobs kept, oldest evicted first (default: 10000)")
    parser.add_argument("--job-dir", default=None, metavar="DIR",
                        help="write job results here, so that finished ones survive a restart; large ones live only "
                             "here (default: $DE_MAGIC_JOB_DIR, then the config file's job_dir; else in memory)")
    parser.add_argument("--dask", default=None, metavar="ADDRESS",
                        help="run calls on a Dask cluster: a scheduler's tcp://HOST:PORT, or local[:N] for N worker "
                             "processes here (default: $DE_MAGIC_DASK, then the config file's dask; see docs/scale.md)")
    parser.add_argument("--dask-port", type=int, default=None, metavar="PORT",
                        help="with --dask local:N, the scheduler listens on 127.0.0.1:PORT and its dashboard on PORT+1 "
                             "(default: free ports)")
    parser.add_argument("--direct", default=None, metavar="tcp://HOST:PORT",
                        help="also listen here for direct calls from callers that can reach this machine (port 0: "
                             "any free port; beyond loopback CURVE keys are needed); default: $DE_MAGIC_DIRECT, then "
                             "the config file's direct, else connect out only (see docs/deploy.md)")
    parser.add_argument("--advertise", default=None, metavar="HOST",
                        help="the host name or address callers are told to reach the direct endpoint at (default: "
                             "$DE_MAGIC_ADVERTISE, then the config file's advertise, else the --direct host; for "
                             "0.0.0.0, this machine's fully qualified name)")
    parser.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT, help="heartbeat interval in seconds")
    parser.add_argument("--idle-exit", type=float, default=None, metavar="SECONDS",
                        help="stop after this many seconds without calls (none running): a backend started on demand "
                             "(a batch job) gives its allocation back (default: serve until stopped)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="stop when this process (the one that started us) is gone")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")


def _serve(name: str, members: dict, args: argparse.Namespace, doc: str = "") -> None:
    address = cluster_address(args.dask)
    if address is None:
        _serve_backend(name, members, args, doc)
        return
    try:
        pool = DaskPool.connect(address, args.dask_port)
    except ValueError as exc:
        raise SystemExit(f"de-magic: {exc}") from None
    with pool:  # the front door's slots: one per thread of the cluster, unless --max-workers says otherwise
        args.max_workers = args.max_workers or cluster_info(pool.client)["threads"] or 1
        _serve_backend(name, members, args, doc, pool.attach)


def _serve_backend(name: str, members: dict, args: argparse.Namespace, doc: str = "", attach=None) -> None:
    try:
        backend = Backend(name, members, broker=_url(args.broker, "--broker"), max_workers=args.max_workers,
                          max_queue=args.max_queue, allow_code=args.allow_code, heartbeat=args.heartbeat, doc=doc,
                          security=_security(args),
                          codec=JSON if args.no_pickle else PICKLE,
                          allow_clients=args.allow_clients.split(",") if args.allow_clients else None,
                          session_lease=args.session_lease, ref_bytes=args.ref_bytes,
                          direct=direct_address(args.direct), advertise=advertised_host(args.advertise),
                          job_ttl=args.job_ttl, job_bytes=args.job_bytes,
                          max_jobs=args.max_jobs, job_dir=job_directory(args.job_dir), idle_exit=args.idle_exit)
    except ValueError as exc:  # contradictory options
        raise SystemExit(f"de-magic: {exc}") from None
    if attach is not None:  # e.g. DaskPool.attach: calls run elsewhere
        attach(backend)
    print(f"de-magic: backend {name!r} ({', '.join(members)}) is connecting to the broker at {backend.broker}",
          flush=True)
    if args.parent_pid is not None:
        exit_with_parent(args.parent_pid, backend.stop, args.heartbeat)
    threading.Thread(target=_announce, args=(backend,), name="de-magic-announce", daemon=True).start()
    try:
        backend.run()
    except DeMagicError as exc:  # the broker refused us: say why, also for `python backend.py listen`
        raise SystemExit(f"de-magic: {exc}") from None


def _announce(backend: Backend, patience: float = 2.0) -> None:
    """Say when the backend is registered, and what to do while no broker answers.

    ``patience`` is shorter than the silence after which the backend logs its warnings, so this comes first.
    """
    if not _registered(backend, patience):
        if backend.failure is not None:
            return  # the broker answered, with a refusal: run() ends the command with it
        print(f"de-magic: waiting for a broker at {backend.broker}, none answers yet. "
              f"{no_broker_hint(backend.broker)}.", file=sys.stderr, flush=True)
        if not _registered(backend, float("inf")):
            return
    print(f"de-magic: registered at {backend.broker}; serving calls (Ctrl-C stops)", flush=True)


def _registered(backend: Backend, timeout: float) -> bool:
    """Wait until ``backend`` registers (True), is refused, or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while backend.failure is None:
        if backend.registered.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            return True
        if time.monotonic() >= deadline:
            return False
    return False


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")


# -- python backend.py ... -------------------------------------------------------


def backend_main(name: str, members, namespace: dict, argv: list[str] | None = None, **options) -> None:
    """Command line of one backend module (see :func:`de_magic.main`)."""
    parser = argparse.ArgumentParser(
        prog=Path(sys.argv[0]).name, description=f"The de-magic backend {name!r}.")
    sub = parser.add_subparsers(dest="command", required=True)
    listen = sub.add_parser("listen", help="connect to the broker and serve calls")
    _serve_args(listen)
    # main(..., allow_code=True, max_workers=8) sets defaults that the command line may still override
    unknown = set(options) - {action.dest for action in listen._actions}
    if unknown:
        raise TypeError(f"main() got unknown option(s) {', '.join(sorted(unknown))}; "
                        f"see `python {Path(sys.argv[0]).name} listen --help`")
    listen.set_defaults(**options)
    sub.add_parser("schema", help="print the API description as JSON")
    gen = sub.add_parser("generate", help="print an importable client module")
    _broker_arg(gen)
    check = sub.add_parser("test-connect", help="check that the broker answers")
    _broker_arg(check)
    _security_args(check)
    args = _parse(parser, argv)
    with _one_line_errors():
        _backend_command(args, name, _members(namespace, members), namespace.get("__doc__") or "")


def _backend_command(args: argparse.Namespace, name: str, picked: dict, doc: str) -> None:
    if args.command == "listen":
        _logging(args.verbose)
        _serve(name, picked, args, doc)
    elif args.command == "schema":
        print(json.dumps(describe(name, picked, doc), indent=2))
    elif args.command == "generate":
        print(client_module(describe(name, picked, doc), args.broker), end="")
    else:
        _test_connect(args.broker, _security(args))


def _test_connect(url: str | None, security: Security | None) -> None:
    with Client(url, timeout=5, security=security) as client:
        listing = client.listing(api=False)  # no answer: an error that says what to do
    print(f"de-magic: broker at {client.url} answers; {len(listing['backends'])} backend(s) live")


# -- de-magic ... ------------------------------------------------------------------


def cmd_broker(args) -> None:
    _logging(args.verbose)
    commands, folder = launch_commands()
    launches = {name: Launch(tuple(words), DEFAULT_LAUNCH_INTERVAL if interval is None else interval)
                for name, (words, interval) in commands.items()}
    broker = Broker(check_url(args.bind or default_url(), "--bind"), heartbeat=args.heartbeat, max_message_size=args.max_message_size,
                    max_queued_bytes=args.max_queued_bytes, owners=owners(), security=_security(args),
                    state_dir=state_directory(args.state_dir),
                    waiting=Bounds(args.max_waiting_jobs, args.max_waiting_bytes, args.waiting_ttl),
                    launch=launches, launch_dir=str(folder))
    url = bind(broker)
    print(f"de-magic: broker listening on {url}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: broker.stop())
    try:
        broker.run()
    except KeyboardInterrupt:
        pass


def _target_members(args) -> tuple[str, dict, str]:
    """Name, members and doc of the backend module ``args.target``: as its main(...) declares, unless overridden."""
    module = load_module(args.target)
    declared = declared_main(module)
    name = args.name or declared.get("name") or module.__name__.rpartition(".")[2]
    members = _members(vars(module), args.members.split(",") if args.members else declared.get("members"))
    return name, members, module.__doc__ or ""


def cmd_serve(args) -> None:
    _logging(args.verbose)
    name, members, doc = _target_members(args)
    _serve(name, members, args, doc)


def cmd_schema(args) -> None:
    print(json.dumps(describe(*_target_members(args)), indent=2))


def cmd_generate(args) -> None:
    print(client_module(describe(*_target_members(args)), args.broker), end="")


def cmd_list(args) -> None:
    with Client(args.broker, timeout=args.timeout, security=_security(args)) as client:
        table = client.backends()  # of every broker given, each backend with the brokers it is reachable through
    print(json.dumps({"broker": table.broker, "backends": table}, indent=2) if args.json else repr(table))


def _json_arg(flag: str, text: str | None, kinds: tuple[type, ...]):
    """The value of a JSON flag; a usage error (not a traceback) when it is no JSON of the right kind."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"de-magic: {flag} is not JSON: {exc}") from None
    if not isinstance(value, kinds):
        names = " or ".join({dict: "object", list: "array"}[kind] for kind in kinds)
        raise SystemExit(f"de-magic: {flag} must be a JSON {names}, not {text!r}")
    return value


def cmd_call(args) -> None:
    parsed = _json_arg("--args", args.args, (dict, list))
    call_args, call_kwargs = (parsed, {}) if isinstance(parsed, list) else ((), parsed)
    member, _, method = args.method.partition(".")
    if args.init and not method:
        raise SystemExit(f"de-magic: --init gives a class's constructor arguments, for Class.method; "
                         f"{args.method!r} is called with --args alone")
    init = ((), _json_arg("--init", args.init, (dict,))) if args.init else None
    with Client(args.broker, timeout=args.timeout, security=_security(args)) as client:
        result = client.call(args.name, member, call_args, call_kwargs, method=method or None, init=init,
                             on_progress=TextProgress(sys.stderr))
    if args.json:
        print(json.dumps(result, default=_plain_json, indent=2))
    else:
        print(result)


def _plain_json(obj):
    """``call --json`` output for what JSON has no type for: tables and arrays as data, the rest as its repr."""
    if hasattr(obj, "to_json"):  # pandas, with dates as ISO text
        return json.loads(obj.to_json(date_format="iso"))
    if hasattr(obj, "to_dict"):  # xarray
        return obj.to_dict()
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    return repr(obj)


def cmd_gateway(args) -> None:
    from .gateway import app, config, tokens  # Tornado and jsonschema only for this command

    if args.new_token:
        token = tokens.new_token()
        print(f"de-magic: a new token for {args.new_token!r}; give it to them, it is shown only now:\n\n    {token}\n\n"
              f"and add its hash to the config file ({config_file()}), with the key pair its calls present:\n\n"
              f"[gateway.tokens.{json.dumps(args.new_token)}]\nhash = \"{tokens.hash_token(token)}\"\n"
              f"key = \"{args.new_token}.key_secret\"   # optional: else the gateway's own key")
        return
    _logging(args.verbose)
    logging.getLogger("tornado.access").setLevel(logging.INFO if args.verbose else logging.WARNING)  # a line a call
    try:
        settings = config.load(args.bind, args.broker, args.timeout)
    except ValueError as exc:
        raise SystemExit(f"de-magic: {exc}") from None
    app.serve(settings, _security(args))


def cmd_keys(args) -> None:
    public, secret = create_keys(args.name, args.dir)
    print(f"de-magic: wrote {public} (public: give it to the broker's operator, or to clients if this is "
          f"the broker's)\nde-magic: wrote {secret} (secret: keep it here, readable only by you)")


def cmd_demo(args) -> None:
    """A local broker and the demo backends in one command; Ctrl-C stops all."""
    _logging(args.verbose)
    if args.direct_ports is not None and not 0 < args.direct_ports <= 65536 - len(DEMO_BACKENDS):
        raise SystemExit(f"de-magic: --direct-ports must be a port number that {len(DEMO_BACKENDS)} ports fit from, "
                         f"not {args.direct_ports}")
    # local by construction: plain TCP on loopback, whatever keys the environment or config file name
    with Client(args.broker, timeout=5, security=Security()) as client:
        cluster = start_local(client, args.direct_ports)
        try:
            print(repr(client.backends()))
            print(f"\nde-magic demo: broker on {cluster.url} with backends {', '.join(DEMO_BACKENDS)}.\n"
                  f"Connect with:  from de_magic import Client; be = Client({cluster.url!r})['hello_world']\n"
                  f"or in a notebook:  %load_ext de_magic  then  %remote_connect {cluster.url}\n"
                  "Press Ctrl-C to stop.", flush=True)
            stop = []
            signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
            while not stop:  # a backend that dies is restarted (or, dying again and again, reported), alone
                for line in cluster.tend():
                    print(f"de-magic demo: {line}", file=sys.stderr, flush=True)
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
            cluster.stop()
            print("de-magic demo: stopped", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="de-magic", description="Serve, discover and call Python backends over ZeroMQ.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run a broker")
    p.add_argument("--bind", default=None, help="address to bind (default: $DE_MAGIC_BROKER or tcp://127.0.0.1:5555)")
    p.add_argument("--heartbeat", type=float, default=DEFAULT_HEARTBEAT, help="heartbeat interval in seconds")
    p.add_argument("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE,
                   help="largest call accepted, in bytes")
    p.add_argument("--max-queued-bytes", type=int, default=DEFAULT_MAX_QUEUED_BYTES,
                   help="bytes of calls held in queues, over all backends, before callers get 'busy'")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="remember the backends served (name, owner key, last API) across restarts in DIR, created "
                        "readable by you only (default: the config file's state_dir; none: remember nothing); "
                        "jobs started for an offline backend wait there for it")
    bounds = Bounds()
    p.add_argument("--max-waiting-jobs", type=int, default=bounds.jobs, metavar="N",
                   help="jobs one caller may keep waiting for offline backends")
    p.add_argument("--max-waiting-bytes", type=int, default=bounds.bytes, metavar="BYTES",
                   help="bytes of arguments one caller's waiting jobs may hold")
    p.add_argument("--waiting-ttl", type=float, default=bounds.ttl, metavar="SECONDS",
                   help="how long a job waits for its backend before it expires (default: 7 days)")
    p.add_argument("-v", "--verbose", action="store_true")
    _security_args(p, broker=True)
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("keys", help="write a CURVE key pair NAME.key / NAME.key_secret")
    p.add_argument("name", help="whose keys: a person, a backend, the broker")
    p.add_argument("--dir", default=None, help="where to write them (default: ~/.config/de-magic/keys)")
    p.set_defaults(func=cmd_keys)

    for command, func, text in (("serve", cmd_serve, "serve a backend module"),
                                ("schema", cmd_schema, "print a backend module's API as JSON"),
                                ("generate", cmd_generate, "print a client module for a backend module")):
        p = sub.add_parser(command, help=text)
        p.add_argument("target", help="a .py file or an importable module name")
        p.add_argument("--name", help="backend name (default: the name= of the module's main() call, else its name)")
        p.add_argument("--members", help="comma-separated members (default: the members= of its main() call, "
                                         "else __all__, else its public functions and classes)")
        if command == "serve":
            _serve_args(p)
        elif command == "generate":
            _broker_arg(p)
        p.set_defaults(func=func)

    p = sub.add_parser("list", help="list the live backends")
    _broker_arg(p)
    p.add_argument("--json", action="store_true", help="print the full listing as JSON")
    p.add_argument("--timeout", type=float, default=DEFAULT_LISTING_TIMEOUT)
    _security_args(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("call", help="call a backend method")
    p.add_argument("name", help="backend name")
    p.add_argument("method", help="member name, or Class.method")
    p.add_argument("--args", help='JSON: an object of keyword arguments, or a list of positional ones')
    p.add_argument("--init", help="JSON object of constructor arguments for Class.method")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--timeout", type=float, default=60.0)
    _broker_arg(p)
    _security_args(p)
    p.set_defaults(func=cmd_call)

    p = sub.add_parser("gateway", help="serve the live backends over HTTP, with an OpenAPI document (docs/gateway.md)")
    _broker_arg(p)
    p.add_argument("--bind", default=None, metavar="HOST:PORT",
                   help="where to listen (default: the config file's [gateway] bind, else 127.0.0.1:8080); "
                        "beyond loopback only with tokens")
    p.add_argument("--timeout", type=float, default=None, help="seconds a call may take (default 60; ?timeout= per call)")
    p.add_argument("--new-token", metavar="NAME", default=None,
                   help="print a new token for NAME and the config lines holding its hash, then exit")
    p.add_argument("-v", "--verbose", action="store_true")
    _security_args(p)
    p.set_defaults(func=cmd_gateway)

    p = sub.add_parser("demo", help="start a local broker and the demo backends")
    p.add_argument("--broker", default=None, help="address to bind (default: $DE_MAGIC_BROKER or tcp://127.0.0.1:5555)")
    p.add_argument("--direct-ports", type=int, default=None, metavar="START",
                   help=f"take the demo backends' direct calls on 127.0.0.1, ports START, START+1...: "
                        f"{', '.join(DEMO_BACKENDS)}, in that order (default: free ports)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


@contextlib.contextmanager
def _one_line_errors():
    """Our errors end the command with one line on stderr and exit code 1, not with a traceback."""
    try:
        yield
        sys.stdout.flush()  # here, so that a reader gone away (`| head`) is caught below
    except DeMagicError as exc:
        raise SystemExit(f"de-magic: {exc}") from None
    except KeyboardInterrupt:  # Ctrl-C: a call in progress was cancelled at the backend (Client.call)
        print("de-magic: interrupted; a call in progress was cancelled at the backend", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except BrokenPipeError:  # the reader of our output left (`de-magic schema x.py | head`): nothing more to say
        # Python's own flush at exit would fail again and print a warning: point stdout at nothing instead
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> None:
    args = _parse(build_parser(), argv)
    with _one_line_errors():
        args.func(args)
