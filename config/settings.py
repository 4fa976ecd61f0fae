"""The node's one typed settings model.

Sources, highest precedence first: command-line flags, ``AINODE_*`` environment
variables, the TOML file given with ``--config``, then the embedded defaults.
Everything is validated once, when :func:`load_settings` runs; the rest of the
program receives a :class:`Settings` object and never reads the environment.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "AINODE_"

#: What the standard (PS3.5, AE VR) allows in an AE title: 1-16 characters of the
#: default character repertoire, no backslash, no control characters.
_AE_TITLE_MAX = 16


def validate_ae_title(value: str) -> str:
    """Return the AE title stripped of padding, or raise ``ValueError`` saying why."""
    stripped = value.strip()
    if not stripped:
        raise ValueError("an AE title needs 1 to 16 characters, e.g. AINODE")
    if len(stripped) > _AE_TITLE_MAX:
        raise ValueError(f"an AE title has at most 16 characters, this one has {len(stripped)}")
    if "\\" in stripped or any(ord(c) < 0x20 or ord(c) > 0x7E for c in stripped):
        raise ValueError("an AE title may hold printable ASCII only, without backslash")
    return stripped


class Peer(BaseModel):
    """A DICOM peer allowed to send to the node (one ``[[peers]]`` table)."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field(description="The peer's calling AE title.")
    host: str | None = Field(
        default=None,
        description="IP address or network (CIDR) the peer connects from; any host when unset.",
    )

    _check_ae = field_validator("ae_title")(validate_ae_title)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(
                f"{value!r} is not an IP address or network; write e.g. 10.1.2.3 or 10.1.2.0/24"
            ) from None
        return value


