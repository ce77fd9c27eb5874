"""The one exception root of Vantage. Every error a user can fix, or that names a file, a list,
a helper or a database that cannot be used, is a VantageError; the CLI turns any of them into
one line (``Error: ...``), never a traceback. Network failures are not exceptions here: probe.net
turns them into failure strings on the record (probe/net/errors.py).

The tree (module: class, what it means)::

    VantageError
    ├── probe.experiments.base: InputError            a target this experiment cannot measure
    ├── probe.experiments.tunnels.wire: WireError     bytes not in the tunnel protocol's format
    │                                                 (also a ValueError)
    ├── probe.experiments.tunnels.tor_link: PtError   obfs4proxy would not start or connect
    ├── probe.dataset: StoreError                     a dataset cannot be written or read
    ├── probe.dataset: DatasetError                   no usable measurements in the given paths
    ├── probe.testlists: TestListError                a test list cannot be read at all
    ├── probe.control: ControlError                   the control helper failed or refused
    ├── probe.control_server: ControlSetupError       the helper server cannot start
    ├── probe.control_server: HttpError               the helper's error answer (status, code)
    ├── probe.net.stun: StunError                     no usable STUN answer
    ├── probe.upload: UploadError                     a batch cannot be sent to the collector
    ├── analysis.geo: GeoError                        a geo database cannot be used
    ├── analysis.fingerprints: FingerprintError       a fingerprint file cannot be used
    ├── analysis.verdicts: VerdictError               verdicts cannot be computed (bad option)
    ├── analysis.pipeline: VerdictsFileError          not a verdicts file, or a corrupt one
    ├── analysis.pipeline: OutputError                an output file cannot be written
    ├── analysis.aggregates: DatabaseError            the database cannot take Vantage's tables
    ├── analysis.report: ReportError                  the report cannot be written
    ├── analysis.downloads: DownloadError             a download failed; nothing was replaced
    ├── analysis.ingest.ooni.importer: OoniImportError  an OONI import cannot start
    ├── analysis.ingest.ooni.read: SourceError        an OONI source path cannot be read
    └── vantage.lab.lab: LabError                     the loopback lab cannot start
                                                      (also a RuntimeError)

Not under it, on purpose: probe.net._client's AddressRefused (an OSError) and NoAddressError
(an httpcore.ConnectError) are network errors that probe.net.errors.classify turns into
failure strings; vantage's DemoError and UsageLineError are click exceptions already.

This module imports nothing, so every floor of the house may import it (docs/architecture.md).
"""

from __future__ import annotations

__all__ = ["VantageError"]


class VantageError(Exception):
    """The root of Vantage's errors: the message is one line that says what to fix."""
