"""Errors of the zoo: each message names the problem and the fix."""

from __future__ import annotations


class ZooError(Exception):
    """Base class of every error the zoo raises on purpose."""


class InvalidNameError(ZooError, ValueError):
    """An entry name, tag, digest or URI that is malformed or could escape its folder."""


class InvalidFilterError(ZooError, ValueError):
    """A catalog filter out of range (an accuracy or sparsity given as a percentage instead of a fraction)."""


class EntryNotFoundError(ZooError, LookupError):
    """No zoo entry of that name."""


class EntryExistsError(ZooError):
    """An entry of that name already exists with another artifact."""


class ChecksumError(ZooError):
    """Bytes whose sha256 is not the one the catalog or index promised."""


class UnverifiedArtifactError(ZooError):
    """A fetched artifact that is not what the catalog row (a remote zoo's index) claims, or cannot be decoded."""


class OfflineError(ZooError):
    """``LILNETX_OFFLINE=1`` and the artifact is not in the local cache."""


class RemoteZooError(ZooError):
    """A remote zoo that cannot be reached or serves a malformed index."""


class CatalogError(ZooError):
    """The catalog database cannot be opened, migrated or written."""


class CatalogLockedError(CatalogError):
    """Another process holds the catalog database's write lock for too long."""


class MeasurementUnavailable(ZooError):
    """An artifact's accuracy cannot be measured here (dataset not available offline, time limit, mismatch)."""


class MeasurementRefused(MeasurementUnavailable):
    """The dataset is here, but the model does not fit it (classes, input size): its claim cannot be checked."""
