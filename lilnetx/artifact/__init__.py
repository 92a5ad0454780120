"""The ``.lnx`` artifact: one self-describing, verified, entropy-coded file per LilNetX model.

Sections (byte lengths in the header, layout in ``format``): ``tables``, one bit stream of per-channel
integer frequency tables (``lilnetx.entropy_coding``, frozen from each group's density by
``FactorizedDensity.freeze``), groups in header order; ``decoders``, each group's decoder (``width x width``
unless its form is diagonal or scalar), raw little-endian, or as qint8 (a float16 scale per row, then int8s); ``float_params``, every state-dict entry that is not a latent (BatchNorm, biases and layers
left uncompressed, buffers), raw little-endian, dtype and shape in the header (from format 4 a BatchNorm is
one entry: its per-channel scale and shift, float16 or qint8); ``coded_latents``, one ANS
stream of every latent tensor (layer order, then channel order); each layer's share of it in bits is the
header's ``coded_bits``, which the decoder checks as it goes. ``load`` compares the architecture's tensor
names and shapes with the header (on the meta device) before decoding anything. Nothing is pickled.

Modules: ``format`` (constants, framing, bytes), ``errors``, ``validation`` (header and model checks),
``writer`` (``save``), ``reader`` (``read_artifact``, ``read_header``, ``verify``), ``rebuild`` (``load``).
"""

from lilnetx.artifact.errors import (
    ArchitectureBuildError,
    ArtifactError,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    BadMagicError,
    ChecksumMismatchError,
    CorruptHeaderError,
    TruncatedArtifactError,
    UnsupportedVersionError,
)
from lilnetx.artifact.format import (
    DECODER_DTYPES,
    DTYPES,
    FLOAT_DTYPES,
    FLOAT_PARAM_DTYPES,
    FORMAT_VERSION,
    SECTIONS,
    ArtifactInfo,
    DecodedArtifact,
    snap_decoder,
)
from lilnetx.artifact.reader import read_artifact, read_header, verify
from lilnetx.artifact.rebuild import BUILDER_GROUP, Builder, from_artifact, load
from lilnetx.artifact.writer import save

__all__ = [
    "BUILDER_GROUP", "DECODER_DTYPES", "DTYPES", "FLOAT_DTYPES", "FLOAT_PARAM_DTYPES", "FORMAT_VERSION", "SECTIONS",
    "ArchitectureBuildError", "ArtifactError", "ArtifactInfo", "ArtifactNotFoundError", "ArtifactTooLargeError",
    "BadMagicError", "Builder", "ChecksumMismatchError",
    "CorruptHeaderError", "DecodedArtifact", "TruncatedArtifactError", "UnsupportedVersionError",
    "from_artifact", "load", "read_artifact", "read_header", "save", "snap_decoder", "verify",
]
