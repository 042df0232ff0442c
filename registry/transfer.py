"""Export and import of a version (directory + manifest + registry metadata) as one ``.tar.gz``.

An imported version gets the next local version number and starts as a candidate: whatever it passed
elsewhere, it passes the gate here before it gets traffic. Its origin is kept in ``imported_from``.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from registry.errors import RegistryError
from registry.records import Manifest, VersionInfo
from registry.store import Registry, missing_files

METADATA = "registry.json"


def export_version(registry: Registry, version: str, out: Path) -> Path:
    """Write ``out`` (a .tar.gz) holding the version's files under ``<version>/`` and its metadata."""
    info = registry.get(version)
    out = Path(out)
    with tarfile.open(out, "w:gz") as tar:
        tar.add(registry.path_of(info), arcname=version)  # never files from outside the store
        data = json.dumps({"info": info.model_dump(mode="json"), "origin": str(registry.root)}).encode()
        member = tarfile.TarInfo(METADATA)
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))
    return out


def import_version(registry: Registry, archive: Path, actor: str = "operator") -> VersionInfo:
    """Publish the archive's adapter as a new local candidate; returns its info."""
    try:
        tar = tarfile.open(archive, "r:gz")  # noqa: SIM115 -- opened here to translate errors, closed by the with below
    except (OSError, tarfile.TarError) as exc:
        raise RegistryError(f"{archive} is not a nextstate export: {exc}") from exc
    with tar:
        names = tar.getnames()
        meta_member = tar.extractfile(METADATA) if METADATA in names else None
        if meta_member is None:
            raise RegistryError(f"{archive} is not a nextstate export (no {METADATA})")
        meta = json.loads(meta_member.read())
        origin = VersionInfo.model_validate(meta["info"])
        version = registry.allocate_version()
        staging = registry.staging_dir(version)
        try:
            members = [m for m in tar.getmembers() if m.name.startswith(origin.version + "/")]
            for member in members:
                member.name = member.name[len(origin.version) + 1:]
            tar.extractall(staging, members=members, filter="data")
            missing = missing_files(staging)
            if missing:
                raise RegistryError(f"{archive} lacks {', '.join(missing)}")
            manifest = Manifest.model_validate_json((staging / "manifest.json").read_text())
            imported_from = f"{meta.get('origin', '?')}:{origin.version}"
            manifest = manifest.model_copy(update={"version": version, "imported_from": imported_from})
            return registry.publish(staging, manifest, actor=actor, imported_from=imported_from)
        except BaseException:
            registry.discard_staging(staging)
            raise
