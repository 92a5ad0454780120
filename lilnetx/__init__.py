"""LilNetX: tiny, structurally sparse networks through entropy-penalised reparameterisation.

Public API: ``reparameterize``, ``objective``, ``train`` / ``TrainConfig``, ``stats``, ``strip``
(and, from the artifact codec, ``save`` / ``load``).
"""

from lilnetx.artifact import (
    ArchitectureBuildError,
    ArtifactError,
    ArtifactInfo,
    ArtifactNotFoundError,
    BadMagicError,
    ChecksumMismatchError,
    CorruptHeaderError,
    DecodedArtifact,
    TruncatedArtifactError,
    UnsupportedVersionError,
    from_artifact,
    load,
    read_artifact,
    read_header,
    save,
    verify,
)
from lilnetx.density import FactorizedDensity
from lilnetx.errors import LilnetxError
from lilnetx.metrics import stats
from lilnetx.objective import Lambdas, objective, rate_bits
from lilnetx.reparam import (
    LatentGroup,
    LatentTensor,
    ReparamError,
    is_reparameterized,
    latent_groups,
    latent_tensors,
    reparameterize,
    round_ste,
    strip,
)
from lilnetx.slim import slim
from lilnetx.training import CheckpointError, ConfigError, TrainConfig, Trainer, evaluate, train

__all__ = [
    "ArchitectureBuildError", "ArtifactError", "ArtifactInfo", "ArtifactNotFoundError", "BadMagicError",
    "ChecksumMismatchError",
    "CorruptHeaderError", "DecodedArtifact", "TruncatedArtifactError", "UnsupportedVersionError", "from_artifact",
    "load", "read_artifact", "read_header", "save", "verify",
    "LilnetxError",
    "CheckpointError", "ConfigError", "FactorizedDensity", "Lambdas", "LatentGroup", "LatentTensor",
    "ReparamError", "TrainConfig", "Trainer", "evaluate", "is_reparameterized", "latent_groups",
    "latent_tensors", "objective", "rate_bits", "reparameterize", "round_ste", "slim", "stats", "strip", "train",
]
