"""Configuration of the DICOM node: command-line options and TOML file, one dataclass.

Options follow DCMTK/pynetdicom naming (positional ``port``, ``-aet``,
``-od``, ``-ta/-td/-tn``, ``-q/-v/-d``) and keep the aliases of the original
prototype (``--scp_port``, ``--scp_ip``, ``--storage_path``, ``--scu_ip``,
``--scu_port``, ``--export_series True``). A TOML file given with
``--config`` may set any long option, spelled with ``-`` or ``_``; options on
the command line win over the file.
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vacseg_monai.dicom.outputs import OutputKind, check_root_uid
from vacseg_monai.dicom.profiles import DEFAULT_PROFILE, OutputProfile, load_profile, profile_from_mapping
from vacseg_monai.labels import LABELS
from vacseg_monai.options import load_toml, parse_bool
from vacseg_monai.paths import default_bundle_root

__all__ = [
    "DEFAULT_PROCESSOR",
    "Destination",
    "NodeConfig",
    "OutputKind",
    "ReviewPolicy",
    "build_argument_parser",
    "is_loopback",
    "config_from_namespace",
    "parse_bool",
    "parse_destination",
    "parse_node_args",
]

logger = logging.getLogger(__name__)

DEFAULT_PROCESSOR = "vacseg_monai.service.processor:BundleProcessor"


@dataclass(frozen=True)
class Destination:
    """Where results are sent (a Storage SCP).

    Args:
        host: host name or IP address.
        port: TCP port, 1..65535.
        ae_title: called AE title (default "ANY-SCP", as DCMTK).
    """

    host: str
    port: int
    ae_title: str = "ANY-SCP"

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class ReviewPolicy(str, enum.Enum):
    """What the node does with a result whose quality score flags a structure."""

    SEND = "send"
    HOLD = "hold"
    SEND_MARKED = "send-marked"

    @classmethod
    def coerce(cls, value: str | ReviewPolicy) -> ReviewPolicy:
        """Parse a policy name, naming the choices when it is not one."""
        try:
            return cls(getattr(value, "value", value))
        except ValueError:
            raise ValueError(f"`review_policy` must be one of {[p.value for p in cls]}, got {value!r}.") from None


@dataclass
class NodeConfig:
    """Everything the node needs; built from CLI options and/or a TOML file.

    Args:
        port: listen port (default 11112).
        ae_title: our AE title (default "VACSEG").
        bind_address: listen address (default "127.0.0.1").
        output_directory: where jobs, series and outputs are kept (default "vacseg_node").
        bundle: MONAI bundle directory handed to the processor factory (default: the repository's
            ``bundles/vacbag_ct_segmentation``, found from the current folder or beside the package).
        processor: ``"module:factory"`` creating the processing callable in the worker.
        processor_args: extra keyword arguments for the factory (TOML only).
        destination: where results go; None keeps them on disk only.
        output: which result objects the processor should produce (default rtstruct).
        export_series: also send the received CT back (default False).
        root_uid: UID root for generated UIDs (default None: pydicom's).
        allowed_aet: calling AE titles accepted; empty accepts all.
        allowed_host: peer IP addresses accepted; empty accepts all.
        tls_cert: PEM certificate enabling TLS for the SCP and the export.
        tls_key: PEM private key of ``tls_cert``.
        tls_ca: PEM CA bundle; the SCP then requires client certificates and
            the export verifies the destination.
        series_timeout: seconds of quiet after an association ends before a
            series counts as complete; 0 means complete at release (default 0).
        acse_timeout: ``-ta`` seconds (default 30).
        dimse_timeout: ``-td`` seconds (default 60).
        network_timeout: ``-tn`` seconds (default 60).
        min_free_mb: refuse instances with 0xA700 below this free space (default 500).
        export_timeout: seconds of failed export attempts before a job fails (default 600).
        export_retry_initial: first retry delay in seconds, doubled each time (default 1).
        export_retry_max: longest retry delay in seconds (default 30).
        modalities: modalities the worker processes; others fail (default CT).
        worker_nice: how much lower the worker's CPU priority is than the SCP's (``nice`` increment, 0-19;
            default 10): receiving and acknowledging images goes first when both want the processor,
            and the worker has every spare cycle. 0 runs both alike.
        review_policy: what the node does with a result whose quality score flags a structure:
            ``send`` it as any other (default), ``hold`` it in the ``review`` state until
            ``--approve``/``--reject``, or ``send-marked`` with the flagged ROI names suffixed.
        review_suffix: the suffix of ``send-marked`` (default ``" CHECK"``); names stay within 64 characters.
        log_level: logging level name for :func:`logging.basicConfig` (default INFO).
        profile: the output profile: ``generic`` (default), ``eclipse``, ``raystation``, a TOML file with a
            ``[profile]`` table, or that table itself (TOML ``[profile]``); an
            :class:`~vacseg_monai.dicom.profiles.OutputProfile` once the config is built.
        label_suffix: appended to every ROI name and segment label, e.g. ``" NOT FOR CLINICAL USE"``
            (default None: the profile's suffix).
        dry_run: compute and keep the results in the job folder, never send them (default False).
        http_port: port of the read-only dashboard (:mod:`vacseg_monai.service.dashboard`); None, the
            default, serves none.
        http_bind_address: address the dashboard listens on (default None: ``bind_address``). Anything but
            a loopback address needs ``http_token`` or TLS (``tls_cert``).
        http_token: bearer token every dashboard request must carry (default None: none asked).
        http_show_names: show patient names on the dashboard (default False: patient IDs only).
    """

    port: int = 11112
    ae_title: str = "VACSEG"
    bind_address: str = "127.0.0.1"
    output_directory: Path = Path("vacseg_node")
    bundle: Path = field(default_factory=lambda: Path(default_bundle_root()))
    processor: str = DEFAULT_PROCESSOR
    processor_args: dict = field(default_factory=dict)
    destination: Destination | None = None
    output: OutputKind = OutputKind.RTSTRUCT
    export_series: bool = False
    root_uid: str | None = None
    allowed_aet: list[str] = field(default_factory=list)
    allowed_host: list[str] = field(default_factory=list)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    series_timeout: float = 0.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    min_free_mb: float = 500.0
    export_timeout: float = 600.0
    export_retry_initial: float = 1.0
    export_retry_max: float = 30.0
    modalities: list[str] = field(default_factory=lambda: ["CT"])
    worker_nice: int = 10
    review_policy: ReviewPolicy = ReviewPolicy.SEND
    review_suffix: str = " CHECK"
    log_level: str = "INFO"
    profile: Any = DEFAULT_PROFILE
    label_suffix: str | None = None
    dry_run: bool = False
    http_port: int | None = None
    http_bind_address: str | None = None
    http_token: str | None = None
    http_show_names: bool = False

    def __post_init__(self) -> None:
        self.port = _port(self.port, "port")
        self.output_directory = Path(self.output_directory)
        self.bundle = Path(self.bundle)
        if isinstance(self.destination, str):
            self.destination = parse_destination(self.destination)
        self.output = OutputKind(self.output)
        self.export_series = parse_bool(self.export_series)
        self.review_policy = ReviewPolicy.coerce(self.review_policy)
        if not 0 < len(str(self.review_suffix)) <= 16 or "\\" in str(self.review_suffix):
            raise ValueError(f"`review_suffix` must be 1 to 16 characters without a backslash, got {self.review_suffix!r}.")
        if self.root_uid is not None:
            root = str(self.root_uid)
            try:
                self.root_uid = check_root_uid(root if root.endswith(".") else root + ".")
            except ValueError as exc:
                raise ValueError(f"`root_uid` is not a valid UID root: {exc}") from exc
        if not isinstance(self.ae_title, str) or not 0 < len(self.ae_title.strip()) <= 16:
            raise ValueError(f"`ae_title` must be 1-16 characters, got {self.ae_title!r}.")
        for name in ("tls_cert", "tls_key", "tls_ca"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("`tls_cert` and `tls_key` must be given together.")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("`tls_ca` needs `tls_cert` and `tls_key` (TLS is enabled by the certificate).")
        for name in (
            "series_timeout", "acse_timeout", "dimse_timeout", "network_timeout", "min_free_mb",
            "export_timeout", "export_retry_initial", "export_retry_max",
        ):
            value = float(getattr(self, name))
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0, got {value}.")
            setattr(self, name, value)
        self.allowed_aet = [str(v).strip() for v in self.allowed_aet]
        self.allowed_host = [str(v) for v in self.allowed_host]
        self.modalities = [str(v).upper() for v in self.modalities]
        try:
            self.worker_nice = int(self.worker_nice)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"`worker_nice` must be an integer in [0, 19], got {self.worker_nice!r}.") from exc
        if not 0 <= self.worker_nice <= 19:
            raise ValueError(f"`worker_nice` must be an integer in [0, 19], got {self.worker_nice}.")
        if not isinstance(self.processor, str) or ":" not in self.processor:
            raise ValueError(f"`processor` must look like 'package.module:factory', got {self.processor!r}.")
        self._check_output_profile()
        self._check_http()

    def _check_output_profile(self) -> None:
        """Load the output profile (with the label suffix) and parse ``dry_run``."""
        if self.label_suffix is not None and not isinstance(self.label_suffix, str):
            raise ValueError(f"`label_suffix` must be a string, got {self.label_suffix!r}.")
        if not isinstance(self.profile, OutputProfile) or self.label_suffix is not None:
            try:
                self.profile = load_profile(self.profile, label_suffix=self.label_suffix)
            except ValueError as exc:
                raise ValueError(f"`profile`: {exc}") from exc
        if self.review_policy is ReviewPolicy.SEND_MARKED:  # a marked name must fit too: say so now, not per job
            try:
                self.profile.apply(marks={label.value: self.review_suffix for label in LABELS})
            except ValueError as exc:
                raise ValueError(f"`review_suffix` {self.review_suffix!r} with `profile`: {exc}") from exc
        self.dry_run = parse_bool(self.dry_run)

    def _check_http(self) -> None:
        """Validate the dashboard options; a non-loopback dashboard needs a token or TLS."""
        self.http_show_names = parse_bool(self.http_show_names)
        if self.http_port is not None:
            self.http_port = _port(self.http_port, "http_port")
        if self.http_token is not None:
            self.http_token = str(self.http_token)
            if len(self.http_token) < 16 or not self.http_token.isprintable() or " " in self.http_token:
                raise ValueError("`http_token` must be at least 16 printable characters without spaces "
                                 f"(e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`), got "
                                 f"{len(self.http_token)} characters.")
        if self.http_port is not None and not is_loopback(self.dashboard_address) and not (
            self.http_token or self.tls_enabled
        ):
            raise ValueError(
                f"The dashboard would listen on {self.dashboard_address}, which is not a loopback address, without "
                "protection: give `--http-token` (requests then need it) or `--tls-cert`/`--tls-key` (HTTPS with "
                "the node's certificate), or bind it to 127.0.0.1 with `--http-bind-address`."
            )

    @property
    def dashboard_address(self) -> str:
        """The address the dashboard listens on (``http_bind_address``, else ``bind_address``)."""
        return self.http_bind_address or self.bind_address

    @property
    def tls_enabled(self) -> bool:
        """True when a certificate is configured."""
        return self.tls_cert is not None


def is_loopback(address: str) -> bool:
    """True if ``address`` is a loopback IP address or ``localhost`` (no other name is resolved).

    Args:
        address: an IPv4/IPv6 address or a host name.
    """
    if str(address).strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(str(address).strip("[]")).is_loopback
    except ValueError:
        return False


def _port(value: object, name: str) -> int:
    try:
        port = int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be an integer, got {value!r}.") from exc
    if not 0 <= port <= 65535:
        raise ValueError(f"`{name}` must be in [0, 65535], got {port}.")
    return port


def parse_destination(text: str) -> Destination:
    """Parse ``HOST:PORT[:AET]``.

    Args:
        text: the destination string.

    Raises:
        ValueError: if the port is missing or not an integer.
    """
    parts = str(text).split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise ValueError(f"Destination must be HOST:PORT[:AET], got {text!r}.")
    port = _port(parts[1], "destination port")
    if len(parts) == 3 and parts[2]:
        return Destination(parts[0], port, parts[2])
    return Destination(parts[0], port)


def _argparse_type(func):
    def wrapped(text: str):
        try:
            return func(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    wrapped.__name__ = func.__name__
    return wrapped


def build_argument_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Return the parser of ``scripts/serve_scp.py``.

    Args:
        prog: program name shown in usage (default: argparse's).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Vacbag auto-contouring DICOM node: a Storage SCP that stores each CT "
            "series, queues it on disk, runs the segmentation in a worker process "
            "and sends RTSTRUCT/SEG results to a destination."
        ),
        usage="%(prog)s [options] [port]",
    )
    parser.add_argument("--config", metavar="FILE", type=Path, help="TOML file with any of the long options below (keys with - or _); command-line options win")
    parser.add_argument("--status", action="store_true", help="list the jobs in the output directory with their states and exit")
    parser.add_argument("--approve", metavar="JOB", help="send a job held in review (--review-policy hold) and exit; a running node sends it at once")
    parser.add_argument("--reject", metavar="JOB", help="reject a job held in review: its results are kept but never sent; then exit")
    verb = parser.add_mutually_exclusive_group()
    verb.add_argument("-q", "--quiet", dest="log_level", action="store_const", const="WARNING", help="quiet mode, print warnings and errors only")
    verb.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="INFO", help="verbose mode, print processing details (default)")
    verb.add_argument("-d", "--debug", dest="log_level", action="store_const", const="DEBUG", help="debug mode, print debug information (pynetdicom too)")

    net = parser.add_argument_group("Network")
    net.add_argument("port_positional", nargs="?", metavar="port", type=_argparse_type(lambda v: _port(v, "port")), help="TCP/IP port number to listen on (default 11112)")
    net.add_argument("--port", "--scp_port", dest="port", type=_argparse_type(lambda v: _port(v, "port")), help="same as the positional port")
    net.add_argument("-aet", "--ae-title", dest="ae_title", metavar="AETITLE", help="our AE title (default VACSEG)")
    net.add_argument("-ba", "--bind-address", "--scp_ip", dest="bind_address", metavar="ADDRESS", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    net.add_argument("--destination", metavar="HOST:PORT[:AET]", type=_argparse_type(parse_destination), help="Storage SCP receiving the results (called AE defaults to ANY-SCP); without it results stay on disk")
    net.add_argument("--scu_ip", metavar="HOST", help="destination host (alias, with --scu_port, of --destination)")
    net.add_argument("--scu_port", metavar="PORT", type=_argparse_type(lambda v: _port(v, "scu_port")), help="destination port (alias, with --scu_ip, of --destination)")
    net.add_argument("--allowed-aet", dest="allowed_aet", action="append", metavar="AETITLE", help="accept associations only from this calling AE title (repeatable; default: any)")
    net.add_argument("--allowed-host", dest="allowed_host", action="append", metavar="IP", help="accept associations only from this peer address (repeatable; default: any)")
    net.add_argument("-ta", "--acse-timeout", dest="acse_timeout", type=float, metavar="SEC", help="timeout for ACSE messages (default 30)")
    net.add_argument("-td", "--dimse-timeout", dest="dimse_timeout", type=float, metavar="SEC", help="timeout for DIMSE messages (default 60)")
    net.add_argument("-tn", "--network-timeout", dest="network_timeout", type=float, metavar="SEC", help="timeout for the network (default 60)")

    out = parser.add_argument_group("Output")
    out.add_argument("-od", "--output-directory", "--storage_path", dest="output_directory", type=Path, metavar="DIR", help="directory for jobs, received series and results (default vacseg_node)")
    out.add_argument("--output", choices=[k.value for k in OutputKind if k is not OutputKind.NONE], help="result objects to produce: rtstruct, seg or both (default rtstruct)")
    out.add_argument("--export-series", "--export_series", dest="export_series", nargs="?", const=True, type=_argparse_type(parse_bool), metavar="BOOL", help="also send the received CT series back to the destination (a bare flag means True; accepts True/False)")
    out.add_argument("--root-uid", dest="root_uid", metavar="UID", help="UID root for generated series/instance UIDs (default: pydicom's root)")
    out.add_argument("--min-free-mb", dest="min_free_mb", type=float, metavar="MB", help="refuse instances with status 0xA700 when the output disk has less free space (default 500)")
    out.add_argument("--export-timeout", dest="export_timeout", type=float, metavar="SEC", help="keep retrying an unreachable destination this long, then fail the job and keep its files (default 600)")
    out.add_argument("--export-retry-initial", dest="export_retry_initial", type=float, metavar="SEC", help="first delay between export attempts, doubled up to --export-retry-max (default 1)")
    out.add_argument("--export-retry-max", dest="export_retry_max", type=float, metavar="SEC", help="longest delay between export attempts (default 30)")
    out.add_argument("--profile", metavar="NAME|FILE", help="output profile: ROI names, types, colours and physical properties for the planning system: generic (default), eclipse, raystation, or a TOML file with a [profile] table (docs/profiles.md)")
    out.add_argument("--label-suffix", dest="label_suffix", metavar="TEXT", help="append TEXT to every ROI name and segment label, e.g. ' NOT FOR CLINICAL USE' while validating (default: the profile's suffix)")
    out.add_argument("--dry-run", dest="dry_run", action="store_const", const=True, help="compute and keep the results in the job folder, but never send them (the job ends done, 'dry run: not sent')")

    proc = parser.add_argument_group("Processing")
    proc.add_argument("--bundle", type=Path, metavar="DIR", help="MONAI bundle used by the processor (default: the repository's bundles/vacbag_ct_segmentation, found from any folder)")
    proc.add_argument("--processor", metavar="MODULE:FACTORY", help=f"factory creating the processing callable in the worker (default {DEFAULT_PROCESSOR})")
    proc.add_argument("--series-timeout", dest="series_timeout", type=float, metavar="SEC", help="a series is complete this many seconds after the last association that sent to it ended, if nothing more arrives; 0 = at release (default 0)")
    proc.add_argument("--worker-nice", dest="worker_nice", type=int, metavar="N", help="lower the worker's CPU priority by N (nice, 0-19) so that receiving goes first when both want the processor (default 10)")
    proc.add_argument("--review-policy", dest="review_policy", choices=[p.value for p in ReviewPolicy], help="a result with a flagged structure is sent as any other (send, default), held until --approve/--reject (hold), or sent with the flagged ROI names suffixed (send-marked)")
    proc.add_argument("--review-suffix", dest="review_suffix", metavar="TEXT", help="ROI name suffix of --review-policy send-marked (default ' CHECK')")
    proc.add_argument("--modalities", action="append", metavar="MOD", help="modality accepted for processing (repeatable; default CT); other series end as failed jobs")

    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls-cert", dest="tls_cert", type=Path, metavar="PEM", help="certificate (PEM): enables TLS for the SCP and the export")
    tls.add_argument("--tls-key", dest="tls_key", type=Path, metavar="PEM", help="private key (PEM) of --tls-cert")
    tls.add_argument("--tls-ca", dest="tls_ca", type=Path, metavar="PEM", help="CA certificates (PEM): the SCP then requires client certificates and the export verifies the destination")

    http = parser.add_argument_group("Dashboard")
    http.add_argument("--http-port", dest="http_port", type=_argparse_type(lambda v: _port(v, "http_port")), metavar="PORT", help="serve the read-only dashboard, JSON API and /metrics on this port (default: off)")
    http.add_argument("--http-bind-address", dest="http_bind_address", metavar="ADDRESS", help="address of the dashboard (default: --bind-address); anything but loopback needs --http-token or TLS")
    http.add_argument("--http-token", dest="http_token", metavar="TOKEN", help="bearer token the dashboard asks of every request (the page asks for it once); at least 16 characters")
    http.add_argument("--http-show-names", dest="http_show_names", nargs="?", const=True, type=_argparse_type(parse_bool), metavar="BOOL", help="show patient names on the dashboard (default: patient IDs only)")
    return parser


_CLI_ONLY = {"config", "status", "approve", "reject", "port_positional", "scu_ip", "scu_port"}


def _load_toml(path: Path) -> dict:
    data = load_toml(path, "Config file")
    known = {f.name for f in fields(NodeConfig)} | {"scu_ip", "scu_port", "scp_port", "scp_ip", "storage_path"}
    aliases = {"scp_port": "port", "scp_ip": "bind_address", "storage_path": "output_directory"}
    result = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ValueError(f"Config file {path}: unknown key {key!r}; known keys: {', '.join(sorted(known))}.")
        if name == "profile" and isinstance(value, str) and value.endswith(".toml") and not Path(value).is_absolute():
            value = str(Path(path).parent / value)  # a profile file named in the config is found beside it
        elif name == "profile" and isinstance(value, dict):
            value = profile_from_mapping(value, f"config file {path} [profile]")
        result[aliases.get(name, name)] = value
    return result


def config_from_namespace(ns: argparse.Namespace) -> NodeConfig:
    """Merge parsed options with the TOML file named by ``ns.config``.

    Args:
        ns: the namespace from :func:`build_argument_parser`.

    Raises:
        ValueError: for an unknown TOML key, conflicting ports or any invalid value.
    """
    values: dict = _load_toml(ns.config) if getattr(ns, "config", None) else {}
    cli = {k: v for k, v in vars(ns).items() if v is not None and k not in _CLI_ONLY}
    if ns.port_positional is not None:
        if ns.port is not None and ns.port != ns.port_positional:
            raise ValueError(f"Conflicting ports: positional {ns.port_positional} and --port {ns.port}.")
        cli["port"] = ns.port_positional
    scu_ip = ns.scu_ip if ns.scu_ip is not None else values.pop("scu_ip", None)
    scu_port = ns.scu_port if ns.scu_port is not None else values.pop("scu_port", None)
    if (scu_ip is None) != (scu_port is None):
        raise ValueError("--scu_ip and --scu_port must be given together (or use --destination HOST:PORT[:AET]).")
    if scu_ip is not None and "destination" not in cli:
        cli["destination"] = Destination(str(scu_ip), _port(scu_port, "scu_port"))
    values.update(cli)
    return NodeConfig(**values)


def parse_node_args(args: list[str] | None = None, prog: str | None = None) -> tuple[NodeConfig, argparse.Namespace]:
    """Parse a command line into a :class:`NodeConfig`; errors exit like argparse.

    Args:
        args: the arguments (default ``sys.argv[1:]``).
        prog: program name for usage messages.
    """
    parser = build_argument_parser(prog)
    ns = parser.parse_args(args)
    try:
        return config_from_namespace(ns), ns
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
