"""``ct2mri-node check-config FILE``: validate a configuration file and summarise it."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..config import DEFAULT_MODEL_NAME, NodeConfig, RangeMatch, load_config
from ..errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "check-config",
        help="validate a YAML configuration (exit 0 if valid, 2 with the offending keys if not)",
        description="Validate a YAML configuration file; errors name the offending key. A model's MONAI "
                    "bundle is checked too (its metadata holds what the node needs).",
    )
    parser.add_argument("file", type=Path, help="YAML configuration file")
    parser.set_defaults(func=run)


def summary(config: NodeConfig) -> list[str]:
    """Human-readable lines describing what the config does."""
    callers = ", ".join(
        a.ae_title + (f"@{a.host}" if a.host else "") for a in config.calling_aes
    ) or "any caller"
    lines = [
        f"node: AE {config.node.ae_title} on {config.node.bind_address}:{config.node.port}",
        f"calling AEs allowed: {callers}",
        f"spool: {config.spool_dir}",
        f"series complete after {config.series.quiet_period_s:g} s quiet once released, "
        f"{max(config.series.quiet_period_s, config.series.open_association_quiet_s):g} s while the association stays open",
    ]
    models = config.named_models()
    for name, model in models.items():
        label = "model" if list(models) == [DEFAULT_MODEL_NAME] else f"model {name}"
        lines.append(f"{label}: {model.bundle if model.bundle is not None else model.checkpoint} on {model.device}, "
                     f"{model.steps or 'the model default'} steps, {model.samples} sample(s)")
    lines += _rules_summary(config)
    for dest in config.destinations:
        where = (
            f"{dest.ae_title}@{dest.host}:{dest.port}" if dest.type == "dicom"
            else dest.url if dest.type == "dicomweb" else str(dest.path)
        )
        lines.append(f"destination {dest.name} ({dest.type}): {where}")
    if not config.destinations:
        lines.append("warning: no destinations; MR series stay in the spool only")
    lines.append(_status_page(config))
    return lines


def _status_page(config: NodeConfig) -> str:
    """Where the status page (and /metrics, /healthz, /readyz) will be, or that it is off."""
    port = config.ops.http_port
    if port is None:
        return "status page: off (ops.http_port unset)"
    host = config.ops.http_bind_address
    where = f"http://{host}:{port}/" if port else f"http://{host}:<any free port>/"
    return f"status page: {where} (also /metrics, /healthz, /readyz)"


def _rules_summary(config: NodeConfig) -> list[str]:
    """One line per routing rule: its match and its action (``explain`` shows them applied)."""
    if config.rules is None:
        return [f"rules: none; every series is translated by model {next(iter(config.named_models()))}"]
    if not config.rules:
        return ["warning: rules is an empty list; every series is ignored (no rule matches)"]
    lines = [f"rules ({len(config.rules)}, the first that matches decides; no match: ignored):"]
    for number, rule in enumerate(config.rules, start=1):
        match = ", ".join(
            f"{key} {value.describe()}" if isinstance(value, RangeMatch) else f"{key} ~ /{value}/i"
            for key, value in rule.match.items()
        ) or "every series"
        if rule.translate is not None:
            action = f"translate with model {rule.translate}" + (
                f" to {', '.join(rule.destinations)}" if rule.destinations else " to every destination")
        elif rule.ignore:
            action = "ignore"
        else:
            action = f"refuse: {rule.refuse}"
        lines.append(f"  {number}. {rule.name}: {match} -> {action}")
    return lines


def check_bundles(config: NodeConfig, source: str) -> None:
    """Every configured MONAI bundle holds what the node needs (its metadata, without torch):
    ConfigError naming the model's key and the bundle's missing key, so a bad bundle is found
    here rather than by the first series it should translate."""
    from ..model.bundle_meta import read_bundle_meta

    problems = []
    for name, model in config.named_models().items():
        if model.bundle is None:
            continue
        key = "model.bundle" if name == DEFAULT_MODEL_NAME and not config.models else f"models.{name}.bundle"
        try:
            read_bundle_meta(model.bundle)
        except CheckpointError as exc:
            problems.append(f"  {key}: {exc}")
    if problems:
        raise ConfigError(f"invalid configuration {source}:\n" + "\n".join(problems))


def run(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    check_bundles(config, str(args.file))
    print(f"{args.file}: valid")
    for line in summary(config):
        print(f"  {line}")
    return 0
