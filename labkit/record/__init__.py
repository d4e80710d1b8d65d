"""The reproducibility checkpoint: one call writes a verification log.

Owns: gathering the environment (packages, runtime, hardware, GPUs), the Ray topology, the
model's path/size/hash, papermill detection, secret redaction, the compact raw-sample form,
the canonical hash, schema validation and the atomic write under ``verification/runs/``.

The JSON Schema ``verification/schema/verification-log.v1.schema.json`` is the source of
truth for the log's shape; :func:`checkpoint` validates against it before anything is written.
Checks across logs (copies, plausibility, percentiles recomputed) live in :mod:`labkit.grade`.

Modules, in the order data flows through them (each imports only those above it):

- :mod:`labkit.record.schema`: version constants, JSON conversion, canonical hash, validation.
- :mod:`labkit.record.redaction`: secret names and values, :func:`redact`.
- :mod:`labkit.record.environment`: packages, runtime, hardware (NVML, ``nvidia-smi``).
- :mod:`labkit.record.provenance`: kit version and git state, papermill, cluster, model.
- :mod:`labkit.record.build`: compact raw samples and :func:`build_log`.
- :mod:`labkit.record.log`: :class:`VerificationLog` (save, load), :func:`checkpoint`.

The names below are re-exported so ``from labkit.record import X`` keeps working. Patch a
name where it is looked up (``labkit.record.build.MAX_LOG_BYTES``), not here.
"""

from __future__ import annotations

from labkit.record.build import build_log, compact_records
from labkit.record.environment import PACKAGES as PACKAGES
from labkit.record.environment import record_environment
from labkit.record.log import VerificationLog, checkpoint, default_runs_dir
from labkit.record.provenance import describe_cluster, describe_model, detect_papermill, notebook_parameters
from labkit.record.redaction import REDACTED, is_secret_name, redact, redact_string, redact_text, secret_env_values
from labkit.record.schema import (
    HASH_ALGORITHM,
    MAX_LOG_BYTES,
    SCHEMA_VERSION,
    canonical_json,
    compute_log_hash,
    load_schema,
    validate_log,
)

__all__ = [
    "HASH_ALGORITHM",
    "MAX_LOG_BYTES",
    "REDACTED",
    "SCHEMA_VERSION",
    "build_log",
    "canonical_json",
    "checkpoint",
    "compact_records",
    "compute_log_hash",
    "default_runs_dir",
    "describe_cluster",
    "describe_model",
    "detect_papermill",
    "is_secret_name",
    "load_schema",
    "notebook_parameters",
    "record_environment",
    "redact",
    "redact_string",
    "redact_text",
    "secret_env_values",
    "validate_log",
    "VerificationLog",
]
