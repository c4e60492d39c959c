"""The built matching index, kept in a file beside the database: the next start loads it
instead of building it anew (issue 11: the first load of 100,000 subscriptions took ~1.7 s of
CPU, most of it in reading their rows and `IndexedMatcher.add`; loading the built index is a
third of that).

The file holds the engine (`IndexedMatcher`: its attributes, pickled), the subscription
version it was in step with, and the query and channel of every subscription stored up to
that version (read from storage when the file is written, and checked then against what the
engine holds: `not_held`; an engine behind storage is not kept). It is used only when all of
these hold:

- it was written by the same code: a digest of the sources of the `bot` package (those that
  decide what an index holds and what they import: `code_digest`) and of the Python version
  is part of its header; any other digest and the file is ignored (and rewritten later); without
  source files nothing is kept;
- the database is the one it describes: every subscription stored now with a version up to
  the file's has the query and channel the file names for it (`StoreContract.subscription_queries`); a
  database replaced or restored from elsewhere fails this and the index is built anew (and
  so does one older than the file: bot/poller.py checks its version first).

The poller then brings it up to date as every later sync does (bot/poller.py): subscriptions
removed since are dropped, those added or changed since the file's version are added.

Neither loading nor writing holds the event loop (which shares the GIL with the poller's
worker thread) more than a few ms: the file is a series of pickles, each a chunk (the big
tables CHUNK items at a time, then the rest of the engine in one), so that no one C call
builds or frees a whole table; objects the tables share (entries, channels) are written once
and then by number, and each entry is made by a call of its class, Python code, where the
interpreter hands the GIL over when another thread asks for it. The file is written after a
poll, in the poller's worker thread, into a temporary file renamed over the old one, so a
reader never sees half a file.

What the engine shares by identity must stay shared: objects of `_shared_types` by number,
what the rest of the engine holds in one pickle by its memo, and `matching._ONE` (a constant
compared with `is`) by name. A new such constant in bot/matching.py must be named in
`_Pickler.persistent_id` (tests/test_index_cache.py compares a loaded engine's matches, after
adds and removals, with storage's).

It is a pickle: the file is as trusted as the database beside it (whoever can write one can
change every subscription anyway), and as private (it gets the database's permission bits).
Only plain data and the engine's own classes are loaded (`allowed`: no function, no module,
no dotted name), and only the engine's own attributes are set.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
import os
import pickle
import stat
import sys
import time
from collections import Counter, OrderedDict, defaultdict, deque
from functools import partial
from pathlib import Path
from types import FunctionType, MethodType
from typing import IO, Any, Callable

from . import matching
from .errors import QueryError
from .like import like_query
from .models import ChannelRef, StoredQuery
from .query import parse_query

log = logging.getLogger(__name__)

MAGIC = b"papers-bot index\n"
FORMAT = 1
CHUNK = 2000  # items of a big table a `load` (a few ms each)
# Attributes of the engine not kept: its forked worker pool (processes of this run) and what
# says which generation that pool was made for.
TRANSIENT = ("_pool", "_pool_key")
# What a file may name (`_Unpickler.find_class`): a class defined by one of the engine's
# modules (not their functions, nor what they import: `bot.matching` holds `logging`), or a
# plain container; everything else is refused. Looked up here, never by pickle's own
# `find_class`: from protocol 4 it reads a dotted name attribute by attribute, and
# ("bot.matching", "logging.os.system") was `os.system` (tests/test_index_cache.py).
ENGINE_MODULES = ("bot.matching", "bot.models", "bot.query")
CONTAINERS: dict[tuple[str, str], type] = {
    **{("builtins", cls.__name__): cls for cls in (set, frozenset, dict, list, tuple)},
    **{("collections", cls.__name__): cls for cls in (Counter, OrderedDict, defaultdict, deque)},
}


def allowed(module: str, name: str) -> type | None:
    """The class a file names as `module`.`name`, if a file may name it (see CONTAINERS)."""
    found = CONTAINERS.get((module, name))
    if found is not None:
        return found
    engine = sys.modules.get(module) if module in ENGINE_MODULES else None
    obj = vars(engine).get(name) if engine is not None else None
    if isinstance(obj, type) and obj.__module__ == module and obj.__qualname__ == name:
        return obj
    return None


def code_digest(package: Path | None = None) -> str | None:
    """What the file's header must carry: the digest of the code that decides an index's
    layout and contents, and of the Python and pickle versions; None without source files
    (nothing is kept then: no digest would see a change of layout).

    The code is the whole `bot` package (`package`: its directory), not only the engine's
    modules: what they import decides what an index holds too (bot/query.py takes `source:`
    names and aliases from bot/sources and arXiv ids from bot/sources/ids.py; an alias added
    there made a query parse that a kept index had skipped). An upgrade builds the index
    once; 40 files, ~600 kB, a few ms."""
    digest = hashlib.sha256(f"{FORMAT}:{sys.version}:{pickle.HIGHEST_PROTOCOL}".encode())
    root = package or Path(__file__).resolve().parent
    files = sorted(root.rglob("*.py"))
    if root / "index_cache.py" not in files:
        return None
    for file in files:
        try:
            digest.update(file.relative_to(root).as_posix().encode() + b"\0" + file.read_bytes())
        except OSError:
            return None
    return digest.hexdigest()[:16]


def not_held(matcher: matching.IndexedMatcher, queries: dict[int, tuple[str, str]]) -> list[int]:
    """Those of `queries` (storage's query and channel key by id, up to the version the
    engine is said to be in step with) the engine does not hold as stored, in the same
    channel: the file names storage's queries, and the next start checks storage against
    those, not against the engine. A sync that failed half way (the newest version taken,
    what changed not added) leaves such an engine; kept, every later start would load it
    without them. A `like:` subscription is the recommender's, and one that does not parse is
    skipped by every engine: neither is held."""
    held, entries = matcher._by_sub, matcher._entries
    found = []
    for sub_id, (query, channel) in queries.items():
        if held.get(sub_id) == query:
            entry = entries[query]
            where = entry.sole_channel if entry.sole == sub_id else entry.subs.get(sub_id)
            if where is not None and where.key == channel:
                continue
        if sub_id not in held and (like_query(query) is not None or not _parses(query)):
            continue
        found.append(sub_id)
    return found


def _parses(query: str) -> bool:
    try:
        parse_query(query)
    except QueryError:
        return False
    return True


@dataclasses.dataclass
class CachedIndex:
    matcher: matching.IndexedMatcher
    version: int  # the subscription version it is in step with
    # The query and channel key of each subscription stored up to `version`, when it was written.
    queries: dict[int, tuple[str, str]]


def _shared_types() -> tuple[type, ...]:
    """The classes whose objects an index shares between its tables (an entry is in the entries
    by query and in each table it is indexed under; a channel in every entry of its
    subscriptions): each is written once, then by number. Each must be a dataclass made by
    its fields, so that loading one is a call of its class (Python code: see the module)."""
    found = []
    for cls in (getattr(matching, "_Entry", None), ChannelRef):
        if cls is None or not dataclasses.is_dataclass(cls) or hasattr(cls, "__post_init__") \
                or not all(f.init for f in dataclasses.fields(cls)):
            raise TypeError(f"{cls} is not a dataclass made by its fields: the index is not kept")
        found.append(cls)
    return tuple(found)


def _make(number: int, cls: type, fields: tuple) -> Any:
    """Stands in the file for the loader's own (`_Unpickler.find_class`), which numbers what it makes."""
    raise pickle.UnpicklingError("index objects are made by the index's loader")