def _check_regex(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression ({exc})") from None
    return value


Region = Literal["HEAD", "NECK", "CHEST", "ABDOMEN", "PELVIS", "SPINE", "EXTREMITY", "HEART", "BREAST"]


class SeriesMatch(BaseModel):
    """Conditions on a series (and its study); every condition given must hold.

    Text conditions are regular expressions searched case-insensitively; lists
    match any of their values.
    """

    model_config = ConfigDict(extra="forbid")

    modality: list[str] = Field(default_factory=list, description="e.g. [\"CT\"]")
    sop_class: list[str] = Field(default_factory=list, description="SOP Class UIDs")
    body_part: str | None = Field(default=None, description="regex on Body Part Examined")
    study_description: str | None = None
    series_description: str | None = None
    min_instances: int = Field(default=1, ge=1)
    slice_thickness_min: float | None = Field(default=None, ge=0)
    slice_thickness_max: float | None = Field(default=None, ge=0)
    orientation: list[Literal["AXIAL", "CORONAL", "SAGITTAL", "OBLIQUE"]] = Field(default_factory=list)
    calling_ae: list[str] = Field(default_factory=list)
    region: list[Region] = Field(
        default_factory=list,
        description="body regions, read from Body Part Examined, then the series and study descriptions; "
        "a series whose header names no region passes (the model checks its anatomy)",
    )

    _check_regexes = field_validator("body_part", "study_description", "series_description")(
        _check_regex
    )


class PriorsRule(BaseModel):
    """Which earlier studies of the patient a route's model sees (``[routes.priors]``):
    retrieved from ``[pacs]`` when the study completes, the series chosen in each by the
    route's own match and select rules."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(default=1, ge=1, le=5, description="at most this many priors, the most recent first")
    max_age_days: int = Field(default=1825, ge=1, description="only studies at most this many days older")
    same_modality: bool = Field(default=True, description="only studies with a modality the route matches")
    timeout_s: float = Field(
        default=600.0, gt=0,
        description="how long the study's jobs wait for its priors; then the model runs without the missing "
                    "ones and the results say so",
    )


class Route(BaseModel):
    """A routing rule (one ``[[routes]]`` table): which series go to which model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    model: str = Field(min_length=1, max_length=64, description="model name, e.g. ct-chest")
    match: SeriesMatch = Field(default_factory=SeriesMatch)
    select: Literal["smoothest_kernel", "thinnest", "most_instances", "all"] = Field(
        default="thinnest",
        description="which matching series the model takes when several match",
    )
    destinations: list[str] = Field(default_factory=list)
    priority: int = Field(default=0, ge=-10, le=10, description="higher is claimed sooner")
    level: Literal["routine", "urgent", "critical"] = Field(
        default="routine", description="the worklist level its studies start at (e.g. urgent for stroke CT)",
    )
    quiet_period_s: float | None = Field(default=None, gt=0)
    expect_series: list[SeriesMatch] = Field(
        default_factory=list,
        description="complete the study early once a series matches each of these",
    )
    priors: PriorsRule | None = Field(
        default=None, description="earlier studies of the patient the model compares with (needs [pacs])",
    )
    enabled: bool = True
    shadow: bool = Field(
        default=False,
        description="results computed and recorded, shown marked as shadow, sent only to research "
                    "destinations; they never change a study's level or notify anyone",
    )


class ListenerTls(BaseModel):
    """DICOM over TLS on a second listener port (the ``[tls]`` table)."""

    model_config = ConfigDict(extra="forbid")

    port: int = Field(default=2762, ge=1, le=65535, description="TLS port (2762 is DICOM's registered one)")
    certificate: Path = Field(description="the node's certificate (PEM), with its chain")
    private_key: Path = Field(description="its private key (PEM, unencrypted; readable by the service only)")
    client_ca: Path | None = Field(
        default=None,
        description="CA certificates (PEM) of clients; when set, a client must present a certificate "
                    "they issued (mutual TLS)",
    )


class DestinationTls(BaseModel):
    """How a destination is reached over TLS (a ``[destinations.tls]`` table)."""

    model_config = ConfigDict(extra="forbid")

    ca: Path | None = Field(
        default=None, description="CA certificates (PEM) the archive's certificate must chain to; "
                                  "unset: the system's trust store",
    )
    check_hostname: bool = Field(default=True, description="the certificate must name the destination's host")
    certificate: Path | None = Field(default=None, description="the node's client certificate (mutual TLS)")
    private_key: Path | None = Field(default=None, description="its private key (PEM)")

    @model_validator(mode="after")
    def _pair(self) -> DestinationTls:
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("tls.certificate and tls.private_key go together (mutual TLS needs both)")
        return self


class HttpAuth(BaseModel):
    """How the node signs in to a DICOMweb server: HTTP Basic (``username`` and
    ``password``) or a bearer ``token``. Secrets may come from the environment instead
    of the file, e.g. ``AINODE_PACS__AUTH__PASSWORD``."""

    model_config = ConfigDict(extra="forbid")

    username: str | None = Field(default=None, min_length=1, description="HTTP Basic user name")
    password: SecretStr | None = Field(default=None, description="HTTP Basic password")
    token: SecretStr | None = Field(default=None, description="bearer token (instead of user name and password)")

    @model_validator(mode="after")
    def _check(self) -> HttpAuth:
        if (self.username is None) != (self.password is None):
            raise ValueError("auth.username and auth.password go together (HTTP Basic needs both)")
        if self.token is not None and self.username is not None:
            raise ValueError("auth: set either token or username and password, not both")
        if self.token is None and self.username is None:
            raise ValueError("auth: set token, or username and password")
        return self


class Destination(BaseModel):
    """Where results are sent (one ``[[destinations]]`` table), named by routes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, description="named in routes' destinations")
    type: Literal["dicom", "dicomweb"] = Field(default="dicom", description="C-STORE or STOW-RS")
    ae_title: str | None = Field(default=None, description="the archive's AE title (dicom)")
    host: str | None = Field(default=None, description="its address (dicom)")
    port: int | None = Field(default=None, ge=1, le=65535, description="its port (dicom)")
    url: str | None = Field(default=None, description="STOW-RS base URL, e.g. http://pacs:8042/dicom-web")
    auth: HttpAuth | None = Field(default=None, description="how to sign in to the STOW-RS server (dicomweb)")
    timeout_s: float = Field(default=30.0, gt=0)
    tls: DestinationTls | None = Field(default=None, description="send over DICOM TLS (dicom)")
    purpose: Literal["clinical", "research"] = Field(
        default="clinical",
        description='"clinical" (the archive radiologists read from) or "research": shadow routes '
                    "send only to research destinations",
    )
    objects: list[Literal["seg", "sr", "sc", "pm"]] = Field(
        default=["seg", "sr"], min_length=1,
        description='which results it receives: "seg" (Segmentation, and the probabilities of models '
                    'that give them as a fractional SEG), "sr" (TID 1500 report), "sc" (Secondary '
                    'Capture key images with outlines and explanation overlays, for viewers without '
                    'SEG), "pm" (Parametric Maps of the models\' explanation maps)',
    )

    @model_validator(mode="after")
    def _check(self) -> Destination:
        if self.type == "dicom":
            missing = [k for k in ("ae_title", "host", "port") if getattr(self, k) in (None, "")]
            if missing:
                raise ValueError(f"destination {self.name!r} (dicom) needs {', '.join(missing)}")
            validate_ae_title(self.ae_title or "")
        elif not (self.url and self.url.startswith(("http://", "https://"))):
            raise ValueError(f"destination {self.name!r} (dicomweb) needs url = \"http(s)://...\"")
        return self


class ModelSettings(BaseModel):
    """Settings of one model (a ``[models.<name>]`` table)."""

    model_config = ConfigDict(extra="forbid")

    options: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments the model is made with, e.g. emphysema_threshold_pct = 6.0",
    )
    gpu_memory_mb: int | None = Field(
        default=None, ge=0,
        description="GPU memory one run may use at most; unset: what the model declares; 0: no bound",
    )
    cpu_threads: int | None = Field(
        default=None, ge=1, le=256,
        description="PyTorch CPU threads while this model runs; unset: the worker's share of the cores",
    )
    timeout_s: float | None = Field(
        default=None, ge=1,
        description="the longest the model may run on one series; beyond it its job ends dead with "
                    "that reason and its worker is restarted (a stuck model cannot be stopped otherwise)",
    )
    device: Literal["auto", "cpu"] = Field(
        default="auto",
        description='where it runs: "auto" (its worker\'s device, a GPU where there is one) or "cpu" '
                    "(always the CPU, e.g. a light model that should leave the GPU to others)",
    )
    memory_mb: int | None = Field(
        default=None, ge=0,
        description="the memory it keeps loaded, for inference_memory_budget_mb; unset: measured at load",
    )


Level = Literal["routine", "urgent", "critical"]


class TriageRule(BaseModel):
    """A finding that raises a study's level (one ``[[triage]]`` table)."""

    model_config = ConfigDict(extra="forbid")

    finding: str = Field(min_length=1, description='a model finding, e.g. "emphysema suspected"')
    model: str | None = Field(default=None, description="only this model's finding; unset: any model's")
    min_score: float = Field(default=0.5, ge=0, le=1, description="the score from which the rule applies")
    level: Level = Field(default="urgent", description="the level the study is raised to")


class Notification(BaseModel):
    """Who is told when a study reaches a level (one ``[[notifications]]`` table)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    type: Literal["hl7", "webhook"] = Field(description="hl7: ORU^R01 over MLLP; webhook: JSON POST")
    min_level: Level = Field(default="critical", description="studies at or above this level are notified")
    host: str | None = Field(default=None, description="the RIS's MLLP address (hl7)")
    port: int | None = Field(default=None, ge=1, le=65535, description="its MLLP port (hl7)")
    url: str | None = Field(default=None, description="where the JSON is POSTed (webhook)")
    sending_facility: str = Field(default="AINODE", max_length=20, description="MSH-4 (hl7)")
    receiving_application: str = Field(default="RIS", max_length=20, description="MSH-5 (hl7)")
    receiving_facility: str = Field(default="HOSPITAL", max_length=20, description="MSH-6 (hl7)")
    timeout_s: float = Field(default=10.0, gt=0)
    drift_alerts: bool = Field(
        default=False,
        description="webhook: also POST an alert when a model's drift signal crosses its threshold",
    )

    @model_validator(mode="after")
    def _check(self) -> Notification:
        if self.drift_alerts and self.type != "webhook":
            raise ValueError(f"notification {self.name!r}: drift_alerts go to webhooks only (type = \"webhook\")")
        if self.type == "hl7" and not (self.host and self.port):
            raise ValueError(f"notification {self.name!r} (hl7) needs host and port")
        if self.type == "webhook" and not (self.url and self.url.startswith(("http://", "https://"))):
            raise ValueError(f"notification {self.name!r} (webhook) needs url = \"http(s)://...\"")
        return self


class PacsSettings(BaseModel):
    """The archive the node asks for earlier studies (``[pacs]``), for priors and backfill
    (``ainode fetch``): over DICOM (C-FIND, then C-MOVE to the node or C-GET) at ``host``
    and ``port``, or over DICOMweb (QIDO-RS, then WADO-RS) at ``dicomweb_url``."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field(min_length=1, max_length=16, description="the archive's AE title (logs name it so)")
    host: str | None = Field(default=None, min_length=1, description="its address (DICOM)")
    port: int | None = Field(default=None, ge=1, le=65535, description="its DICOM port")
    dicomweb_url: str | None = Field(
        default=None, description="its DICOMweb root, e.g. http://pacs:8042/dicom-web: when set, studies are "
                                  "found with QIDO-RS and fetched with WADO-RS instead of C-FIND and C-MOVE")
    auth: HttpAuth | None = Field(default=None, description="how to sign in to dicomweb_url")
    move_destination: str | None = Field(
        default=None, max_length=16,
        description="the AE title the archive sends C-MOVE results to: this node as the archive knows it "
                    "(default: ae_title of this node)",
    )
    retrieve: Literal["move", "get"] = Field(
        default="move",
        description='how studies are fetched over DICOM: "move" (C-MOVE: the archive opens an association to '
                    'the node, which it must know by AE title, address and port) or "get" (C-GET: the images '
                    "come back on the node's own association; nothing to configure on the archive's side "
                    "but its permission)")
    timeout_s: float = Field(default=60.0, gt=0, description="network and DIMSE timeout of each query or move")
    retrieve_per_minute: float = Field(
        default=6.0, gt=0, description="at most this many studies retrieved a minute (all workers together)",
    )
    retrieve_hours: str = Field(
        default="", pattern=r"^$|^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$",
        description='retrieve only within these local hours, e.g. "20:00-06:00" (off-peak); empty: any time',
    )

    @model_validator(mode="after")
    def _check(self) -> PacsSettings:
        validate_ae_title(self.ae_title)
        if self.dicomweb_url is None and (self.host is None or self.port is None):
            raise ValueError("[pacs] needs host and port (DICOM) or dicomweb_url (DICOMweb)")
        if self.dicomweb_url is not None and not self.dicomweb_url.startswith(("http://", "https://")):
            raise ValueError(f"[pacs] dicomweb_url {self.dicomweb_url!r} is not an http(s) URL")
        if self.move_destination:
            validate_ae_title(self.move_destination)
        return self


class QualitySettings(BaseModel):
    """How models' quality reports and drift signals are computed (``[quality]``)."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(
        default=3600.0, ge=0,
        description="Every model's metrics, subgroups and drift are recomputed this often; 0: on demand only.",
    )
    drift_window_days: float = Field(default=7.0, gt=0, description="The current window of drift signals.")
    drift_reference_days: float = Field(
        default=28.0, gt=0, description="The reference window: this many days before the current window.",
    )
    drift_reference_from: date | None = Field(
        default=None, description="Pin the reference window instead (e.g. the go-live month), with ..._to.",
    )
    drift_reference_to: date | None = Field(default=None, description="Last day of the pinned reference window.")
    drift_min_cases: int = Field(default=30, ge=2, description="Fewer cases in a window: no drift is judged.")
    drift_threshold: float = Field(
        default=0.25, gt=0, description="Population stability index from which a signal has shifted.",
    )
    drift_p_value: float = Field(
        default=0.01, gt=0, le=1,
        description="...and the two-sample test's p-value below which the shift is not chance.",
    )

    @model_validator(mode="after")
    def _check(self) -> QualitySettings:
        if (self.drift_reference_from is None) != (self.drift_reference_to is None):
            raise ValueError("quality.drift_reference_from and drift_reference_to go together: set both or neither")
        if self.drift_reference_from and self.drift_reference_to and \
                self.drift_reference_to < self.drift_reference_from:
            raise ValueError("quality.drift_reference_to is before drift_reference_from")
        return self


_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def default_routes() -> list[Route]:
    """The built-in route: chest CT to the built-in ct-chest model.

    Axial CT series of at least 20 images up to 10 mm thick whose header names the
    chest, or names no region at all (ct-chest then checks for lungs itself and
    declines a volume without them). On slices over 3 mm the lung volumes still
    hold; ct-chest marks its density indices unreliable there.
    """
    return [
        Route(
            name="ct-chest",
            model="ct-chest",
            match=SeriesMatch(
                modality=["CT"], orientation=["AXIAL"], region=["CHEST"], min_instances=20,
                slice_thickness_max=10.0,
            ),
            select="smoothest_kernel",
        )
    ]


class Settings(BaseSettings):
    """Every setting of the node, with its default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(
        default=Path("./var/ainode"),
        description="Where received images, the SQLite database and results are kept.",
    )
    database_url: str = Field(
        default="",
        description="SQLAlchemy URL; empty means SQLite at <data_dir>/ainode.db.",
    )
    db_busy_timeout_ms: int = Field(
        default=5000,
        ge=0,
        description="How long a SQLite writer waits for a lock before failing (ms).",
    )
    store_db_wait_s: float = Field(
        default=10.0,
        ge=0,
        description=(
            "How long a C-STORE keeps retrying a locked or unreachable database before it "
            "answers 0xA700 (out of resources); keep it well under the senders' DIMSE timeout."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")

    ae_title: str = Field(default="AINODE", description="The node's own (called) AE title.")
    host: str = Field(default="0.0.0.0", description="Address the DICOM listener binds to.")
    port: int = Field(default=11112, ge=1, le=65535, description="DICOM listener port.")
    max_associations: int = Field(
        default=16, ge=1, le=1000, description="Concurrent associations accepted at most."
    )
    max_associations_per_peer: int = Field(
        default=8, ge=1, le=1000,
        description="Concurrent associations from one sending host (IP address) at most.",
    )
    max_instance_mb: float = Field(
        default=1024.0, gt=0,
        description="Largest instance accepted (MB); a larger one is aborted while it arrives.",
    )
    max_association_mb: float = Field(
        default=20_000.0, ge=0,
        description="Bytes one association may bring (MB); beyond it C-STOREs are answered 0xA700. 0: no limit.",
    )
    min_free_disk_mb: float = Field(
        default=1024.0, ge=0,
        description="Free space kept on the data folder's disk (MB): C-STOREs that would eat into it "
                    "are answered 0xA700 (out of resources) until space returns.",
    )
    max_pdu_size: int = Field(
        default=1_048_576,
        ge=0,
        description="Largest PDU the node receives, in bytes; 0 means no limit.",
    )
    listener_processes: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Processes receiving DICOM on the port; 0 means one per CPU core (2 to 8).",
    )
    network_timeout_s: float = Field(
        default=60.0, gt=0,
        description="Idle association timeout; also how long a PDU may take to arrive once it has begun.",
    )
    handshake_timeout_s: float = Field(
        default=10.0, gt=0, le=300,
        description="Time from TCP connect to a complete A-ASSOCIATE-RQ (TLS handshake included); "
                    "bytes trickling in do not extend it.",
    )
    max_pending_handshakes: int = Field(
        default=64, ge=1, le=10_000,
        description="Connections per listener process still sending their A-ASSOCIATE-RQ; beyond it "
                    "the oldest such connection is closed to make room.",
    )
    max_pending_handshakes_per_peer: int = Field(
        default=16, ge=1, le=10_000,
        description="The same, for one sending host (IP address).",
    )
    acse_timeout_s: float = Field(default=30.0, gt=0)
    dimse_timeout_s: float = Field(default=60.0, gt=0)

    tls: ListenerTls | None = Field(
        default=None, description="A DICOM TLS port besides the plain one ([tls] table).",
    )

    accept_any: bool = Field(
        default=False,
        description="Accept any calling AE from any host. Off: only [[peers]] (or loopback).",
    )
    peers: list[Peer] = Field(default_factory=list)

    quiet_period_s: float = Field(
        default=30.0, gt=0, description="A study is complete after this long without new images."
    )
    force_complete_after_s: float = Field(
        default=3600.0, gt=0,
        description="A study still receiving this long after its first image is completed anyway.",
    )
    completion_sweep_s: float = Field(default=2.0, gt=0, le=60)
    routes: list[Route] = Field(default_factory=default_routes)

    retention_days: float = Field(
        default=30.0, ge=0,
        description="Studies whose last image is older than this are removed; 0 keeps them forever.",
    )
    retention_sweep_s: float = Field(default=3600.0, gt=0)

    workers: int = Field(
        default=1, ge=0, le=64,
        description="Processes running queued jobs other than inference (0: none here).",
    )
    inference_devices: list[str] = Field(
        default_factory=list,
        description='Devices for inference workers, e.g. ["cuda:0", "cuda:1"] or ["cpu"]; '
                    "empty: every CUDA device present, else the CPU.",
    )
    inference_workers_per_device: int = Field(
        default=1, ge=0, le=16,
        description="Inference processes per device; 0: none here (another machine runs "
                    "`ainode worker`).",
    )
    inference_memory_budget_mb: int = Field(
        default=0, ge=0,
        description="Memory the models of one inference worker may keep loaded (MiB: GPU memory "
                    "on a GPU worker, resident memory on a CPU one); models are then loaded on "
                    "first use and the least recently used unloaded when the next would not fit. "
                    "0: every model loaded at start and kept.",
    )
    destinations: list[Destination] = Field(default_factory=list)
    models: dict[str, ModelSettings] = Field(
        default_factory=dict, description="Per-model settings, by model name.",
    )
    model_folders: list[Path] = Field(
        default_factory=list,
        description="Folders with TorchScript/ONNX models described by an ainode-model.toml "
                    "(a model folder, or a folder of model folders).",
    )
    triage: list[TriageRule] = Field(
        default_factory=list,
        description="Findings that raise a study's level; without any, a finding marked present "
                    "with a score of at least 0.5 raises it to urgent.",
    )
    notifications: list[Notification] = Field(default_factory=list)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    pacs: PacsSettings | None = Field(default=None, description="the archive earlier studies are retrieved from")
    api_host: str = Field(
        default="127.0.0.1",
        description="Address of the REST API, web worklist and /metrics; beyond loopback api_token is required.",
    )
    api_port: int = Field(default=8080, ge=0, le=65535, description="Its port; 0: no API.")
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token the API asks for (required when api_host is not loopback).",
    )
    api_allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names by which browsers reach the API besides localhost and this machine's own "
                    "names (IP addresses are always accepted); any other Host header is refused.",
    )
    job_lease_s: float = Field(
        default=60.0, ge=1,
        description="A running job whose worker stops heartbeating for this long is retried.",
    )
    job_max_attempts: int = Field(default=5, ge=1, le=100)
    worker_memory_release_s: float = Field(
        default=600.0, ge=0,
        description="Job and inference workers keep the memory a study freed for the next "
                    "one, and give it back to the system after this many seconds without a job "
                    "(the next study then maps it anew: about 2 s more for a 300-slice CT).",
    )
    job_retry_base_delay_s: float = Field(default=10.0, gt=0)
    job_retry_max_delay_s: float = Field(default=600.0, gt=0)
    job_aging_s_per_priority: float = Field(
        default=300.0, gt=0,
        description="Waiting this long counts as one priority level, so routine work never starves.",
    )

    _check_ae = field_validator("ae_title")(validate_ae_title)

    @field_validator("host")
    @classmethod
    def _check_bind_host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address; use e.g. 0.0.0.0 or 127.0.0.1") from None
        return value

    @field_validator("max_pdu_size")
    @classmethod
    def _check_pdu(cls, value: int) -> int:
        if value != 0 and not 4096 <= value <= 2**32 - 1:
            raise ValueError("must be 0 (no limit) or between 4096 and 4294967295 bytes")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value and not (value.startswith("sqlite") or value.startswith("postgresql")):
            raise ValueError("only sqlite:/// and postgresql:// URLs are supported")
        return value

    @field_validator("inference_devices")
    @classmethod
    def _check_devices(cls, value: list[str]) -> list[str]:
        for device in value:
            if not _DEVICE.match(device):
                raise ValueError(f"{device!r} is not a device; write \"cpu\", \"cuda\" or \"cuda:N\"")
        if len(set(value)) != len(value):
            raise ValueError("a device is listed twice")
        return value

    @model_validator(mode="after")
    def _unique_route_names(self) -> Settings:
        names = [r.name for r in self.routes]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"route name {name!r} is used twice; give each [[routes]] its own")
        return self

    @model_validator(mode="after")
    def _priors_need_a_pacs(self) -> Settings:
        for route in self.routes:
            if route.priors is not None and self.pacs is None:
                raise ValueError(f"route {route.name!r} asks for priors, which come from the PACS: add a [pacs] "
                                 "table (ae_title, host, port) or take [routes.priors] out")
        return self

    @model_validator(mode="after")
    def _known_destinations(self) -> Settings:
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError("two [[destinations]] have the same name")
        purposes = {d.name: d.purpose for d in self.destinations}
        for route in self.routes:
            for name in route.destinations:
                if name not in names:
                    raise ValueError(f"route {route.name!r} sends to {name!r}, which is not in "
                                     f"[[destinations]] ({', '.join(names) or 'none configured'})")
                if route.shadow and purposes[name] != "research":
                    raise ValueError(f"route {route.name!r} is a shadow route and sends to {name!r}, a clinical "
                                     f"destination; give that destination purpose = \"research\" or take it "
                                     "out of the route's destinations")
        return self

    @model_validator(mode="after")
    def _api_protected(self) -> Settings:
        try:
            loopback = ipaddress.ip_address(self.api_host).is_loopback
        except ValueError:
            raise ValueError(f"api_host {self.api_host!r} is not an IP address; use e.g. 127.0.0.1") from None
        token = self.api_token.get_secret_value() if self.api_token else ""
        if not loopback and self.api_port and len(token) < 16:
            raise ValueError(f"api_host = {self.api_host!r} is reachable from the network: set api_token "
                             "(at least 16 characters, e.g. from `openssl rand -hex 24`)")
        names = [n.name for n in self.notifications]
        if len(set(names)) != len(names):
            raise ValueError("two [[notifications]] have the same name")
        return self

    @model_validator(mode="after")
    def _no_duplicate_peers(self) -> Settings:
        seen = set()
        for peer in self.peers:
            key = (peer.ae_title, peer.host)
            if key in seen:
                raise ValueError(f"peer {peer.ae_title}@{peer.host or 'any host'} is listed twice")
            seen.add(key)
        return self

    @property
    def effective_database_url(self) -> str:
        """The database URL in use: the configured one, or SQLite inside ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'ainode.db').resolve()}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


class ConfigError(Exception):
    """The configuration is unusable; the message is one line per problem, for a person."""


def _describe_error(err: ErrorDetails) -> str:
    loc = [str(p) for p in err.get("loc", ())]
    name = ".".join(loc) if loc else "configuration"
    top = loc[0] if loc else ""
    msg = err.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if err.get("type") == "extra_forbidden":
        return (
            f"setting '{name}': unknown setting; check its spelling against "
            "config/ainode.example.toml"
        )
    where = f"'{name}' in the config file"
    if top and top != "peers":
        where += f", {ENV_PREFIX}{top.upper()}"
        if top in {"data_dir", "port", "ae_title", "host"}:
            where += f" or --{top.replace('_', '-')}"
    value = err.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, (dict, list)) else ""
    return f"setting '{name}'{shown}: {msg}; fix it in {where}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from flags (``overrides``), environment, TOML file and defaults.

    Raises:
        ConfigError: the file is missing or not TOML, or a value is invalid. The
            message names each bad setting and where to fix it.
    """
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"config file {config_file} does not exist; check --config")
        try:
            tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
    cls: type[Settings] = Settings
    if config_file is not None:
        cls = type(
            "Settings",
            (Settings,),
            {"model_config": SettingsConfigDict(**{**Settings.model_config, "toml_file": config_file})},
        )
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        merged = cls(**given)
    except ValidationError as exc:
        raise ConfigError("\n".join(_describe_error(e) for e in exc.errors())) from None
    except SettingsError as exc:  # a list or table setting from the environment that is not JSON
        field = re.search(r'field "([^"]+)"', str(exc))
        name = field.group(1) if field else "?"
        raise ConfigError(
            f"setting '{name}' from the environment ({ENV_PREFIX}{name.upper()}): not valid JSON; write it as "
            f"JSON, e.g. {ENV_PREFIX}PEERS='[{{\"ae_title\": \"CT01\", \"host\": \"10.0.0.5\"}}]', "
            "or set it in the config file"
        ) from None
    # A plain Settings (not the per-file subclass) so that it pickles for the
    # listener processes; every value is given, so nothing is read a second time.
    return Settings(**merged.model_dump())
