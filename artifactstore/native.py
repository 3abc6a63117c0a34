"""The compiled core (native/*.pyx, built by the package build): required, with no slow fallback."""

try:
    from . import _checksum, _fastcdc, _mapping
except ImportError as exc:
    raise ImportError(
        "artifactstore's native core (artifactstore._fastcdc, _checksum and _mapping) is not built: "
        "install the package with `pip install .` (or `pip install -e .` for development), or build it "
        "in place with `python setup.py build_ext --inplace`"
    ) from exc

__all__ = ["_checksum", "_fastcdc", "_mapping"]