class _Pickler(pickle.Pickler):
    """One chunk: objects of `_shared_types` already written (`numbers`, shared by every
    chunk's pickler) are written as their number; the others by value, with the number they
    get (an entry's channel is made before the entry when loaded, but numbered after it)."""

    def __init__(self, file: IO[bytes], shared: tuple[type, ...], numbers: dict[int, int], stop: Callable[[], bool]):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.shared = shared
        self.numbers = numbers
        table = {}
        for cls in shared:
            names = tuple(f.name for f in dataclasses.fields(cls))

            def reduce(obj: Any, cls: type = cls, names: tuple[str, ...] = names) -> tuple:
                number = numbers[id(obj)] = len(numbers)
                if not number % 1000 and stop():
                    raise _Stopped
                return _make, (number, cls, tuple(getattr(obj, name) for name in names))
            table[cls] = reduce
        self.dispatch_table = table

    def persistent_id(self, obj: Any) -> Any:
        if obj is getattr(matching, "_ONE", None):  # a constant the engine compares by identity
            return "_ONE"
        if isinstance(obj, self.shared):
            return self.numbers.get(id(obj))
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], shared: tuple[type, ...], made: dict[int | str, Any]):
        super().__init__(file)
        self.shared = shared
        self.made = made
        # By number (or "_ONE"); a C function, not a method: ~300,000 calls at 100,000 subscriptions.
        made.setdefault("_ONE", getattr(matching, "_ONE", None))
        self.persistent_load = made.__getitem__  # type: ignore[method-assign]

    def find_class(self, module: str, name: str) -> Any:
        if module == __name__ and name == "_make":
            made = self.made
            shared = self.shared

            def make(number: int, cls: type, fields: tuple) -> Any:
                if cls not in shared:
                    raise pickle.UnpicklingError(f"{cls} is not made by the index's loader")
                obj = made[number] = cls(*fields)
                return obj
            return make
        found = allowed(module, name)
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of an index")
        return found


