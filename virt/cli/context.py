"""What every command gets: the parsed options, the output channel, a lazily built service."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from oslo_config import cfg

from virt.cli.output import Output
from virt.config import build_conf

if TYPE_CHECKING:
    from virt.compute import ComputeService

CONFIG_ENV = "VIRTKIT_CONFIG"


class Context:
    """Per-invocation state; the config and service are only built if a command needs them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config_file: str | None = args.config or os.environ.get(CONFIG_ENV) or None
        self.out = Output(args.format)
        self._conf: cfg.ConfigOpts | None = None
        self._service: ComputeService | None = None

    @property
    def conf(self) -> cfg.ConfigOpts:
        if self._conf is None:
            self._conf = build_conf(self.config_file)
        return self._conf

    @property
    def service(self) -> ComputeService:
        # Imported here: `virtkit drivers` and `config sample` need no store.
        if self._service is None:
            from virt.compute import ComputeService as Service

            self._service = Service(self.conf)
        return self._service

    def close(self) -> None:
        if self._service is not None:
            self._service.close()
            self._service = None
