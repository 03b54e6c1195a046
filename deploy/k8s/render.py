"""Renders a kustomization without kustomize: the subset of it these manifests use.

    python deploy/k8s/render.py deploy/k8s/overlays/prod > prod.yaml

``kubectl kustomize`` is the reference (the test renders with both where kubectl exists and
requires the same objects); this exists so the manifests can be built and validated on machines
without it. Supported fields: ``resources`` (files and kustomization folders), ``namespace``
(set on every namespaced object), ``labels`` (``pairs`` onto metadata.labels only),
``replicas``, ``images`` (``newName`` / ``newTag``) and ``patches`` (strategic-merge patches from
``path`` or inline ``patch``, matched by kind and name; ``$patch: delete`` removes the object).
Anything else is refused, never ignored.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

KNOWN = {"apiVersion", "kind", "resources", "namespace", "labels", "replicas", "images", "patches"}
# kinds without a namespace (of those a semlink deployment could hold)
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
# lists merged element-wise by this key in a strategic-merge patch (the rest are replaced)
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumes": "name",
    "volumeMounts": "mountPath",
}


class RenderError(ValueError):
    """A kustomization this renderer cannot build faithfully."""


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def merge(base: Any, patch: Any, key: str | None = None) -> Any:
    """Strategic-merge ``patch`` into ``base`` (a copy): maps merge, lists named in
    ``MERGE_KEYS`` merge by their key (as kustomize orders them: the patch's items first, then
    the base's others), other lists and scalars are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            out[k] = merge(out[k], v, k) if k in out else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        field = MERGE_KEYS[key]
        by_key = {b.get(field): b for b in base}
        patched = [
            merge(by_key[i.get(field)], i) if i.get(field) in by_key else copy.deepcopy(i)
            for i in patch
        ]
        named = {i.get(field) for i in patch}
        return patched + [copy.deepcopy(b) for b in base if b.get(field) not in named]
    return copy.deepcopy(patch)


def _same(obj: dict[str, Any], patch: dict[str, Any]) -> bool:
    return obj.get("kind") == patch.get("kind") and obj["metadata"]["name"] == patch.get(
        "metadata", {}
    ).get("name")


def render(folder: str | Path) -> list[dict[str, Any]]:
    """The objects the kustomization in ``folder`` builds."""
    folder = Path(folder)
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(k) - KNOWN
    if unknown:
        raise RenderError(f"{folder}: fields this renderer does not implement: {sorted(unknown)}")
    objects: list[dict[str, Any]] = []
    for res in k.get("resources", []):
        path = folder / res
        objects += render(path) if path.is_dir() else _load_all(path)
    for entry in k.get("patches", []):
        unknown = set(entry) - {"path", "patch"}
        if unknown:
            raise RenderError(f"{folder}: patch fields not implemented: {sorted(unknown)}")
        docs = (
            _load_all(folder / entry["path"])
            if "path" in entry
            else [yaml.safe_load(entry["patch"])]
        )
        for patch in docs:
            hits = [i for i, o in enumerate(objects) if _same(o, patch)]
            if not hits:
                raise RenderError(
                    f"{folder}: patch matches no object: {patch.get('kind')} "
                    f"{patch.get('metadata', {}).get('name')}"
                )
            for i in hits:
                if patch.get("$patch") == "delete":
                    objects[i] = {}
                else:
                    objects[i] = merge(objects[i], patch)
            objects = [o for o in objects if o]
    for r in k.get("replicas", []):
        for o in objects:
            if o["metadata"]["name"] == r["name"] and "replicas" in o.get("spec", {}):
                o["spec"]["replicas"] = r["count"]
    for image in k.get("images", []):
        for o in objects:
            for c in o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                name, _, tag = c["image"].partition(":")
                if name == image["name"]:
                    c["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    for group in k.get("labels", []):
        if set(group) - {"pairs"}:
            raise RenderError(f"{folder}: only labels.pairs is implemented")
        for o in objects:
            o["metadata"].setdefault("labels", {}).update(group["pairs"])
    if "namespace" in k:
        for o in objects:
            if o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = k["namespace"]
    return objects


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: render.py KUSTOMIZATION_FOLDER")
    print(yaml.safe_dump_all(render(sys.argv[1]), sort_keys=False), end="")