class _Stopped(Exception):
    pass


def _referenced(state: dict[str, Any]) -> set[int]:
    """The ids of the objects that the engine's attributes hold as attributes of their own (the
    prefix tables a cache of the engine keeps, say): those are pickled whole, so that they
    stay one object (a dict rebuilt from chunks would be another)."""
    found: set[int] = set()
    for value in state.values():
        attributes = list(getattr(value, "__dict__", {}).values())
        slots = [name for cls in type(value).__mro__ for name in getattr(cls, "__slots__", ())]  # a base's too
        attributes += [getattr(value, name) for name in slots if hasattr(value, name)]
        found.update(map(id, attributes))
    return found


STALE_SECONDS = 3600.0  # a temporary file this old is a crashed save's (a save takes seconds)


def _remove_stale(path: Path) -> None:
    """Remove the temporary files of saves that never finished (the process killed, the
    machine stopped: 20 MB and more each at 100,000 subscriptions, and the next save is
    another process's, with another name)."""
    now = time.time()
    for stale in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
        try:
            if now - stale.stat().st_mtime > STALE_SECONDS:
                stale.unlink()
                log.info("removed %s, left by a save that did not finish", stale)
        except OSError:
            continue


def _mode(path: Path) -> int:
    """The permission bits of the database beside `path` (its name without ".index"): the
    file holds every subscription's query and channel, as the database does; 0o600 if there
    is none (the umask applies to either)."""
    if path.suffix == ".index":
        try:
            return stat.S_IMODE(path.with_suffix("").stat().st_mode) & 0o666
        except OSError:
            pass
    return 0o600


