"""imgadm: image management of the simulated global zone (exit 3 = ImageNotInstalled)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import images
from .fmt import dumps, lookup_path, scalar
from .images import ImgadmError
from .payload import UUID_RE
from .state import POOL, SimError, State

USAGE = """Usage:
    imgadm [OPTIONS] COMMAND [ARGS...]

Commands:
    get [-P <pool>] [-r] <uuid>
    list [-j] [-H] [-o field,...] [-s field,...] [field=value ...]
    install [-P <pool>] [-q] -m <manifest> -f <file>
    import [-P <pool>] [-q] [-S <source>] <uuid>
    delete [-P <pool>] <uuid>"""
ALIASES = {"info": "get", "destroy": "delete"}
LIST_DEFAULT = ["uuid", "name", "version", "os", "type", "pub"]


def usage_error(message: str) -> SimError:
    return SimError(f"imgadm: error (Usage): {message}\n{USAGE}", 2)


def _opts(args: list[str], flags: str, valued: str) -> tuple[dict[str, Any], list[str]]:
    from .vmadm import getopt
    try:
        return getopt(args, flags, valued)
    except SimError as exc:
        raise usage_error(exc.message.splitlines()[0]) from None


def _uuid_arg(rest: list[str], command: str) -> str:
    if len(rest) != 1:
        raise usage_error(f"incorrect number of args for \"{command}\"")
    if not UUID_RE.match(rest[0]):
        raise usage_error(f"invalid uuid: \"{rest[0]}\"")
    return rest[0].lower()


def _pool(opts: dict[str, Any]) -> str:
    pool = opts.get("P", POOL)
    if pool != POOL:
        raise ImgadmError("InvalidZpool", f"zpool \"{pool}\" does not exist")
    return str(pool)


def cmd_get(state: State, args: list[str]) -> int:
    opts, rest = _opts(args, "r", "P")
    uuid = _uuid_arg(rest, "get")
    pool = _pool(opts)
    with state.locked():
        if images.record(state, uuid) is None:
            raise images.not_installed(uuid, pool)
        info = images.info(state, uuid)
    out = {k: info[k] for k in ("manifest", "zpool", "source") if k in info}
    if opts.get("r"):
        out["children"] = {"snapshots": [f"{POOL}/{uuid}@final"], "clones": info["cloneNames"]}
    sys.stdout.write(dumps(out) + "\n")
    return 0


def _list_row(info: dict[str, Any]) -> dict[str, Any]:
    m = info["manifest"]
    row = dict(m)
    published = str(m.get("published_at", ""))
    row.update(pub=published[:10], published_date=published[:10],
               published=published.split(".")[0].rstrip("Z") + ("Z" if published else ""),
               clones=info["clones"], zpool=info["zpool"], source=info.get("source"),
               size=(m.get("files") or [{}])[0].get("size"))
    return row


def _filter(rows: list[dict[str, Any]], filters: list[str]) -> list[dict[str, Any]]:
    for spec in filters:
        key, sep, want = spec.partition("=")
        if not sep:
            raise usage_error(f"invalid filter: \"{spec}\"")
        if want.startswith("~"):
            rows = [r for r in rows if want[1:] in scalar(lookup_path(r, key))]
        else:
            rows = [r for r in rows if scalar(lookup_path(r, key)) == want]
    return rows


def cmd_list(state: State, args: list[str]) -> int:
    opts, rest = _opts(args, "jH", "osP")
    with state.locked():
        infos = [images.info(state, u) for u in images.manifests(state)]
    pairs = [(info, _list_row(info)) for info in infos]
    keep = {id(r) for r in _filter([r for _, r in pairs], rest)}
    pairs = [(i, r) for i, r in pairs if id(r) in keep]
    sort = opts.get("s", "published_at,name").split(",")
    for field in reversed(sort):
        key = field.lstrip("-")
        pairs.sort(key=lambda p, k=key: scalar(lookup_path(p[1], k)), reverse=field[0] == "-")
    if opts.get("j"):
        sys.stdout.write(dumps([i for i, _ in pairs]) + "\n")
        return 0
    columns = opts["o"].split(",") if "o" in opts else LIST_DEFAULT
    cells = [[("-" if lookup_path(r, c) in (None, "") else scalar(lookup_path(r, c)))
              for c in columns] for _, r in pairs]
    if not opts.get("H"):
        cells.insert(0, [c.upper() for c in columns])
    widths = [max((len(row[i]) for row in cells), default=0) for i in range(len(columns))]
    for row in cells:
        line = "  ".join(v.ljust(w) for v, w in zip(row[:-1], widths, strict=False))
        sys.stdout.write((line + "  " if len(row) > 1 else "") + row[-1] + "\n")
    return 0


def cmd_install(state: State, args: list[str]) -> int:
    opts, rest = _opts(args, "q", "mfP")
    if rest or "m" not in opts or "f" not in opts:
        raise usage_error("install requires -m <manifest> and -f <file>")
    _pool(opts)
    manifest = _read_manifest(Path(opts["m"]))
    name = f"{manifest.get('name')}@{manifest.get('version')}"
    uuid = manifest.get("uuid")
    try:
        stream = open(opts["f"], "rb")
    except OSError as exc:
        raise ImgadmError("FileNotFound", f"file \"{opts['f']}\" does not exist: "
                          f"{exc.strerror}") from None
    with stream, state.locked():
        done = images.install(state, manifest, stream)
    if not done:
        print(f"Image {uuid} ({name}) is already installed, skipping")
        return 0
    print(f"Installing image {uuid} ({name})")
    print(f"Installed image {uuid} ({name})")
    return 0


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        return images.check_manifest(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ImgadmError("FileNotFound", f"manifest \"{path}\" cannot be read: "
                          f"{exc.strerror}") from None
    except ValueError as exc:
        raise ImgadmError("InvalidManifest", f"manifest \"{path}\" is not JSON: {exc}") from None


def _source_dir(source: str) -> Path:
    path = source[len("file://"):] if source.startswith("file://") else source
    return Path(path)


def cmd_import(state: State, args: list[str]) -> int:
    """Import from a local source directory (-S DIR or file://DIR): <uuid>.json + its file."""
    opts, rest = _opts(args, "q", "PSC")
    uuid = _uuid_arg(rest, "import")
    _pool(opts)
    with state.locked():
        present = images.record(state, uuid)
    sources = [opts["S"]] if "S" in opts else list(state.host().get("image_sources", []))
    if present is not None:
        m = present["manifest"]
        print(f"Image {uuid} ({m.get('name')}@{m.get('version')}) is already installed, skipping")
        return 0
    for source in sources:
        directory = _source_dir(str(source))
        manifest_path = directory / f"{uuid}.json"
        if not manifest_path.is_file():
            continue
        manifest = _read_manifest(manifest_path)
        name = f"{manifest.get('name')}@{manifest.get('version')}"
        files = sorted(p for p in directory.iterdir()
                       if p.name.startswith(uuid) and p.suffix != ".json")
        if not files:
            raise ImgadmError("DownloadError", f"image {uuid} has no file in {directory}")
        print(f"Importing {uuid} ({name}) from \"{source}\"")
        with open(files[0], "rb") as stream, state.locked():
            images.install(state, manifest, stream, source=str(source))
        print(f"Imported image {uuid} ({name})")
        return 0
    raise ImgadmError("ActiveImageNotFound",
                      f"an active image \"{uuid}\" was not found in image sources")


def cmd_delete(state: State, args: list[str]) -> int:
    opts, rest = _opts(args, "", "P")
    uuid = _uuid_arg(rest, "delete")
    _pool(opts)
    with state.locked():
        images.delete(state, uuid)
    print(f"Deleted image {uuid}")
    return 0


def main(state: State, argv: list[str]) -> int:
    """imgadm COMMAND [ARGS]."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        raise SimError(USAGE, 0 if argv else 1)
    command = ALIASES.get(argv[0], argv[0])
    handler = {"get": cmd_get, "list": cmd_list, "install": cmd_install, "import": cmd_import,
               "delete": cmd_delete}.get(command)
    if handler is None:
        raise usage_error(f"unknown command: \"{argv[0]}\"")
    return handler(state, argv[1:])