def save(path: Path, matcher: matching.IndexedMatcher, version: int, stored: list[StoredQuery], *,
         stop: Callable[[], bool] = lambda: False) -> bool:
    """Write the engine, in step with subscription `version`, and `stored` (storage's
    queries up to that version, `subscription_queries(version)`) to `path` (atomically).
    False when `stop()` turned true on the way (nothing written). Raises OSError, and
    pickle's errors, on failure; ValueError when the engine does not hold `stored`.

    Written in chunks, each a pickle of its own: a big table's items CHUNK at a time (one
    dict of a hundred thousand keys and sets is built in C, without a turn for other
    threads: ~70 ms at 100,000 subscriptions), and no pickler's memo holds the whole index
    (freeing it took 150 ms, in C too)."""
    code = code_digest()
    if code is None:
        raise OSError("no source files to tell this version's index from another's: not kept")
    keys: dict[str, str] = {}  # each channel key one string (a few hundred channels, 100,000 rows)
    queries = {sub_id: (query, keys.setdefault(channel, channel)) for sub_id, query, channel in stored}
    behind = not_held(matcher, queries)
    if behind:
        raise ValueError(f"the index does not hold {len(behind)} of the subscriptions stored up to version "
                         f"{version} as stored (#{', #'.join(map(str, sorted(behind)[:5]))}): not kept")
    shared_types = _shared_types()
    # (Functions set on the instance, say a benchmark's timing wrapper of `match`, are not its data.)
    state = {name: value for name, value in vars(matcher).items()
             if name not in TRANSIENT and not isinstance(value, (FunctionType, MethodType, partial))}
    shared = _referenced(state)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    _remove_stale(path)
    numbers: dict[int, int] = {}
    try:
        temporary.unlink(missing_ok=True)  # a crashed save's of a process with this id, or planted (a link)
        with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _mode(path)), "wb") as f:
            f.write(MAGIC)
            pickle.dump({"format": FORMAT, "code": code, "version": version}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)
            # The big tables no other attribute holds, in chunks; then the rest in one pickle,
            # where what they share stays shared.
            chunked = {name: value for name, value in state.items()
                       if type(value) is dict and len(value) > CHUNK and id(value) not in shared}
            chunked = {"": queries, **chunked}
            pickle.dump([(name, len(value)) for name, value in chunked.items()], f, protocol=pickle.HIGHEST_PROTOCOL)
            for value in chunked.values():
                items = list(value.items())
                for start in range(0, len(items), CHUNK):
                    if stop():  # each chunk (the entries are numbered in the first tables only)
                        raise _Stopped
                    _Pickler(f, shared_types, numbers, stop).dump(items[start:start + CHUNK])
            if stop():
                raise _Stopped
            _Pickler(f, shared_types, numbers, stop).dump({name: value for name, value in state.items()
                                                           if name not in chunked})
        os.replace(temporary, path)
        return True
    except _Stopped:
        return False
    finally:
        temporary.unlink(missing_ok=True)


def load(path: Path) -> CachedIndex | None:
    """The index kept at `path` if there is one written by this code (None otherwise; a file
    that cannot be read is logged). Storage is not checked here: see `usable`."""
    try:
        shared = _shared_types()
        # Without waiting on what is not a file: a FIFO planted there held the poller's
        # worker thread in `open`, and so every poll, for good.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            log.warning("%s is not a file: ignored", path)
            return None
        with os.fdopen(fd, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                log.warning("%s is not a kept index: ignored", path)
                return None
            header = _Unpickler(f, shared, {}).load()  # plain values only, as every part
            code = code_digest()
            if not isinstance(header, dict) or header.get("format") != FORMAT or code is None \
                    or header.get("code") != code:
                log.info("%s was written by another version of the bot (or of Python): the index is built anew",
                         path)
                return None
            made: dict[int | str, Any] = {}
            state: dict[str, Any] = {}
            for name, count in _Unpickler(f, shared, made).load():
                value: dict = {}
                while len(value) < count:
                    chunk = _Unpickler(f, shared, made).load()
                    if not chunk:
                        raise pickle.UnpicklingError("an empty chunk")
                    value.update(chunk)
                state[name] = value
            state.update(_Unpickler(f, shared, made).load())
    except FileNotFoundError:
        return None
    except Exception as exc:  # damaged, truncated, or refused by find_class: built anew
        log.warning("the kept index %s cannot be read (%s: %s): it is built anew", path, type(exc).__name__, exc)
        return None
    queries = state.pop("", None)
    matcher = matching.IndexedMatcher()
    # The engine's own attributes, no other: a name from the file is set on it (`__class__`,
    # or `match` shadowing the method, were taken as they came).
    if not isinstance(queries, dict) or not isinstance(header.get("version"), int) \
            or set(state) != set(vars(matcher)) - set(TRANSIENT):
        log.warning("the kept index %s is not whole: it is built anew", path)
        return None
    for name, value in state.items():
        setattr(matcher, name, value)
    return CachedIndex(matcher, int(header["version"]), queries)


def usable(cached: CachedIndex, stored: list[StoredQuery]) -> bool:
    """Whether the kept index describes this database: `stored` is storage's query of every
    subscription with a version up to the index's (`subscription_queries(cached.version)`);
    each must be the one the index was built from, in the same channel (those removed since
    are simply absent)."""
    known = cached.queries
    return all(known.get(sub_id) == (query, channel) for sub_id, query, channel in stored)
